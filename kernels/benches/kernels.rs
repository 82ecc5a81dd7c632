//! Throughput of anjeon's own kernels, one thread, on this CPU's path:
//! quantized matrix products (multiply-adds/s) for each format at 1, 8 and
//! 64 activation rows (decode, batched decode, prompt), decode attention,
//! the gated activation, and activation quantization.
//! Run: `cargo bench -p anjeon-kernels --bench kernels` (`ANJEON_KERNELS`
//! caps the path). The weights are 896 × 4864 (Qwen2.5-0.5B's MLP).

use anjeon_kernels::{
    attend_decode, glu, matmul_acts, path, quantize_acts, repackable, AttnSeq, AttnShape, Format,
    Glu, Packed,
};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn unit(&mut self) -> f32 {
        (self.next() & 0xFF_FFFF) as f32 / (1u32 << 24) as f32 - 0.5
    }
}

/// Random quant bytes with small f16 scales in every block's scale slots.
fn weights(f: Format, n: usize, k: usize, rng: &mut Rng) -> Vec<u8> {
    let mut w: Vec<u8> = (0..n * f.row_bytes(k)).map(|_| rng.next() as u8).collect();
    let s = half::f16::from_f32(0.01).to_le_bytes();
    for b in w.chunks_exact_mut(f.block_bytes()) {
        let at: &[usize] = match f {
            Format::Q4_1 | Format::Q5_1 | Format::Q4K | Format::Q5K => &[0, 2],
            Format::Q6K => &[208],
            _ => &[0],
        };
        for &a in at {
            b[a..a + 2].copy_from_slice(&s);
        }
    }
    w
}

fn one_thread() -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("a thread pool")
}

fn matmuls(c: &mut Criterion) {
    let pool = one_thread();
    let (n, k) = (4864, 896);
    let mut rng = Rng(1);
    let mut g = c.benchmark_group(format!("matmul_{}", path().name()));
    g.sample_size(10);
    for f in Format::ALL {
        let k = if f.block_elems() == 256 { 1024 } else { k };
        let w = weights(f, n, k, &mut rng);
        let packed = repackable(f).then(|| Packed::new(f, &w, n, k).expect("repack"));
        for m in [1usize, 8, 64] {
            let x: Vec<f32> = (0..m * k).map(|_| rng.unit() * 4.0).collect();
            let acts = quantize_acts(f, &x, k).expect("acts");
            let mut y = vec![0f32; m * n];
            g.throughput(Throughput::Elements((m * n * k) as u64));
            g.bench_function(BenchmarkId::new(f.name(), format!("{m}rows")), |b| {
                pool.install(|| {
                    b.iter(|| match &packed {
                        Some(p) => p.matmul_acts(&acts, &mut y).expect("matmul"),
                        None => matmul_acts(f, &w, n, &acts, &mut y).expect("matmul"),
                    })
                })
            });
        }
    }
    g.finish();
}

fn attention(c: &mut Criterion) {
    let pool = one_thread();
    let mut rng = Rng(2);
    let mut g = c.benchmark_group(format!("attend_decode_{}", path().name()));
    // (query heads, key/value heads, head size): Qwen2.5-0.5B, SmolLM2, Gemma 3.
    for (name, n_head, n_kv, d) in [
        ("qwen", 14, 2, 64),
        ("smollm2", 9, 3, 64),
        ("gemma3", 4, 1, 256),
    ] {
        let (len, seqs) = (300, 8);
        let data: Vec<(Vec<f32>, Vec<half::f16>, Vec<half::f16>)> = (0..seqs)
            .map(|_| {
                let kv = len * n_kv * d;
                (
                    (0..n_head * d).map(|_| rng.unit()).collect(),
                    (0..kv).map(|_| half::f16::from_f32(rng.unit())).collect(),
                    (0..kv).map(|_| half::f16::from_f32(rng.unit())).collect(),
                )
            })
            .collect();
        let batch: Vec<AttnSeq> = data.iter().map(|(q, k, v)| AttnSeq { q, k, v }).collect();
        let shape = AttnShape {
            n_head,
            n_kv,
            d,
            scale: 0.125,
        };
        let mut out = vec![0f32; seqs * n_head * d];
        g.throughput(Throughput::Elements((seqs * len * n_head * d * 2) as u64));
        g.bench_function(BenchmarkId::new(name, "8x300keys"), |b| {
            pool.install(|| b.iter(|| attend_decode(shape, &batch, &mut out).expect("attention")))
        });
    }
    g.finish();
}

fn elementwise(c: &mut Criterion) {
    let pool = one_thread();
    let mut rng = Rng(3);
    let n = 64 * 4864;
    let x: Vec<f32> = (0..n).map(|_| rng.unit() * 8.0).collect();
    let mut g = c.benchmark_group(format!("elementwise_{}", path().name()));
    g.throughput(Throughput::Elements(n as u64));
    for kind in [Glu::Silu, Glu::GeluTanh] {
        let mut gate = x.clone();
        g.bench_function(BenchmarkId::new("glu", format!("{kind:?}")), |b| {
            pool.install(|| {
                b.iter(|| {
                    gate.copy_from_slice(&x);
                    glu(kind, &mut gate, &x).expect("glu")
                })
            })
        });
    }
    for f in [Format::Q8_0, Format::Q4K] {
        g.bench_function(BenchmarkId::new("quantize", f.name()), |b| {
            pool.install(|| b.iter(|| quantize_acts(f, &x, 4864).expect("acts")))
        });
    }
    g.finish();
}

criterion_group!(benches, matmuls, attention, elementwise);
criterion_main!(benches);
