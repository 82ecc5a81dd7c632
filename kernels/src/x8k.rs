//! Q4_K repacked into interleaved groups of 8 weight rows, as the 32-weight
//! formats are (see `x8`): one `vpdpbusd` against four broadcast activation
//! bytes advances 8 dot products, and each 32-value sub-block's scale is one
//! 32-bit multiply for all 8 rows. Row by row, the scale had to be applied per
//! row (`madd` per 32 values) and the minimum corrections summed per row.
//!
//! One group-block (8 rows × 256 weights, 1,248 bytes; the file's 8 blocks
//! are 1,152): `d` (8 × f16) at 0, `dmin` (8 × f16) at 16, the 6-bit
//! scales as bytes `[sub-block][row]` at 32, the 6-bit minimums as i16
//! pairs `[pair of sub-blocks][row]` at 96 (one `madd` against the
//! activations' sums per 32), and the nibbles at 224: for each 64-value
//! chunk `c` and 4-byte step `t`, 32 bytes holding row `j`'s file bytes
//! `32c + 4t..+4` at `4j` (low nibbles: sub-block `2c`, values `4t..+4`;
//! high nibbles: sub-block `2c + 1`).
//!
//! Arithmetic contract (every path the same bits), per block and weight
//! row: `isum = Σ_s scale_s · (q_s · x_s)` and `bint = Σ_s min_s · Σx_s`
//! exactly in i32, then `acc = fma(isum, d · dx, acc)` and
//! `bacc = fma(bint, (−dmin) · dx, bacc)`; the result is `acc + bacc`.

use crate::acts::ActRow;
use crate::format::{f16_at, scale_min_k4, Format};

/// Bytes of one group-block.
pub(crate) const GBB: usize = 1248;
const SC: usize = 32;
const MINS: usize = 96;
const QS: usize = 224;

/// Reorder `n` rows of `k` Q4_K weights into groups of 8 (a last partial
/// group padded with zero rows).
pub(crate) fn repack(w: &[u8], n: usize, k: usize) -> Vec<u8> {
    let bb = Format::Q4K.block_bytes();
    let nb = k / 256;
    let rb = nb * bb;
    let groups = n.div_ceil(8);
    let mut out = vec![0u8; groups * nb * GBB];
    for g in 0..groups {
        for i in 0..nb {
            let o = &mut out[(g * nb + i) * GBB..(g * nb + i + 1) * GBB];
            for j in 0..8 {
                let row = g * 8 + j;
                if row >= n {
                    continue;
                }
                let b = &w[row * rb + i * bb..row * rb + (i + 1) * bb];
                o[2 * j..2 * j + 2].copy_from_slice(&b[0..2]);
                o[16 + 2 * j..16 + 2 * j + 2].copy_from_slice(&b[2..4]);
                let mut mins = [0u8; 8];
                for (s, m) in mins.iter_mut().enumerate() {
                    let (sc, mn) = scale_min_k4(s, &b[4..16]);
                    o[SC + 8 * s + j] = sc;
                    *m = mn;
                }
                for p in 0..4 {
                    let at = MINS + (8 * p + j) * 4;
                    o[at..at + 2].copy_from_slice(&(mins[2 * p] as i16).to_le_bytes());
                    o[at + 2..at + 4].copy_from_slice(&(mins[2 * p + 1] as i16).to_le_bytes());
                }
                for c in 0..4 {
                    for t in 0..8 {
                        let dst = QS + (8 * c + t) * 32 + 4 * j;
                        let src = 16 + 32 * c + 4 * t;
                        o[dst..dst + 4].copy_from_slice(&b[src..src + 4]);
                    }
                }
            }
        }
    }
    out
}

/// Row `j`'s 6-bit scale and minimum of sub-block `s`, and its 32 weights.
fn sub_block(o: &[u8], j: usize, s: usize) -> (i32, i32, [i32; 32]) {
    let sc = o[SC + 8 * s + j] as i32;
    let p = MINS + (8 * (s / 2) + j) * 4 + 2 * (s % 2);
    let m = i16::from_le_bytes([o[p], o[p + 1]]) as i32;
    let (c, high) = (s / 2, s % 2 == 1);
    let mut w = [0i32; 32];
    for t in 0..8 {
        for b in 0..4 {
            let byte = o[QS + (8 * c + t) * 32 + 4 * j + b];
            w[4 * t + b] = if high { byte >> 4 } else { byte & 0xF } as i32;
        }
    }
    (sc, m, w)
}

/// Row `j` of a group's blocks, dequantized exactly as
/// [`crate::dequantize_row`] does for the file's layout.
pub(crate) fn dequantize_group_row(gw: &[u8], j: usize, out: &mut [f32]) {
    for (blk, o) in gw.chunks_exact(GBB).zip(out.chunks_exact_mut(256)) {
        let (d, dmin) = (f16_at(blk, 2 * j), f16_at(blk, 16 + 2 * j));
        for (s, os) in o.chunks_exact_mut(32).enumerate() {
            let (sc, m, w) = sub_block(blk, j, s);
            let (d1, m1) = (d * sc as f32, dmin * m as f32);
            for (v, &q) in os.iter_mut().zip(&w) {
                *v = d1 * q as f32 - m1;
            }
        }
    }
}

/// Portable path: outputs `8g..8g+8` of activation row `x` into `out`.
pub(crate) fn dot_group_scalar(gw: &[u8], x: ActRow<'_>, out: &mut [f32; 8]) {
    for (j, o) in out.iter_mut().enumerate() {
        let (mut acc, mut bacc) = (0f32, 0f32);
        for (i, blk) in gw.chunks_exact(GBB).enumerate() {
            let (mut isum, mut bint) = (0i32, 0i32);
            for s in 0..8 {
                let (sc, m, w) = sub_block(blk, j, s);
                let xq = &x.qs[256 * i + 32 * s..256 * i + 32 * s + 32];
                let dot: i32 = w.iter().zip(xq).map(|(&a, &b)| a * b as i32).sum();
                isum += sc * dot;
                let sum = x.sums[16 * i + 2 * s] + x.sums[16 * i + 2 * s + 1];
                bint += m * sum;
            }
            let (d, dmin) = (f16_at(blk, 2 * j), f16_at(blk, 16 + 2 * j));
            acc = (isum as f32).mul_add(d * x.d[i], acc);
            bacc = (bint as f32).mul_add(-dmin * x.d[i], bacc);
        }
        *o = acc + bacc;
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod simd {
    use std::arch::x86_64::*;

    use super::{GBB, MINS, QS, SC};
    use crate::acts::ActRow;

    macro_rules! kernel {
        ($feat:literal, $vnni:literal) => {
            /// `R` activation rows × one group of 8 Q4_K weight rows.
            #[target_feature(enable = $feat)]
            pub unsafe fn dot_group<const R: usize>(
                gw: &[u8],
                xs: &[ActRow<'_>; R],
                out: &mut [[f32; 8]; R],
            ) {
                let nb = gw.len() / GBB;
                let m4 = _mm256_set1_epi8(0xF);
                let ones16 = _mm256_set1_epi16(1);
                let mut acc = [_mm256_setzero_ps(); R];
                let mut bacc = [_mm256_setzero_ps(); R];
                for i in 0..nb {
                    let blk = gw.as_ptr().add(i * GBB);
                    let mut isum = [_mm256_setzero_si256(); R];
                    for s in 0..8 {
                        let (c, high) = (s / 2, s % 2 == 1);
                        let mut w = [_mm256_setzero_si256(); 8];
                        for (t, v) in w.iter_mut().enumerate() {
                            let q = _mm256_loadu_si256(
                                blk.add(QS + (8 * c + t) * 32) as *const __m256i
                            );
                            *v = if high {
                                _mm256_and_si256(_mm256_srli_epi16(q, 4), m4)
                            } else {
                                _mm256_and_si256(q, m4)
                            };
                        }
                        let scv = _mm256_cvtepu8_epi32(_mm_loadl_epi64(
                            blk.add(SC + 8 * s) as *const __m128i
                        ));
                        for r in 0..R {
                            let xp = xs[r].qs.as_ptr().add(256 * i + 32 * s) as *const i32;
                            let mut dot = _mm256_setzero_si256();
                            for (t, wt) in w.iter().enumerate() {
                                let xb = _mm256_set1_epi32(std::ptr::read_unaligned(xp.add(t)));
                                dot = if $vnni {
                                    _mm256_dpbusd_avx_epi32(dot, *wt, xb)
                                } else {
                                    _mm256_add_epi32(
                                        dot,
                                        _mm256_madd_epi16(_mm256_maddubs_epi16(*wt, xb), ones16),
                                    )
                                };
                            }
                            isum[r] = _mm256_add_epi32(isum[r], _mm256_mullo_epi32(dot, scv));
                        }
                    }
                    let dv = _mm256_cvtph_ps(_mm_loadu_si128(blk as *const __m128i));
                    let dminv = _mm256_cvtph_ps(_mm_loadu_si128(blk.add(16) as *const __m128i));
                    let ndmin = _mm256_xor_ps(dminv, _mm256_set1_ps(-0.0));
                    let mut mp = [_mm256_setzero_si256(); 4];
                    for (p, v) in mp.iter_mut().enumerate() {
                        *v = _mm256_loadu_si256(blk.add(MINS + 32 * p) as *const __m256i);
                    }
                    for r in 0..R {
                        let x = &xs[r];
                        // Sums per 32 as i16 pairs (sub-blocks 2p, 2p+1).
                        let sums = &x.sums[16 * i..16 * i + 16];
                        let mut bint = _mm256_setzero_si256();
                        for (p, m) in mp.iter().enumerate() {
                            let lo = (sums[4 * p] + sums[4 * p + 1]) as i16 as u16 as u32;
                            let hi = (sums[4 * p + 2] + sums[4 * p + 3]) as i16 as u16 as u32;
                            let pair = _mm256_set1_epi32((lo | (hi << 16)) as i32);
                            bint = _mm256_add_epi32(bint, _mm256_madd_epi16(*m, pair));
                        }
                        let xd = _mm256_set1_ps(x.d[i]);
                        acc[r] = _mm256_fmadd_ps(
                            _mm256_cvtepi32_ps(isum[r]),
                            _mm256_mul_ps(dv, xd),
                            acc[r],
                        );
                        bacc[r] = _mm256_fmadd_ps(
                            _mm256_cvtepi32_ps(bint),
                            _mm256_mul_ps(ndmin, xd),
                            bacc[r],
                        );
                    }
                }
                for r in 0..R {
                    _mm256_storeu_ps(out[r].as_mut_ptr(), _mm256_add_ps(acc[r], bacc[r]));
                }
            }
        };
    }

    pub mod plain {
        use super::*;
        kernel!("avx2,fma,f16c", false);
    }
    pub mod vnni {
        use super::*;
        kernel!("avx2,fma,f16c,avxvnni", true);
    }
}
