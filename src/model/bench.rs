//! `anjeon bench`: prefill and decode throughput and peak memory of a model,
//! measured the way docs/speed.md's table is: a fixed-length prompt
//! (default 256 tokens) prefilled once after a warm-up, then a greedy decode
//! of a fixed number of tokens (default 128) that ignores end-of-turn.

use std::time::Instant;

use serde::Serialize;

use super::{GenParams, TextModel};
use crate::core::error::Result;

#[derive(Debug, Serialize)]
pub struct BenchResult {
    pub model: String,
    pub architecture: String,
    pub threads: usize,
    /// Sequences decoded together (`--batch`); `decode_tok_s` is their aggregate.
    pub batch: usize,
    /// Whether the architecture decodes those sequences in one step; when
    /// false they run one after another and `decode_tok_s` is batch 1's.
    pub batched_decode: bool,
    /// anjeon's CPU kernel path on this machine (`scalar`, `avx2`,
    /// `avx-vnni`, `avx512-vnni`, `neon`, `neon-dotprod`), or `off` (ANJEON_KERNELS=off: candle's QMatMul).
    pub kernels: String,
    pub requantized: bool,
    /// Size of the model's weight files, MiB.
    pub model_file_mb: f64,
    pub load_s: f64,
    pub prompt_tokens: usize,
    pub prefill_tok_s: f64,
    pub decode_tokens: usize,
    pub decode_tok_s: f64,
    /// Peak resident memory of the process (VmHWM), MiB.
    pub peak_rss_mb: f64,
}

/// Peak resident set size from /proc (Linux); 0 elsewhere.
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// A prompt of exactly `n` tokens: Korean and English text, repeated.
pub fn bench_prompt(model: &TextModel, n: usize) -> Result<Vec<u32>> {
    let text = "대한민국의 수도는 서울이며, 인구는 약 950만 명입니다. The quick brown fox jumps over the lazy dog. 안전한 인공지능은 사용자를 존중하고 위험한 요청을 거절합니다. ";
    let piece = model.tokenizer.encode_plain(text)?;
    let mut ids: Vec<u32> = model
        .tokenizer
        .bos
        .iter()
        .map(|b| b.0)
        .filter(|_| model.tokenizer.add_bos)
        .collect();
    while ids.len() < n {
        ids.extend_from_slice(&piece);
    }
    ids.truncate(n);
    Ok(ids)
}

pub fn run(
    model: &mut TextModel,
    load_s: f64,
    requantized: bool,
    prompt_tokens: usize,
    decode_tokens: usize,
    batch: usize,
) -> Result<BenchResult> {
    let threads = candle_core::utils::get_num_threads();
    let batched_decode = model.decodes_in_batches();
    let prompt = bench_prompt(model, prompt_tokens)?;
    // Warm-up (allocations, page faults of the weights).
    model.prompt_logits(&prompt[..prompt.len().min(16)])?;
    let t = Instant::now();
    model.prompt_logits(&prompt)?;
    let prefill_s = t.elapsed().as_secs_f64();
    let p = GenParams {
        max_new_tokens: decode_tokens,
        ignore_eos: true,
        ..Default::default()
    };
    // Decode: `batch` sequences from the 16-token start of the prompt, each
    // with its own seed-0 greedy decode; aggregate tokens/s over the time
    // spent decoding (the wall time less each sequence's prefill).
    let start = &prompt[..prompt.len().min(16)];
    let jobs: Vec<(&[u32], u64)> = (0..batch.max(1)).map(|_| (start, 0)).collect();
    let (mut tokens, mut prefill) = (0usize, 0f64);
    let t = Instant::now();
    model.generate_many(&jobs, &p, batch, |_, g| {
        let g = g?;
        tokens += g.tokens.len();
        prefill += g.prefill_s;
        Ok(())
    })?;
    let decode_s = (t.elapsed().as_secs_f64() - prefill).max(1e-9);
    Ok(BenchResult {
        model: model.name.clone(),
        architecture: model.architecture.clone(),
        threads,
        batch,
        batched_decode,
        // anjeon's kernels run on the CPU only; a GPU runs candle's.
        kernels: match &model.device {
            candle_core::Device::Cpu if super::qlinear::kernels_off() => "off".into(),
            candle_core::Device::Cpu => anjeon_kernels::path().name().into(),
            candle_core::Device::Cuda(_) => "candle-cuda".into(),
            candle_core::Device::Metal(_) => "candle-metal".into(),
        },
        requantized,
        model_file_mb: model
            .files
            .iter()
            .filter_map(|(p, _)| std::fs::metadata(p).ok())
            .map(|m| m.len() as f64 / (1024.0 * 1024.0))
            .sum(),
        load_s,
        prompt_tokens: prompt.len(),
        prefill_tok_s: prompt.len() as f64 / prefill_s,
        decode_tokens: tokens,
        decode_tok_s: tokens as f64 / decode_s,
        peak_rss_mb: peak_rss_mb(),
    })
}
