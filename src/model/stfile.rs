//! Safetensors weights read from their files tensor by tensor, for models
//! whose tensors live in candle's own CPU storage.
//!
//! candle's memory-mapped loader copies every tensor out of the mapping, and
//! the mapping stays alive (and its touched pages resident) until the whole
//! model is built: a peak of twice the file (three times for a bf16 file
//! widened to f32). Reading each tensor with positioned reads straight into
//! the buffer its tensor keeps leaves the file's bytes in the page cache,
//! not in the process: the peak is the model plus one tensor.

use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Result, Shape, Tensor};

/// One tensor's place: file, dtype, shape and absolute byte range.
#[derive(Debug, Clone)]
struct Entry {
    file: usize,
    dtype: DType,
    shape: Vec<usize>,
    start: u64,
    end: u64,
}

/// The tensors of one or more `.safetensors` files (a sharded checkpoint).
pub struct SafetensorsFiles {
    files: Vec<(PathBuf, std::fs::File)>,
    tensors: HashMap<String, Entry>,
}

fn bad(path: &Path, what: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Msg(format!(
        "{}: {what} (the file may be truncated or corrupt: check its sha256 or fetch it again)",
        path.display()
    ))
}

fn dtype_of(s: &str) -> Option<DType> {
    Some(match s {
        "F32" => DType::F32,
        "F16" => DType::F16,
        "BF16" => DType::BF16,
        "F64" => DType::F64,
        "I64" => DType::I64,
        "U32" => DType::U32,
        "U8" => DType::U8,
        _ => return None,
    })
}

impl SafetensorsFiles {
    /// Reads the headers (not the data) of `paths`.
    pub fn open<P: AsRef<Path>>(paths: &[P]) -> Result<SafetensorsFiles> {
        let mut files = Vec::with_capacity(paths.len());
        let mut tensors = HashMap::new();
        for (fi, p) in paths.iter().enumerate() {
            let path = p.as_ref().to_path_buf();
            let f = std::fs::File::open(&path).map_err(|e| bad(&path, e))?;
            let size = f.metadata().map_err(|e| bad(&path, e))?.len();
            let mut n = [0u8; 8];
            f.read_exact_at(&mut n, 0)
                .map_err(|e| bad(&path, format!("reading the header length: {e}")))?;
            let n = u64::from_le_bytes(n);
            if n > 100 << 20 || 8 + n > size {
                return Err(bad(
                    &path,
                    format!("a header of {n} bytes in a file of {size}"),
                ));
            }
            let mut header = vec![0u8; n as usize];
            f.read_exact_at(&mut header, 8)
                .map_err(|e| bad(&path, format!("reading the header: {e}")))?;
            let header: serde_json::Map<String, serde_json::Value> =
                serde_json::from_slice(&header).map_err(|e| bad(&path, format!("header: {e}")))?;
            let base = 8 + n;
            for (name, info) in header {
                if name == "__metadata__" {
                    continue;
                }
                let dt = info["dtype"].as_str().unwrap_or("");
                let dtype = dtype_of(dt).ok_or_else(|| {
                    bad(&path, format!("tensor {name}: dtype {dt:?} not supported"))
                })?;
                let shape: Vec<usize> = info["shape"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|d| d.as_u64().map(|d| d as usize))
                            .collect()
                    })
                    .unwrap_or_default();
                let offs: Vec<u64> = info["data_offsets"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|d| d.as_u64()).collect())
                    .unwrap_or_default();
                let [s, e] = offs[..] else {
                    return Err(bad(&path, format!("tensor {name}: no data_offsets")));
                };
                let want = shape.iter().product::<usize>() as u64 * dtype.size_in_bytes() as u64;
                if e < s || e - s != want || base + e > size {
                    return Err(bad(
                        &path,
                        format!("tensor {name}: bytes {s}..{e} for shape {shape:?} {dtype:?} in a file of {size}"),
                    ));
                }
                tensors.insert(
                    name,
                    Entry {
                        file: fi,
                        dtype,
                        shape,
                        start: base + s,
                        end: base + e,
                    },
                );
            }
            files.push((path, f));
        }
        Ok(SafetensorsFiles { files, tensors })
    }

    /// Tensor `name` as stored, on the CPU.
    pub fn load(&self, name: &str) -> Result<Tensor> {
        let e = self.tensors.get(name).ok_or_else(|| {
            candle_core::Error::CannotFindTensor {
                path: name.to_string(),
            }
            .bt()
        })?;
        let (path, f) = &self.files[e.file];
        let len = (e.end - e.start) as usize;
        macro_rules! read {
            ($t:ty) => {{
                let mut v: Vec<$t> = vec![Default::default(); len / std::mem::size_of::<$t>()];
                // SAFETY: `v` owns `len` initialised bytes; every bit pattern
                // is a valid value of these plain number types. Safetensors
                // data is little-endian, as x86-64 and AArch64 are.
                let bytes =
                    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr() as *mut u8, len) };
                f.read_exact_at(bytes, e.start)
                    .map_err(|err| bad(path, format!("reading tensor {name}: {err}")))?;
                Tensor::from_vec(v, e.shape.as_slice(), &Device::Cpu)?
            }};
        }
        #[cfg(target_endian = "big")]
        compile_error!("safetensors data is little-endian");
        Ok(match e.dtype {
            DType::F32 => read!(f32),
            DType::F16 => read!(half::f16),
            DType::BF16 => read!(half::bf16),
            DType::F64 => read!(f64),
            DType::I64 => read!(i64),
            DType::U32 => read!(u32),
            DType::U8 => read!(u8),
            other => return Err(bad(path, format!("tensor {name}: dtype {other:?}"))),
        })
    }
}

impl candle_nn::var_builder::SimpleBackend for SafetensorsFiles {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> Result<Tensor> {
        let t = self.get_unchecked(name, dtype, dev)?;
        if t.shape() != &s {
            return Err(candle_core::Error::UnexpectedShape {
                msg: format!("shape mismatch for {name}"),
                expected: s,
                got: t.shape().clone(),
            }
            .bt());
        }
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> Result<Tensor> {
        self.load(name)?.to_dtype(dtype)?.to_device(dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}

/// A `VarBuilder` over `paths` that reads each tensor from the files (see
/// the module docs): for models that keep their weights in candle's CPU
/// storage (or copy them to a GPU).
pub fn var_builder<P: AsRef<Path>>(
    paths: &[P],
    dtype: DType,
    dev: &Device,
) -> Result<candle_nn::VarBuilder<'static>> {
    let st = SafetensorsFiles::open(paths)?;
    Ok(candle_nn::VarBuilder::from_backend(
        Box::new(st),
        dtype,
        dev.clone(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tensors read by positioned reads equal candle's own loader's, for
    /// f32, f16 and bf16 data, and a file cut short is refused at open,
    /// naming it.
    #[test]
    fn reads_what_candles_loader_reads_and_refuses_a_truncated_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("w.safetensors");
        let a = Tensor::arange(0f32, 24.0, &Device::Cpu)
            .unwrap()
            .reshape((4, 6))
            .unwrap();
        let b = (a.clone() * 0.37).unwrap().to_dtype(DType::F16).unwrap();
        let c = (a.clone() * -1.5).unwrap().to_dtype(DType::BF16).unwrap();
        candle_core::safetensors::save(
            &HashMap::from([
                ("a".to_string(), a),
                ("b.x".to_string(), b),
                ("c".to_string(), c),
            ]),
            &p,
        )
        .unwrap();
        let ours = SafetensorsFiles::open(&[&p]).unwrap();
        let theirs = candle_core::safetensors::load(&p, &Device::Cpu).unwrap();
        for name in ["a", "b.x", "c"] {
            let x = ours.load(name).unwrap();
            let y = &theirs[name];
            assert_eq!(x.dtype(), y.dtype());
            assert_eq!(x.dims(), y.dims());
            let (x, y) = (
                x.to_dtype(DType::F32)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap(),
                y.to_dtype(DType::F32)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap(),
            );
            assert_eq!(x, y, "{name}");
        }
        assert!(ours.load("missing").is_err());
        let bytes = std::fs::read(&p).unwrap();
        let cut = dir.path().join("cut.safetensors");
        std::fs::write(&cut, &bytes[..bytes.len() - 3]).unwrap();
        let e = SafetensorsFiles::open(&[&cut]).err().expect("refused");
        assert!(e.to_string().contains("cut.safetensors"), "{e}");
    }
}
