//! Quick timing of one matrix shape per format: `cargo run --release --example speed -- M N K`.
use anjeon_kernels::{matmul, path, repackable, Format, Packed};
use std::time::Instant;

fn main() {
    let a: Vec<usize> = std::env::args()
        .skip(1)
        .map(|s| s.parse().unwrap())
        .collect();
    let (m, n, k) = (a[0], a[1], a[2]);
    for f in Format::ALL {
        let mut w = vec![0u8; n * f.row_bytes(k)];
        for (i, b) in w.iter_mut().enumerate() {
            *b = (i * 7919 % 251) as u8;
        }
        for blk in w.chunks_exact_mut(f.block_bytes()) {
            let at = if f == Format::Q6K { 208 } else { 0 };
            blk[at] = 0;
            blk[at + 1] = 0x20;
            if matches!(f, Format::Q4_1 | Format::Q5_1 | Format::Q4K | Format::Q5K) {
                blk[2] = 0;
                blk[3] = 0x20;
            }
        }
        let x: Vec<f32> = (0..m * k).map(|i| ((i % 17) as f32 - 8.0) / 8.0).collect();
        let mut y = vec![0f32; m * n];
        matmul(f, &w, n, k, &x, &mut y).unwrap();
        let reps = 5;
        let t = Instant::now();
        for _ in 0..reps {
            matmul(f, &w, n, k, &x, &mut y).unwrap();
        }
        let s = t.elapsed().as_secs_f64() / reps as f64;
        if repackable(f) {
            let p = Packed::new(f, &w, n, k).unwrap();
            p.matmul(&x, &mut y).unwrap();
            let t = Instant::now();
            for _ in 0..reps {
                p.matmul(&x, &mut y).unwrap();
            }
            let s = t.elapsed().as_secs_f64() / reps as f64;
            println!(
                "{} {} repacked: {:.2} ms, {:.1} GMAC/s",
                f.name(),
                path().name(),
                s * 1e3,
                (m * n * k) as f64 / s / 1e9
            );
        }
        println!(
            "{} {}: {:.2} ms, {:.1} GMAC/s, {:.1} GB/s weights",
            f.name(),
            path().name(),
            s * 1e3,
            (m * n * k) as f64 / s / 1e9,
            w.len() as f64 / s / 1e9
        );
    }
}
