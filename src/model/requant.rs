//! Load-time re-quantization of GGUF tensors whose formats candle 0.11 runs
//! with scalar CPU code only (Q4_1, Q5_0, Q5_1) to Q8_0, which has SIMD
//! kernels. Measured on this project's 2-core machine: Qwen2.5-Coder-0.5B
//! (mostly Q5_0) prefill and decode get much faster (see docs/speed.md's speed
//! table). The weights change slightly (Q8_0 rounding of the dequantized
//! values), so this is recorded in the model fingerprint and can be turned
//! off (`--requantize off`) for exact file semantics.

use std::collections::HashMap;
use std::io::Cursor;

use candle_core::quantized::gguf_file::{Content, TensorInfo};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Result};

/// True for the formats that are re-quantized.
pub fn is_slow(d: GgmlDType) -> bool {
    matches!(d, GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1)
}

/// Whether a file has tensors that would be re-quantized.
pub fn needed(ct: &Content) -> bool {
    ct.tensor_infos.values().any(|t| is_slow(t.ggml_dtype))
}

/// Rewrite the file's tensors into memory, re-quantizing slow formats to Q8_0.
/// Returns a new content description and a reader over the new tensor data.
pub fn to_q8<R: std::io::Read + std::io::Seek>(
    ct: Content,
    reader: &mut R,
) -> Result<(Content, Cursor<Vec<u8>>)> {
    let cpu = Device::Cpu;
    let mut names: Vec<String> = ct.tensor_infos.keys().cloned().collect();
    names.sort();
    let mut buf: Vec<u8> = Vec::new();
    let mut infos = HashMap::with_capacity(names.len());
    for name in names {
        let info = &ct.tensor_infos[&name];
        let q = ct.tensor(reader, &name, &cpu)?;
        let last = info.shape.dims().last().copied().unwrap_or(0);
        let q = if is_slow(info.ggml_dtype) && last % 32 == 0 {
            QTensor::quantize(&q.dequantize(&cpu)?, GgmlDType::Q8_0)?
        } else {
            q
        };
        while !buf.len().is_multiple_of(64) {
            buf.push(0);
        }
        let offset = buf.len() as u64;
        buf.extend_from_slice(&q.data()?);
        infos.insert(
            name,
            TensorInfo {
                ggml_dtype: q.dtype(),
                shape: info.shape.clone(),
                offset,
            },
        );
    }
    let content = Content {
        magic: ct.magic,
        metadata: ct.metadata,
        tensor_infos: infos,
        tensor_data_offset: 0,
    };
    Ok((content, Cursor::new(buf)))
}
