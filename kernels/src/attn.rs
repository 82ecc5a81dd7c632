//! Decode attention: one query position per sequence against that
//! sequence's cached keys and values, for several sequences at once.
//!
//! A decode step used to run a dozen small tensor operations per sequence
//! per layer (concatenating the cache, repeating the grouped heads, two
//! matrix products, scaling, softmax, transposes); at batch 8 they cost more
//! than the weights' matrix products. Here the cache is plain rows
//! (`[position][kv_head][d]`, appended in place, in f16 as llama.cpp keeps
//! its cache: half the memory and half the bytes read per step; or in f32,
//! as transformers keeps it, for the safetensors models) and one call per layer
//! covers every sequence and head, on rayon's threads when the work is
//! large enough.
//!
//! Arithmetic contract (every path gives the same bits):
//! - a score is the dot product of `d` values summed in eight lanes
//!   (`lane = i mod 8`, fused multiply-adds in order of `i`), the lanes added
//!   as `((l0+l1)+(l2+l3)) + ((l4+l5)+(l6+l7))`, plus the values past the last
//!   multiple of eight fused into a separate sum, then multiplied by `scale`;
//! - softmax subtracts the maximum and exponentiates with [`exp`] (a
//!   polynomial of fused multiply-adds, within 2 ulp of `f32::exp`), sums in
//!   eight lanes (`lane = key mod 8`, in key order) added as above, and
//!   divides;
//! - each output value is a chain of fused multiply-adds over the keys in
//!   order.
//!
//! So a sequence's result does not depend on what else is in the batch, nor
//! on the CPU.

use half::{bf16, f16};
use rayon::prelude::*;

use crate::{path, KernelError, Path};

mod sealed {
    pub trait Sealed {}
    impl Sealed for half::f16 {}
    impl Sealed for half::bf16 {}
    impl Sealed for f32 {}
}

/// A cached key/value element: `f16` (llama.cpp's cache; the GGUF models)
/// or `f32` (transformers'; the safetensors models); also a dense weight
/// (`bf16` too) in [`crate::dense`]. Every value widens to f32 exactly, so
/// the contract below is the same for all.
pub trait KvValue: Copy + Send + Sync + sealed::Sealed {
    fn as_f32(self) -> f32;
    /// Eight values as f32.
    ///
    /// # Safety
    /// `p` points at eight readable values, and the caller runs with AVX2
    /// and F16C (inlined into such a function).
    #[cfg(target_arch = "x86_64")]
    #[doc(hidden)]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256;
    /// Four values as f32 (NEON).
    ///
    /// # Safety
    /// `p` points at four readable values.
    #[cfg(target_arch = "aarch64")]
    #[doc(hidden)]
    unsafe fn load4(p: *const Self) -> std::arch::aarch64::float32x4_t;
}

impl KvValue for f16 {
    #[inline(always)]
    fn as_f32(self) -> f32 {
        f16::to_f32(self)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const f16) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }
    #[cfg(target_arch = "aarch64")]
    #[inline(always)]
    unsafe fn load4(p: *const f16) -> std::arch::aarch64::float32x4_t {
        // `fcvtl` (base ARMv8): Rust's float16x4_t is not stable yet.
        use std::arch::aarch64::*;
        let h: uint16x4_t = vld1_u16(p as *const u16);
        let r: float32x4_t;
        std::arch::asm!("fcvtl {0:v}.4s, {1:v}.4h", out(vreg) r, in(vreg) h, options(pure, nomem, nostack));
        r
    }
}

impl KvValue for bf16 {
    #[inline(always)]
    fn as_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const bf16) -> std::arch::x86_64::__m256 {
        // bf16 is the top half of an f32: widen and shift (exact).
        use std::arch::x86_64::*;
        let h = _mm256_cvtepu16_epi32(_mm_loadu_si128(p as *const __m128i));
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(h))
    }
    #[cfg(target_arch = "aarch64")]
    #[inline(always)]
    unsafe fn load4(p: *const bf16) -> std::arch::aarch64::float32x4_t {
        use std::arch::aarch64::*;
        vreinterpretq_f32_u32(vshll_n_u16::<16>(vld1_u16(p as *const u16)))
    }
}

impl KvValue for f32 {
    #[inline(always)]
    fn as_f32(self) -> f32 {
        self
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const f32) -> std::arch::x86_64::__m256 {
        std::arch::x86_64::_mm256_loadu_ps(p)
    }
    #[cfg(target_arch = "aarch64")]
    #[inline(always)]
    unsafe fn load4(p: *const f32) -> std::arch::aarch64::float32x4_t {
        std::arch::aarch64::vld1q_f32(p)
    }
}

/// Heads and scaling of one attention layer.
#[derive(Debug, Clone, Copy)]
pub struct AttnShape {
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads (each serves `n_head / n_kv` query heads).
    pub n_kv: usize,
    /// Values per head.
    pub d: usize,
    /// Factor applied to every dot product (e.g. `1/√d`).
    pub scale: f32,
}

/// One sequence's query and the keys/values it attends to.
#[derive(Debug, Clone, Copy)]
pub struct AttnSeq<'a, T: KvValue = f16> {
    /// `n_head × d` values (the query at the newest position).
    pub q: &'a [f32],
    /// `len` rows of `n_kv × d` keys, oldest first.
    pub k: &'a [T],
    /// `len` rows of `n_kv × d` values.
    pub v: &'a [T],
}

/// Work (multiply-adds) below which the call stays on the calling thread.
const SERIAL_MACS: usize = 1 << 16;

/// Attention of each sequence's single query over its keys:
/// `out[s][h][..d] = Σ_j softmax_j(scale · q_h · k_j) · v_j` with key/value
/// head `h / (n_head / n_kv)`. `out` holds `seqs.len() × n_head × d` values.
pub fn attend_decode<T: KvValue>(
    shape: AttnShape,
    seqs: &[AttnSeq<'_, T>],
    out: &mut [f32],
) -> Result<(), KernelError> {
    let AttnShape {
        n_head, n_kv, d, ..
    } = shape;
    if n_kv == 0 || d == 0 || !n_head.is_multiple_of(n_kv) {
        return Err(KernelError::Size {
            what: "query heads (a multiple of the key/value heads)",
            expected: n_kv.max(1) * n_head.div_ceil(n_kv.max(1)),
            got: n_head,
        });
    }
    if out.len() != seqs.len() * n_head * d {
        return Err(KernelError::Size {
            what: "attention output values",
            expected: seqs.len() * n_head * d,
            got: out.len(),
        });
    }
    let row = n_kv * d;
    let mut work = 0;
    for s in seqs {
        if s.q.len() != n_head * d {
            return Err(KernelError::Size {
                what: "query values",
                expected: n_head * d,
                got: s.q.len(),
            });
        }
        if s.k.len() != s.v.len() || !s.k.len().is_multiple_of(row) || s.k.is_empty() {
            return Err(KernelError::Size {
                what: "cached key/value values (whole rows, as many values as keys, at least one)",
                expected: s.k.len().div_ceil(row).max(1) * row,
                got: s.v.len(),
            });
        }
        work += s.k.len() / row * n_head * d * 2;
    }
    let rep = n_head / n_kv;
    let p = path();
    // One task per (sequence, key/value head): its `rep` query heads are
    // contiguous in the output.
    let task = |(t, o): (usize, &mut [f32])| {
        let (s, g) = (&seqs[t / n_kv], t % n_kv);
        let len = s.k.len() / row;
        let (keys, vals) = (&s.k[g * d..], &s.v[g * d..]);
        let mut probs = vec![0f32; rep * len];
        for (r, pr) in probs.chunks_exact_mut(len).enumerate() {
            let h = g * rep + r;
            scores(p, &s.q[h * d..(h + 1) * d], keys, row, shape.scale, pr);
            softmax(p, pr);
        }
        weighted_sums(p, &probs, len, vals, row, d, o);
    };
    if work < SERIAL_MACS || seqs.len() * n_kv == 1 || rayon::current_num_threads() == 1 {
        out.chunks_exact_mut(rep * d).enumerate().for_each(task);
    } else {
        out.par_chunks_exact_mut(rep * d).enumerate().for_each(task);
    }
    Ok(())
}

const LOG2E: f32 = std::f32::consts::LOG2_E;
/// ln 2 in two parts (Cephes): `n · LN2_HI` is exact for the `n` used.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// Cephes' `expf` polynomial for `e^r - 1 - r` over `r²`, |r| ≤ ln2/2.
const EXP_P: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    0.5,
];

/// `e^x` for softmax, the contract's form: `x` clamped to [-87, 88], `n =
/// round_ties_even(x · log2 e)`, `r = x − n·ln2` (two fused steps), the
/// polynomial by fused multiply-adds, times `2^n` built in the exponent
/// bits. The SIMD paths do the same operations eight at a time.
#[allow(clippy::manual_clamp)] // NaN becomes -87 here, as in the SIMD max/min
pub fn exp(x: f32) -> f32 {
    let x = x.max(-87.0).min(88.0);
    let n = (x * LOG2E).round_ties_even();
    let r = n.mul_add(-LN2_HI, x);
    let r = n.mul_add(-LN2_LO, r);
    let mut y = EXP_P[0];
    for c in &EXP_P[1..] {
        y = y.mul_add(r, *c);
    }
    let y = y.mul_add(r * r, r) + 1.0;
    y * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// The contract's lane sum: `((l0+l1)+(l2+l3)) + ((l4+l5)+(l6+l7))`.
#[inline]
fn tree(l: &[f32; 8]) -> f32 {
    ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]))
}

/// `s[j] = scale · (q · k[j·stride..])`, the contract's lane order.
fn scores<T: KvValue>(p: Path, q: &[f32], k: &[T], stride: usize, scale: f32, s: &mut [f32]) {
    match p {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Avx2/AvxVnni are only chosen when the CPU has AVX2 and FMA;
        // key j's values k[j·stride..j·stride + q.len()] are inside `k`
        // (attend_decode checked whole rows).
        Path::Avx2 | Path::AvxVnni | Path::Avx512 => unsafe {
            simd::scores(q, k, stride, scale, s)
        },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: NEON is part of every 64-bit ARM target; keys as above.
        Path::Neon | Path::NeonDot => unsafe { neon::scores(q, k, stride, scale, s) },
        _ => {
            for (j, o) in s.iter_mut().enumerate() {
                *o = dot_scalar(q, &k[j * stride..j * stride + q.len()]) * scale;
            }
        }
    }
}

fn dot_scalar<T: KvValue>(q: &[f32], k: &[T]) -> f32 {
    let whole = q.len() / 8 * 8;
    let mut l = [0f32; 8];
    for (qc, kc) in q[..whole].chunks_exact(8).zip(k[..whole].chunks_exact(8)) {
        for i in 0..8 {
            l[i] = qc[i].mul_add(kc[i].as_f32(), l[i]);
        }
    }
    let mut t = 0f32;
    for i in whole..q.len() {
        t = q[i].mul_add(k[i].as_f32(), t);
    }
    tree(&l) + t
}

/// The values of `q` past its last multiple of eight times key `kr`'s, one
/// fused chain (the contract's separate tail sum).
///
/// # Safety
/// `kr` points at `q.len()` readable values.
#[inline(always)]
unsafe fn tail_dot<T: KvValue>(q: &[f32], kr: *const T, whole: usize) -> f32 {
    let mut t = 0f32;
    for (i, &qi) in q.iter().enumerate().skip(whole) {
        t = qi.mul_add((*kr.add(i)).as_f32(), t);
    }
    t
}

/// Weighted sums of heads `heads` for the outputs `whole..d` (past the last
/// multiple of eight), one chain per output over the keys in order.
///
/// # Safety
/// As the SIMD `weighted_sums`: `w` holds `len` weights per head, `v` `len`
/// rows of `stride`, `o` `d` outputs per head.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn sums_tail<T: KvValue>(
    wp: *const f32,
    len: usize,
    vp: *const T,
    stride: usize,
    d: usize,
    op: *mut f32,
    heads: std::ops::Range<usize>,
    whole: usize,
) {
    for r in heads {
        for x in whole..d {
            let mut a = 0f32;
            for j in 0..len {
                a = (*wp.add(r * len + j)).mul_add((*vp.add(j * stride + x)).as_f32(), a);
            }
            *op.add(r * d + x) = a;
        }
    }
}

/// Scores to probabilities, in place.
fn softmax(p: Path, s: &mut [f32]) {
    match p {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in `scores`.
        Path::Avx2 | Path::AvxVnni | Path::Avx512 => unsafe { simd::softmax(s) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: NEON is part of every 64-bit ARM target.
        Path::Neon | Path::NeonDot => unsafe { neon::softmax(s) },
        _ => {
            let max = s.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
            let mut l = [0f32; 8];
            for (j, x) in s.iter_mut().enumerate() {
                *x = exp(*x - max);
                l[j % 8] += *x;
            }
            let sum = tree(&l);
            for x in s.iter_mut() {
                *x /= sum;
            }
        }
    }
}

/// `o[r·d + i] = Σ_j w[r·len + j] · v[j·stride + i]` for each of the
/// `o.len() / d` heads, fused multiply-adds in key order.
fn weighted_sums<T: KvValue>(
    p: Path,
    w: &[f32],
    len: usize,
    v: &[T],
    stride: usize,
    d: usize,
    o: &mut [f32],
) {
    match p {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in `scores`.
        Path::Avx2 | Path::AvxVnni | Path::Avx512 => unsafe {
            simd::weighted_sums(w, len, v, stride, d, o)
        },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: NEON is part of every 64-bit ARM target; rows as above.
        Path::Neon | Path::NeonDot => unsafe { neon::weighted_sums(w, len, v, stride, d, o) },
        _ => {
            for (wr, or) in w.chunks_exact(len).zip(o.chunks_exact_mut(d)) {
                or.fill(0.0);
                for (j, &wj) in wr.iter().enumerate() {
                    let vj = &v[j * stride..j * stride + d];
                    for (oi, &x) in or.iter_mut().zip(vj) {
                        *oi = wj.mul_add(x.as_f32(), *oi);
                    }
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod simd {
    use std::arch::x86_64::*;

    use super::{KvValue, EXP_P, LN2_HI, LN2_LO, LOG2E};

    /// The contract's tree for eight keys at once: `a[j]` holds key j's
    /// lanes; returns the eight sums.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn tree8(a: &[__m256; 8]) -> __m256 {
        // hadd(x, y) = [x0+x1, x2+x3, y0+y1, y2+y3 | x4+x5, x6+x7, y4+y5, y6+y7]
        let h01 = _mm256_hadd_ps(a[0], a[1]);
        let h23 = _mm256_hadd_ps(a[2], a[3]);
        let h45 = _mm256_hadd_ps(a[4], a[5]);
        let h67 = _mm256_hadd_ps(a[6], a[7]);
        // [(x0+x1)+(x2+x3) for keys 0..4 | (x4+x5)+(x6+x7) for keys 0..4]
        let k03 = _mm256_hadd_ps(h01, h23);
        let k47 = _mm256_hadd_ps(h45, h67);
        let lo = _mm256_permute2f128_ps(k03, k47, 0x20);
        let hi = _mm256_permute2f128_ps(k03, k47, 0x31);
        _mm256_add_ps(lo, hi)
    }

    /// Scores of eight keys at a time (independent chains; absent keys of a
    /// last partial block are zeros and not stored).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn scores<T: KvValue>(q: &[f32], k: &[T], stride: usize, scale: f32, s: &mut [f32]) {
        let d = q.len();
        let whole = d / 8 * 8;
        let (qp, kp) = (q.as_ptr(), k.as_ptr());
        let n = s.len();
        let mut j0 = 0;
        while j0 < n {
            let nk = (n - j0).min(8);
            let mut a = [_mm256_setzero_ps(); 8];
            let mut i = 0;
            while i < whole {
                let x = _mm256_loadu_ps(qp.add(i));
                for (c, acc) in a.iter_mut().enumerate().take(nk) {
                    let kr = kp.add((j0 + c) * stride + i);
                    *acc = _mm256_fmadd_ps(x, T::load8(kr), *acc);
                }
                i += 8;
            }
            let mut out = [0f32; 8];
            _mm256_storeu_ps(out.as_mut_ptr(), tree8(&a));
            for c in 0..nk {
                let t = super::tail_dot(q, kp.add((j0 + c) * stride), whole);
                s[j0 + c] = (out[c] + t) * scale;
            }
            j0 += nk;
        }
    }

    /// [`super::exp`] on eight values.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(crate) unsafe fn exp8(x: __m256) -> __m256 {
        let x = _mm256_min_ps(
            _mm256_max_ps(x, _mm256_set1_ps(-87.0)),
            _mm256_set1_ps(88.0),
        );
        let n = _mm256_round_ps(
            _mm256_mul_ps(x, _mm256_set1_ps(LOG2E)),
            _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
        );
        let r = _mm256_fmadd_ps(n, _mm256_set1_ps(-LN2_HI), x);
        let r = _mm256_fmadd_ps(n, _mm256_set1_ps(-LN2_LO), r);
        let mut y = _mm256_set1_ps(EXP_P[0]);
        for c in &EXP_P[1..] {
            y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(*c));
        }
        let y = _mm256_add_ps(
            _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), r),
            _mm256_set1_ps(1.0),
        );
        let e = _mm256_slli_epi32(
            _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)),
            23,
        );
        _mm256_mul_ps(y, _mm256_castsi256_ps(e))
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn softmax(s: &mut [f32]) {
        let n = s.len();
        let whole = n / 8 * 8;
        let sp = s.as_mut_ptr();
        let max = s.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
        let vm = _mm256_set1_ps(max);
        let mut lanes = _mm256_setzero_ps();
        let mut j = 0;
        while j < whole {
            let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(sp.add(j)), vm));
            _mm256_storeu_ps(sp.add(j), e);
            lanes = _mm256_add_ps(lanes, e);
            j += 8;
        }
        let mut l = [0f32; 8];
        _mm256_storeu_ps(l.as_mut_ptr(), lanes);
        for (c, x) in s[whole..].iter_mut().enumerate() {
            *x = super::exp(*x - max);
            l[c] += *x;
        }
        let sum = super::tree(&l);
        let vsum = _mm256_set1_ps(sum);
        let mut j = 0;
        while j < whole {
            _mm256_storeu_ps(sp.add(j), _mm256_div_ps(_mm256_loadu_ps(sp.add(j)), vsum));
            j += 8;
        }
        for x in s[whole..].iter_mut() {
            *x /= sum;
        }
    }

    /// `NH` heads × `NC` vectors of 8 outputs starting at output `i`:
    /// `NH · NC` independent chains (enough to cover the FMA latency), each
    /// value row loaded once for all of them.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    #[allow(clippy::too_many_arguments)]
    unsafe fn block<T: KvValue, const NH: usize, const NC: usize>(
        wp: *const f32,
        len: usize,
        vp: *const T,
        stride: usize,
        d: usize,
        op: *mut f32,
        h0: usize,
        i: usize,
    ) {
        let mut acc = [[_mm256_setzero_ps(); NC]; NH];
        for j in 0..len {
            let mut x = [_mm256_setzero_ps(); NC];
            for (c, xc) in x.iter_mut().enumerate() {
                *xc = T::load8(vp.add(j * stride + i + 8 * c));
            }
            for (r, ar) in acc.iter_mut().enumerate() {
                let b = _mm256_broadcast_ss(&*wp.add((h0 + r) * len + j));
                for (a, xc) in ar.iter_mut().zip(&x) {
                    *a = _mm256_fmadd_ps(b, *xc, *a);
                }
            }
        }
        for (r, ar) in acc.iter().enumerate() {
            for (c, a) in ar.iter().enumerate() {
                _mm256_storeu_ps(op.add((h0 + r) * d + i + 8 * c), *a);
            }
        }
    }

    /// Every head's outputs, each value a chain of fused multiply-adds over
    /// the keys in order (the portable code's order), in blocks of up to 4
    /// heads × 16 outputs.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn weighted_sums<T: KvValue>(
        w: &[f32],
        len: usize,
        v: &[T],
        stride: usize,
        d: usize,
        o: &mut [f32],
    ) {
        let heads = o.len() / d;
        let whole = d / 8 * 8;
        let (vp, wp, op) = (v.as_ptr(), w.as_ptr(), o.as_mut_ptr());
        let mut h0 = 0;
        while h0 < heads {
            let nh = (heads - h0).min(4);
            let mut i = 0;
            while i < whole {
                let two = i + 16 <= whole;
                macro_rules! go {
                    ($nh:literal) => {
                        if two {
                            block::<T, $nh, 2>(wp, len, vp, stride, d, op, h0, i)
                        } else {
                            block::<T, $nh, 1>(wp, len, vp, stride, d, op, h0, i)
                        }
                    };
                }
                match nh {
                    1 => go!(1),
                    2 => go!(2),
                    3 => go!(3),
                    _ => go!(4),
                }
                i += if two { 16 } else { 8 };
            }
            super::sums_tail(wp, len, vp, stride, d, op, h0..h0 + nh, whole);
            h0 += nh;
        }
    }
}

/// The NEON forms (64-bit ARM): each 8-lane step of the contract is two
/// 4-lane registers, every value the same chain of fused multiply-adds
/// (`fmla`), so the same bits as the portable and x86 paths (tested under
/// emulation: `kernels/tests/aarch64.sh`).
#[cfg(target_arch = "aarch64")]
pub(crate) mod neon {
    use std::arch::aarch64::*;

    use super::{KvValue, EXP_P, LN2_HI, LN2_LO, LOG2E};

    /// Scores of eight keys at a time, eight lanes each (two registers).
    pub unsafe fn scores<T: KvValue>(q: &[f32], k: &[T], stride: usize, scale: f32, s: &mut [f32]) {
        let d = q.len();
        let whole = d / 8 * 8;
        let (qp, kp) = (q.as_ptr(), k.as_ptr());
        let n = s.len();
        let mut j0 = 0;
        while j0 < n {
            let nk = (n - j0).min(8);
            let mut a = [[vdupq_n_f32(0.0); 2]; 8];
            let mut i = 0;
            while i < whole {
                let (x0, x1) = (vld1q_f32(qp.add(i)), vld1q_f32(qp.add(i + 4)));
                for (c, acc) in a.iter_mut().enumerate().take(nk) {
                    let kr = kp.add((j0 + c) * stride + i);
                    acc[0] = vfmaq_f32(acc[0], x0, T::load4(kr));
                    acc[1] = vfmaq_f32(acc[1], x1, T::load4(kr.add(4)));
                }
                i += 8;
            }
            for (c, acc) in a.iter().enumerate().take(nk) {
                let mut l = [0f32; 8];
                vst1q_f32(l.as_mut_ptr(), acc[0]);
                vst1q_f32(l.as_mut_ptr().add(4), acc[1]);
                let t = super::tail_dot(q, kp.add((j0 + c) * stride), whole);
                s[j0 + c] = (super::tree(&l) + t) * scale;
            }
            j0 += nk;
        }
    }

    /// [`super::exp`] on four values (`fmaxnm`/`fminnm` send NaN to the
    /// bound, as `f32::max`/`min` do).
    #[inline(always)]
    pub(crate) unsafe fn exp4(x: float32x4_t) -> float32x4_t {
        let x = vminnmq_f32(vmaxnmq_f32(x, vdupq_n_f32(-87.0)), vdupq_n_f32(88.0));
        let n = vrndnq_f32(vmulq_f32(x, vdupq_n_f32(LOG2E)));
        let r = vfmaq_f32(x, n, vdupq_n_f32(-LN2_HI));
        let r = vfmaq_f32(r, n, vdupq_n_f32(-LN2_LO));
        let mut y = vdupq_n_f32(EXP_P[0]);
        for c in &EXP_P[1..] {
            y = vfmaq_f32(vdupq_n_f32(*c), y, r);
        }
        let y = vaddq_f32(vfmaq_f32(r, y, vmulq_f32(r, r)), vdupq_n_f32(1.0));
        let e = vshlq_n_s32::<23>(vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127)));
        vmulq_f32(y, vreinterpretq_f32_s32(e))
    }

    pub unsafe fn softmax(s: &mut [f32]) {
        let n = s.len();
        let whole = n / 8 * 8;
        let sp = s.as_mut_ptr();
        let max = s.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
        let vm = vdupq_n_f32(max);
        let mut lanes = [vdupq_n_f32(0.0); 2];
        let mut j = 0;
        while j < whole {
            for (h, lane) in lanes.iter_mut().enumerate() {
                let p = sp.add(j + 4 * h);
                let e = exp4(vsubq_f32(vld1q_f32(p), vm));
                vst1q_f32(p, e);
                *lane = vaddq_f32(*lane, e);
            }
            j += 8;
        }
        let mut l = [0f32; 8];
        vst1q_f32(l.as_mut_ptr(), lanes[0]);
        vst1q_f32(l.as_mut_ptr().add(4), lanes[1]);
        for (c, x) in s[whole..].iter_mut().enumerate() {
            *x = super::exp(*x - max);
            l[c] += *x;
        }
        let sum = super::tree(&l);
        let vsum = vdupq_n_f32(sum);
        let mut j = 0;
        while j < whole {
            for h in 0..2 {
                let p = sp.add(j + 4 * h);
                vst1q_f32(p, vdivq_f32(vld1q_f32(p), vsum));
            }
            j += 8;
        }
        for x in s[whole..].iter_mut() {
            *x /= sum;
        }
    }

    /// Heads `h0..h0 + NH`, outputs `i..i + 8`: one chain per output over
    /// the keys in order, each value row's 8 values loaded once.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn block<T: KvValue, const NH: usize>(
        wp: *const f32,
        len: usize,
        vp: *const T,
        stride: usize,
        d: usize,
        op: *mut f32,
        h0: usize,
        i: usize,
    ) {
        let mut acc = [[vdupq_n_f32(0.0); 2]; NH];
        for j in 0..len {
            let row = vp.add(j * stride + i);
            let x = [T::load4(row), T::load4(row.add(4))];
            for (r, ar) in acc.iter_mut().enumerate() {
                let b = vdupq_n_f32(*wp.add((h0 + r) * len + j));
                for (a, xc) in ar.iter_mut().zip(&x) {
                    *a = vfmaq_f32(*a, b, *xc);
                }
            }
        }
        for (r, ar) in acc.iter().enumerate() {
            for (c, a) in ar.iter().enumerate() {
                vst1q_f32(op.add((h0 + r) * d + i + 4 * c), *a);
            }
        }
    }

    pub unsafe fn weighted_sums<T: KvValue>(
        w: &[f32],
        len: usize,
        v: &[T],
        stride: usize,
        d: usize,
        o: &mut [f32],
    ) {
        let heads = o.len() / d;
        let whole = d / 8 * 8;
        let (vp, wp, op) = (v.as_ptr(), w.as_ptr(), o.as_mut_ptr());
        let mut h0 = 0;
        while h0 < heads {
            let nh = (heads - h0).min(4);
            for i in (0..whole).step_by(8) {
                match nh {
                    1 => block::<T, 1>(wp, len, vp, stride, d, op, h0, i),
                    2 => block::<T, 2>(wp, len, vp, stride, d, op, h0, i),
                    3 => block::<T, 3>(wp, len, vp, stride, d, op, h0, i),
                    _ => block::<T, 4>(wp, len, vp, stride, d, op, h0, i),
                }
            }
            super::sums_tail(wp, len, vp, stride, d, op, h0..h0 + nh, whole);
            h0 += nh;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// Plain f64 attention, to check the kernel's values.
    fn reference<T: KvValue>(shape: AttnShape, s: &AttnSeq<'_, T>) -> Vec<f64> {
        let AttnShape {
            n_head,
            n_kv,
            d,
            scale,
        } = shape;
        let row = n_kv * d;
        let len = s.k.len() / row;
        let mut out = vec![0f64; n_head * d];
        for h in 0..n_head {
            let g = h / (n_head / n_kv);
            let sc: Vec<f64> = (0..len)
                .map(|j| {
                    (0..d)
                        .map(|i| s.q[h * d + i] as f64 * s.k[j * row + g * d + i].as_f32() as f64)
                        .sum::<f64>()
                        * scale as f64
                })
                .collect();
            let m = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = sc.iter().map(|x| (x - m).exp()).collect();
            let z: f64 = e.iter().sum();
            for (j, ej) in e.iter().enumerate() {
                for i in 0..d {
                    out[h * d + i] += ej / z * s.v[j * row + g * d + i].as_f32() as f64;
                }
            }
        }
        out
    }

    #[test]
    fn every_path_gives_the_same_bits_and_the_right_values() {
        every_path(f16::from_f32);
    }

    /// The same with an f32 cache (the safetensors models).
    #[test]
    fn every_path_gives_the_same_bits_with_an_f32_cache() {
        every_path(|x| x);
    }

    fn every_path<T: KvValue>(make: fn(f32) -> T) {
        let _lock = crate::PATH_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        // Odd head sizes (a tail past the last 8), grouped heads, one key,
        // many keys, and sequences of different lengths in one call.
        for &(n_head, n_kv, d) in &[(14, 2, 64), (4, 1, 256), (9, 3, 64), (3, 3, 13), (2, 1, 40)] {
            let mut seed = (n_head * 1000 + d) as u64;
            let lens = [1usize, 5, 37, 300];
            let row = n_kv * d;
            let data: Vec<(Vec<f32>, Vec<T>, Vec<T>)> = lens
                .iter()
                .map(|&len| {
                    let q = (0..n_head * d).map(|_| lcg(&mut seed)).collect();
                    let k = (0..len * row).map(|_| make(lcg(&mut seed) * 3.0)).collect();
                    let v = (0..len * row).map(|_| make(lcg(&mut seed))).collect();
                    (q, k, v)
                })
                .collect();
            let seqs: Vec<AttnSeq<T>> = data.iter().map(|(q, k, v)| AttnSeq { q, k, v }).collect();
            let shape = AttnShape {
                n_head,
                n_kv,
                d,
                scale: (1.0 / (d as f64).sqrt()) as f32,
            };
            let mut results = Vec::new();
            for p in Path::ALL.into_iter().filter(|p| p.available()) {
                assert!(crate::force_path(Some(p)));
                let mut all = vec![0f32; seqs.len() * n_head * d];
                attend_decode(shape, &seqs, &mut all).unwrap();
                // Each sequence alone gives the same bits as in the batch.
                for (i, s) in seqs.iter().enumerate() {
                    let mut one = vec![0f32; n_head * d];
                    attend_decode(shape, std::slice::from_ref(s), &mut one).unwrap();
                    let part = &all[i * n_head * d..(i + 1) * n_head * d];
                    assert!(
                        one.iter()
                            .zip(part)
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{p:?}: sequence {i} alone differs from the batch"
                    );
                    let want = reference(shape, s);
                    for (g, w) in part.iter().zip(&want) {
                        assert!(
                            (*g as f64 - w).abs() < 1e-5,
                            "{p:?} heads {n_head}/{n_kv} d {d} len {}: {g} vs {w}",
                            lens[i]
                        );
                    }
                }
                results.push((p, all));
            }
            crate::force_path(None);
            let (p0, first) = &results[0];
            for (p, r) in &results[1..] {
                assert!(
                    first.iter().zip(r).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{p:?} differs from {p0:?} (heads {n_head}/{n_kv}, d {d})"
                );
            }
        }
    }

    #[test]
    fn exp_is_close_to_libm_and_the_same_on_every_path() {
        let _lock = crate::PATH_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let xs: Vec<f32> = (0..20_000).map(|i| -90.0 + i as f32 * 0.0046).collect();
        for &x in &xs {
            let (got, want) = (exp(x), x.exp());
            if x > -87.0 {
                let ulp = (got.to_bits() as i64 - want.to_bits() as i64).abs();
                assert!(ulp <= 2, "exp({x}) = {got}, libm {want} ({ulp} ulp)");
            }
        }
        // Scores whose x·log2(e) is exactly a half (rounded to even on every
        // path), with a 0 as the maximum so they reach `exp` unchanged.
        let mut ties = vec![0f32];
        for k in -60..0 {
            let t = k as f32 + 0.5;
            let x0 = t / LOG2E;
            let hit = (-40i32..40)
                .map(|d| f32::from_bits((x0.to_bits() as i32 + d) as u32))
                .find(|x| x * LOG2E == t);
            ties.extend(hit);
        }
        assert!(ties.len() > 30, "{} ties found", ties.len());
        // A whole multiple of eight and a tail, through every SIMD softmax
        // and the scalar one; ties and plain values; -inf scores.
        let plain: Vec<f32> = xs.iter().map(|x| x * 0.1).take(1003).collect();
        let mut inf = plain.clone();
        inf[5] = f32::NEG_INFINITY;
        for input in [plain, ties, inf] {
            let mut a = input.clone();
            softmax(Path::Scalar, &mut a);
            for p in Path::ALL.into_iter().filter(|p| p.available()) {
                let mut b = input.clone();
                softmax(p, &mut b);
                assert!(
                    a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
                    "{p:?}: softmax differs from the portable one"
                );
            }
        }
    }

    #[test]
    fn bad_shapes_are_refused() {
        let q = vec![0f32; 8];
        let k = vec![f16::ZERO; 12];
        let shape = AttnShape {
            n_head: 2,
            n_kv: 1,
            d: 4,
            scale: 0.5,
        };
        let s = AttnSeq {
            q: &q,
            k: &k,
            v: &k,
        };
        let mut out = vec![0f32; 8];
        attend_decode(shape, &[s], &mut out).unwrap();
        let bad_k = AttnSeq {
            q: &q,
            k: &k[..10],
            v: &k[..10],
        };
        assert!(attend_decode(shape, &[bad_k], &mut out).is_err());
        let empty: AttnSeq<f16> = AttnSeq {
            q: &q,
            k: &[],
            v: &[],
        };
        assert!(attend_decode(shape, &[empty], &mut out).is_err());
        assert!(attend_decode(shape, &[s], &mut out[..4]).is_err());
        let odd = AttnShape {
            n_head: 3,
            n_kv: 2,
            ..shape
        };
        assert!(attend_decode(odd, &[s], &mut out).is_err());
    }
}
