//! Helpers shared by the vision-language parity tests (tests/vision.rs,
//! tests/gemma4.rs).
#![allow(dead_code)]

use candle_core::{Device, Tensor};

pub fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// Token ids from a JSON array.
pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// Greedy continuation of `n` tokens through a model's decode path:
/// `first` are the logits after the `prompt_len`-token prompt, `forward`
/// takes one token at a sequence offset and gives the next logits.
pub fn greedy(
    first: &[f32],
    prompt_len: usize,
    n: usize,
    mut forward: impl FnMut(&Tensor, usize) -> candle_core::Result<Tensor>,
) -> Vec<u32> {
    let mut got = vec![argmax(first)];
    while got.len() < n {
        let input = Tensor::new(&[*got.last().unwrap()], &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let l = forward(&input, prompt_len + got.len() - 1)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        got.push(argmax(&l));
    }
    got
}
