//! EmbeddingGemma (Google; Gemma terms of use): multilingual sentence
//! embeddings from a sentence-transformers folder.
//!
//! anjeon's own file, written from transformers' `Gemma3TextModel` (with
//! `use_bidirectional_attention`) and sentence-transformers' module list:
//! 1. Gemma 3 text encoder: token embeddings scaled by √hidden; per layer
//!    RMSNorm (`x·(1+w)`, f32) → attention (q/k RMSNorm per head, RoPE with
//!    base `rope_local_base_freq` on sliding layers and `rope_theta` on full
//!    layers, scale `query_pre_attn_scalar^-½`, grouped KV heads) → post-attention
//!    norm → residual; pre-feed-forward norm → `down(gelu_tanh(gate(x))·up(x))` →
//!    post-feed-forward norm → residual; final norm.
//! 2. Attention is bidirectional. Full layers see every real token;
//!    sliding layers see keys with `|i − j| < w`, where transformers'
//!    `Gemma3TextConfig` turns the stored `sliding_window` into
//!    `w = sliding_window / 2 + 1` when attention is bidirectional (so 512 →
//!    256 tokens either side). Padding keys are masked in every layer.
//! 3. Mean pooling over the real tokens (prompt, `<bos>` and `<eos>` included,
//!    `include_prompt = true`), `2_Dense` (768 → 3072) and `3_Dense`
//!    (3072 → 768), both bias-free with identity activation, L2 normalisation.
//!
//! Texts get the model's task prompt prepended (`config_sentence_transformers.json`)
//! and are cut at `max_seq_length` tokens (`sentence_bert_config.json`),
//! keeping `<bos>` and `<eos>` as the tokenizer's post-processor places them.
//! Batches pad on the right with the pad id; the padding mask keeps each
//! text's embedding independent of its batch (checked in `tests/embedding.rs`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Embedding, VarBuilder};
use serde::Deserialize;

use super::gemma3::Rope;
use super::qlinear::QLinear;
use crate::core::error::{Error, Result};

#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_local_base_freq: f64,
    pub sliding_window: usize,
    pub layer_types: Vec<String>,
    pub query_pre_attn_scalar: f64,
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub use_bidirectional_attention: bool,
    pub hidden_activation: String,
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
}

impl Config {
    /// The number of keys either side (exclusive) a sliding layer sees.
    pub fn window(&self) -> usize {
        if self.use_bidirectional_attention {
            self.sliding_window / 2 + 1
        } else {
            self.sliding_window
        }
    }

    fn check(&self, path: &Path) -> Result<()> {
        let bad = |what: String| {
            Err(Error::Usage(format!(
                "{}: {what}\n  fix: anjeon's EmbeddingGemma runs Gemma 3 text encoders with bidirectional attention (use_bidirectional_attention = true)",
                path.display()
            )))
        };
        if !self.use_bidirectional_attention {
            return bad("use_bidirectional_attention is not true (a causal Gemma 3, not an embedding model)".into());
        }
        if self.hidden_activation != "gelu_pytorch_tanh" {
            return bad(format!("hidden_activation {:?}", self.hidden_activation));
        }
        if self.rope_scaling.as_ref().is_some_and(|v| !v.is_null()) {
            return bad("rope_scaling is set; not supported".into());
        }
        if self.layer_types.len() != self.num_hidden_layers {
            return bad(format!(
                "{} layer_types for {} layers",
                self.layer_types.len(),
                self.num_hidden_layers
            ));
        }
        if let Some(t) = self
            .layer_types
            .iter()
            .find(|t| *t != "sliding_attention" && *t != "full_attention")
        {
            return bad(format!("layer type {t:?}"));
        }
        if self.num_attention_heads == 0
            || self.num_key_value_heads == 0
            || !self
                .num_attention_heads
                .is_multiple_of(self.num_key_value_heads)
            || self.head_dim == 0
            || !self.head_dim.is_multiple_of(2)
            || self.max_position_embeddings > 1 << 20
        {
            return bad(format!(
                "head counts {}/{} or head_dim {} or {} positions out of range",
                self.num_attention_heads,
                self.num_key_value_heads,
                self.head_dim,
                self.max_position_embeddings
            ));
        }
        Ok(())
    }
}

struct Norm {
    /// `1 + weight` (Gemma's RMSNorm scales by one plus the stored weight).
    scale: Tensor,
    eps: f32,
}

impl Norm {
    fn new(n: usize, eps: f64, vb: VarBuilder) -> candle_core::Result<Norm> {
        Ok(Norm {
            scale: (vb.get(n, "weight")?.to_dtype(DType::F32)? + 1.0)?,
            eps: eps as f32,
        })
    }
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        candle_nn::ops::rms_norm(&x.contiguous()?, &self.scale, self.eps)
    }
}

struct Layer {
    q: QLinear,
    k: QLinear,
    v: QLinear,
    o: QLinear,
    q_norm: Norm,
    k_norm: Norm,
    input_norm: Norm,
    post_attn_norm: Norm,
    pre_ff_norm: Norm,
    post_ff_norm: Norm,
    gate: QLinear,
    up: QLinear,
    down: QLinear,
    sliding: bool,
}

/// A bias-free linear layer: anjeon's dense kernel on the CPU (repacked; the
/// loaded tensor is dropped), candle's product elsewhere.
fn linear(i: usize, o: usize, vb: VarBuilder) -> candle_core::Result<QLinear> {
    QLinear::dense(vb.get((o, i), "weight")?)
}

/// The Gemma 3 bidirectional encoder (transformer only; pooling is in [`EmbeddingGemma`]).
pub struct Encoder {
    embed: Embedding,
    layers: Vec<Layer>,
    norm: Norm,
    rope_local: Rope,
    rope_global: Rope,
    cfg: Config,
}

impl Encoder {
    pub fn new(cfg: &Config, vb: VarBuilder) -> candle_core::Result<Encoder> {
        let h = cfg.hidden_size;
        let hd = cfg.head_dim;
        let embed = Embedding::new(vb.get((cfg.vocab_size, h), "embed_tokens.weight")?, h);
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let vl = vb.pp(format!("layers.{i}"));
            let va = vl.pp("self_attn");
            let vm = vl.pp("mlp");
            layers.push(Layer {
                q: linear(h, cfg.num_attention_heads * hd, va.pp("q_proj"))?,
                k: linear(h, cfg.num_key_value_heads * hd, va.pp("k_proj"))?,
                v: linear(h, cfg.num_key_value_heads * hd, va.pp("v_proj"))?,
                o: linear(cfg.num_attention_heads * hd, h, va.pp("o_proj"))?,
                q_norm: Norm::new(hd, cfg.rms_norm_eps, va.pp("q_norm"))?,
                k_norm: Norm::new(hd, cfg.rms_norm_eps, va.pp("k_norm"))?,
                input_norm: Norm::new(h, cfg.rms_norm_eps, vl.pp("input_layernorm"))?,
                post_attn_norm: Norm::new(h, cfg.rms_norm_eps, vl.pp("post_attention_layernorm"))?,
                pre_ff_norm: Norm::new(h, cfg.rms_norm_eps, vl.pp("pre_feedforward_layernorm"))?,
                post_ff_norm: Norm::new(h, cfg.rms_norm_eps, vl.pp("post_feedforward_layernorm"))?,
                gate: linear(h, cfg.intermediate_size, vm.pp("gate_proj"))?,
                up: linear(h, cfg.intermediate_size, vm.pp("up_proj"))?,
                down: linear(cfg.intermediate_size, h, vm.pp("down_proj"))?,
                sliding: cfg.layer_types[i] == "sliding_attention",
            });
        }
        let dev = vb.device();
        Ok(Encoder {
            embed,
            layers,
            norm: Norm::new(h, cfg.rms_norm_eps, vb.pp("norm"))?,
            rope_local: Rope::new(
                hd,
                cfg.rope_local_base_freq as f32,
                cfg.max_position_embeddings,
                dev,
            )?,
            rope_global: Rope::new(hd, cfg.rope_theta as f32, cfg.max_position_embeddings, dev)?,
            cfg: cfg.clone(),
        })
    }

    /// Additive masks `(b, 1, l, l)` for full and sliding layers from the
    /// per-text lengths (right padding).
    fn masks(
        &self,
        lens: &[usize],
        l: usize,
        dev: &Device,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let w = self.cfg.window();
        let b = lens.len();
        let mut full = vec![0f32; b * l * l];
        let mut slide = vec![0f32; b * l * l];
        for (bi, &n) in lens.iter().enumerate() {
            for i in 0..l {
                for j in 0..l {
                    let at = bi * l * l + i * l + j;
                    if i >= n {
                        // A padding query: its output is never used, but a
                        // row with every key masked would be NaN, and NaN
                        // survives the zero weight in pooling.
                        continue;
                    }
                    if j >= n {
                        full[at] = f32::NEG_INFINITY;
                        slide[at] = f32::NEG_INFINITY;
                    } else if i.abs_diff(j) >= w {
                        slide[at] = f32::NEG_INFINITY;
                    }
                }
            }
        }
        Ok((
            Tensor::from_vec(full, (b, 1, l, l), dev)?,
            Tensor::from_vec(slide, (b, 1, l, l), dev)?,
        ))
    }

    /// Bidirectional attention on anjeon's kernel: `q` `(b, heads, l, d)`,
    /// `k`/`v` `(b, kv heads, l, d)`; each real position attends over its
    /// text's real keys (within the window on sliding layers), under the
    /// kernel's arithmetic contract, so its output does not depend on the
    /// batch. Padding positions get zeros. Returns `(b, l, heads · d)`.
    fn attend_cpu(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        lens: &[usize],
        sliding: bool,
        scale: f32,
    ) -> candle_core::Result<Tensor> {
        let (b, nh, l, hd) = q.dims4()?;
        let nkv = k.dim(1)?;
        let rows = |t: &Tensor| -> candle_core::Result<Vec<f32>> {
            t.transpose(1, 2)?.flatten_all()?.to_vec1::<f32>()
        };
        let (q, k, v) = (rows(q)?, rows(k)?, rows(v)?);
        let shape = anjeon_kernels::AttnShape {
            n_head: nh,
            n_kv: nkv,
            d: hd,
            scale,
        };
        let (qw, kw) = (nh * hd, nkv * hd);
        let w = self.cfg.window();
        let mut out = vec![0f32; b * l * qw];
        for (bi, &n) in lens.iter().enumerate() {
            let base = bi * l;
            let seqs: Vec<anjeon_kernels::AttnSeq<f32>> = (0..n)
                .map(|i| {
                    let (lo, hi) = if sliding {
                        (i.saturating_sub(w - 1), (i + w).min(n))
                    } else {
                        (0, n)
                    };
                    anjeon_kernels::AttnSeq {
                        q: &q[(base + i) * qw..(base + i + 1) * qw],
                        k: &k[(base + lo) * kw..(base + hi) * kw],
                        v: &v[(base + lo) * kw..(base + hi) * kw],
                    }
                })
                .collect();
            anjeon_kernels::attend_decode(shape, &seqs, &mut out[base * qw..(base + n) * qw])
                .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        }
        Tensor::from_vec(out, (b, l, qw), &Device::Cpu)
    }

    /// Hidden states `(b, l, hidden)` after the final norm, for right-padded
    /// ids `(b, l)` whose real lengths are `lens`.
    pub fn forward(&self, ids: &Tensor, lens: &[usize]) -> candle_core::Result<Tensor> {
        Ok(self.forward_tap(ids, lens, None)?.0)
    }

    /// As [`Encoder::forward`], and with `tap = Some(n)` also the hidden
    /// states after the first `n` layers (transformers' `hidden_states[n]`:
    /// 0 is the scaled token embeddings; no final norm).
    pub fn forward_tap(
        &self,
        ids: &Tensor,
        lens: &[usize],
        tap: Option<usize>,
    ) -> candle_core::Result<(Tensor, Option<Tensor>)> {
        let (b, l) = ids.dims2()?;
        if let Some(n) = tap.filter(|&n| n > self.layers.len()) {
            candle_core::bail!(
                "tap after {n} layers: the encoder has {}",
                self.layers.len()
            );
        }
        if l > self.cfg.max_position_embeddings {
            candle_core::bail!(
                "{l} tokens exceed max_position_embeddings {}",
                self.cfg.max_position_embeddings
            );
        }
        let dev = ids.device();
        let cfg = &self.cfg;
        // The CPU runs attention on anjeon's kernel, which takes each
        // position's keys as a range of rows; other devices use masks.
        let masks = if matches!(dev, Device::Cpu) {
            None
        } else {
            Some(self.masks(lens, l, dev)?)
        };
        let mut x = (self.embed.forward(ids)? * (cfg.hidden_size as f64).sqrt())?;
        let (nh, nkv, hd) = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
        );
        let scale = cfg.query_pre_attn_scalar.powf(-0.5);
        let mut tapped = None;
        for (i, layer) in self.layers.iter().enumerate() {
            if tap == Some(i) {
                tapped = Some(x.clone());
            }
            let residual = x.clone();
            let xs = layer.input_norm.forward(&x)?;
            let q = layer
                .q
                .forward(&xs)?
                .reshape((b, l, nh, hd))?
                .transpose(1, 2)?;
            let k = layer
                .k
                .forward(&xs)?
                .reshape((b, l, nkv, hd))?
                .transpose(1, 2)?;
            let v = layer
                .v
                .forward(&xs)?
                .reshape((b, l, nkv, hd))?
                .transpose(1, 2)?;
            let q = layer.q_norm.forward(&q)?;
            let k = layer.k_norm.forward(&k)?;
            let rope = if layer.sliding {
                &self.rope_local
            } else {
                &self.rope_global
            };
            let q = rope.apply(&q, 0)?;
            let k = rope.apply(&k, 0)?;
            let att = match &masks {
                None => self.attend_cpu(&q, &k, &v, lens, layer.sliding, scale as f32)?,
                Some((full, slide)) => {
                    let mask = if layer.sliding { slide } else { full };
                    super::layers::attention(&q, k, v.contiguous()?, scale, Some(mask))?
                }
            };
            let att = layer.o.forward(&att)?;
            x = (residual + layer.post_attn_norm.forward(&att)?)?;
            let residual = x.clone();
            let xs = layer.pre_ff_norm.forward(&x)?;
            // gelu_pytorch_tanh(gate) · up: anjeon's kernel on the CPU.
            let (g, u) = (layer.gate.forward(&xs)?, layer.up.forward(&xs)?);
            let gu = super::qlinear::glu(anjeon_kernels::Glu::GeluTanh, &g, &u)?;
            let ff = layer.down.forward(&gu)?;
            x = (residual + layer.post_ff_norm.forward(&ff)?)?;
        }
        if tap == Some(self.layers.len()) {
            tapped = Some(x.clone());
        }
        Ok((self.norm.forward(&x)?, tapped))
    }
}

/// A loaded EmbeddingGemma: tokenizer, encoder, pooling and projections.
pub struct EmbeddingGemma {
    encoder: Encoder,
    tokenizer: tokenizers::Tokenizer,
    dense: Vec<QLinear>,
    /// Task prompts by name (`query`, `document`, `Classification`, …).
    pub prompts: BTreeMap<String, String>,
    pub max_seq_length: usize,
    pub pad_id: u32,
    /// sha256 of `model.safetensors`: heads record it and are refused with another.
    pub sha256: String,
    pub dim: usize,
    pub dir: PathBuf,
    device: Device,
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| {
        Error::input(
            crate::core::error::Location::file(path),
            format!("bad JSON: {e}"),
            "the sentence-transformers folder is damaged; fetch it again (`anjeon models fetch embeddinggemma-300m`)",
        )
    })
}

#[derive(Deserialize)]
struct StConfig {
    #[serde(default)]
    prompts: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct Pooling {
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default = "yes")]
    include_prompt: bool,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
struct DenseCfg {
    in_features: usize,
    out_features: usize,
    #[serde(default)]
    bias: bool,
    activation_function: String,
}

#[derive(Deserialize)]
struct BertCfg {
    max_seq_length: usize,
}

impl EmbeddingGemma {
    /// Load a sentence-transformers EmbeddingGemma folder.
    pub fn load(dir: &Path, device: &Device) -> Result<EmbeddingGemma> {
        let cfg_path = dir.join("config.json");
        let cfg: Config = read_json(&cfg_path)?;
        cfg.check(&cfg_path)?;
        let weights = dir.join("model.safetensors");
        let sha256 = super::fetch::file_sha256(&weights)?;
        let cerr = |p: &Path| {
            let p = p.to_path_buf();
            move |e: candle_core::Error| {
                Error::Usage(format!("{}: {e}\n  fix: the file may be truncated or corrupt; check its sha256 or fetch it again (`anjeon models fetch embeddinggemma-300m`)", p.display()))
            }
        };
        // Read tensor by tensor: no mapping of the 1.2 GB file is held
        // beside the copies candle keeps.
        let vb =
            super::stfile::var_builder(&[&weights], DType::F32, device).map_err(cerr(&weights))?;
        // Checkpoints saved from Gemma3TextModel have no `model.` prefix.
        let vb = if vb.contains_tensor("embed_tokens.weight") {
            vb
        } else {
            vb.pp("model")
        };
        let encoder = Encoder::new(&cfg, vb).map_err(cerr(&weights))?;
        let modules: Vec<serde_json::Value> = read_json(&dir.join("modules.json"))?;
        let mut dense = vec![];
        let mut pooled = false;
        let mut normalize = false;
        let mut width = cfg.hidden_size;
        for m in &modules {
            let ty = m["type"].as_str().unwrap_or("");
            let sub = dir.join(m["path"].as_str().unwrap_or(""));
            match ty.rsplit('.').next().unwrap_or("") {
                "Transformer" => {}
                "Pooling" => {
                    let p: Pooling = read_json(&sub.join("config.json"))?;
                    if !p.pooling_mode_mean_tokens || !p.include_prompt {
                        return Err(Error::Usage(format!(
                            "{}: only mean pooling over all tokens (include_prompt) is supported",
                            sub.display()
                        )));
                    }
                    pooled = true;
                }
                "Dense" => {
                    let c: DenseCfg = read_json(&sub.join("config.json"))?;
                    if c.bias
                        || !c.activation_function.ends_with("Identity")
                        || c.in_features != width
                    {
                        return Err(Error::Usage(format!("{}: Dense {}→{} (bias {}, {}) does not follow width {width} with identity activation and no bias", sub.display(), c.in_features, c.out_features, c.bias, c.activation_function)));
                    }
                    let f = sub.join("model.safetensors");
                    let t = candle_core::safetensors::load(&f, device).map_err(cerr(&f))?;
                    let w = t
                        .get("linear.weight")
                        .ok_or_else(|| Error::Usage(format!("{}: no linear.weight", f.display())))?
                        .to_dtype(DType::F32)
                        .map_err(cerr(&f))?;
                    if w.dims() != [c.out_features, c.in_features] {
                        return Err(Error::Usage(format!(
                            "{}: linear.weight has shape {:?}, config says {}×{}",
                            f.display(),
                            w.dims(),
                            c.out_features,
                            c.in_features
                        )));
                    }
                    width = c.out_features;
                    dense.push(QLinear::dense(w).map_err(cerr(&f))?);
                }
                "Normalize" => normalize = true,
                other => {
                    return Err(Error::Usage(format!(
                        "{}: sentence-transformers module {other:?} is not supported",
                        dir.join("modules.json").display()
                    )))
                }
            }
        }
        if !pooled || !normalize {
            return Err(Error::Usage(format!(
                "{}: expected Pooling and Normalize modules",
                dir.join("modules.json").display()
            )));
        }
        let st: StConfig = read_json(&dir.join("config_sentence_transformers.json"))?;
        let bert: BertCfg = read_json(&dir.join("sentence_bert_config.json"))?;
        let tok_path = dir.join("tokenizer.json");
        let mut tokenizer = super::tokenizer::hf_tokenizer_file(&tok_path)?;
        let max_seq_length = bert.max_seq_length.min(cfg.max_position_embeddings);
        tokenizer
            .with_truncation(Some(tokenizers::TruncationParams {
                max_length: max_seq_length,
                ..Default::default()
            }))
            .map_err(|e| Error::Usage(format!("{}: tokenizer: {e}", tok_path.display())))?;
        tokenizer.with_padding(None);
        Ok(EmbeddingGemma {
            encoder,
            tokenizer,
            dense,
            prompts: st.prompts,
            max_seq_length,
            pad_id: cfg.pad_token_id.unwrap_or(0),
            sha256,
            dim: width,
            dir: dir.to_path_buf(),
            device: device.clone(),
        })
    }

    /// Which arithmetic computes the vectors: `kernels-v2` on the CPU
    /// (anjeon's dense and attention kernels, whose bits are the same on
    /// every CPU and in every batch, and since v2 rotary tables from
    /// `anjeon_kernels::math` instead of libm), else the candle backend's
    /// name (its bits depend on the device and library). Embedding caches
    /// are kept apart by it.
    pub fn arithmetic(&self) -> &'static str {
        match &self.device {
            Device::Cpu if super::qlinear::kernels_off() => "candle-cpu",
            Device::Cpu => "kernels-v2",
            Device::Cuda(_) => "candle-cuda",
            Device::Metal(_) => "candle-metal",
        }
    }

    /// The cached folder of the bundled card, if fetched.
    pub fn cached_dir() -> Option<PathBuf> {
        let card = super::card::find("embeddinggemma-300m")?;
        super::fetch::is_cached(&card).then(|| {
            super::fetch::model_path(&card)
                .parent()
                .map(Path::to_path_buf)
        })?
    }

    /// Token ids of a text as sentence-transformers feeds it (prompt already
    /// prepended; `<bos>` … `<eos>`, cut at `max_seq_length`).
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| Error::backend("tokenizer", e))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Token ids of a text without prompt or special tokens, with each
    /// token's byte offsets (to cut a text on a token boundary).
    #[allow(clippy::type_complexity)]
    pub fn raw_tokens(&self, text: &str) -> Result<(Vec<u32>, Vec<(usize, usize)>)> {
        let enc = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| Error::backend("tokenizer", e))?;
        Ok((enc.get_ids().to_vec(), enc.get_offsets().to_vec()))
    }

    /// Embeddings of already tokenized texts, run as one padded batch.
    pub fn embed_ids(&self, batch: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        self.embed_ids_tap(batch, None)
    }

    /// As [`EmbeddingGemma::embed_ids`]; with `tap = Some(n)` each vector is
    /// the embedding followed by the mean over the text's tokens of the
    /// hidden states after `n` layers (`dim` more values, not normalised).
    pub fn embed_ids_tap(&self, batch: &[Vec<u32>], tap: Option<usize>) -> Result<Vec<Vec<f32>>> {
        self.embed_ids_inner(batch, tap)
            .map_err(|e| Error::backend("EmbeddingGemma forward", e))
    }

    fn embed_ids_inner(
        &self,
        batch: &[Vec<u32>],
        tap: Option<usize>,
    ) -> candle_core::Result<Vec<Vec<f32>>> {
        if batch.is_empty() {
            return Ok(vec![]);
        }
        let lens: Vec<usize> = batch.iter().map(Vec::len).collect();
        let l = *lens.iter().max().unwrap_or(&1);
        let mut flat = Vec::with_capacity(batch.len() * l);
        for ids in batch {
            flat.extend_from_slice(ids);
            flat.extend(std::iter::repeat_n(self.pad_id, l - ids.len()));
        }
        let ids = Tensor::from_vec(flat, (batch.len(), l), &self.device)?;
        let (hidden, tapped) = self.encoder.forward_tap(&ids, &lens, tap)?;
        // Pooling and normalisation are plain loops in a fixed order (and
        // the Dense layers anjeon's kernel on the CPU), so each text's
        // vector has the same bits in any batch and on any CPU.
        let pool = |h: &Tensor| -> candle_core::Result<Vec<Vec<f32>>> {
            let h = h.to_vec3::<f32>()?;
            Ok(h.iter()
                .zip(&lens)
                .map(|(rows, &n)| {
                    let mut sum = vec![0f32; rows.first().map_or(0, Vec::len)];
                    for r in &rows[..n] {
                        sum.iter_mut().zip(r).for_each(|(s, v)| *s += v);
                    }
                    let count = n.max(1) as f32;
                    sum.iter_mut().for_each(|s| *s /= count);
                    sum
                })
                .collect())
        };
        let pooled = pool(&hidden)?;
        let width = pooled.first().map_or(0, Vec::len);
        let mut x = Tensor::from_vec(pooled.concat(), (batch.len(), width), &self.device)?;
        for w in &self.dense {
            x = w.forward(&x)?;
        }
        let mut out = x.to_vec2::<f32>()?;
        for v in &mut out {
            let norm = v.iter().fold(0f32, |s, x| s + x * x).sqrt().max(1e-12);
            v.iter_mut().for_each(|x| *x /= norm);
        }
        if let Some(h) = tapped {
            for (v, m) in out.iter_mut().zip(pool(&h)?) {
                v.extend(m);
            }
        }
        Ok(out)
    }

    /// Mean-pooled hidden states before the Dense layers (for parity checks).
    pub fn pooled(&self, ids: &[u32]) -> Result<Vec<f32>> {
        let go = || -> candle_core::Result<Vec<f32>> {
            let t = Tensor::new(ids, &self.device)?.unsqueeze(0)?;
            let h = self.encoder.forward(&t, &[ids.len()])?;
            h.mean(1)?.squeeze(0)?.to_vec1::<f32>()
        };
        go().map_err(|e| Error::backend("EmbeddingGemma forward", e))
    }

    /// Embed texts with a task prompt (a name from the model's prompts, or
    /// None for none), in length-sorted batches of at most `batch` texts.
    /// Results are in input order; each equals the text embedded alone.
    pub fn embed(
        &self,
        texts: &[&str],
        prompt: Option<&str>,
        batch: usize,
    ) -> Result<Vec<Vec<f32>>> {
        let prefix = match prompt {
            None => "",
            Some(p) => self.prompts.get(p).map(String::as_str).ok_or_else(|| {
                Error::Usage(format!(
                    "embedding prompt {p:?} is not one of the model's: {}",
                    self.prompts.keys().cloned().collect::<Vec<_>>().join(", ")
                ))
            })?,
        };
        let ids: Vec<Vec<u32>> = texts
            .iter()
            .map(|t| self.tokenize(&format!("{prefix}{t}")))
            .collect::<Result<_>>()?;
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.sort_by_key(|&i| (ids[i].len(), i));
        let mut out = vec![Vec::new(); ids.len()];
        // Batches hold similar lengths, and at most ~8k tokens of padded input.
        let mut start = 0;
        while start < order.len() {
            let mut end = start + 1;
            while end < order.len()
                && end - start < batch.max(1)
                && ids[order[end]].len() * (end - start + 1) <= 8192
            {
                end += 1;
            }
            let chunk: Vec<Vec<u32>> = order[start..end].iter().map(|&i| ids[i].clone()).collect();
            for (k, e) in self.embed_ids(&chunk)?.into_iter().enumerate() {
                out[order[start + k]] = e;
            }
            start = end;
        }
        Ok(out)
    }
}
