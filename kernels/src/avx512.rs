//! AVX-512 (F, BW, VNNI) versions of the repacked kernels: two groups of 8
//! weight rows side by side in one 512-bit register (group `2u` in the low
//! half, `2u + 1` in the high half), so one `vpdpbusd` against four
//! broadcast activation bytes advances 16 dot products. Each lane does the
//! same integer sums and the same float operations as the 256-bit kernels
//! (`x8`, `x8k`) and the portable code, so the results are the same bits.

#![allow(clippy::missing_safety_doc)]

use std::arch::x86_64::*;

use crate::acts::ActRow;
use crate::format::Format;
use crate::x8::{group_block_bytes, offsets};
use crate::x8k::{gbb, GBB6, QH};

/// 32 bytes at `a` (low half) and at `b` (high half).
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
#[inline]
unsafe fn pair(a: *const u8, b: *const u8) -> __m512i {
    _mm512_inserti64x4(
        _mm512_castsi256_si512(_mm256_loadu_si256(a as *const __m256i)),
        _mm256_loadu_si256(b as *const __m256i),
        1,
    )
}

/// 8 f16 at `a` and 8 at `b` as 16 f32.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
#[inline]
unsafe fn f16_pair(a: *const u8, b: *const u8) -> __m512 {
    _mm512_cvtph_ps(_mm256_inserti128_si256(
        _mm256_castsi128_si256(_mm_loadu_si128(a as *const __m128i)),
        _mm_loadu_si128(b as *const __m128i),
        1,
    ))
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
#[inline]
unsafe fn bcast(p: *const i8, t: usize) -> __m512i {
    _mm512_set1_epi32(std::ptr::read_unaligned((p as *const i32).add(t)))
}

/// The 32-weight formats: `gw` holds two groups (`2 × nb` group-blocks).
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
pub unsafe fn dot_group2<const R: usize>(
    f: Format,
    gw: &[u8],
    xs: &[ActRow<'_>; R],
    out: &mut [[f32; 16]; R],
) {
    let gbb = group_block_bytes(f);
    let nb = gw.len() / gbb / 2;
    let g1 = gw.as_ptr().add(nb * gbb);
    let (mo, qho, qo) = offsets(f);
    let m4 = _mm512_set1_epi8(0xF);
    let spread = _mm512_broadcast_i32x4(_mm_set_epi8(
        12, 12, 12, 12, 8, 8, 8, 8, 4, 4, 4, 4, 0, 0, 0, 0,
    ));
    let bits = _mm512_set1_epi32(0x08040201);
    let b10 = _mm512_set1_epi8(0x10);
    let zero = _mm512_setzero_si512();
    let mut acc = [_mm512_setzero_ps(); R];
    let mut bacc = [_mm512_setzero_ps(); R];
    let min = matches!(f, Format::Q4_1 | Format::Q5_1);
    let q5 = matches!(f, Format::Q5_0 | Format::Q5_1);
    let off: i32 = match f {
        Format::Q4_0 => 8,
        Format::Q5_0 => 16,
        _ => 0,
    };
    for i in 0..nb {
        let (b0, b1) = (gw.as_ptr().add(i * gbb), g1.add(i * gbb));
        let dv = f16_pair(b0, b1);
        if f == Format::Q8_0 {
            let mut w = [zero; 8];
            let mut neg = [0u64; 8];
            for t in 0..8 {
                w[t] = pair(b0.add(qo + 32 * t), b1.add(qo + 32 * t));
                neg[t] = _mm512_movepi8_mask(w[t]);
                w[t] = _mm512_abs_epi8(w[t]);
            }
            for r in 0..R {
                let xp = xs[r].qs.as_ptr().add(32 * i);
                let mut s = zero;
                for t in 0..8 {
                    let xb = bcast(xp, t);
                    // x with the sign of w (|w|·sign(w)·x = w·x; w = 0 adds 0).
                    let sx = _mm512_mask_sub_epi8(xb, neg[t], zero, xb);
                    s = _mm512_dpbusd_epi32(s, w[t], sx);
                }
                let sc = _mm512_mul_ps(dv, _mm512_set1_ps(xs[r].d[i]));
                acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), sc, acc[r]);
            }
            continue;
        }
        let mut w = [zero; 8];
        let qh = if q5 {
            pair(b0.add(qho), b1.add(qho))
        } else {
            zero
        };
        for t in 0..4 {
            let c = pair(b0.add(qo + 32 * t), b1.add(qo + 32 * t));
            let mut lo = _mm512_and_si512(c, m4);
            let mut hi = _mm512_and_si512(_mm512_srli_epi16(c, 4), m4);
            if q5 {
                let expand = |sh: i32| {
                    let v = _mm512_srl_epi32(qh, _mm_cvtsi32_si128(sh));
                    let v = _mm512_shuffle_epi8(v, spread);
                    let m = _mm512_cmpeq_epi8_mask(_mm512_and_si512(v, bits), bits);
                    _mm512_maskz_mov_epi8(m, b10)
                };
                lo = _mm512_or_si512(lo, expand(4 * t as i32));
                hi = _mm512_or_si512(hi, expand(16 + 4 * t as i32));
            }
            w[t] = lo;
            w[4 + t] = hi;
        }
        let mv = if min {
            f16_pair(b0.add(mo), b1.add(mo))
        } else {
            _mm512_setzero_ps()
        };
        for r in 0..R {
            let xp = xs[r].qs.as_ptr().add(32 * i);
            let mut s = zero;
            for (t, wt) in w.iter().enumerate() {
                s = _mm512_dpbusd_epi32(s, *wt, bcast(xp, t));
            }
            if off != 0 {
                s = _mm512_sub_epi32(s, _mm512_set1_epi32(off * xs[r].sums[i]));
            }
            let sc = _mm512_mul_ps(dv, _mm512_set1_ps(xs[r].d[i]));
            acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), sc, acc[r]);
            if min {
                bacc[r] = _mm512_fmadd_ps(mv, _mm512_set1_ps(xs[r].s[i]), bacc[r]);
            }
        }
    }
    for r in 0..R {
        let v = if min {
            _mm512_add_ps(acc[r], bacc[r])
        } else {
            acc[r]
        };
        _mm512_storeu_ps(out[r].as_mut_ptr(), v);
    }
}

/// Q4_K (or, with `FIVE`, Q5_K; `x8k` layout): `gw` holds two groups.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
pub unsafe fn dot_group2_q4k<const R: usize, const FIVE: bool>(
    gw: &[u8],
    xs: &[ActRow<'_>; R],
    out: &mut [[f32; 16]; R],
) {
    const SC: usize = 32;
    const MINS: usize = 96;
    const QS: usize = 224;
    let gb = gbb(FIVE);
    let nb = gw.len() / gb / 2;
    let g1 = gw.as_ptr().add(nb * gb);
    let one = _mm512_set1_epi8(1);
    let m4 = _mm512_set1_epi8(0xF);
    let zero = _mm512_setzero_si512();
    let mut acc = [_mm512_setzero_ps(); R];
    let mut bacc = [_mm512_setzero_ps(); R];
    for i in 0..nb {
        let (b0, b1) = (gw.as_ptr().add(i * gb), g1.add(i * gb));
        let mut isum = [zero; R];
        for s in 0..8 {
            let (c, high) = (s / 2, s % 2 == 1);
            let mut w = [zero; 8];
            for (t, v) in w.iter_mut().enumerate() {
                let q = pair(b0.add(QS + (8 * c + t) * 32), b1.add(QS + (8 * c + t) * 32));
                *v = if high {
                    _mm512_and_si512(_mm512_srli_epi16(q, 4), m4)
                } else {
                    _mm512_and_si512(q, m4)
                };
                if FIVE {
                    let h = pair(b0.add(QH + t * 32), b1.add(QH + t * 32));
                    let h = _mm512_srl_epi16(h, _mm_cvtsi32_si128(s as i32));
                    *v = _mm512_or_si512(*v, _mm512_slli_epi16(_mm512_and_si512(h, one), 4));
                }
            }
            let scb = _mm_unpacklo_epi64(
                _mm_loadl_epi64(b0.add(SC + 8 * s) as *const __m128i),
                _mm_loadl_epi64(b1.add(SC + 8 * s) as *const __m128i),
            );
            let scv = _mm512_cvtepu8_epi32(scb);
            for r in 0..R {
                let xp = xs[r].qs.as_ptr().add(256 * i + 32 * s);
                let mut dot = zero;
                for (t, wt) in w.iter().enumerate() {
                    dot = _mm512_dpbusd_epi32(dot, *wt, bcast(xp, t));
                }
                isum[r] = _mm512_add_epi32(isum[r], _mm512_mullo_epi32(dot, scv));
            }
        }
        let dv = f16_pair(b0, b1);
        let ndmin = _mm512_castsi512_ps(_mm512_xor_si512(
            _mm512_castps_si512(f16_pair(b0.add(16), b1.add(16))),
            _mm512_set1_epi32(i32::MIN),
        ));
        let mut mp = [zero; 4];
        for (p, v) in mp.iter_mut().enumerate() {
            *v = pair(b0.add(MINS + 32 * p), b1.add(MINS + 32 * p));
        }
        for r in 0..R {
            let x = &xs[r];
            let sums = &x.sums[16 * i..16 * i + 16];
            let mut bint = zero;
            for (p, m) in mp.iter().enumerate() {
                let lo = (sums[4 * p] + sums[4 * p + 1]) as i16 as u16 as u32;
                let hi = (sums[4 * p + 2] + sums[4 * p + 3]) as i16 as u16 as u32;
                let pr = _mm512_set1_epi32((lo | (hi << 16)) as i32);
                bint = _mm512_add_epi32(bint, _mm512_madd_epi16(*m, pr));
            }
            let xd = _mm512_set1_ps(x.d[i]);
            acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[r]), _mm512_mul_ps(dv, xd), acc[r]);
            bacc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(bint), _mm512_mul_ps(ndmin, xd), bacc[r]);
        }
    }
    for r in 0..R {
        _mm512_storeu_ps(out[r].as_mut_ptr(), _mm512_add_ps(acc[r], bacc[r]));
    }
}

/// Q6_K (`x8k` layout): `gw` holds two groups.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
pub unsafe fn dot_group2_q6k<const R: usize>(
    gw: &[u8],
    xs: &[ActRow<'_>; R],
    out: &mut [[f32; 16]; R],
) {
    const SC6: usize = 16;
    const LO6: usize = 272;
    const HI6: usize = 1296;
    let nb = gw.len() / GBB6 / 2;
    let g1 = gw.as_ptr().add(nb * GBB6);
    let m4 = _mm512_set1_epi8(0xF);
    let m3 = _mm512_set1_epi8(3);
    let zero = _mm512_setzero_si512();
    let mut acc = [_mm512_setzero_ps(); R];
    for i in 0..nb {
        let (b0, b1) = (gw.as_ptr().add(i * GBB6), g1.add(i * GBB6));
        let mut pairs = [zero; 8];
        for (p, v) in pairs.iter_mut().enumerate() {
            *v = pair(b0.add(SC6 + 32 * p), b1.add(SC6 + 32 * p));
        }
        let mut isum = [zero; R];
        for c in 0..4 {
            let mut w = [zero; 16];
            for t in 0..8 {
                let nib = pair(
                    b0.add(LO6 + (8 * c + t) * 32),
                    b1.add(LO6 + (8 * c + t) * 32),
                );
                let hb = pair(
                    b0.add(HI6 + (8 * (c / 2) + t) * 32),
                    b1.add(HI6 + (8 * (c / 2) + t) * 32),
                );
                let hb = _mm512_srl_epi16(hb, _mm_cvtsi32_si128(4 * (c % 2) as i32));
                let hlo = _mm512_slli_epi16(_mm512_and_si512(hb, m3), 4);
                let hhi = _mm512_slli_epi16(_mm512_and_si512(_mm512_srli_epi16(hb, 2), m3), 4);
                w[t] = _mm512_or_si512(_mm512_and_si512(nib, m4), hlo);
                w[8 + t] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(nib, 4), m4), hhi);
            }
            let lo16 = |v: __m512i| _mm512_srai_epi32(_mm512_slli_epi32(v, 16), 16);
            let hi16 = |v: __m512i| _mm512_srai_epi32(v, 16);
            let scs = [
                lo16(pairs[2 * c]),
                hi16(pairs[2 * c]),
                lo16(pairs[2 * c + 1]),
                hi16(pairs[2 * c + 1]),
            ];
            for r in 0..R {
                let xp = xs[r].qs.as_ptr().add(256 * i + 64 * c);
                for (sb, sc) in scs.iter().enumerate() {
                    let mut dot = zero;
                    for u in 0..4 {
                        dot = _mm512_dpbusd_epi32(dot, w[4 * sb + u], bcast(xp, 4 * sb + u));
                    }
                    isum[r] = _mm512_add_epi32(isum[r], _mm512_mullo_epi32(dot, *sc));
                }
            }
        }
        let dv = f16_pair(b0, b1);
        for r in 0..R {
            let x = &xs[r];
            let sums = &x.sums[16 * i..16 * i + 16];
            let mut bint = zero;
            for (p, v) in pairs.iter().enumerate() {
                let lo = sums[2 * p] as i16 as u16 as u32;
                let hi = sums[2 * p + 1] as i16 as u16 as u32;
                bint = _mm512_add_epi32(
                    bint,
                    _mm512_madd_epi16(*v, _mm512_set1_epi32((lo | (hi << 16)) as i32)),
                );
            }
            let t = _mm512_sub_epi32(isum[r], _mm512_slli_epi32(bint, 5));
            let sd = _mm512_mul_ps(dv, _mm512_set1_ps(x.d[i]));
            acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t), sd, acc[r]);
        }
    }
    for r in 0..R {
        _mm512_storeu_ps(out[r].as_mut_ptr(), acc[r]);
    }
}
