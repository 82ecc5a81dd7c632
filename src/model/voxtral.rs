//! Voxtral (audio and text in, text out) from Hugging Face safetensors.
//!
//! Written for anjeon from transformers 5.23's `modeling_voxtral.py` /
//! `processing_voxtral.py` and checked against them with a tiny random
//! checkpoint (tests/fixtures/tiny/make_tiny_voxtral.py, tests/voxtral.rs).
//! candle-transformers 0.11 has no Voxtral; its Whisper encoder does not fit
//! (it computes sinusoidal positions where Voxtral loads a learned table, and
//! uses other tensor names).
//!
//! The model is a Whisper(-large-v3-like) encoder, a projector and a Llama
//! text decoder. What differs from a plain Whisper encoder + Llama:
//! - the encoder takes exactly `2 · max_source_positions` (3000) mel frames
//!   per chunk: a clip is zero-padded to a whole number of 30 s chunks, its
//!   features computed in one pass and split along time into chunks that go
//!   through the encoder as a batch ([`Processor`]);
//! - positions are a learned table (`embed_positions`, loaded from the
//!   checkpoint), added after `gelu(conv1)`, `gelu(conv2)` (exact GELU);
//! - the encoder's `k_proj` has no bias; the query is scaled by
//!   `head_dim^-½` before the product (as in Whisper);
//! - the module holds an `AvgPool1d` but does not use it: instead the
//!   encoder output `(chunks, 1500, d_model)` is reshaped to
//!   `(-1, audio intermediate_size)`, i.e. 4 consecutive frames are
//!   concatenated (`intermediate_size = 4 · d_model` in the released
//!   checkpoints), which gives 375 audio embeddings per 30 s chunk;
//! - the projector is `linear_2(act(linear_1(x)))` without biases;
//! - the audio embeddings replace the `[AUDIO]` ids of the prompt in order
//!   (the placeholders are embedded as themselves first, then overwritten;
//!   the count must match exactly, as transformers checks);
//! - the Llama decoder is standard (RoPE with `rope_theta` 1e8 in the
//!   released checkpoints, GQA, RMSNorm, SiLU MLP, untied `lm_head`).
//!
//! Prompts (mistral_common's format, which `VoxtralProcessor` uses; the
//! checkpoints ship no chat template): an audio item of a user turn is one
//! `[BEGIN_AUDIO]` per clip followed by one `[AUDIO]` per 8 mel frames of
//! the padded clip (375 per 30 s chunk); a user turn's items stay in order
//! inside `[INST]` … `[/INST]`. Audio + question:
//! `<s>[INST][BEGIN_AUDIO][AUDIO]…[AUDIO]question[/INST]`; transcription
//! request: `<s>[INST][BEGIN_AUDIO][AUDIO]…[AUDIO][/INST]` + the text
//! `lang:en` (no space; left out for automatic language detection) +
//! `[TRANSCRIBE]`. A rendered prompt holds one `[AUDIO]` per clip;
//! [`expand_audio_placeholders`] turns each into the full block. anjeon
//! renders with [`CHAT_TEMPLATE`] and reads `tekken.json` when there is no
//! `tokenizer.json` (`super::tekken`); tests/tekken.rs checks both against
//! mistral_common's `encode_chat_completion`. A system prompt next to audio
//! is refused unless the tekken file is v13 or later (mistral_common's rule).
//!
//! Weights are read under the hub layout (`audio_tower.*`,
//! `multi_modal_projector.*`, `language_model.model.*`,
//! `language_model.lm_head`), which transformers 5 also writes, or under
//! transformers 5's module names (`model.audio_tower.*`, …, `lm_head`).
//! The model runs batch 1; the KV cache is plain data (`Clone`).

use std::path::Path;

use candle_core::{DType, Device, IndexOp, Module, Result, Tensor};
use candle_nn::{Activation, Conv1d, Embedding, LayerNorm, Linear, VarBuilder};
use serde::Deserialize;

use crate::audio::features::{WhisperFeatures, CHUNK_FRAMES, HOP, N_FFT, SAMPLE_RATE};
use crate::core::error::Error;

use super::layers::{append_kv, attention, RmsNorm};

// ---------------------------------------------------------------- config

fn d_gelu() -> Activation {
    Activation::Gelu
}
fn d_silu() -> Activation {
    Activation::Silu
}

/// `VoxtralEncoderConfig` (defaults: Voxtral Mini's encoder). transformers
/// writes the attribute-map names (`hidden_size`, …); Whisper's names are
/// accepted too.
#[derive(Debug, Clone, Deserialize)]
pub struct AudioConfig {
    #[serde(default = "d_a_hidden", alias = "d_model")]
    pub hidden_size: usize,
    /// Encoder MLP width and also the projector's input width (the encoder
    /// output is reshaped to rows of this size).
    #[serde(default = "d_a_inter", alias = "encoder_ffn_dim")]
    pub intermediate_size: usize,
    #[serde(default = "d_a_layers", alias = "encoder_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "d_a_heads", alias = "encoder_attention_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "d_a_mels")]
    pub num_mel_bins: usize,
    #[serde(default = "d_a_pos")]
    pub max_source_positions: usize,
    #[serde(default = "d_gelu")]
    pub activation_function: Activation,
    /// Read for completeness: transformers computes `embed_scale` but never
    /// applies it in Voxtral's encoder.
    #[serde(default)]
    pub scale_embedding: bool,
}
fn d_a_hidden() -> usize {
    1280
}
fn d_a_inter() -> usize {
    5120
}
fn d_a_layers() -> usize {
    32
}
fn d_a_heads() -> usize {
    20
}
fn d_a_mels() -> usize {
    128
}
fn d_a_pos() -> usize {
    1500
}

impl AudioConfig {
    /// Mel frames per encoder chunk (conv2 has stride 2): 3000.
    pub fn frames_per_chunk(&self) -> usize {
        2 * self.max_source_positions
    }

    /// Audio embeddings (`[AUDIO]` tokens) per chunk:
    /// `max_source_positions · hidden_size / intermediate_size` (375).
    pub fn tokens_per_chunk(&self) -> std::result::Result<usize, String> {
        let n = self.max_source_positions * self.hidden_size;
        if self.intermediate_size == 0 || !n.is_multiple_of(self.intermediate_size) {
            return Err(format!(
                "audio encoder output ({} x {}) does not split into rows of intermediate_size {}",
                self.max_source_positions, self.hidden_size, self.intermediate_size
            ));
        }
        Ok(n / self.intermediate_size)
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
pub struct RopeParameters {
    #[serde(default)]
    pub rope_type: Option<String>,
    #[serde(default)]
    pub rope_theta: Option<f64>,
}

/// The Llama text config (defaults: those `VoxtralConfig` fills in for
/// missing keys, then Llama's).
#[derive(Debug, Clone, Deserialize)]
pub struct TextConfig {
    #[serde(default = "d_t_vocab")]
    pub vocab_size: usize,
    #[serde(default = "d_t_hidden")]
    pub hidden_size: usize,
    #[serde(default = "d_t_inter")]
    pub intermediate_size: usize,
    #[serde(default = "d_t_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "d_t_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "d_t_kv")]
    pub num_key_value_heads: usize,
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "d_silu")]
    pub hidden_act: Activation,
    #[serde(default = "d_t_eps")]
    pub rms_norm_eps: f64,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    /// transformers 5 layout.
    #[serde(default)]
    pub rope_parameters: Option<RopeParameters>,
    /// transformers 4 layout.
    #[serde(default)]
    pub rope_scaling: Option<RopeParameters>,
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub tie_word_embeddings: Option<bool>,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<serde_json::Value>,
}
fn d_t_vocab() -> usize {
    131_072
}
fn d_t_hidden() -> usize {
    3072
}
fn d_t_inter() -> usize {
    8192
}
fn d_t_layers() -> usize {
    30
}
fn d_t_heads() -> usize {
    32
}
fn d_t_kv() -> usize {
    8
}
fn d_t_eps() -> f64 {
    1e-5
}

impl TextConfig {
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads)
    }

    pub fn rope_theta(&self) -> f64 {
        self.rope_parameters
            .as_ref()
            .and_then(|r| r.rope_theta)
            .or(self.rope_theta)
            .or(self.rope_scaling.as_ref().and_then(|r| r.rope_theta))
            .unwrap_or(100_000_000.0)
    }

    fn rope_type(&self) -> Option<&str> {
        self.rope_parameters
            .as_ref()
            .and_then(|r| r.rope_type.as_deref())
            .or(self
                .rope_scaling
                .as_ref()
                .and_then(|r| r.rope_type.as_deref()))
    }
}

/// `VoxtralConfig` (config.json of a `VoxtralForConditionalGeneration`).
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub audio_config: AudioConfig,
    pub text_config: TextConfig,
    /// `[AUDIO]`; `VoxtralProcessor` hard-codes 24 (Tekken's id).
    #[serde(default = "d_audio_token")]
    pub audio_token_id: u32,
    #[serde(default = "d_gelu")]
    pub projector_hidden_act: Activation,
    #[serde(default)]
    pub tie_word_embeddings: Option<bool>,
}
fn d_audio_token() -> u32 {
    24
}

impl Config {
    fn tied(&self) -> bool {
        self.text_config
            .tie_word_embeddings
            .or(self.tie_word_embeddings)
            .unwrap_or(false)
    }
}

// ---------------------------------------------------------------- audio encoder

#[derive(Clone)]
struct EncoderLayer {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    ln_attn: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    ln_ff: LayerNorm,
    act: Activation,
    heads: usize,
}

impl EncoderLayer {
    fn new(cfg: &AudioConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        let a = vb.pp("self_attn");
        Ok(EncoderLayer {
            q: candle_nn::linear(d, d, a.pp("q_proj"))?,
            k: candle_nn::linear_no_bias(d, d, a.pp("k_proj"))?,
            v: candle_nn::linear(d, d, a.pp("v_proj"))?,
            o: candle_nn::linear(d, d, a.pp("out_proj"))?,
            ln_attn: candle_nn::layer_norm(d, 1e-5, vb.pp("self_attn_layer_norm"))?,
            fc1: candle_nn::linear(d, cfg.intermediate_size, vb.pp("fc1"))?,
            fc2: candle_nn::linear(cfg.intermediate_size, d, vb.pp("fc2"))?,
            ln_ff: candle_nn::layer_norm(d, 1e-5, vb.pp("final_layer_norm"))?,
            act: cfg.activation_function,
            heads: cfg.num_attention_heads,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (b, l, d) = xs.dims3()?;
        let hd = d / self.heads;
        let h = self.ln_attn.forward(xs)?;
        let shape = |t: Tensor| -> Result<Tensor> {
            t.reshape((b, l, self.heads, hd))?
                .transpose(1, 2)?
                .contiguous()
        };
        // Whisper scales the query projection (bias included) before the product.
        let q = shape((self.q.forward(&h)? * (hd as f64).powf(-0.5))?)?;
        let k = shape(self.k.forward(&h)?)?;
        let v = shape(self.v.forward(&h)?)?;
        let att = candle_nn::ops::softmax_last_dim(&q.matmul(&k.t()?)?)?;
        let o = att.matmul(&v)?.transpose(1, 2)?.reshape((b, l, d))?;
        let xs = (xs + self.o.forward(&o)?)?;
        let h = self.ln_ff.forward(&xs)?;
        let h = self.fc2.forward(&self.fc1.forward(&h)?.apply(&self.act)?)?;
        xs + h
    }
}

/// The Whisper-style audio encoder (public for benches).
#[derive(Clone)]
pub struct AudioEncoder {
    conv1: Conv1d,
    conv2: Conv1d,
    positions: Tensor,
    layers: Vec<EncoderLayer>,
    ln: LayerNorm,
    cfg: AudioConfig,
}

impl AudioEncoder {
    /// `vb` at the tower (`audio_tower`).
    pub fn new(cfg: &AudioConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        if cfg.num_attention_heads == 0 || !d.is_multiple_of(cfg.num_attention_heads) {
            candle_core::bail!(
                "audio hidden_size {d} is not a multiple of num_attention_heads {}",
                cfg.num_attention_heads
            );
        }
        let c1 = candle_nn::Conv1dConfig {
            padding: 1,
            ..Default::default()
        };
        let c2 = candle_nn::Conv1dConfig {
            padding: 1,
            stride: 2,
            ..Default::default()
        };
        Ok(AudioEncoder {
            conv1: candle_nn::conv1d(cfg.num_mel_bins, d, 3, c1, vb.pp("conv1"))?,
            conv2: candle_nn::conv1d(d, d, 3, c2, vb.pp("conv2"))?,
            positions: vb.get((cfg.max_source_positions, d), "embed_positions.weight")?,
            layers: (0..cfg.num_hidden_layers)
                .map(|i| EncoderLayer::new(cfg, vb.pp("layers").pp(i)))
                .collect::<Result<Vec<_>>>()?,
            ln: candle_nn::layer_norm(d, 1e-5, vb.pp("layer_norm"))?,
            cfg: cfg.clone(),
        })
    }

    /// `(chunks, n_mels, 3000)` -> `(chunks · tokens_per_chunk, intermediate_size)`.
    pub fn forward(&self, feats: &Tensor) -> Result<Tensor> {
        let (c, m, t) = feats.dims3()?;
        if m != self.cfg.num_mel_bins || t != self.cfg.frames_per_chunk() {
            candle_core::bail!(
                "audio features are {c} x {m} x {t}; Voxtral takes chunks of {} mel bins x {} frames",
                self.cfg.num_mel_bins,
                self.cfg.frames_per_chunk()
            );
        }
        let dtype = self.positions.dtype();
        let x = self.conv1.forward(&feats.to_dtype(dtype)?)?.gelu_erf()?;
        let x = self.conv2.forward(&x)?.gelu_erf()?.transpose(1, 2)?;
        let mut x = x.broadcast_add(&self.positions)?;
        for l in &self.layers {
            x = l.forward(&x)?;
        }
        let x = self.ln.forward(&x)?;
        x.reshape(((), self.cfg.intermediate_size))
    }
}

// ---------------------------------------------------------------- text decoder

#[derive(Clone)]
struct TextLayer {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    gate: Linear,
    up: Linear,
    down: Linear,
    act: Activation,
    ln_in: RmsNorm,
    ln_post: RmsNorm,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    cache: Option<(Tensor, Tensor)>,
}

impl TextLayer {
    fn new(cfg: &TextConfig, vb: VarBuilder) -> Result<Self> {
        let (h, hd) = (cfg.hidden_size, cfg.head_dim());
        let (nh, kvh) = (cfg.num_attention_heads, cfg.num_key_value_heads);
        let (ab, mb) = (cfg.attention_bias, cfg.mlp_bias);
        let a = vb.pp("self_attn");
        let m = vb.pp("mlp");
        Ok(TextLayer {
            q: candle_nn::linear_b(h, nh * hd, ab, a.pp("q_proj"))?,
            k: candle_nn::linear_b(h, kvh * hd, ab, a.pp("k_proj"))?,
            v: candle_nn::linear_b(h, kvh * hd, ab, a.pp("v_proj"))?,
            o: candle_nn::linear_b(nh * hd, h, ab, a.pp("o_proj"))?,
            gate: candle_nn::linear_b(h, cfg.intermediate_size, mb, m.pp("gate_proj"))?,
            up: candle_nn::linear_b(h, cfg.intermediate_size, mb, m.pp("up_proj"))?,
            down: candle_nn::linear_b(cfg.intermediate_size, h, mb, m.pp("down_proj"))?,
            act: cfg.hidden_act,
            ln_in: RmsNorm::new(h, cfg.rms_norm_eps, vb.pp("input_layernorm"))?,
            ln_post: RmsNorm::new(h, cfg.rms_norm_eps, vb.pp("post_attention_layernorm"))?,
            heads: nh,
            kv_heads: kvh,
            head_dim: hd,
            cache: None,
        })
    }

    fn forward(
        &mut self,
        xs: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (b, l, _) = xs.dims3()?;
        let hd = self.head_dim;
        let h = self.ln_in.forward(xs)?;
        let heads = |t: Tensor, n: usize| -> Result<Tensor> {
            t.reshape((b, l, n, hd))?.transpose(1, 2)?.contiguous()
        };
        let q = heads(self.q.forward(&h)?, self.heads)?;
        let k = heads(self.k.forward(&h)?, self.kv_heads)?;
        let v = heads(self.v.forward(&h)?, self.kv_heads)?;
        let q = candle_nn::rotary_emb::rope(&q, cos, sin)?;
        let k = candle_nn::rotary_emb::rope(&k, cos, sin)?;
        let (k, v) = append_kv(&mut self.cache, k, v)?;
        let o = attention(&q, k, v, (hd as f64).powf(-0.5), mask)?;
        let xs = (xs + self.o.forward(&o)?)?;
        let h = self.ln_post.forward(&xs)?;
        let m = self
            .down
            .forward(&(self.gate.forward(&h)?.apply(&self.act)? * self.up.forward(&h)?)?)?;
        xs + m
    }
}

// ---------------------------------------------------------------- model

/// Audio of one prompt as `VoxtralProcessor` gives it: `input_features`
/// `(chunks, n_mels, 3000)`, every clip's chunks in prompt order.
#[derive(Debug, Clone)]
pub struct AudioInput {
    pub input_features: Tensor,
}

#[derive(Clone)]
pub struct Voxtral {
    audio: AudioEncoder,
    proj1: Linear,
    proj_act: Activation,
    proj2: Linear,
    embed: Embedding,
    layers: Vec<TextLayer>,
    norm: RmsNorm,
    lm_head: Linear,
    inv_freq: Vec<f32>,
    pub cfg: Config,
    device: Device,
    dtype: DType,
}

impl Voxtral {
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let t = &cfg.text_config;
        let a = &cfg.audio_config;
        if let Some(rt) = t.rope_type() {
            if rt != "default" {
                candle_core::bail!(
                    "Voxtral text rope_type {rt:?} is not supported (only \"default\")"
                );
            }
        }
        if t.num_key_value_heads == 0
            || !t.num_attention_heads.is_multiple_of(t.num_key_value_heads)
        {
            candle_core::bail!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                t.num_attention_heads,
                t.num_key_value_heads
            );
        }
        a.tokens_per_chunk().map_err(candle_core::Error::msg)?;
        // Hub layout (also what transformers 5 writes) or transformers 5's module names.
        let hub = vb.contains_tensor("language_model.model.embed_tokens.weight");
        let (tower, projector, lm, head) = if hub {
            (
                vb.pp("audio_tower"),
                vb.pp("multi_modal_projector"),
                vb.pp("language_model").pp("model"),
                vb.pp("language_model").pp("lm_head"),
            )
        } else {
            let m = vb.pp("model");
            (
                m.pp("audio_tower"),
                m.pp("multi_modal_projector"),
                m.pp("language_model"),
                vb.pp("lm_head"),
            )
        };
        let embed = candle_nn::embedding(t.vocab_size, t.hidden_size, lm.pp("embed_tokens"))?;
        let lm_head = if cfg.tied() && !head.contains_tensor("weight") {
            Linear::new(embed.embeddings().clone(), None)
        } else {
            candle_nn::linear_no_bias(t.hidden_size, t.vocab_size, head)?
        };
        let hd = t.head_dim();
        let theta = t.rope_theta() as f32;
        let inv_freq = anjeon_kernels::math::rope_inv_freq(hd, theta);
        Ok(Voxtral {
            audio: AudioEncoder::new(a, tower)?,
            proj1: candle_nn::linear_no_bias(
                a.intermediate_size,
                t.hidden_size,
                projector.pp("linear_1"),
            )?,
            proj_act: cfg.projector_hidden_act,
            proj2: candle_nn::linear_no_bias(
                t.hidden_size,
                t.hidden_size,
                projector.pp("linear_2"),
            )?,
            embed,
            layers: (0..t.num_hidden_layers)
                .map(|i| TextLayer::new(t, lm.pp("layers").pp(i)))
                .collect::<Result<Vec<_>>>()?,
            norm: RmsNorm::new(t.hidden_size, t.rms_norm_eps, lm.pp("norm"))?,
            lm_head,
            inv_freq,
            cfg: cfg.clone(),
            device: vb.device().clone(),
            dtype: vb.dtype(),
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn clear_kv_cache(&mut self) {
        for l in &mut self.layers {
            l.cache = None;
        }
    }

    /// Positions in the KV cache.
    pub fn cached_len(&self) -> usize {
        self.layers
            .first()
            .and_then(|l| l.cache.as_ref())
            .map(|(k, _)| k.dim(2).unwrap_or(0))
            .unwrap_or(0)
    }

    /// Audio embeddings of the features (encoder + projector):
    /// `(chunks · tokens_per_chunk, text hidden_size)`.
    pub fn encode_audio(&self, audio: &AudioInput) -> Result<Tensor> {
        let x = self.audio.forward(&audio.input_features)?;
        let x = self.proj1.forward(&x)?.apply(&self.proj_act)?;
        self.proj2.forward(&x)
    }

    /// Runs the decoder over input embeddings `(1, l, hidden)` after the
    /// cache; logits of the last position, `[vocab]`.
    fn run(&mut self, xs: Tensor) -> Result<Tensor> {
        let (_, l, _) = xs.dims3()?;
        let offset = self.cached_len();
        let (mut c, mut s) = (Vec::new(), Vec::new());
        for p in offset..offset + l {
            for &f in &self.inv_freq {
                let (sin, cos) = anjeon_kernels::math::sin_cos(p as f32 * f);
                c.push(cos);
                s.push(sin);
            }
        }
        let w = self.inv_freq.len();
        let cos = Tensor::from_vec(c, (l, w), &self.device)?.to_dtype(self.dtype)?;
        let sin = Tensor::from_vec(s, (l, w), &self.device)?.to_dtype(self.dtype)?;
        let mask =
            super::layers::causal_mask(l, offset + l, offset, 0, None, self.dtype, &self.device)?;
        let mut xs = xs;
        for layer in &mut self.layers {
            xs = layer.forward(&xs, &cos, &sin, mask.as_ref())?;
        }
        let last = self.norm.forward(&xs.i((.., l - 1..l, ..))?)?;
        self.lm_head.forward(&last)?.flatten_all()
    }

    /// Text tokens `(1, l)` after the cache (`seq_offset` = cached length).
    /// Logits of the last position, `[vocab]`.
    pub fn forward(&mut self, ids: &Tensor, seq_offset: usize) -> Result<Tensor> {
        if seq_offset != self.cached_len() {
            candle_core::bail!(
                "seq_offset {seq_offset} but {} cached positions",
                self.cached_len()
            );
        }
        let xs = self.embed.forward(ids)?;
        self.run(xs)
    }

    /// Prefill a prompt from an empty cache. `ids` holds one `[AUDIO]` id per
    /// audio embedding (see [`expand_audio_placeholders`]), clips in order;
    /// `audio` their features. Logits of the last position, `[vocab]`.
    pub fn prefill(&mut self, ids: &[u32], audio: Option<&AudioInput>) -> Result<Tensor> {
        self.clear_kv_cache();
        if ids.is_empty() {
            candle_core::bail!("empty prompt");
        }
        let l = ids.len();
        let tok = self.cfg.audio_token_id;
        let n_audio = ids.iter().filter(|&&t| t == tok).count();
        let ids_t = Tensor::new(ids, &self.device)?.unsqueeze(0)?;
        let mut xs = self.embed.forward(&ids_t)?;
        let feats = match audio {
            Some(a) => Some(self.encode_audio(a)?),
            None if n_audio > 0 => {
                candle_core::bail!("{n_audio} audio tokens but no audio features")
            }
            None => None,
        };
        if let Some(feats) = feats {
            let n_feat = feats.dim(0)?;
            if n_feat != n_audio {
                candle_core::bail!(
                    "audio features and audio tokens do not match: {n_audio} [AUDIO] tokens, {n_feat} audio embeddings ({} per 30 s chunk)",
                    self.cfg.audio_config.tokens_per_chunk().unwrap_or(0)
                );
            }
            // Gather from [text embeddings; audio embeddings].
            let mut k = 0u32;
            let gather: Vec<u32> = ids
                .iter()
                .enumerate()
                .map(|(i, &t)| {
                    if t == tok {
                        k += 1;
                        l as u32 + k - 1
                    } else {
                        i as u32
                    }
                })
                .collect();
            let table = Tensor::cat(&[&xs.squeeze(0)?, &feats.to_dtype(self.dtype)?], 0)?;
            xs = table
                .index_select(&Tensor::new(gather.as_slice(), &self.device)?, 0)?
                .unsqueeze(0)?;
        }
        self.run(xs)
    }
}

// ---------------------------------------------------------------- input processing

/// Expands each `[AUDIO]` placeholder of a rendered prompt (one per clip,
/// clips in order) into `[BEGIN_AUDIO]` + `[AUDIO]` × `tokens_per_chunk` ×
/// the clip's chunks, the block mistral_common (and so `VoxtralProcessor`)
/// puts in the prompt for an audio item.
pub fn expand_audio_placeholders(
    ids: &[u32],
    audio_token: u32,
    begin_audio_token: u32,
    tokens_per_chunk: usize,
    chunks: &[usize],
) -> std::result::Result<Vec<u32>, Error> {
    let n_tok: usize = chunks.iter().sum::<usize>() * tokens_per_chunk;
    let mut out = Vec::with_capacity(ids.len() + n_tok + chunks.len());
    let mut k = 0;
    for &t in ids {
        if t == audio_token {
            let n = *chunks.get(k).ok_or_else(|| {
                Error::Usage(format!(
                    "the prompt has more [AUDIO] placeholders than audio clips ({})",
                    chunks.len()
                ))
            })?;
            if n == 0 {
                return Err(Error::Usage(format!("audio clip {k} has no chunks")));
            }
            out.push(begin_audio_token);
            out.extend(std::iter::repeat_n(audio_token, n * tokens_per_chunk));
            k += 1;
        } else {
            out.push(t);
        }
    }
    if k != chunks.len() {
        return Err(Error::Usage(format!(
            "{k} [AUDIO] placeholders in the prompt for {} audio clips",
            chunks.len()
        )));
    }
    Ok(out)
}

/// The chat template anjeon renders Voxtral prompts with when a checkpoint
/// ships none (the released ones do not: `VoxtralProcessor` builds prompts
/// with mistral_common). mistral_common's instruct format: `<s>`, an
/// optional `[SYSTEM_PROMPT]…[/SYSTEM_PROMPT]`, per user turn
/// `[INST]…[/INST]` with the content items in order (an audio item is one
/// `[AUDIO]` placeholder, expanded by [`expand_audio_placeholders`]), an
/// assistant turn followed by `</s>`. Its sha256 is in the run manifest
/// like any template's.
pub const CHAT_TEMPLATE: &str = concat!(
    "{{ bos_token }}{% for message in messages %}",
    "{% if message['content'] is string %}{% set items = [{'type': 'text', 'text': message['content']}] %}",
    "{% else %}{% set items = message['content'] %}{% endif %}",
    "{% if message['role'] == 'system' %}[SYSTEM_PROMPT]",
    "{% for c in items %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}",
    "[/SYSTEM_PROMPT]",
    "{% elif message['role'] == 'user' %}[INST]",
    "{% for c in items %}{% if c['type'] == 'audio' %}[AUDIO]",
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}",
    "[/INST]",
    "{% elif message['role'] == 'assistant' %}",
    "{% for c in items %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}",
    "{{ eos_token }}{% endif %}{% endfor %}",
);

/// Voxtral's input processing: the checkpoint's `WhisperFeatureExtractor`
/// settings (`preprocessor_config.json`) computed by anjeon's HF-exact
/// extractor ([`WhisperFeatures`], tests/audio.rs), 30 s chunking as
/// `VoxtralProcessor` does it, and the placeholder ids.
#[derive(Clone)]
pub struct Processor {
    pub features: WhisperFeatures,
    pub audio_token_id: u32,
    pub begin_audio_token_id: u32,
    pub tokens_per_chunk: usize,
    /// Whether a system prompt may go with audio: mistral_common refuses it
    /// before tokenizer version 13 (Voxtral 2507 ships v11); true only when
    /// the folder's tekken.json says v13 or later.
    pub system_with_audio: bool,
    /// sha256 of the preprocessor config read (for the run manifest).
    pub config_sha256: String,
    /// The run's limits (audio seconds).
    pub limits: crate::core::limits::Limits,
}

fn usage(path: &Path, msg: impl std::fmt::Display) -> Error {
    Error::Usage(format!("{}: {msg}", path.display()))
}

/// The id of `name` in a tokenizers `tokenizer.json` (added tokens, then
/// the model's vocabulary).
fn token_id_in(tokenizer_json: &serde_json::Value, name: &str) -> Option<u32> {
    let added = tokenizer_json["added_tokens"].as_array().and_then(|a| {
        a.iter()
            .find(|t| t["content"].as_str() == Some(name))
            .and_then(|t| t["id"].as_u64())
    });
    added
        .or_else(|| tokenizer_json["model"]["vocab"][name].as_u64())
        .map(|v| v as u32)
}

/// The rank of `name` among the special tokens of a Tekken `tekken.json`.
fn token_id_in_tekken(tekken: &serde_json::Value, name: &str) -> Option<u32> {
    tekken["special_tokens"].as_array().and_then(|a| {
        a.iter()
            .find(|t| t["token_str"].as_str() == Some(name))
            .and_then(|t| t["rank"].as_u64())
            .map(|v| v as u32)
    })
}

impl Processor {
    /// Reads `preprocessor_config.json` (transformers' defaults, with a
    /// warning, when it is missing) and the id of `[BEGIN_AUDIO]` from
    /// `tokenizer.json` or `tekken.json` (25, Tekken's id, with a warning,
    /// when neither names it). Refuses feature settings anjeon's extractor
    /// does not compute (dither, other FFT / hop / rate / chunk length).
    pub fn from_dir(dir: &Path, cfg: &Config) -> std::result::Result<Processor, Error> {
        let pp_path = dir.join("preprocessor_config.json");
        let src = std::fs::read_to_string(&pp_path).ok();
        let n_mels = match &src {
            Some(s) => {
                let v: serde_json::Value =
                    serde_json::from_str(s).map_err(|e| usage(&pp_path, e))?;
                if let Some(t) = v["feature_extractor_type"].as_str() {
                    if t != "WhisperFeatureExtractor" {
                        return Err(usage(
                            &pp_path,
                            format!(
                                "feature_extractor_type {t}; Voxtral uses WhisperFeatureExtractor"
                            ),
                        ));
                    }
                }
                let expect = |key: &str, want: f64| -> std::result::Result<(), Error> {
                    match v[key].as_f64() {
                        Some(x) if x != want => Err(usage(
                            &pp_path,
                            format!("{key} = {x}; anjeon's Whisper features need {want}"),
                        )),
                        _ => Ok(()),
                    }
                };
                expect("sampling_rate", SAMPLE_RATE as f64)?;
                expect("hop_length", HOP as f64)?;
                expect("n_fft", N_FFT as f64)?;
                expect("chunk_length", 30.0)?;
                expect("dither", 0.0)?;
                v["feature_size"].as_u64().unwrap_or(80) as usize
            }
            None => {
                log::warn!(
                    "{}: no preprocessor_config.json; using WhisperFeatureExtractor({} mel bins)",
                    dir.display(),
                    cfg.audio_config.num_mel_bins
                );
                cfg.audio_config.num_mel_bins
            }
        };
        if n_mels != cfg.audio_config.num_mel_bins {
            return Err(usage(
                &pp_path,
                format!(
                    "feature_size {n_mels} but the audio encoder takes {} mel bins",
                    cfg.audio_config.num_mel_bins
                ),
            ));
        }
        if cfg.audio_config.frames_per_chunk() != CHUNK_FRAMES {
            return Err(usage(
                &dir.join("config.json"),
                format!(
                    "max_source_positions {}: Voxtral's processor gives 30 s chunks of {CHUNK_FRAMES} frames",
                    cfg.audio_config.max_source_positions
                ),
            ));
        }
        let tokens_per_chunk = cfg
            .audio_config
            .tokens_per_chunk()
            .map_err(|e| usage(&dir.join("config.json"), e))?;
        let read_json = |name: &str| -> Option<serde_json::Value> {
            std::fs::read(dir.join(name))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
        };
        let tekken_version = read_json("tekken.json").and_then(|t| {
            t["config"]["version"]
                .as_str()
                .and_then(|v| v.trim_start_matches('v').parse::<u32>().ok())
        });
        let (begin, audio) = match (read_json("tokenizer.json"), read_json("tekken.json")) {
            (Some(t), _) => (token_id_in(&t, "[BEGIN_AUDIO]"), token_id_in(&t, "[AUDIO]")),
            (None, Some(t)) => (
                token_id_in_tekken(&t, "[BEGIN_AUDIO]"),
                token_id_in_tekken(&t, "[AUDIO]"),
            ),
            (None, None) => (None, None),
        };
        if let Some(a) = audio {
            if a != cfg.audio_token_id {
                return Err(usage(
                    dir,
                    format!(
                        "the tokenizer's [AUDIO] is {a} but config.json's audio_token_id is {}",
                        cfg.audio_token_id
                    ),
                ));
            }
        }
        let begin_audio_token_id = begin.unwrap_or_else(|| {
            log::warn!(
                "{}: the tokenizer does not name [BEGIN_AUDIO]; using 25 (Tekken's id)",
                dir.display()
            );
            25
        });
        Ok(Processor {
            features: WhisperFeatures::new(n_mels),
            audio_token_id: cfg.audio_token_id,
            begin_audio_token_id,
            tokens_per_chunk,
            system_with_audio: tekken_version.is_some_and(|v| v >= 13),
            config_sha256: crate::core::hash::sha256_hex(src.unwrap_or_default().as_bytes()),
            limits: Default::default(),
        })
    }

    /// Features of one clip (mono 16 kHz PCM): zero-padded to whole 30 s
    /// chunks, one pass, split into chunks of `n_mels × 3000` (row-major).
    pub fn clip_features(&self, pcm: &[f32]) -> Vec<Vec<f32>> {
        self.features.padded_chunks(pcm)
    }

    /// Features of the clips of one prompt (mono 16 kHz PCM each, in
    /// prompt order): the chunks of every clip and the model input.
    pub fn process(
        &self,
        clips: &[&[f32]],
        device: &Device,
    ) -> std::result::Result<(Vec<usize>, AudioInput), Error> {
        if clips.is_empty() {
            return Err(Error::Usage("no audio clips".into()));
        }
        let mut chunks = Vec::with_capacity(clips.len());
        let mut data = Vec::new();
        for pcm in clips {
            let f = self.clip_features(pcm);
            chunks.push(f.len());
            data.extend(f.into_iter().flatten());
        }
        let n: usize = chunks.iter().sum();
        let t = Tensor::from_vec(data, (n, self.features.n_mels, CHUNK_FRAMES), device)
            .map_err(|e| Error::backend("audio input", e))?;
        Ok((chunks, AudioInput { input_features: t }))
    }

    /// [`Processor::process`] for a prompt's media items: each must be
    /// audio; decoded to 16 kHz mono (`crate::audio::decode`).
    pub fn process_media(
        &self,
        media: &[crate::model::MediaInput<'_>],
        device: &Device,
    ) -> std::result::Result<(Vec<usize>, AudioInput), Error> {
        let mut pcm = Vec::with_capacity(media.len());
        for m in media {
            if m.kind != crate::core::sample::MediaKind::Audio {
                return Err(Error::Usage(format!(
                    "{}: Voxtral takes audio (not {})",
                    m.media.describe(),
                    m.kind.as_str()
                )));
            }
            pcm.push(crate::audio::decode::decode_media(m.media, &self.limits.audio())?.samples);
        }
        let clips: Vec<&[f32]> = pcm.iter().map(|p| p.as_slice()).collect();
        self.process(&clips, device)
    }

    /// [`expand_audio_placeholders`] with this checkpoint's ids.
    pub fn expand(&self, ids: &[u32], chunks: &[usize]) -> std::result::Result<Vec<u32>, Error> {
        expand_audio_placeholders(
            ids,
            self.audio_token_id,
            self.begin_audio_token_id,
            self.tokens_per_chunk,
            chunks,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_puts_one_block_per_placeholder() {
        let ids = [1, 3, 24, 7, 24, 4];
        let got = expand_audio_placeholders(&ids, 24, 25, 2, &[1, 2]).unwrap();
        assert_eq!(got, vec![1, 3, 25, 24, 24, 7, 25, 24, 24, 24, 24, 4]);
        assert!(expand_audio_placeholders(&ids, 24, 25, 2, &[1]).is_err());
        assert!(expand_audio_placeholders(&ids, 24, 25, 2, &[1, 1, 1]).is_err());
    }

    #[test]
    fn tokens_per_chunk_of_the_released_encoder() {
        let a: AudioConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(a.tokens_per_chunk().unwrap(), 375);
        assert_eq!(a.frames_per_chunk(), CHUNK_FRAMES);
        let b: AudioConfig =
            serde_json::from_str(r#"{"d_model": 32, "encoder_ffn_dim": 112}"#).unwrap();
        assert!(b.tokens_per_chunk().is_err());
    }
}
