//! Matrix products with dense weights: f32, f16 or bf16, as safetensors
//! files store them (EmbeddingGemma under the judge heads, the safetensors
//! text models) and as some GGUF tensors are.
//!
//! The weights are repacked once, at load, into panels of [`PANEL`] output
//! rows interleaved by input position (`panel[i][r]` is row `r`'s weight at
//! input `i`), in their own type (f16 and bf16 stay half the size and widen
//! exactly on the fly). A tile of up to six activation rows times one panel
//! keeps its 6 × 16 sums in registers, as BLIS-style kernels do.
//!
//! Arithmetic contract (every path gives the same bits): an output is one
//! chain of fused multiply-adds over the inputs in order,
//! `s = fma(x[i], w[i], s)` for `i = 0, 1, …, k − 1` from `s = +0`. A lane
//! holds one output, so the vector width (8 on AVX2, 4 on NEON, 1 scalar)
//! does not change the order. So a row's result depends neither on the
//! other rows in the call (batch composition, padding) nor on the CPU.

use half::{bf16, f16};
use rayon::prelude::*;

use crate::{attn::KvValue, path, KernelError, Path};

/// Output rows per panel.
pub const PANEL: usize = 16;
/// Activation rows per register tile (the `by_rows!` lists below name 1 to 6).
const MR: usize = 6;
const _: () = assert!(MR == 6);
/// Activation rows per task when the rows are many (a block of them stays in
/// L2 while every panel of the task passes over it).
const ROW_BLOCK: usize = 8 * MR;
/// Multiply-adds below which the call stays on the calling thread.
const SERIAL_MACS: usize = 1 << 20;

/// Weights `[n][k]` repacked into panels.
#[derive(Debug, Clone)]
pub struct Panels<T> {
    n: usize,
    k: usize,
    /// `n.div_ceil(PANEL)` panels of `k × PANEL` values; rows past `n` are 0.
    data: Vec<T>,
}

impl<T: KvValue + Default> Panels<T> {
    fn new(w: &[T], n: usize, k: usize) -> Result<Panels<T>, KernelError> {
        if k == 0 || w.len() != n * k {
            return Err(KernelError::Size {
                what: "dense weights (n rows of k, k > 0)",
                expected: n * k.max(1),
                got: w.len(),
            });
        }
        let np = n.div_ceil(PANEL);
        let mut data = vec![T::default(); np * k * PANEL];
        for (row, src) in w.chunks_exact(k).enumerate() {
            let panel = &mut data[row / PANEL * k * PANEL..][..k * PANEL];
            let r = row % PANEL;
            for (i, &v) in src.iter().enumerate() {
                panel[i * PANEL + r] = v;
            }
        }
        Ok(Panels { n, k, data })
    }

    fn row(&self, row: usize, out: &mut [f32]) {
        let panel = &self.data[row / PANEL * self.k * PANEL..][..self.k * PANEL];
        for (i, o) in out.iter_mut().enumerate() {
            *o = panel[i * PANEL + row % PANEL].as_f32();
        }
    }

    fn matmul(&self, x: &[f32], y: &mut [f32]) -> Result<(), KernelError> {
        let (n, k) = (self.n, self.k);
        if !x.len().is_multiple_of(k) {
            return Err(KernelError::Size {
                what: "activations (a multiple of k)",
                expected: x.len().div_ceil(k) * k,
                got: x.len(),
            });
        }
        let m = x.len() / k;
        if y.len() != m * n {
            return Err(KernelError::Size {
                what: "outputs (m × n)",
                expected: m * n,
                got: y.len(),
            });
        }
        if m == 0 || n == 0 {
            return Ok(());
        }
        let p = path();
        let np = n.div_ceil(PANEL);
        let threads = rayon::current_num_threads();
        let serial = m * n * k < SERIAL_MACS || threads == 1;
        // Tasks: blocks of rows × groups of panels, at least 4 per thread
        // where the shape allows.
        let rows = if serial { m } else { m.min(ROW_BLOCK) };
        let row_blocks = m.div_ceil(rows);
        let groups = if serial {
            1
        } else {
            (4 * threads).div_ceil(row_blocks).clamp(1, np)
        };
        let per_group = np.div_ceil(groups);
        let groups = np.div_ceil(per_group);
        let out = crate::Out(y.as_mut_ptr());
        let task = |t: usize| {
            // Capture the whole `Out` (Send), not its raw-pointer field.
            #[allow(clippy::redundant_locals)]
            let out = out;
            let (rb, g) = (t / groups, t % groups);
            let r0 = rb * rows;
            let r1 = (r0 + rows).min(m);
            for panel in g * per_group..((g + 1) * per_group).min(np) {
                let w = &self.data[panel * k * PANEL..][..k * PANEL];
                let c0 = panel * PANEL;
                let cols = PANEL.min(n - c0);
                let mut r = r0;
                while r < r1 {
                    let mr = MR.min(r1 - r);
                    let mut acc = [[0f32; PANEL]; MR];
                    tile(p, mr, w, &x[r * k..(r + mr) * k], k, &mut acc);
                    for (i, a) in acc[..mr].iter().enumerate() {
                        // SAFETY: tasks write disjoint (row, column) cells
                        // of `y`, which outlives the call.
                        unsafe {
                            std::ptr::copy_nonoverlapping(
                                a.as_ptr(),
                                out.0.add((r + i) * n + c0),
                                cols,
                            )
                        };
                    }
                    r += mr;
                }
            }
        };
        let tasks = row_blocks * groups;
        if serial || tasks == 1 {
            (0..tasks).for_each(task);
        } else {
            (0..tasks).into_par_iter().for_each(task);
        }
        Ok(())
    }
}

/// `acc[r][c] = Σ_i x[r][i] · w[i][c]` for the `mr` rows of `x` (`mr × k`).
fn tile<T: KvValue>(
    p: Path,
    mr: usize,
    w: &[T],
    x: &[f32],
    k: usize,
    acc: &mut [[f32; PANEL]; MR],
) {
    debug_assert!(w.len() == k * PANEL && x.len() == mr * k && (1..=MR).contains(&mr));
    match p {
        #[cfg(target_arch = "x86_64")]
        Path::Avx2 | Path::AvxVnni | Path::Avx512 => {
            macro_rules! go {
                ($r:literal) => {
                    // SAFETY: the path is chosen only where AVX2, FMA and
                    // F16C run; the slices hold what the kernel reads.
                    unsafe { x86::tile::<T, $r>(w.as_ptr(), x.as_ptr(), k, acc) }
                };
            }
            by_rows!(mr, go, 1 2 3 4 5 6)
        }
        #[cfg(target_arch = "aarch64")]
        Path::Neon | Path::NeonDot => {
            macro_rules! go {
                ($r:literal) => {
                    // SAFETY: NEON is base ARMv8; the slices hold what the
                    // kernel reads.
                    unsafe { arm::tile::<T, $r>(w.as_ptr(), x.as_ptr(), k, acc) }
                };
            }
            by_rows!(mr, go, 1 2 3 4 5 6)
        }
        _ => tile_scalar(mr, w, x, k, acc),
    }
}

fn tile_scalar<T: KvValue>(mr: usize, w: &[T], x: &[f32], k: usize, acc: &mut [[f32; PANEL]; MR]) {
    for (i, wi) in w.chunks_exact(PANEL).enumerate() {
        for (c, &wv) in wi.iter().enumerate() {
            let wv = wv.as_f32();
            for r in 0..mr {
                acc[r][c] = x[r * k + i].mul_add(wv, acc[r][c]);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{KvValue, MR, PANEL};
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn tile<T: KvValue, const R: usize>(
        w: *const T,
        x: *const f32,
        k: usize,
        acc: &mut [[f32; PANEL]; MR],
    ) {
        let mut lo = [_mm256_setzero_ps(); R];
        let mut hi = [_mm256_setzero_ps(); R];
        for i in 0..k {
            let w0 = T::load8(w.add(i * PANEL));
            let w1 = T::load8(w.add(i * PANEL + 8));
            for r in 0..R {
                let xb = _mm256_broadcast_ss(&*x.add(r * k + i));
                lo[r] = _mm256_fmadd_ps(xb, w0, lo[r]);
                hi[r] = _mm256_fmadd_ps(xb, w1, hi[r]);
            }
        }
        for r in 0..R {
            _mm256_storeu_ps(acc[r].as_mut_ptr(), lo[r]);
            _mm256_storeu_ps(acc[r].as_mut_ptr().add(8), hi[r]);
        }
    }
}

#[cfg(target_arch = "aarch64")]
mod arm {
    use super::{KvValue, MR, PANEL};
    use std::arch::aarch64::*;

    pub unsafe fn tile<T: KvValue, const R: usize>(
        w: *const T,
        x: *const f32,
        k: usize,
        acc: &mut [[f32; PANEL]; MR],
    ) {
        let mut a = [[vdupq_n_f32(0.0); 4]; R];
        for i in 0..k {
            let wp = w.add(i * PANEL);
            let wv = [
                T::load4(wp),
                T::load4(wp.add(4)),
                T::load4(wp.add(8)),
                T::load4(wp.add(12)),
            ];
            for r in 0..R {
                let xv = *x.add(r * k + i);
                for q in 0..4 {
                    // `fmla` by element: a + w·x, one rounding.
                    a[r][q] = vfmaq_n_f32(a[r][q], wv[q], xv);
                }
            }
        }
        for r in 0..R {
            for q in 0..4 {
                vst1q_f32(acc[r].as_mut_ptr().add(4 * q), a[r][q]);
            }
        }
    }
}

/// Dense weights `[n][k]` in their file's type, repacked for [`Dense::matmul`].
#[derive(Debug, Clone)]
pub enum Dense {
    F32(Panels<f32>),
    F16(Panels<f16>),
    BF16(Panels<bf16>),
}

impl Dense {
    pub fn from_f32(w: &[f32], n: usize, k: usize) -> Result<Dense, KernelError> {
        Ok(Dense::F32(Panels::new(w, n, k)?))
    }
    pub fn from_f16(w: &[f16], n: usize, k: usize) -> Result<Dense, KernelError> {
        Ok(Dense::F16(Panels::new(w, n, k)?))
    }
    pub fn from_bf16(w: &[bf16], n: usize, k: usize) -> Result<Dense, KernelError> {
        Ok(Dense::BF16(Panels::new(w, n, k)?))
    }

    /// Output rows.
    pub fn rows(&self) -> usize {
        match self {
            Dense::F32(p) => p.n,
            Dense::F16(p) => p.n,
            Dense::BF16(p) => p.n,
        }
    }

    /// Inputs per row.
    pub fn cols(&self) -> usize {
        match self {
            Dense::F32(p) => p.k,
            Dense::F16(p) => p.k,
            Dense::BF16(p) => p.k,
        }
    }

    /// Bytes held (the panels, padding included).
    pub fn bytes(&self) -> usize {
        match self {
            Dense::F32(p) => p.data.len() * 4,
            Dense::F16(p) => p.data.len() * 2,
            Dense::BF16(p) => p.data.len() * 2,
        }
    }

    /// Weight row `row` as f32 (exact).
    pub fn row(&self, row: usize, out: &mut [f32]) -> Result<(), KernelError> {
        if row >= self.rows() || out.len() != self.cols() {
            return Err(KernelError::Size {
                what: "a weight row (row < n, k values)",
                expected: self.cols(),
                got: out.len(),
            });
        }
        match self {
            Dense::F32(p) => p.row(row, out),
            Dense::F16(p) => p.row(row, out),
            Dense::BF16(p) => p.row(row, out),
        }
        Ok(())
    }

    /// `y = x · wᵀ`: `x` is `m × k`, `y` is `m × n` (row-major), under the
    /// module's arithmetic contract.
    pub fn matmul(&self, x: &[f32], y: &mut [f32]) -> Result<(), KernelError> {
        match self {
            Dense::F32(p) => p.matmul(x, y),
            Dense::F16(p) => p.matmul(x, y),
            Dense::BF16(p) => p.matmul(x, y),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: u64, len: usize) -> Vec<f32> {
        let mut s = seed;
        (0..len)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// The contract, written out: one fused chain per output.
    fn chain(w: &[f32], x: &[f32], n: usize, k: usize) -> Vec<f32> {
        let m = x.len() / k;
        let mut y = vec![0f32; m * n];
        for r in 0..m {
            for c in 0..n {
                let mut s = 0f32;
                for i in 0..k {
                    s = x[r * k + i].mul_add(w[c * k + i], s);
                }
                y[r * n + c] = s;
            }
        }
        y
    }

    #[test]
    fn every_path_follows_the_contract_bit_for_bit() {
        let _g = crate::PATH_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        for &(m, n, k) in &[
            (1, 1, 1),
            (1, 17, 5),
            (7, 33, 64),
            (13, 16, 130),
            (50, 40, 96),
            (200, 70, 96),
        ] {
            let w = lcg(n as u64 * 31 + k as u64, n * k);
            let x = lcg(m as u64 + 7, m * k);
            let want = chain(&w, &x, n, k);
            let wh: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
            let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
            let wh32: Vec<f32> = wh.iter().map(|v| v.to_f32()).collect();
            let wb32: Vec<f32> = wb.iter().map(|v| v.to_f32()).collect();
            let cases = [
                (Dense::from_f32(&w, n, k).unwrap(), want.clone()),
                (Dense::from_f16(&wh, n, k).unwrap(), chain(&wh32, &x, n, k)),
                (Dense::from_bf16(&wb, n, k).unwrap(), chain(&wb32, &x, n, k)),
            ];
            for p in Path::ALL.into_iter().filter(|p| p.available()) {
                assert!(crate::force_path(Some(p)));
                for (d, want) in &cases {
                    let mut y = vec![f32::NAN; m * n];
                    d.matmul(&x, &mut y).unwrap();
                    let same = y.iter().zip(want).all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(
                        same,
                        "{} {m}x{n}x{k} {:?}",
                        p.name(),
                        std::mem::discriminant(d)
                    );
                }
            }
            crate::force_path(None);
        }
    }

    #[test]
    fn rows_read_back_and_shapes_are_checked() {
        let w = lcg(3, 20 * 7);
        let d = Dense::from_f32(&w, 20, 7).unwrap();
        let mut r = vec![0f32; 7];
        d.row(17, &mut r).unwrap();
        assert_eq!(r, w[17 * 7..18 * 7]);
        assert!(d.row(20, &mut r).is_err());
        assert!(Dense::from_f32(&w, 20, 8).is_err());
        let mut y = vec![0f32; 20];
        assert!(d.matmul(&[0.0; 6], &mut y).is_err());
        assert!(d.matmul(&[0.0; 14], &mut y).is_err());
    }
}
