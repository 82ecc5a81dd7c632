//! Audio front ends on CPU: Gemma 4 and Whisper log-mel features for 30 s of
//! 16 kHz audio, and the Gemma 4 audio tower at the released E2B/E4B size
//! (12 conformer layers, width 1024, 8 heads, subsampling channels 128/32,
//! chunk 12 with 12 steps of left context, output 1536 → text width 1536),
//! f32, for a 10 s and a 30 s clip (250 and 750 soft tokens); and Voxtral
//! Mini's encoder (32 layers, width 1280, 20 heads, MLP 5120, the
//! `AudioConfig` defaults) for one 30 s chunk (1500 frames → 375 audio
//! embeddings), one iteration per sample.
//! Weights are zeros: the time of dense f32 matmuls and convolutions does
//! not depend on values. Run: `cargo bench --bench audio`.

use anjeon::audio::features::{Gemma4Features, WhisperFeatures};
use anjeon::model::gemma4::{AudioClip, AudioConfig, AudioTower};
use anjeon::model::voxtral;
use candle_core::{DType, Device, Tensor};
use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};

fn pcm(seconds: usize) -> Vec<f32> {
    (0..seconds * 16_000)
        .map(|i| (i as f32 * 0.05).sin() * 0.3 + ((i * 7919 % 1000) as f32 / 1000.0 - 0.5) * 0.05)
        .collect()
}

fn features(c: &mut Criterion) {
    let x = pcm(30);
    let mut g = c.benchmark_group("audio_features_30s");
    g.throughput(Throughput::Elements(1));
    let gf = Gemma4Features::new();
    g.bench_function("gemma4_logmel", |b| b.iter(|| gf.extract(&x).frames));
    let wf = WhisperFeatures::new(128);
    g.bench_function("whisper_logmel_128", |b| b.iter(|| wf.chunk(&x).len()));
    g.finish();
}

fn tower(c: &mut Criterion) {
    let cfg: AudioConfig = serde_json::from_value(serde_json::json!({
        "hidden_size": 1024, "num_hidden_layers": 12, "num_attention_heads": 8,
        "output_proj_dims": 1536
    }))
    .unwrap();
    let vb = candle_nn::VarBuilder::zeros(DType::F32, &Device::Cpu);
    let t = AudioTower::new(&cfg, 1536, vb.pp("tower"), vb.pp("embed")).unwrap();
    let mut g = c.benchmark_group("gemma4_audio_tower");
    g.sample_size(10);
    for secs in [10usize, 30] {
        let frames = secs * 100;
        let clip = AudioClip {
            features: Tensor::zeros((frames, 128), DType::F32, &Device::Cpu).unwrap(),
            mask: vec![true; frames],
        };
        g.throughput(Throughput::Elements(1));
        g.bench_function(format!("encode_{secs}s_{}_tokens", frames / 4), |b| {
            b.iter(|| t.encode(&clip).unwrap().dim(0).unwrap())
        });
    }
    g.finish();
}

fn voxtral_encoder(c: &mut Criterion) {
    let cfg: voxtral::AudioConfig = serde_json::from_value(serde_json::json!({})).unwrap();
    let vb = candle_nn::VarBuilder::zeros(DType::F32, &Device::Cpu);
    let enc = voxtral::AudioEncoder::new(&cfg, vb).unwrap();
    let feats = Tensor::zeros((1, 128, 3000), DType::F32, &Device::Cpu).unwrap();
    let mut g = c.benchmark_group("voxtral_mini_encoder");
    g.sample_size(10);
    g.sampling_mode(SamplingMode::Flat);
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode_30s_chunk_375_tokens", |b| {
        b.iter(|| enc.forward(&feats).unwrap().dim(0).unwrap())
    });
    g.finish();
}

criterion_group!(benches, features, tower, voxtral_encoder);
criterion_main!(benches);
