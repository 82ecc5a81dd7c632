//! Interleaved ("repacked") weights for the 32-weight formats, as llama.cpp's
//! CPU repacking does: eight weight rows share each block, their bytes laid
//! out so that one 256-bit register holds four consecutive weights of each
//! of the eight rows. One `vpdpbusd` (or `maddubs`+`madd`) against a
//! broadcast of four activation bytes then advances eight dot products at
//! once, and each block's scale multiply is one vector operation for eight
//! outputs — about a third of the instructions of row-by-row dot products.
//!
//! Repacking reorders bytes only: the same size as the file's tensor.
//! Layout of one group of 8 rows, per block (bytes):
//! - `d`: 8 × f16 scales (16)
//! - `m`: 8 × f16 minimums (16; Q4_1, Q5_1)
//! - `qh`: 8 × u32 fifth bits (32; Q5_0, Q5_1)
//! - `q`: Q8_0: 8 chunks `t` of 32 bytes, row `j`'s bytes `4t..4t+4` at
//!   `4j`; 4-bit formats: 4 chunks of 32 bytes, row `j`'s packed bytes
//!   `qs[4t..4t+4]` at `4j` (low nibbles: weights `4t..4t+4`, high nibbles:
//!   weights `16+4t..16+4t+4`).
//!
//! The arithmetic (both paths, bit-identical): for output `(r, j)`,
//! `acc = fma(isum as f32, d_j · dx, acc)` block by block, where `isum` is
//! the exact integer dot product of the block's signed weights with the
//! activation block; for Q4_1/Q5_1 also `bacc = fma(m_j, s, bacc)` with the
//! activation block's `d·Σq`, and the result is `acc + bacc`.

use crate::acts::ActRow;
use crate::format::{f16_at, Format};

/// Whether a format has an interleaved layout.
pub fn supported(f: Format) -> bool {
    matches!(
        f,
        Format::Q4_0
            | Format::Q4_1
            | Format::Q5_0
            | Format::Q5_1
            | Format::Q8_0
            | Format::Q4K
            | Format::Q5K
            | Format::Q6K
    )
}

/// Bytes of one group of 8 repacked rows of `k` weights.
pub(crate) fn group_bytes(f: Format, k: usize) -> usize {
    if matches!(f, Format::Q4K | Format::Q5K) {
        k / 256 * crate::x8k::gbb(f == Format::Q5K)
    } else if f == Format::Q6K {
        k / 256 * crate::x8k::GBB6
    } else {
        k / 32 * group_block_bytes(f)
    }
}

fn has_min(f: Format) -> bool {
    matches!(f, Format::Q4_1 | Format::Q5_1)
}

fn has_qh(f: Format) -> bool {
    matches!(f, Format::Q5_0 | Format::Q5_1)
}

/// Byte offsets inside one group-block: (m, qh, q).
pub(crate) fn offsets(f: Format) -> (usize, usize, usize) {
    let m = 16;
    let qh = if has_min(f) { 32 } else { 16 };
    let q = qh + if has_qh(f) { 32 } else { 0 };
    (m, qh, q)
}

/// Bytes of one group-block (8 rows × one block).
pub(crate) fn group_block_bytes(f: Format) -> usize {
    8 * f.block_bytes()
}

/// Reorder `n` rows of `k` weights (the GGUF layout) into groups of 8;
/// a last partial group is padded with zero rows (zero scales).
pub fn repack(f: Format, w: &[u8], n: usize, k: usize) -> Vec<u8> {
    assert!(supported(f));
    if matches!(f, Format::Q4K | Format::Q5K) {
        return crate::x8k::repack(f, w, n, k);
    }
    if f == Format::Q6K {
        return crate::x8k::repack_q6k(w, n, k);
    }
    let (mo, qho, qo) = offsets(f);
    repack_blocks(f, w, n, k, group_block_bytes(f), |o, j, b| {
        o[2 * j..2 * j + 2].copy_from_slice(&b[0..2]);
        if has_min(f) {
            o[mo + 2 * j..mo + 2 * j + 2].copy_from_slice(&b[2..4]);
        }
        let (qh_at, qs_at) = match f {
            Format::Q4_0 => (0, 2),
            Format::Q4_1 => (0, 4),
            Format::Q5_0 => (2, 6),
            Format::Q5_1 => (4, 8),
            _ => (0, 2),
        };
        if has_qh(f) {
            o[qho + 4 * j..qho + 4 * j + 4].copy_from_slice(&b[qh_at..qh_at + 4]);
        }
        let chunks = if f == Format::Q8_0 { 8 } else { 4 };
        for t in 0..chunks {
            let dst = qo + 32 * t + 4 * j;
            o[dst..dst + 4].copy_from_slice(&b[qs_at + 4 * t..qs_at + 4 * t + 4]);
        }
    })
}

/// The loop every repacking shares: for each group of 8 rows and each of
/// its blocks, `fill(group_block, j, file_block)` for the rows `j` that
/// exist (a last partial group's missing rows stay zero: zero scales).
/// Group-blocks are `gbb` bytes.
pub(crate) fn repack_blocks(
    f: Format,
    w: &[u8],
    n: usize,
    k: usize,
    gbb: usize,
    mut fill: impl FnMut(&mut [u8], usize, &[u8]),
) -> Vec<u8> {
    let bb = f.block_bytes();
    let nb = k / f.block_elems();
    let rb = nb * bb;
    let groups = n.div_ceil(8);
    let mut out = vec![0u8; groups * nb * gbb];
    for g in 0..groups {
        for i in 0..nb {
            let o = &mut out[(g * nb + i) * gbb..(g * nb + i + 1) * gbb];
            for j in 0..8 {
                let row = g * 8 + j;
                if row < n {
                    fill(o, j, &w[row * rb + i * bb..row * rb + (i + 1) * bb]);
                }
            }
        }
    }
    out
}

/// The signed weights of row `j` of a group-block (portable path).
fn weights(f: Format, o: &[u8], j: usize) -> [i32; 32] {
    let (_, qho, qo) = offsets(f);
    let mut w = [0i32; 32];
    if f == Format::Q8_0 {
        for t in 0..8 {
            for b in 0..4 {
                w[4 * t + b] = o[qo + 32 * t + 4 * j + b] as i8 as i32;
            }
        }
        return w;
    }
    let qh = if has_qh(f) {
        u32::from_le_bytes([
            o[qho + 4 * j],
            o[qho + 4 * j + 1],
            o[qho + 4 * j + 2],
            o[qho + 4 * j + 3],
        ])
    } else {
        0
    };
    for t in 0..4 {
        for b in 0..4 {
            let byte = o[qo + 32 * t + 4 * j + b];
            let (e0, e1) = (4 * t + b, 16 + 4 * t + b);
            w[e0] = (byte & 0xF) as i32 | ((((qh >> e0) & 1) << 4) as i32);
            w[e1] = (byte >> 4) as i32 | ((((qh >> e1) & 1) << 4) as i32);
        }
    }
    let off = match f {
        Format::Q4_0 => 8,
        Format::Q5_0 => 16,
        _ => 0,
    };
    w.iter_mut().for_each(|v| *v -= off);
    w
}

/// Row `j` of a group's blocks, dequantized exactly as
/// [`crate::dequantize_row`] does for the file's layout.
pub(crate) fn dequantize_group_row(f: Format, gw: &[u8], j: usize, out: &mut [f32]) {
    if matches!(f, Format::Q4K | Format::Q5K) {
        return crate::x8k::dequantize_group_row(f, gw, j, out);
    }
    if f == Format::Q6K {
        return crate::x8k::dequantize_group_row_q6k(gw, j, out);
    }
    let gbb = group_block_bytes(f);
    let (mo, _, _) = offsets(f);
    for (blk, o) in gw.chunks_exact(gbb).zip(out.chunks_exact_mut(32)) {
        let w = weights(f, blk, j);
        let d = f16_at(blk, 2 * j);
        if has_min(f) {
            let m = f16_at(blk, mo + 2 * j);
            for (v, &q) in o.iter_mut().zip(&w) {
                *v = q as f32 * d + m;
            }
        } else {
            for (v, &q) in o.iter_mut().zip(&w) {
                *v = q as f32 * d;
            }
        }
    }
}

/// Portable path: outputs `8g..8g+8` of activation row `x` into `out`.
pub(crate) fn dot_group_scalar(f: Format, gw: &[u8], x: ActRow<'_>, out: &mut [f32; 8]) {
    if matches!(f, Format::Q4K | Format::Q5K) {
        return crate::x8k::dot_group_scalar(f, gw, x, out);
    }
    if f == Format::Q6K {
        return crate::x8k::dot_group_scalar_q6k(gw, x, out);
    }
    let gbb = group_block_bytes(f);
    let (mo, _, _) = offsets(f);
    for (j, o) in out.iter_mut().enumerate() {
        let mut acc = 0f32;
        let mut bacc = 0f32;
        for (i, blk) in gw.chunks_exact(gbb).enumerate() {
            let w = weights(f, blk, j);
            let xq = &x.qs[32 * i..32 * i + 32];
            let isum: i32 = w.iter().zip(xq).map(|(&a, &b)| a * b as i32).sum();
            let d = f16_at(blk, 2 * j);
            acc = (isum as f32).mul_add(d * x.d[i], acc);
            if has_min(f) {
                bacc = f16_at(blk, mo + 2 * j).mul_add(x.s[i], bacc);
            }
        }
        *o = if has_min(f) { acc + bacc } else { acc };
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod simd {
    use std::arch::x86_64::*;

    use super::{group_block_bytes, has_min, has_qh, offsets};
    use crate::acts::ActRow;
    use crate::format::Format;

    macro_rules! kernel {
        ($feat:literal, $vnni:literal) => {
            /// `R` activation rows × one group of 8 weight rows → `out[r]`.
            #[target_feature(enable = $feat)]
            pub unsafe fn dot_group<const R: usize>(
                f: Format,
                gw: &[u8],
                xs: &[ActRow<'_>; R],
                out: &mut [[f32; 8]; R],
            ) {
                let gbb = group_block_bytes(f);
                let nb = gw.len() / gbb;
                let (mo, qho, qo) = offsets(f);
                let m4 = _mm256_set1_epi8(0xF);
                let ones16 = _mm256_set1_epi16(1);
                // Byte k of each lane ← byte 0 of the lane; bit k of that byte.
                let spread = _mm256_set_epi8(
                    12, 12, 12, 12, 8, 8, 8, 8, 4, 4, 4, 4, 0, 0, 0, 0, 12, 12, 12, 12, 8, 8, 8, 8,
                    4, 4, 4, 4, 0, 0, 0, 0,
                );
                let bits = _mm256_set1_epi32(0x08040201);
                let b10 = _mm256_set1_epi8(0x10);
                let mut acc = [_mm256_setzero_ps(); R];
                let mut bacc = [_mm256_setzero_ps(); R];
                let min = has_min(f);
                let q5 = has_qh(f);
                let off: i32 = match f {
                    Format::Q4_0 => 8,
                    Format::Q5_0 => 16,
                    _ => 0,
                };
                for i in 0..nb {
                    let blk = gw.as_ptr().add(i * gbb);
                    let dv = _mm256_cvtph_ps(_mm_loadu_si128(blk as *const __m128i));
                    if f == Format::Q8_0 {
                        let mut w = [_mm256_setzero_si256(); 8];
                        for (t, v) in w.iter_mut().enumerate() {
                            *v = _mm256_loadu_si256(blk.add(qo + 32 * t) as *const __m256i);
                        }
                        let mut aw = [_mm256_setzero_si256(); 8];
                        for t in 0..8 {
                            aw[t] = _mm256_sign_epi8(w[t], w[t]);
                        }
                        for r in 0..R {
                            let xp = xs[r].qs.as_ptr().add(32 * i) as *const i32;
                            let mut s = _mm256_setzero_si256();
                            for t in 0..8 {
                                let xb = _mm256_set1_epi32(std::ptr::read_unaligned(xp.add(t)));
                                let sx = _mm256_sign_epi8(xb, w[t]);
                                s = if $vnni {
                                    _mm256_dpbusd_avx_epi32(s, aw[t], sx)
                                } else {
                                    _mm256_add_epi32(
                                        s,
                                        _mm256_madd_epi16(_mm256_maddubs_epi16(aw[t], sx), ones16),
                                    )
                                };
                            }
                            let sc = _mm256_mul_ps(dv, _mm256_set1_ps(xs[r].d[i]));
                            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), sc, acc[r]);
                        }
                        continue;
                    }
                    // 4-bit formats: 8 vectors of unsigned weights, chunk
                    // t's low nibbles (weights 4t..) and high ones (16+4t..).
                    let mut w = [_mm256_setzero_si256(); 8];
                    let qh = if q5 {
                        _mm256_loadu_si256(blk.add(qho) as *const __m256i)
                    } else {
                        _mm256_setzero_si256()
                    };
                    for t in 0..4 {
                        let c = _mm256_loadu_si256(blk.add(qo + 32 * t) as *const __m256i);
                        let mut lo = _mm256_and_si256(c, m4);
                        let mut hi = _mm256_and_si256(_mm256_srli_epi16(c, 4), m4);
                        if q5 {
                            macro_rules! expand {
                                ($sh:expr) => {{
                                    let v = _mm256_srl_epi32(qh, _mm_cvtsi32_si128($sh));
                                    let v = _mm256_shuffle_epi8(v, spread);
                                    _mm256_and_si256(
                                        _mm256_cmpeq_epi8(_mm256_and_si256(v, bits), bits),
                                        b10,
                                    )
                                }};
                            }
                            lo = _mm256_or_si256(lo, expand!(4 * t as i32));
                            hi = _mm256_or_si256(hi, expand!(16 + 4 * t as i32));
                        }
                        w[t] = lo;
                        w[4 + t] = hi;
                    }
                    let mv = if min {
                        _mm256_cvtph_ps(_mm_loadu_si128(blk.add(mo) as *const __m128i))
                    } else {
                        _mm256_setzero_ps()
                    };
                    for r in 0..R {
                        let xp = xs[r].qs.as_ptr().add(32 * i) as *const i32;
                        let mut s = _mm256_setzero_si256();
                        if $vnni {
                            for t in 0..8 {
                                // w[t] holds weights 4t.. (t < 4) or 16+4(t-4).. (t >= 4): the same index.
                                let xb = _mm256_set1_epi32(std::ptr::read_unaligned(xp.add(t)));
                                s = _mm256_dpbusd_avx_epi32(s, w[t], xb);
                            }
                        } else {
                            // `maddubs` pairs summed as i16, four at a time,
                            // before the widening `madd`: exact, since a pair
                            // is at most 2·15·127 = 3,810 (4-bit: both fours
                            // joined in i16, then one `madd`) or 2·31·127 =
                            // 7,874 (5-bit: one `madd` per four).
                            let mut p16 = [_mm256_setzero_si256(); 2];
                            for (h, ph) in p16.iter_mut().enumerate() {
                                for t in 4 * h..4 * h + 4 {
                                    let xb = _mm256_set1_epi32(std::ptr::read_unaligned(xp.add(t)));
                                    *ph = _mm256_add_epi16(*ph, _mm256_maddubs_epi16(w[t], xb));
                                }
                            }
                            s = if q5 {
                                _mm256_add_epi32(
                                    _mm256_madd_epi16(p16[0], ones16),
                                    _mm256_madd_epi16(p16[1], ones16),
                                )
                            } else {
                                _mm256_madd_epi16(_mm256_add_epi16(p16[0], p16[1]), ones16)
                            };
                        }
                        if off != 0 {
                            s = _mm256_sub_epi32(s, _mm256_set1_epi32(off * xs[r].sums[i]));
                        }
                        let sc = _mm256_mul_ps(dv, _mm256_set1_ps(xs[r].d[i]));
                        acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), sc, acc[r]);
                        if min {
                            bacc[r] = _mm256_fmadd_ps(mv, _mm256_set1_ps(xs[r].s[i]), bacc[r]);
                        }
                    }
                }
                for r in 0..R {
                    let v = if min {
                        _mm256_add_ps(acc[r], bacc[r])
                    } else {
                        acc[r]
                    };
                    _mm256_storeu_ps(out[r].as_mut_ptr(), v);
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
