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

use crate::common;
use crate::common::{anjeon, greedy, lines, max_abs};

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
        let want_gen = common::ids(&json["cases"][case]["greedy"]);
        let got = greedy(&logits, ids.len(), want_gen.len(), |t, o| {
            model.forward(t, o)
        });
        assert_eq!(got, want_gen, "{case}: greedy continuation");
    }
}

/// The prompt anjeon builds for a media item (template, decoding,
/// preprocessing, placeholder expansion, tokenization) is the one the HF
/// processor builds: the tiny fixture's "image" case is the sample's AS-0005.png.
#[test]
fn multimodal_prompt_ids_match_the_hf_processor() {
    use anjeon::core::sample::{Media, MediaKind, MediaSource};
    use anjeon::model::chat::ChatPart;
    use anjeon::model::MediaInput;
    let r = anjeon::model::resolve(dir().to_str().unwrap()).unwrap();
    let m = anjeon::model::TextModel::load(&r, &Device::Cpu, &Default::default()).unwrap();
    assert_eq!(m.modalities(), vec![MediaKind::Image, MediaKind::Video]);
    let (_, refs, json) = load();
    let png = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/sample/media/AS-0005.png");
    let media = Media {
        kind: MediaKind::Image,
        mime: "image/png".into(),
        source: MediaSource::Path(png),
    };
    let msg = anjeon::model::Message::with_parts(
        "user",
        vec![
            ChatPart::Image,
            ChatPart::Text("Describe this image .".into()),
        ],
    );
    let p = m
        .encode_multimodal(
            &[msg],
            &[MediaInput {
                kind: MediaKind::Image,
                media: &media,
            }],
        )
        .unwrap();
    let want: Vec<u32> = json["cases"]["image"]["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(p.ids, want);
    let Some(anjeon::model::MmPrompt::Qwen3Vl(mm)) = p.mm else {
        panic!("Qwen3-VL inputs expected")
    };
    let img = mm.images.unwrap();
    assert_eq!(img.grid_thw, grids(&refs["image.image_grid_thw"]));
    let got = img
        .pixel_values
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let want = refs["image.pixel_values"]
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    // One 8-bit level after normalisation with mean/std 0.5 is 2/255.
    let d = max_abs(&got, &want);
    assert!(d <= 2.0 / 255.0 + 1e-6, "pixel_values differ by {d}");
}

/// `anjeon run` with a vision target: the sample's image and video items are
/// generated, audio items are skipped with the reason, and FigStep-Tiny's
/// typographic images run too.
#[test]
fn vision_target_runs_the_sample_media_items_and_figstep_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let target = dir();
    let o = anjeon(&[
        "run",
        "--target",
        target.to_str().unwrap(),
        "--judge",
        "refusal",
        "--max-new-tokens",
        "3",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let gens = lines(&out.join("generations.jsonl"));
    let rep: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    let sample = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/sample/assurai_sample.jsonl"),
    )
    .unwrap();
    for l in sample.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        let id = v["id"].as_str().unwrap();
        match v["modality"].as_str().unwrap() {
            "image" | "video" => assert!(
                gens.iter().any(|g| g["sample_id"] == id),
                "{id} was not generated; report: {}",
                rep["skipped"]
            ),
            "audio" => assert!(
                rep.to_string().contains(id),
                "{id} (audio) is not listed as skipped"
            ),
            _ => {}
        }
    }
    let n_img = gens
        .iter()
        .filter(|g| g["stats"]["prompt_tokens"].as_u64().unwrap() > 30)
        .count();
    assert!(n_img >= 20, "visual prompts are longer: {n_img}");

    let fig = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/public/figstep-tiny/SafeBench-Tiny.csv");
    let out2 = tmp.path().join("fig");
    let o = anjeon(&[
        "run",
        "--dataset",
        &format!("figstep:{}", fig.display()),
        "--target",
        target.to_str().unwrap(),
        "--judge",
        "refusal",
        "--max-new-tokens",
        "2",
        "--limit",
        "6",
        "--out",
        out2.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let gens = lines(&out2.join("generations.jsonl"));
    assert_eq!(gens.len(), 6, "{gens:?}");
}

/// Typographic attack images (issue 7) reach a vision target: the variant's
/// prompt carries the rendered image's visual tokens.
#[test]
fn typographic_attack_images_run_on_a_vision_target() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let o = anjeon(&[
        "run",
        "--target",
        dir().to_str().unwrap(),
        "--judge",
        "refusal",
        "--max-new-tokens",
        "2",
        "--attacks",
        "typographic,key-phrase",
        "--limit",
        "4",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let gens = lines(&out.join("generations.jsonl"));
    let tokens = |suffix: &str| -> Vec<u64> {
        gens.iter()
            .filter(|g| g["sample_id"].as_str().unwrap().ends_with(suffix))
            .map(|g| g["stats"]["prompt_tokens"].as_u64().unwrap())
            .collect()
    };
    let (typo, key) = (tokens("~typographic"), tokens("~key-phrase"));
    assert!(!typo.is_empty() && !key.is_empty(), "{gens:?}");
    // The tiny processor's smallest image is 32x32 pixels = 1 merged token
    // plus vision_start/end; the rendered images are far larger.
    assert!(typo.iter().all(|&t| t > 20), "{typo:?}");
    let rep: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    let strategies: Vec<&str> = rep["uplift"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["strategy"].as_str().unwrap())
        .collect();
    assert!(strategies.contains(&"typographic"), "{strategies:?}");
}
