//! Choosing the next token: greedy, or seeded sampling with temperature,
//! top-k and top-p, with fixed arithmetic so that a seed gives the same
//! tokens on every CPU.
//!
//! The semantics are those of candle-transformers' `LogitsProcessor` (the
//! earlier implementation here): the logits times `1/T`, a softmax, top-k
//! then top-p, then one draw from `StdRng` seeded with the item's seed. The
//! difference is the arithmetic: candle's softmax calls libm's `expf` and
//! sums with SIMD reductions chosen at compile time (NEON lanes on ARM,
//! one sequential sum on a generic x86-64 build), so its probabilities, and
//! now and then a sampled token, differed between machines. Here the
//! exponential is `anjeon_kernels::attn::exp` (a fixed polynomial) and
//! every sum runs in index order.

use rand::distr::weighted::WeightedIndex;
use rand::distr::Distribution;
use rand::SeedableRng;

use super::generate::GenParams;
use crate::core::error::{Error, Result};

#[derive(Debug, Clone, PartialEq)]
enum Mode {
    Greedy,
    Sample {
        temperature: f64,
        top_k: Option<usize>,
        top_p: Option<f64>,
    },
}

/// One sequence's token chooser (its own random stream).
pub(crate) struct Sampler {
    rng: rand::rngs::StdRng,
    mode: Mode,
}

impl Sampler {
    pub(crate) fn new(seed: u64, p: &GenParams) -> Sampler {
        let mode = if p.temperature <= 0.0 {
            Mode::Greedy
        } else {
            Mode::Sample {
                temperature: p.temperature,
                top_k: p.top_k,
                top_p: p.top_p,
            }
        };
        Sampler {
            rng: rand::rngs::StdRng::seed_from_u64(seed),
            mode,
        }
    }

    /// The next token from one step's logits. A NaN logit is an error (the
    /// forward pass went wrong), in greedy mode too.
    pub(crate) fn sample(&mut self, logits: &[f32]) -> Result<u32> {
        if let Some(i) = logits.iter().position(|l| l.is_nan()) {
            return Err(Error::backend(
                "sampling",
                format!(
                    "the model's logits hold NaN (token {i} of {}): its weights or this input broke the forward pass",
                    logits.len()
                ),
            ));
        }
        let Mode::Sample {
            temperature,
            top_k,
            top_p,
        } = self.mode
        else {
            return Ok(argmax(logits));
        };
        let prs = softmax(logits, temperature)?;
        let p = top_p.filter(|p| *p > 0.0 && *p < 1.0).map(|p| p as f32);
        match top_k.filter(|&k| k < prs.len()) {
            None => match p {
                None => self.draw(&prs),
                Some(p) => self.draw(&nucleus(prs, p)),
            },
            Some(k) => {
                // The k most probable (in no particular order: the same
                // order on every machine, as the selection is fixed code).
                let mut idx: Vec<usize> = (0..prs.len()).collect();
                let (top, _, _) = idx.select_nth_unstable_by(k, |&i, &j| prs[j].total_cmp(&prs[i]));
                let top = top.to_vec();
                let kept: Vec<f32> = top.iter().map(|&i| prs[i]).collect();
                let total = kept.iter().fold(0f32, |s, &v| s + v);
                let i = match p.filter(|&p| p < total) {
                    None => self.draw(&kept)?,
                    Some(p) => self.draw(&nucleus(kept, p))?,
                };
                Ok(top[i as usize] as u32)
            }
        }
    }

    fn draw(&mut self, prs: &[f32]) -> Result<u32> {
        let d = WeightedIndex::new(prs).map_err(|e| Error::backend("sampling", e))?;
        Ok(d.sample(&mut self.rng) as u32)
    }
}

/// The first index of the largest value.
pub(crate) fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate().skip(1) {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// `softmax(l · (1/T))`, in index order, with anjeon's fixed `exp`; an
/// error unless the largest scaled logit is finite.
fn softmax(logits: &[f32], temperature: f64) -> Result<Vec<f32>> {
    let inv = (1.0 / temperature) as f32;
    let mut v: Vec<f32> = logits.iter().map(|&l| l * inv).collect();
    let max = v.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    if !max.is_finite() {
        return Err(Error::backend(
            "sampling",
            format!("the largest logit over the temperature is {max}"),
        ));
    }
    let mut sum = 0f32;
    for x in v.iter_mut() {
        // exp(−∞) is 0 (the kernel's exp clamps its argument).
        let d = *x - max;
        *x = if d == f32::NEG_INFINITY {
            0.0
        } else {
            anjeon_kernels::attn::exp(d)
        };
        sum += *x;
    }
    for x in v.iter_mut() {
        *x /= sum;
    }
    Ok(v)
}

/// Top-p: the most probable tokens (ties by index order of a stable sort)
/// until their sum reaches `p`; the rest get zero.
fn nucleus(mut prs: Vec<f32>, p: f32) -> Vec<f32> {
    let mut order: Vec<usize> = (0..prs.len()).collect();
    order.sort_by(|&i, &j| prs[j].total_cmp(&prs[i]));
    let mut sum = 0f32;
    for i in order {
        if sum >= p {
            prs[i] = 0.0;
        } else {
            sum += prs[i];
        }
    }
    prs
}

/// Divide positive logits of the tokens in `context` by `penalty` and
/// multiply negative ones by it (each token once).
pub(crate) fn repeat_penalty(logits: &mut [f32], penalty: f32, context: &[u32]) {
    let mut seen = std::collections::HashSet::new();
    for &t in context {
        if !seen.insert(t) {
            continue;
        }
        if let Some(l) = logits.get_mut(t as usize) {
            if *l >= 0.0 {
                *l /= penalty;
            } else {
                *l *= penalty;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_transformers::generation::{LogitsProcessor, Sampling};

    fn params(temperature: f64, top_k: Option<usize>, top_p: Option<f64>) -> GenParams {
        GenParams {
            temperature,
            top_k,
            top_p,
            ..Default::default()
        }
    }

    /// Same semantics as candle's `LogitsProcessor` (the independent
    /// reference): over random logits and seeds, the same tokens, except
    /// where the probabilities differ in their last bits and a draw lands
    /// on that edge (rare).
    #[test]
    fn draws_as_candles_logits_processor_does() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut unit = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 40) as f32 / (1u64 << 24) as f32
        };
        let cases: [(f64, Option<usize>, Option<f64>); 5] = [
            (0.0, None, None),
            (0.7, None, None),
            (1.0, Some(40), None),
            (0.8, None, Some(0.9)),
            (1.2, Some(50), Some(0.95)),
        ];
        let (mut n, mut same) = (0, 0);
        for seed in 0..40u64 {
            for &(t, k, p) in &cases {
                let gp = params(t, k, p);
                let sampling = if t <= 0.0 {
                    Sampling::ArgMax
                } else {
                    match (k, p) {
                        (None, None) => Sampling::All { temperature: t },
                        (Some(k), None) => Sampling::TopK { k, temperature: t },
                        (None, Some(p)) => Sampling::TopP { p, temperature: t },
                        (Some(k), Some(p)) => Sampling::TopKThenTopP {
                            k,
                            p,
                            temperature: t,
                        },
                    }
                };
                let mut ours = Sampler::new(seed, &gp);
                let mut theirs = LogitsProcessor::from_sampling(seed, sampling);
                for _ in 0..8 {
                    let logits: Vec<f32> = (0..500).map(|_| 12.0 * unit() - 6.0).collect();
                    let t = candle_core::Tensor::new(logits.as_slice(), &candle_core::Device::Cpu)
                        .unwrap();
                    let a = ours.sample(&logits).unwrap();
                    let b = theirs.sample(&t).unwrap();
                    n += 1;
                    same += usize::from(a == b);
                }
            }
        }
        eprintln!("{same} of {n} draws equal");
        assert!(same * 1000 >= n * 995, "{same} of {n} draws equal");
    }

    /// Fixed draws for fixed logits and seeds: any change of arithmetic or
    /// order shows here, on every machine the tests run on (ARM included).
    #[test]
    fn draws_have_the_committed_values() {
        let logits: Vec<f32> = (0..1000)
            .map(|i| ((i * 7919 % 1000) as f32 / 100.0 - 5.0) * (1.0 + (i % 3) as f32 / 7.0))
            .collect();
        let mut got = Vec::new();
        for (t, k, p) in [
            (0.7, None, None),
            (1.0, Some(40), Some(0.9)),
            (1.5, None, Some(0.8)),
        ] {
            let mut s = Sampler::new(42, &params(t, k, p));
            got.extend((0..6).map(|_| s.sample(&logits).unwrap()));
        }
        let probs = softmax(&logits, 0.7).unwrap();
        let h = probs.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, v| {
            (h ^ v.to_bits() as u64).wrapping_mul(0x100_0000_01b3)
        });
        assert_eq!(
            (got, h),
            (
                vec![
                    149, 531, 260, 556, 878, 605, 173, 371, 383, 371, 457, 260, 137, 531, 248, 544,
                    877, 631
                ],
                0xf3c5_89b8_8aaa_5e70
            ),
            "draws and probability checksum"
        );
    }

    #[test]
    fn greedy_takes_the_first_maximum_and_penalty_applies_once() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, -1.0]), 1);
        let mut l = vec![2.0, -2.0, 1.0];
        repeat_penalty(&mut l, 2.0, &[0, 1, 0, 0]);
        assert_eq!(l, vec![1.0, -4.0, 1.0]);
        for t in [0.0, 1.0] {
            let mut s = Sampler::new(1, &params(t, None, None));
            let e = s.sample(&[1.0, f32::NAN]).unwrap_err().to_string();
            assert!(e.contains("NaN (token 1 of 2)"), "{e}");
        }
        // A −∞ logit is never drawn; all −∞ cannot be sampled.
        let mut s = Sampler::new(3, &params(1.0, None, None));
        for _ in 0..50 {
            assert_eq!(s.sample(&[f32::NEG_INFINITY, 0.0]).unwrap(), 1);
        }
        assert!(s.sample(&[f32::NEG_INFINITY; 2]).is_err());
    }
}
