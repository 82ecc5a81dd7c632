//! Qwen3-VL parity with transformers on a tiny random checkpoint
//! (tests/fixtures/tiny/make_tiny_vl.py): same pixels and ids in, logits of
//! the prompt's last position and a greedy continuation out.

use std::path::PathBuf;

use anjeon::model::qwen3_vl::{Config, MmInputs, Qwen3Vl, VisualInput};
use candle_core::{DType, Device, Tensor};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny/qwen3_vl")
}

fn load() -> (
    Qwen3Vl,
    std::collections::HashMap<String, Tensor>,
    serde_json::Value,
) {
    let d = dir();
    let cfg: Config =
        serde_json::from_slice(&std::fs::read(d.join("config.json")).unwrap()).unwrap();
    let vb = unsafe {
        candle_nn::VarBuilder::from_mmaped_safetensors(
            &[d.join("model.safetensors")],
            DType::F32,
            &Device::Cpu,
        )
        .unwrap()
    };
    let model = Qwen3Vl::new(&cfg, vb).unwrap();
    let refs =
        candle_core::safetensors::load(d.join("reference.safetensors"), &Device::Cpu).unwrap();
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("reference.json")).unwrap()).unwrap();
    (model, refs, json)
}

fn grids(t: &Tensor) -> Vec<[usize; 3]> {
    t.to_vec2::<i64>()
        .unwrap()
        .into_iter()
        .map(|r| [r[0] as usize, r[1] as usize, r[2] as usize])
        .collect()
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}

#[test]
fn qwen3_vl_logits_and_greedy_match_transformers() {
    let (mut model, refs, json) = load();
    for case in ["image", "two_images", "video", "text"] {
        let ids: Vec<u32> = refs[&format!("{case}.input_ids")]
            .to_vec1::<i64>()
            .unwrap()
            .into_iter()
            .map(|x| x as u32)
            .collect();
        let visual = |px: &str, g: &str| {
            refs.get(&format!("{case}.{px}")).map(|p| VisualInput {
                pixel_values: p.clone(),
                grid_thw: grids(&refs[&format!("{case}.{g}")]),
            })
        };
        let mm = MmInputs {
            images: visual("pixel_values", "image_grid_thw"),
            videos: visual("pixel_values_videos", "video_grid_thw"),
        };
        let logits = model.prefill(&ids, &mm).unwrap().to_vec1::<f32>().unwrap();
        let want = refs[&format!("{case}.logits_last")]
            .to_vec1::<f32>()
            .unwrap();
        let d = max_abs(&logits, &want);
        let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
        eprintln!("{case}: max |Δlogit| {d:.2e} (max |logit| {scale:.2})");
        // Exact-GELU vs tanh-GELU in the merger alone moves these logits by 3e-4.
        assert!(d < 2e-5, "{case}: logits differ by {d}");
        // Greedy continuation through the decode path (positions + rope delta).
        let want_gen: Vec<u32> = json["cases"][case]["greedy"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        let mut got = vec![argmax(&logits)];
        while got.len() < want_gen.len() {
            let input = Tensor::new(&[*got.last().unwrap()], &Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            let l = model
                .forward(&input, ids.len() + got.len() - 1)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            got.push(argmax(&l));
        }
        assert_eq!(got, want_gen, "{case}: greedy continuation");
    }
}
