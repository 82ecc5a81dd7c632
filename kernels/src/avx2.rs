//! x86-64 AVX2 + FMA + F16C path, selected at run time. Each function takes
//! one weight row and `R` activation rows: a weight block is unpacked once
//! and multiplied against every row, so prompt rows share the unpacking and
//! the trip through memory.
//!
//! Integer products use `maddubs` (unsigned weight byte × signed activation
//! byte → pairs of i16) and `madd` (pairs of i16 × scale → i32 lanes of four
//! consecutive values). Every intermediate fits its type: the largest pair
//! is 63·127·2 = 16002 < 2^15 (6-bit weights), and Q8_0's signed weights go
//! through the sign trick (|w| × sign(x, w)), |w| ≤ 127.

#![allow(clippy::missing_safety_doc)]

use std::arch::x86_64::*;

use crate::acts::ActRow;
use crate::format::{scale_min_k4, Format};

/// The kernels, instantiated once per instruction set: `$vnni` replaces
/// `maddubs` + `madd` by AVX-VNNI's `vpdpbusd`, which sums the same four
/// products per lane exactly (no intermediate i16), so both give the same
/// integers and the same results.
macro_rules! kernels {
    ($feat:literal, $vnni:literal) => {
        use super::*;

        /// Σ of four u8·i8 products per i32 lane.
        macro_rules! dot4 {
            ($u:expr, $x:expr) => {
                if $vnni {
                    _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), $u, $x)
                } else {
                    _mm256_madd_epi16(_mm256_maddubs_epi16($u, $x), _mm256_set1_epi16(1))
                }
            };
        }
        /// The same with an i16 scale per 16 values ($s16 as i16 pairs).
        /// `maddubs` + `madd` on both instruction sets: the scale rides on
        /// the widening `madd` (AVX-VNNI's `vpdpbusd` would need a separate
        /// 32-bit multiply by the scale, two more micro-ops). Every pair
        /// fits an i16 (at most 63·127·2 = 16002).
        macro_rules! sdot4 {
            ($u:expr, $x:expr, $s16:expr) => {
                _mm256_madd_epi16(_mm256_maddubs_epi16($u, $x), $s16)
            };
        }

        /// Σ of eight i32 lanes (exact).
        #[target_feature(enable = $feat)]
        #[inline]
        unsafe fn hsum_i32(v: __m256i) -> i32 {
            let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
            let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
            _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32(s, 1)))
        }

        #[target_feature(enable = $feat)]
        #[inline]
        unsafe fn f16(p: *const u8) -> f32 {
            let v = _mm_cvtsi32_si128(u16::from_le_bytes([*p, *p.add(1)]) as i32);
            _mm_cvtss_f32(_mm_cvtph_ps(v))
        }

        #[target_feature(enable = $feat)]
        #[inline]
        unsafe fn hsum(v: __m256) -> f32 {
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
        }

        /// 16 bytes of packed nibbles → 32 bytes: low nibbles, then high nibbles.
        #[target_feature(enable = $feat)]
        #[inline]
        unsafe fn nibbles(p: *const u8) -> __m256i {
            let v = _mm_loadu_si128(p as *const __m128i);
            let m4 = _mm_set1_epi8(0xF);
            _mm256_set_m128i(
                _mm_and_si128(_mm_srli_epi16(v, 4), m4),
                _mm_and_si128(v, m4),
            )
        }

        /// Byte `i` is 0xFF where bit `i` of the 32-bit little-endian word is set.
        #[target_feature(enable = $feat)]
        #[inline]
        unsafe fn bytes_from_bits(p: *const u8) -> __m256i {
            let w = u32::from_le_bytes([*p, *p.add(1), *p.add(2), *p.add(3)]) as i32;
            let shuf = _mm256_set_epi64x(
                0x0303030303030303,
                0x0202020202020202,
                0x0101010101010101,
                0,
            );
            let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(w), shuf);
            let bytes = _mm256_or_si256(bytes, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe_u64 as i64));
            _mm256_cmpeq_epi8(bytes, _mm256_set1_epi64x(-1))
        }

        #[target_feature(enable = $feat)]
        #[inline]
        unsafe fn load(x: &[i8], at: usize) -> __m256i {
            debug_assert!(at + 32 <= x.len());
            _mm256_loadu_si256(x.as_ptr().add(at) as *const __m256i)
        }

        /// Same arithmetic as `scalar::epilogue`.
        #[target_feature(enable = $feat)]
        #[inline]
        unsafe fn epilogue(
            acc: &mut __m256,
            bacc: &mut f32,
            lanes: __m256i,
            ws: f32,
            bw: f32,
            bint: i32,
            dx: f32,
        ) {
            let sw = ws * dx;
            *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(lanes), _mm256_set1_ps(sw), *acc);
            *bacc += (bw * dx) * bint as f32;
        }

        /// The 32-weight formats, one function per format (`F` is
        /// `Format as u8`): Q4_0, Q5_0 and Q8_0 as signed bytes (sign trick), Q4_1
        /// and Q5_1 as unsigned bytes plus the block minimum times the activation
        /// block's sum.
        #[target_feature(enable = $feat)]
        unsafe fn dot32<const F: u8, const R: usize>(
            w: &[u8],
            xs: &[ActRow<'_>; R],
            out: &mut [f32],
        ) {
            let f = Format::ALL[F as usize];
            let bb = f.block_bytes();
            let nb = w.len() / bb;
            let mut acc = [_mm256_setzero_ps(); R];
            let mut bvec = [_mm256_setzero_ps(); R];
            let m10 = _mm256_set1_epi8(0x10);
            for i in 0..nb {
                let b = w.as_ptr().add(i * bb);
                let d = f16(b);
                let u = match f {
                    Format::Q4_0 => _mm256_sub_epi8(nibbles(b.add(2)), _mm256_set1_epi8(8)),
                    Format::Q4_1 => nibbles(b.add(4)),
                    Format::Q5_0 => _mm256_sub_epi8(
                        _mm256_or_si256(
                            nibbles(b.add(6)),
                            _mm256_and_si256(bytes_from_bits(b.add(2)), m10),
                        ),
                        m10,
                    ),
                    Format::Q5_1 => _mm256_or_si256(
                        nibbles(b.add(8)),
                        _mm256_and_si256(bytes_from_bits(b.add(4)), m10),
                    ),
                    _ => _mm256_loadu_si256(b.add(2) as *const __m256i),
                };
                if matches!(f, Format::Q4_1 | Format::Q5_1) {
                    for r in 0..R {
                        let x = load(xs[r].qs, 32 * i);
                        let lanes = dot4!(u, x);
                        acc[r] = _mm256_fmadd_ps(
                            _mm256_cvtepi32_ps(lanes),
                            _mm256_set1_ps(d * xs[r].d[i]),
                            acc[r],
                        );
                    }
                } else {
                    let au = _mm256_sign_epi8(u, u);
                    for r in 0..R {
                        let x = load(xs[r].qs, 32 * i);
                        let lanes = dot4!(au, _mm256_sign_epi8(x, u));
                        acc[r] = _mm256_fmadd_ps(
                            _mm256_cvtepi32_ps(lanes),
                            _mm256_set1_ps(d * xs[r].d[i]),
                            acc[r],
                        );
                    }
                }
            }
            // Minimums, in a second pass (kept out of the main loop so its
            // accumulators stay in registers): eight blocks at a time, lane =
            // block number % 8, the same order as the portable path.
            if matches!(f, Format::Q4_1 | Format::Q5_1) {
                for g0 in (0..nb).step_by(8) {
                    let cnt = (nb - g0).min(8);
                    let mut mh = [0u16; 8];
                    for (t, v) in mh.iter_mut().take(cnt).enumerate() {
                        let p = w.as_ptr().add((g0 + t) * bb + 2);
                        *v = u16::from_le_bytes([*p, *p.add(1)]);
                    }
                    let mv = _mm256_cvtph_ps(_mm_loadu_si128(mh.as_ptr() as *const __m128i));
                    for r in 0..R {
                        let mut sv = [0f32; 8];
                        sv[..cnt].copy_from_slice(&xs[r].s[g0..g0 + cnt]);
                        bvec[r] = _mm256_fmadd_ps(mv, _mm256_loadu_ps(sv.as_ptr()), bvec[r]);
                    }
                }
            }
            for r in 0..R {
                out[r] = hsum(acc[r]) + hsum(bvec[r]);
            }
        }

        /// Q4_K and Q5_K: eight 32-weight sub-blocks with 6-bit scales and mins,
        /// integer sums over the whole 256-weight block.
        #[target_feature(enable = $feat)]
        unsafe fn dot_q45k<const R: usize>(
            f: Format,
            w: &[u8],
            xs: &[ActRow<'_>; R],
            out: &mut [f32],
        ) {
            let bb = f.block_bytes();
            let nb = w.len() / bb;
            let five = f == Format::Q5K;
            let mut acc = [_mm256_setzero_ps(); R];
            let mut bacc = [0f32; R];
            let m4 = _mm256_set1_epi8(0xF);
            let one = _mm256_set1_epi8(1);
            let mut u = [_mm256_setzero_si256(); 8];
            let mut sc = [_mm256_setzero_si256(); 8];
            let mut mins = [0i32; 8];
            for i in 0..nb {
                let b = w.as_ptr().add(i * bb);
                let blk = std::slice::from_raw_parts(b, bb);
                let (d, dmin) = (f16(b), f16(b.add(2)));
                for (j, (s, m)) in sc.iter_mut().zip(mins.iter_mut()).enumerate() {
                    let (a, mm) = scale_min_k4(j, &blk[4..16]);
                    *s = _mm256_set1_epi16(a as i16);
                    *m = mm as i32;
                }
                // hadd of the 16 sums per 16 gives the sums per 32 in the
                // order 0 1 4 5 2 3 6 7; the minimums in the same order.
                let mv = _mm256_setr_epi32(
                    mins[0], mins[1], mins[4], mins[5], mins[2], mins[3], mins[6], mins[7],
                );
                let qs = if five { b.add(48) } else { b.add(16) };
                let hb = if five {
                    _mm256_loadu_si256(b.add(16) as *const __m256i)
                } else {
                    _mm256_setzero_si256()
                };
                for c in 0..4 {
                    let v = _mm256_loadu_si256(qs.add(32 * c) as *const __m256i);
                    let mut lo = _mm256_and_si256(v, m4);
                    let mut hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
                    if five {
                        let h0 = _mm256_and_si256(
                            _mm256_srl_epi16(hb, _mm_cvtsi32_si128(2 * c as i32)),
                            one,
                        );
                        let h1 = _mm256_and_si256(
                            _mm256_srl_epi16(hb, _mm_cvtsi32_si128(2 * c as i32 + 1)),
                            one,
                        );
                        lo = _mm256_or_si256(lo, _mm256_slli_epi16(h0, 4));
                        hi = _mm256_or_si256(hi, _mm256_slli_epi16(h1, 4));
                    }
                    u[2 * c] = lo;
                    u[2 * c + 1] = hi;
                }
                for r in 0..R {
                    let x = &xs[r];
                    let mut lanes = _mm256_setzero_si256();
                    for s in 0..8 {
                        lanes = _mm256_add_epi32(
                            lanes,
                            sdot4!(u[s], load(x.qs, 256 * i + 32 * s), sc[s]),
                        );
                    }
                    let sp = x.sums.as_ptr().add(16 * i) as *const __m256i;
                    let s32 =
                        _mm256_hadd_epi32(_mm256_loadu_si256(sp), _mm256_loadu_si256(sp.add(1)));
                    let bint = hsum_i32(_mm256_mullo_epi32(mv, s32));
                    epilogue(&mut acc[r], &mut bacc[r], lanes, d, -dmin, bint, x.d[i]);
                }
            }
            for r in 0..R {
                out[r] = hsum(acc[r]) + bacc[r];
            }
        }

        /// Q6_K: 6-bit unsigned values (the −32 offset goes through the sums), 16
        /// signed 8-bit scales per 256 weights, one per 16.
        #[target_feature(enable = $feat)]
        unsafe fn dot_q6k<const R: usize>(w: &[u8], xs: &[ActRow<'_>; R], out: &mut [f32]) {
            let bb = Format::Q6K.block_bytes();
            let nb = w.len() / bb;
            let mut acc = [_mm256_setzero_ps(); R];
            let mut bacc = [0f32; R];
            let m4 = _mm256_set1_epi8(0xF);
            let m3 = _mm256_set1_epi8(3);
            let mut u = [_mm256_setzero_si256(); 8];
            let mut scv = [_mm256_setzero_si256(); 8];
            for i in 0..nb {
                let b = w.as_ptr().add(i * bb);
                let sc = std::slice::from_raw_parts(b.add(192), 16);
                let d = f16(b.add(208));
                for h in 0..2 {
                    let ql_lo = _mm256_loadu_si256(b.add(64 * h) as *const __m256i);
                    let ql_hi = _mm256_loadu_si256(b.add(64 * h + 32) as *const __m256i);
                    let qh = _mm256_loadu_si256(b.add(128 + 32 * h) as *const __m256i);
                    macro_rules! hbits {
                        ($s:literal) => {
                            _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, $s), m3), 4)
                        };
                    }
                    u[4 * h] = _mm256_or_si256(_mm256_and_si256(ql_lo, m4), hbits!(0));
                    u[4 * h + 1] = _mm256_or_si256(_mm256_and_si256(ql_hi, m4), hbits!(2));
                    u[4 * h + 2] = _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16(ql_lo, 4), m4),
                        hbits!(4),
                    );
                    u[4 * h + 3] = _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16(ql_hi, 4), m4),
                        hbits!(6),
                    );
                }
                for (t, s) in scv.iter_mut().enumerate() {
                    *s = _mm256_set_m128i(
                        _mm_set1_epi16(sc[2 * t + 1] as i8 as i16),
                        _mm_set1_epi16(sc[2 * t] as i8 as i16),
                    );
                }
                // The 16 signed scales as i32, against the sums per 16.
                let sc_lo = _mm256_cvtepi8_epi32(_mm_loadl_epi64(sc.as_ptr() as *const __m128i));
                let sc_hi =
                    _mm256_cvtepi8_epi32(_mm_loadl_epi64(sc.as_ptr().add(8) as *const __m128i));
                for r in 0..R {
                    let x = &xs[r];
                    let mut lanes = _mm256_setzero_si256();
                    for t in 0..8 {
                        lanes = _mm256_add_epi32(
                            lanes,
                            sdot4!(u[t], load(x.qs, 256 * i + 32 * t), scv[t]),
                        );
                    }
                    let sp = x.sums.as_ptr().add(16 * i) as *const __m256i;
                    let s = hsum_i32(_mm256_add_epi32(
                        _mm256_mullo_epi32(sc_lo, _mm256_loadu_si256(sp)),
                        _mm256_mullo_epi32(sc_hi, _mm256_loadu_si256(sp.add(1))),
                    ));
                    epilogue(&mut acc[r], &mut bacc[r], lanes, d, d, -32 * s, x.d[i]);
                }
            }
            for r in 0..R {
                out[r] = hsum(acc[r]) + bacc[r];
            }
        }

        /// `out[r] = w · xs[r]` for up to eight rows.
        ///
        /// # Safety
        /// The CPU must have AVX2, FMA and F16C; `w` is whole blocks of `f` and
        /// every row holds as many values.
        pub unsafe fn dot_rows(f: Format, w: &[u8], xs: &[ActRow<'_>], out: &mut [f32]) {
            macro_rules! go {
                ($r:literal) => {{
                    let a: &[ActRow<'_>; $r] = xs.try_into().unwrap();
                    match f {
                        Format::Q4K | Format::Q5K => dot_q45k::<$r>(f, w, a, out),
                        Format::Q6K => dot_q6k::<$r>(w, a, out),
                        Format::Q4_0 => dot32::<0, $r>(w, a, out),
                        Format::Q4_1 => dot32::<1, $r>(w, a, out),
                        Format::Q5_0 => dot32::<2, $r>(w, a, out),
                        Format::Q5_1 => dot32::<3, $r>(w, a, out),
                        Format::Q8_0 => dot32::<4, $r>(w, a, out),
                    }
                }};
            }
            by_rows!(xs.len(), go)
        }
    };
}

pub(crate) mod plain {
    kernels!("avx2,fma,f16c", false);
}

pub(crate) mod vnni {
    kernels!("avx2,fma,f16c,avxvnni", true);
}
