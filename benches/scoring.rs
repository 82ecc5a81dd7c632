//! Throughput of the model-free parts of a run: the refusal detector (items/s),
//! loading data sets, and the bootstrap metrics behind a report.
//! Run: `cargo bench --bench scoring`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use anjeon::dataset::{self, ReadOptions};
use anjeon::judge::labels as eval;
use anjeon::judge::refusal::RefusalDetector;

fn refusal(c: &mut Criterion) {
    let det = RefusalDetector::new();
    let xs = eval::read_labels("xstest-completions:tests/fixtures/public/xstest/model_completions")
        .expect("xstest fixtures");
    let sq = eval::read_labels(
        "square-responses:tests/fixtures/public/kosbi-square/SQuARe/response_test_ood.json",
    )
    .expect("square fixtures");
    let mut g = c.benchmark_group("refusal_detector");
    for (name, items) in [("xstest_en", &xs), ("square_ko", &sq)] {
        g.throughput(Throughput::Elements(items.len() as u64));
        g.bench_with_input(BenchmarkId::from_parameter(name), items, |b, items| {
            b.iter(|| {
                items
                    .iter()
                    .filter(|l| {
                        det.classify(&l.response).class
                            == anjeon::core::sample::RefusalClass::Refusal
                    })
                    .count()
            })
        });
    }
    g.finish();
}

fn loading(c: &mut Criterion) {
    let mut g = c.benchmark_group("load");
    g.sample_size(20);
    for spec in [
        "tests/fixtures/public/kosbi-square/KoSBi/kosbi_test.json",
        "tests/fixtures/public/multijail/MultiJail.csv",
        "tests/fixtures/ok/ksafe_mm.parquet",
    ] {
        let n = dataset::load(spec, &ReadOptions::default())
            .expect("load")
            .samples
            .len();
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(spec.rsplit('/').next().unwrap(), |b| {
            b.iter(|| {
                dataset::load(spec, &ReadOptions::default())
                    .unwrap()
                    .samples
                    .len()
            })
        });
    }
    g.finish();
}

fn bootstrap(c: &mut Criterion) {
    let xs: Vec<f64> = (0..10_000)
        .map(|i| ((i * 7919) % 13 < 4) as u8 as f64)
        .collect();
    let mut g = c.benchmark_group("bootstrap");
    g.throughput(Throughput::Elements(xs.len() as u64));
    g.bench_function("mean_ci_10k", |b| {
        b.iter(|| anjeon::core::stats::mean_ci(&xs, 1))
    });
    g.finish();
}

criterion_group!(benches, refusal, loading, bootstrap);
criterion_main!(benches);
