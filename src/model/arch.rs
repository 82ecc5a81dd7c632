//! What the engine needs from an architecture, as traits: [`CausalLm`] (a
//! language model with its KV cache: forward, clear, snapshot, and the
//! optional media prefill and batched decode) and [`Processor`] (the
//! multimodal input side: which media it takes, and turning decoded media
//! into the prompt's ids and the model's inputs). `TextModel` holds a
//! `Box<dyn CausalLm>` and an optional `Box<dyn Processor>`; generation,
//! judges and parity checks go through these traits only. Adding an
//! architecture is its folder or file, the `impl`s here (or beside the
//! model), and one line where the loader reads its config
//! (`gguf_arch` / `TextModel::load_hf` in `model/mod.rs`).

use candle_core::{DType, Device, Tensor};
use candle_transformers::models as tm;

use super::chat::Message;
use super::qwen2::KvCache;
use super::{gemma3, gemma4, qwen2, qwen3_vl, voxtral, MediaInput, MmPrompt};
use crate::core::error::Result;
use crate::core::limits::Limits;
use crate::core::sample::MediaKind;

type CResult<T> = candle_core::Result<T>;

/// A causal language model and its KV cache.
pub trait CausalLm: Send {
    /// Logits of the last position for `ids` (`[1, n]`) starting at
    /// position `pos`, in the model's own shape and dtype.
    fn forward(&mut self, ids: &Tensor, pos: usize) -> CResult<Tensor>;

    /// Empty the KV cache.
    fn clear(&mut self) -> CResult<()>;

    /// A copy with its KV cache, for architectures whose cache is never
    /// written in place (appending makes new tensors), so the copy stays
    /// valid while the original goes on. Weights are shared. `None`: the
    /// cache cannot be copied (a shared judge prefix is then recomputed).
    fn snapshot(&self) -> Option<Box<dyn CausalLm>> {
        None
    }

    /// Prefill a prompt together with its media inputs (vision and audio
    /// models); `None` when the model takes text only or not this input.
    fn prefill_media(&mut self, _prompt: &[u32], _mm: &MmPrompt) -> Option<CResult<Tensor>> {
        None
    }

    /// The batched decode of several sequences, when the architecture has one.
    fn batch(&mut self) -> Option<&mut dyn BatchDecode> {
        None
    }

    /// Logits `[n, vocab]` after each of several continuations of the
    /// cached prompt (each starting at `pos`), computed together and leaving
    /// the cache as it was; `None` when the architecture has no packed
    /// prefill (the caller then runs them one by one).
    fn forward_packed(&self, _seqs: &[&[u32]], _pos: usize) -> Option<CResult<Tensor>> {
        None
    }

    /// Logits of the last position as a flat `f32` vector tensor `[vocab]`.
    fn logits(&mut self, ids: &Tensor, pos: usize) -> CResult<Tensor> {
        self.forward(ids, pos)?.flatten_all()?.to_dtype(DType::F32)
    }
}

/// Several sequences decoding together, one token each per step, each with
/// its own KV cache (see `TextModel::generate_many`).
pub trait BatchDecode {
    /// Move the KV cache of the last prefill out of the model.
    fn take_cache(&mut self) -> KvCache;
    /// One step: `tokens[i]` at `positions[i]` for sequence `i`; logits `[n, vocab]`.
    fn forward_batch(
        &self,
        caches: &mut [KvCache],
        tokens: &[u32],
        positions: &[usize],
    ) -> CResult<Tensor>;
}

/// The input side of a multimodal architecture.
pub trait Processor: Send + Sync {
    /// sha256 of the processor's settings (part of the model's fingerprint).
    fn config_sha256(&self) -> &str;

    /// The media kinds the model takes besides text.
    fn modalities(&self) -> Vec<MediaKind>;

    /// Apply the run's limits (pixels, frames, video bytes, audio seconds).
    fn set_limits(&mut self, limits: &Limits);

    /// The prompt for `rendered` (the chat template's output for
    /// `messages`) with `media` in the order of the media parts: the text,
    /// the token ids with the placeholders expanded, and the model inputs.
    fn encode(
        &self,
        model: &str,
        rendered: String,
        messages: &[Message],
        media: &[MediaInput<'_>],
        tokenize: &dyn Fn(&str) -> Result<Vec<u32>>,
        device: &Device,
    ) -> Result<(String, Vec<u32>, MmPrompt)>;
}

// --- the architectures ------------------------------------------------------

/// `impl CausalLm` for a model type with inherent `forward(&mut self, ids,
/// pos)` and `clear_kv_cache(&mut self)`, plus the given methods;
/// `copyable` adds `snapshot` for a model whose KV cache is never written in
/// place.
macro_rules! causal_lm {
    (@impl $t:ty, [$($snap:tt)*] $(, $extra:item)*) => {
        impl CausalLm for $t {
            fn forward(&mut self, ids: &Tensor, pos: usize) -> CResult<Tensor> {
                <$t>::forward(self, ids, pos)
            }
            fn clear(&mut self) -> CResult<()> {
                self.clear_kv_cache();
                Ok(())
            }
            $($snap)*
            $($extra)*
        }
    };
    ($t:ty, copyable $(, $extra:item)* $(,)?) => {
        causal_lm!(@impl $t, [
            fn snapshot(&self) -> Option<Box<dyn CausalLm>> {
                Some(Box::new(self.clone()))
            }
        ] $(, $extra)*);
    };
    ($t:ty $(, $extra:item)* $(,)?) => {
        causal_lm!(@impl $t, [] $(, $extra)*);
    };
}

/// `impl BatchDecode` for a model type with inherent `take_cache` and `forward_batch`.
macro_rules! batch_decode {
    ($t:ty) => {
        impl BatchDecode for $t {
            fn take_cache(&mut self) -> KvCache {
                <$t>::take_cache(self)
            }
            fn forward_batch(
                &self,
                caches: &mut [KvCache],
                tokens: &[u32],
                positions: &[usize],
            ) -> CResult<Tensor> {
                <$t>::forward_batch(self, caches, tokens, positions)
            }
        }
    };
}

// GGUF Llama/Qwen2 and Gemma 3 on anjeon's kernels, with the batched decode.
causal_lm!(
    qwen2::ModelWeights,
    copyable,
    fn batch(&mut self) -> Option<&mut dyn BatchDecode> {
        Some(self)
    },
    fn forward_packed(&self, seqs: &[&[u32]], pos: usize) -> Option<CResult<Tensor>> {
        Some(qwen2::ModelWeights::forward_packed(self, seqs, pos))
    }
);
batch_decode!(qwen2::ModelWeights);
causal_lm!(
    gemma3::ModelWeights,
    copyable,
    fn batch(&mut self) -> Option<&mut dyn BatchDecode> {
        Some(self)
    },
    fn forward_packed(&self, seqs: &[&[u32]], pos: usize) -> Option<CResult<Tensor>> {
        Some(gemma3::ModelWeights::forward_packed(self, seqs, pos))
    }
);
batch_decode!(gemma3::ModelWeights);

// GGUF Llama mixture-of-experts files and Qwen3 (candle's quantized models).
causal_lm!(tm::quantized_llama::ModelWeights, copyable);

// Hugging Face Qwen2 and Qwen3 (safetensors, candle-transformers).
causal_lm!(tm::qwen2::ModelForCausalLM);
causal_lm!(tm::qwen3::ModelForCausalLM);

/// Hugging Face Llama (safetensors): candle keeps its cache outside the model.
pub struct DenseLlama {
    pub model: tm::llama::Llama,
    pub cache: tm::llama::Cache,
    pub config: tm::llama::Config,
    pub dtype: DType,
    pub device: Device,
}

impl CausalLm for DenseLlama {
    fn forward(&mut self, ids: &Tensor, pos: usize) -> CResult<Tensor> {
        self.model.forward(ids, pos, &mut self.cache)
    }
    fn clear(&mut self) -> CResult<()> {
        self.cache = tm::llama::Cache::new(true, self.dtype, &self.config, &self.device)?;
        Ok(())
    }
}

// The multimodal models: their media prefill takes their own inputs.
causal_lm!(
    qwen3_vl::Qwen3Vl,
    copyable,
    fn prefill_media(&mut self, prompt: &[u32], mm: &MmPrompt) -> Option<CResult<Tensor>> {
        match mm {
            MmPrompt::Qwen3Vl(mm) => Some(self.prefill(prompt, mm)),
            _ => None,
        }
    }
);
causal_lm!(
    gemma4::Gemma4,
    copyable,
    fn prefill_media(&mut self, prompt: &[u32], mm: &MmPrompt) -> Option<CResult<Tensor>> {
        match mm {
            MmPrompt::Gemma4(mm) => Some(self.prefill_mm(prompt, mm)),
            _ => None,
        }
    }
);
causal_lm!(
    voxtral::Voxtral,
    copyable,
    fn prefill_media(&mut self, prompt: &[u32], mm: &MmPrompt) -> Option<CResult<Tensor>> {
        match mm {
            MmPrompt::Voxtral(a) => Some(self.prefill(prompt, Some(a))),
            _ => None,
        }
    }
);

// --- the processors ---------------------------------------------------------

fn expand_err(model: &str) -> impl Fn(String) -> crate::core::error::Error + '_ {
    move |e| crate::core::error::Error::Usage(format!("{model}: {e}"))
}

impl Processor for qwen3_vl::Processor {
    fn config_sha256(&self) -> &str {
        &self.config_sha256
    }
    fn set_limits(&mut self, limits: &Limits) {
        self.limits = limits.clone();
    }
    fn modalities(&self) -> Vec<MediaKind> {
        vec![MediaKind::Image, MediaKind::Video]
    }
    fn encode(
        &self,
        model: &str,
        rendered: String,
        _messages: &[Message],
        media: &[MediaInput<'_>],
        tokenize: &dyn Fn(&str) -> Result<Vec<u32>>,
        device: &Device,
    ) -> Result<(String, Vec<u32>, MmPrompt)> {
        let (places, mm) = self.process(media, device)?;
        let text = qwen3_vl::expand_placeholders(
            &rendered,
            &places,
            "<|image_pad|>",
            "<|video_pad|>",
            "<|vision_start|>",
            "<|vision_end|>",
        )
        .map_err(expand_err(model))?;
        let ids = tokenize(&text)?;
        Ok((text, ids, MmPrompt::Qwen3Vl(mm)))
    }
}

impl Processor for gemma4::Processor {
    fn config_sha256(&self) -> &str {
        &self.config_sha256
    }
    fn set_limits(&mut self, limits: &Limits) {
        self.limits = limits.clone();
    }
    fn modalities(&self) -> Vec<MediaKind> {
        match self.audio {
            Some(_) => vec![MediaKind::Image, MediaKind::Audio],
            None => vec![MediaKind::Image],
        }
    }
    fn encode(
        &self,
        model: &str,
        rendered: String,
        _messages: &[Message],
        media: &[MediaInput<'_>],
        tokenize: &dyn Fn(&str) -> Result<Vec<u32>>,
        device: &Device,
    ) -> Result<(String, Vec<u32>, MmPrompt)> {
        let processed = self.process(media, device)?;
        let ids = tokenize(&rendered)?;
        let ids = self.expand(&ids, &processed).map_err(expand_err(model))?;
        Ok((rendered, ids, MmPrompt::Gemma4(processed.input)))
    }
}

impl Processor for voxtral::Processor {
    fn config_sha256(&self) -> &str {
        &self.config_sha256
    }
    fn set_limits(&mut self, limits: &Limits) {
        self.limits = limits.clone();
    }
    fn modalities(&self) -> Vec<MediaKind> {
        vec![MediaKind::Audio]
    }
    fn encode(
        &self,
        model: &str,
        rendered: String,
        messages: &[Message],
        media: &[MediaInput<'_>],
        tokenize: &dyn Fn(&str) -> Result<Vec<u32>>,
        device: &Device,
    ) -> Result<(String, Vec<u32>, MmPrompt)> {
        if !self.system_with_audio && messages.iter().any(|m| m.role == "system") {
            return Err(crate::core::error::Error::Usage(format!(
                "{model}: Voxtral does not take a system prompt together with audio (mistral_common refuses it before tokenizer v13)\n  fix: run audio items on this target without --system"
            )));
        }
        let (chunks, input) = self.process_media(media, device)?;
        let ids = tokenize(&rendered)?;
        let ids = self
            .expand(&ids, &chunks)
            .map_err(|e| crate::core::error::Error::Usage(format!("{model}: {e}")))?;
        Ok((rendered, ids, MmPrompt::Voxtral(input)))
    }
}
