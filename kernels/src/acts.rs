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
    pub fn quantize(x: &[f32], k: usize, unit: usize) -> Acts {
        assert!(unit == 32 || unit == 256);
        assert!(k.is_multiple_of(unit) && x.len().is_multiple_of(k));
        let sum_unit = if unit == 256 { 16 } else { 32 };
        let mut qs = vec![0i8; x.len()];
        let mut d = vec![0f32; x.len() / unit];
        let mut sums = vec![0i32; x.len() / sum_unit];
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
