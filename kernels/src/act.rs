//! Gated MLP activations: `out = act(gate) · up`, with `act` SiLU (Llama,
//! Qwen) or tanh-approximated GELU (Gemma), in one pass.
//!
//! A 512-token Gemma 3 prompt evaluates GELU on 19 million values; libm's
//! `tanhf` alone took a third of the prompt's time. Here both use the
//! softmax's polynomial [`crate::attn::exp`] in the form
//! `x / (1 + e^(−s))` (`0.5·(1 + tanh(z)) = 1 / (1 + e^(−2z))`), eight at a
//! time on AVX2, and the portable path does the same operations in the same
//! order, so every path gives the same bits.

use rayon::prelude::*;

use crate::attn::exp;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
use crate::Path;
use crate::{path, KernelError};

/// Which activation gates the MLP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Glu {
    /// `x · σ(x)`.
    Silu,
    /// `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))` (`gelu_pytorch_tanh`).
    GeluTanh,
}

/// `-2·√(2/π)`.
const GELU_S: f32 = -1.595_769_2;
const GELU_C: f32 = 0.044_715;

/// Values per task on rayon's threads; fewer stay on the calling thread.
const CHUNK: usize = 1 << 14;

/// One value: `x / (1 + e^(−s)) · u` with `−s` as the contract computes it.
#[inline]
fn one(kind: Glu, x: f32, u: f32) -> f32 {
    let ns = match kind {
        Glu::Silu => -x,
        Glu::GeluTanh => GELU_C.mul_add(x * x * x, x) * GELU_S,
    };
    x / (1.0 + exp(ns)) * u
}

/// `gate[i] ← act(gate[i]) · up[i]`.
pub fn glu(kind: Glu, gate: &mut [f32], up: &[f32]) -> Result<(), KernelError> {
    if gate.len() != up.len() {
        return Err(KernelError::Size {
            what: "up-projection values (as many as the gate's)",
            expected: gate.len(),
            got: up.len(),
        });
    }
    let p = path();
    let run = |(g, u): (&mut [f32], &[f32])| match p {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Avx2/AvxVnni are only chosen when the CPU has AVX2 and FMA.
        Path::Avx2 | Path::AvxVnni | Path::Avx512 => unsafe { simd::glu(kind, g, u) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: NEON is part of every 64-bit ARM target.
        Path::Neon | Path::NeonDot => unsafe { neon::glu(kind, g, u) },
        _ => {
            for (g, &u) in g.iter_mut().zip(u) {
                *g = one(kind, *g, u);
            }
        }
    };
    if gate.len() > CHUNK && rayon::current_num_threads() > 1 {
        gate.par_chunks_mut(CHUNK)
            .zip(up.par_chunks(CHUNK))
            .for_each(run);
    } else {
        run((gate, up));
    }
    Ok(())
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;

    use super::{Glu, GELU_C, GELU_S};
    use crate::attn::simd::exp8;

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn glu(kind: Glu, g: &mut [f32], u: &[f32]) {
        let n = g.len();
        let whole = n / 8 * 8;
        let (gp, up) = (g.as_mut_ptr(), u.as_ptr());
        let one = _mm256_set1_ps(1.0);
        let mut i = 0;
        while i < whole {
            let x = _mm256_loadu_ps(gp.add(i));
            let ns = match kind {
                Glu::Silu => _mm256_sub_ps(_mm256_setzero_ps(), x),
                Glu::GeluTanh => {
                    let x3 = _mm256_mul_ps(_mm256_mul_ps(x, x), x);
                    _mm256_mul_ps(
                        _mm256_fmadd_ps(_mm256_set1_ps(GELU_C), x3, x),
                        _mm256_set1_ps(GELU_S),
                    )
                }
            };
            let y = _mm256_div_ps(x, _mm256_add_ps(one, exp8(ns)));
            _mm256_storeu_ps(gp.add(i), _mm256_mul_ps(y, _mm256_loadu_ps(up.add(i))));
            i += 8;
        }
        for (x, &v) in g[whole..].iter_mut().zip(&u[whole..]) {
            *x = super::one(kind, *x, v);
        }
    }
}

/// [`simd`] on NEON: four values per register, the same operations.
#[cfg(target_arch = "aarch64")]
mod neon {
    use std::arch::aarch64::*;

    use super::{Glu, GELU_C, GELU_S};
    use crate::attn::neon::exp4;

    pub unsafe fn glu(kind: Glu, g: &mut [f32], u: &[f32]) {
        let n = g.len();
        let whole = n / 4 * 4;
        let (gp, up) = (g.as_mut_ptr(), u.as_ptr());
        let one = vdupq_n_f32(1.0);
        let mut i = 0;
        while i < whole {
            let x = vld1q_f32(gp.add(i));
            let ns = match kind {
                Glu::Silu => vnegq_f32(x),
                Glu::GeluTanh => {
                    let x3 = vmulq_f32(vmulq_f32(x, x), x);
                    vmulq_f32(vfmaq_f32(x, vdupq_n_f32(GELU_C), x3), vdupq_n_f32(GELU_S))
                }
            };
            let y = vdivq_f32(x, vaddq_f32(one, exp4(ns)));
            vst1q_f32(gp.add(i), vmulq_f32(y, vld1q_f32(up.add(i))));
            i += 4;
        }
        for (x, &v) in g[whole..].iter_mut().zip(&u[whole..]) {
            *x = super::one(kind, *x, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(kind: Glu, x: f64) -> f64 {
        match kind {
            Glu::Silu => x / (1.0 + (-x).exp()),
            Glu::GeluTanh => {
                0.5 * x
                    * (1.0
                        + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh())
            }
        }
    }

    #[test]
    fn activations_are_right_and_the_same_on_every_path() {
        let _lock = crate::PATH_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let x: Vec<f32> = (0..40_003).map(|i| -60.0 + i as f32 * 0.003).collect();
        let u: Vec<f32> = (0..x.len()).map(|i| 1.0 + (i % 7) as f32 * 0.25).collect();
        for kind in [Glu::Silu, Glu::GeluTanh] {
            let mut outs = Vec::new();
            for p in crate::Path::ALL.into_iter().filter(|p| p.available()) {
                assert!(crate::force_path(Some(p)));
                let mut g = x.clone();
                glu(kind, &mut g, &u).unwrap();
                outs.push((p, g));
            }
            crate::force_path(None);
            for (i, (&xi, &ui)) in x.iter().zip(&u).enumerate() {
                let want = reference(kind, xi as f64) * ui as f64;
                let got = outs[0].1[i] as f64;
                assert!(
                    (got - want).abs() <= 1e-6 * want.abs().max(1.0),
                    "{kind:?}({xi}) · {ui}: {got} vs {want}"
                );
            }
            for (p, o) in &outs[1..] {
                assert!(
                    o.iter()
                        .zip(&outs[0].1)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{kind:?}: {p:?} differs from {:?}",
                    outs[0].0
                );
            }
        }
        let mut g = vec![0f32; 3];
        assert!(glu(Glu::Silu, &mut g, &[0.0; 2]).is_err());
    }
}
