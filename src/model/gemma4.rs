//! Gemma 4 (image, audio and text in, text out) from Hugging Face safetensors.
//!
//! Written for anjeon after candle-transformers 0.11.1's `gemma4` module
//! (MIT OR Apache-2.0, Copyright the Candle authors) and checked against
//! transformers 5.23's `modeling_gemma4.py` with a tiny random checkpoint
//! (tests/fixtures/tiny/make_tiny_gemma4.py, tests/gemma4.rs). candle's
//! module cannot load a transformers checkpoint at all (it looks for
//! `model.language_model.model.*` and for the vision linears without their
//! `.linear` sub-module), and reading it against transformers shows these
//! further differences, each a bug there, fixed here:
//! - Gemma 4's RMSNorm multiplies by `weight`, not `1 + weight` (Gemma 2/3);
//! - text attention uses scaling 1.0 (q/k are RMS-normed), not 1/sqrt(head_dim);
//! - per-layer embeddings (PLE: `embed_tokens_per_layer`,
//!   `per_layer_model_projection`, the per-layer gate/projection/norm in every
//!   decoder layer) are missing, as are the per-layer `layer_scalar`, KV
//!   sharing across the last `num_kv_shared_layers` layers, the double-wide
//!   MLP of those layers and `attention_k_eq_v` (values = raw key projection,
//!   `num_global_key_value_heads`); the small dense checkpoints (E2B/E4B) use
//!   PLE, KV sharing and the double-wide MLP;
//! - the sliding window keeps `sliding_window` positions (kv > q - window);
//!   candle's prefill mask keeps one more (kv >= q - window);
//! - image soft tokens attend bidirectionally within their image on sliding
//!   layers (`use_bidirectional_attention = "vision"`), causal elsewhere;
//! - image embeddings are scattered into the image-token positions in order
//!   (candle copies row i of the image features to sequence position i, and
//!   `broadcast_embed_to_mask` returns zeros for batch > 1);
//! - the vision tower's clipped linears clamp inputs and outputs
//!   (`use_clipped_linears`), and padding patches (position -1) are dropped.
//!
//! The audio tower (`Gemma4AudioModel`, a USM conformer) is [`AudioTower`],
//! written from transformers' `modeling_gemma4.py` (candle has none): two
//! stride-2 3×3 convolutions over (time, mel) with the frame mask applied
//! before each, a projection, then per layer a half-step feed-forward,
//! chunked local self-attention (blocks of `attention_chunk_size` queries,
//! `attention_context_left − 1` steps back and `attention_context_right`
//! ahead, relative-position logits with the Transformer-XL shift, logit
//! soft-cap, invalid keys set to `attention_invalid_logits_value`), a light
//! causal depthwise convolution, a second feed-forward and a norm, with the
//! clamps of `gradient_clipping` and the clipped linears; then
//! `output_proj` and `embed_audio` (weightless RMSNorm + projection). Padding
//! steps are dropped; audio soft tokens are causal in the text model (only
//! image blocks are bidirectional). Each clip runs on its own (transformers
//! pads a prompt's clips into one batch; the test checks that the valid
//! steps agree). Features are `crate::audio::features::Gemma4Features`.
//!
//! MoE (`enable_moe_block`, the 26B-A4B model) is not implemented;
//! [`Gemma4::new`] refuses MoE configs. The model runs batch 1
//! (anjeon's generation loop is batch 1); a padded batch in transformers
//! gives the same logits per row (tests/gemma4.rs checks this).
//!
//! The KV cache is plain data (`Clone`) and keeps every position, also on
//! sliding layers (the window is applied by the mask), so a cloned prompt
//! cache can be reused for several continuations.
//!
//! Placeholder expansion (`<|image|>` -> `<|image>` + soft tokens +
//! `<image|>`) is [`expand_image_placeholders`]; the number of soft tokens
//! per image is [`soft_tokens_per_image`]; for audio (`<|audio|>` ->
//! `<|audio>` + soft tokens + `<audio|>`) [`expand_audio_placeholders`] and
//! [`soft_tokens_per_audio`].

use std::collections::HashMap;

use candle_core::{DType, Device, IndexOp, Module, Result, Tensor, D};
use candle_nn::{Activation, Embedding, Linear, VarBuilder};
use serde::Deserialize;

use super::layers::{append_kv, attention, RmsNorm};

// ---------------------------------------------------------------- config

#[derive(Debug, Clone, Deserialize, Default)]
pub struct RopeLayer {
    #[serde(default)]
    pub rope_type: Option<String>,
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub partial_rotary_factor: Option<f64>,
}

#[derive(Debug, Clone, Deserialize, Default)]
pub struct TextRope {
    #[serde(default)]
    pub full_attention: Option<RopeLayer>,
    #[serde(default)]
    pub sliding_attention: Option<RopeLayer>,
}

/// transformers 5 writes the full-attention layers' head_dim / kv heads as
/// `per_layer_config`; hub configs have `global_head_dim` instead.
#[derive(Debug, Clone, Deserialize, Default)]
pub struct LayerOverride {
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
}

fn d_gelu_tanh() -> Activation {
    Activation::GeluPytorchTanh
}
fn d_eps() -> f64 {
    1e-6
}
fn d_true() -> bool {
    true
}
fn d_sliding() -> usize {
    512
}
fn d_ple() -> Option<usize> {
    Some(256)
}
fn d_ple_vocab() -> usize {
    262_144
}

#[derive(Debug, Clone, Deserialize)]
pub struct TextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    #[serde(default = "d_gelu_tanh")]
    pub hidden_activation: Activation,
    #[serde(default = "d_eps")]
    pub rms_norm_eps: f64,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default = "d_sliding")]
    pub sliding_window: usize,
    pub layer_types: Vec<String>,
    #[serde(default)]
    pub final_logit_softcapping: Option<f64>,
    #[serde(default)]
    pub use_bidirectional_attention: Option<String>,
    #[serde(default = "d_ple_vocab")]
    pub vocab_size_per_layer_input: usize,
    #[serde(default = "d_ple")]
    pub hidden_size_per_layer_input: Option<usize>,
    #[serde(default)]
    pub attention_k_eq_v: bool,
    #[serde(default)]
    pub num_kv_shared_layers: usize,
    #[serde(default)]
    pub enable_moe_block: bool,
    #[serde(default)]
    pub use_double_wide_mlp: bool,
    #[serde(default)]
    pub global_head_dim: Option<usize>,
    #[serde(default)]
    pub num_global_key_value_heads: Option<usize>,
    #[serde(default)]
    pub per_layer_config: Option<HashMap<String, LayerOverride>>,
    #[serde(default)]
    pub rope_parameters: Option<TextRope>,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
}

impl TextConfig {
    pub fn is_sliding(&self, i: usize) -> bool {
        self.layer_types.get(i).map(|s| s.as_str()) == Some("sliding_attention")
    }

    /// (head_dim, kv heads) of layer `i`.
    pub fn layer_dims(&self, i: usize) -> (usize, usize) {
        if self.is_sliding(i) {
            return (self.head_dim, self.num_key_value_heads);
        }
        let o = self
            .per_layer_config
            .as_ref()
            .and_then(|m| m.get(&i.to_string()));
        let hd = o
            .and_then(|o| o.head_dim)
            .or(self.global_head_dim)
            .unwrap_or(512);
        let kv = o
            .and_then(|o| o.num_key_value_heads)
            .or(if self.attention_k_eq_v {
                self.num_global_key_value_heads
            } else {
                None
            });
        (hd, kv.unwrap_or(self.num_key_value_heads))
    }

    fn ple_dim(&self) -> usize {
        self.hidden_size_per_layer_input.unwrap_or(0)
    }

    /// KV sharing: None, "store" (last unshared layer of its type) or "reuse".
    fn kv_modes(&self) -> Vec<Option<&'static str>> {
        let n = self.num_hidden_layers;
        let mut modes = vec![None; n];
        if self.num_kv_shared_layers == 0 {
            return modes;
        }
        let first = n - self.num_kv_shared_layers;
        for m in modes.iter_mut().skip(first) {
            *m = Some("reuse");
        }
        for ty in ["sliding_attention", "full_attention"] {
            if let Some(p) = (0..first).rev().find(|&i| self.layer_types[i] == ty) {
                modes[p] = Some("store");
            }
        }
        modes
    }

    fn rope(&self, sliding: bool) -> RopeLayer {
        let r = self.rope_parameters.clone().unwrap_or_default();
        let l = if sliding {
            r.sliding_attention
        } else {
            r.full_attention
        };
        l.unwrap_or_else(|| {
            if sliding {
                RopeLayer {
                    rope_type: Some("default".into()),
                    rope_theta: Some(10_000.0),
                    partial_rotary_factor: None,
                }
            } else {
                RopeLayer {
                    rope_type: Some("proportional".into()),
                    rope_theta: Some(1_000_000.0),
                    partial_rotary_factor: Some(0.25),
                }
            }
        })
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
pub struct VisionRope {
    #[serde(default)]
    pub rope_theta: Option<f64>,
}

fn d_pool() -> usize {
    3
}
fn d_patch() -> usize {
    16
}

#[derive(Debug, Clone, Deserialize)]
pub struct VisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    #[serde(default = "d_gelu_tanh")]
    pub hidden_activation: Activation,
    #[serde(default = "d_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "d_patch")]
    pub patch_size: usize,
    #[serde(default = "d_pool")]
    pub pooling_kernel_size: usize,
    pub position_embedding_size: usize,
    #[serde(default)]
    pub use_clipped_linears: bool,
    #[serde(default)]
    pub standardize: bool,
    #[serde(default)]
    pub rope_parameters: Option<VisionRope>,
}

fn d_silu() -> Activation {
    Activation::Silu
}
fn d_sub_channels() -> Vec<usize> {
    vec![128, 32]
}
fn d_conv_kernel() -> usize {
    5
}
fn d_half() -> f64 {
    0.5
}
fn d_chunk() -> usize {
    12
}
fn d_left() -> usize {
    13
}
fn d_cap() -> f64 {
    50.0
}
fn d_invalid() -> f64 {
    -1.0e9
}
fn d_grad_clip() -> f64 {
    1e10
}
fn d_out_dims() -> usize {
    1536
}

/// `Gemma4AudioConfig` (the USM conformer), transformers' defaults.
#[derive(Debug, Clone, Deserialize)]
pub struct AudioConfig {
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default = "d_silu")]
    pub hidden_act: Activation,
    #[serde(default = "d_sub_channels")]
    pub subsampling_conv_channels: Vec<usize>,
    #[serde(default = "d_conv_kernel")]
    pub conv_kernel_size: usize,
    #[serde(default = "d_half")]
    pub residual_weight: f64,
    #[serde(default = "d_chunk")]
    pub attention_chunk_size: usize,
    #[serde(default = "d_left")]
    pub attention_context_left: usize,
    #[serde(default)]
    pub attention_context_right: usize,
    #[serde(default = "d_cap")]
    pub attention_logit_cap: f64,
    #[serde(default = "d_invalid")]
    pub attention_invalid_logits_value: f64,
    #[serde(default = "d_true")]
    pub use_clipped_linears: bool,
    #[serde(default = "d_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "d_grad_clip")]
    pub gradient_clipping: f64,
    #[serde(default = "d_out_dims")]
    pub output_proj_dims: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub text_config: TextConfig,
    #[serde(default)]
    pub vision_config: Option<VisionConfig>,
    #[serde(default)]
    pub audio_config: Option<AudioConfig>,
    pub image_token_id: u32,
    pub boi_token_id: u32,
    pub eoi_token_id: u32,
    /// `<|audio|>`: one per audio soft token.
    #[serde(default)]
    pub audio_token_id: Option<u32>,
    /// `<|audio>` / `<audio|>` around an audio's soft tokens (transformers
    /// writes the end marker as `eoa_token_index`).
    #[serde(default)]
    pub boa_token_id: Option<u32>,
    #[serde(default, alias = "eoa_token_index")]
    pub eoa_token_id: Option<u32>,
    #[serde(default = "d_true")]
    pub tie_word_embeddings: bool,
}

// ---------------------------------------------------------------- helpers

/// cos/sin `(L, inv_freq.len())` for the given positions.
fn rope_table(
    inv_freq: &[f32],
    pos: impl Iterator<Item = f32>,
    dtype: DType,
    dev: &Device,
) -> Result<(Tensor, Tensor)> {
    let (mut c, mut s) = (Vec::new(), Vec::new());
    let mut n = 0;
    for p in pos {
        for &f in inv_freq {
            let (sin, cos) = anjeon_kernels::math::sin_cos(p * f);
            c.push(cos);
            s.push(sin);
        }
        n += 1;
    }
    let w = inv_freq.len();
    Ok((
        Tensor::from_vec(c, (n, w), dev)?.to_dtype(dtype)?,
        Tensor::from_vec(s, (n, w), dev)?.to_dtype(dtype)?,
    ))
}

// ---------------------------------------------------------------- vision

/// `Gemma4ClippableLinear`: optional clamps around a bias-free linear.
#[derive(Clone)]
struct ClipLinear {
    lin: Linear,
    clip: Option<[f32; 4]>,
}

impl ClipLinear {
    fn new(i: usize, o: usize, clipped: bool, vb: VarBuilder) -> Result<Self> {
        let lin = candle_nn::linear_no_bias(i, o, vb.pp("linear"))?;
        let clip = if clipped {
            let g = |n: &str| -> Result<f32> {
                vb.get((), n)?.to_dtype(DType::F32)?.to_scalar::<f32>()
            };
            Some([
                g("input_min")?,
                g("input_max")?,
                g("output_min")?,
                g("output_max")?,
            ])
        } else {
            None
        };
        Ok(ClipLinear { lin, clip })
    }
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self.clip {
            None => self.lin.forward(x),
            Some([a, b, c, d]) => self.lin.forward(&x.clamp(a, b)?)?.clamp(c, d),
        }
    }
}

#[derive(Clone)]
struct VisionLayer {
    q: ClipLinear,
    k: ClipLinear,
    v: ClipLinear,
    o: ClipLinear,
    q_norm: RmsNorm,
    k_norm: RmsNorm,
    v_norm: RmsNorm,
    gate: ClipLinear,
    up: ClipLinear,
    down: ClipLinear,
    ln_in: RmsNorm,
    ln_post_attn: RmsNorm,
    ln_pre_ff: RmsNorm,
    ln_post_ff: RmsNorm,
    act: Activation,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

impl VisionLayer {
    fn new(cfg: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        let (h, hd, c) = (cfg.hidden_size, cfg.head_dim, cfg.use_clipped_linears);
        let (nh, nkv) = (cfg.num_attention_heads, cfg.num_key_value_heads);
        let a = vb.pp("self_attn");
        let m = vb.pp("mlp");
        let e = cfg.rms_norm_eps;
        Ok(VisionLayer {
            q: ClipLinear::new(h, nh * hd, c, a.pp("q_proj"))?,
            k: ClipLinear::new(h, nkv * hd, c, a.pp("k_proj"))?,
            v: ClipLinear::new(h, nkv * hd, c, a.pp("v_proj"))?,
            o: ClipLinear::new(nh * hd, h, c, a.pp("o_proj"))?,
            q_norm: RmsNorm::new(hd, e, a.pp("q_norm"))?,
            k_norm: RmsNorm::new(hd, e, a.pp("k_norm"))?,
            v_norm: RmsNorm::bare(hd, e, vb.dtype(), vb.device())?,
            gate: ClipLinear::new(h, cfg.intermediate_size, c, m.pp("gate_proj"))?,
            up: ClipLinear::new(h, cfg.intermediate_size, c, m.pp("up_proj"))?,
            down: ClipLinear::new(cfg.intermediate_size, h, c, m.pp("down_proj"))?,
            ln_in: RmsNorm::new(h, e, vb.pp("input_layernorm"))?,
            ln_post_attn: RmsNorm::new(h, e, vb.pp("post_attention_layernorm"))?,
            ln_pre_ff: RmsNorm::new(h, e, vb.pp("pre_feedforward_layernorm"))?,
            ln_post_ff: RmsNorm::new(h, e, vb.pp("post_feedforward_layernorm"))?,
            act: cfg.hidden_activation,
            heads: nh,
            kv_heads: nkv,
            head_dim: hd,
        })
    }

    /// 2-D RoPE: the first half of each head rotates with the x position,
    /// the second half with the y position (`apply_multidimensional_rope`).
    fn rope2d(x: &Tensor, cx: &Tensor, sx: &Tensor, cy: &Tensor, sy: &Tensor) -> Result<Tensor> {
        let half = x.dim(D::Minus1)? / 2;
        let a = x.narrow(D::Minus1, 0, half)?.contiguous()?;
        let b = x.narrow(D::Minus1, half, half)?.contiguous()?;
        let a = candle_nn::rotary_emb::rope(&a, cx, sx)?;
        let b = candle_nn::rotary_emb::rope(&b, cy, sy)?;
        Tensor::cat(&[&a, &b], D::Minus1)
    }

    /// `xs`: `(1, n, hidden)`, one image's valid patches.
    fn forward(&self, xs: &Tensor, rope: &[Tensor; 4]) -> Result<Tensor> {
        let (b, n, _) = xs.dims3()?;
        let hd = self.head_dim;
        let h = self.ln_in.forward(xs)?;
        let q = self.q.forward(&h)?.reshape((b, n, self.heads, hd))?;
        let k = self.k.forward(&h)?.reshape((b, n, self.kv_heads, hd))?;
        let v = self.v.forward(&h)?.reshape((b, n, self.kv_heads, hd))?;
        let q = self.q_norm.forward(&q)?.transpose(1, 2)?.contiguous()?;
        let k = self.k_norm.forward(&k)?.transpose(1, 2)?.contiguous()?;
        let v = self.v_norm.forward(&v)?.transpose(1, 2)?.contiguous()?;
        let [cx, sx, cy, sy] = rope;
        let q = Self::rope2d(&q, cx, sx, cy, sy)?;
        let k = Self::rope2d(&k, cx, sx, cy, sy)?;
        let o = attention(&q, k, v, 1.0, None)?;
        let o = self.ln_post_attn.forward(&self.o.forward(&o)?)?;
        let xs = (xs + o)?;
        let h = self.ln_pre_ff.forward(&xs)?;
        let m = self
            .down
            .forward(&(self.gate.forward(&h)?.apply(&self.act)? * self.up.forward(&h)?)?)?;
        xs + self.ln_post_ff.forward(&m)?
    }
}

#[derive(Clone)]
struct Vision {
    input_proj: Linear,
    pos_table: Tensor,
    layers: Vec<VisionLayer>,
    std: Option<(Tensor, Tensor)>,
    inv_freq: Vec<f32>,
    pool: usize,
    hidden: usize,
    embed_norm: RmsNorm,
    embed_proj: Linear,
}

impl Vision {
    fn new(
        cfg: &VisionConfig,
        text_hidden: usize,
        vb: VarBuilder,
        vb_embed: VarBuilder,
    ) -> Result<Self> {
        let pe = vb.pp("patch_embedder");
        let ps = cfg.patch_size;
        let theta = cfg
            .rope_parameters
            .as_ref()
            .and_then(|r| r.rope_theta)
            .unwrap_or(100.0) as f32;
        let spatial = cfg.head_dim / 2;
        let inv_freq = anjeon_kernels::math::rope_inv_freq(spatial, theta);
        let std = if cfg.standardize {
            Some((
                vb.get(cfg.hidden_size, "std_bias")?,
                vb.get(cfg.hidden_size, "std_scale")?,
            ))
        } else {
            None
        };
        Ok(Vision {
            input_proj: candle_nn::linear_no_bias(
                3 * ps * ps,
                cfg.hidden_size,
                pe.pp("input_proj"),
            )?,
            pos_table: pe.get(
                (2, cfg.position_embedding_size, cfg.hidden_size),
                "position_embedding_table",
            )?,
            layers: (0..cfg.num_hidden_layers)
                .map(|i| VisionLayer::new(cfg, vb.pp("encoder").pp("layers").pp(i)))
                .collect::<Result<Vec<_>>>()?,
            std,
            inv_freq,
            pool: cfg.pooling_kernel_size,
            hidden: cfg.hidden_size,
            embed_norm: RmsNorm::bare(cfg.hidden_size, cfg.rms_norm_eps, vb.dtype(), vb.device())?,
            embed_proj: candle_nn::linear_no_bias(
                cfg.hidden_size,
                text_hidden,
                vb_embed.pp("embedding_projection"),
            )?,
        })
    }

    /// One image: `pixels` `(n, 3·p·p)` in [0, 1] and `pos` (x, y) per
    /// patch, padding already removed. Soft tokens in text space, `(n/k², text_hidden)`.
    fn encode(&self, pixels: &Tensor, pos: &[(u32, u32)]) -> Result<Tensor> {
        let dev = pixels.device();
        let dtype = self.pos_table.dtype();
        let n = pos.len();
        let xs = ((pixels.to_dtype(dtype)? - 0.5)? * 2.0)?;
        let xs = self.input_proj.forward(&xs)?;
        let px = Tensor::from_vec(pos.iter().map(|p| p.0).collect::<Vec<_>>(), n, dev)?;
        let py = Tensor::from_vec(pos.iter().map(|p| p.1).collect::<Vec<_>>(), n, dev)?;
        let pe = (self.pos_table.i(0)?.index_select(&px, 0)?
            + self.pos_table.i(1)?.index_select(&py, 0)?)?;
        let mut xs = (xs + pe)?.unsqueeze(0)?;
        let (cx, sx) = rope_table(&self.inv_freq, pos.iter().map(|p| p.0 as f32), dtype, dev)?;
        let (cy, sy) = rope_table(&self.inv_freq, pos.iter().map(|p| p.1 as f32), dtype, dev)?;
        let rope = [cx, sx, cy, sy];
        for l in &self.layers {
            xs = l.forward(&xs, &rope)?;
        }
        // Average pooling over k×k patch blocks, then sqrt(hidden) scaling.
        let k = self.pool as u32;
        let max_x = pos.iter().map(|p| p.0).max().unwrap_or(0) + 1;
        let stride = max_x / k;
        let n_out = n / (self.pool * self.pool);
        let mut w = vec![0f32; n_out * n];
        for (j, &(x, y)) in pos.iter().enumerate() {
            let o = (x / k + stride * (y / k)) as usize;
            if o >= n_out {
                candle_core::bail!("patch ({x}, {y}) pools to soft token {o} of {n_out}");
            }
            w[o * n + j] = 1.0 / (k * k) as f32;
        }
        let w = Tensor::from_vec(w, (n_out, n), dev)?;
        let pooled = w.matmul(&xs.squeeze(0)?.to_dtype(DType::F32)?)?;
        let mut pooled = (pooled * (self.hidden as f64).sqrt())?;
        if let Some((bias, scale)) = &self.std {
            pooled = pooled
                .broadcast_sub(&bias.to_dtype(DType::F32)?)?
                .broadcast_mul(&scale.to_dtype(DType::F32)?)?;
        }
        let pooled = pooled.to_dtype(dtype)?;
        self.embed_proj.forward(&self.embed_norm.forward(&pooled)?)
    }
}

// ---------------------------------------------------------------- text

#[derive(Clone)]
struct Layer {
    q: Linear,
    k: Option<Linear>,
    v: Option<Linear>,
    o: Linear,
    q_norm: RmsNorm,
    k_norm: Option<RmsNorm>,
    v_norm: RmsNorm,
    gate: Linear,
    up: Linear,
    down: Linear,
    act: Activation,
    ln_in: RmsNorm,
    ln_post_attn: RmsNorm,
    ln_pre_ff: RmsNorm,
    ln_post_ff: RmsNorm,
    ple: Option<(Linear, Linear, RmsNorm)>,
    scalar: Tensor,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    sliding: bool,
    reuse: bool,
    cache: Option<(Tensor, Tensor)>,
}

impl Layer {
    fn new(cfg: &TextConfig, i: usize, mode: Option<&str>, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        let (hd, kvh) = cfg.layer_dims(i);
        let sliding = cfg.is_sliding(i);
        let reuse = mode == Some("reuse");
        let b = cfg.attention_bias;
        let e = cfg.rms_norm_eps;
        let a = vb.pp("self_attn");
        let m = vb.pp("mlp");
        let nh = cfg.num_attention_heads;
        let k_eq_v = cfg.attention_k_eq_v && !sliding;
        let inter = cfg.intermediate_size
            * if cfg.use_double_wide_mlp && reuse {
                2
            } else {
                1
            };
        let ple = match cfg.ple_dim() {
            0 => None,
            p => Some((
                candle_nn::linear_no_bias(h, p, vb.pp("per_layer_input_gate"))?,
                candle_nn::linear_no_bias(p, h, vb.pp("per_layer_projection"))?,
                RmsNorm::new(h, e, vb.pp("post_per_layer_input_norm"))?,
            )),
        };
        Ok(Layer {
            q: candle_nn::linear_b(h, nh * hd, b, a.pp("q_proj"))?,
            k: if reuse {
                None
            } else {
                Some(candle_nn::linear_b(h, kvh * hd, b, a.pp("k_proj"))?)
            },
            v: if reuse || k_eq_v {
                None
            } else {
                Some(candle_nn::linear_b(h, kvh * hd, b, a.pp("v_proj"))?)
            },
            o: candle_nn::linear_b(nh * hd, h, b, a.pp("o_proj"))?,
            q_norm: RmsNorm::new(hd, e, a.pp("q_norm"))?,
            k_norm: if reuse {
                None
            } else {
                Some(RmsNorm::new(hd, e, a.pp("k_norm"))?)
            },
            v_norm: RmsNorm::bare(hd, e, vb.dtype(), vb.device())?,
            gate: candle_nn::linear_b(h, inter, false, m.pp("gate_proj"))?,
            up: candle_nn::linear_b(h, inter, false, m.pp("up_proj"))?,
            down: candle_nn::linear_b(inter, h, false, m.pp("down_proj"))?,
            act: cfg.hidden_activation,
            ln_in: RmsNorm::new(h, e, vb.pp("input_layernorm"))?,
            ln_post_attn: RmsNorm::new(h, e, vb.pp("post_attention_layernorm"))?,
            ln_pre_ff: RmsNorm::new(h, e, vb.pp("pre_feedforward_layernorm"))?,
            ln_post_ff: RmsNorm::new(h, e, vb.pp("post_feedforward_layernorm"))?,
            ple,
            // A buffer in transformers; 1.0 where a checkpoint leaves it out.
            scalar: if vb.contains_tensor("layer_scalar") {
                vb.get(1, "layer_scalar")?
            } else {
                Tensor::ones(1, vb.dtype(), vb.device())?
            },
            heads: nh,
            kv_heads: kvh,
            head_dim: hd,
            sliding,
            reuse,
            cache: None,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn forward(
        &mut self,
        xs: &Tensor,
        ple: Option<&Tensor>,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
        shared: Option<&(Tensor, Tensor)>,
    ) -> Result<Tensor> {
        let (b, l, _) = xs.dims3()?;
        let hd = self.head_dim;
        let h = self.ln_in.forward(xs)?;
        let q = self.q.forward(&h)?.reshape((b, l, self.heads, hd))?;
        let q = self.q_norm.forward(&q)?.transpose(1, 2)?.contiguous()?;
        let q = candle_nn::rotary_emb::rope(&q, cos, sin)?;
        let (k, v) = if self.reuse {
            match shared {
                Some((k, v)) => (k.clone(), v.clone()),
                None => candle_core::bail!("KV-shared layer without a producer layer"),
            }
        } else {
            let (kp, kn) = (self.k.as_ref().unwrap(), self.k_norm.as_ref().unwrap());
            let kraw = kp.forward(&h)?.reshape((b, l, self.kv_heads, hd))?;
            let vraw = match &self.v {
                Some(v) => v.forward(&h)?.reshape((b, l, self.kv_heads, hd))?,
                None => kraw.clone(),
            };
            let k = kn.forward(&kraw)?.transpose(1, 2)?.contiguous()?;
            let k = candle_nn::rotary_emb::rope(&k, cos, sin)?;
            let v = self.v_norm.forward(&vraw)?.transpose(1, 2)?.contiguous()?;
            append_kv(&mut self.cache, k, v)?
        };
        // Scaling 1.0: q and k are RMS-normed.
        let o = attention(&q, k, v, 1.0, mask)?;
        let o = self.ln_post_attn.forward(&self.o.forward(&o)?)?;
        let xs = (xs + o)?;
        let h = self.ln_pre_ff.forward(&xs)?;
        let m = self
            .down
            .forward(&(self.gate.forward(&h)?.apply(&self.act)? * self.up.forward(&h)?)?)?;
        let mut xs = (xs + self.ln_post_ff.forward(&m)?)?;
        if let (Some((gate, proj, norm)), Some(p)) = (&self.ple, ple) {
            let g = (gate.forward(&xs)?.apply(&self.act)? * p)?;
            xs = (&xs + norm.forward(&proj.forward(&g)?)?)?;
        }
        xs.broadcast_mul(&self.scalar)
    }
}

// ---------------------------------------------------------------- audio

/// One stride-2 3×3 convolution of the subsampler, LayerNorm over channels
/// (weight only), ReLU.
#[derive(Clone)]
struct SubsampleLayer {
    conv: Tensor,
    norm: candle_nn::LayerNorm,
}

impl SubsampleLayer {
    fn new(cin: usize, cout: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let conv = vb.pp("conv").get((cout, cin, 3, 3), "weight")?;
        let w = vb.pp("norm").get(cout, "weight")?;
        Ok(SubsampleLayer {
            conv,
            norm: candle_nn::LayerNorm::new_no_bias(w, eps),
        })
    }

    /// `x` `(1, c, t, f)`, `mask` per time step (true = valid): masked
    /// steps are zeroed before the convolution; the mask halves with it.
    fn forward(&self, x: &Tensor, mask: &[bool]) -> Result<(Tensor, Vec<bool>)> {
        let m: Vec<f32> = mask.iter().map(|&v| if v { 1.0 } else { 0.0 }).collect();
        let m = Tensor::from_vec(m, (1, 1, mask.len(), 1), x.device())?.to_dtype(x.dtype())?;
        let x = x.broadcast_mul(&m)?;
        let x = x.conv2d(&self.conv, 1, 2, 1, 1)?;
        let x = self.norm.forward(&x.permute((0, 2, 3, 1))?)?.relu()?;
        let x = x.permute((0, 3, 1, 2))?.contiguous()?;
        let mask = mask.iter().step_by(2).copied().collect();
        Ok((x, mask))
    }
}

/// `Gemma4AudioFeedForward`: clamp, norm, clipped linear, act, clipped
/// linear, clamp, norm, scaled residual.
#[derive(Clone)]
struct AudioFeedForward {
    up: ClipLinear,
    down: ClipLinear,
    pre: RmsNorm,
    post: RmsNorm,
    act: Activation,
    clip: f64,
    scale: f64,
}

impl AudioFeedForward {
    fn new(cfg: &AudioConfig, vb: VarBuilder) -> Result<Self> {
        let (h, c) = (cfg.hidden_size, cfg.use_clipped_linears);
        Ok(AudioFeedForward {
            up: ClipLinear::new(h, 4 * h, c, vb.pp("ffw_layer_1"))?,
            down: ClipLinear::new(4 * h, h, c, vb.pp("ffw_layer_2"))?,
            // transformers builds these two with the default eps (1e-6).
            pre: RmsNorm::new(h, 1e-6, vb.pp("pre_layer_norm"))?,
            post: RmsNorm::new(h, 1e-6, vb.pp("post_layer_norm"))?,
            act: cfg.hidden_act,
            clip: cfg.gradient_clipping.min(f32::MAX as f64),
            scale: cfg.residual_weight,
        })
    }
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let c = self.clip as f32;
        let h = self.pre.forward(&x.clamp(-c, c)?)?;
        let h = self.down.forward(&self.up.forward(&h)?.apply(&self.act)?)?;
        let h = self.post.forward(&h.clamp(-c, c)?)?;
        (h * self.scale)? + x
    }
}

/// `Gemma4AudioLightConv1d`: norm, clipped linear to 2·h, GLU, causal
/// depthwise convolution, clamp, norm, act, clipped linear, residual.
#[derive(Clone)]
struct AudioLightConv {
    start: ClipLinear,
    end: ClipLinear,
    conv: Tensor,
    pre: RmsNorm,
    norm: RmsNorm,
    act: Activation,
    clip: f64,
}

impl AudioLightConv {
    fn new(cfg: &AudioConfig, vb: VarBuilder) -> Result<Self> {
        let (h, c, e) = (cfg.hidden_size, cfg.use_clipped_linears, cfg.rms_norm_eps);
        Ok(AudioLightConv {
            start: ClipLinear::new(h, 2 * h, c, vb.pp("linear_start"))?,
            end: ClipLinear::new(h, h, c, vb.pp("linear_end"))?,
            conv: vb
                .pp("depthwise_conv1d")
                .get((h, 1, cfg.conv_kernel_size), "weight")?,
            pre: RmsNorm::new(h, e, vb.pp("pre_layer_norm"))?,
            norm: RmsNorm::new(h, e, vb.pp("conv_norm"))?,
            act: cfg.hidden_act,
            clip: cfg.gradient_clipping.min(f32::MAX as f64),
        })
    }
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.start.forward(&self.pre.forward(x)?)?;
        let d = h.dim(D::Minus1)? / 2;
        let h =
            (h.narrow(D::Minus1, 0, d)? * candle_nn::ops::sigmoid(&h.narrow(D::Minus1, d, d)?)?)?;
        // (1, l, h) -> (1, h, l), left-pad kernel-1 steps (causal), per channel.
        let k = self.conv.dim(2)?;
        let h = h
            .transpose(1, 2)?
            .pad_with_zeros(2, k - 1, 0)?
            .contiguous()?;
        let h = h.conv1d(&self.conv, 0, 1, 1, d)?.transpose(1, 2)?;
        let c = self.clip as f32;
        let h = self.norm.forward(&h.clamp(-c, c)?)?.apply(&self.act)?;
        self.end.forward(&h)? + x
    }
}

/// `Gemma4AudioAttention`: chunked local self-attention with a relative
/// position term (Transformer-XL shift), logit soft-capping.
#[derive(Clone)]
struct AudioAttention {
    q: ClipLinear,
    k: ClipLinear,
    v: ClipLinear,
    post: ClipLinear,
    rel_k: Linear,
    /// `q_scale · softplus(per_dim_scale)`, `(head_dim)`.
    q_mul: Tensor,
    k_scale: f64,
    heads: usize,
    head_dim: usize,
    chunk: usize,
    past: usize,
    future: usize,
    cap: f64,
    invalid: f64,
}

impl AudioAttention {
    fn new(cfg: &AudioConfig, vb: VarBuilder) -> Result<Self> {
        let (h, c) = (cfg.hidden_size, cfg.use_clipped_linears);
        let heads = cfg.num_attention_heads;
        let head_dim = h / heads;
        let ln2 = std::f64::consts::LN_2;
        let q_scale = (head_dim as f64).powf(-0.5) / ln2;
        let pds = vb.get(head_dim, "per_dim_scale")?;
        // softplus(x) = ln(1 + e^x), as torch (threshold 20).
        let sp = pds.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let q_mul: Vec<f32> = sp
            .iter()
            .map(|&x| {
                let s = if x > 20.0 { x } else { x.exp().ln_1p() };
                s * q_scale as f32
            })
            .collect();
        Ok(AudioAttention {
            q: ClipLinear::new(h, h, c, vb.pp("q_proj"))?,
            k: ClipLinear::new(h, h, c, vb.pp("k_proj"))?,
            v: ClipLinear::new(h, h, c, vb.pp("v_proj"))?,
            post: ClipLinear::new(h, h, c, vb.pp("post"))?,
            rel_k: candle_nn::linear_no_bias(h, h, vb.pp("relative_k_proj"))?,
            q_mul: Tensor::from_vec(q_mul, head_dim, vb.device())?,
            k_scale: (1.0 + std::f64::consts::E).ln() / ln2,
            heads,
            head_dim,
            chunk: cfg.attention_chunk_size,
            past: cfg.attention_context_left.saturating_sub(1),
            future: cfg.attention_context_right,
            cap: cfg.attention_logit_cap,
            invalid: cfg.attention_invalid_logits_value,
        })
    }

    fn context(&self) -> usize {
        self.chunk + self.past + self.future
    }

    /// `x` `(1, l, h)`, `pos` the relative position embeddings
    /// `(p, h)`, `allowed` `(blocks, chunk, context)` (1 = attend).
    fn forward(&self, x: &Tensor, pos: &Tensor, allowed: &Tensor) -> Result<Tensor> {
        let (_, l, _) = x.dims3()?;
        let (nh, hd, ch, ctx) = (self.heads, self.head_dim, self.chunk, self.context());
        let nb = l.div_ceil(ch);
        let q = self.q.forward(x)?.reshape((l, nh, hd))?;
        let q = q.broadcast_mul(&self.q_mul.to_dtype(q.dtype())?)?;
        let k = (self.k.forward(x)?.reshape((l, nh, hd))? * self.k_scale)?;
        let v = self.v.forward(x)?.reshape((l, nh, hd))?;
        // Queries in blocks of `chunk` (zero-padded): (heads, nb, chunk, hd).
        let q = q
            .pad_with_zeros(0, 0, nb * ch - l)?
            .reshape((nb, ch, nh, hd))?;
        let q = q.permute((2, 0, 1, 3))?.contiguous()?;
        // Keys/values: for block b the `context` steps from b·chunk − past.
        let windows = |t: &Tensor| -> Result<Tensor> {
            let t = t.pad_with_zeros(0, self.past, self.future + ch - 1)?;
            let w = (0..nb)
                .map(|b| t.narrow(0, b * ch, ctx))
                .collect::<Result<Vec<_>>>()?;
            // (nb, ctx, nh, hd) -> (nh, nb, ctx, hd)
            Tensor::stack(&w, 0)?.permute((2, 0, 1, 3))?.contiguous()
        };
        let (k, v) = (windows(&k)?, windows(&v)?);
        let ac = q.matmul(&k.transpose(2, 3)?.contiguous()?)?;
        // Relative term: q · rel_k[p] for p = 0..P (distances P-1 .. 0),
        // then the Transformer-XL shift to (chunk, context).
        let p = pos.dim(0)?;
        if p > ctx + 1 {
            candle_core::bail!("audio attention: {p} relative positions for a context of {ctx}");
        }
        let rk = self.rel_k.forward(pos)?.reshape((p, nh, hd))?;
        let rk = rk.permute((1, 2, 0))?.contiguous()?; // (nh, hd, p)
        let bd = q.reshape((nh, nb * ch, hd))?.matmul(&rk)?; // (nh, nb·ch, p)
        let bd = bd
            .reshape((nh, nb, ch, p))?
            .pad_with_zeros(3, 0, ctx + 1 - p)?
            .reshape((nh, nb, ch * (ctx + 1)))?
            .narrow(2, 0, ch * ctx)?
            .reshape((nh, nb, ch, ctx))?;
        let w = ((ac + bd)? / self.cap)?.tanh()?;
        let w = (w * self.cap)?;
        let fill = Tensor::full(self.invalid as f32, w.shape(), w.device())?.to_dtype(w.dtype())?;
        let w = allowed.broadcast_as(w.shape())?.where_cond(&w, &fill)?;
        let w = candle_nn::ops::softmax_last_dim(&w)?;
        let o = w.matmul(&v)?; // (nh, nb, ch, hd)
        let o = o.permute((1, 2, 0, 3))?.reshape((nb * ch, nh * hd))?;
        let o = o.narrow(0, 0, l)?.unsqueeze(0)?;
        self.post.forward(&o)
    }
}

#[derive(Clone)]
struct AudioLayer {
    ff1: AudioFeedForward,
    ff2: AudioFeedForward,
    attn: AudioAttention,
    lconv: AudioLightConv,
    norm_pre_attn: RmsNorm,
    norm_post_attn: RmsNorm,
    norm_out: RmsNorm,
    clip: f64,
}

impl AudioLayer {
    fn new(cfg: &AudioConfig, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        Ok(AudioLayer {
            ff1: AudioFeedForward::new(cfg, vb.pp("feed_forward1"))?,
            ff2: AudioFeedForward::new(cfg, vb.pp("feed_forward2"))?,
            attn: AudioAttention::new(cfg, vb.pp("self_attn"))?,
            lconv: AudioLightConv::new(cfg, vb.pp("lconv1d"))?,
            norm_pre_attn: RmsNorm::new(h, 1e-6, vb.pp("norm_pre_attn"))?,
            norm_post_attn: RmsNorm::new(h, 1e-6, vb.pp("norm_post_attn"))?,
            norm_out: RmsNorm::new(h, 1e-6, vb.pp("norm_out"))?,
            clip: cfg.gradient_clipping.min(f32::MAX as f64),
        })
    }
    fn forward(&self, x: &Tensor, pos: &Tensor, allowed: &Tensor) -> Result<Tensor> {
        let c = self.clip as f32;
        let x = self.ff1.forward(x)?;
        let h = self.norm_pre_attn.forward(&x.clamp(-c, c)?)?;
        let h = self.attn.forward(&h, pos, allowed)?;
        let x = (self.norm_post_attn.forward(&h.clamp(-c, c)?)? + x)?;
        let x = self.lconv.forward(&x)?;
        let x = self.ff2.forward(&x)?;
        self.norm_out.forward(&x.clamp(-c, c)?)
    }
}

/// The audio tower (`Gemma4AudioModel`) and its embedder (`embed_audio`):
/// log-mel frames in, soft tokens in the text model's width out.
#[derive(Clone)]
pub struct AudioTower {
    sub0: SubsampleLayer,
    sub1: SubsampleLayer,
    in_proj: Linear,
    layers: Vec<AudioLayer>,
    out_proj: Linear,
    /// `embed_audio`: RMSNorm without weight, projection to the text width.
    embed_norm: RmsNorm,
    embed_proj: Linear,
    /// Relative position embeddings `(context/2 + 1, hidden)`: [sin | cos]
    /// of distances context/2 .. 0.
    pos: Tensor,
    cfg: AudioConfig,
}

impl AudioTower {
    /// `vb` at the tower (`model.audio_tower`), `embed` at `model.embed_audio`.
    pub fn new(
        cfg: &AudioConfig,
        text_hidden: usize,
        vb: VarBuilder,
        embed: VarBuilder,
    ) -> Result<Self> {
        let ch = &cfg.subsampling_conv_channels;
        if ch.len() != 2 {
            candle_core::bail!(
                "audio subsampling_conv_channels has {} entries (2 expected)",
                ch.len()
            );
        }
        let h = cfg.hidden_size;
        if !h.is_multiple_of(cfg.num_attention_heads) || !h.is_multiple_of(2) {
            candle_core::bail!(
                "audio hidden_size {h} does not split into {} heads",
                cfg.num_attention_heads
            );
        }
        let s = vb.pp("subsample_conv_projection");
        let eps = cfg.rms_norm_eps;
        // transformers sizes the projection as (channels[0] / 4) · channels[1].
        let proj_in = (ch[0] / 4) * ch[1];
        let ctx = cfg.attention_chunk_size
            + cfg.attention_context_left.saturating_sub(1)
            + cfg.attention_context_right;
        let n_ts = h / 2;
        let inc = (10_000f64).ln() / (n_ts.saturating_sub(1).max(1)) as f64;
        let inv: Vec<f32> = (0..n_ts)
            .map(|i| (i as f32 * -(inc as f32)).exp())
            .collect();
        let mut pos = Vec::with_capacity((ctx / 2 + 1) * h);
        for p in (0..=ctx / 2).rev() {
            let t: Vec<f32> = inv.iter().map(|&f| p as f32 * f).collect();
            pos.extend(t.iter().map(|a| a.sin()));
            pos.extend(t.iter().map(|a| a.cos()));
        }
        Ok(AudioTower {
            sub0: SubsampleLayer::new(1, ch[0], eps, s.pp("layer0"))?,
            sub1: SubsampleLayer::new(ch[0], ch[1], eps, s.pp("layer1"))?,
            in_proj: candle_nn::linear_no_bias(proj_in, h, s.pp("input_proj_linear"))?,
            layers: (0..cfg.num_hidden_layers)
                .map(|i| AudioLayer::new(cfg, vb.pp("layers").pp(i)))
                .collect::<Result<_>>()?,
            out_proj: candle_nn::linear_b(h, cfg.output_proj_dims, true, vb.pp("output_proj"))?,
            embed_norm: RmsNorm::bare(cfg.output_proj_dims, eps, DType::F32, vb.device())?,
            embed_proj: candle_nn::linear_no_bias(
                cfg.output_proj_dims,
                text_hidden,
                embed.pp("embedding_projection"),
            )?,
            pos: Tensor::from_vec(pos, (ctx / 2 + 1, h), vb.device())?,
            cfg: cfg.clone(),
        })
    }

    /// `(blocks, chunk, context)` attend mask (1/0) of the chunked local
    /// attention: key within `context_left − 1` steps back (itself
    /// included) or `context_right` ahead, inside the clip and valid.
    fn allowed(&self, valid: &[bool], dev: &Device) -> Result<Tensor> {
        let c = &self.cfg;
        let (ch, l) = (c.attention_chunk_size, valid.len());
        let past = c.attention_context_left.saturating_sub(1);
        let ctx = ch + past + c.attention_context_right;
        let nb = l.div_ceil(ch);
        let mut m = vec![0u8; nb * ch * ctx];
        for b in 0..nb {
            for qi in 0..ch {
                let q = b * ch + qi;
                for j in 0..ctx {
                    let Some(k) = (b * ch + j).checked_sub(past) else {
                        continue;
                    };
                    if q >= l || k >= l || !valid[k] {
                        continue;
                    }
                    let d = q as i64 - k as i64;
                    let ok = (d >= 0 && d < past as i64)
                        || (d < 0 && ((-d) as usize) < c.attention_context_right);
                    if ok {
                        m[(b * ch + qi) * ctx + j] = 1;
                    }
                }
            }
        }
        Tensor::from_vec(m, (nb, ch, ctx), dev)
    }

    /// Soft tokens of one clip, `(valid steps, text hidden)`: the clip's
    /// `features` `(frames, mel)` and frame mask (true = valid) as
    /// `Gemma4AudioFeatureExtractor` gives them.
    pub fn encode(&self, clip: &AudioClip) -> Result<Tensor> {
        let (features, mask) = (&clip.features, clip.mask.as_slice());
        if features.dim(0)? != mask.len() {
            candle_core::bail!(
                "audio clip: {} feature frames but a mask of {}",
                features.dim(0)?,
                mask.len()
            );
        }
        let dt = self.in_proj.weight().dtype();
        let x = features.to_dtype(dt)?.unsqueeze(0)?.unsqueeze(0)?;
        let (x, m) = self.sub0.forward(&x, mask)?;
        let (x, m) = self.sub1.forward(&x, &m)?;
        let (_, c, t, f) = x.dims4()?;
        let x = x.permute((0, 2, 3, 1))?.reshape((1, t, f * c))?;
        let mut x = self.in_proj.forward(&x)?;
        let allowed = self.allowed(&m, x.device())?;
        let pos = self.pos.to_dtype(dt)?;
        for layer in &self.layers {
            x = layer.forward(&x, &pos, &allowed)?;
        }
        let x = self.out_proj.forward(&x)?;
        let x = self
            .embed_proj
            .forward(&self.embed_norm.forward(&x)?)?
            .squeeze(0)?;
        let keep: Vec<u32> = (0..m.len() as u32).filter(|&i| m[i as usize]).collect();
        if keep.is_empty() {
            candle_core::bail!("audio clip too short: no valid step after subsampling");
        }
        x.index_select(&Tensor::new(keep.as_slice(), x.device())?, 0)
    }
}

// ---------------------------------------------------------------- model

/// Images of one prompt as the HF processor gives them: `pixel_values`
/// `(images, max_patches, 3·p·p)` in [0, 1] and `position_ids`
/// `(images, max_patches, 2)` (x, y) with (-1, -1) for padding patches.
#[derive(Debug, Clone)]
pub struct ImageInput {
    pub pixel_values: Tensor,
    pub position_ids: Tensor,
}

/// Audio clips of one prompt, in prompt order, as
/// `Gemma4AudioFeatureExtractor` gives them: per clip the log-mel
/// `(frames, mel)` and the frame mask (true = valid; padding frames of a
/// batch may follow).
#[derive(Debug, Clone)]
pub struct AudioClip {
    pub features: Tensor,
    pub mask: Vec<bool>,
}

/// Images and audio clips of one prompt.
#[derive(Debug, Clone, Default)]
pub struct MmInput {
    pub images: Option<ImageInput>,
    pub audio: Vec<AudioClip>,
}

#[derive(Clone)]
pub struct Gemma4 {
    vision: Option<Vision>,
    audio: Option<AudioTower>,
    embed: Embedding,
    embed_ple: Option<Embedding>,
    ple_proj: Option<(Linear, RmsNorm)>,
    layers: Vec<Layer>,
    norm: RmsNorm,
    lm_head: Linear,
    inv_freq_sliding: Vec<f32>,
    inv_freq_full: Vec<f32>,
    /// Per layer: the index of the layer whose K/V a "reuse" layer takes.
    producer: Vec<Option<usize>>,
    pub cfg: Config,
    device: Device,
    dtype: DType,
}

impl Gemma4 {
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let t = &cfg.text_config;
        if t.enable_moe_block {
            candle_core::bail!("Gemma 4 MoE (enable_moe_block) is not supported");
        }
        if t.use_bidirectional_attention.as_deref() == Some("all") {
            candle_core::bail!("use_bidirectional_attention = \"all\" is not supported");
        }
        if t.layer_types.len() != t.num_hidden_layers {
            candle_core::bail!(
                "layer_types has {} entries for {} layers",
                t.layer_types.len(),
                t.num_hidden_layers
            );
        }
        let m = vb.pp("model");
        let lm = m.pp("language_model");
        let embed = candle_nn::embedding(t.vocab_size, t.hidden_size, lm.pp("embed_tokens"))?;
        let modes = t.kv_modes();
        let layers = (0..t.num_hidden_layers)
            .map(|i| Layer::new(t, i, modes[i], lm.pp("layers").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        let producer = (0..t.num_hidden_layers)
            .map(|i| {
                if modes[i] != Some("reuse") {
                    return None;
                }
                (0..i)
                    .rev()
                    .find(|&p| modes[p] == Some("store") && t.layer_types[p] == t.layer_types[i])
            })
            .collect();
        let ple = t.ple_dim();
        let (embed_ple, ple_proj) = if ple > 0 {
            (
                Some(candle_nn::embedding(
                    t.vocab_size_per_layer_input,
                    t.num_hidden_layers * ple,
                    lm.pp("embed_tokens_per_layer"),
                )?),
                Some((
                    candle_nn::linear_no_bias(
                        t.hidden_size,
                        t.num_hidden_layers * ple,
                        lm.pp("per_layer_model_projection"),
                    )?,
                    RmsNorm::new(ple, t.rms_norm_eps, lm.pp("per_layer_projection_norm"))?,
                )),
            )
        } else {
            (None, None)
        };
        let lm_head = if cfg.tie_word_embeddings {
            Linear::new(embed.embeddings().clone(), None)
        } else {
            candle_nn::linear_no_bias(t.hidden_size, t.vocab_size, vb.pp("lm_head"))?
        };
        let inv = |sliding: bool| -> Vec<f32> {
            let r = t.rope(sliding);
            let theta =
                r.rope_theta
                    .unwrap_or(if sliding { 10_000.0 } else { 1_000_000.0 }) as f32;
            let hd = if sliding {
                t.head_dim
            } else {
                (0..t.num_hidden_layers)
                    .find(|&i| !t.is_sliding(i))
                    .map(|i| t.layer_dims(i).0)
                    .unwrap_or(t.head_dim)
            };
            let rotated = if r.rope_type.as_deref() == Some("proportional") {
                (r.partial_rotary_factor.unwrap_or(1.0) * hd as f64 / 2.0) as usize
            } else {
                hd / 2
            };
            (0..hd / 2)
                .map(|i| {
                    if i < rotated {
                        1.0 / anjeon_kernels::math::powf(theta, (2 * i) as f32 / hd as f32)
                    } else {
                        0.0
                    }
                })
                .collect()
        };
        let vision = match &cfg.vision_config {
            Some(v) => Some(Vision::new(
                v,
                t.hidden_size,
                m.pp("vision_tower"),
                m.pp("embed_vision"),
            )?),
            None => None,
        };
        let audio = match &cfg.audio_config {
            Some(a) => Some(AudioTower::new(
                a,
                t.hidden_size,
                m.pp("audio_tower"),
                m.pp("embed_audio"),
            )?),
            None => None,
        };
        Ok(Gemma4 {
            vision,
            audio,
            embed,
            embed_ple,
            ple_proj,
            layers,
            norm: RmsNorm::new(t.hidden_size, t.rms_norm_eps, lm.pp("norm"))?,
            lm_head,
            inv_freq_sliding: inv(true),
            inv_freq_full: inv(false),
            producer,
            cfg: cfg.clone(),
            device: vb.device().clone(),
            dtype: vb.dtype(),
        })
    }

    pub fn clear_kv_cache(&mut self) {
        for l in &mut self.layers {
            l.cache = None;
        }
    }

    fn cached_len(&self) -> usize {
        self.layers[0]
            .cache
            .as_ref()
            .map(|(k, _)| k.dim(2).unwrap_or(0))
            .unwrap_or(0)
    }

    /// Additive masks `(1, 1, l, offset + l)` for full and sliding layers.
    /// `block[i]`: image number of query/key i of this chunk (bidirectional
    /// within an image on sliding layers), or -1.
    fn masks(&self, l: usize, offset: usize, block: &[i64]) -> Result<(Tensor, Tensor)> {
        let w = self.cfg.text_config.sliding_window;
        let bidir = self.cfg.text_config.use_bidirectional_attention.as_deref() == Some("vision");
        let kv = offset + l;
        let mut full = Vec::with_capacity(l * kv);
        let mut slide = Vec::with_capacity(l * kv);
        for i in 0..l {
            let q = offset + i;
            for j in 0..kv {
                let causal = j <= q;
                let same_block = bidir
                    && j >= offset
                    && block[i] >= 0
                    && block.get(j - offset).copied() == Some(block[i]);
                full.push(if causal { 0.0 } else { f32::NEG_INFINITY });
                let ok = (causal || same_block) && j + w > q;
                slide.push(if ok { 0.0 } else { f32::NEG_INFINITY });
            }
        }
        let mk = |v: Vec<f32>| -> Result<Tensor> {
            Tensor::from_vec(v, (1, 1, l, kv), &self.device)?.to_dtype(self.dtype)
        };
        Ok((mk(full)?, mk(slide)?))
    }

    /// Runs the decoder over input embeddings `xs` `(1, l, hidden)` whose
    /// token ids (with image tokens replaced by the pad id) are `ple_ids`.
    fn run(&mut self, xs: Tensor, ple_ids: &Tensor, block: &[i64]) -> Result<Tensor> {
        let t = &self.cfg.text_config;
        let (b, l, _) = xs.dims3()?;
        let offset = self.cached_len();
        let n_layers = t.num_hidden_layers;
        let ple = match (&self.embed_ple, &self.ple_proj) {
            (Some(e), Some((proj, norm))) => {
                let d = t.ple_dim();
                let tok =
                    (e.forward(ple_ids)? * (d as f64).sqrt())?.reshape((b, l, n_layers, d))?;
                let ctx = (proj.forward(&xs)? * (t.hidden_size as f64).powf(-0.5))?
                    .reshape((b, l, n_layers, d))?;
                let ctx = norm.forward(&ctx)?;
                Some(((ctx + tok)? * 0.5f64.sqrt())?)
            }
            _ => None,
        };
        let pos = || (offset..offset + l).map(|p| p as f32);
        let (cs, ss) = rope_table(&self.inv_freq_sliding, pos(), self.dtype, &self.device)?;
        let (cf, sf) = rope_table(&self.inv_freq_full, pos(), self.dtype, &self.device)?;
        let (mfull, mslide) = self.masks(l, offset, block)?;
        let mut xs = xs;
        for i in 0..n_layers {
            let shared = self.producer[i].and_then(|p| self.layers[p].cache.clone());
            let p = match &ple {
                Some(p) => Some(p.i((.., .., i, ..))?.contiguous()?),
                None => None,
            };
            let layer = &mut self.layers[i];
            let (c, s, m) = if layer.sliding {
                (&cs, &ss, &mslide)
            } else {
                (&cf, &sf, &mfull)
            };
            xs = layer.forward(&xs, p.as_ref(), c, s, Some(m), shared.as_ref())?;
        }
        let last = self.norm.forward(&xs.i((.., l - 1..l, ..))?)?;
        let logits = self.lm_head.forward(&last)?.flatten_all()?;
        match t.final_logit_softcapping {
            Some(cap) => (logits / cap)?.tanh()? * cap,
            None => Ok(logits),
        }
    }

    fn embed_ids(&self, ids: &Tensor) -> Result<Tensor> {
        self.embed.forward(ids)? * (self.cfg.text_config.hidden_size as f64).sqrt()
    }

    /// Text tokens `(1, l)` after the cache (`seq_offset` = cached length).
    /// Logits of the last position, `[vocab]`.
    pub fn forward(&mut self, ids: &Tensor, seq_offset: usize) -> Result<Tensor> {
        let (_, l) = ids.dims2()?;
        if seq_offset != self.cached_len() {
            candle_core::bail!(
                "seq_offset {seq_offset} but {} cached positions",
                self.cached_len()
            );
        }
        let xs = self.embed_ids(ids)?;
        self.run(xs, ids, &vec![-1; l])
    }

    /// Whether the checkpoint has an audio tower (and an audio token).
    pub fn takes_audio(&self) -> bool {
        self.audio.is_some() && self.cfg.audio_token_id.is_some()
    }

    /// Audio soft tokens of one clip, `(valid steps, text hidden)` (the
    /// tower and `embed_audio`; for tests and benches).
    pub fn encode_audio(&self, clip: &AudioClip) -> Result<Tensor> {
        match &self.audio {
            Some(a) => a.encode(clip),
            None => candle_core::bail!("this checkpoint has no audio tower"),
        }
    }

    /// Prefill a prompt from an empty cache. `ids` holds one image token per
    /// soft token (see [`expand_image_placeholders`]), images in order.
    /// Logits of the last position, `[vocab]`.
    pub fn prefill(&mut self, ids: &[u32], images: Option<&ImageInput>) -> Result<Tensor> {
        self.prefill_mm(
            ids,
            &MmInput {
                images: images.cloned(),
                audio: Vec::new(),
            },
        )
    }

    /// Prefill with images and audio: one image token per image soft token
    /// and one audio token per audio soft token (see
    /// [`expand_image_placeholders`], [`expand_audio_placeholders`]), each
    /// kind in prompt order. Logits of the last position, `[vocab]`.
    pub fn prefill_mm(&mut self, ids: &[u32], mm: &MmInput) -> Result<Tensor> {
        self.clear_kv_cache();
        let l = ids.len();
        let img = self.cfg.image_token_id;
        let aud = self.cfg.audio_token_id;
        let is_aud = |t: u32| Some(t) == aud;
        let pad = self.cfg.text_config.pad_token_id.unwrap_or(0);
        let n_img = ids.iter().filter(|&&t| t == img).count();
        let n_aud = ids.iter().filter(|&&t| is_aud(t)).count();
        // Image and audio placeholders are embedded (and PLE-looked-up) as
        // the pad token.
        let llm_ids: Vec<u32> = ids
            .iter()
            .map(|&t| if t == img || is_aud(t) { pad } else { t })
            .collect();
        let llm_ids = Tensor::new(llm_ids.as_slice(), &self.device)?.unsqueeze(0)?;
        let mut xs = self.embed_ids(&llm_ids)?;
        // Bidirectional blocks: images only (audio stays causal).
        let mut block = vec![-1i64; l];
        let mut g = -1i64;
        for i in 0..l {
            if ids[i] == img {
                if i == 0 || ids[i - 1] != img {
                    g += 1;
                }
                block[i] = g;
            }
        }
        let img_feats = if n_img > 0 {
            let feats = match (&mm.images, &self.vision) {
                (Some(im), Some(v)) => encode_images(v, im)?,
                (None, _) => candle_core::bail!("{n_img} image tokens but no images"),
                (_, None) => candle_core::bail!("this checkpoint has no vision tower"),
            };
            if feats.dim(0)? != n_img {
                candle_core::bail!(
                    "{n_img} image tokens but the images give {} soft tokens",
                    feats.dim(0)?
                );
            }
            Some(feats.to_dtype(self.dtype)?)
        } else {
            None
        };
        let aud_feats = if n_aud > 0 {
            if mm.audio.is_empty() {
                candle_core::bail!("{n_aud} audio tokens but no audio");
            }
            let feats = mm
                .audio
                .iter()
                .map(|c| self.encode_audio(c))
                .collect::<Result<Vec<_>>>()?;
            let feats = Tensor::cat(&feats, 0)?;
            if feats.dim(0)? != n_aud {
                candle_core::bail!(
                    "{n_aud} audio tokens but the audio gives {} soft tokens",
                    feats.dim(0)?
                );
            }
            Some(feats.to_dtype(self.dtype)?)
        } else {
            if !mm.audio.is_empty() {
                candle_core::bail!("{} audio clips but no audio tokens", mm.audio.len());
            }
            None
        };
        if img_feats.is_some() || aud_feats.is_some() {
            // Gather from [text embeds; image soft tokens; audio soft tokens].
            let img_base = l as u32;
            let aud_base = img_base + n_img as u32;
            let (mut ki, mut ka) = (0u32, 0u32);
            let gather: Vec<u32> = ids
                .iter()
                .enumerate()
                .map(|(i, &t)| {
                    if t == img {
                        ki += 1;
                        img_base + ki - 1
                    } else if is_aud(t) {
                        ka += 1;
                        aud_base + ka - 1
                    } else {
                        i as u32
                    }
                })
                .collect();
            let x0 = xs.squeeze(0)?;
            let mut parts = vec![&x0];
            parts.extend(img_feats.as_ref());
            parts.extend(aud_feats.as_ref());
            let table = Tensor::cat(&parts, 0)?;
            xs = table
                .index_select(&Tensor::new(gather.as_slice(), &self.device)?, 0)?
                .unsqueeze(0)?;
        }
        self.run(xs, &llm_ids, &block)
    }
}

fn encode_images(v: &Vision, im: &ImageInput) -> Result<Tensor> {
    let (n, _, _) = im.pixel_values.dims3()?;
    let pos = im.position_ids.to_dtype(DType::I64)?.to_vec3::<i64>()?;
    let mut out = Vec::with_capacity(n);
    for (i, rows) in pos.iter().enumerate() {
        let valid = rows.iter().take_while(|p| p[0] >= 0 && p[1] >= 0).count();
        if rows[valid..].iter().any(|p| p[0] >= 0 || p[1] >= 0) {
            candle_core::bail!("image {i}: padding patches must come last");
        }
        let p: Vec<(u32, u32)> = rows[..valid]
            .iter()
            .map(|p| (p[0] as u32, p[1] as u32))
            .collect();
        let px = im.pixel_values.i(i)?.narrow(0, 0, valid)?;
        out.push(v.encode(&px, &p)?);
    }
    Tensor::cat(&out, 0)
}

/// transformers' `get_aspect_ratio_preserving_size`: the (height, width) an
/// image is resized to so that it gives at most `max_soft_tokens · k²`
/// patches and both sides are multiples of `k · patch_size`.
pub fn aspect_ratio_preserving_size(
    height: usize,
    width: usize,
    patch_size: usize,
    max_soft_tokens: usize,
    pooling_kernel_size: usize,
) -> std::result::Result<(usize, usize), String> {
    let max_patches = max_soft_tokens * pooling_kernel_size * pooling_kernel_size;
    let target_px = (max_patches * patch_size * patch_size) as f64;
    let factor = (target_px / (height * width) as f64).sqrt();
    let side = pooling_kernel_size * patch_size;
    let mut th = ((factor * height as f64) / side as f64).floor() as usize * side;
    let mut tw = ((factor * width as f64) / side as f64).floor() as usize * side;
    if th == 0 && tw == 0 {
        return Err(format!("{height}x{width} image resizes to 0x0"));
    }
    let max_side = (max_patches / (pooling_kernel_size * pooling_kernel_size)) * side;
    if th == 0 {
        th = side;
        tw = ((width as f64 / height as f64).floor() as usize * side).min(max_side);
    } else if tw == 0 {
        tw = side;
        th = ((height as f64 / width as f64).floor() as usize * side).min(max_side);
    }
    if (th * tw) as f64 > target_px {
        return Err(format!(
            "{height}x{width} -> {th}x{tw} exceeds {max_patches} patches"
        ));
    }
    Ok((th, tw))
}

/// Soft tokens (image-token placeholders) of an image of `height`×`width`.
pub fn soft_tokens_per_image(
    height: usize,
    width: usize,
    patch_size: usize,
    max_soft_tokens: usize,
    pooling_kernel_size: usize,
) -> std::result::Result<usize, String> {
    let (h, w) = aspect_ratio_preserving_size(
        height,
        width,
        patch_size,
        max_soft_tokens,
        pooling_kernel_size,
    )?;
    Ok((h / patch_size) * (w / patch_size) / (pooling_kernel_size * pooling_kernel_size))
}

/// Expands each image token of a rendered chat template (one `<|image|>`
/// per image) into `<|image>`, `soft_tokens[i]` × `<|image|>`, `<image|>`,
/// as `Gemma4Processor` does.
pub fn expand_image_placeholders(
    ids: &[u32],
    image_token: u32,
    boi_token: u32,
    eoi_token: u32,
    soft_tokens: &[usize],
) -> std::result::Result<Vec<u32>, String> {
    expand(
        ids,
        image_token,
        boi_token,
        eoi_token,
        soft_tokens,
        ("image", "images"),
    )
}

/// Each `token` of `ids` becomes `begin`, `soft_tokens[i]` × `token`, `end`;
/// `what` names the placeholder and the media (singular, plural) in errors.
fn expand(
    ids: &[u32],
    token: u32,
    begin: u32,
    end: u32,
    soft_tokens: &[usize],
    what: (&str, &str),
) -> std::result::Result<Vec<u32>, String> {
    let mut out =
        Vec::with_capacity(ids.len() + soft_tokens.iter().sum::<usize>() + 2 * soft_tokens.len());
    let mut k = 0;
    for &t in ids {
        if t == token {
            let n = *soft_tokens.get(k).ok_or_else(|| {
                format!(
                    "more {} placeholders than {} ({})",
                    what.0,
                    what.1,
                    soft_tokens.len()
                )
            })?;
            out.push(begin);
            out.extend(std::iter::repeat_n(token, n));
            out.push(end);
            k += 1;
        } else {
            out.push(t);
        }
    }
    if k != soft_tokens.len() {
        return Err(format!(
            "{k} {} placeholders for {} {}",
            what.0,
            soft_tokens.len(),
            what.1
        ));
    }
    Ok(out)
}

/// Audio soft tokens of a clip whose feature frames have `mask` (true =
/// valid): the mask after the tower's two stride-2 steps, counted, as
/// `Gemma4Processor.replace_audio_token` computes it.
pub fn soft_tokens_per_audio(mask: &[bool]) -> usize {
    mask.iter().step_by(2).step_by(2).filter(|&&v| v).count()
}

/// Expands each audio token of a rendered chat template (one `<|audio|>`
/// per clip) into `<|audio>`, `soft_tokens[i]` × `<|audio|>`, `<audio|>`,
/// as `Gemma4Processor` does.
pub fn expand_audio_placeholders(
    ids: &[u32],
    audio_token: u32,
    boa_token: u32,
    eoa_token: u32,
    soft_tokens: &[usize],
) -> std::result::Result<Vec<u32>, String> {
    expand(
        ids,
        audio_token,
        boa_token,
        eoa_token,
        soft_tokens,
        ("audio", "audio clips"),
    )
}

/// The audio settings of a Gemma 4 processor: the token ids of the
/// placeholder expansion. Features are [`crate::audio::features::Gemma4Features`]
/// (transformers' `Gemma4AudioFeatureExtractor` defaults, bit-exact in
/// tests/audio.rs); a checkpoint whose extractor settings differ is refused.
#[derive(Debug, Clone)]
pub struct AudioSettings {
    pub audio_token_id: u32,
    pub boa_token_id: u32,
    pub eoa_token_id: u32,
}

/// `Gemma4AudioFeatureExtractor` settings anjeon implements (the defaults).
const AUDIO_FEATURE_DEFAULTS: &[(&str, f64)] = &[
    ("feature_size", 128.0),
    ("sampling_rate", 16000.0),
    ("frame_length", 320.0),
    ("hop_length", 160.0),
    ("fft_length", 512.0),
    ("min_frequency", 0.0),
    ("max_frequency", 8000.0),
    ("mel_floor", 0.001),
    ("preemphasis", 0.0),
    ("input_scale_factor", 1.0),
    ("dither", 0.0),
];

fn check_audio_features(v: &serde_json::Value) -> std::result::Result<(), String> {
    for (k, want) in AUDIO_FEATURE_DEFAULTS {
        if let Some(x) = v.get(*k).and_then(|x| x.as_f64()) {
            if (x - want).abs() > 1e-9 * want.abs().max(1.0) {
                return Err(format!("{k} = {x} (anjeon implements {want})"));
            }
        }
    }
    for k in ["per_bin_mean", "per_bin_stddev"] {
        if v.get(k).is_some_and(|x| !x.is_null()) {
            return Err(format!("{k} is set (anjeon implements none)"));
        }
    }
    if v.get("fft_overdrive").and_then(|x| x.as_bool()) == Some(true) {
        return Err("fft_overdrive = true (anjeon implements false)".into());
    }
    Ok(())
}

/// Gemma 4's input processing: the checkpoint's image processor settings
/// (`crate::media::gemma4`, checked against transformers in tests/media.rs)
/// and the special-token ids of the placeholder expansion.
#[derive(Debug, Clone)]
pub struct Processor {
    pub image: crate::media::gemma4::ImageProcessor,
    pub limits: crate::media::Limits,
    pub image_token_id: u32,
    pub boi_token_id: u32,
    pub eoi_token_id: u32,
    /// Present when the checkpoint has an audio tower and audio tokens.
    pub audio: Option<AudioSettings>,
    /// sha256 of the processor config read (for the run manifest).
    pub config_sha256: String,
}

impl Processor {
    /// Reads `preprocessor_config.json`, else the `image_processor` entry of
    /// `processor_config.json`, else transformers' defaults (with a warning).
    pub fn from_dir(
        dir: &std::path::Path,
        cfg: &Config,
    ) -> std::result::Result<Processor, crate::core::error::Error> {
        let read = |name: &str| std::fs::read_to_string(dir.join(name)).ok();
        let src = read("preprocessor_config.json").or_else(|| {
            read("processor_config.json")
                .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
                .and_then(|v| {
                    v.get("image_processor")
                        .filter(|x| x.is_object())
                        .map(|x| x.to_string())
                })
        });
        let image = match &src {
            Some(s) => crate::media::gemma4::ImageProcessor::from_json_str(s)?,
            None => {
                log::warn!(
                    "{}: no image processor config; using transformers' Gemma 4 defaults",
                    dir.display()
                );
                crate::media::gemma4::ImageProcessor::default()
            }
        };
        let processor_cfg = read("processor_config.json");
        let audio = match (
            &cfg.audio_config,
            cfg.audio_token_id,
            cfg.boa_token_id,
            cfg.eoa_token_id,
        ) {
            (Some(_), Some(a), Some(b), Some(e)) => {
                let fe = processor_cfg
                    .as_deref()
                    .and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok())
                    .and_then(|v| v.get("feature_extractor").cloned());
                if let Some(fe) = &fe {
                    check_audio_features(fe).map_err(|e| {
                        crate::core::error::Error::Usage(format!(
                            "{}: audio feature extractor: {e}\n  fix: anjeon's Gemma 4 audio features follow transformers' Gemma4AudioFeatureExtractor defaults",
                            dir.join("processor_config.json").display()
                        ))
                    })?;
                }
                Some(AudioSettings {
                    audio_token_id: a,
                    boa_token_id: b,
                    eoa_token_id: e,
                })
            }
            _ => None,
        };
        let mut hashed = src.unwrap_or_default();
        if audio.is_some() {
            hashed.push_str(processor_cfg.as_deref().unwrap_or_default());
        }
        Ok(Processor {
            image,
            limits: crate::media::Limits::default(),
            image_token_id: cfg.image_token_id,
            boi_token_id: cfg.boi_token_id,
            eoi_token_id: cfg.eoi_token_id,
            audio,
            config_sha256: crate::core::hash::sha256_hex(hashed.as_bytes()),
        })
    }

    /// Decode and preprocess the media: images patched, audio decoded to
    /// 16 kHz mono and turned into log-mel features. Soft tokens per image
    /// and per clip, each kind in order, and the model inputs.
    pub fn process(
        &self,
        media: &[crate::model::MediaInput<'_>],
        device: &Device,
    ) -> std::result::Result<Processed, crate::core::error::Error> {
        use crate::core::sample::MediaKind;
        let ce = |e: candle_core::Error| crate::core::error::Error::backend("media input", e);
        let (mut px, mut pos, mut soft) = (Vec::new(), Vec::new(), Vec::new());
        let (mut rows, mut cols) = (0, 0);
        let mut audio = Vec::new();
        let mut audio_soft = Vec::new();
        for m in media {
            let name = m.media.describe();
            match m.kind {
                MediaKind::Image => {
                    let bytes = m.media.load()?;
                    let img = crate::media::decode_image(&bytes, &name, &self.limits)?;
                    let p = self.image.preprocess(&img)?;
                    soft.push(p.num_soft_tokens);
                    (rows, cols) = (p.rows, p.cols);
                    px.extend(p.pixel_values);
                    pos.extend(p.position_ids);
                }
                MediaKind::Audio if self.audio.is_some() => {
                    let a = crate::audio::decode::decode_media(m.media, &self.limits.audio())?;
                    if a.seconds() > 30.0 {
                        // transformers' extractor truncates at max_length = 480,000 samples.
                        log::warn!("{name}: {:.1} s of audio; Gemma 4 hears the first 30 s (as transformers' Gemma4AudioFeatureExtractor)",
                            a.seconds()
                        );
                    }
                    let f = crate::audio::features::Gemma4Features::new().extract(&a.samples);
                    let n = soft_tokens_per_audio(&f.mask);
                    if n == 0 {
                        return Err(crate::core::error::Error::Usage(format!(
                            "{name}: audio of {:.3} s is too short for Gemma 4 (no soft token)\n  fix: the clip needs at least ~40 ms of audio",
                            a.seconds()
                        )));
                    }
                    audio_soft.push(n);
                    audio.push(AudioClip {
                        features: Tensor::from_vec(f.values, (f.frames, f.n_mels), device)
                            .map_err(ce)?,
                        mask: f.mask,
                    });
                }
                other => {
                    let takes = if self.audio.is_some() {
                        "images and audio"
                    } else {
                        "images (this checkpoint has no audio tower)"
                    };
                    return Err(crate::core::error::Error::Usage(format!(
                        "{name}: anjeon's Gemma 4 takes {takes}, not {}",
                        other.as_str()
                    )));
                }
            }
        }
        let n = soft.len();
        let images = if n > 0 {
            Some(ImageInput {
                pixel_values: Tensor::from_vec(px, (n, rows, cols), device).map_err(ce)?,
                position_ids: Tensor::from_vec(pos, (n, rows, 2), device).map_err(ce)?,
            })
        } else {
            None
        };
        Ok(Processed {
            image_soft_tokens: soft,
            audio_soft_tokens: audio_soft,
            input: MmInput { images, audio },
        })
    }

    /// Expand the placeholders of a tokenized template (one `<|image|>` per
    /// image, one `<|audio|>` per clip) for [`Processor::process`]'s media.
    pub fn expand(&self, ids: &[u32], p: &Processed) -> std::result::Result<Vec<u32>, String> {
        let ids = expand_image_placeholders(
            ids,
            self.image_token_id,
            self.boi_token_id,
            self.eoi_token_id,
            &p.image_soft_tokens,
        )?;
        match &self.audio {
            Some(a) => expand_audio_placeholders(
                &ids,
                a.audio_token_id,
                a.boa_token_id,
                a.eoa_token_id,
                &p.audio_soft_tokens,
            ),
            None => Ok(ids),
        }
    }
}

/// [`Processor::process`]'s output.
#[derive(Debug, Clone)]
pub struct Processed {
    pub image_soft_tokens: Vec<usize>,
    pub audio_soft_tokens: Vec<usize>,
    pub input: MmInput,
}
