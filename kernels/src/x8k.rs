//! Q4_K and Q6_K repacked into interleaved groups of 8 weight rows, as the 32-weight
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
use crate::x8::repack_blocks;

/// Bytes of one Q4_K group-block.
pub(crate) const GBB: usize = 1248;
/// Bytes of one Q5_K group-block: Q4_K's, then the fifth bits at `QH`:
/// for step `t`, byte `4j + b` holds file byte `qh[4t + b]` of row `j`
/// (bit `s` is the fifth bit of sub-block `s`'s value `4t + b`).
pub(crate) const GBB5: usize = 1504;
pub(crate) const SC: usize = 32;
pub(crate) const MINS: usize = 96;
pub(crate) const QS: usize = 224;
pub(crate) const QH: usize = 1248;

/// Group-block bytes of Q4_K (`five` false) or Q5_K.
pub(crate) const fn gbb(five: bool) -> usize {
    if five {
        GBB5
    } else {
        GBB
    }
}

/// Reorder `n` rows of `k` Q4_K or Q5_K weights into groups of 8 (a last
/// partial group padded with zero rows).
pub(crate) fn repack(f: Format, w: &[u8], n: usize, k: usize) -> Vec<u8> {
    let five = f == Format::Q5K;
    let qs_at = if five { 48 } else { 16 };
    repack_blocks(f, w, n, k, gbb(five), |o, j, b| {
        o[2 * j..2 * j + 2].copy_from_slice(&b[0..2]);
        o[16 + 2 * j..16 + 2 * j + 2].copy_from_slice(&b[2..4]);
        let mut mins = [0u8; 8];
        for (s, m) in mins.iter_mut().enumerate() {
            let (sc, mn) = scale_min_k4(s, &b[4..16]);
            o[SC + 8 * s + j] = sc;
            *m = mn;
        }
        for p in 0..4 {
            put_pair(
                o,
                MINS + (8 * p + j) * 4,
                mins[2 * p] as i16,
                mins[2 * p + 1] as i16,
            );
        }
        for c in 0..4 {
            for t in 0..8 {
                let dst = QS + (8 * c + t) * 32 + 4 * j;
                let src = qs_at + 32 * c + 4 * t;
                o[dst..dst + 4].copy_from_slice(&b[src..src + 4]);
            }
        }
        if five {
            for t in 0..8 {
                let dst = QH + t * 32 + 4 * j;
                o[dst..dst + 4].copy_from_slice(&b[16 + 4 * t..20 + 4 * t]);
            }
        }
    })
}

/// Two i16 at `at` (little-endian): one 32-bit lane for `madd`.
fn put_pair(o: &mut [u8], at: usize, a: i16, b: i16) {
    o[at..at + 2].copy_from_slice(&a.to_le_bytes());
    o[at + 2..at + 4].copy_from_slice(&b.to_le_bytes());
}

/// Row `j`'s 6-bit scale and minimum of sub-block `s`, and its 32 weights.
fn sub_block(o: &[u8], five: bool, j: usize, s: usize) -> (i32, i32, [i32; 32]) {
    let sc = o[SC + 8 * s + j] as i32;
    let p = MINS + (8 * (s / 2) + j) * 4 + 2 * (s % 2);
    let m = i16::from_le_bytes([o[p], o[p + 1]]) as i32;
    let (c, high) = (s / 2, s % 2 == 1);
    let mut w = [0i32; 32];
    for t in 0..8 {
        for b in 0..4 {
            let byte = o[QS + (8 * c + t) * 32 + 4 * j + b];
            let h = if five {
                ((o[QH + t * 32 + 4 * j + b] >> s) & 1) << 4
            } else {
                0
            };
            w[4 * t + b] = (if high { byte >> 4 } else { byte & 0xF } | h) as i32;
        }
    }
    (sc, m, w)
}

/// Row `j` of a group's blocks, dequantized exactly as
/// [`crate::dequantize_row`] does for the file's layout.
pub(crate) fn dequantize_group_row(f: Format, gw: &[u8], j: usize, out: &mut [f32]) {
    let five = f == Format::Q5K;
    for (blk, o) in gw.chunks_exact(gbb(five)).zip(out.chunks_exact_mut(256)) {
        let (d, dmin) = (f16_at(blk, 2 * j), f16_at(blk, 16 + 2 * j));
        for (s, os) in o.chunks_exact_mut(32).enumerate() {
            let (sc, m, w) = sub_block(blk, five, j, s);
            let (d1, m1) = (d * sc as f32, dmin * m as f32);
            for (v, &q) in os.iter_mut().zip(&w) {
                *v = d1 * q as f32 - m1;
            }
        }
    }
}

/// Portable path: outputs `8g..8g+8` of activation row `x` into `out`.
pub(crate) fn dot_group_scalar(f: Format, gw: &[u8], x: ActRow<'_>, out: &mut [f32; 8]) {
    let five = f == Format::Q5K;
    for (j, o) in out.iter_mut().enumerate() {
        let (mut acc, mut bacc) = (0f32, 0f32);
        for (i, blk) in gw.chunks_exact(gbb(five)).enumerate() {
            let (mut isum, mut bint) = (0i32, 0i32);
            for s in 0..8 {
                let (sc, m, w) = sub_block(blk, five, j, s);
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

// --- Q6_K -------------------------------------------------------------------
//
// One group-block (8 rows × 256 weights, 1,808 bytes; the file's 8 blocks
// are 1,680): `d` (8 × f16) at 0; the 16 signed scales (one per 16 values)
// as i16 pairs `[pair][row]` at 16 (a 32-bit lane of the pair vector holds
// row j's scales 2p and 2p+1: `madd` against the activations' sums per 16,
// and shifts give each scale alone); the low 4 bits at 272 in Q4_K's
// nibble order (chunk c of 64 values, step t: row j's values
// `64c + 4t..+4` in the low nibbles of bytes `4j..4j+4`, values
// `64c + 32 + 4t..+4` in the high ones); the high 2 bits at 1296: for half
// h (chunks 2h, 2h+1) and step t, byte `4j + b` holds chunk 2h's two
// fields in bits 0–3 and chunk 2h+1's in bits 4–7 (low-nibble value's
// bits first).
//
// Contract, per block and weight row: with unsigned 6-bit `q`,
// `isum = Σ_g scale_g · (q_g · x_g)` and `bint = Σ_g scale_g · Σx_g` over
// the 16 sub-blocks exactly in i32, then
// `acc = fma(isum − 32·bint, d · dx, acc)`.

/// Bytes of one Q6_K group-block.
pub(crate) const GBB6: usize = 1808;
pub(crate) const SC6: usize = 16;
pub(crate) const LO6: usize = 272;
pub(crate) const HI6: usize = 1296;

/// The 256 unsigned 6-bit values and 16 scales of one file block.
fn q6_values(b: &[u8]) -> ([u8; 256], [i8; 16]) {
    let mut q = [0u8; 256];
    for h in 0..2 {
        let ql = &b[64 * h..64 * h + 64];
        let qh = &b[128 + 32 * h..128 + 32 * h + 32];
        for l in 0..32 {
            let o = 128 * h;
            q[o + l] = (ql[l] & 0xF) | ((qh[l] & 3) << 4);
            q[o + l + 32] = (ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4);
            q[o + l + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
            q[o + l + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
        }
    }
    let mut sc = [0i8; 16];
    for (g, v) in sc.iter_mut().enumerate() {
        *v = b[192 + g] as i8;
    }
    (q, sc)
}

/// Reorder `n` rows of `k` Q6_K weights into groups of 8.
pub(crate) fn repack_q6k(w: &[u8], n: usize, k: usize) -> Vec<u8> {
    repack_blocks(Format::Q6K, w, n, k, GBB6, |o, j, b| {
        o[2 * j..2 * j + 2].copy_from_slice(&b[208..210]);
        let (q, sc) = q6_values(b);
        for p in 0..8 {
            put_pair(
                o,
                SC6 + (8 * p + j) * 4,
                sc[2 * p] as i16,
                sc[2 * p + 1] as i16,
            );
        }
        for c in 0..4 {
            for t in 0..8 {
                for bi in 0..4 {
                    let (lo, hi) = (q[64 * c + 4 * t + bi], q[64 * c + 32 + 4 * t + bi]);
                    o[LO6 + (8 * c + t) * 32 + 4 * j + bi] = (lo & 0xF) | ((hi & 0xF) << 4);
                    let field = (lo >> 4) | ((hi >> 4) << 2);
                    o[HI6 + (8 * (c / 2) + t) * 32 + 4 * j + bi] |= field << (4 * (c % 2));
                }
            }
        }
    })
}

/// Row `j`'s 256 unsigned values and 16 scales of a group-block.
fn q6_row(o: &[u8], j: usize) -> ([i32; 256], [i32; 16]) {
    let mut q = [0i32; 256];
    for c in 0..4 {
        for t in 0..8 {
            for bi in 0..4 {
                let nib = o[LO6 + (8 * c + t) * 32 + 4 * j + bi];
                let hb = o[HI6 + (8 * (c / 2) + t) * 32 + 4 * j + bi] >> (4 * (c % 2));
                q[64 * c + 4 * t + bi] = ((nib & 0xF) | ((hb & 3) << 4)) as i32;
                q[64 * c + 32 + 4 * t + bi] = ((nib >> 4) | (((hb >> 2) & 3) << 4)) as i32;
            }
        }
    }
    let mut sc = [0i32; 16];
    for (g, v) in sc.iter_mut().enumerate() {
        let at = SC6 + (8 * (g / 2) + j) * 4 + 2 * (g % 2);
        *v = i16::from_le_bytes([o[at], o[at + 1]]) as i32;
    }
    (q, sc)
}

/// Row `j` of a Q6_K group's blocks, dequantized exactly as
/// [`crate::dequantize_row`] does for the file's layout.
pub(crate) fn dequantize_group_row_q6k(gw: &[u8], j: usize, out: &mut [f32]) {
    for (blk, o) in gw.chunks_exact(GBB6).zip(out.chunks_exact_mut(256)) {
        let d = f16_at(blk, 2 * j);
        let (q, sc) = q6_row(blk, j);
        for (v, (o, &qv)) in o.iter_mut().zip(&q).enumerate() {
            *o = d * sc[v / 16] as f32 * (qv - 32) as f32;
        }
    }
}

/// Portable path for Q6_K: outputs `8g..8g+8` of activation row `x`.
pub(crate) fn dot_group_scalar_q6k(gw: &[u8], x: ActRow<'_>, out: &mut [f32; 8]) {
    for (j, o) in out.iter_mut().enumerate() {
        let mut acc = 0f32;
        for (i, blk) in gw.chunks_exact(GBB6).enumerate() {
            let (q, sc) = q6_row(blk, j);
            let (mut isum, mut bint) = (0i32, 0i32);
            for g in 0..16 {
                let xq = &x.qs[256 * i + 16 * g..256 * i + 16 * g + 16];
                let dot: i32 = q[16 * g..16 * g + 16]
                    .iter()
                    .zip(xq)
                    .map(|(&a, &b)| a * b as i32)
                    .sum();
                isum += sc[g] * dot;
                bint += sc[g] * x.sums[16 * i + g];
            }
            let d = f16_at(blk, 2 * j);
            acc = ((isum - 32 * bint) as f32).mul_add(d * x.d[i], acc);
        }
        *o = acc;
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod simd {
    use std::arch::x86_64::*;

    use super::{gbb, GBB6, HI6, LO6, MINS, QH, QS, SC, SC6};
    use crate::acts::ActRow;

    macro_rules! kernel {
        ($feat:literal, $vnni:literal) => {
            /// `R` activation rows × one group of 8 Q4_K (or, with
            /// `FIVE`, Q5_K) weight rows.
            #[target_feature(enable = $feat)]
            pub unsafe fn dot_group<const R: usize, const FIVE: bool>(
                gw: &[u8],
                xs: &[ActRow<'_>; R],
                out: &mut [[f32; 8]; R],
            ) {
                let gb = gbb(FIVE);
                let nb = gw.len() / gb;
                let one = _mm256_set1_epi8(1);
                let m4 = _mm256_set1_epi8(0xF);
                let mut acc = [_mm256_setzero_ps(); R];
                let mut bacc = [_mm256_setzero_ps(); R];
                for i in 0..nb {
                    let blk = gw.as_ptr().add(i * gb);
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
                            if FIVE {
                                let h = _mm256_loadu_si256(blk.add(QH + t * 32) as *const __m256i);
                                let h = _mm256_srl_epi16(h, _mm_cvtsi32_si128(s as i32));
                                *v = _mm256_or_si256(
                                    *v,
                                    _mm256_slli_epi16(_mm256_and_si256(h, one), 4),
                                );
                            }
                        }
                        let scv = _mm256_cvtepu8_epi32(_mm_loadl_epi64(
                            blk.add(SC + 8 * s) as *const __m128i
                        ));
                        // The scale in both i16 halves of each row's lane.
                        let sc16 = _mm256_or_si256(scv, _mm256_slli_epi32(scv, 16));
                        for r in 0..R {
                            let xp = xs[r].qs.as_ptr().add(256 * i + 32 * s) as *const i32;
                            if $vnni {
                                let mut dot = _mm256_setzero_si256();
                                for (t, wt) in w.iter().enumerate() {
                                    let xb = _mm256_set1_epi32(std::ptr::read_unaligned(xp.add(t)));
                                    dot = _mm256_dpbusd_avx_epi32(dot, *wt, xb);
                                }
                                isum[r] = _mm256_add_epi32(isum[r], _mm256_mullo_epi32(dot, scv));
                            } else {
                                // `maddubs` pairs summed as i16, four at a
                                // time (at most 2·15·127 = 3,810 each for 4
                                // bits: both fours joined in i16; 2·31·127 =
                                // 7,874 for 5 bits: kept apart), then `madd`
                                // by the scale (at most 63) widens and
                                // scales: the same integers as dot · scale.
                                let mut p16 = [_mm256_setzero_si256(); 2];
                                for (h, ph) in p16.iter_mut().enumerate() {
                                    for t in 4 * h..4 * h + 4 {
                                        let xb =
                                            _mm256_set1_epi32(std::ptr::read_unaligned(xp.add(t)));
                                        *ph = _mm256_add_epi16(*ph, _mm256_maddubs_epi16(w[t], xb));
                                    }
                                }
                                let sd = if FIVE {
                                    _mm256_add_epi32(
                                        _mm256_madd_epi16(p16[0], sc16),
                                        _mm256_madd_epi16(p16[1], sc16),
                                    )
                                } else {
                                    _mm256_madd_epi16(_mm256_add_epi16(p16[0], p16[1]), sc16)
                                };
                                isum[r] = _mm256_add_epi32(isum[r], sd);
                            }
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

            /// `R` activation rows × one group of 8 Q6_K weight rows.
            #[target_feature(enable = $feat)]
            pub unsafe fn dot_group_q6k<const R: usize>(
                gw: &[u8],
                xs: &[ActRow<'_>; R],
                out: &mut [[f32; 8]; R],
            ) {
                let nb = gw.len() / GBB6;
                let m4 = _mm256_set1_epi8(0xF);
                let m3 = _mm256_set1_epi8(3);
                let mut acc = [_mm256_setzero_ps(); R];
                for i in 0..nb {
                    let blk = gw.as_ptr().add(i * GBB6);
                    let mut pairs = [_mm256_setzero_si256(); 8];
                    for (p, v) in pairs.iter_mut().enumerate() {
                        *v = _mm256_loadu_si256(blk.add(SC6 + 32 * p) as *const __m256i);
                    }
                    let mut isum = [_mm256_setzero_si256(); R];
                    for c in 0..4 {
                        // Chunk c: sub-blocks 4c, 4c+1 in the low nibbles
                        // (steps 0–3, 4–7), 4c+2, 4c+3 in the high ones.
                        let mut w = [_mm256_setzero_si256(); 16];
                        for t in 0..8 {
                            let nib = _mm256_loadu_si256(
                                blk.add(LO6 + (8 * c + t) * 32) as *const __m256i
                            );
                            let hb = _mm256_loadu_si256(
                                blk.add(HI6 + (8 * (c / 2) + t) * 32) as *const __m256i
                            );
                            let hb = _mm256_srl_epi16(hb, _mm_cvtsi32_si128(4 * (c % 2) as i32));
                            let hlo = _mm256_slli_epi16(_mm256_and_si256(hb, m3), 4);
                            let hhi = _mm256_slli_epi16(
                                _mm256_and_si256(_mm256_srli_epi16(hb, 2), m3),
                                4,
                            );
                            w[t] = _mm256_or_si256(_mm256_and_si256(nib, m4), hlo);
                            w[8 + t] = _mm256_or_si256(
                                _mm256_and_si256(_mm256_srli_epi16(nib, 4), m4),
                                hhi,
                            );
                        }
                        // Scales of sub-blocks 4c..4c+4 as i32 lanes: pair
                        // 2c holds 4c, 4c+1; pair 2c+1 holds 4c+2, 4c+3.
                        let lo16 = |v: __m256i| _mm256_srai_epi32(_mm256_slli_epi32(v, 16), 16);
                        let hi16 = |v: __m256i| _mm256_srai_epi32(v, 16);
                        let scs = [
                            lo16(pairs[2 * c]),
                            hi16(pairs[2 * c]),
                            lo16(pairs[2 * c + 1]),
                            hi16(pairs[2 * c + 1]),
                        ];
                        // Each scale (signed, 8 bits) in both i16 halves of its lane.
                        let sc16 = scs.map(|v| {
                            _mm256_or_si256(
                                _mm256_and_si256(v, _mm256_set1_epi32(0xFFFF)),
                                _mm256_slli_epi32(v, 16),
                            )
                        });
                        for r in 0..R {
                            let xp = xs[r].qs.as_ptr().add(256 * i + 64 * c) as *const i32;
                            for (sb, sc) in scs.iter().enumerate() {
                                if $vnni {
                                    let mut dot = _mm256_setzero_si256();
                                    for u in 0..4 {
                                        // Sub-block sb: vectors 4sb..4sb+4, activations 16sb + 4u.
                                        let wt = w[4 * sb + u];
                                        let xb = _mm256_set1_epi32(std::ptr::read_unaligned(
                                            xp.add(4 * sb + u),
                                        ));
                                        dot = _mm256_dpbusd_avx_epi32(dot, wt, xb);
                                    }
                                    isum[r] =
                                        _mm256_add_epi32(isum[r], _mm256_mullo_epi32(dot, *sc));
                                } else {
                                    // `maddubs` pairs (each at most 2·63·127 =
                                    // 16,002) summed as i16 two at a time, then
                                    // `madd` by the scale: dot · scale exactly.
                                    let mut p16 = [_mm256_setzero_si256(); 2];
                                    for (h, ph) in p16.iter_mut().enumerate() {
                                        for u in 2 * h..2 * h + 2 {
                                            let xb = _mm256_set1_epi32(std::ptr::read_unaligned(
                                                xp.add(4 * sb + u),
                                            ));
                                            *ph = _mm256_add_epi16(
                                                *ph,
                                                _mm256_maddubs_epi16(w[4 * sb + u], xb),
                                            );
                                        }
                                    }
                                    let sd = _mm256_add_epi32(
                                        _mm256_madd_epi16(p16[0], sc16[sb]),
                                        _mm256_madd_epi16(p16[1], sc16[sb]),
                                    );
                                    isum[r] = _mm256_add_epi32(isum[r], sd);
                                }
                            }
                        }
                    }
                    let dv = _mm256_cvtph_ps(_mm_loadu_si128(blk as *const __m128i));
                    for r in 0..R {
                        let x = &xs[r];
                        let sums = &x.sums[16 * i..16 * i + 16];
                        let mut bint = _mm256_setzero_si256();
                        for (p, v) in pairs.iter().enumerate() {
                            let lo = sums[2 * p] as i16 as u16 as u32;
                            let hi = sums[2 * p + 1] as i16 as u16 as u32;
                            let pair = _mm256_set1_epi32((lo | (hi << 16)) as i32);
                            bint = _mm256_add_epi32(bint, _mm256_madd_epi16(*v, pair));
                        }
                        let t = _mm256_sub_epi32(isum[r], _mm256_slli_epi32(bint, 5));
                        let sd = _mm256_mul_ps(dv, _mm256_set1_ps(x.d[i]));
                        acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(t), sd, acc[r]);
                    }
                }
                for r in 0..R {
                    _mm256_storeu_ps(out[r].as_mut_ptr(), acc[r]);
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
