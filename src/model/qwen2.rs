//! Llama-family decoder from a quantized GGUF file: Qwen2 / Qwen2.5 (q/k/v
//! biases, NeoX rotary pairs), Qwen3 (no biases, RMSNorm of each query and
//! key head before the rotary, a head size of its own) and dense Llama
//! (SmolLM2, no biases, interleaved rotary pairs as llama.cpp's GGUF
//! conversion stores q/k). The same decoder reads Hugging Face safetensors
//! checkpoints of those three (`ModelWeights::from_safetensors`: dense f32
//! weights on the CPU, NeoX pairs as transformers stores q/k), so they get
//! the batched decode and copyable judge prefixes too.
//!
//! The Llama side follows candle-transformers 0.11.1's `quantized_llama`
//! (same computation, checked against llama.cpp's logits in tests/models.rs);
//! mixture-of-experts Llama files stay on candle's implementation.
//!
//! Written for anjeon after candle-transformers 0.11.1's `quantized_qwen2`
//! (MIT OR Apache-2.0, Copyright the Candle authors). The computation is the
//! same; what differs is that the model is `Clone` and its KV cache is plain
//! data, so a judge can fill the cache with the rubric once and start every
//! item from a copy of it (prefix caching: the clone shares the weights and
//! the prefix tensors, and appending creates new tensors), and that the
//! causal mask also covers a chunk that starts after cached positions.

use super::layers::{inv_sqrt, kv_attend, kv_attend_batch, split_heads, Kv, KvPrecision};
use candle_core::quantized::gguf_file;
use candle_core::{Device, IndexOp, Module, Result, Tensor};

use super::qlinear::{QEmbedding, QLinear};

/// Longest context anjeon prepares rotary tables for.
pub const MAX_POSITIONS: usize = 32_768;

#[derive(Clone)]
struct Norm {
    weight: Tensor,
    eps: f32,
}

impl Norm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        candle_nn::ops::rms_norm(&x.contiguous()?, &self.weight, self.eps)
    }
}

#[derive(Clone)]
struct Layer {
    wq: QLinear,
    wk: QLinear,
    wv: QLinear,
    bq: Option<Tensor>,
    bk: Option<Tensor>,
    bv: Option<Tensor>,
    /// NeoX rotary pairs `(i, i + d/2)` (Qwen2) or interleaved `(2i, 2i+1)` (Llama).
    neox: bool,
    /// Qwen3's RMSNorm of each query and key head (before the rotary).
    q_norm: Option<Norm>,
    k_norm: Option<Norm>,
    wo: QLinear,
    attn_norm: Norm,
    ffn_norm: Norm,
    gate: QLinear,
    up: QLinear,
    down: QLinear,
    n_head: usize,
    n_kv: usize,
    head_dim: usize,
    cos: Tensor,
    sin: Tensor,
    cache: Kv,
    /// f16 for GGUF files (as llama.cpp), f32 for safetensors checkpoints
    /// (as transformers).
    kv: KvPrecision,
}

impl Layer {
    fn attention(&mut self, x: &Tensor, pos: usize) -> Result<Tensor> {
        let (q, k, v) = self.project(x)?;
        let mut cache = std::mem::take(&mut self.cache);
        let out = self.attend(&mut cache, &q, &k, &v, pos)?;
        self.cache = cache;
        self.wo.forward(&out)
    }

    /// q, k, v projections `[b, seq, heads · head_dim]` (one matrix product
    /// for every row of every sequence).
    fn project(&self, x: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let lin = |w: &QLinear, b: &Option<Tensor>| -> Result<Tensor> {
            let y = w.forward(x)?;
            match b {
                Some(b) => y.broadcast_add(b),
                None => Ok(y),
            }
        };
        Ok((
            lin(&self.wq, &self.bq)?,
            lin(&self.wk, &self.bk)?,
            lin(&self.wv, &self.bv)?,
        ))
    }

    /// Projections `[b, seq, ·]` as heads `[b, heads, seq, d]`, with
    /// Qwen3's per-head norms.
    fn heads(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let mut q = split_heads(q, self.n_head, self.head_dim)?;
        let mut k = split_heads(k, self.n_kv, self.head_dim)?;
        if let (Some(qn), Some(kn)) = (&self.q_norm, &self.k_norm) {
            q = qn.forward(&q)?;
            k = kn.forward(&k)?;
        }
        Ok((q, k, split_heads(v, self.n_kv, self.head_dim)?))
    }

    fn rope(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        if self.neox {
            candle_nn::rotary_emb::rope(x, cos, sin)
        } else {
            candle_nn::rotary_emb::rope_i(x, cos, sin)
        }
    }

    /// Rotary, KV cache and causal attention for one sequence's projections
    /// starting at position `pos`; returns `[1, seq, heads · head_dim]`
    /// (before the output projection).
    fn attend(
        &self,
        cache: &mut Kv,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        pos: usize,
    ) -> Result<Tensor> {
        let seq = q.dim(1)?;
        let (q, k, v) = self.heads(q, k, v)?;
        let cos = self.cos.narrow(0, pos, seq)?;
        let sin = self.sin.narrow(0, pos, seq)?;
        let q = self.rope(&q, &cos, &sin)?;
        let k = self.rope(&k, &cos, &sin)?;
        kv_attend(cache, &q, k, v, pos, None, inv_sqrt(self.head_dim), self.kv)
    }

    /// [`Layer::attend`] for one new position of each of several sequences:
    /// projections `[n, 1, ·]`, rotary rows `cos`/`sin` `[n, 1, head_dim/2]`
    /// at each sequence's position.
    fn attend_batch(
        &self,
        caches: &mut [&mut Kv],
        (q, k, v): (&Tensor, &Tensor, &Tensor),
        (cos, sin): (&Tensor, &Tensor),
        positions: &[usize],
    ) -> Result<Tensor> {
        let (q, k, v) = self.heads(q, k, v)?;
        let q = self.rope(&q, cos, sin)?;
        let k = self.rope(&k, cos, sin)?;
        kv_attend_batch(
            caches,
            &q,
            &k,
            &v,
            positions,
            None,
            inv_sqrt(self.head_dim),
            self.kv,
        )
    }

    fn mlp(&self, x: &Tensor) -> Result<Tensor> {
        let (g, u) = (self.gate.forward(x)?, self.up.forward(x)?);
        self.down
            .forward(&super::qlinear::glu(anjeon_kernels::Glu::Silu, &g, &u)?)
    }
}

/// One sequence's KV cache: one entry per layer.
pub type KvCache = Vec<Kv>;

/// Checks a batched step's inputs (`forward_batch` of Qwen2/Llama and Gemma 3).
pub(crate) fn check_batch(caches: &[KvCache], tokens: &[u32], positions: &[usize]) -> Result<()> {
    let n = tokens.len();
    if caches.len() != n || positions.len() != n || n == 0 {
        candle_core::bail!(
            "forward_batch: {n} tokens, {} caches, {} positions",
            caches.len(),
            positions.len()
        );
    }
    Ok(())
}

/// Layer `li`'s cache of every sequence.
pub(crate) fn layer_caches(caches: &mut [KvCache], li: usize) -> Result<Vec<&mut Kv>> {
    caches
        .iter_mut()
        .enumerate()
        .map(|(i, c)| match c.get_mut(li) {
            Some(kv) => Ok(kv),
            None => candle_core::bail!("forward_batch: cache {i} has no layer {li}"),
        })
        .collect()
}

/// Rows `positions` of rotary tables `(positions, d/2)`, as `[n, 1, d/2]`
/// (each sequence's own position for a batched decode step).
pub(crate) fn rope_rows(table: &Tensor, positions: &[usize]) -> Result<Tensor> {
    let have = table.dim(0)?;
    if let Some(p) = positions.iter().find(|&&p| p >= have) {
        candle_core::bail!("position {p} is past the rotary table of {have} positions");
    }
    let idx: Vec<u32> = positions.iter().map(|&p| p as u32).collect();
    let idx = Tensor::new(idx.as_slice(), table.device())?;
    table.index_select(&idx, 0)?.unsqueeze(1)
}

/// Rotary `cos` and `sin` tables `(positions, head_dim / 2)`.
fn rope_tables(
    head_dim: usize,
    base: f32,
    positions: usize,
    dev: &Device,
) -> Result<(Tensor, Tensor)> {
    let inv = anjeon_kernels::math::rope_inv_freq(head_dim, base);
    super::layers::rope_tables(&inv, positions, dev)
}

/// What anjeon's decoder reads from a Hugging Face `config.json`
/// (LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM), after the
/// loader's normalisation (a top-level `rope_theta`).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct HfConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default)]
    pub head_dim: Option<usize>,
    pub rms_norm_eps: f64,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    #[serde(default)]
    pub max_position_embeddings: Option<usize>,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub hidden_act: Option<String>,
    #[serde(default)]
    pub attention_bias: Option<bool>,
    #[serde(default)]
    pub mlp_bias: Option<bool>,
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
}

fn default_rope_theta() -> f64 {
    10_000.0
}

impl HfConfig {
    /// Why this checkpoint needs candle's own implementation instead
    /// (`None`: anjeon's decoder computes it exactly).
    pub fn unsupported(&self, arch: &str) -> Option<String> {
        if !matches!(
            arch,
            "LlamaForCausalLM" | "Qwen2ForCausalLM" | "Qwen3ForCausalLM"
        ) {
            return Some(format!("architecture {arch}"));
        }
        if self.hidden_act.as_deref().is_some_and(|a| a != "silu") {
            return Some(format!("hidden_act {:?}", self.hidden_act));
        }
        if let Some(r) = self.rope_scaling.as_ref().filter(|r| !r.is_null()) {
            let kind = r["rope_type"]
                .as_str()
                .or(r["type"].as_str())
                .unwrap_or("?");
            if kind != "default" {
                return Some(format!("rope scaling {kind:?}"));
            }
        }
        // Llama's attention_bias also puts a bias on o_proj, and mlp_bias
        // on the MLP: not in this decoder.
        if arch == "LlamaForCausalLM"
            && (self.attention_bias == Some(true) || self.mlp_bias == Some(true))
        {
            return Some("Llama attention/MLP biases".into());
        }
        None
    }
}

#[derive(Clone)]
pub struct ModelWeights {
    embed: QEmbedding,
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
        let arch = ct
            .metadata
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_else(|| "qwen2".into());
        let neox = match arch.as_str() {
            "qwen2" | "qwen3" => true,
            "llama" => false,
            other => candle_core::bail!("architecture {other} is not a Llama/Qwen decoder"),
        };
        let get = |k: &str| {
            ct.metadata
                .get(&format!("{arch}.{k}"))
                .ok_or_else(|| candle_core::Error::Msg(format!("GGUF metadata {arch}.{k} missing")))
        };
        let n_head = get("attention.head_count")?.to_u32()? as usize;
        let n_kv = get("attention.head_count_kv")?.to_u32()? as usize;
        let n_layer = get("block_count")?.to_u32()? as usize;
        let hidden = get("embedding_length")?.to_u32()? as usize;
        let eps = get("attention.layer_norm_rms_epsilon")?.to_f32()?;
        let base = get("rope.freq_base")
            .and_then(|v| v.to_f32())
            .unwrap_or(10_000.0);
        let ctx = get("context_length")
            .and_then(|v| v.to_u32())
            .unwrap_or(32_768) as usize;
        // Qwen3 states its head size (it need not be hidden / heads).
        let key_length = get("attention.key_length").and_then(|v| v.to_u32()).ok();
        if n_head == 0
            || n_kv == 0
            || !n_head.is_multiple_of(n_kv)
            || (key_length.is_none() && !hidden.is_multiple_of(n_head))
            || key_length == Some(0)
        {
            candle_core::bail!(
                "GGUF metadata: {n_head} attention heads and {n_kv} key/value heads do not fit {hidden} features"
            );
        }
        let head_dim = key_length.map_or(hidden / n_head, |d| d as usize);
        if let Ok(rd) = get("rope.dimension_count").and_then(|v| v.to_u32()) {
            if rd as usize != head_dim {
                candle_core::bail!("GGUF metadata: rotary dimension {rd} differs from the head size {head_dim} (partial rotary is not supported)");
            }
        }
        let (cos, sin) = rope_tables(head_dim, base, ctx.min(MAX_POSITIONS), dev)?;

        let (embed, output) = super::qlinear::embeddings_and_output(&ct, r, dev, hidden)?;
        let norm = |r: &mut R, name: &str| -> Result<Norm> {
            Ok(Norm {
                weight: ct.tensor(r, name, dev)?.dequantize(dev)?,
                eps,
            })
        };
        let final_norm = norm(r, "output_norm.weight")?;
        let mut layers = Vec::with_capacity(n_layer);
        for i in 0..n_layer {
            let p = format!("blk.{i}");
            let qm = |r: &mut R, n: &str| -> Result<QLinear> {
                let name = format!("{p}.{n}.weight");
                QLinear::load(&ct, r, &name, dev)
            };
            let head_norm = |r: &mut R, n: &str| -> Result<Option<Norm>> {
                let name = format!("{p}.{n}.weight");
                match (arch.as_str(), ct.tensor_infos.contains_key(&name)) {
                    ("qwen3", true) => Ok(Some(norm(r, &name)?)),
                    ("qwen3", false) => candle_core::bail!("GGUF tensor {name} missing"),
                    _ => Ok(None),
                }
            };
            let bias = |r: &mut R, n: &str| -> Result<Option<Tensor>> {
                let name = format!("{p}.{n}.bias");
                if !ct.tensor_infos.contains_key(&name) {
                    return Ok(None);
                }
                Ok(Some(ct.tensor(r, &name, dev)?.dequantize(dev)?))
            };
            layers.push(Layer {
                wq: qm(r, "attn_q")?,
                wk: qm(r, "attn_k")?,
                wv: qm(r, "attn_v")?,
                bq: bias(r, "attn_q")?,
                bk: bias(r, "attn_k")?,
                bv: bias(r, "attn_v")?,
                neox,
                q_norm: head_norm(r, "attn_q_norm")?,
                k_norm: head_norm(r, "attn_k_norm")?,
                wo: qm(r, "attn_output")?,
                attn_norm: norm(r, &format!("{p}.attn_norm.weight"))?,
                ffn_norm: norm(r, &format!("{p}.ffn_norm.weight"))?,
                gate: qm(r, "ffn_gate")?,
                up: qm(r, "ffn_up")?,
                down: qm(r, "ffn_down")?,
                n_head,
                n_kv,
                head_dim,
                cos: cos.clone(),
                sin: sin.clone(),
                cache: Kv::Empty,
                kv: KvPrecision::F16,
            });
        }
        Ok(ModelWeights {
            embed,
            layers,
            norm: final_norm,
            output,
        })
    }

    /// A Hugging Face checkpoint (`vb` over its safetensors files, f32 on
    /// the CPU) of `arch` (LlamaForCausalLM, Qwen2ForCausalLM or
    /// Qwen3ForCausalLM; see [`HfConfig::unsupported`]).
    pub fn from_safetensors(vb: candle_nn::VarBuilder, c: &HfConfig, arch: &str) -> Result<Self> {
        if let Some(why) = c.unsupported(arch) {
            candle_core::bail!("anjeon's decoder does not cover {why}");
        }
        let dev = vb.device().clone();
        let h = c.hidden_size;
        let n_head = c.num_attention_heads;
        let n_kv = c.num_key_value_heads.unwrap_or(n_head);
        if n_head == 0 || n_kv == 0 || !n_head.is_multiple_of(n_kv) {
            candle_core::bail!("config.json: {n_head} attention heads and {n_kv} key/value heads");
        }
        let head_dim = c.head_dim.unwrap_or(h / n_head);
        let ctx = c.max_position_embeddings.unwrap_or(32_768);
        let (cos, sin) = rope_tables(head_dim, c.rope_theta as f32, ctx.min(MAX_POSITIONS), &dev)?;
        let eps = c.rms_norm_eps as f32;
        let vm = vb.pp("model");
        let table = vm.get((c.vocab_size, h), "embed_tokens.weight")?;
        let (embed, output) = if !c.tie_word_embeddings && vb.contains_tensor("lm_head.weight") {
            let output = QLinear::dense(vb.get((c.vocab_size, h), "lm_head.weight")?)?;
            (QEmbedding::dense(table, h), output)
        } else {
            // Tied: on the dense kernel the embedding reads its rows from
            // the output layer's panels (one table in memory).
            let output = QLinear::dense(table.clone())?;
            match output.dense_panels() {
                Some(d) => (QEmbedding::from_panels(d), output),
                None => (QEmbedding::dense(table, h), output),
            }
        };
        let norm = |v: candle_nn::VarBuilder, n: usize| -> Result<Norm> {
            Ok(Norm {
                weight: v.get(n, "weight")?,
                eps,
            })
        };
        let lin = |v: candle_nn::VarBuilder, out: usize, inp: usize| -> Result<QLinear> {
            QLinear::dense(v.get((out, inp), "weight")?)
        };
        let qwen2 = arch == "Qwen2ForCausalLM";
        let qwen3 = arch == "Qwen3ForCausalLM";
        // Qwen2 always has q/k/v biases; Qwen3 when attention_bias says so.
        let biased = qwen2 || (qwen3 && c.attention_bias == Some(true));
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let vl = vm.pp(format!("layers.{i}"));
            let va = vl.pp("self_attn");
            let vp = vl.pp("mlp");
            let bias = |n: &str, len: usize| -> Result<Option<Tensor>> {
                if biased {
                    Ok(Some(va.pp(n).get(len, "bias")?))
                } else {
                    Ok(None)
                }
            };
            layers.push(Layer {
                wq: lin(va.pp("q_proj"), n_head * head_dim, h)?,
                wk: lin(va.pp("k_proj"), n_kv * head_dim, h)?,
                wv: lin(va.pp("v_proj"), n_kv * head_dim, h)?,
                bq: bias("q_proj", n_head * head_dim)?,
                bk: bias("k_proj", n_kv * head_dim)?,
                bv: bias("v_proj", n_kv * head_dim)?,
                neox: true,
                q_norm: if qwen3 {
                    Some(norm(va.pp("q_norm"), head_dim)?)
                } else {
                    None
                },
                k_norm: if qwen3 {
                    Some(norm(va.pp("k_norm"), head_dim)?)
                } else {
                    None
                },
                wo: lin(va.pp("o_proj"), h, n_head * head_dim)?,
                attn_norm: norm(vl.pp("input_layernorm"), h)?,
                ffn_norm: norm(vl.pp("post_attention_layernorm"), h)?,
                gate: lin(vp.pp("gate_proj"), c.intermediate_size, h)?,
                up: lin(vp.pp("up_proj"), c.intermediate_size, h)?,
                down: lin(vp.pp("down_proj"), h, c.intermediate_size)?,
                n_head,
                n_kv,
                head_dim,
                cos: cos.clone(),
                sin: sin.clone(),
                cache: Kv::Empty,
                kv: KvPrecision::F32,
            });
        }
        Ok(ModelWeights {
            embed,
            layers,
            norm: norm(vm.pp("norm"), h)?,
            output,
        })
    }

    pub fn clear_kv_cache(&mut self) {
        for l in &mut self.layers {
            l.cache = Kv::Empty;
        }
    }

    /// Move the KV cache out (one entry per layer), leaving the model empty.
    pub fn take_cache(&mut self) -> KvCache {
        self.layers
            .iter_mut()
            .map(|l| std::mem::take(&mut l.cache))
            .collect()
    }

    /// One decode step for several independent sequences: `tokens[i]` at
    /// position `positions[i]` with KV cache `caches[i]` (from
    /// [`ModelWeights::take_cache`] after that sequence's prefill). The
    /// linear layers run once over all the rows; attention runs per
    /// sequence. Every operation is row-wise, so each sequence's logits are
    /// bit-identical to decoding it alone. Returns `[n, vocab]`.
    pub fn forward_batch(
        &self,
        caches: &mut [KvCache],
        tokens: &[u32],
        positions: &[usize],
    ) -> Result<Tensor> {
        check_batch(caches, tokens, positions)?;
        let dev = self.output_device();
        let ids = Tensor::new(tokens, &dev)?.unsqueeze(1)?;
        let mut x = self.embed.forward(&ids)?;
        let rope = match self.layers.first() {
            Some(l) => (rope_rows(&l.cos, positions)?, rope_rows(&l.sin, positions)?),
            None => candle_core::bail!("a model without layers"),
        };
        for (li, l) in self.layers.iter().enumerate() {
            let (q, k, v) = l.project(&l.attn_norm.forward(&x)?)?;
            let o = l.attend_batch(
                &mut layer_caches(caches, li)?,
                (&q, &k, &v),
                (&rope.0, &rope.1),
                positions,
            )?;
            let a = l.wo.forward(&o)?;
            x = (x + a)?;
            let m = l.mlp(&l.ffn_norm.forward(&x)?)?;
            x = (x + m)?;
        }
        let x = self.norm.forward(&x)?;
        self.output.forward(&x)?.squeeze(1)
    }

    /// Several continuations of this model's cached prompt at once: the
    /// tokens of every sequence in `seqs` (each continuing the cache from
    /// position `pos`) go through the linear layers together; attention runs
    /// per sequence over the cache and its own tokens. The cache is read, not
    /// changed. Returns the logits of each sequence's last token `[n, vocab]`,
    /// each bit-identical to running that sequence alone (every operation is
    /// row-wise; see `packed_prefill_equals_one_at_a_time`).
    pub fn forward_packed(&self, seqs: &[&[u32]], pos: usize) -> Result<Tensor> {
        let (ids, spans) = super::layers::pack(seqs)?;
        let dev = self.output_device();
        let ids = Tensor::new(ids.as_slice(), &dev)?.unsqueeze(0)?;
        let mut x = self.embed.forward(&ids)?;
        for l in &self.layers {
            let (q, k, v) = l.project(&l.attn_norm.forward(&x)?)?;
            let o = super::layers::attend_spans(&spans, &l.cache, (&q, &k, &v), |c, q, k, v| {
                l.attend(c, q, k, v, pos)
            })?;
            let a = l.wo.forward(&o)?;
            x = (x + a)?;
            let m = l.mlp(&l.ffn_norm.forward(&x)?)?;
            x = (x + m)?;
        }
        let x = self.norm.forward(&super::layers::last_rows(&x, &spans)?)?;
        self.output.forward(&x)?.squeeze(0)
    }

    fn output_device(&self) -> Device {
        self.norm.weight.device().clone()
    }

    /// Logits of the last position: `[batch, vocab]`.
    pub fn forward(&mut self, ids: &Tensor, pos: usize) -> Result<Tensor> {
        let (_, seq) = ids.dims2()?;
        let mut x = self.embed.forward(&ids.contiguous()?)?;
        for l in &mut self.layers {
            let a = l.attention(&l.attn_norm.forward(&x)?, pos)?;
            x = (x + a)?;
            let m = l.mlp(&l.ffn_norm.forward(&x)?)?;
            x = (x + m)?;
        }
        let x = self.norm.forward(&x.i((.., seq - 1..seq, ..))?)?;
        self.output.forward(&x)?.squeeze(1)
    }
}
