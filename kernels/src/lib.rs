//! anjeon's own CPU kernels.
//!
//! [`matmul`] multiplies a matrix of GGUF-quantized weights (`n` rows of `k`,
//! the layout GGUF files store: one row per output) by `m` activation rows,
//! as llama.cpp does: the activations are quantized per row to 8 bits
//! ([`Acts`]), each weight block is unpacked once and multiplied against up to
//! eight activation rows with exact integer sums, and threads (rayon) take
//! cache-sized tiles of output columns.
//!
//! The SIMD path is chosen at run time ([`Path`]), so one binary runs on any
//! x86-64 machine; the portable path does the same arithmetic in the same
//! order, so both give identical results (tested).

/// `$go!(R)` for `$n` activation rows (1 to 8, or the listed counts): every
/// kernel is instantiated per row count.
macro_rules! by_rows {
    ($n:expr, $go:ident) => {
        by_rows!($n, $go, 1 2 3 4 5 6 7 8)
    };
    ($n:expr, $go:ident, $($r:literal)+) => {
        match $n {
            $($r => $go!($r),)+
            n => unreachable!("{n} rows"),
        }
    };
}

mod act;
mod acts;
pub mod attn;
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
pub mod dense;
mod format;
pub mod math;
#[cfg(target_arch = "aarch64")]
mod neon;
mod scalar;
mod x8;
mod x8k;

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

use rayon::prelude::*;

pub use act::{glu, Glu};
pub use acts::Acts;
pub use attn::{attend_decode, AttnSeq, AttnShape, KvValue};
pub use dense::Dense;
pub use format::{dequantize_block, dequantize_row, Format};
pub use x8::supported as repackable;

/// Which implementation runs. `ANJEON_KERNELS=scalar`, `=avx2`,
/// `=avx-vnni` (x86-64) or `=neon` (64-bit ARM) in the environment caps the
/// choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// Portable Rust, any CPU.
    Scalar,
    /// x86-64 with AVX2, FMA and F16C.
    Avx2,
    /// The same plus AVX-VNNI (`vpdpbusd` on 256-bit registers).
    AvxVnni,
    /// AVX2 plus AVX-512 F/BW and AVX512-VNNI: the repacked matrix products
    /// take two groups of 8 rows per 512-bit register; everything else runs
    /// the 256-bit code (AVX-VNNI's where the CPU has it).
    Avx512,
    /// 64-bit ARM, base NEON: the repacked matrix products; the rest
    /// (row-by-row products, activations, attention) runs the portable code.
    Neon,
    /// The same with the `dotprod` extension (`sdot`, ARMv8.2 and later).
    NeonDot,
}

impl Path {
    pub fn name(self) -> &'static str {
        match self {
            Path::Scalar => "scalar",
            Path::Avx2 => "avx2",
            Path::AvxVnni => "avx-vnni",
            Path::Avx512 => "avx512-vnni",
            Path::Neon => "neon",
            Path::NeonDot => "neon-dotprod",
        }
    }

    /// The 256-bit path this one runs where it has no code of its own.
    pub(crate) fn ymm(self) -> Path {
        match self {
            Path::Avx512 if Path::AvxVnni.available() => Path::AvxVnni,
            Path::Avx512 => Path::Avx2,
            p => p,
        }
    }
}

/// 0: detect, else 1 + the forced path's index in `Path::ALL`.
static FORCED: AtomicU8 = AtomicU8::new(0);

impl Path {
    pub const ALL: [Path; 6] = [
        Path::Scalar,
        Path::Avx2,
        Path::AvxVnni,
        Path::Avx512,
        Path::Neon,
        Path::NeonDot,
    ];

    /// Whether this CPU can run the path.
    pub fn available(self) -> bool {
        match self {
            Path::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Path::Avx2 => {
                is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Path::AvxVnni => Path::Avx2.available() && is_x86_feature_detected!("avxvnni"),
            #[cfg(target_arch = "x86_64")]
            Path::Avx512 => {
                Path::Avx2.available()
                    && is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(target_arch = "aarch64")]
            Path::Neon => true,
            #[cfg(target_arch = "aarch64")]
            Path::NeonDot => std::arch::is_aarch64_feature_detected!("dotprod"),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }
}

/// Unit tests that force paths hold this, so they do not switch each
/// other's path midway.
#[cfg(test)]
pub(crate) static PATH_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Force a path (tests and benchmarks), or `None` to detect. A path this
/// CPU lacks is refused.
pub fn force_path(p: Option<Path>) -> bool {
    match p {
        None => FORCED.store(0, Ordering::Relaxed),
        Some(p) if p.available() => FORCED.store(
            1 + Path::ALL.iter().position(|&q| q == p).unwrap_or(0) as u8,
            Ordering::Relaxed,
        ),
        Some(_) => return false,
    }
    true
}

fn detected() -> Path {
    static P: OnceLock<Path> = OnceLock::new();
    *P.get_or_init(|| {
        if std::env::var("ANJEON_KERNELS").is_ok_and(|v| v == "scalar") {
            return Path::Scalar;
        }
        if std::env::var("ANJEON_KERNELS").is_ok_and(|v| v == "avx2") && Path::Avx2.available() {
            return Path::Avx2;
        }
        let cap_vnni = std::env::var("ANJEON_KERNELS").is_ok_and(|v| v == "avx-vnni");
        let cap_neon = std::env::var("ANJEON_KERNELS").is_ok_and(|v| v == "neon");
        [
            Path::Avx512,
            Path::AvxVnni,
            Path::Avx2,
            Path::NeonDot,
            Path::Neon,
        ]
        .into_iter()
        .filter(|p| !(cap_vnni && *p == Path::Avx512 || cap_neon && *p == Path::NeonDot))
        .find(|p| p.available())
        .unwrap_or(Path::Scalar)
    })
}

/// The path [`matmul`] takes on this machine now.
pub fn path() -> Path {
    match FORCED.load(Ordering::Relaxed) {
        0 => detected(),
        i => Path::ALL[i as usize - 1],
    }
}

/// Shapes that do not fit the format or each other.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KernelError {
    #[error("{format}: a row of {k} weights is not whole blocks of {block}")]
    RowNotBlocks {
        format: &'static str,
        k: usize,
        block: usize,
    },
    #[error("{what}: expected {expected} values, got {got}")]
    Size {
        what: &'static str,
        expected: usize,
        got: usize,
    },
}

/// Activation rows per pass over a weight row (each unpacked weight block
/// is multiplied against this many rows).
const ROWS: usize = 8;

/// Products smaller than this (multiply-adds) run on the calling thread:
/// below it, handing work to the pool costs more than it saves (measured:
/// SmolLM2 decode at 2 threads was slower than at 1 with 64Ki).
const SERIAL_MACS: usize = 1 << 20;

/// Raw pointer that may be sent to threads writing disjoint elements.
#[derive(Clone, Copy)]
struct Out(*mut f32);
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

/// Quantize `x` (`m × k`) for weights of format `f`.
pub fn quantize_acts(f: Format, x: &[f32], k: usize) -> Result<Acts, KernelError> {
    check_k(f, k)?;
    if !x.len().is_multiple_of(k) {
        return Err(KernelError::Size {
            what: "activations (a multiple of k)",
            expected: x.len().div_ceil(k) * k,
            got: x.len(),
        });
    }
    Ok(Acts::quantize(x, k, f.block_elems()))
}

fn check_k(f: Format, k: usize) -> Result<(), KernelError> {
    if k == 0 || !k.is_multiple_of(f.block_elems()) {
        return Err(KernelError::RowNotBlocks {
            format: f.name(),
            k,
            block: f.block_elems(),
        });
    }
    Ok(())
}

/// `y = x · wᵀ`: `w` is `n` rows of `k` weights in format `f`, `x` is
/// `m × k` f32, `y` is `m × n` f32 (row-major).
pub fn matmul(
    f: Format,
    w: &[u8],
    n: usize,
    k: usize,
    x: &[f32],
    y: &mut [f32],
) -> Result<(), KernelError> {
    let acts = quantize_acts(f, x, k)?;
    matmul_acts(f, w, n, &acts, y)
}

/// [`matmul`] with activations already quantized (one quantization can
/// serve several weight matrices of the same block size).
pub fn matmul_acts(
    f: Format,
    w: &[u8],
    n: usize,
    acts: &Acts,
    y: &mut [f32],
) -> Result<(), KernelError> {
    let k = acts.k;
    check_k(f, k)?;
    if acts.unit != f.block_elems() {
        return Err(KernelError::Size {
            what: "activation block size",
            expected: f.block_elems(),
            got: acts.unit,
        });
    }
    let row_bytes = f.row_bytes(k);
    if w.len() != n * row_bytes {
        return Err(KernelError::Size {
            what: "weight bytes",
            expected: n * row_bytes,
            got: w.len(),
        });
    }
    // The row-by-row kernels are 256-bit ones (AVX-512 runs AVX-VNNI's).
    let path = path().ymm();
    tiled(acts, n, 1, row_bytes, y, |j, rows, dots| {
        let mut d = [0f32; ROWS];
        dot_rows(
            path,
            f,
            &w[j * row_bytes..(j + 1) * row_bytes],
            rows,
            &mut d[..rows.len()],
        );
        for (o, v) in dots.iter_mut().zip(d) {
            o[0] = v;
        }
    })
}

/// The shared driver. The `n` output columns come in units of `per_unit`
/// columns (1: a weight row; 8: a repacked group) of `unit_bytes` weight
/// bytes; `dot(unit, rows, out)` fills `out[i][..per_unit]` for up to
/// [`ROWS`] activation rows. Threads take tiles of units that stay in L2
/// while every activation row passes over them; small products stay on the
/// calling thread (handing work to rayon's pool costs a wake-up per call).
fn tiled(
    acts: &Acts,
    n: usize,
    per_unit: usize,
    unit_bytes: usize,
    y: &mut [f32],
    dot: impl Fn(usize, &[acts::ActRow<'_>], &mut [[f32; 16]]) + Sync,
) -> Result<(), KernelError> {
    let m = acts.rows();
    if y.len() != m * n {
        return Err(KernelError::Size {
            what: "output values",
            expected: m * n,
            got: y.len(),
        });
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    let units = n.div_ceil(per_unit);
    let threads = rayon::current_num_threads().max(1);
    let cs = (192 * 1024 / unit_bytes).clamp(1, units.div_ceil(threads * 4).max(1));
    let tasks = units.div_ceil(cs);
    let out = Out(y.as_mut_ptr());
    let run = |task: usize| {
        // Capture the whole `Out` (Send), not its raw-pointer field.
        #[allow(clippy::redundant_locals)]
        let out = out;
        let (u0, u1) = (task * cs, ((task + 1) * cs).min(units));
        let mut rows = [acts.row(0); ROWS];
        let mut dots = [[0f32; 16]; ROWS];
        let mut r0 = 0;
        while r0 < m {
            let nr = (m - r0).min(ROWS);
            for (i, row) in rows.iter_mut().take(nr).enumerate() {
                *row = acts.row(r0 + i);
            }
            for u in u0..u1 {
                dot(u, &rows[..nr], &mut dots[..nr]);
                let (c0, cols) = (u * per_unit, (n - u * per_unit).min(per_unit));
                for (i, d) in dots[..nr].iter().enumerate() {
                    for (c, &v) in d[..cols].iter().enumerate() {
                        // SAFETY: (r0 + i, c0 + c) is inside y, and the
                        // column belongs to this task's units only.
                        unsafe { *out.0.add((r0 + i) * n + c0 + c) = v };
                    }
                }
            }
            r0 += nr;
        }
    };
    if threads == 1 || tasks == 1 || m * n * acts.k < SERIAL_MACS {
        (0..tasks).for_each(run);
    } else {
        (0..tasks).into_par_iter().for_each(run);
    }
    Ok(())
}

/// `path` is a 256-bit path or the portable one (`Path::ymm`).
fn dot_rows(path: Path, f: Format, w: &[u8], xs: &[acts::ActRow<'_>], out: &mut [f32]) {
    match path {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Avx2 is only chosen when the CPU reports AVX2, FMA and F16C;
        // matmul_acts checked the sizes.
        Path::Avx2 => unsafe { avx2::plain::dot_rows(f, w, xs, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above, and the CPU reports AVX-VNNI.
        Path::AvxVnni => unsafe { avx2::vnni::dot_rows(f, w, xs, out) },
        _ => {
            for (o, x) in out.iter_mut().zip(xs) {
                *o = scalar::dot(f, w, *x);
            }
        }
    }
}

/// A weight matrix repacked into interleaved groups of 8 rows (see the
/// `x8` module): the same bytes as the file's tensor, reordered at load, so
/// one instruction serves 8 weight rows. The 32-weight formats only.
pub struct Packed {
    format: Format,
    n: usize,
    k: usize,
    data: Vec<u8>,
}

impl Packed {
    /// Repack `n` rows of `k` weights (GGUF layout).
    pub fn new(f: Format, w: &[u8], n: usize, k: usize) -> Result<Packed, KernelError> {
        check_k(f, k)?;
        if !x8::supported(f) {
            return Err(KernelError::Size {
                what: "repackable format (the 32-weight formats and the k-quants)",
                expected: 32,
                got: f.block_elems(),
            });
        }
        if w.len() != n * f.row_bytes(k) {
            return Err(KernelError::Size {
                what: "weight bytes",
                expected: n * f.row_bytes(k),
                got: w.len(),
            });
        }
        Ok(Packed {
            format: f,
            n,
            k,
            data: x8::repack(f, w, n, k),
        })
    }

    /// Repack `n` rows of `k` weights read 8 rows at a time:
    /// `read(first_row, buf)` fills `buf` with the file's bytes of rows
    /// `first_row..` (whole rows, at most 8). Only the repacked matrix and
    /// one group of rows are held, never the file's matrix as well.
    pub fn from_rows(
        f: Format,
        n: usize,
        k: usize,
        mut read: impl FnMut(usize, &mut [u8]) -> std::io::Result<()>,
    ) -> std::io::Result<Packed> {
        let bad = |e: KernelError| std::io::Error::new(std::io::ErrorKind::InvalidInput, e);
        check_k(f, k).map_err(bad)?;
        if !x8::supported(f) {
            return Err(bad(KernelError::Size {
                what: "repackable format (the 32-weight formats and the k-quants)",
                expected: 32,
                got: f.block_elems(),
            }));
        }
        let rb = f.row_bytes(k);
        let group = x8::group_bytes(f, k);
        let mut data = Vec::with_capacity(n.div_ceil(8) * group);
        let mut buf = vec![0u8; 8 * rb];
        for r0 in (0..n).step_by(8) {
            let rows = (n - r0).min(8);
            read(r0, &mut buf[..rows * rb])?;
            data.extend_from_slice(&x8::repack(f, &buf[..rows * rb], rows, k));
        }
        Ok(Packed {
            format: f,
            n,
            k,
            data,
        })
    }

    pub fn format(&self) -> Format {
        self.format
    }

    pub fn rows(&self) -> usize {
        self.n
    }

    pub fn cols(&self) -> usize {
        self.k
    }

    /// Row `row` (`k` values), exactly as [`dequantize_row`] gives it from
    /// the file's layout: a repacked table can serve token embeddings too.
    pub fn dequantize_row(&self, row: usize, out: &mut [f32]) -> Result<(), KernelError> {
        if row >= self.n || out.len() != self.k {
            return Err(KernelError::Size {
                what: "row index or row length",
                expected: self.n,
                got: row,
            });
        }
        let gb = x8::group_bytes(self.format, self.k);
        let g = row / 8;
        x8::dequantize_group_row(self.format, &self.data[g * gb..(g + 1) * gb], row % 8, out);
        Ok(())
    }

    /// `y = x · wᵀ` (`x`: `m × k`, `y`: `m × n`).
    pub fn matmul(&self, x: &[f32], y: &mut [f32]) -> Result<(), KernelError> {
        let acts = quantize_acts(self.format, x, self.k)?;
        self.matmul_acts(&acts, y)
    }

    pub fn matmul_acts(&self, acts: &Acts, y: &mut [f32]) -> Result<(), KernelError> {
        let (f, n, k) = (self.format, self.n, self.k);
        if acts.k != k || acts.unit != f.block_elems() {
            return Err(KernelError::Size {
                what: "activation row length (in blocks of the format's size)",
                expected: k,
                got: acts.k,
            });
        }
        let path = path();
        let ymm = path.ymm();
        let gb = x8::group_bytes(f, k);
        // One activation row (decode at batch 1) streams the weights from
        // memory once: there the two interleaved streams of a 512-bit unit
        // ran slower than one 256-bit stream (23 against 32 GB/s on a
        // 137 MB Q8_0 table, one thread), so AVX-512 takes two rows or more.
        #[cfg(target_arch = "x86_64")]
        if path == Path::Avx512 && acts.rows() > 1 {
            // Units of two groups (16 columns); an odd last group alone.
            let groups = n.div_ceil(8);
            return tiled(acts, n, 16, 2 * gb, y, |u, rows, dots| {
                let g = 2 * u;
                if g + 1 < groups {
                    dot_group2(f, &self.data[g * gb..(g + 2) * gb], rows, dots)
                } else {
                    dot_group(ymm, f, &self.data[g * gb..(g + 1) * gb], rows, dots)
                }
            });
        }
        tiled(acts, n, 8, gb, y, |g, rows, dots| {
            dot_group(ymm, f, &self.data[g * gb..(g + 1) * gb], rows, dots)
        })
    }
}

/// Two groups of the AVX-512 path: `out[r][..16]`.
#[cfg(target_arch = "x86_64")]
fn dot_group2(f: Format, gw: &[u8], xs: &[acts::ActRow<'_>], out: &mut [[f32; 16]]) {
    macro_rules! go {
        ($r:literal) => {{
            let a: &[acts::ActRow<'_>; $r] = xs.try_into().unwrap();
            let o: &mut [[f32; 16]; $r] = (&mut out[..$r]).try_into().unwrap();
            // SAFETY: Avx512 is only chosen when the CPU has AVX-512 F/BW/VNNI
            // and AVX2/FMA/F16C; gw is two groups of whole group-blocks.
            unsafe {
                match f {
                    Format::Q4K => avx512::dot_group2_q4k::<$r, false>(gw, a, o),
                    Format::Q5K => avx512::dot_group2_q4k::<$r, true>(gw, a, o),
                    Format::Q6K => avx512::dot_group2_q6k::<$r>(gw, a, o),
                    _ => avx512::dot_group2::<$r>(f, gw, a, o),
                }
            }
        }};
    }
    by_rows!(xs.len(), go)
}

/// One group of 8 rows, `out[r][..8]`, on a 256-bit, a NEON or the portable
/// path (`Path::ymm`).
fn dot_group(path: Path, f: Format, gw: &[u8], xs: &[acts::ActRow<'_>], out: &mut [[f32; 16]]) {
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    if path != Path::Scalar {
        macro_rules! go {
            ($r:literal) => {{
                let a: &[acts::ActRow<'_>; $r] = xs.try_into().unwrap();
                let mut o8 = [[0f32; 8]; $r];
                // SAFETY: the path was chosen because the CPU has its features;
                // gw is whole group-blocks and every row holds k values.
                unsafe { simd_group::<$r>(path, f, gw, a, &mut o8) };
                for (d, s) in out.iter_mut().zip(&o8) {
                    d[..8].copy_from_slice(s);
                }
            }};
        }
        by_rows!(xs.len(), go);
        return;
    }
    let _ = path;
    for (o, x) in out.iter_mut().zip(xs) {
        let mut o8 = [0f32; 8];
        x8::dot_group_scalar(f, gw, *x, &mut o8);
        o[..8].copy_from_slice(&o8);
    }
}

/// One group on a 256-bit x86 path (AVX2 or AVX-VNNI).
///
/// # Safety
/// The CPU has the path's features (`Path::available`).
#[cfg(target_arch = "x86_64")]
unsafe fn simd_group<const R: usize>(
    path: Path,
    f: Format,
    gw: &[u8],
    a: &[acts::ActRow<'_>; R],
    o: &mut [[f32; 8]; R],
) {
    match (path == Path::AvxVnni, f) {
        (true, Format::Q4K) => x8k::simd::vnni::dot_group::<R, false>(gw, a, o),
        (false, Format::Q4K) => x8k::simd::plain::dot_group::<R, false>(gw, a, o),
        (true, Format::Q5K) => x8k::simd::vnni::dot_group::<R, true>(gw, a, o),
        (false, Format::Q5K) => x8k::simd::plain::dot_group::<R, true>(gw, a, o),
        (true, Format::Q6K) => x8k::simd::vnni::dot_group_q6k::<R>(gw, a, o),
        (false, Format::Q6K) => x8k::simd::plain::dot_group_q6k::<R>(gw, a, o),
        (true, _) => x8::simd::vnni::dot_group::<R>(f, gw, a, o),
        (false, _) => x8::simd::plain::dot_group::<R>(f, gw, a, o),
    }
}

/// One group on a NEON path.
///
/// # Safety
/// NeonDot only where the CPU reports dotprod (NEON is part of every
/// 64-bit ARM target).
#[cfg(target_arch = "aarch64")]
unsafe fn simd_group<const R: usize>(
    path: Path,
    f: Format,
    gw: &[u8],
    a: &[acts::ActRow<'_>; R],
    o: &mut [[f32; 8]; R],
) {
    match (path == Path::NeonDot, f) {
        (true, Format::Q4K) => neon::dot::dot_group_k::<R, false>(gw, a, o),
        (false, Format::Q4K) => neon::plain::dot_group_k::<R, false>(gw, a, o),
        (true, Format::Q5K) => neon::dot::dot_group_k::<R, true>(gw, a, o),
        (false, Format::Q5K) => neon::plain::dot_group_k::<R, true>(gw, a, o),
        (true, Format::Q6K) => neon::dot::dot_group_q6k::<R>(gw, a, o),
        (false, Format::Q6K) => neon::plain::dot_group_q6k::<R>(gw, a, o),
        (true, _) => neon::dot::dot_group::<R>(f, gw, a, o),
        (false, _) => neon::plain::dot_group::<R>(f, gw, a, o),
    }
}

#[cfg(test)]
mod packed_tests {
    use super::*;

    #[test]
    fn packing_from_rows_gives_the_same_bytes_as_from_the_whole_matrix() {
        for f in Format::ALL.into_iter().filter(|f| x8::supported(*f)) {
            // 21 rows: two whole groups and a partial one.
            let (n, k) = (21, 2 * f.block_elems());
            let w: Vec<u8> = (0..n * f.row_bytes(k)).map(|i| (i * 7 + 3) as u8).collect();
            let whole = Packed::new(f, &w, n, k).unwrap();
            let rb = f.row_bytes(k);
            let mut calls = Vec::new();
            let streamed = Packed::from_rows(f, n, k, |row, buf| {
                calls.push((row, buf.len() / rb));
                buf.copy_from_slice(&w[row * rb..row * rb + buf.len()]);
                Ok(())
            })
            .unwrap();
            assert_eq!(streamed.data, whole.data, "{f:?}");
            assert_eq!(calls, vec![(0, 8), (8, 8), (16, 5)]);
            let failed = Packed::from_rows(f, n, k, |_, _| {
                Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "cut",
                ))
            });
            assert!(failed.is_err());
        }
        assert!(Packed::from_rows(Format::Q4K, 8, 100, |_, _| Ok(())).is_err());
    }
}
