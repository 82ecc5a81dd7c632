//! The kernels against a plain reference: dequantize the weights and the
//! quantized activations, multiply in f64. Both paths, every format, odd
//! shapes; and the portable path bit-identical to the SIMD one.

use anjeon_kernels::{
    dequantize_row, force_path, matmul, path, quantize_acts, repackable, Format, KernelError,
    Packed, Path,
};
use half::f16;
use std::sync::Mutex;

/// Tests that switch the path must not interleave.
static PATH_LOCK: Mutex<()> = Mutex::new(());

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E3779B97F4A7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
}

fn put_f16(b: &mut [u8], at: usize, v: f32) {
    b[at..at + 2].copy_from_slice(&f16::from_f32(v).to_le_bytes());
}

/// Random blocks: random quant bytes, sane f16 scales.
fn weights(f: Format, n: usize, k: usize, rng: &mut Rng) -> Vec<u8> {
    let bb = f.block_bytes();
    let mut w: Vec<u8> = (0..n * f.row_bytes(k)).map(|_| rng.next() as u8).collect();
    for b in w.chunks_exact_mut(bb) {
        let s = 0.002 + 0.02 * rng.unit();
        match f {
            Format::Q4_0 | Format::Q5_0 | Format::Q8_0 => put_f16(b, 0, s),
            Format::Q4_1 | Format::Q5_1 => {
                put_f16(b, 0, s);
                put_f16(b, 2, -0.1 + 0.2 * rng.unit());
            }
            Format::Q4K | Format::Q5K => {
                put_f16(b, 0, s / 8.0);
                put_f16(b, 2, s / 16.0);
            }
            Format::Q6K => put_f16(b, 208, s / 16.0),
        }
    }
    w
}

fn acts(m: usize, k: usize, rng: &mut Rng) -> Vec<f32> {
    (0..m * k).map(|_| (rng.unit() - 0.5) * 4.0).collect()
}

/// Reference: dequantized weights · dequantized activations, in f64.
fn reference(f: Format, w: &[u8], n: usize, k: usize, x: &[f32]) -> Vec<f64> {
    let q = quantize_acts(f, x, k).unwrap();
    let xd = q.dequantize();
    let m = x.len() / k;
    let mut wd = vec![0f32; n * k];
    let rb = f.row_bytes(k);
    for j in 0..n {
        dequantize_row(f, &w[j * rb..(j + 1) * rb], &mut wd[j * k..(j + 1) * k]);
    }
    let mut y = vec![0f64; m * n];
    for r in 0..m {
        for j in 0..n {
            y[r * n + j] = (0..k)
                .map(|e| xd[r * k + e] as f64 * wd[j * k + e] as f64)
                .sum();
        }
    }
    y
}

fn check(f: Format, m: usize, n: usize, k: usize, seed: u64) {
    let mut rng = Rng(seed);
    let w = weights(f, n, k, &mut rng);
    let x = acts(m, k, &mut rng);
    let want = reference(f, &w, n, k, &x);
    let _g = PATH_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut outs = Vec::new();
    for p in Path::ALL.into_iter().filter(|p| p.available()) {
        assert!(force_path(Some(p)));
        let mut y = vec![0f32; m * n];
        matmul(f, &w, n, k, &x, &mut y).unwrap();
        let scale = want.iter().fold(0f64, |a, v| a.max(v.abs())).max(1e-3);
        for (i, (&g, &e)) in y.iter().zip(&want).enumerate() {
            let err = (g as f64 - e).abs() / scale;
            assert!(
                err < 2e-5,
                "{} {} m={m} n={n} k={k}: y[{i}] = {g}, reference {e} (rel. err {err:.2e})",
                f.name(),
                path().name()
            );
        }
        outs.push(y);
    }
    force_path(None);
    let paths: Vec<Path> = Path::ALL.into_iter().filter(|p| p.available()).collect();
    for (o, p) in outs.iter().zip(&paths).skip(1) {
        for (i, (a, b)) in outs[0].iter().zip(o).enumerate() {
            assert_eq!(
                a.to_bits(),
                b.to_bits(),
                "{}: scalar and {} differ at {i}: {a} vs {b}",
                f.name(),
                p.name()
            );
        }
    }
}

#[test]
fn every_format_small_and_odd_shapes() {
    for (s, f) in Format::ALL.into_iter().enumerate() {
        let k = f.block_elems() * 3;
        for (m, n) in [(1, 1), (1, 7), (3, 5), (4, 4), (5, 9), (13, 3)] {
            check(f, m, n, k, 1000 + s as u64 * 31 + m as u64);
        }
    }
}

#[test]
fn every_format_prompt_sized() {
    for (s, f) in Format::ALL.into_iter().enumerate() {
        check(f, 512, 19, 512, 77 + s as u64);
        check(f, 37, 129, 1024, 78 + s as u64);
    }
}

#[test]
fn close_to_unquantized_activations() {
    // The 8-bit activations cost little: against f32 activations.
    let mut rng = Rng(5);
    let (m, n, k) = (4, 16, 256);
    for f in Format::ALL {
        let w = weights(f, n, k, &mut rng);
        let x = acts(m, k, &mut rng);
        let mut wd = vec![0f32; n * k];
        dequantize_row(f, &w, &mut wd);
        let mut y = vec![0f32; m * n];
        matmul(f, &w, n, k, &x, &mut y).unwrap();
        for r in 0..m {
            for j in 0..n {
                let e: f64 = (0..k)
                    .map(|i| x[r * k + i] as f64 * wd[j * k + i] as f64)
                    .sum();
                let norm: f64 = (0..k)
                    .map(|i| (x[r * k + i] as f64 * wd[j * k + i] as f64).abs())
                    .sum();
                assert!(
                    ((y[r * n + j] as f64) - e).abs() <= 0.01 * norm,
                    "{}: {} vs {e}",
                    f.name(),
                    y[r * n + j]
                );
            }
        }
    }
}

#[test]
fn shape_errors_name_the_problem() {
    let w = vec![0u8; 18];
    let mut y = vec![0f32; 1];
    let e = matmul(Format::Q4_0, &w, 1, 33, &[0.0; 33], &mut y).unwrap_err();
    assert!(
        matches!(
            e,
            KernelError::RowNotBlocks {
                k: 33,
                block: 32,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("Q4_0"));
    let e = matmul(Format::Q4_0, &w, 2, 32, &[0.0; 32], &mut y).unwrap_err();
    assert!(e.to_string().contains("weight bytes: expected 36"), "{e}");
    let e = matmul(Format::Q4_0, &w, 1, 32, &[0.0; 32], &mut [0f32; 2]).unwrap_err();
    assert!(e.to_string().contains("output values"), "{e}");
}

#[test]
fn zero_activations_give_zero() {
    for f in Format::ALL {
        let mut rng = Rng(9);
        let k = f.block_elems();
        let w = weights(f, 3, k, &mut rng);
        let mut y = vec![1f32; 6];
        matmul(f, &w, 3, k, &vec![0.0; 2 * k], &mut y).unwrap();
        assert!(y.iter().all(|v| *v == 0.0), "{}: {y:?}", f.name());
    }
}

#[test]
fn paths_this_machine_runs() {
    // Printed so a CI log shows which paths were compared.
    let paths: Vec<&str> = Path::ALL
        .into_iter()
        .filter(|p| p.available())
        .map(|p| p.name())
        .collect();
    eprintln!("kernel paths available here: {paths:?}");
    assert!(Path::Scalar.available());
    assert!(!force_path(Some(Path::ALL[2])) || Path::ALL[2].available());
    force_path(None);
}

/// The interleaved (repacked) layout: against the same reference, every
/// path, n not a multiple of 8, and the paths bit-identical.
#[test]
fn repacked_formats_match_the_reference() {
    for (s, f) in Format::ALL
        .into_iter()
        .filter(|f| repackable(*f))
        .enumerate()
    {
        for (m, n, k) in [
            (1, 1, 32),
            (1, 13, 96),
            (5, 8, 64),
            (9, 21, 128),
            (64, 37, 512),
            (3, 16, 4864),
        ] {
            // Whole blocks of the format (Q4_K's are 256 weights).
            let k = k / 32 * f.block_elems();
            let mut rng = Rng(500 + s as u64 * 7 + n as u64);
            let w = weights(f, n, k, &mut rng);
            let x = acts(m, k, &mut rng);
            let want = reference(f, &w, n, k, &x);
            let p = Packed::new(f, &w, n, k).unwrap();
            let _g = PATH_LOCK.lock().unwrap_or_else(|e| e.into_inner());
            let mut outs = Vec::new();
            for pa in Path::ALL.into_iter().filter(|p| p.available()) {
                assert!(force_path(Some(pa)));
                let mut y = vec![0f32; m * n];
                p.matmul(&x, &mut y).unwrap();
                let scale = want.iter().fold(0f64, |a, v| a.max(v.abs())).max(1e-3);
                for (i, (&g, &e)) in y.iter().zip(&want).enumerate() {
                    let err = (g as f64 - e).abs() / scale;
                    assert!(
                        err < 2e-5,
                        "{} {} repacked m={m} n={n} k={k}: y[{i}] = {g}, reference {e}",
                        f.name(),
                        pa.name()
                    );
                }
                outs.push((pa, y));
            }
            force_path(None);
            for (pa, y) in &outs[1..] {
                for (i, (a, b)) in outs[0].1.iter().zip(y).enumerate() {
                    assert_eq!(
                        a.to_bits(),
                        b.to_bits(),
                        "{} repacked: scalar and {} differ at {i}",
                        f.name(),
                        pa.name()
                    );
                }
            }
        }
    }
}

#[test]
fn repacked_rows_dequantize_like_the_file() {
    for f in Format::ALL.into_iter().filter(|f| repackable(*f)) {
        let (n, k) = (19, 3 * f.block_elems());
        let w = weights(f, n, k, &mut Rng(77));
        let p = Packed::new(f, &w, n, k).unwrap();
        let rb = f.row_bytes(k);
        for r in 0..n {
            let mut a = vec![0f32; k];
            let mut b = vec![0f32; k];
            dequantize_row(f, &w[r * rb..(r + 1) * rb], &mut a);
            p.dequantize_row(r, &mut b).unwrap();
            assert!(
                a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
                "{} row {r}",
                f.name()
            );
        }
        assert!(p.dequantize_row(n, &mut vec![0f32; k]).is_err());
    }
}

/// Attention of 5 sequences (1 to 300 keys, grouped heads, a head size
/// that is not a multiple of 8 and one that is) over f16 and f32 rows.
fn attention_bits() -> (u64, u64) {
    use anjeon_kernels::{attend_decode, AttnSeq, AttnShape};
    let mut rng = Rng(4242);
    let mut out = (0, 0);
    for (i, (n_head, n_kv, d)) in [(6, 2, 20), (4, 4, 64)].into_iter().enumerate() {
        let shape = AttnShape {
            n_head,
            n_kv,
            d,
            scale: 1.0 / (d as f32).sqrt(),
        };
        let lens = [1, 7, 8, 65, 300];
        let row = n_kv * d;
        let q: Vec<Vec<f32>> = lens
            .iter()
            .map(|_| (0..n_head * d).map(|_| (rng.unit() - 0.5) * 6.0).collect())
            .collect();
        let kv: Vec<(Vec<f32>, Vec<f32>)> = lens
            .iter()
            .map(|&l| {
                let mut r = || (0..l * row).map(|_| (rng.unit() - 0.5) * 4.0).collect();
                (r(), r())
            })
            .collect();
        let kv16: Vec<(Vec<f16>, Vec<f16>)> = kv
            .iter()
            .map(|(k, v)| {
                let h = |x: &Vec<f32>| x.iter().map(|&a| f16::from_f32(a)).collect();
                (h(k), h(v))
            })
            .collect();
        let mut y = vec![0f32; lens.len() * n_head * d];
        let seqs: Vec<AttnSeq<f32>> = q
            .iter()
            .zip(&kv)
            .map(|(q, (k, v))| AttnSeq { q, k, v })
            .collect();
        attend_decode(shape, &seqs, &mut y).unwrap();
        let mut y16 = vec![0f32; y.len()];
        let seqs: Vec<AttnSeq<f16>> = q
            .iter()
            .zip(&kv16)
            .map(|(q, (k, v))| AttnSeq { q, k, v })
            .collect();
        attend_decode(shape, &seqs, &mut y16).unwrap();
        let (a, b) = (bits_sum(&y), bits_sum(&y16));
        out = if i == 0 {
            (a, b)
        } else {
            (out.0 ^ a.rotate_left(1), out.1 ^ b.rotate_left(1))
        };
    }
    out
}

/// Dense products: f32, f16 and bf16 weights, a prompt-sized 300 × 70 × 777
/// (several tasks on threads, row and panel tails) and one row.
fn dense_bits() -> (u64, u64, u64) {
    use anjeon_kernels::Dense;
    let mut rng = Rng(777);
    let (n, k) = (70, 777);
    let w: Vec<f32> = (0..n * k).map(|_| (rng.unit() - 0.5) * 0.2).collect();
    let x: Vec<f32> = (0..300 * k).map(|_| (rng.unit() - 0.5) * 8.0).collect();
    let w16: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
    let wb: Vec<half::bf16> = w.iter().map(|&v| half::bf16::from_f32(v)).collect();
    let sum = |d: Dense| {
        let mut y = vec![0f32; 301 * n];
        let (prompt, one) = y.split_at_mut(300 * n);
        d.matmul(&x, prompt).unwrap();
        d.matmul(&x[..k], one).unwrap();
        bits_sum(&y)
    };
    (
        sum(Dense::from_f32(&w, n, k).unwrap()),
        sum(Dense::from_f16(&w16, n, k).unwrap()),
        sum(Dense::from_bf16(&wb, n, k).unwrap()),
    )
}

/// FNV-style checksum of f32 bits.
fn bits_sum(y: &[f32]) -> u64 {
    y.iter().fold(0xcbf29ce484222325, |h, v| {
        (h ^ v.to_bits() as u64).wrapping_mul(0x100000001b3)
    })
}

/// The same bits on every machine, not only on every path of this one: the
/// checksums of every format's products (both layouts, a prompt-sized 37 ×
/// 21 × 512), of both gated activations, of attention (f16 and f32 keys
/// and values; the model code runs prompts through it too) and of the dense
/// products (f32, f16, bf16 weights), committed from
/// an x86-64 run,
/// must come out on every path of any CPU (`kernels/tests/aarch64.sh`
/// runs this on 64-bit ARM). A change that moves a result by one bit
/// anywhere fails here; if it is meant, re-record the numbers (printed).
#[test]
fn every_machine_gives_the_same_bits() {
    const WANT: [(&str, u64, u64); 8] = [
        ("Q4_0", 0xa953d0f88aa660ec, 0xd1c097b63764c93a),
        ("Q4_1", 0xa11b4e2c3eabc587, 0x78b3d883566a6325),
        ("Q5_0", 0x41a2707405730d49, 0xf7ba652d29a80df0),
        ("Q5_1", 0xc92da1c489d8f8b9, 0xa4be99e7907cdfa1),
        ("Q8_0", 0xfdc65ac09bc5caa5, 0xd25a368bc79c7e3a),
        ("Q4_K", 0xdd99863bab42b27e, 0x3f2c86ee68c78b44),
        ("Q5_K", 0xe56785c3c5aef535, 0x092006f704cd3c51),
        ("Q6_K", 0x8f6937311dbe3144, 0x2509c51bff8f9f83),
    ];
    const WANT_GLU: (u64, u64) = (0x1ba39ebfb6fc2f9f, 0x06e8bd2d5be70cdb);
    const WANT_ATTN: (u64, u64) = (0xfe5ed2bdba6f9861, 0xa373eb4bde50d9aa);
    const WANT_DENSE: (u64, u64, u64) =
        (0xfd1cdfa2dd02a5af, 0x79b883cbaa1ad49f, 0xea3e9a2ca46d1c2f);
    let _g = PATH_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut bad = Vec::new();
    for p in Path::ALL.into_iter().filter(|p| p.available()) {
        assert!(force_path(Some(p)));
        let mut got = Vec::new();
        for (s, f) in Format::ALL.into_iter().enumerate() {
            let (m, n, k) = (37, 21, 512);
            let mut rng = Rng(9000 + s as u64);
            let w = weights(f, n, k, &mut rng);
            let x = acts(m, k, &mut rng);
            let mut y = vec![0f32; m * n];
            matmul(f, &w, n, k, &x, &mut y).unwrap();
            let mut yp = vec![0f32; m * n];
            Packed::new(f, &w, n, k)
                .unwrap()
                .matmul(&x, &mut yp)
                .unwrap();
            got.push((f.name(), bits_sum(&y), bits_sum(&yp)));
        }
        let g: Vec<f32> = (0..100_003)
            .map(|i| (i as f32 - 50_000.0) / 3000.0)
            .collect();
        let u: Vec<f32> = (0..g.len()).map(|i| 1.0 + (i % 7) as f32 * 0.25).collect();
        let (mut silu, mut gelu) = (g.clone(), g);
        anjeon_kernels::glu(anjeon_kernels::Glu::Silu, &mut silu, &u).unwrap();
        anjeon_kernels::glu(anjeon_kernels::Glu::GeluTanh, &mut gelu, &u).unwrap();
        let glu = (bits_sum(&silu), bits_sum(&gelu));
        let attn = attention_bits();
        let dense = dense_bits();
        if got != WANT || glu != WANT_GLU || attn != WANT_ATTN || dense != WANT_DENSE {
            bad.push(format!(
                "{}: {got:#x?}, glu {glu:#x?}, attention {attn:#x?}, dense {dense:#x?}",
                p.name()
            ));
        }
    }
    force_path(None);
    assert!(
        bad.is_empty(),
        "checksums differ from the committed ones:\n{}",
        bad.join("\n")
    );
}

/// Every quantized weight at its format's largest magnitude against
/// activations at ±127 (all one sign, and alternating): the largest integer
/// sums any kernel can meet. A kernel that sums its byte products in 16 bits
/// for too long wraps here and lands far from the reference.
#[test]
fn largest_products_do_not_overflow() {
    for f in Format::ALL {
        let (n, k) = (16, 2 * f.block_elems());
        let bb = f.block_bytes();
        let mut w = vec![0xFFu8; n * f.row_bytes(k)];
        for b in w.chunks_exact_mut(bb) {
            match f {
                Format::Q8_0 => {
                    b[2..].fill(0x80); // -128
                    put_f16(b, 0, 0.01);
                }
                Format::Q4_0 | Format::Q5_0 => put_f16(b, 0, 0.01),
                Format::Q4_1 | Format::Q5_1 => {
                    put_f16(b, 0, 0.01);
                    put_f16(b, 2, -0.05);
                }
                Format::Q4K | Format::Q5K => {
                    put_f16(b, 0, 0.001);
                    put_f16(b, 2, 0.0005);
                }
                Format::Q6K => {
                    b[192..208].fill(0x80); // scales -128
                    put_f16(b, 208, 0.0005);
                }
            }
        }
        let mut x = Vec::with_capacity(3 * k);
        x.extend((0..k).map(|_| 1.0f32));
        x.extend((0..k).map(|_| -1.0f32));
        x.extend((0..k).map(|e| if e % 2 == 0 { 1.0f32 } else { -1.0 }));
        let want = reference(f, &w, n, k, &x);
        let packed = repackable(f).then(|| Packed::new(f, &w, n, k).unwrap());
        let _g = PATH_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        for p in Path::ALL.into_iter().filter(|p| p.available()) {
            assert!(force_path(Some(p)));
            let mut ys = vec![("rows", vec![0f32; 3 * n])];
            matmul(f, &w, n, k, &x, &mut ys[0].1).unwrap();
            if let Some(pk) = &packed {
                let mut y = vec![0f32; 3 * n];
                pk.matmul(&x, &mut y).unwrap();
                ys.push(("repacked", y));
            }
            for (layout, y) in &ys {
                for (i, (&g, &e)) in y.iter().zip(&want).enumerate() {
                    assert!(
                        (g as f64 - e).abs() <= 1e-5 * e.abs().max(1.0),
                        "{} {} {layout}: y[{i}] = {g}, reference {e}",
                        f.name(),
                        p.name()
                    );
                }
            }
        }
        force_path(None);
    }
}
