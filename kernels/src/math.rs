//! Elementary functions with fixed arithmetic, for tables a model builds at
//! load (rotary position tables): the same bits on every CPU, operating
//! system and C library.
//!
//! `f32::powf`, `sin` and `cos` call the platform's libm, whose results
//! are not specified to the last bit: glibc picks an FMA or an SSE2 variant
//! at run time on x86-64, ARM builds contract differently, and versions
//! change. A rotary table feeds every attention score, so one differing
//! entry changes a model's logits. Here each function works in f64 with
//! only IEEE-754 basic operations (`+ − × ÷`, each rounded once; Rust never
//! contracts them into fused operations), then rounds once to f32. The f64
//! results are within a few f64 ulps, so the f32 result is the correctly
//! rounded value except when the true value lies within about 1e-15
//! (relative) of a rounding boundary, and in that case still the same on
//! every machine.

/// ln 2 in two parts: `k · LN2_HI` is exact for |k| < 2²⁰ (fdlibm's split).
const LN2_HI: f64 = 6.931_471_803_691_238_164_90e-1;
const LN2_LO: f64 = 1.908_214_929_270_587_700_02e-10;
/// π/2 in four parts (fdlibm's `pio2_1`, `pio2_2`, `pio2_3`, `pio2_3t`):
/// `k · part` is exact for the first three while |k| < 2²⁰.
const PIO2: [f64; 4] = [
    1.570_796_326_734_125_614_17,
    6.077_100_506_303_965_976_60e-11,
    2.022_266_248_711_166_455_80e-21,
    8.478_427_660_368_899_569_97e-32,
];
const TWO_OVER_PI: f64 = 6.366_197_723_675_813_824_33e-1;

/// Natural logarithm of a positive, finite, normal `x`; NaN otherwise.
fn ln(x: f64) -> f64 {
    if !(x.is_finite() && x >= f64::MIN_POSITIVE) {
        return f64::NAN;
    }
    let bits = x.to_bits();
    let mut e = ((bits >> 52) & 0x7ff) as i64 - 1023;
    // x = m · 2^e with m in [1, 2), then in [√½, √2).
    let mut m = f64::from_bits((bits & 0x000f_ffff_ffff_ffff) | 0x3ff0_0000_0000_0000);
    if m > std::f64::consts::SQRT_2 {
        m *= 0.5;
        e += 1;
    }
    // ln m = 2·atanh(s) = 2(s + s³/3 + s⁵/5 + …), |s| ≤ 0.172.
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    let mut p = 0.0;
    for j in (0..14).rev() {
        p = p * s2 + 1.0 / (2 * j + 1) as f64;
    }
    let e = e as f64;
    e * LN2_HI + (e * LN2_LO + 2.0 * s * p)
}

/// e^x in f64 (0 below −746, ∞ above 709.8, NaN for NaN), within a few
/// f64 ulps, the same bits everywhere. Also for probabilities that are
/// reported (the judges' softmaxes), where libm's `exp` could move a
/// printed digit between machines.
pub fn exp(x: f64) -> f64 {
    if x < -746.0 {
        return 0.0;
    }
    if x > 709.8 {
        return f64::INFINITY;
    }
    let k = (x / std::f64::consts::LN_2).round();
    // |r| ≤ ln2/2; exp r = 1 + r(1 + r/2(1 + r/3(…))).
    let r = (x - k * LN2_HI) - k * LN2_LO;
    let mut p = 1.0;
    for n in (1..=18).rev() {
        p = 1.0 + r / n as f64 * p;
    }
    let two = |e: i64| f64::from_bits(((e + 1023) as u64) << 52);
    let k = k as i64;
    if k < -1000 {
        // Below the normal range: two exact-power steps, one rounding.
        p * two(k + 1000) * two(-1000)
    } else {
        p * two(k)
    }
}

/// `base^e` for a positive, normal `base` and `|e · ln base| < 700`,
/// rounded once to f32.
pub fn powf(base: f32, e: f32) -> f32 {
    exp(e as f64 * ln(base as f64)) as f32
}

/// `(sin a, cos a)`, each rounded once to f32, for |a| < 1.6·10⁶ (the
/// argument reduction is exact there); past it, the platform's.
pub fn sin_cos(a: f32) -> (f32, f32) {
    let x = a as f64;
    if !(x.abs() < 1.6e6) {
        return (a.sin(), a.cos());
    }
    let k = (x * TWO_OVER_PI).round();
    let r = (((x - k * PIO2[0]) - k * PIO2[1]) - k * PIO2[2]) - k * PIO2[3];
    // |r| ≤ π/4 (plus rounding): Taylor series to r²¹ and r²⁰.
    let r2 = r * r;
    let mut s = 1.0;
    let mut c = 1.0;
    for n in (1..=10).rev() {
        s = 1.0 - r2 / ((2 * n) * (2 * n + 1)) as f64 * s;
        c = 1.0 - r2 / ((2 * n - 1) * (2 * n)) as f64 * c;
    }
    let (s, c) = (r * s, c);
    let (sin, cos) = match (k as i64).rem_euclid(4) {
        0 => (s, c),
        1 => (c, -s),
        2 => (-s, -c),
        _ => (-c, s),
    };
    (sin as f32, cos as f32)
}

/// Rotary frequencies `1 / base^(2i/d)` for `i < d/2`, as Hugging Face and
/// anjeon compute them in f32 (the exponent `2i/d` rounded to f32, the
/// quotient in f32), with [`powf`] for the power.
pub fn rope_inv_freq(head_dim: usize, base: f32) -> Vec<f32> {
    (0..head_dim)
        .step_by(2)
        .map(|i| 1f32 / powf(base, i as f32 / head_dim as f32))
        .collect()
}

/// Rotary tables `cos`, `sin`, each `positions × inv.len()` row-major:
/// entry `(p, i)` is of the f32 angle `p · inv[i]` (one rounded product,
/// as a `[p]ᵀ × inv` matrix product gives it).
pub fn rope_tables(inv: &[f32], positions: usize) -> (Vec<f32>, Vec<f32>) {
    let n = inv.len() * positions;
    let (mut cos, mut sin) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for p in 0..positions {
        for &f in inv {
            let (s, c) = sin_cos(p as f32 * f);
            sin.push(s);
            cos.push(c);
        }
    }
    (cos, sin)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against the platform's f64 functions (a different method, correctly
    /// rounded or within an ulp of f64): the f32 results agree except at
    /// near-ties, which a few thousand random arguments do not hit.
    #[test]
    fn agrees_with_the_platform_in_f64() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut off = 0;
        for t in 0..20_000 {
            let u = (next() >> 11) as f64 / (1u64 << 53) as f64;
            // Angles from 0 to ~1.3e5 (a 32k context at frequency 1 and
            // past it), dense near 0.
            let a = if t % 2 == 0 { u * 8.0 } else { u * 131_072.0 } as f32;
            let (s, c) = sin_cos(a);
            let (ws, wc) = ((a as f64).sin() as f32, (a as f64).cos() as f32);
            off += usize::from(s != ws) + usize::from(c != wc);
            assert!((s - ws).abs() <= f32::EPSILON * ws.abs().max(1e-30) * 1.01);
            assert!((c - wc).abs() <= f32::EPSILON * wc.abs().max(1e-30) * 1.01);
            let (b, e) = (1.0f32 + u as f32 * 1e6, (t % 64) as f32 / 64.0);
            let w = (b as f64).powf(e as f64) as f32;
            let got = powf(b, e);
            off += usize::from(got != w);
            assert!(
                (got - w).abs() <= f32::EPSILON * w * 1.01,
                "{b}^{e}: {got} vs {w}"
            );
        }
        eprintln!("{off} of 60000 results a ulp from the platform's");
        assert!(off <= 2, "{off} results off by one ulp");
        for x in [-745.0, -720.0, -1.0e-300, 0.0, 1.0, 88.7, 709.0] {
            let (got, want) = (exp(x), x.exp());
            assert!(
                (got - want).abs() <= 4.0 * f64::EPSILON * want,
                "exp {x}: {got} vs {want}"
            );
        }
        assert_eq!((exp(-800.0), exp(710.0)), (0.0, f64::INFINITY));
        assert!(exp(f64::NAN).is_nan());
        assert_eq!(sin_cos(0.0), (0.0, 1.0));
        assert_eq!(powf(10_000.0, 0.0), 1.0);
        assert_eq!(powf(2.0, 0.5), std::f32::consts::SQRT_2);
        assert!(ln(0.0).is_nan() && ln(-1.0).is_nan());
    }

    /// Fixed values (computed here once; any change of method or order
    /// moves them): the tables of a 64-wide head at base 10⁴ and 10⁶.
    #[test]
    fn tables_have_the_committed_bits() {
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        for base in [10_000f32, 1_000_000.0] {
            let inv = rope_inv_freq(64, base);
            let (c, s) = rope_tables(&inv, 4096);
            for v in inv.iter().chain(&c).chain(&s) {
                h = (h ^ v.to_bits() as u64).wrapping_mul(0x100_0000_01b3);
            }
        }
        assert_eq!(h, 0x74f3_2c4b_aab1_4ddf, "rotary tables checksum {h:#x}");
    }
}
