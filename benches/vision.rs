//! Qwen3-VL vision tower at the released 2B/4B size (depth 24, width 1024,
//! 16 heads, MLP 4096, DeepStack at 5/11/17; the same tower for both) on CPU,
//! f32, for one image at the default pixel budget of the released
//! preprocessor (a 1280x720 image → 1280x704 → 80x44 patches → 880 visual
//! tokens) and for a small 448x448 image (28x28 patches → 196 tokens).
//! Weights are zeros: the time of dense f32 matmuls does not depend on values.
//! Run: `cargo bench --bench vision`.

use anjeon::model::qwen3_vl::{VisionConfig, VisionTower};
use candle_core::{DType, Device, Tensor};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn tower() -> VisionTower {
    let cfg: VisionConfig = serde_json::from_value(serde_json::json!({
        "depth": 24, "hidden_size": 1024, "hidden_act": "gelu_pytorch_tanh",
        "intermediate_size": 4096, "num_heads": 16, "in_channels": 3, "patch_size": 16,
        "spatial_merge_size": 2, "temporal_patch_size": 2, "out_hidden_size": 2048,
        "num_position_embeddings": 2304, "deepstack_visual_indexes": [5, 11, 17]
    }))
    .unwrap();
    let vb = candle_nn::VarBuilder::zeros(DType::F32, &Device::Cpu);
    VisionTower::new(&cfg, vb).unwrap()
}

fn encode(c: &mut Criterion) {
    let t = tower();
    let mut g = c.benchmark_group("qwen3vl_vision_tower");
    g.sample_size(10);
    for (name, h, w) in [("448x448", 28usize, 28usize), ("1280x720", 44, 80)] {
        let px = Tensor::zeros((h * w, 3 * 2 * 16 * 16), DType::F32, &Device::Cpu).unwrap();
        g.throughput(Throughput::Elements(1));
        g.bench_function(format!("encode_{name}_{}_tokens", h * w / 4), |b| {
            b.iter(|| t.forward(&px, &[[1, h, w]]).unwrap().0.dim(0).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, encode);
criterion_main!(benches);
