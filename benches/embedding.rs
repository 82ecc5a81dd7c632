//! EmbeddingGemma-300M throughput (embeddings/s) for 64-token and 512-token
//! inputs, batch 1 and 8, on the CPU threads candle uses (set
//! `RAYON_NUM_THREADS`; the README's numbers are 2 threads). Needs the real
//! weights in the cache (`anjeon models fetch embeddinggemma-300m`); without
//! them it says so and measures nothing.
//! Run: `cargo bench --bench embedding`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use anjeon::model::embeddinggemma::EmbeddingGemma;

fn embedding(c: &mut Criterion) {
    let Some(dir) = EmbeddingGemma::cached_dir() else {
        eprintln!(
            "embeddinggemma-300m is not cached: run `anjeon models fetch embeddinggemma-300m`"
        );
        return;
    };
    let m = EmbeddingGemma::load(&dir, &candle_core::Device::Cpu).expect("load");
    let mut g = c.benchmark_group("embeddinggemma");
    g.sample_size(10);
    for tokens in [64usize, 512] {
        // Token ids of real Korean text, cut to the length (bos .. eos).
        let text = "안전한 인공지능 평가는 재현 가능해야 합니다. Offline evaluation keeps every number reproducible. ".repeat(40);
        let mut ids = m.tokenize(&text).unwrap();
        ids.truncate(tokens - 1);
        ids.push(1);
        for batch in [1usize, 8] {
            let inputs: Vec<Vec<u32>> = vec![ids.clone(); batch];
            g.throughput(Throughput::Elements(batch as u64));
            g.bench_with_input(
                BenchmarkId::new(format!("{tokens}_tokens"), format!("batch{batch}")),
                &inputs,
                |b, inputs| b.iter(|| m.embed_ids(inputs).unwrap().len()),
            );
        }
    }
    g.finish();
}

criterion_group!(benches, embedding);
criterion_main!(benches);
