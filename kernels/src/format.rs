//! GGUF block formats: sizes and a plain reference dequantizer.
//!
//! The block layouts are ggml's (`ggml-common.h`): little-endian, f16 scales.
//! The dequantizer here is the slow, obvious reading of each layout; the
//! tests check it against candle's dequantizer and use it as the reference
//! for the matrix kernels.

use half::f16;

/// A weight format the kernels multiply directly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q4K,
    Q5K,
    Q6K,
}

impl Format {
    pub const ALL: [Format; 8] = [
        Format::Q4_0,
        Format::Q4_1,
        Format::Q5_0,
        Format::Q5_1,
        Format::Q8_0,
        Format::Q4K,
        Format::Q5K,
        Format::Q6K,
    ];

    /// Weights per block.
    pub const fn block_elems(self) -> usize {
        match self {
            Format::Q4K | Format::Q5K | Format::Q6K => 256,
            _ => 32,
        }
    }

    /// Bytes per block.
    pub const fn block_bytes(self) -> usize {
        match self {
            Format::Q4_0 => 18,
            Format::Q4_1 => 20,
            Format::Q5_0 => 22,
            Format::Q5_1 => 24,
            Format::Q8_0 => 34,
            Format::Q4K => 144,
            Format::Q5K => 176,
            Format::Q6K => 210,
        }
    }

    /// Whether activations are quantized in 256-element blocks (ggml's
    /// Q8_K, for the k-quants) rather than 32-element ones (Q8_0/Q8_1).
    pub const fn is_k(self) -> bool {
        self.block_elems() == 256
    }

    pub const fn name(self) -> &'static str {
        match self {
            Format::Q4_0 => "Q4_0",
            Format::Q4_1 => "Q4_1",
            Format::Q5_0 => "Q5_0",
            Format::Q5_1 => "Q5_1",
            Format::Q8_0 => "Q8_0",
            Format::Q4K => "Q4_K",
            Format::Q5K => "Q5_K",
            Format::Q6K => "Q6_K",
        }
    }

    /// Bytes of one row of `k` weights.
    pub const fn row_bytes(self, k: usize) -> usize {
        k / self.block_elems() * self.block_bytes()
    }
}

#[inline]
pub(crate) fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// ggml's `get_scale_min_k4`: the 6-bit scale and min of sub-block `j` of a
/// Q4_K/Q5_K block's 12 packed scale bytes.
#[inline]
pub(crate) fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Dequantize one block into `out` (`block_elems` values).
pub fn dequantize_block(f: Format, b: &[u8], out: &mut [f32]) {
    match f {
        Format::Q4_0 => {
            let d = f16_at(b, 0);
            for j in 0..16 {
                out[j] = ((b[2 + j] & 0xF) as i32 - 8) as f32 * d;
                out[j + 16] = ((b[2 + j] >> 4) as i32 - 8) as f32 * d;
            }
        }
        Format::Q4_1 => {
            let (d, m) = (f16_at(b, 0), f16_at(b, 2));
            for j in 0..16 {
                out[j] = (b[4 + j] & 0xF) as f32 * d + m;
                out[j + 16] = (b[4 + j] >> 4) as f32 * d + m;
            }
        }
        Format::Q5_0 | Format::Q5_1 => {
            let (d, m, qh_at) = if f == Format::Q5_0 {
                (f16_at(b, 0), 0.0, 2)
            } else {
                (f16_at(b, 0), f16_at(b, 2), 4)
            };
            let qh = u32::from_le_bytes([b[qh_at], b[qh_at + 1], b[qh_at + 2], b[qh_at + 3]]);
            let qs = &b[qh_at + 4..qh_at + 20];
            let off = if f == Format::Q5_0 { 16 } else { 0 };
            for j in 0..16 {
                let h0 = ((qh >> j) & 1) << 4;
                let h1 = ((qh >> (j + 16)) & 1) << 4;
                let v0 = ((qs[j] & 0xF) as u32 | h0) as i32 - off;
                let v1 = ((qs[j] >> 4) as u32 | h1) as i32 - off;
                if f == Format::Q5_0 {
                    out[j] = v0 as f32 * d;
                    out[j + 16] = v1 as f32 * d;
                } else {
                    out[j] = v0 as f32 * d + m;
                    out[j + 16] = v1 as f32 * d + m;
                }
            }
        }
        Format::Q8_0 => {
            let d = f16_at(b, 0);
            for j in 0..32 {
                out[j] = (b[2 + j] as i8) as f32 * d;
            }
        }
        Format::Q4K | Format::Q5K => {
            let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
            let scales = &b[4..16];
            let (qh, qs) = if f == Format::Q5K {
                (&b[16..48], &b[48..176])
            } else {
                (&b[0..0], &b[16..144])
            };
            for c in 0..4 {
                let (s1, m1) = scale_min_k4(2 * c, scales);
                let (s2, m2) = scale_min_k4(2 * c + 1, scales);
                let (d1, m1) = (d * s1 as f32, dmin * m1 as f32);
                let (d2, m2) = (d * s2 as f32, dmin * m2 as f32);
                for l in 0..32 {
                    let q = qs[32 * c + l];
                    let (mut lo, mut hi) = ((q & 0xF) as u32, (q >> 4) as u32);
                    if f == Format::Q5K {
                        lo |= (((qh[l] >> (2 * c)) & 1) as u32) << 4;
                        hi |= (((qh[l] >> (2 * c + 1)) & 1) as u32) << 4;
                    }
                    out[64 * c + l] = d1 * lo as f32 - m1;
                    out[64 * c + 32 + l] = d2 * hi as f32 - m2;
                }
            }
        }
        Format::Q6K => {
            let d = f16_at(b, 208);
            for h in 0..2 {
                let ql = &b[64 * h..64 * h + 64];
                let qh = &b[128 + 32 * h..128 + 32 * h + 32];
                let sc = &b[192 + 8 * h..192 + 8 * h + 8];
                for l in 0..32 {
                    let is = l / 16;
                    let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
                    let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                    let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                    let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                    let o = 128 * h;
                    out[o + l] = d * (sc[is] as i8) as f32 * q1 as f32;
                    out[o + l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
                    out[o + l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
                    out[o + l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
                }
            }
        }
    }
}

/// Dequantize a whole row of `out.len()` weights.
pub fn dequantize_row(f: Format, row: &[u8], out: &mut [f32]) {
    let (be, bb) = (f.block_elems(), f.block_bytes());
    for (i, o) in out.chunks_exact_mut(be).enumerate() {
        dequantize_block(f, &row[i * bb..(i + 1) * bb], o);
    }
}
