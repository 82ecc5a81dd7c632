//! Activations quantized per row to 8 bits, as llama.cpp does before a
//! quantized dot product: 32-value blocks (ggml's Q8_0/Q8_1) for the 32-weight
//! formats and 256-value blocks (Q8_K) for the k-quants, each with one f32
//! scale `d = max|x| / 127` and integer sums (per 32 values, or per 16 for
//! the k-quants) that the formats with an offset or a minimum need.

/// `t.round()` (half away from zero) without a libm call on baseline
/// x86-64 (no SSE4.1 `roundss`): truncate, then adjust. Exact for
/// |t| < 2^31; activations here are within ±127.5.
#[inline]
fn round_half_away(t: f32) -> i32 {
    let i = t as i32;
    let frac = t - i as f32;
    if frac >= 0.5 {
        i + 1
    } else if frac <= -0.5 {
        i - 1
    } else {
        i
    }
}

/// Activation values at or above which rows are quantized on rayon's threads.
const PARALLEL_VALUES: usize = 1 << 16;

/// One row: per block of `unit` values, `d = max|x| / 127`, `q =
/// round_half_away(x / d)` within ±127, and the integer sums per
/// 32 (unit 32) or 16 (unit 256) values.
fn quantize_row(
    path: crate::Path,
    x: &[f32],
    unit: usize,
    qs: &mut [i8],
    d: &mut [f32],
    sums: &mut [i32],
) {
    #[cfg(target_arch = "x86_64")]
    if path != crate::Path::Scalar {
        // SAFETY: a non-scalar path is only chosen when the CPU has AVX2;
        // the slices are whole blocks (checked by the caller).
        return unsafe { simd::quantize_row(x, unit, qs, d, sums) };
    }
    #[cfg(target_arch = "aarch64")]
    if path != crate::Path::Scalar {
        // SAFETY: NEON is part of every 64-bit ARM target; the slices are
        // whole blocks (checked by the caller).
        return unsafe { neon::quantize_row(x, unit, qs, d, sums) };
    }
    let _ = path;
    let sum_unit = if unit == 256 { 16 } else { 32 };
    for (b, (xb, qb)) in x
        .chunks_exact(unit)
        .zip(qs.chunks_exact_mut(unit))
        .enumerate()
    {
        let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
        let scale = amax / 127.0;
        let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
        for (q, v) in qb.iter_mut().zip(xb) {
            *q = round_half_away(v * inv).clamp(-127, 127) as i8;
        }
        d[b] = scale;
        for (s, qc) in qb.chunks_exact(sum_unit).enumerate() {
            sums[b * (unit / sum_unit) + s] = qc.iter().map(|&q| q as i32).sum();
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;

    /// `quantize_row` eight values at a time: the same products, the same
    /// half-away-from-zero rounding (truncate, then step by the sign where
    /// the exact remainder is at least one half), NaN to 0 as Rust's `as`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn quantize_row(
        x: &[f32],
        unit: usize,
        qs: &mut [i8],
        d: &mut [f32],
        sums: &mut [i32],
    ) {
        let sum_unit = if unit == 256 { 16 } else { 32 };
        let abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
        let half = _mm256_set1_ps(0.5);
        let one = _mm256_set1_ps(1.0);
        let lim = _mm256_set1_epi32(127);
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        for (b, (xb, qb)) in x
            .chunks_exact(unit)
            .zip(qs.chunks_exact_mut(unit))
            .enumerate()
        {
            let xp = xb.as_ptr();
            let mut m = _mm256_setzero_ps();
            for i in (0..unit).step_by(8) {
                m = _mm256_max_ps(m, _mm256_and_ps(_mm256_loadu_ps(xp.add(i)), abs));
            }
            let mut l = [0f32; 8];
            _mm256_storeu_ps(l.as_mut_ptr(), m);
            // max of |x| is exact in any order (NaN lanes are dropped by
            // max_ps as by f32::max here).
            let amax = l.iter().fold(0f32, |a, &v| a.max(v));
            let scale = amax / 127.0;
            let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
            let vinv = _mm256_set1_ps(inv);
            d[b] = scale;
            let mut q32 = [_mm256_setzero_si256(); 4];
            for c in 0..unit / 32 {
                for (r, q) in q32.iter_mut().enumerate() {
                    let p = _mm256_mul_ps(_mm256_loadu_ps(xp.add(32 * c + 8 * r)), vinv);
                    let t = _mm256_round_ps(p, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
                    let f = _mm256_sub_ps(p, t);
                    let up = _mm256_and_ps(_mm256_cmp_ps(f, half, _CMP_GE_OQ), one);
                    let down = _mm256_and_ps(
                        _mm256_cmp_ps(f, _mm256_sub_ps(_mm256_setzero_ps(), half), _CMP_LE_OQ),
                        one,
                    );
                    let r = _mm256_add_ps(t, _mm256_sub_ps(up, down));
                    // NaN lanes (0 · ∞) become 0, as `NaN as i32` does.
                    let r = _mm256_and_ps(r, _mm256_cmp_ps(p, p, _CMP_ORD_Q));
                    let i = _mm256_cvtps_epi32(r);
                    *q = _mm256_max_epi32(
                        _mm256_min_epi32(i, lim),
                        _mm256_sub_epi32(_mm256_setzero_si256(), lim),
                    );
                }
                let ab = _mm256_packs_epi32(q32[0], q32[1]);
                let cd = _mm256_packs_epi32(q32[2], q32[3]);
                let bytes = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(ab, cd), order);
                _mm256_storeu_si256(qb.as_mut_ptr().add(32 * c) as *mut __m256i, bytes);
                // Integer sums of the 32 values (or of each 16).
                let hsum = |v: __m256i| -> i32 {
                    let mut a = [0i32; 8];
                    _mm256_storeu_si256(a.as_mut_ptr() as *mut __m256i, v);
                    a.iter().sum()
                };
                if sum_unit == 32 {
                    let s = _mm256_add_epi32(
                        _mm256_add_epi32(q32[0], q32[1]),
                        _mm256_add_epi32(q32[2], q32[3]),
                    );
                    sums[b * (unit / 32) + c] = hsum(s);
                } else {
                    let base = b * (unit / 16) + 2 * c;
                    sums[base] = hsum(_mm256_add_epi32(q32[0], q32[1]));
                    sums[base + 1] = hsum(_mm256_add_epi32(q32[2], q32[3]));
                }
            }
        }
    }
}

/// `quantize_row` on NEON: `fcvtas` is round-half-away-from-zero (NaN to 0)
/// and `fmaxnm` drops NaN as `f32::max` does, so the same bytes, scales and
/// sums as the portable code.
#[cfg(target_arch = "aarch64")]
mod neon {
    use std::arch::aarch64::*;

    pub unsafe fn quantize_row(
        x: &[f32],
        unit: usize,
        qs: &mut [i8],
        d: &mut [f32],
        sums: &mut [i32],
    ) {
        let sum_unit = if unit == 256 { 16 } else { 32 };
        let (lim, nlim) = (vdupq_n_s32(127), vdupq_n_s32(-127));
        for (b, (xb, qb)) in x
            .chunks_exact(unit)
            .zip(qs.chunks_exact_mut(unit))
            .enumerate()
        {
            let xp = xb.as_ptr();
            let mut m = vdupq_n_f32(0.0);
            for i in (0..unit).step_by(4) {
                m = vmaxnmq_f32(m, vabsq_f32(vld1q_f32(xp.add(i))));
            }
            let scale = vmaxnmvq_f32(m) / 127.0;
            let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
            let vinv = vdupq_n_f32(inv);
            d[b] = scale;
            for c in 0..unit / 16 {
                let mut q = [vdupq_n_s32(0); 4];
                for (r, qr) in q.iter_mut().enumerate() {
                    let p = vmulq_f32(vld1q_f32(xp.add(16 * c + 4 * r)), vinv);
                    *qr = vmaxq_s32(vminq_s32(vcvtaq_s32_f32(p), lim), nlim);
                }
                let lo = vcombine_s16(vqmovn_s32(q[0]), vqmovn_s32(q[1]));
                let hi = vcombine_s16(vqmovn_s32(q[2]), vqmovn_s32(q[3]));
                vst1q_s8(
                    qb.as_mut_ptr().add(16 * c),
                    vcombine_s8(vqmovn_s16(lo), vqmovn_s16(hi)),
                );
                let s = vaddvq_s32(vaddq_s32(vaddq_s32(q[0], q[1]), vaddq_s32(q[2], q[3])));
                if sum_unit == 16 {
                    sums[b * (unit / 16) + c] = s;
                } else if c % 2 == 0 {
                    sums[b * (unit / 32) + c / 2] = s;
                } else {
                    sums[b * (unit / 32) + c / 2] += s;
                }
            }
        }
    }
}

/// A quantized `m × k` activation matrix.
pub struct Acts {
    pub(crate) k: usize,
    /// Values per scale: 32 or 256.
    pub(crate) unit: usize,
    /// Values per integer sum: 32 or 16.
    pub(crate) sum_unit: usize,
    pub(crate) qs: Vec<i8>,
    pub(crate) d: Vec<f32>,
    pub(crate) sums: Vec<i32>,
    /// Per 32-value block: `d · Σq` (ggml's Q8_1 `s`), for Q4_1/Q5_1 minimums.
    pub(crate) s: Vec<f32>,
}

/// One row of an [`Acts`].
#[derive(Clone, Copy)]
pub(crate) struct ActRow<'a> {
    pub qs: &'a [i8],
    pub d: &'a [f32],
    pub sums: &'a [i32],
    pub s: &'a [f32],
}

impl Acts {
    /// Quantize `x` (`m × k`, row-major) in blocks of `unit` (32 or 256).
    /// Rows are independent: many rows (a prompt) are shared among rayon's
    /// threads; the SIMD path gives the same bytes as the portable one.
    pub fn quantize(x: &[f32], k: usize, unit: usize) -> Acts {
        use rayon::prelude::*;
        assert!(unit == 32 || unit == 256);
        assert!(k.is_multiple_of(unit) && x.len().is_multiple_of(k));
        let sum_unit = if unit == 256 { 16 } else { 32 };
        let mut qs = vec![0i8; x.len()];
        let mut d = vec![0f32; x.len() / unit];
        let mut sums = vec![0i32; x.len() / sum_unit];
        let path = crate::path();
        type Row<'a> = ((&'a [f32], &'a mut [i8]), (&'a mut [f32], &'a mut [i32]));
        let row = |((xr, qr), (dr, sr)): Row<'_>| quantize_row(path, xr, unit, qr, dr, sr);
        if x.len() >= PARALLEL_VALUES && rayon::current_num_threads() > 1 && x.len() > k {
            x.par_chunks(k)
                .zip(qs.par_chunks_mut(k))
                .zip(
                    d.par_chunks_mut(k / unit)
                        .zip(sums.par_chunks_mut(k / sum_unit)),
                )
                .for_each(row);
        } else {
            x.chunks(k)
                .zip(qs.chunks_mut(k))
                .zip(d.chunks_mut(k / unit).zip(sums.chunks_mut(k / sum_unit)))
                .for_each(row);
        }
        let s = if unit == 32 {
            d.iter().zip(&sums).map(|(d, &q)| d * q as f32).collect()
        } else {
            Vec::new()
        };
        Acts {
            s,
            k,
            unit,
            sum_unit,
            qs,
            d,
            sums,
        }
    }

    pub fn rows(&self) -> usize {
        self.qs.len() / self.k
    }

    pub(crate) fn row(&self, r: usize) -> ActRow<'_> {
        let k = self.k;
        ActRow {
            qs: &self.qs[r * k..(r + 1) * k],
            d: &self.d[r * k / self.unit..(r + 1) * k / self.unit],
            sums: &self.sums[r * k / self.sum_unit..(r + 1) * k / self.sum_unit],
            s: if self.s.is_empty() {
                &[]
            } else {
                &self.s[r * k / 32..(r + 1) * k / 32]
            },
        }
    }
}

impl Acts {
    /// The values the kernels actually multiply: `q · d`.
    pub fn dequantize(&self) -> Vec<f32> {
        self.qs
            .iter()
            .enumerate()
            .map(|(i, &q)| q as f32 * self.d[i / self.unit])
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_path_quantizes_to_the_same_bytes() {
        let _lock = crate::PATH_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let mut seed = 7u64;
        let mut r = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 40.0
        };
        // Values at exact halves after scaling, zeros, an all-zero block,
        // infinities and NaN, and many rows (the threaded path).
        let mut x: Vec<f32> = (0..512 * 300).map(|_| r()).collect();
        for (i, v) in x.iter_mut().take(256).enumerate() {
            *v = (i as f32 - 128.0) * 0.5;
        }
        x[300..332].fill(0.0);
        x[700] = f32::INFINITY;
        x[900] = f32::NAN;
        x[1100] = f32::NEG_INFINITY;
        for unit in [32, 256] {
            let mut all = Vec::new();
            for p in crate::Path::ALL.into_iter().filter(|p| p.available()) {
                assert!(crate::force_path(Some(p)));
                let a = super::Acts::quantize(&x, 512, unit);
                let one = super::Acts::quantize(&x[..512], 512, unit);
                assert_eq!(one.qs, a.qs[..512], "{p:?}: a row alone");
                all.push((p, a));
            }
            crate::force_path(None);
            let (p0, a0) = &all[0];
            for (p, a) in &all[1..] {
                assert_eq!(a.qs, a0.qs, "{p:?} vs {p0:?}, unit {unit}");
                assert_eq!(a.sums, a0.sums, "{p:?} vs {p0:?}, unit {unit}");
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&a.d), bits(&a0.d), "{p:?} vs {p0:?}, unit {unit}");
            }
        }
    }

    #[test]
    fn rounding_matches_f32_round() {
        for i in -300_000..300_000 {
            let t = i as f32 / 2048.0;
            assert_eq!(super::round_half_away(t), t.round() as i32, "{t}");
        }
        for t in [
            0.5f32,
            -0.5,
            1.5,
            -1.5,
            126.5,
            -126.5,
            0.49999997,
            -0.49999997,
            f32::MIN_POSITIVE,
        ] {
            assert_eq!(super::round_half_away(t), t.round() as i32, "{t}");
        }
    }
}
