//! Pieces the model files share: RMSNorm, the KV cache append, grouped
//! attention and the causal (optionally sliding-window) mask.

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;

/// RMSNorm `x · (mean(x²) + eps)^-½ · weight`, computed in f32 whatever
/// the activations' dtype (as transformers' Qwen3, Gemma 4 and Llama norms
/// do), with the weight as stored (no `1 +`).
#[derive(Clone)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    pub fn new(n: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(RmsNorm {
            weight: vb.get(n, "weight")?,
            eps: eps as f32,
        })
    }

    /// A norm without a learned weight (`with_scale = False`).
    pub fn bare(n: usize, eps: f64, dtype: DType, device: &Device) -> Result<Self> {
        Ok(RmsNorm {
            weight: Tensor::ones(n, dtype, device)?,
            eps: eps as f32,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dt = x.dtype();
        let y = candle_nn::ops::rms_norm(
            &x.to_dtype(DType::F32)?.contiguous()?,
            &self.weight.to_dtype(DType::F32)?,
            self.eps,
        )?;
        y.to_dtype(dt)
    }
}

/// The additive attention mask `(1, 1, queries, keys)`: query `i` stands at
/// absolute position `q0 + i`, key `j` at `k0 + j`; a key is visible when it
/// is not after the query and, with a `window`, fewer than `window`
/// positions before it (0 visible, −∞ hidden). `None` when every key is
/// visible (a single decode step without a window), so nothing is added.
pub fn causal_mask(
    queries: usize,
    keys: usize,
    q0: usize,
    k0: usize,
    window: Option<usize>,
    dtype: DType,
    device: &Device,
) -> Result<Option<Tensor>> {
    let mut m = vec![0f32; queries * keys];
    let mut hidden = false;
    for i in 0..queries {
        let qi = q0 + i;
        for j in 0..keys {
            let kj = k0 + j;
            let visible = kj <= qi && window.is_none_or(|w| qi - kj < w);
            if !visible {
                m[i * keys + j] = f32::NEG_INFINITY;
                hidden = true;
            }
        }
    }
    if !hidden {
        return Ok(None);
    }
    Some(Tensor::from_vec(m, (1, 1, queries, keys), device)?.to_dtype(dtype)).transpose()
}

/// Appends this step's keys/values `(b, kv_heads, l, d)` to a layer's cache
/// and returns the whole cached keys/values.
pub fn append_kv(
    cache: &mut Option<(Tensor, Tensor)>,
    k: Tensor,
    v: Tensor,
) -> Result<(Tensor, Tensor)> {
    let (k, v) = match cache.as_ref() {
        Some((pk, pv)) => (Tensor::cat(&[pk, &k], 2)?, Tensor::cat(&[pv, &v], 2)?),
        None => (k, v),
    };
    *cache = Some((k.clone(), v.clone()));
    Ok((k, v))
}

/// Scaled dot-product attention with grouped KV heads: `q` `(b, heads, l, d)`,
/// `k`/`v` `(b, kv_heads, kv, d)`, an additive `mask` broadcast to
/// `(b, heads, l, kv)`; returns `(b, l, heads · d)`.
pub fn attention(
    q: &Tensor,
    k: Tensor,
    v: Tensor,
    scale: f64,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let (b, heads, l, d) = q.dims4()?;
    let rep = heads / k.dim(1)?;
    let k = candle_transformers::utils::repeat_kv(k, rep)?.contiguous()?;
    let v = candle_transformers::utils::repeat_kv(v, rep)?.contiguous()?;
    let att = q.matmul(&k.t()?)?;
    let att = if scale != 1.0 { (att * scale)? } else { att };
    let att = match mask {
        Some(m) => att.broadcast_add(m)?,
        None => att,
    };
    let att = candle_nn::ops::softmax_last_dim(&att)?;
    att.matmul(&v)?.transpose(1, 2)?.reshape((b, l, heads * d))
}

/// `[b, seq, n · d]` projections as heads `[b, n, seq, d]`.
pub fn split_heads(t: &Tensor, n: usize, d: usize) -> Result<Tensor> {
    let (b, seq, _) = t.dims3()?;
    t.reshape((b, seq, n, d))?.transpose(1, 2)?.contiguous()
}

/// How attention scores are scaled: the two forms round differently, and
/// each model keeps the one its reference uses.
#[derive(Debug, Clone, Copy)]
pub enum Scale {
    /// `scores / sqrt(head_dim)`.
    DivSqrt(usize),
    /// `scores · (1 / sqrt(head_dim))`.
    MulInvSqrt(usize),
}

/// One sequence's causal attention with a KV cache, for heads `q`, `k`, `v`
/// `[b, heads, seq, d]` (rotary already applied) starting at position
/// `pos`: appends `k`/`v` to `cache` (a new cache at position 0), keeps at
/// most `window + seq` keys on sliding layers (older ones are never
/// attended again), masks keys after each query and, with a window, those
/// `window` or more positions back; returns `[b, seq, heads · d]`.
pub fn cached_attention(
    cache: &mut Option<(Tensor, Tensor)>,
    q: &Tensor,
    k: Tensor,
    v: Tensor,
    pos: usize,
    window: Option<usize>,
    scale: Scale,
) -> Result<Tensor> {
    let (b, n_head, seq, d) = q.dims4()?;
    let (mut k, mut v) = match (&*cache, pos) {
        (Some((kc, vc)), p) if p > 0 => (Tensor::cat(&[kc, &k], 2)?, Tensor::cat(&[vc, &v], 2)?),
        _ => (k, v),
    };
    // Absolute position of the first cached key.
    let Some(mut first) = (pos + seq).checked_sub(k.dim(2)?) else {
        candle_core::bail!(
            "KV cache of {} positions does not end at position {}",
            k.dim(2)?,
            pos + seq
        )
    };
    if let Some(w) = window {
        let keep = w + seq;
        let len = k.dim(2)?;
        if len > keep {
            k = k.narrow(2, len - keep, keep)?;
            v = v.narrow(2, len - keep, keep)?;
            first += len - keep;
        }
    }
    *cache = Some((k.clone(), v.clone()));
    let rep = n_head / k.dim(1)?;
    let k = candle_transformers::utils::repeat_kv(k, rep)?.contiguous()?;
    let v = candle_transformers::utils::repeat_kv(v, rep)?.contiguous()?;
    let scores = q.matmul(&k.t()?)?;
    let mut att = match scale {
        Scale::DivSqrt(d) => (scores / (d as f64).sqrt())?,
        Scale::MulInvSqrt(d) => (scores * (1.0 / (d as f64).sqrt()))?,
    };
    let kv_len = k.dim(2)?;
    if let Some(m) = causal_mask(seq, kv_len, pos, first, window, DType::F32, q.device())? {
        att = att.broadcast_add(&m)?;
    }
    let att = candle_nn::ops::softmax_last_dim(&att)?;
    att.matmul(&v)?
        .transpose(1, 2)?
        .reshape((b, seq, n_head * d))
}
