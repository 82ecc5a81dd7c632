//! The portable path. It performs exactly the arithmetic of the SIMD paths —
//! the same exact integer sums in eight lanes of four consecutive values, the
//! same fused multiply-adds and the same order of the final sums — so a
//! machine without AVX2 gives bit-identical results, not merely close ones.

use crate::acts::ActRow;
use crate::format::{f16_at, scale_min_k4, Format};

#[inline(always)]
pub(crate) fn epilogue(
    acc: &mut [f32; 8],
    bacc: &mut f32,
    lanes: &[i32; 8],
    ws: f32,
    bw: f32,
    bint: i32,
    dx: f32,
) {
    let sw = ws * dx;
    for l in 0..8 {
        acc[l] = (lanes[l] as f32).mul_add(sw, acc[l]);
    }
    *bacc += (bw * dx) * bint as f32;
}

/// The SIMD paths' horizontal sum order.
#[inline(always)]
pub(crate) fn hsum8(a: &[f32; 8]) -> f32 {
    ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]))
}

/// Lanes of `Σ scale(e)·u[e]·x[e]` over groups of four values.
fn lanes_of(u: &[i32], x: &[i8], scale: impl Fn(usize) -> i32, lanes: &mut [i32; 8]) {
    for (e, (&w, &q)) in u.iter().zip(x).enumerate() {
        lanes[(e / 4) % 8] += scale(e) * w * q as i32;
    }
}

/// The weights of one block as small integers `u` such that
/// `w = ws·scale(e)·u + offset`: see each format.
fn unpack(f: Format, b: &[u8], u: &mut [i32]) {
    match f {
        Format::Q4_0 | Format::Q4_1 => {
            let qs = if f == Format::Q4_0 {
                &b[2..18]
            } else {
                &b[4..20]
            };
            for j in 0..16 {
                u[j] = (qs[j] & 0xF) as i32;
                u[j + 16] = (qs[j] >> 4) as i32;
            }
            if f == Format::Q4_0 {
                u[..32].iter_mut().for_each(|v| *v -= 8);
            }
        }
        Format::Q5_0 | Format::Q5_1 => {
            let at = if f == Format::Q5_0 { 2 } else { 4 };
            let qh = u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
            let qs = &b[at + 4..at + 20];
            for j in 0..16 {
                u[j] = ((qs[j] & 0xF) as u32 | (((qh >> j) & 1) << 4)) as i32;
                u[j + 16] = ((qs[j] >> 4) as u32 | (((qh >> (j + 16)) & 1) << 4)) as i32;
            }
            if f == Format::Q5_0 {
                u[..32].iter_mut().for_each(|v| *v -= 16);
            }
        }
        Format::Q8_0 => {
            for j in 0..32 {
                u[j] = (b[2 + j] as i8) as i32;
            }
        }
        Format::Q4K | Format::Q5K => {
            let (qh, qs) = if f == Format::Q5K {
                (&b[16..48], &b[48..176])
            } else {
                (&b[0..0], &b[16..144])
            };
            for c in 0..4 {
                for l in 0..32 {
                    let q = qs[32 * c + l];
                    let (mut lo, mut hi) = ((q & 0xF) as i32, (q >> 4) as i32);
                    if f == Format::Q5K {
                        lo |= (((qh[l] >> (2 * c)) & 1) as i32) << 4;
                        hi |= (((qh[l] >> (2 * c + 1)) & 1) as i32) << 4;
                    }
                    u[64 * c + l] = lo;
                    u[64 * c + 32 + l] = hi;
                }
            }
        }
        Format::Q6K => {
            for h in 0..2 {
                let ql = &b[64 * h..64 * h + 64];
                let qh = &b[128 + 32 * h..128 + 32 * h + 32];
                let o = 128 * h;
                for l in 0..32 {
                    u[o + l] = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32;
                    u[o + l + 32] = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32;
                    u[o + l + 64] = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32;
                    u[o + l + 96] = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32;
                }
            }
        }
    }
}

/// The dot product of one weight row with one quantized activation row.
pub(crate) fn dot(f: Format, w: &[u8], x: ActRow<'_>) -> f32 {
    let (be, bb) = (f.block_elems(), f.block_bytes());
    let mut acc = [0f32; 8];
    let mut bacc = 0f32;
    let mut bl = [0f32; 8];
    let mut u = [0i32; 256];
    for (i, b) in w.chunks_exact(bb).enumerate() {
        let xq = &x.qs[i * be..(i + 1) * be];
        let dx = x.d[i];
        let u = &mut u[..be];
        unpack(f, b, u);
        let mut lanes = [0i32; 8];
        let (ws, bw, bint) = match f {
            Format::Q4_1 | Format::Q5_1 => {
                // The minimum times the activation block's `d·Σq`, in eight
                // lanes by block number (the SIMD paths do eight blocks at once).
                lanes_of(u, xq, |_| 1, &mut lanes);
                let sw = f16_at(b, 0) * dx;
                for l in 0..8 {
                    acc[l] = (lanes[l] as f32).mul_add(sw, acc[l]);
                }
                bl[i % 8] = f16_at(b, 2).mul_add(x.s[i], bl[i % 8]);
                continue;
            }
            Format::Q4_0 | Format::Q5_0 | Format::Q8_0 => {
                // Signed weights, no offset: the SIMD paths skip the sum.
                lanes_of(u, xq, |_| 1, &mut lanes);
                let sw = f16_at(b, 0) * dx;
                for l in 0..8 {
                    acc[l] = (lanes[l] as f32).mul_add(sw, acc[l]);
                }
                continue;
            }
            Format::Q4K | Format::Q5K => {
                let scales = &b[4..16];
                let sm: Vec<(u8, u8)> = (0..8).map(|j| scale_min_k4(j, scales)).collect();
                lanes_of(u, xq, |e| sm[e / 32].0 as i32, &mut lanes);
                let s16 = &x.sums[16 * i..16 * i + 16];
                let bint: i32 = (0..8)
                    .map(|j| sm[j].1 as i32 * (s16[2 * j] + s16[2 * j + 1]))
                    .sum();
                (f16_at(b, 0), -f16_at(b, 2), bint)
            }
            Format::Q6K => {
                let sc = &b[192..208];
                lanes_of(u, xq, |e| sc[e / 16] as i8 as i32, &mut lanes);
                let s16 = &x.sums[16 * i..16 * i + 16];
                let bint: i32 = -32 * (0..16).map(|g| sc[g] as i8 as i32 * s16[g]).sum::<i32>();
                let d = f16_at(b, 208);
                (d, d, bint)
            }
        };
        epilogue(&mut acc, &mut bacc, &lanes, ws, bw, bint, dx);
    }
    if matches!(f, Format::Q4_1 | Format::Q5_1) {
        return hsum8(&acc) + hsum8(&bl);
    }
    hsum8(&acc) + bacc
}
