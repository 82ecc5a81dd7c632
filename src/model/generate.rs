//! Generation: prefill, then KV-cache decode; greedy or seeded sampling
//! (temperature, top-p, top-k, repeat penalty) through candle's
//! `LogitsProcessor`; stops on end-of-turn ids, stop strings and the token limit.

use std::time::Instant;

use candle_core::Tensor;
use candle_transformers::generation::{LogitsProcessor, Sampling};
use serde::{Deserialize, Serialize};

use super::tokenizer::Detokenizer;
use super::TextModel;
use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenParams {
    pub max_new_tokens: usize,
    /// 0 = greedy.
    pub temperature: f64,
    pub top_p: Option<f64>,
    pub top_k: Option<usize>,
    pub repeat_penalty: f32,
    pub repeat_last_n: usize,
    pub stop: Vec<String>,
    /// Keep generating through end-of-turn tokens (benchmarks only).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ignore_eos: bool,
}

impl Default for GenParams {
    fn default() -> Self {
        GenParams {
            max_new_tokens: 256,
            temperature: 0.0,
            top_p: None,
            top_k: None,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            stop: vec![],
            ignore_eos: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    EndOfTurn,
    StopString,
    Length,
    ContextFull,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Generation {
    pub text: String,
    pub tokens: Vec<u32>,
    pub prompt_tokens: usize,
    pub stop: StopReason,
    pub prefill_s: f64,
    pub decode_s: f64,
}

fn ce(e: candle_core::Error) -> Error {
    Error::Usage(format!("generation: {e}"))
}

impl GenParams {
    fn sampling(&self) -> Sampling {
        if self.temperature <= 0.0 {
            return Sampling::ArgMax;
        }
        let temperature = self.temperature;
        match (self.top_k, self.top_p) {
            (None, None) => Sampling::All { temperature },
            (Some(k), None) => Sampling::TopK { k, temperature },
            (None, Some(p)) => Sampling::TopP { p, temperature },
            (Some(k), Some(p)) => Sampling::TopKThenTopP { k, p, temperature },
        }
    }
}

impl TextModel {
    /// Generate a continuation of `prompt` (token ids). `seed` makes sampling
    /// reproducible; callers derive it from the run seed and the item id so
    /// results do not depend on order or on resumption.
    pub fn generate(&mut self, prompt: &[u32], p: &GenParams, seed: u64) -> Result<Generation> {
        self.generate_mm(prompt, None, p, seed)
    }

    /// [`TextModel::generate`] for a prompt with visual inputs (see
    /// [`TextModel::encode_multimodal`]): the first forward pass takes them.
    pub fn generate_mm(
        &mut self,
        prompt: &[u32],
        mm: Option<&super::MmPrompt>,
        p: &GenParams,
        seed: u64,
    ) -> Result<Generation> {
        if prompt.is_empty() {
            return Err(Error::Usage("empty prompt".into()));
        }
        if prompt.len() >= self.context_length {
            return Err(Error::Usage(format!(
                "prompt of {} tokens does not fit the context of {} tokens",
                prompt.len(),
                self.context_length
            )));
        }
        self.arch.clear(&self.device).map_err(ce)?;
        let mut lp = LogitsProcessor::from_sampling(seed, p.sampling());
        let t0 = Instant::now();
        let input = Tensor::new(prompt, &self.device)
            .and_then(|t| t.unsqueeze(0))
            .map_err(ce)?;
        let mut logits = match (mm, &mut self.arch) {
            (None, arch) => arch.forward(&input, 0).map_err(ce)?,
            (Some(super::MmPrompt::Qwen3Vl(mm)), super::Arch::Qwen3Vl(m)) => {
                m.prefill(prompt, mm).map_err(ce)?
            }
            (Some(super::MmPrompt::Gemma4(mm)), super::Arch::Gemma4(m)) => {
                m.prefill_mm(prompt, mm).map_err(ce)?
            }
            (Some(super::MmPrompt::Voxtral(a)), super::Arch::Voxtral(m)) => {
                m.prefill(prompt, Some(a)).map_err(ce)?
            }
            (Some(_), _) => return Err(Error::Usage(format!("{} takes text only", self.name))),
        };
        let prefill_s = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let mut out: Vec<u32> = Vec::new();
        let mut detok = Detokenizer::new(&self.tokenizer);
        let mut stop = StopReason::Length;
        let mut all: Vec<u32> = prompt.to_vec();
        while out.len() < p.max_new_tokens {
            if p.repeat_penalty != 1.0 {
                let start = all.len().saturating_sub(p.repeat_last_n);
                logits = candle_transformers::utils::apply_repeat_penalty(
                    &logits,
                    p.repeat_penalty,
                    &all[start..],
                )
                .map_err(ce)?;
            }
            let next = lp.sample(&logits).map_err(ce)?;
            if !p.ignore_eos && self.tokenizer.stop_ids.contains(&next) {
                stop = StopReason::EndOfTurn;
                break;
            }
            out.push(next);
            all.push(next);
            detok.push(next)?;
            if let Some(s) = p.stop.iter().find(|s| detok.text().contains(s.as_str())) {
                let _ = s;
                stop = StopReason::StopString;
                break;
            }
            if all.len() >= self.context_length {
                stop = StopReason::ContextFull;
                break;
            }
            if out.len() == p.max_new_tokens {
                break;
            }
            let input = Tensor::new(&[next], &self.device)
                .and_then(|t| t.unsqueeze(0))
                .map_err(ce)?;
            logits = self.arch.forward(&input, all.len() - 1).map_err(ce)?;
        }
        let mut text = self.tokenizer.decode(&out)?;
        if stop == StopReason::StopString {
            if let Some(pos) = p.stop.iter().filter_map(|s| text.find(s.as_str())).min() {
                text.truncate(pos);
            }
        }
        Ok(Generation {
            text,
            tokens: out,
            prompt_tokens: prompt.len(),
            stop,
            prefill_s,
            decode_s: t1.elapsed().as_secs_f64(),
        })
    }

    /// Generate for a batch of prompts. The quantized candle models have no
    /// padding mask, so prompts of different lengths cannot share a forward
    /// pass without changing results; they are run one at a time (which also
    /// makes batch results equal batch-size-1 results by construction).
    pub fn generate_batch(
        &mut self,
        prompts: &[(Vec<u32>, u64)],
        p: &GenParams,
    ) -> Vec<Result<Generation>> {
        prompts
            .iter()
            .map(|(ids, seed)| self.generate(ids, p, *seed))
            .collect()
    }
}
