//! Qwen3-VL (image and video in, text out) from Hugging Face safetensors.
//!
//! Written for anjeon after candle-transformers 0.11.1's `qwen3_vl` module
//! (MIT OR Apache-2.0, Copyright the Candle authors) and checked against
//! transformers 5.23's `modeling_qwen3_vl.py` with a tiny random checkpoint
//! (tests/fixtures/tiny/make_tiny_vl.py, tests/vision.rs). Differences from
//! candle's file, each a bug there:
//! - the text decoder applies the causal mask during prefill (candle builds
//!   it only for one-token steps, so its prompts attend to the future);
//! - positions are 3-D (temporal, height, width) with interleaved M-RoPE
//!   (`mrope_section`), as `get_rope_index` computes them, and decode steps
//!   continue from the prompt's `rope_delta` (candle uses 1-D positions);
//! - the patch merger uses exact (erf) GELU like `nn.GELU()` (candle: tanh);
//! - the KV cache is plain data (`Clone`), like anjeon's other model files.
//!
//! Input processing (placeholder expansion, chat items, timestamps) lives
//! in this file too: [`expand_placeholders`] and [`Qwen3Vl::prefill`].

use candle_core::{DType, Device, IndexOp, Module, Result, Tensor, D};
use candle_nn::{Activation, Embedding, LayerNorm, Linear, VarBuilder};
use serde::Deserialize;

use super::layers::{append_kv, attention, RmsNorm};

// ---------------------------------------------------------------- config

#[derive(Debug, Clone, Deserialize, Default)]
pub struct RopeParameters {
    pub rope_theta: Option<f64>,
    pub mrope_section: Option<Vec<usize>>,
    pub mrope_interleaved: Option<bool>,
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
    pub hidden_act: Activation,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    #[serde(default)]
    pub attention_bias: bool,
    /// transformers 5 layout.
    #[serde(default)]
    pub rope_parameters: Option<RopeParameters>,
    /// transformers 4 layout (hub configs of the released checkpoints).
    #[serde(default)]
    pub rope_scaling: Option<RopeParameters>,
    #[serde(default)]
    pub rope_theta: Option<f64>,
}

impl TextConfig {
    fn rope_theta(&self) -> f64 {
        self.rope_parameters
            .as_ref()
            .and_then(|r| r.rope_theta)
            .or(self.rope_theta)
            .or(self.rope_scaling.as_ref().and_then(|r| r.rope_theta))
            .unwrap_or(5_000_000.0)
    }
    fn mrope_section(&self) -> Vec<usize> {
        self.rope_parameters
            .as_ref()
            .and_then(|r| r.mrope_section.clone())
            .or(self
                .rope_scaling
                .as_ref()
                .and_then(|r| r.mrope_section.clone()))
            .unwrap_or_else(|| vec![24, 20, 20])
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct VisionConfig {
    pub depth: usize,
    pub hidden_size: usize,
    pub hidden_act: Activation,
    pub intermediate_size: usize,
    pub num_heads: usize,
    #[serde(default = "three")]
    pub in_channels: usize,
    pub patch_size: usize,
    pub spatial_merge_size: usize,
    pub temporal_patch_size: usize,
    pub out_hidden_size: usize,
    pub num_position_embeddings: usize,
    #[serde(default)]
    pub deepstack_visual_indexes: Vec<usize>,
    #[serde(default)]
    pub rope_parameters: Option<RopeParameters>,
}

fn three() -> usize {
    3
}

#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub text_config: TextConfig,
    pub vision_config: VisionConfig,
    pub image_token_id: u32,
    pub video_token_id: u32,
    pub vision_start_token_id: u32,
    pub vision_end_token_id: u32,
    #[serde(default)]
    pub tie_word_embeddings: bool,
}

// ---------------------------------------------------------------- helpers

fn layer_norm(n: usize, vb: VarBuilder) -> Result<LayerNorm> {
    candle_nn::layer_norm(
        n,
        candle_nn::LayerNormConfig {
            eps: 1e-6,
            ..Default::default()
        },
        vb,
    )
}

fn rotate_half(xs: &Tensor) -> Result<Tensor> {
    let d = xs.dim(D::Minus1)?;
    let a = xs.narrow(D::Minus1, 0, d / 2)?;
    let b = xs.narrow(D::Minus1, d / 2, d - d / 2)?;
    Tensor::cat(&[&b.neg()?, &a], D::Minus1)
}

// ---------------------------------------------------------------- vision

#[derive(Clone)]
struct VisionBlock {
    norm1: LayerNorm,
    norm2: LayerNorm,
    qkv: Linear,
    proj: Linear,
    fc1: Linear,
    fc2: Linear,
    act: Activation,
    heads: usize,
}

impl VisionBlock {
    fn new(cfg: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        Ok(VisionBlock {
            norm1: layer_norm(h, vb.pp("norm1"))?,
            norm2: layer_norm(h, vb.pp("norm2"))?,
            qkv: candle_nn::linear_b(h, 3 * h, true, vb.pp("attn").pp("qkv"))?,
            proj: candle_nn::linear_b(h, h, true, vb.pp("attn").pp("proj"))?,
            fc1: candle_nn::linear_b(
                h,
                cfg.intermediate_size,
                true,
                vb.pp("mlp").pp("linear_fc1"),
            )?,
            fc2: candle_nn::linear_b(
                cfg.intermediate_size,
                h,
                true,
                vb.pp("mlp").pp("linear_fc2"),
            )?,
            act: cfg.hidden_act,
            heads: cfg.num_heads,
        })
    }

    fn attention(&self, xs: &Tensor, cu: &[usize], cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let (n, h) = xs.dims2()?;
        let hd = h / self.heads;
        let qkv = self.qkv.forward(xs)?.reshape((n, 3, self.heads, hd))?;
        let q = qkv.i((.., 0))?;
        let k = qkv.i((.., 1))?;
        let v = qkv.i((.., 2))?;
        // (n, heads, hd) * (n, 1, hd)
        let c = cos.unsqueeze(1)?;
        let s = sin.unsqueeze(1)?;
        let q = (q.broadcast_mul(&c)? + rotate_half(&q)?.broadcast_mul(&s)?)?;
        let k = (k.broadcast_mul(&c)? + rotate_half(&k)?.broadcast_mul(&s)?)?;
        let scale = (hd as f64).powf(-0.5);
        let mut outs = Vec::with_capacity(cu.len());
        for w in cu.windows(2) {
            let (a, len) = (w[0], w[1] - w[0]);
            if len == 0 {
                continue;
            }
            let q = q.narrow(0, a, len)?.transpose(0, 1)?.contiguous()?;
            let k = k.narrow(0, a, len)?.transpose(0, 1)?.contiguous()?;
            let v = v.narrow(0, a, len)?.transpose(0, 1)?.contiguous()?;
            let att = (q.matmul(&k.t()?)? * scale)?;
            let att = candle_nn::ops::softmax_last_dim(&att)?;
            let o = att.matmul(&v)?.transpose(0, 1)?.reshape((len, h))?;
            outs.push(o);
        }
        self.proj.forward(&Tensor::cat(&outs, 0)?)
    }

    fn forward(&self, xs: &Tensor, cu: &[usize], cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let xs = (xs + self.attention(&self.norm1.forward(xs)?, cu, cos, sin)?)?;
        let m = self.fc2.forward(
            &self
                .fc1
                .forward(&self.norm2.forward(&xs)?)?
                .apply(&self.act)?,
        )?;
        xs + m
    }
}

#[derive(Clone)]
struct PatchMerger {
    norm: LayerNorm,
    post_shuffle: bool,
    merged: usize,
    fc1: Linear,
    fc2: Linear,
}

impl PatchMerger {
    fn new(cfg: &VisionConfig, post_shuffle: bool, vb: VarBuilder) -> Result<Self> {
        let merged = cfg.hidden_size * cfg.spatial_merge_size.pow(2);
        Ok(PatchMerger {
            norm: layer_norm(
                if post_shuffle {
                    merged
                } else {
                    cfg.hidden_size
                },
                vb.pp("norm"),
            )?,
            post_shuffle,
            merged,
            fc1: candle_nn::linear_b(merged, merged, true, vb.pp("linear_fc1"))?,
            fc2: candle_nn::linear_b(merged, cfg.out_hidden_size, true, vb.pp("linear_fc2"))?,
        })
    }
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let xs = if self.post_shuffle {
            self.norm.forward(&xs.reshape(((), self.merged))?)?
        } else {
            self.norm.forward(xs)?.reshape(((), self.merged))?
        };
        // nn.GELU(): the exact, erf-based GELU.
        self.fc2.forward(&self.fc1.forward(&xs)?.gelu_erf()?)
    }
}

#[derive(Clone)]
struct Vision {
    patch_w: Tensor,
    patch_b: Tensor,
    pos_embed: Embedding,
    blocks: Vec<VisionBlock>,
    merger: PatchMerger,
    deepstack: Vec<(usize, PatchMerger)>,
    merge: usize,
    side: usize,
    inv_freq: Vec<f32>,
}

impl Vision {
    fn new(cfg: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        let k = cfg.in_channels * cfg.temporal_patch_size * cfg.patch_size * cfg.patch_size;
        let pe = vb.pp("patch_embed").pp("proj");
        let patch_w = pe
            .get(
                (
                    cfg.hidden_size,
                    cfg.in_channels,
                    cfg.temporal_patch_size,
                    cfg.patch_size,
                    cfg.patch_size,
                ),
                "weight",
            )?
            .reshape((cfg.hidden_size, k))?;
        let patch_b = pe.get(cfg.hidden_size, "bias")?;
        let side = (cfg.num_position_embeddings as f64).sqrt().round() as usize;
        if side * side != cfg.num_position_embeddings {
            candle_core::bail!(
                "vision num_position_embeddings {} is not a square",
                cfg.num_position_embeddings
            );
        }
        let blocks = (0..cfg.depth)
            .map(|i| VisionBlock::new(cfg, vb.pp("blocks").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        let deepstack = cfg
            .deepstack_visual_indexes
            .iter()
            .enumerate()
            .map(|(i, &layer)| {
                Ok((
                    layer,
                    PatchMerger::new(cfg, true, vb.pp("deepstack_merger_list").pp(i))?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        // Axial 2-D rope: head_dim/2 rotary dims per axis, inv_freq over head_dim/4.
        let head_dim = cfg.hidden_size / cfg.num_heads;
        let spatial = head_dim / 2;
        let theta = cfg
            .rope_parameters
            .as_ref()
            .and_then(|r| r.rope_theta)
            .unwrap_or(10_000.0) as f32;
        let inv_freq = anjeon_kernels::math::rope_inv_freq(spatial, theta);
        Ok(Vision {
            patch_w,
            patch_b,
            pos_embed: candle_nn::embedding(
                cfg.num_position_embeddings,
                cfg.hidden_size,
                vb.pp("pos_embed"),
            )?,
            blocks,
            merger: PatchMerger::new(cfg, false, vb.pp("merger"))?,
            deepstack,
            merge: cfg.spatial_merge_size,
            side,
            inv_freq,
        })
    }

    /// (row, col) of every patch of one frame in merge-block order.
    fn block_order(&self, h: usize, w: usize) -> Vec<(usize, usize)> {
        let m = self.merge;
        let mut out = Vec::with_capacity(h * w);
        for br in 0..h / m {
            for bc in 0..w / m {
                for ir in 0..m {
                    for ic in 0..m {
                        out.push((br * m + ir, bc * m + ic));
                    }
                }
            }
        }
        out
    }

    /// Learned position table resampled bilinearly (align_corners) to each grid.
    fn pos_embeds(&self, grids: &[[usize; 3]], device: &Device) -> Result<Tensor> {
        let side = self.side;
        let mut idx: Vec<u32> = Vec::new();
        let mut wts: Vec<f32> = Vec::new();
        let axis = |i: usize, n: usize| -> [(usize, f32); 2] {
            let src = i as f32 * (side - 1) as f32 / (n.max(2) - 1) as f32;
            let src = if n == 1 { 0.0 } else { src };
            let f = src.floor();
            let d = src - f;
            let f = f as usize;
            [(f.min(side - 1), 1.0 - d), ((f + 1).min(side - 1), d)]
        };
        for &[t, h, w] in grids {
            let order = self.block_order(h, w);
            for _ in 0..t {
                for &(r, c) in &order {
                    for (hr, hw) in axis(r, h) {
                        for (wc, ww) in axis(c, w) {
                            idx.push((hr * side + wc) as u32);
                            wts.push(hw * ww);
                        }
                    }
                }
            }
        }
        let n = idx.len() / 4;
        let e = self
            .pos_embed
            .forward(&Tensor::from_vec(idx, n * 4, device)?)?
            .reshape((n, 4, ()))?;
        let wts = Tensor::from_vec(wts, (n, 4, 1), device)?.to_dtype(e.dtype())?;
        e.broadcast_mul(&wts)?.sum(1)
    }

    fn rotary(&self, grids: &[[usize; 3]], device: &Device) -> Result<(Tensor, Tensor)> {
        let nf = self.inv_freq.len();
        let mut cos = Vec::new();
        let mut sin = Vec::new();
        for &[t, h, w] in grids {
            let order = self.block_order(h, w);
            for _ in 0..t {
                for &(r, c) in &order {
                    let mut row = Vec::with_capacity(4 * nf);
                    for &f in &self.inv_freq {
                        row.push(r as f32 * f);
                    }
                    for &f in &self.inv_freq {
                        row.push(c as f32 * f);
                    }
                    let (s, c): (Vec<f32>, Vec<f32>) = row
                        .iter()
                        .map(|&a| anjeon_kernels::math::sin_cos(a))
                        .unzip();
                    for _ in 0..2 {
                        cos.extend_from_slice(&c);
                        sin.extend_from_slice(&s);
                    }
                }
            }
        }
        let n = cos.len() / (4 * nf);
        Ok((
            Tensor::from_vec(cos, (n, 4 * nf), device)?,
            Tensor::from_vec(sin, (n, 4 * nf), device)?,
        ))
    }

    /// Merged visual tokens `(tokens, out_hidden)` and the DeepStack features.
    fn forward(&self, pixels: &Tensor, grids: &[[usize; 3]]) -> Result<(Tensor, Vec<Tensor>)> {
        let device = pixels.device();
        let dtype = self.patch_w.dtype();
        let xs = pixels
            .to_dtype(dtype)?
            .matmul(&self.patch_w.t()?)?
            .broadcast_add(&self.patch_b)?;
        let mut xs = (xs + self.pos_embeds(grids, device)?)?;
        let (cos, sin) = self.rotary(grids, device)?;
        let (cos, sin) = (cos.to_dtype(dtype)?, sin.to_dtype(dtype)?);
        let mut cu = vec![0usize];
        for &[t, h, w] in grids {
            for _ in 0..t {
                cu.push(cu.last().unwrap() + h * w);
            }
        }
        if *cu.last().unwrap() != xs.dim(0)? {
            candle_core::bail!(
                "pixel rows {} do not match the grids' {} patches",
                xs.dim(0)?,
                cu.last().unwrap()
            );
        }
        let mut deep = Vec::new();
        for (i, b) in self.blocks.iter().enumerate() {
            xs = b.forward(&xs, &cu, &cos, &sin)?;
            for (layer, m) in &self.deepstack {
                if *layer == i {
                    deep.push(m.forward(&xs)?);
                }
            }
        }
        Ok((self.merger.forward(&xs)?, deep))
    }
}

/// The vision tower alone (patch embedding, blocks, mergers): for
/// benchmarks and for callers that cache visual tokens.
#[derive(Clone)]
pub struct VisionTower(Vision);

impl VisionTower {
    /// `vb` points at the tower's weights (`model.visual` in a checkpoint).
    pub fn new(cfg: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        Ok(VisionTower(Vision::new(cfg, vb)?))
    }
    /// Merged visual tokens `(tokens, out_hidden)` and the DeepStack features.
    pub fn forward(&self, pixels: &Tensor, grids: &[[usize; 3]]) -> Result<(Tensor, Vec<Tensor>)> {
        self.0.forward(pixels, grids)
    }
}

// ---------------------------------------------------------------- text

#[derive(Clone)]
struct Layer {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    q_norm: RmsNorm,
    k_norm: RmsNorm,
    gate: Linear,
    up: Linear,
    down: Linear,
    act: Activation,
    ln1: RmsNorm,
    ln2: RmsNorm,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    cache: Option<(Tensor, Tensor)>,
}

impl Layer {
    fn new(cfg: &TextConfig, vb: VarBuilder) -> Result<Self> {
        let (h, hd) = (cfg.hidden_size, cfg.head_dim);
        let a = vb.pp("self_attn");
        let m = vb.pp("mlp");
        let b = cfg.attention_bias;
        Ok(Layer {
            q: candle_nn::linear_b(h, cfg.num_attention_heads * hd, b, a.pp("q_proj"))?,
            k: candle_nn::linear_b(h, cfg.num_key_value_heads * hd, b, a.pp("k_proj"))?,
            v: candle_nn::linear_b(h, cfg.num_key_value_heads * hd, b, a.pp("v_proj"))?,
            o: candle_nn::linear_b(cfg.num_attention_heads * hd, h, b, a.pp("o_proj"))?,
            q_norm: RmsNorm::new(hd, cfg.rms_norm_eps, a.pp("q_norm"))?,
            k_norm: RmsNorm::new(hd, cfg.rms_norm_eps, a.pp("k_norm"))?,
            gate: candle_nn::linear_b(h, cfg.intermediate_size, false, m.pp("gate_proj"))?,
            up: candle_nn::linear_b(h, cfg.intermediate_size, false, m.pp("up_proj"))?,
            down: candle_nn::linear_b(cfg.intermediate_size, h, false, m.pp("down_proj"))?,
            act: cfg.hidden_act,
            ln1: RmsNorm::new(h, cfg.rms_norm_eps, vb.pp("input_layernorm"))?,
            ln2: RmsNorm::new(h, cfg.rms_norm_eps, vb.pp("post_attention_layernorm"))?,
            heads: cfg.num_attention_heads,
            kv_heads: cfg.num_key_value_heads,
            head_dim: hd,
            cache: None,
        })
    }

    fn attention(
        &mut self,
        xs: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (b, l, _) = xs.dims3()?;
        let hd = self.head_dim;
        let q = self.q.forward(xs)?.reshape((b, l, self.heads, hd))?;
        let k = self.k.forward(xs)?.reshape((b, l, self.kv_heads, hd))?;
        let v = self.v.forward(xs)?.reshape((b, l, self.kv_heads, hd))?;
        let q = self.q_norm.forward(&q)?.transpose(1, 2)?.contiguous()?;
        let k = self.k_norm.forward(&k)?.transpose(1, 2)?.contiguous()?;
        let v = v.transpose(1, 2)?.contiguous()?;
        let q = candle_nn::rotary_emb::rope(&q, cos, sin)?;
        let k = candle_nn::rotary_emb::rope(&k, cos, sin)?;
        let (k, v) = append_kv(&mut self.cache, k, v)?;
        let o = attention(&q, k, v, (hd as f64).powf(-0.5), mask)?;
        self.o.forward(&o)
    }

    fn forward(
        &mut self,
        xs: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let a = self.attention(&self.ln1.forward(xs)?, cos, sin, mask)?;
        let xs = (xs + a)?;
        let h = self.ln2.forward(&xs)?;
        let m = self
            .down
            .forward(&(self.gate.forward(&h)?.apply(&self.act)? * self.up.forward(&h)?)?)?;
        xs + m
    }
}

// ---------------------------------------------------------------- model

/// Pixels for the vision tower: `(patches, C·T·P·P)` rows as the HF
/// processor lays them out, and each item's `(t, h, w)` patch grid.
#[derive(Debug, Clone)]
pub struct VisualInput {
    pub pixel_values: Tensor,
    pub grid_thw: Vec<[usize; 3]>,
}

/// The visual inputs of one prompt.
#[derive(Debug, Clone, Default)]
pub struct MmInputs {
    pub images: Option<VisualInput>,
    pub videos: Option<VisualInput>,
}

#[derive(Clone)]
pub struct Qwen3Vl {
    vision: Vision,
    embed: Embedding,
    layers: Vec<Layer>,
    norm: RmsNorm,
    lm_head: Linear,
    inv_freq: Vec<f32>,
    mrope_section: Vec<usize>,
    /// Offset between sequence index and text position after a visual prompt.
    rope_delta: i64,
    pub cfg: Config,
    device: Device,
    dtype: DType,
}

impl Qwen3Vl {
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let t = &cfg.text_config;
        let lm = vb.pp("model").pp("language_model");
        let embed = candle_nn::embedding(t.vocab_size, t.hidden_size, lm.pp("embed_tokens"))?;
        let layers = (0..t.num_hidden_layers)
            .map(|i| Layer::new(t, lm.pp("layers").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        let lm_head = if cfg.tie_word_embeddings {
            Linear::new(embed.embeddings().clone(), None)
        } else {
            candle_nn::linear_no_bias(t.hidden_size, t.vocab_size, vb.pp("lm_head"))?
        };
        let theta = t.rope_theta() as f32;
        let hd = t.head_dim;
        let inv_freq = anjeon_kernels::math::rope_inv_freq(hd, theta);
        let mrope_section = t.mrope_section();
        if mrope_section.len() != 3 || mrope_section.iter().sum::<usize>() != hd / 2 {
            candle_core::bail!(
                "mrope_section {:?} must have 3 parts summing to head_dim/2 = {}",
                mrope_section,
                hd / 2
            );
        }
        Ok(Qwen3Vl {
            vision: Vision::new(&cfg.vision_config, vb.pp("model").pp("visual"))?,
            embed,
            layers,
            norm: RmsNorm::new(t.hidden_size, t.rms_norm_eps, lm.pp("norm"))?,
            lm_head,
            inv_freq,
            mrope_section,
            rope_delta: 0,
            cfg: cfg.clone(),
            device: vb.device().clone(),
            dtype: vb.dtype(),
        })
    }

    pub fn clear_kv_cache(&mut self) {
        for l in &mut self.layers {
            l.cache = None;
        }
        self.rope_delta = 0;
    }

    fn cached_len(&self) -> usize {
        self.layers[0]
            .cache
            .as_ref()
            .map(|(k, _)| k.dim(2).unwrap_or(0))
            .unwrap_or(0)
    }

    /// cos/sin `(L, head_dim/2)` for positions given as (t, h, w) triples,
    /// interleaved M-RoPE: frequency j takes the h position when j%3 == 1
    /// and j < 3·section[1], the w position when j%3 == 2 and
    /// j < 3·section[2], else the t position.
    fn rope_tables(&self, pos: &[[i64; 3]]) -> Result<(Tensor, Tensor)> {
        let nf = self.inv_freq.len();
        let (s1, s2) = (3 * self.mrope_section[1], 3 * self.mrope_section[2]);
        let mut cos = Vec::with_capacity(pos.len() * nf);
        let mut sin = Vec::with_capacity(pos.len() * nf);
        for p in pos {
            for (j, &f) in self.inv_freq.iter().enumerate() {
                let c = if j % 3 == 1 && j < s1 {
                    p[1]
                } else if j % 3 == 2 && j < s2 {
                    p[2]
                } else {
                    p[0]
                };
                let (s, co) = anjeon_kernels::math::sin_cos(c as f32 * f);
                cos.push(co);
                sin.push(s);
            }
        }
        let n = pos.len();
        Ok((
            Tensor::from_vec(cos, (n, nf), &self.device)?.to_dtype(self.dtype)?,
            Tensor::from_vec(sin, (n, nf), &self.device)?.to_dtype(self.dtype)?,
        ))
    }

    fn causal_mask(&self, l: usize, offset: usize) -> Result<Option<Tensor>> {
        super::layers::causal_mask(l, l + offset, offset, 0, None, self.dtype, &self.device)
    }

    fn run_layers(
        &mut self,
        mut xs: Tensor,
        pos: &[[i64; 3]],
        deepstack: Option<(&Tensor, &[Tensor])>,
    ) -> Result<Tensor> {
        let (_, l, _) = xs.dims3()?;
        let (cos, sin) = self.rope_tables(pos)?;
        let mask = self.causal_mask(l, self.cached_len())?;
        for (i, layer) in self.layers.iter_mut().enumerate() {
            xs = layer.forward(&xs, &cos, &sin, mask.as_ref())?;
            if let Some((idx, feats)) = deepstack {
                if let Some(f) = feats.get(i) {
                    let h = xs.dim(2)?;
                    let flat = xs.reshape((l, h))?;
                    xs = flat
                        .index_add(idx, &f.to_dtype(flat.dtype())?, 0)?
                        .reshape((1, l, h))?;
                }
            }
        }
        let last = self.norm.forward(&xs.i((.., l - 1..l, ..))?)?;
        self.lm_head.forward(&last)?.flatten_all()
    }

    /// Text tokens after the cache: positions continue from the last prompt
    /// (plus its `rope_delta`). Logits of the last position, `[vocab]`.
    pub fn forward(&mut self, ids: &Tensor, seq_offset: usize) -> Result<Tensor> {
        let (_, l) = ids.dims2()?;
        let xs = self.embed.forward(ids)?;
        let pos: Vec<[i64; 3]> = (0..l)
            .map(|i| {
                let p = (seq_offset + i) as i64 + self.rope_delta;
                [p, p, p]
            })
            .collect();
        self.run_layers(xs, &pos, None)
    }

    /// Prefill a prompt with visual placeholders from an empty cache.
    /// `ids` holds one placeholder token per merged visual token, in the
    /// order of the images' and videos' grids. Logits of the last position.
    pub fn prefill(&mut self, ids: &[u32], mm: &MmInputs) -> Result<Tensor> {
        self.clear_kv_cache();
        let l = ids.len();
        let (img_id, vid_id) = (self.cfg.image_token_id, self.cfg.video_token_id);
        let merge = self.cfg.vision_config.spatial_merge_size;
        let input = Tensor::new(ids, &self.device)?.unsqueeze(0)?;
        let embeds = self.embed.forward(&input)?.squeeze(0)?;
        let encode = |v: &Option<VisualInput>| -> Result<Option<(Tensor, Vec<Tensor>)>> {
            match v {
                Some(v) => Ok(Some(self.vision.forward(&v.pixel_values, &v.grid_thw)?)),
                None => Ok(None),
            }
        };
        let img = encode(&mm.images)?;
        let vid = encode(&mm.videos)?;
        let n_img = ids.iter().filter(|&&t| t == img_id).count();
        let n_vid = ids.iter().filter(|&&t| t == vid_id).count();
        let rows = |x: &Option<(Tensor, Vec<Tensor>)>| -> Result<usize> {
            Ok(match x {
                Some((t, _)) => t.dim(0)?,
                None => 0,
            })
        };
        if rows(&img)? != n_img || rows(&vid)? != n_vid {
            candle_core::bail!(
                "placeholder tokens (image {n_img}, video {n_vid}) do not match the visual tokens (image {}, video {})",
                rows(&img)?,
                rows(&vid)?
            );
        }
        // Input embeddings: visual rows replace their placeholders in order.
        // Gather from [text embeds; image tokens; video tokens].
        let mut gather = Vec::with_capacity(l);
        let mut visual_idx = Vec::new();
        let mut deep_gather = Vec::new();
        let (mut ki, mut kv) = (0u32, 0u32);
        for (i, &t) in ids.iter().enumerate() {
            if t == img_id {
                gather.push(l as u32 + ki);
                deep_gather.push(ki);
                visual_idx.push(i as u32);
                ki += 1;
            } else if t == vid_id {
                gather.push(l as u32 + n_img as u32 + kv);
                deep_gather.push(n_img as u32 + kv);
                visual_idx.push(i as u32);
                kv += 1;
            } else {
                gather.push(i as u32);
            }
        }
        let mut table = vec![embeds];
        let mut deep_parts: Vec<Vec<Tensor>> = Vec::new();
        for x in [&img, &vid] {
            if let Some((t, deep)) = x {
                table.push(t.to_dtype(self.dtype)?);
                deep_parts.push(deep.clone());
            }
        }
        let table = Tensor::cat(&table, 0)?;
        let xs = table
            .index_select(&Tensor::new(gather.as_slice(), &self.device)?, 0)?
            .unsqueeze(0)?;
        let grids =
            |v: &Option<VisualInput>| v.as_ref().map(|v| v.grid_thw.clone()).unwrap_or_default();
        let pos = rope_positions(
            ids,
            img_id,
            vid_id,
            &grids(&mm.images),
            &grids(&mm.videos),
            merge,
        )
        .map_err(candle_core::Error::Msg)?;
        let max = pos
            .iter()
            .flat_map(|p| p.iter())
            .copied()
            .max()
            .unwrap_or(0);
        self.rope_delta = max + 1 - l as i64;
        if visual_idx.is_empty() {
            return self.run_layers(xs, &pos, None);
        }
        // DeepStack: per layer, the features of all visual tokens in sequence order.
        let n_deep = deep_parts.iter().map(|d| d.len()).min().unwrap_or(0);
        let dg = Tensor::new(deep_gather.as_slice(), &self.device)?;
        let feats = (0..n_deep)
            .map(|k| {
                let parts: Vec<&Tensor> = deep_parts.iter().map(|d| &d[k]).collect();
                Tensor::cat(&parts, 0)?.index_select(&dg, 0)
            })
            .collect::<Result<Vec<_>>>()?;
        let vidx = Tensor::new(visual_idx.as_slice(), &self.device)?;
        self.run_layers(xs, &pos, Some((&vidx, &feats)))
    }
}

/// 3-D positions of a prompt, as transformers' `get_rope_index` gives them
/// for Qwen3-VL: text advances all three by one; a visual item (an image,
/// or one temporal step of a video: video grids are split per step because
/// each step has its own timestamp text) gets (start, start+row, start+col)
/// over its merged grid and advances the position by max(rows, cols).
pub fn rope_positions(
    ids: &[u32],
    image_token: u32,
    video_token: u32,
    image_grids: &[[usize; 3]],
    video_grids: &[[usize; 3]],
    merge: usize,
) -> std::result::Result<Vec<[i64; 3]>, String> {
    let split: Vec<[usize; 3]> = video_grids
        .iter()
        .flat_map(|&[t, h, w]| std::iter::repeat_n([1, h, w], t))
        .collect();
    let mut grids = [image_grids.iter(), split.iter()];
    let mut out = Vec::with_capacity(ids.len());
    let mut cur: i64 = 0;
    let mut i = 0;
    while i < ids.len() {
        let tok = ids[i];
        let kind = if tok == image_token {
            0
        } else if tok == video_token {
            1
        } else {
            out.push([cur; 3]);
            cur += 1;
            i += 1;
            continue;
        };
        let name = ["image", "video frame"][kind];
        let &[t, h, w] = grids[kind]
            .next()
            .ok_or_else(|| format!("more {name} placeholders than {name} grids"))?;
        let (lh, lw) = (h / merge, w / merge);
        let n = t * lh * lw;
        if i + n > ids.len() || ids[i..i + n].iter().any(|&x| x != tok) {
            return Err(format!(
                "{name} at token {i}: expected {n} consecutive placeholders for grid {t}x{h}x{w}"
            ));
        }
        for ti in 0..t {
            for r in 0..lh {
                for c in 0..lw {
                    out.push([cur + ti as i64, cur + r as i64, cur + c as i64]);
                }
            }
        }
        cur += lh.max(lw) as i64;
        i += n;
    }
    if grids[0].next().is_some() || grids[1].next().is_some() {
        return Err("more visual grids than placeholders in the prompt".into());
    }
    Ok(out)
}

/// Placeholder counts of one prompt's media, in prompt order.
#[derive(Debug, Clone, PartialEq)]
pub enum Placeholder {
    /// Merged visual tokens of one image.
    Image { tokens: usize },
    /// One video: merged tokens per temporal step and each step's
    /// timestamp in seconds (mean of the pair's frame times).
    Video {
        tokens_per_step: usize,
        timestamps: Vec<f64>,
    },
}

/// Expand the chat template's single `<|image_pad|>` / `<|video_pad|>` per
/// item the way transformers 5.23's `Qwen3VLProcessor` does: an image pad
/// becomes one pad per merged token; a video pad becomes, per temporal
/// step, `<{t:.1} seconds>` + vision_start + pads + vision_end (the
/// template's own vision_start/vision_end around the video stay, as there).
pub fn expand_placeholders(
    text: &str,
    items: &[Placeholder],
    image_pad: &str,
    video_pad: &str,
    vision_start: &str,
    vision_end: &str,
) -> std::result::Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut it = items.iter();
    loop {
        let ni = rest.find(image_pad);
        let nv = rest.find(video_pad);
        let (at, is_image) = match (ni, nv) {
            (Some(a), Some(b)) if a < b => (a, true),
            (Some(_), Some(b)) => (b, false),
            (Some(a), None) => (a, true),
            (None, Some(b)) => (b, false),
            (None, None) => break,
        };
        out.push_str(&rest[..at]);
        match (it.next(), is_image) {
            (Some(Placeholder::Image { tokens }), true) => out.push_str(&image_pad.repeat(*tokens)),
            (
                Some(Placeholder::Video {
                    tokens_per_step,
                    timestamps,
                }),
                false,
            ) => {
                for t in timestamps {
                    out.push_str(&format!("<{t:.1} seconds>"));
                    out.push_str(vision_start);
                    out.push_str(&video_pad.repeat(*tokens_per_step));
                    out.push_str(vision_end);
                }
            }
            (Some(p), _) => {
                return Err(format!(
                    "the prompt's {} placeholder meets a {} item: media order differs from the template's",
                    if is_image { "image" } else { "video" },
                    match p {
                        Placeholder::Image { .. } => "image",
                        Placeholder::Video { .. } => "video",
                    }
                ))
            }
            (None, _) => return Err("more media placeholders in the prompt than media items".into()),
        }
        rest = &rest[at
            + if is_image {
                image_pad.len()
            } else {
                video_pad.len()
            }..];
    }
    out.push_str(rest);
    if it.next().is_some() {
        return Err("more media items than placeholders in the rendered prompt (does the chat template take images?)".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_format_like_python() {
        // Python: f"{0.25:.1f}" == "0.2", f"{0.75:.1f}" == "0.8", f"{1.25:.1f}" == "1.2"
        assert_eq!(format!("{:.1}", 0.25f64), "0.2");
        assert_eq!(format!("{:.1}", 0.75f64), "0.8");
        assert_eq!(format!("{:.1}", 1.25f64), "1.2");
        assert_eq!(format!("{:.1}", 2.0f64), "2.0");
    }

    #[test]
    fn positions_follow_get_rope_index() {
        // text(2) image 1x4x4 (merge 2 -> 2x2) text(1)
        let ids = [1, 2, 9, 9, 9, 9, 3];
        let p = rope_positions(&ids, 9, 8, &[[1, 4, 4]], &[], 2).unwrap();
        assert_eq!(
            p,
            vec![
                [0, 0, 0],
                [1, 1, 1],
                [2, 2, 2],
                [2, 2, 3],
                [2, 3, 2],
                [2, 3, 3],
                [4, 4, 4]
            ]
        );
        assert!(rope_positions(&ids, 9, 8, &[], &[], 2).is_err());
        assert!(rope_positions(&ids[..4], 9, 8, &[[1, 4, 4]], &[], 2).is_err());
    }
}

/// Qwen3-VL's input processing: the checkpoint's image and video processor
/// settings, decoding, resizing and patching (`crate::media::qwen3vl`, checked
/// against transformers in tests/media.rs) and placeholder expansion.
#[derive(Debug, Clone)]
pub struct Processor {
    pub image: crate::media::qwen3vl::ImageProcessor,
    pub video: crate::media::qwen3vl::VideoProcessor,
    pub limits: crate::media::Limits,
    merge: usize,
    /// sha256 of the processor config files read (for the run manifest).
    pub config_sha256: String,
}

impl Processor {
    /// Reads `preprocessor_config.json` and `video_preprocessor_config.json`
    /// (hub layout), else the `image_processor` / `video_processor` entries of
    /// `processor_config.json` (transformers 5 `save_pretrained`), else the
    /// released Qwen3-VL defaults (with a warning).
    pub fn from_dir(
        dir: &std::path::Path,
        merge: usize,
    ) -> std::result::Result<Processor, crate::core::error::Error> {
        use crate::media::qwen3vl::{ImageProcessor, VideoProcessor};
        let read = |name: &str| std::fs::read_to_string(dir.join(name)).ok();
        let combined: Option<serde_json::Value> =
            read("processor_config.json").and_then(|s| serde_json::from_str(&s).ok());
        let sub = |key: &str| {
            combined
                .as_ref()
                .and_then(|c| c.get(key))
                .filter(|v| v.is_object())
                .map(|v| v.to_string())
        };
        let mut hashed = String::new();
        let image_src = read("preprocessor_config.json").or_else(|| sub("image_processor"));
        let video_src = read("video_preprocessor_config.json").or_else(|| sub("video_processor"));
        let image = match &image_src {
            Some(s) => {
                hashed.push_str(s);
                ImageProcessor::from_json_str(s)?
            }
            None => {
                log::warn!(
                    "{}: no preprocessor_config.json; using the released Qwen3-VL image settings",
                    dir.display()
                );
                ImageProcessor::qwen3vl_default()
            }
        };
        let video = match &video_src {
            Some(s) => {
                hashed.push_str(s);
                VideoProcessor::from_json_str(s)?
            }
            None => VideoProcessor::qwen3vl_default(),
        };
        Ok(Processor {
            image,
            video,
            limits: crate::media::Limits::default(),
            merge,
            config_sha256: crate::core::hash::sha256_hex(hashed.as_bytes()),
        })
    }

    /// Decode and patch every media item; placeholder sizes in order.
    pub fn process(
        &self,
        media: &[super::MediaInput<'_>],
        device: &Device,
    ) -> std::result::Result<(Vec<Placeholder>, MmInputs), crate::core::error::Error> {
        use crate::core::sample::{MediaKind, MediaSource};
        let ce = |e: candle_core::Error| crate::core::error::Error::backend("vision input", e);
        let mut places = Vec::new();
        let (mut img_px, mut img_grid, mut vid_px, mut vid_grid) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut cols = 0;
        for m in media {
            let name = m.media.describe();
            match m.kind {
                MediaKind::Image => {
                    let bytes = m.media.load()?;
                    let img = crate::media::decode_image(&bytes, &name, &self.limits)?;
                    let p = self.image.preprocess_named(&img, &name)?;
                    places.push(Placeholder::Image {
                        tokens: p.num_tokens(self.merge),
                    });
                    cols = p.cols;
                    img_grid.push(p.grid_thw.map(|v| v as usize));
                    img_px.extend(p.pixel_values);
                }
                MediaKind::Video => {
                    let sampler = |total: usize, fps: f64| self.video.sample_indices(total, fps);
                    let video = match &m.media.source {
                        MediaSource::Path(p) => crate::media::decode_video_sampled(
                            crate::media::VideoSource::Path(p),
                            &name,
                            &self.limits,
                            &sampler,
                        )?,
                        MediaSource::Bytes { data, .. } => crate::media::decode_video_sampled(
                            crate::media::VideoSource::Bytes(data),
                            &name,
                            &self.limits,
                            &sampler,
                        )?,
                    };
                    let v = self.video.preprocess(&video)?;
                    places.push(Placeholder::Video {
                        tokens_per_step: v.tokens_per_frame(self.merge),
                        timestamps: v.timestamps.clone(),
                    });
                    cols = v.patches.cols;
                    vid_grid.push(v.patches.grid_thw.map(|x| x as usize));
                    vid_px.extend(v.patches.pixel_values);
                }
                MediaKind::Audio => {
                    return Err(crate::core::error::Error::Usage(format!(
                        "{name}: Qwen3-VL takes images and video, not audio"
                    )))
                }
            }
        }
        let visual =
            |px: Vec<f32>,
             grid: Vec<[usize; 3]>|
             -> std::result::Result<Option<VisualInput>, crate::core::error::Error> {
                if grid.is_empty() {
                    return Ok(None);
                }
                let rows = px.len() / cols.max(1);
                Ok(Some(VisualInput {
                    pixel_values: Tensor::from_vec(px, (rows, cols), device).map_err(ce)?,
                    grid_thw: grid,
                }))
            };
        Ok((
            places,
            MmInputs {
                images: visual(img_px, img_grid)?,
                videos: visual(vid_px, vid_grid)?,
            },
        ))
    }
}
