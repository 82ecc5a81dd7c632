//! The repacked matrix products on 64-bit ARM (NEON, and the `dotprod`
//! extension's `sdot` where the CPU has it: ARMv8.2 and later, so most
//! phones and boards since 2018 and every Apple and Graviton core).
//!
//! The interleaved layouts of `x8` and `x8k` were laid out for 256-bit
//! registers: 32 bytes per step hold four consecutive weights of each of
//! 8 rows. A 128-bit NEON register holds half of that, rows `4h..4h+4`, and
//! `sdot` against four broadcast activation bytes advances those 4 dot
//! products at once, as `vpdpbusd` does for 8. Without `dotprod` the same
//! sums come from `smull` (8 products of 16 bits) and `sadalp` (pairs added
//! into 32-bit lanes), folded into one sum per row at the end of the block.
//!
//! The arithmetic contract is the one stated in `x8` and `x8k` (exact
//! integer sums per block, then the same fused multiply-adds in the same
//! order), so this path gives the portable path's bits (tested under
//! emulation: `kernels/tests/aarch64.sh`).
//!
//! `sdot` is written as inline assembly because Rust's `vdotq_s32` is not
//! stable yet; the f16 scales are widened with `fcvtl` (base ARMv8) for the
//! same reason (`float16x4_t` is unstable).

use std::arch::aarch64::*;
use std::arch::asm;

use crate::acts::ActRow;
use crate::format::Format;
use crate::x8::{group_block_bytes, offsets};
use crate::x8k::{gbb, GBB6, HI6, LO6, MINS, QH, QS, SC, SC6};

/// Four f16 at `p` (little-endian), widened to f32 exactly.
#[inline(always)]
unsafe fn f16x4(p: *const u8) -> float32x4_t {
    let h: uint16x4_t = vld1_u16(p as *const u16);
    let r: float32x4_t;
    asm!("fcvtl {0:v}.4s, {1:v}.4h", out(vreg) r, in(vreg) h, options(pure, nomem, nostack));
    r
}

/// Four bytes at `p` (any alignment) in every 32-bit lane.
#[inline(always)]
unsafe fn bcast4(p: *const i8) -> int8x16_t {
    vreinterpretq_s8_s32(vdupq_n_s32(std::ptr::read_unaligned(p as *const i32)))
}

/// Lane `j` of the result: `Σ_s m[2j + s] · pair[s]` over a vector of 8 i16
/// (4 rows × a pair) and the pair in every lane, as x86's `madd` does.
#[inline(always)]
unsafe fn madd_pairs(m: int16x8_t, pair: int16x8_t) -> int32x4_t {
    vpaddq_s32(
        vmull_s16(vget_low_s16(m), vget_low_s16(pair)),
        vmull_high_s16(m, pair),
    )
}

/// A pair of i16 `(lo, hi)` in every 32-bit lane.
#[inline(always)]
unsafe fn pair16(lo: i32, hi: i32) -> int16x8_t {
    let v = (lo as i16 as u16 as u32) | ((hi as i16 as u16 as u32) << 16);
    vreinterpretq_s16_u32(vdupq_n_u32(v))
}

/// The three kernels over one flavour of 4-byte dot product: `$acc` is the
/// accumulator's type, `$zero` a fresh one, `$add!(acc, w, x)` adds lane
/// `j`'s four products of bytes `4j..4j+4` and `$fin(acc)` gives the four
/// i32 sums (one per weight row).
macro_rules! kernels {
    ($feat:literal, $acc:ty, $zero:expr, $add:ident, $fin:ident) => {
        /// `R` activation rows × one group of 8 rows of a 32-weight format.
        #[target_feature(enable = $feat)]
        pub unsafe fn dot_group<const R: usize>(
            f: Format,
            gw: &[u8],
            xs: &[ActRow<'_>; R],
            out: &mut [[f32; 8]; R],
        ) {
            let gbb = group_block_bytes(f);
            let nb = gw.len() / gbb;
            let (mo, qho, qo) = offsets(f);
            let min = matches!(f, Format::Q4_1 | Format::Q5_1);
            let q5 = matches!(f, Format::Q5_0 | Format::Q5_1);
            let off: i32 = match f {
                Format::Q4_0 => 8,
                Format::Q5_0 => 16,
                _ => 0,
            };
            let m4 = vdupq_n_u8(0xF);
            // Byte b of lane j ← byte 0 of lane j; then bit b of it.
            let spread: [u8; 16] = [0, 0, 0, 0, 4, 4, 4, 4, 8, 8, 8, 8, 12, 12, 12, 12];
            let spread = vld1q_u8(spread.as_ptr());
            let bits = vreinterpretq_u8_u32(vdupq_n_u32(0x0804_0201));
            let b10 = vdupq_n_u8(0x10);
            let z = vdupq_n_f32(0.0);
            let mut acc = [[z; 2]; R];
            let mut bacc = [[z; 2]; R];
            for i in 0..nb {
                let blk = gw.as_ptr().add(i * gbb);
                let dv = [f16x4(blk), f16x4(blk.add(8))];
                // w[t][h]: rows 4h..4h+4; t < 4 weights 4t.., t >= 4
                // weights 16+4(t-4).. (Q8_0: weights 4t..).
                let mut w = [[vdupq_n_s8(0); 2]; 8];
                if f == Format::Q8_0 {
                    for (t, wt) in w.iter_mut().enumerate() {
                        for (h, v) in wt.iter_mut().enumerate() {
                            *v = vld1q_s8(blk.add(qo + 32 * t + 16 * h) as *const i8);
                        }
                    }
                } else {
                    for h in 0..2 {
                        let qh = if q5 {
                            vld1q_u32(blk.add(qho + 16 * h) as *const u32)
                        } else {
                            vdupq_n_u32(0)
                        };
                        // The fifth bits of weights sh..sh+4 as 0x10 per byte.
                        let fifth = |sh: i32| {
                            let v = vshlq_u32(qh, vdupq_n_s32(-sh));
                            let v = vqtbl1q_u8(vreinterpretq_u8_u32(v), spread);
                            vandq_u8(vtstq_u8(v, bits), b10)
                        };
                        for t in 0..4 {
                            let c = vld1q_u8(blk.add(qo + 32 * t + 16 * h));
                            let mut lo = vandq_u8(c, m4);
                            let mut hi = vshrq_n_u8::<4>(c);
                            if q5 {
                                lo = vorrq_u8(lo, fifth(4 * t as i32));
                                hi = vorrq_u8(hi, fifth(16 + 4 * t as i32));
                            }
                            w[t][h] = vreinterpretq_s8_u8(lo);
                            w[4 + t][h] = vreinterpretq_s8_u8(hi);
                        }
                    }
                }
                let mv = if min {
                    [f16x4(blk.add(mo)), f16x4(blk.add(mo + 8))]
                } else {
                    [z; 2]
                };
                for r in 0..R {
                    let xp = xs[r].qs.as_ptr().add(32 * i);
                    let mut s: [$acc; 2] = [$zero; 2];
                    for (t, wt) in w.iter().enumerate() {
                        let xb = bcast4(xp.add(4 * t));
                        s[0] = $add!(s[0], wt[0], xb);
                        s[1] = $add!(s[1], wt[1], xb);
                    }
                    let xd = vdupq_n_f32(xs[r].d[i]);
                    for h in 0..2 {
                        let mut si = $fin(s[h]);
                        if off != 0 {
                            si = vsubq_s32(si, vdupq_n_s32(off * xs[r].sums[i]));
                        }
                        acc[r][h] = vfmaq_f32(acc[r][h], vcvtq_f32_s32(si), vmulq_f32(dv[h], xd));
                        if min {
                            bacc[r][h] = vfmaq_f32(bacc[r][h], mv[h], vdupq_n_f32(xs[r].s[i]));
                        }
                    }
                }
            }
            for r in 0..R {
                for h in 0..2 {
                    let v = if min {
                        vaddq_f32(acc[r][h], bacc[r][h])
                    } else {
                        acc[r][h]
                    };
                    vst1q_f32(out[r].as_mut_ptr().add(4 * h), v);
                }
            }
        }

        /// `R` activation rows × one group of 8 Q4_K (or, with `FIVE`,
        /// Q5_K) weight rows.
        #[target_feature(enable = $feat)]
        pub unsafe fn dot_group_k<const R: usize, const FIVE: bool>(
            gw: &[u8],
            xs: &[ActRow<'_>; R],
            out: &mut [[f32; 8]; R],
        ) {
            let gb = gbb(FIVE);
            let nb = gw.len() / gb;
            let m4 = vdupq_n_u8(0xF);
            let one = vdupq_n_u8(1);
            let z = vdupq_n_f32(0.0);
            let mut acc = [[z; 2]; R];
            let mut bacc = [[z; 2]; R];
            for i in 0..nb {
                let blk = gw.as_ptr().add(i * gb);
                let mut isum = [[vdupq_n_s32(0); 2]; R];
                for s in 0..8 {
                    let (c, high) = (s / 2, s % 2 == 1);
                    let mut w = [[vdupq_n_s8(0); 2]; 8];
                    for (t, wt) in w.iter_mut().enumerate() {
                        for (h, v) in wt.iter_mut().enumerate() {
                            let q = vld1q_u8(blk.add(QS + (8 * c + t) * 32 + 16 * h));
                            let mut u = if high {
                                vshrq_n_u8::<4>(q)
                            } else {
                                vandq_u8(q, m4)
                            };
                            if FIVE {
                                let hb = vld1q_u8(blk.add(QH + t * 32 + 16 * h));
                                let hb = vshlq_u8(hb, vdupq_n_s8(-(s as i8)));
                                u = vorrq_u8(u, vshlq_n_u8::<4>(vandq_u8(hb, one)));
                            }
                            *v = vreinterpretq_s8_u8(u);
                        }
                    }
                    let sc8 = vmovl_u8(vld1_u8(blk.add(SC + 8 * s)));
                    let scv = [
                        vreinterpretq_s32_u32(vmovl_u16(vget_low_u16(sc8))),
                        vreinterpretq_s32_u32(vmovl_high_u16(sc8)),
                    ];
                    for r in 0..R {
                        let xp = xs[r].qs.as_ptr().add(256 * i + 32 * s);
                        let mut d: [$acc; 2] = [$zero; 2];
                        for (t, wt) in w.iter().enumerate() {
                            let xb = bcast4(xp.add(4 * t));
                            d[0] = $add!(d[0], wt[0], xb);
                            d[1] = $add!(d[1], wt[1], xb);
                        }
                        for h in 0..2 {
                            isum[r][h] = vmlaq_s32(isum[r][h], $fin(d[h]), scv[h]);
                        }
                    }
                }
                let dv = [f16x4(blk), f16x4(blk.add(8))];
                let ndmin = [vnegq_f32(f16x4(blk.add(16))), vnegq_f32(f16x4(blk.add(24)))];
                for r in 0..R {
                    let x = &xs[r];
                    // Sums per 32 as i16 pairs (sub-blocks 2p, 2p+1).
                    let sums = &x.sums[16 * i..16 * i + 16];
                    let mut bint = [vdupq_n_s32(0); 2];
                    for p in 0..4 {
                        let pair = pair16(
                            sums[4 * p] + sums[4 * p + 1],
                            sums[4 * p + 2] + sums[4 * p + 3],
                        );
                        for (h, b) in bint.iter_mut().enumerate() {
                            let m = vld1q_s16(blk.add(MINS + 32 * p + 16 * h) as *const i16);
                            *b = vaddq_s32(*b, madd_pairs(m, pair));
                        }
                    }
                    let xd = vdupq_n_f32(x.d[i]);
                    for h in 0..2 {
                        acc[r][h] =
                            vfmaq_f32(acc[r][h], vcvtq_f32_s32(isum[r][h]), vmulq_f32(dv[h], xd));
                        bacc[r][h] =
                            vfmaq_f32(bacc[r][h], vcvtq_f32_s32(bint[h]), vmulq_f32(ndmin[h], xd));
                    }
                }
            }
            for r in 0..R {
                for h in 0..2 {
                    vst1q_f32(
                        out[r].as_mut_ptr().add(4 * h),
                        vaddq_f32(acc[r][h], bacc[r][h]),
                    );
                }
            }
        }

        /// `R` activation rows × one group of 8 Q6_K weight rows.
        #[target_feature(enable = $feat)]
        pub unsafe fn dot_group_q6k<const R: usize>(
            gw: &[u8],
            xs: &[ActRow<'_>; R],
            out: &mut [[f32; 8]; R],
        ) {
            let nb = gw.len() / GBB6;
            let m4 = vdupq_n_u8(0xF);
            let m3 = vdupq_n_u8(3);
            let z = vdupq_n_f32(0.0);
            let mut acc = [[z; 2]; R];
            for i in 0..nb {
                let blk = gw.as_ptr().add(i * GBB6);
                // pairs[p][h]: rows 4h.., lanes (scale 2p, scale 2p+1) as i16.
                let mut pairs = [[vdupq_n_s16(0); 2]; 8];
                for (p, v) in pairs.iter_mut().enumerate() {
                    for (h, vh) in v.iter_mut().enumerate() {
                        *vh = vld1q_s16(blk.add(SC6 + 32 * p + 16 * h) as *const i16);
                    }
                }
                let mut isum = [[vdupq_n_s32(0); 2]; R];
                for c in 0..4 {
                    // Chunk c: sub-blocks 4c, 4c+1 in the low nibbles
                    // (steps 0–3, 4–7), 4c+2, 4c+3 in the high ones.
                    let mut w = [[vdupq_n_s8(0); 2]; 16];
                    for t in 0..8 {
                        for h in 0..2 {
                            let nib = vld1q_u8(blk.add(LO6 + (8 * c + t) * 32 + 16 * h));
                            let hb = vld1q_u8(blk.add(HI6 + (8 * (c / 2) + t) * 32 + 16 * h));
                            let hb = vshlq_u8(hb, vdupq_n_s8(-(4 * (c % 2) as i8)));
                            let hlo = vshlq_n_u8::<4>(vandq_u8(hb, m3));
                            let hhi = vshlq_n_u8::<4>(vandq_u8(vshrq_n_u8::<2>(hb), m3));
                            w[t][h] = vreinterpretq_s8_u8(vorrq_u8(vandq_u8(nib, m4), hlo));
                            w[8 + t][h] = vreinterpretq_s8_u8(vorrq_u8(vshrq_n_u8::<4>(nib), hhi));
                        }
                    }
                    // Scales of sub-blocks 4c..4c+4 as i32 lanes.
                    let mut scs = [[vdupq_n_s32(0); 2]; 4];
                    for h in 0..2 {
                        let (a, b) = (
                            vreinterpretq_s32_s16(pairs[2 * c][h]),
                            vreinterpretq_s32_s16(pairs[2 * c + 1][h]),
                        );
                        scs[0][h] = vshrq_n_s32::<16>(vshlq_n_s32::<16>(a));
                        scs[1][h] = vshrq_n_s32::<16>(a);
                        scs[2][h] = vshrq_n_s32::<16>(vshlq_n_s32::<16>(b));
                        scs[3][h] = vshrq_n_s32::<16>(b);
                    }
                    for r in 0..R {
                        let xp = xs[r].qs.as_ptr().add(256 * i + 64 * c);
                        for (sb, sc) in scs.iter().enumerate() {
                            let mut d: [$acc; 2] = [$zero; 2];
                            for u in 0..4 {
                                // Sub-block sb: vectors 4sb..4sb+4, activations 16sb + 4u.
                                let xb = bcast4(xp.add(16 * sb + 4 * u));
                                d[0] = $add!(d[0], w[4 * sb + u][0], xb);
                                d[1] = $add!(d[1], w[4 * sb + u][1], xb);
                            }
                            for h in 0..2 {
                                isum[r][h] = vmlaq_s32(isum[r][h], $fin(d[h]), sc[h]);
                            }
                        }
                    }
                }
                let dv = [f16x4(blk), f16x4(blk.add(8))];
                for r in 0..R {
                    let x = &xs[r];
                    let sums = &x.sums[16 * i..16 * i + 16];
                    let mut bint = [vdupq_n_s32(0); 2];
                    for (p, v) in pairs.iter().enumerate() {
                        let pair = pair16(sums[2 * p], sums[2 * p + 1]);
                        for h in 0..2 {
                            bint[h] = vaddq_s32(bint[h], madd_pairs(v[h], pair));
                        }
                    }
                    let xd = vdupq_n_f32(x.d[i]);
                    for h in 0..2 {
                        let t = vsubq_s32(isum[r][h], vshlq_n_s32::<5>(bint[h]));
                        acc[r][h] = vfmaq_f32(acc[r][h], vcvtq_f32_s32(t), vmulq_f32(dv[h], xd));
                    }
                }
            }
            for r in 0..R {
                for h in 0..2 {
                    vst1q_f32(out[r].as_mut_ptr().add(4 * h), acc[r][h]);
                }
            }
        }
    };
}

/// Base NEON: `smull`/`sadalp` into pair sums, folded per row at the end.
pub mod plain {
    use super::*;

    /// Pair sums of rows (4h, 4h+1) and of rows (4h+2, 4h+3).
    type Acc = (int32x4_t, int32x4_t);

    macro_rules! add {
        ($a:expr, $w:expr, $x:expr) => {{
            let (lo, hi) = $a;
            let (w, x) = ($w, $x);
            (
                vpadalq_s16(lo, vmull_s8(vget_low_s8(w), vget_low_s8(x))),
                vpadalq_s16(hi, vmull_high_s8(w, x)),
            )
        }};
    }

    #[inline(always)]
    unsafe fn fin(a: Acc) -> int32x4_t {
        vpaddq_s32(a.0, a.1)
    }

    kernels!("neon", Acc, (vdupq_n_s32(0), vdupq_n_s32(0)), add, fin);
}

/// NEON with `sdot` (the `dotprod` extension).
pub mod dot {
    use super::*;

    macro_rules! add {
        ($a:expr, $w:expr, $x:expr) => {{
            let mut a: int32x4_t = $a;
            let (w, x): (int8x16_t, int8x16_t) = ($w, $x);
            asm!(
                "sdot {0:v}.4s, {1:v}.16b, {2:v}.16b",
                inout(vreg) a,
                in(vreg) w,
                in(vreg) x,
                options(pure, nomem, nostack)
            );
            a
        }};
    }

    #[inline(always)]
    fn fin(a: int32x4_t) -> int32x4_t {
        a
    }

    kernels!("neon,dotprod", int32x4_t, vdupq_n_s32(0), add, fin);
}
