//! Gemma 3 text model from a quantized GGUF file.
//!
//! Written for anjeon after candle-transformers 0.11.1's `quantized_gemma3`
//! (MIT OR Apache-2.0, Copyright the Candle authors), fixing what a parity
//! check against llama.cpp showed or the code review found there:
//! - the MLP activation is tanh-approximated GELU (`gelu_pytorch_tanh`), not
//!   SiLU (with SiLU the 270M model's greedy output differs from the first token);
//! - rotary tables cover the model's context (capped), shared by layers with
//!   the same base, instead of 131,072 positions per layer (~2.4 GB);
//! - sliding-window layers also limit attention during decode (the KV cache
//!   of a sliding layer keeps only the last `window` positions);
//! - the KV cache can be cleared between items; inputs are made contiguous
//!   (batch > 1).

use std::sync::Arc;

use super::layers::{inv_sqrt, kv_attend, kv_attend_batch, split_heads, Kv, KvPrecision};
use candle_core::quantized::{gguf_file, QTensor};
use candle_core::{Device, IndexOp, Module, Result, Tensor};

use super::qlinear::{QEmbedding, QLinear};
use super::qwen2::{check_batch, layer_caches, rope_rows};

/// Longest context anjeon prepares rotary tables for.
pub const MAX_POSITIONS: usize = 32_768;

#[derive(Clone)]
struct Norm {
    weight: Tensor,
    eps: f32,
}

impl Norm {
    fn load<R: std::io::Read + std::io::Seek>(
        ct: &gguf_file::Content,
        r: &mut R,
        name: &str,
        eps: f32,
        dev: &Device,
    ) -> Result<Norm> {
        let q: QTensor = ct.tensor(r, name, dev)?;
        Ok(Norm {
            weight: q.dequantize(dev)?,
            eps,
        })
    }
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        candle_nn::ops::rms_norm(&x.contiguous()?, &self.weight, self.eps)
    }
}

/// Rotary tables (halves rotated, as transformers' `rotate_half`) for up
/// to `positions` positions; also used by the EmbeddingGemma encoder. Built
/// for the positions used so far and grown (to the
/// next power of two, at most the model's context) when a longer sequence
/// comes: a 32k-position table pair for Gemma 3's 256-wide heads is 67 MB
/// that short prompts never touch. Each entry is computed on its own, so a
/// grown table holds the same bits for the positions it had.
pub(crate) struct Rope {
    inv: Vec<f32>,
    max: usize,
    dev: Device,
    /// (cos, sin), each `(positions, head_dim / 2)`.
    tables: std::sync::RwLock<(Tensor, Tensor)>,
}

impl Clone for Rope {
    fn clone(&self) -> Rope {
        let t = self
            .tables
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        Rope {
            inv: self.inv.clone(),
            max: self.max,
            dev: self.dev.clone(),
            tables: std::sync::RwLock::new(t),
        }
    }
}

/// Positions a new table starts with.
const ROPE_START: usize = 4096;

impl Rope {
    pub(crate) fn new(head_dim: usize, base: f32, positions: usize, dev: &Device) -> Result<Rope> {
        let inv = anjeon_kernels::math::rope_inv_freq(head_dim, base);
        let tables = Self::build(&inv, positions.min(ROPE_START), dev)?;
        Ok(Rope {
            inv,
            max: positions,
            dev: dev.clone(),
            tables: std::sync::RwLock::new(tables),
        })
    }

    fn build(inv: &[f32], positions: usize, dev: &Device) -> Result<(Tensor, Tensor)> {
        super::layers::rope_tables(inv, positions, dev)
    }

    /// `x` `(b, heads, seq, head_dim)` at positions `pos..pos + seq`.
    pub(crate) fn apply(&self, x: &Tensor, pos: usize) -> Result<Tensor> {
        let (_, _, seq, _) = x.dims4()?;
        self.ensure(pos + seq)?;
        let t = self.tables.read().unwrap_or_else(|e| e.into_inner());
        let cos = t.0.narrow(0, pos, seq)?;
        let sin = t.1.narrow(0, pos, seq)?;
        candle_nn::rotary_emb::rope(&x.contiguous()?, &cos, &sin)
    }

    /// The tables' rows at `positions` as `[n, 1, head_dim / 2]` (one
    /// position per sequence of a batched decode step).
    pub(crate) fn rows(&self, positions: &[usize]) -> Result<(Tensor, Tensor)> {
        self.ensure(positions.iter().max().map_or(0, |p| p + 1))?;
        let t = self.tables.read().unwrap_or_else(|e| e.into_inner());
        Ok((rope_rows(&t.0, positions)?, rope_rows(&t.1, positions)?))
    }

    /// Grow the tables to cover `need` positions.
    fn ensure(&self, need: usize) -> Result<()> {
        let have = self
            .tables
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .dim(0)?;
        if need > have {
            let mut t = self.tables.write().unwrap_or_else(|e| e.into_inner());
            if need > t.0.dim(0)? {
                let grown = need.next_power_of_two().min(self.max.max(need));
                *t = Self::build(&self.inv, grown, &self.dev)?;
            }
        }
        Ok(())
    }
}

#[derive(Clone)]
struct Layer {
    wq: QLinear,
    wk: QLinear,
    wv: QLinear,
    wo: QLinear,
    q_norm: Norm,
    k_norm: Norm,
    attn_norm: Norm,
    post_attn_norm: Norm,
    ffn_norm: Norm,
    post_ffn_norm: Norm,
    gate: QLinear,
    up: QLinear,
    down: QLinear,
    n_head: usize,
    n_kv: usize,
    head_dim: usize,
    /// Some(window) for sliding-window (local) layers.
    window: Option<usize>,
    rope: Arc<Rope>,
    /// Whether `rope` is the local (sliding-window) table.
    local: bool,
    cache: Kv,
}

impl Layer {
    fn attention(&mut self, x: &Tensor, pos: usize) -> Result<Tensor> {
        let (q, k, v) = (
            self.wq.forward(x)?,
            self.wk.forward(x)?,
            self.wv.forward(x)?,
        );
        let mut cache = std::mem::take(&mut self.cache);
        let out = self.attend(&mut cache, &q, &k, &v, pos)?;
        self.cache = cache;
        self.wo.forward(&out)
    }

    /// q/k norms, rotary, KV cache (trimmed to the window on sliding
    /// layers) and masked attention for one sequence's projections starting
    /// at `pos`; returns `[b, seq, heads · head_dim]` before the output
    /// projection.
    fn attend(
        &self,
        cache: &mut Kv,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        pos: usize,
    ) -> Result<Tensor> {
        let q = split_heads(q, self.n_head, self.head_dim)?;
        let k = split_heads(k, self.n_kv, self.head_dim)?;
        let v = split_heads(v, self.n_kv, self.head_dim)?;
        let q = self.rope.apply(&self.q_norm.forward(&q)?, pos)?;
        let k = self.rope.apply(&self.k_norm.forward(&k)?, pos)?;
        kv_attend(
            cache,
            &q,
            k,
            v,
            pos,
            self.window,
            inv_sqrt(self.head_dim),
            KvPrecision::F16,
        )
    }

    /// [`Layer::attend`] for one new position of each of several sequences
    /// (projections `[n, 1, ·]`, rotary rows `[n, 1, head_dim/2]`).
    fn attend_batch(
        &self,
        caches: &mut [&mut Kv],
        (q, k, v): (&Tensor, &Tensor, &Tensor),
        (cos, sin): (&Tensor, &Tensor),
        positions: &[usize],
    ) -> Result<Tensor> {
        let q = split_heads(q, self.n_head, self.head_dim)?;
        let k = split_heads(k, self.n_kv, self.head_dim)?;
        let v = split_heads(v, self.n_kv, self.head_dim)?;
        let q = candle_nn::rotary_emb::rope(&self.q_norm.forward(&q)?, cos, sin)?;
        let k = candle_nn::rotary_emb::rope(&self.k_norm.forward(&k)?, cos, sin)?;
        kv_attend_batch(
            caches,
            &q,
            &k,
            &v,
            positions,
            self.window,
            inv_sqrt(self.head_dim),
            KvPrecision::F16,
        )
    }

    fn mlp(&self, x: &Tensor) -> Result<Tensor> {
        // gelu_pytorch_tanh (candle's `gelu` off the CPU is the same
        // tanh approximation).
        let (g, u) = (self.gate.forward(x)?, self.up.forward(x)?);
        self.down
            .forward(&super::qlinear::glu(anjeon_kernels::Glu::GeluTanh, &g, &u)?)
    }
}

#[derive(Clone)]
pub struct ModelWeights {
    embed: QEmbedding,
    hidden: usize,
    layers: Vec<Layer>,
    norm: Norm,
    output: QLinear,
}

impl ModelWeights {
    pub fn from_gguf<R: std::io::Read + std::io::Seek>(
        ct: gguf_file::Content,
        r: &mut R,
        dev: &Device,
    ) -> Result<Self> {
        let get = |k: &str| {
            ct.metadata
                .get(&format!("gemma3.{k}"))
                .ok_or_else(|| candle_core::Error::Msg(format!("GGUF metadata gemma3.{k} missing")))
        };
        let n_head = get("attention.head_count")?.to_u32()? as usize;
        let n_kv = get("attention.head_count_kv")?.to_u32()? as usize;
        let n_layer = get("block_count")?.to_u32()? as usize;
        let hidden = get("embedding_length")?.to_u32()? as usize;
        let head_dim = get("attention.key_length")?.to_u32()? as usize;
        let eps = get("attention.layer_norm_rms_epsilon")?.to_f32()?;
        let window = get("attention.sliding_window")?.to_u32()? as usize;
        let pattern = get("attention.sliding_window_type")
            .and_then(|v| v.to_u32())
            .unwrap_or(6) as usize;
        let base_global = get("rope.freq_base")
            .and_then(|v| v.to_f32())
            .unwrap_or(1_000_000.0);
        let base_local = get("rope.local_freq_base")
            .and_then(|v| v.to_f32())
            .unwrap_or(10_000.0);
        let ctx = get("context_length")
            .and_then(|v| v.to_u32())
            .unwrap_or(8192) as usize;
        let positions = ctx.min(MAX_POSITIONS);
        let rope_global = Arc::new(Rope::new(head_dim, base_global, positions, dev)?);
        let rope_local = Arc::new(Rope::new(head_dim, base_local, positions, dev)?);

        let (embed, output) = super::qlinear::embeddings_and_output(&ct, r, dev, hidden)?;
        let norm = Norm::load(&ct, r, "output_norm.weight", eps, dev)?;
        let mut layers = Vec::with_capacity(n_layer);
        for i in 0..n_layer {
            let p = format!("blk.{i}");
            let qm = |r: &mut R, n: &str| -> Result<QLinear> {
                let name = format!("{p}.{n}.weight");
                QLinear::load(&ct, r, &name, dev)
            };
            let nm = |r: &mut R, n: &str| Norm::load(&ct, r, &format!("{p}.{n}.weight"), eps, dev);
            let local = (i + 1) % pattern != 0;
            layers.push(Layer {
                wq: qm(r, "attn_q")?,
                wk: qm(r, "attn_k")?,
                wv: qm(r, "attn_v")?,
                wo: qm(r, "attn_output")?,
                q_norm: nm(r, "attn_q_norm")?,
                k_norm: nm(r, "attn_k_norm")?,
                attn_norm: nm(r, "attn_norm")?,
                post_attn_norm: nm(r, "post_attention_norm")?,
                ffn_norm: nm(r, "ffn_norm")?,
                post_ffn_norm: nm(r, "post_ffw_norm")?,
                gate: qm(r, "ffn_gate")?,
                up: qm(r, "ffn_up")?,
                down: qm(r, "ffn_down")?,
                n_head,
                n_kv,
                head_dim,
                window: local.then_some(window),
                rope: if local {
                    rope_local.clone()
                } else {
                    rope_global.clone()
                },
                local,
                cache: Kv::Empty,
            });
        }
        Ok(ModelWeights {
            embed,
            hidden,
            layers,
            norm,
            output,
        })
    }

    pub fn clear_kv_cache(&mut self) {
        for l in &mut self.layers {
            l.cache = Kv::Empty;
        }
    }

    /// Move the KV cache out (one entry per layer).
    pub fn take_cache(&mut self) -> super::qwen2::KvCache {
        self.layers
            .iter_mut()
            .map(|l| std::mem::take(&mut l.cache))
            .collect()
    }

    /// One decode step for several independent sequences, as
    /// [`super::qwen2::ModelWeights::forward_batch`]: row-wise, so each
    /// sequence's logits are bit-identical to decoding it alone.
    pub fn forward_batch(
        &self,
        caches: &mut [super::qwen2::KvCache],
        tokens: &[u32],
        positions: &[usize],
    ) -> Result<Tensor> {
        check_batch(caches, tokens, positions)?;
        let dev = self.norm.weight.device().clone();
        let ids = Tensor::new(tokens, &dev)?.unsqueeze(1)?;
        let mut x = (self.embed.forward(&ids)? * (self.hidden as f64).sqrt())?;
        // Rotary rows of each table, once per step.
        let (mut local, mut global) = (None, None);
        for l in &self.layers {
            let slot = if l.local { &mut local } else { &mut global };
            if slot.is_none() {
                *slot = Some(l.rope.rows(positions)?);
            }
        }
        for (li, l) in self.layers.iter().enumerate() {
            let h = l.attn_norm.forward(&x)?;
            let (q, k, v) = (l.wq.forward(&h)?, l.wk.forward(&h)?, l.wv.forward(&h)?);
            let rows = if l.local { &local } else { &global };
            let Some((cos, sin)) = rows else {
                unreachable!("every layer's table was read above")
            };
            let o = l.attend_batch(
                &mut layer_caches(caches, li)?,
                (&q, &k, &v),
                (cos, sin),
                positions,
            )?;
            let a = l.wo.forward(&o)?;
            let h = l.post_attn_norm.forward(&a)?;
            x = (x + h)?;
            let h = l.post_ffn_norm.forward(&l.mlp(&l.ffn_norm.forward(&x)?)?)?;
            x = (x + h)?;
        }
        let x = self.norm.forward(&x)?;
        self.output.forward(&x)?.squeeze(1)
    }

    /// Several continuations of the cached prompt at once, as
    /// [`super::qwen2::ModelWeights::forward_packed`]: `[n, vocab]`, each
    /// row bit-identical to running that sequence alone.
    pub fn forward_packed(&self, seqs: &[&[u32]], pos: usize) -> Result<Tensor> {
        let (ids, spans) = super::layers::pack(seqs)?;
        let dev = self.norm.weight.device().clone();
        let ids = Tensor::new(ids.as_slice(), &dev)?.unsqueeze(0)?;
        let mut x = (self.embed.forward(&ids)? * (self.hidden as f64).sqrt())?;
        for l in &self.layers {
            let h = l.attn_norm.forward(&x)?;
            let (q, k, v) = (l.wq.forward(&h)?, l.wk.forward(&h)?, l.wv.forward(&h)?);
            let o = super::layers::attend_spans(&spans, &l.cache, (&q, &k, &v), |c, q, k, v| {
                l.attend(c, q, k, v, pos)
            })?;
            let a = l.wo.forward(&o)?;
            let h = l.post_attn_norm.forward(&a)?;
            x = (x + h)?;
            let h = l.post_ffn_norm.forward(&l.mlp(&l.ffn_norm.forward(&x)?)?)?;
            x = (x + h)?;
        }
        let x = self.norm.forward(&super::layers::last_rows(&x, &spans)?)?;
        self.output.forward(&x)?.squeeze(0)
    }

    /// Logits of the last position: `[batch, vocab]`.
    pub fn forward(&mut self, ids: &Tensor, pos: usize) -> Result<Tensor> {
        let (_, seq) = ids.dims2()?;
        let mut x = (self.embed.forward(&ids.contiguous()?)? * (self.hidden as f64).sqrt())?;
        for l in &mut self.layers {
            let h = l.attn_norm.forward(&x)?;
            let a = l.attention(&h, pos)?;
            let h = l.post_attn_norm.forward(&a)?;
            x = (x + h)?;
            let h = l.post_ffn_norm.forward(&l.mlp(&l.ffn_norm.forward(&x)?)?)?;
            x = (x + h)?;
        }
        let x = self.norm.forward(&x.i((.., seq - 1..seq, ..))?)?;
        self.output.forward(&x)?.squeeze(1)
    }
}

#[cfg(test)]
mod rope_tests {
    use super::*;

    #[test]
    fn rope_tables_grow_on_demand_with_the_same_bits() {
        let dev = Device::Cpu;
        let r = Rope::new(8, 10_000.0, 20_000, &dev).unwrap();
        assert_eq!(r.tables.read().unwrap().0.dim(0).unwrap(), ROPE_START);
        let x = Tensor::randn(0f32, 1.0, (1, 2, 3, 8), &dev).unwrap();
        let (cos, sin) = Rope::build(&r.inv, 20_000, &dev).unwrap();
        let want = |pos: usize| {
            candle_nn::rotary_emb::rope(
                &x,
                &cos.narrow(0, pos, 3).unwrap(),
                &sin.narrow(0, pos, 3).unwrap(),
            )
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
        };
        let got = |pos: usize| {
            r.apply(&x, pos)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        assert_eq!(got(10), want(10));
        assert_eq!(got(9_000), want(9_000), "after growing");
        assert_eq!(r.tables.read().unwrap().0.dim(0).unwrap(), 16_384);
        assert_eq!(got(19_990), want(19_990), "capped at the context");
        assert_eq!(r.tables.read().unwrap().0.dim(0).unwrap(), 20_000);
        assert_eq!(got(10), want(10), "early positions keep their bits");
    }
}
