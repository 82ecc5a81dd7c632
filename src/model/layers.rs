//! Pieces the safetensors model files share (Qwen3-VL, Gemma 4, Voxtral).

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
