//! Linear layers and token embeddings for the GGUF and safetensors models,
//! on anjeon's own kernels (`anjeon-kernels`) when the tensors live on the
//! CPU in a type they cover (the GGUF block formats; f32, f16 and bf16), and
//! on candle's `QMatMul` otherwise (GPU devices, and the formats the kernels
//! lack — with a warning naming the tensor, so a slow or unusual path is
//! never silent).
//!
//! The weights are kept once: the row-by-row kernels read the bytes candle
//! loaded; the repacked layouts replace them.

use std::sync::Arc;

use anjeon_kernels::Format;
use candle_core::quantized::{gguf_file, GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Result, Storage, Tensor};

/// The kernels' format for a GGUF tensor type, if they cover it.
pub fn kernel_format(d: GgmlDType) -> Option<Format> {
    Some(match d {
        GgmlDType::Q4_0 => Format::Q4_0,
        GgmlDType::Q4_1 => Format::Q4_1,
        GgmlDType::Q5_0 => Format::Q5_0,
        GgmlDType::Q5_1 => Format::Q5_1,
        GgmlDType::Q8_0 => Format::Q8_0,
        GgmlDType::Q4K => Format::Q4K,
        GgmlDType::Q5K => Format::Q5K,
        GgmlDType::Q6K => Format::Q6K,
        _ => None?,
    })
}

/// `ANJEON_KERNELS=off`: every layer on candle's `QMatMul` (to compare, or
/// to rule the kernels out when something looks wrong).
pub fn kernels_off() -> bool {
    std::env::var("ANJEON_KERNELS").is_ok_and(|v| v == "off")
}

/// Whether a GGUF tensor type is a plain float type (the dense kernel runs
/// those on the CPU).
fn is_float(d: GgmlDType) -> bool {
    matches!(d, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16)
}

/// `kernels` when this tensor runs on anjeon's kernels.
#[derive(Clone)]
struct Kernel {
    format: Format,
    q: Arc<QTensor>,
    n: usize,
    k: usize,
}

impl Kernel {
    fn new(q: &Arc<QTensor>, name: &str) -> Option<Kernel> {
        let (n, k) = q.shape().dims2().ok()?;
        if !matches!(q.device(), Device::Cpu) || kernels_off() {
            return None;
        }
        let format = match kernel_format(q.dtype()) {
            Some(f) if k % f.block_elems() == 0 => f,
            _ => {
                if !is_float(q.dtype()) {
                    log::warn!(
                        "{name}: {:?} has no anjeon kernel; using candle's slower path",
                        q.dtype()
                    );
                }
                return None;
            }
        };
        Some(Kernel {
            format,
            q: q.clone(),
            n,
            k,
        })
    }

    fn bytes(&self) -> Result<&[u8]> {
        match self.q.data()? {
            std::borrow::Cow::Borrowed(b) => Ok(b),
            // CPU storage is always borrowed; anything else is a bug here.
            std::borrow::Cow::Owned(_) => candle_core::bail!("kernel weights are not on the CPU"),
        }
    }
}

/// `y = x · Wᵀ` with `W` a GGUF tensor or a dense tensor `[out, in]`.
#[derive(Clone)]
pub struct QLinear {
    w: Weights,
}

/// Where a layer's product runs.
#[derive(Clone)]
enum Weights {
    /// The 32-weight formats, repacked at load into interleaved groups of 8
    /// rows (same bytes, reordered; the file's tensor is then dropped).
    Packed(Arc<anjeon_kernels::Packed>),
    /// The file's blocks, read row by row by the kernels (no copy).
    Rows(Kernel),
    /// f32/f16/bf16 weights, repacked into panels in their own type.
    Dense(Arc<anjeon_kernels::Dense>),
    /// candle's product: GPU devices, formats the kernels lack,
    /// `ANJEON_KERNELS=off`.
    Candle(QMatMul),
}

/// Dense CPU weights for the kernels, in the tensor's own type (read from
/// its storage: the panels are the one copy made).
fn dense_kernel(w: &Tensor) -> Result<Option<anjeon_kernels::Dense>> {
    use anjeon_kernels::Dense;
    if !matches!(w.device(), Device::Cpu) || kernels_off() {
        return Ok(None);
    }
    let Ok((n, k)) = w.dims2() else {
        return Ok(None);
    };
    let w = w.contiguous()?;
    let d = match w.dtype() {
        DType::F32 => with_cpu_slice(&w, |v| Ok(Dense::from_f32(v, n, k)))?,
        DType::F16 => with_cpu_slice(&w, |v| Ok(Dense::from_f16(v, n, k)))?,
        DType::BF16 => with_cpu_slice(&w, |v| Ok(Dense::from_bf16(v, n, k)))?,
        _ => return Ok(None),
    };
    d.map(Some)
        .map_err(|e| candle_core::Error::Msg(e.to_string()))
}

/// A GGUF f32/f16/bf16 matrix for the dense kernel, in its own type (an
/// f16 table stays f16).
fn dense_from_gguf(q: &QTensor, name: &str) -> Result<Option<anjeon_kernels::Dense>> {
    let dtype = match q.dtype() {
        GgmlDType::F32 => DType::F32,
        GgmlDType::F16 => DType::F16,
        GgmlDType::BF16 => DType::BF16,
        _ => return Ok(None),
    };
    let t = Tensor::from_raw_buffer(&q.data()?, dtype, q.shape().dims(), &Device::Cpu)?;
    dense_kernel(&t).map_err(|e| candle_core::Error::Msg(format!("{name}: {e}")))
}

impl QLinear {
    /// `name` is only used in the warning for formats without a kernel.
    /// The tensor is repacked where the format allows (and then dropped).
    pub fn new(q: QTensor, name: &str) -> Result<QLinear> {
        Self::new_shared(Arc::new(q), name)
    }

    /// A dense weight `[out, in]` (f32, f16 or bf16): on the CPU, repacked
    /// for anjeon's dense kernel (the caller's tensor can then be dropped);
    /// elsewhere candle's matrix product, no copy.
    pub fn dense(w: Tensor) -> Result<QLinear> {
        let w = match dense_kernel(&w)? {
            Some(d) => Weights::Dense(Arc::new(d)),
            None => Weights::Candle(QMatMul::Tensor(w)),
        };
        Ok(QLinear { w })
    }

    /// As [`QLinear::new`]; a tensor that is not repacked stays shared with
    /// the caller's `Arc` (no copy).
    pub fn new_shared(q: Arc<QTensor>, name: &str) -> Result<QLinear> {
        if is_float(q.dtype()) && matches!(q.device(), Device::Cpu) && !kernels_off() {
            if let Some(d) = dense_from_gguf(&q, name)? {
                return Ok(QLinear {
                    w: Weights::Dense(Arc::new(d)),
                });
            }
        }
        let w = match Kernel::new(&q, name) {
            Some(kn) if anjeon_kernels::repackable(kn.format) && !kernels_unpacked() => {
                let p = anjeon_kernels::Packed::new(kn.format, kn.bytes()?, kn.n, kn.k)
                    .map_err(|e| candle_core::Error::Msg(format!("{name}: {e}")))?;
                Weights::Packed(Arc::new(p))
            }
            Some(kn) => Weights::Rows(kn),
            None => Weights::Candle(QMatMul::from_arc(q)?),
        };
        Ok(QLinear { w })
    }

    /// Tensor `name` of a GGUF file. A tensor that will be repacked is
    /// streamed from the file into the interleaved layout 8 rows at a time,
    /// so loading never holds the file's matrix and its repacked copy
    /// together (a 262k-token Q8_0 table is 178 MB); others are read whole.
    pub fn load<R: std::io::Read + std::io::Seek>(
        ct: &gguf_file::Content,
        r: &mut R,
        name: &str,
        dev: &Device,
    ) -> Result<QLinear> {
        let Some(info) = ct.tensor_infos.get(name) else {
            candle_core::bail!("GGUF tensor {name} missing");
        };
        let stream = matches!(dev, Device::Cpu) && !kernels_off() && !kernels_unpacked();
        let fmt = kernel_format(info.ggml_dtype).filter(|f| anjeon_kernels::repackable(*f));
        if let (true, Some(f), Ok((n, k))) = (stream, fmt, info.shape.dims2()) {
            if k.is_multiple_of(f.block_elems()) {
                let start = ct.tensor_data_offset.saturating_add(info.offset);
                let rb = f.row_bytes(k) as u64;
                let end = r.seek(std::io::SeekFrom::End(0))?;
                let need = start.saturating_add(rb.saturating_mul(n as u64));
                if need > end {
                    candle_core::bail!(
                        "tensor {name} needs bytes up to offset {need}, the file ends at {end}"
                    );
                }
                let p = anjeon_kernels::Packed::from_rows(f, n, k, |row, buf| {
                    r.seek(std::io::SeekFrom::Start(start + row as u64 * rb))?;
                    r.read_exact(buf)
                })
                .map_err(|e| candle_core::Error::Msg(format!("{name}: {e}")))?;
                return Ok(QLinear {
                    w: Weights::Packed(Arc::new(p)),
                });
            }
        }
        QLinear::new(ct.tensor(r, name, dev)?, name)
    }

    /// The file's tensor, when this layer kept it (not repacked).
    fn tensor(&self) -> Option<Arc<QTensor>> {
        match &self.w {
            Weights::Rows(k) => Some(k.q.clone()),
            Weights::Candle(QMatMul::QTensor(q)) => Some(q.clone()),
            _ => None,
        }
    }

    /// The repacked weights, when this layer has them (a tied token
    /// embedding reads its rows from them).
    pub fn packed(&self) -> Option<Arc<anjeon_kernels::Packed>> {
        match &self.w {
            Weights::Packed(p) => Some(p.clone()),
            _ => None,
        }
    }

    /// The dense kernel's panels, when this layer has them (as
    /// [`QLinear::packed`]).
    pub fn dense_panels(&self) -> Option<Arc<anjeon_kernels::Dense>> {
        match &self.w {
            Weights::Dense(d) => Some(d.clone()),
            _ => None,
        }
    }

    /// Whether anjeon's kernels run this layer.
    pub fn on_kernels(&self) -> bool {
        !matches!(self.w, Weights::Candle(_))
    }
}

/// `ANJEON_KERNELS=rows`: the row-by-row kernels only, no repacking.
fn kernels_unpacked() -> bool {
    std::env::var("ANJEON_KERNELS").is_ok_and(|v| v == "rows")
}

/// The values of a contiguous CPU tensor of element type `D`, without a copy.
fn with_cpu_slice<D: candle_core::WithDType, T>(
    x: &Tensor,
    f: impl FnOnce(&[D]) -> Result<T>,
) -> Result<T> {
    let (storage, layout) = x.storage_and_layout();
    match &*storage {
        Storage::Cpu(cpu) => {
            let all = cpu.as_slice::<D>()?;
            let start = layout.start_offset();
            f(&all[start..start + layout.shape().elem_count()])
        }
        _ => candle_core::bail!("expected a CPU tensor"),
    }
}

impl Module for QLinear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (wn, wk) = match &self.w {
            Weights::Packed(p) => (p.rows(), p.cols()),
            Weights::Rows(kn) => (kn.n, kn.k),
            Weights::Dense(d) => (d.rows(), d.cols()),
            Weights::Candle(f) => return f.forward(x),
        };
        if !matches!(x.device(), Device::Cpu) {
            candle_core::bail!("QLinear: CPU kernel weights given a {:?} input", x.device());
        }
        let dims = x.dims().to_vec();
        let Some((&k, lead)) = dims.split_last() else {
            candle_core::bail!("QLinear: a scalar input");
        };
        if k != wk {
            candle_core::bail!("QLinear: input has {k} features, the weight {wk}");
        }
        let x = x.to_dtype(DType::F32)?.contiguous()?;
        let m: usize = lead.iter().product();
        let mut y = vec![0f32; m * wn];
        with_cpu_slice::<f32, _>(&x, |xs| {
            let r = match &self.w {
                Weights::Packed(p) => p.matmul(xs, &mut y),
                Weights::Rows(kn) => {
                    anjeon_kernels::matmul(kn.format, kn.bytes()?, kn.n, kn.k, xs, &mut y)
                }
                Weights::Dense(d) => d.matmul(xs, &mut y),
                Weights::Candle(_) => unreachable!("returned above"),
            };
            r.map_err(|e| candle_core::Error::Msg(e.to_string()))
        })?;
        let mut shape = lead.to_vec();
        shape.push(wn);
        Tensor::from_vec(y, shape, &Device::Cpu)
    }
}

/// `act(gate) · up` of a gated MLP: anjeon's kernel on the CPU (one pass,
/// SIMD, threads for prompts), candle's ops elsewhere.
pub fn glu(kind: anjeon_kernels::Glu, gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    let cpu = |t: &Tensor| matches!(t.device(), Device::Cpu) && t.dtype() == DType::F32;
    if !(cpu(gate) && cpu(up)) || gate.dims() != up.dims() {
        let a = match kind {
            anjeon_kernels::Glu::Silu => candle_nn::ops::silu(gate)?,
            anjeon_kernels::Glu::GeluTanh => gate.gelu()?,
        };
        return a * up;
    }
    let mut g = gate.flatten_all()?.to_vec1::<f32>()?;
    with_cpu_slice::<f32, _>(&up.contiguous()?, |u| {
        anjeon_kernels::glu(kind, &mut g, u).map_err(|e| candle_core::Error::Msg(e.to_string()))
    })?;
    Tensor::from_vec(g, gate.dims(), &Device::Cpu)
}

/// A token-embedding table that stays quantized: only the rows looked up are
/// dequantized (a 150k-token vocabulary in f32 would be 0.5–1 GB).
#[derive(Clone)]
pub struct QEmbedding {
    table: Table,
    hidden: usize,
}

#[derive(Clone)]
enum Table {
    Quantized(Format, Arc<QTensor>),
    Packed(Arc<anjeon_kernels::Packed>),
    Panels(Arc<anjeon_kernels::Dense>),
    Dense(candle_nn::Embedding),
}

impl QEmbedding {
    pub fn new(q: Arc<QTensor>, hidden: usize) -> Result<QEmbedding> {
        let table = match (kernel_format(q.dtype()), q.device()) {
            (Some(f), Device::Cpu) if hidden.is_multiple_of(f.block_elems()) => {
                Table::Quantized(f, q)
            }
            _ => Table::Dense(candle_nn::Embedding::new(
                q.dequantize(&q.device())?,
                hidden,
            )),
        };
        Ok(QEmbedding { table, hidden })
    }

    /// A dense table `[vocab, hidden]` (safetensors checkpoints).
    pub fn dense(table: Tensor, hidden: usize) -> QEmbedding {
        QEmbedding {
            table: Table::Dense(candle_nn::Embedding::new(table, hidden)),
            hidden,
        }
    }

    /// Token embeddings tied to an output layer that was repacked: rows
    /// are read from the repacked table (bit-identical), one copy in memory.
    pub fn from_packed(p: Arc<anjeon_kernels::Packed>) -> QEmbedding {
        let hidden = p.cols();
        QEmbedding {
            table: Table::Packed(p),
            hidden,
        }
    }

    /// Token embeddings tied to an output layer on the dense kernel: rows
    /// are read from its panels (exact), one copy in memory.
    pub fn from_panels(d: Arc<anjeon_kernels::Dense>) -> QEmbedding {
        let hidden = d.cols();
        QEmbedding {
            table: Table::Panels(d),
            hidden,
        }
    }

    /// `ids` `[b, l]` (u32) → `[b, l, hidden]` f32.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let gather = |rows: usize,
                      row: &dyn Fn(usize, &mut [f32]) -> Result<()>|
         -> Result<Tensor> {
            let idx = ids.flatten_all()?.to_vec1::<u32>()?;
            let mut out = vec![0f32; idx.len() * self.hidden];
            for (o, &t) in out.chunks_exact_mut(self.hidden).zip(&idx) {
                let t = t as usize;
                if t >= rows {
                    candle_core::bail!("token id {t} is outside the embedding table ({rows} rows)");
                }
                row(t, o)?;
            }
            let mut shape = ids.dims().to_vec();
            shape.push(self.hidden);
            Tensor::from_vec(out, shape, &Device::Cpu)
        };
        match &self.table {
            Table::Dense(e) => e.forward(ids),
            Table::Packed(p) => gather(p.rows(), &|t, o| {
                p.dequantize_row(t, o)
                    .map_err(|e| candle_core::Error::Msg(e.to_string()))
            }),
            Table::Panels(d) => gather(d.rows(), &|t, o| {
                d.row(t, o)
                    .map_err(|e| candle_core::Error::Msg(e.to_string()))
            }),
            Table::Quantized(f, q) => {
                let data = q.data()?;
                let rb = f.row_bytes(self.hidden);
                gather(q.shape().dims2()?.0, &|t, o| {
                    anjeon_kernels::dequantize_row(*f, &data[t * rb..(t + 1) * rb], o);
                    Ok(())
                })
            }
        }
    }
}

/// Token embeddings and output layer of a GGUF decoder. With an
/// `output.weight` each has its own tensor; with tied embeddings one table
/// serves both, and when the output layer is repacked the embedding reads its
/// rows from the repacked copy (one table in memory either way).
pub fn embeddings_and_output<R: std::io::Read + std::io::Seek>(
    ct: &candle_core::quantized::gguf_file::Content,
    r: &mut R,
    dev: &Device,
    hidden: usize,
) -> Result<(QEmbedding, QLinear)> {
    const EMBD: &str = "token_embd.weight";
    if ct.tensor_infos.contains_key("output.weight") {
        let embed = QEmbedding::new(Arc::new(ct.tensor(r, EMBD, dev)?), hidden)?;
        return Ok((embed, QLinear::load(ct, r, "output.weight", dev)?));
    }
    let out = QLinear::load(ct, r, EMBD, dev)?;
    let embed = match (out.packed(), out.dense_panels(), out.tensor()) {
        (Some(p), _, _) => QEmbedding::from_packed(p),
        (None, Some(d), _) => QEmbedding::from_panels(d),
        (None, None, Some(q)) => QEmbedding::new(q, hidden)?,
        // A layer always keeps one or the other; read the table again
        // rather than fail if that ever changes.
        (None, None, None) => QEmbedding::new(Arc::new(ct.tensor(r, EMBD, dev)?), hidden)?,
    };
    Ok((embed, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// GGUF f32/f16/bf16 matrices run on the dense kernel in their own type
    /// (half the bytes for f16/bf16), give the kernel's contract (one fused
    /// chain per output), and a tied table reads its rows back exactly.
    #[test]
    fn float_tensors_run_on_the_dense_kernel_in_their_own_type() {
        let dev = Device::Cpu;
        let (n, k, m) = (37, 40, 5);
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 7919 % 251) as f32 - 125.0) / 250.0)
            .collect();
        let x: Vec<f32> = (0..m * k).map(|i| ((i % 17) as f32 - 8.0) / 8.0).collect();
        let xt = Tensor::from_vec(x.clone(), (m, k), &dev).unwrap();
        for (dt, size) in [
            (GgmlDType::F32, 4),
            (GgmlDType::F16, 2),
            (GgmlDType::BF16, 2),
        ] {
            let wt = Tensor::from_vec(w.clone(), (n, k), &dev).unwrap();
            let q = QTensor::quantize(&wt, dt).unwrap();
            let exact = q.dequantize(&dev).unwrap().to_vec2::<f32>().unwrap();
            let l = QLinear::new(q, "t").unwrap();
            assert!(l.on_kernels(), "{dt:?}");
            let d = l.dense_panels().expect("the dense kernel");
            assert_eq!(d.bytes(), n.div_ceil(16) * 16 * k * size, "{dt:?}");
            let y = l.forward(&xt).unwrap().to_vec2::<f32>().unwrap();
            for (r, yr) in y.iter().enumerate() {
                for (c, &v) in yr.iter().enumerate() {
                    let s = (0..k).fold(0f32, |s, i| x[r * k + i].mul_add(exact[c][i], s));
                    assert_eq!(v.to_bits(), s.to_bits(), "{dt:?} ({r}, {c})");
                }
            }
            let ids = Tensor::new(&[[3u32, 36, 0]], &dev).unwrap();
            let rows = QEmbedding::from_panels(d).forward(&ids).unwrap();
            let rows = rows.squeeze(0).unwrap().to_vec2::<f32>().unwrap();
            assert_eq!(
                rows,
                vec![exact[3].clone(), exact[36].clone(), exact[0].clone()]
            );
        }
    }
}
