//! Generation: prefill, then KV-cache decode; greedy or seeded sampling
//! (temperature, top-p, top-k, repeat penalty; `super::sampling`, the same
//! draws on every CPU); stops on end-of-turn ids, stop strings and the
//! token limit.

use std::time::Instant;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::sampling::{repeat_penalty, Sampler};
use super::tokenizer::Detokenizer;
use super::TextModel;
use crate::core::error::{Error, Result};

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
    Error::backend("generation", e)
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
        self.check_prompt(prompt)?;
        self.arch.clear().map_err(ce)?;
        let lp = Sampler::new(seed, p);
        let t0 = Instant::now();
        let input = Tensor::new(prompt, &self.device)
            .and_then(|t| t.unsqueeze(0))
            .map_err(ce)?;
        let mut logits = match mm {
            None => self.arch.logits(&input, 0).map_err(ce)?,
            Some(mm) => match self.arch.prefill_media(prompt, mm) {
                Some(l) => l.map_err(ce)?,
                None => return Err(Error::Usage(format!("{} takes text only", self.name))),
            },
        };
        let prefill_s = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let mut d = Decoding::new(prompt, lp);
        while let Some(next) = d.step(&logits, p, &self.tokenizer, self.context_length)? {
            let input = Tensor::new(&[next], &self.device)
                .and_then(|t| t.unsqueeze(0))
                .map_err(ce)?;
            logits = self.arch.logits(&input, d.all.len() - 1).map_err(ce)?;
        }
        d.finish(&self.tokenizer, p, prefill_s, t1.elapsed().as_secs_f64())
    }

    /// Whether this model decodes several sequences in one step
    /// ([`TextModel::generate_many`] with `batch` > 1); others run one
    /// prompt at a time.
    pub fn decodes_in_batches(&mut self) -> bool {
        self.arch.batch().is_some()
    }

    /// Generate for many prompts, `batch` sequences at a time: each prompt
    /// is prefilled alone, then the sequences decode together (one matrix
    /// product per layer for all of them, attention per sequence, each with
    /// its own KV cache and its own seeded sampler), and a finished
    /// sequence's slot takes the next prompt at once (continuous refill).
    /// Results equal one-at-a-time generation token for token: every
    /// operation is row-wise (tested). `done(i, result)` is called as each
    /// prompt finishes, in finishing order. Architectures without a batched
    /// decode (and `batch` 1) run one prompt at a time. `decode_s` of a
    /// batched generation is the wall time it spent in the shared batch.
    pub fn generate_many(
        &mut self,
        jobs: &[(&[u32], u64)],
        p: &GenParams,
        batch: usize,
        mut done: impl FnMut(usize, Result<Generation>) -> Result<()>,
    ) -> Result<()> {
        if batch == 0 {
            return Err(Error::Usage("--batch must be at least 1".into()));
        }
        if batch == 1 || self.arch.batch().is_none() {
            for (i, (ids, seed)) in jobs.iter().enumerate() {
                let r = self.generate(ids, p, *seed);
                done(i, r)?;
            }
            return Ok(());
        }
        struct Slot {
            job: usize,
            cache: super::qwen2::KvCache,
            dec: Decoding,
            next: u32,
            prefill_s: f64,
            t1: Instant,
        }
        let mut queue = 0..jobs.len();
        let mut slots: Vec<Slot> = Vec::with_capacity(batch);
        loop {
            // Refill: prefill waiting prompts alone until every slot is busy.
            while slots.len() < batch {
                let Some(i) = queue.next() else { break };
                let (prompt, seed) = jobs[i];
                let started = (|| -> Result<Option<Slot>> {
                    self.check_prompt(prompt)?;
                    self.arch.clear().map_err(ce)?;
                    let t0 = Instant::now();
                    let input = Tensor::new(prompt, &self.device)
                        .and_then(|t| t.unsqueeze(0))
                        .map_err(ce)?;
                    let logits = self.arch.logits(&input, 0).map_err(ce)?;
                    let prefill_s = t0.elapsed().as_secs_f64();
                    let t1 = Instant::now();
                    let mut dec = Decoding::new(prompt, Sampler::new(seed, p));
                    match dec.step(&logits, p, &self.tokenizer, self.context_length)? {
                        Some(next) => {
                            let mut cache = self
                                .arch
                                .batch()
                                .expect("a batched architecture (checked above)")
                                .take_cache();
                            // Sized once to the sequence's bound, so no row
                            // moves while it decodes.
                            let total = (prompt.len() + p.max_new_tokens).min(self.context_length);
                            for kv in cache.iter_mut() {
                                kv.reserve_positions(total);
                            }
                            Ok(Some(Slot {
                                job: i,
                                cache,
                                dec,
                                next,
                                prefill_s,
                                t1,
                            }))
                        }
                        None => {
                            let g = dec.finish(
                                &self.tokenizer,
                                p,
                                prefill_s,
                                t1.elapsed().as_secs_f64(),
                            );
                            done(i, g)?;
                            Ok(None)
                        }
                    }
                })();
                match started {
                    Ok(Some(slot)) => slots.push(slot),
                    Ok(None) => {}
                    Err(e @ (Error::Usage(_) | Error::Backend { .. })) => done(i, Err(e))?,
                    Err(e) => return Err(e),
                }
            }
            if slots.is_empty() {
                return Ok(());
            }
            let tokens: Vec<u32> = slots.iter().map(|s| s.next).collect();
            let positions: Vec<usize> = slots.iter().map(|s| s.dec.all.len() - 1).collect();
            let mut caches: Vec<super::qwen2::KvCache> = slots
                .iter_mut()
                .map(|s| std::mem::take(&mut s.cache))
                .collect();
            let logits = self
                .arch
                .batch()
                .expect("a batched architecture (checked above)")
                .forward_batch(&mut caches, &tokens, &positions)
                .map_err(ce)?;
            let mut keep = Vec::with_capacity(slots.len());
            for (r, (mut slot, cache)) in slots.drain(..).zip(caches).enumerate() {
                slot.cache = cache;
                let l = logits.get(r).map_err(ce)?;
                let step = slot.dec.step(&l, p, &self.tokenizer, self.context_length);
                match step {
                    Ok(Some(next)) => {
                        slot.next = next;
                        keep.push(slot);
                    }
                    Ok(None) => {
                        let g = slot.dec.finish(
                            &self.tokenizer,
                            p,
                            slot.prefill_s,
                            slot.t1.elapsed().as_secs_f64(),
                        );
                        done(slot.job, g)?;
                    }
                    Err(e) => done(slot.job, Err(e))?,
                }
            }
            slots = keep;
        }
    }

    fn check_prompt(&self, prompt: &[u32]) -> Result<()> {
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
        Ok(())
    }
}

/// The decoding state of one sequence: sampling, stop conditions and the
/// incremental detokenizer, shared by one-at-a-time and batched generation
/// so both stop and sample identically.
struct Decoding {
    lp: Sampler,
    out: Vec<u32>,
    all: Vec<u32>,
    detok_ids: Vec<u32>,
    stop: StopReason,
    prompt_tokens: usize,
}

impl Decoding {
    fn new(prompt: &[u32], lp: Sampler) -> Decoding {
        Decoding {
            lp,
            out: Vec::new(),
            all: prompt.to_vec(),
            detok_ids: Vec::new(),
            stop: StopReason::Length,
            prompt_tokens: prompt.len(),
        }
    }

    /// Take this step's logits; returns the token to feed next, or `None`
    /// when the sequence has ended (`self.stop` says why).
    fn step(
        &mut self,
        logits: &Tensor,
        p: &GenParams,
        tok: &super::tokenizer::Tok,
        context_length: usize,
    ) -> Result<Option<u32>> {
        if self.out.len() >= p.max_new_tokens {
            return Ok(None);
        }
        let mut l = logits
            .to_dtype(candle_core::DType::F32)
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(ce)?;
        if p.repeat_penalty != 1.0 {
            let start = self.all.len().saturating_sub(p.repeat_last_n);
            repeat_penalty(&mut l, p.repeat_penalty, &self.all[start..]);
        }
        let next = self.lp.sample(&l)?;
        if !p.ignore_eos && tok.stop_ids.contains(&next) {
            self.stop = StopReason::EndOfTurn;
            return Ok(None);
        }
        self.out.push(next);
        self.all.push(next);
        self.detok_ids.push(next);
        if !p.stop.is_empty() {
            let mut detok = Detokenizer::new(tok);
            for &t in &self.detok_ids {
                detok.push(t)?;
            }
            if p.stop.iter().any(|s| detok.text().contains(s.as_str())) {
                self.stop = StopReason::StopString;
                return Ok(None);
            }
        }
        if self.all.len() >= context_length {
            self.stop = StopReason::ContextFull;
            return Ok(None);
        }
        if self.out.len() == p.max_new_tokens {
            return Ok(None);
        }
        Ok(Some(next))
    }

    fn finish(
        self,
        tok: &super::tokenizer::Tok,
        p: &GenParams,
        prefill_s: f64,
        decode_s: f64,
    ) -> Result<Generation> {
        let mut text = tok.decode(&self.out)?;
        if self.stop == StopReason::StopString {
            if let Some(pos) = p.stop.iter().filter_map(|s| text.find(s.as_str())).min() {
                text.truncate(pos);
            }
        }
        Ok(Generation {
            text,
            tokens: self.out,
            prompt_tokens: self.prompt_tokens,
            stop: self.stop,
            prefill_s,
            decode_s,
        })
    }
}
