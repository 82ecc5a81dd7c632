//! Gemma 4 parity with transformers on a tiny random checkpoint
//! (tests/fixtures/tiny/make_tiny_gemma4.py): same pixels and ids in, logits
//! of the prompt's last position and a greedy continuation out.

use std::collections::HashMap;
use std::path::PathBuf;

use anjeon::model::gemma4::{
    expand_image_placeholders, soft_tokens_per_image, Config, Gemma4, ImageInput,
};
use candle_core::{DType, Device, IndexOp, Tensor};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny/gemma4")
}

fn vb() -> candle_nn::VarBuilder<'static> {
    unsafe {
        candle_nn::VarBuilder::from_mmaped_safetensors(
            &[dir().join("model.safetensors")],
            DType::F32,
            &Device::Cpu,
        )
        .unwrap()
    }
}

fn load() -> (Gemma4, HashMap<String, Tensor>, serde_json::Value) {
    let d = dir();
    let cfg: Config =
        serde_json::from_slice(&std::fs::read(d.join("config.json")).unwrap()).unwrap();
    let model = Gemma4::new(&cfg, vb()).unwrap();
    let refs =
        candle_core::safetensors::load(d.join("reference.safetensors"), &Device::Cpu).unwrap();
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("reference.json")).unwrap()).unwrap();
    (model, refs, json)
}

mod common;
use common::{greedy, max_abs};

/// Max |Δlogit| of the prompt and the greedy continuation, for row `row`
/// of a case (padding stripped; the row's image only).
fn run_case(
    model: &mut Gemma4,
    refs: &HashMap<String, Tensor>,
    json: &serde_json::Value,
    case: &str,
    row: usize,
) -> (f32, Vec<u32>, Vec<u32>) {
    let ids_all = refs[&format!("{case}.input_ids")].i(row).unwrap();
    let mask = refs[&format!("{case}.attention_mask")]
        .i(row)
        .unwrap()
        .to_vec1::<i64>()
        .unwrap();
    let ids: Vec<u32> = ids_all
        .to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .zip(&mask)
        .filter(|(_, m)| **m == 1)
        .map(|(x, _)| x as u32)
        .collect();
    let rows = json["cases"][case]["input_ids"].as_array().unwrap().len();
    let images = refs.get(&format!("{case}.pixel_values")).map(|p| {
        let pos = &refs[&format!("{case}.image_position_ids")];
        if rows > 1 {
            // Batch cases: one image per row.
            ImageInput {
                pixel_values: p.narrow(0, row, 1).unwrap(),
                position_ids: pos.narrow(0, row, 1).unwrap(),
            }
        } else {
            ImageInput {
                pixel_values: p.clone(),
                position_ids: pos.clone(),
            }
        }
    });
    let logits = model
        .prefill(&ids, images.as_ref())
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let want = refs[&format!("{case}.logits_last")]
        .i(row)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let d = max_abs(&logits, &want);
    let want_gen = common::ids(&json["cases"][case]["greedy"][row]);
    let got = greedy(&logits, ids.len(), want_gen.len(), |t, o| {
        model.forward(t, o)
    });
    (d, got, want_gen)
}

const TOL: f32 = 3e-4;

#[test]
fn gemma4_logits_and_greedy_match_transformers() {
    let (mut model, refs, json) = load();
    for (case, row) in [
        ("image", 0),
        ("two_images", 0),
        ("text", 0),
        ("batch", 0),
        ("batch", 1),
    ] {
        let (d, got, want) = run_case(&mut model, &refs, &json, case, row);
        eprintln!("{case}[{row}]: max |Δlogit| {d:.2e}");
        // transformers' own float32 logits differ from its float64 ones by up to
        // 7e-5 on these prompts (max |logit| ~4.6); see the next test for what
        // small bugs do.
        assert!(d < TOL, "{case}[{row}]: logits differ by {d}");
        assert_eq!(got, want, "{case}[{row}]: greedy continuation");
    }
}

/// The tolerance is meaningful: small deviations, made through the config,
/// move the logits well past it on at least one case.
#[test]
fn gemma4_small_bugs_exceed_tolerance() {
    let d = dir();
    let base: Config =
        serde_json::from_slice(&std::fs::read(d.join("config.json")).unwrap()).unwrap();
    let refs =
        candle_core::safetensors::load(d.join("reference.safetensors"), &Device::Cpu).unwrap();
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("reference.json")).unwrap()).unwrap();
    type Tweak = fn(&mut Config);
    let tweaks: [(&str, Tweak); 5] = [
        ("sliding window one longer", |c| {
            c.text_config.sliding_window += 1
        }),
        ("no bidirectional image blocks", |c| {
            c.text_config.use_bidirectional_attention = None
        }),
        ("exact GELU in the vision tower", |c| {
            c.vision_config.as_mut().unwrap().hidden_activation = candle_nn::Activation::Gelu
        }),
        ("no soft-capping", |c| {
            c.text_config.final_logit_softcapping = None
        }),
        ("vision rope theta 10000", |c| {
            c.vision_config.as_mut().unwrap().rope_parameters =
                Some(anjeon::model::gemma4::VisionRope {
                    rope_theta: Some(10000.0),
                })
        }),
    ];
    for (name, tweak) in tweaks {
        let mut cfg = base.clone();
        tweak(&mut cfg);
        let mut model = Gemma4::new(&cfg, vb()).unwrap();
        let worst = ["image", "two_images", "text"]
            .iter()
            .map(|case| run_case(&mut model, &refs, &json, case, 0).0)
            .fold(0f32, f32::max);
        eprintln!("{name}: max |Δlogit| {worst:.2e}");
        assert!(worst > 10.0 * TOL, "{name}: only {worst}");
    }
}

#[test]
fn gemma4_cache_clone_continues_identically() {
    let (mut model, refs, json) = load();
    let (_, got, _) = run_case(&mut model, &refs, &json, "image", 0);
    // A clone of the model after the prompt + continuation decodes the same next token.
    let mut copy = model.clone();
    let n = refs["image.input_ids"].dim(1).unwrap() + got.len() - 1;
    let input = Tensor::new(&[*got.last().unwrap()], &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let a = model.forward(&input, n).unwrap().to_vec1::<f32>().unwrap();
    let b = copy.forward(&input, n).unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(a, b);
}

#[test]
fn gemma4_placeholder_expansion_matches_processor() {
    let d = dir();
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("reference.json")).unwrap()).unwrap();
    let cfg: Config =
        serde_json::from_slice(&std::fs::read(d.join("config.json")).unwrap()).unwrap();
    let pp: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("processor_config.json")).unwrap()).unwrap();
    let ip = &pp["image_processor"];
    let get = |k: &str| ip[k].as_u64().unwrap() as usize;
    let tok = tokenizers::Tokenizer::from_file(d.join("tokenizer.json")).unwrap();
    for case in ["image", "two_images", "text", "batch"] {
        let c = &json["cases"][case];
        let sizes: Vec<(usize, usize)> = c["image_sizes"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|s| {
                        (
                            s[0].as_u64().unwrap() as usize,
                            s[1].as_u64().unwrap() as usize,
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let soft: Vec<usize> = sizes
            .iter()
            .map(|&(h, w)| {
                soft_tokens_per_image(
                    h,
                    w,
                    get("patch_size"),
                    get("max_soft_tokens"),
                    get("pooling_kernel_size"),
                )
                .unwrap()
            })
            .collect();
        let texts = c["template_text"].as_array().unwrap();
        let mut k = 0;
        for (row, text) in texts.iter().enumerate() {
            let enc = tok.encode(text.as_str().unwrap(), false).unwrap();
            let n_img = enc
                .get_ids()
                .iter()
                .filter(|&&t| t == cfg.image_token_id)
                .count();
            let got = expand_image_placeholders(
                enc.get_ids(),
                cfg.image_token_id,
                cfg.boi_token_id,
                cfg.eoi_token_id,
                &soft[k..k + n_img],
            )
            .unwrap();
            k += n_img;
            let want: Vec<u32> = c["input_ids"][row]
                .as_array()
                .unwrap()
                .iter()
                .zip(c["attention_mask"][row].as_array().unwrap())
                .filter(|(_, m)| m.as_u64() == Some(1))
                .map(|(x, _)| x.as_u64().unwrap() as u32)
                .collect();
            assert_eq!(got, want, "{case}[{row}]");
        }
    }
}

/// candle-transformers 0.11.1's own gemma4 module does not load a
/// transformers Gemma 4 checkpoint: it looks for the text weights under
/// `model.language_model.model.*` and for the vision linears without their
/// `.linear` sub-module. If this starts passing, re-check candle's module.
#[test]
fn candle_gemma4_cannot_load_transformers_checkpoint() {
    use candle_transformers::models::gemma4 as cg;
    let raw: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir().join("config.json")).unwrap()).unwrap();
    let cfg: cg::config::Gemma4Config = serde_json::from_value(raw).unwrap();
    let err = match cg::Model::new(&cfg, vb()) {
        Ok(_) => panic!("candle's gemma4 loaded the checkpoint: re-check it against transformers"),
        Err(e) => e.to_string(),
    };
    eprintln!("candle gemma4: {err}");
    assert!(err.contains("cannot find tensor"), "{err}");
}

/// Through the engine: anjeon's own preprocessing of the sample PNG, the
/// chat template and the placeholder expansion give the HF processor's ids,
/// and generation from them gives transformers' greedy continuation.
#[test]
fn gemma4_through_the_engine_matches_the_processor_and_generates() {
    use anjeon::model::chat::ChatPart;
    use anjeon::model::MediaInput;
    use anjeon::sample::{Media, MediaKind, MediaSource};
    let d = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny/gemma4");
    let r = anjeon::model::resolve(d.to_str().unwrap()).unwrap();
    let mut m =
        anjeon::model::TextModel::load(&r, &candle_core::Device::Cpu, &Default::default()).unwrap();
    assert_eq!(m.modalities(), vec![MediaKind::Image]);
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("reference.json")).unwrap()).unwrap();
    let media = Media {
        kind: MediaKind::Image,
        mime: "image/png".into(),
        source: MediaSource::Path(
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("data/sample/media/AS-0005.png"),
        ),
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
    let ids_of = |v: &serde_json::Value| -> Vec<u32> {
        let v = if v[0].is_array() { &v[0] } else { v };
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    assert_eq!(p.ids, ids_of(&json["cases"]["image"]["input_ids"]));
    let params = anjeon::model::GenParams {
        max_new_tokens: 6,
        ignore_eos: true,
        ..Default::default()
    };
    let g = m.generate_mm(&p.ids, p.mm.as_ref(), &params, 0).unwrap();
    assert_eq!(g.tokens, ids_of(&json["cases"]["image"]["greedy"]));
}
