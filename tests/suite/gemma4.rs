//! Gemma 4 parity with transformers on a tiny random checkpoint
//! (tests/fixtures/tiny/make_tiny_gemma4.py): same pixels and ids in, logits
//! of the prompt's last position and a greedy continuation out; the same for
//! audio (the transformers feature extractor's log-mel and mask in, the
//! audio tower's soft tokens and the logits out).

use std::collections::HashMap;
use std::path::PathBuf;

use anjeon::model::gemma4::{
    expand_audio_placeholders, expand_image_placeholders, soft_tokens_per_audio,
    soft_tokens_per_image, AudioClip, Config, Gemma4, ImageInput, MmInput,
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

use crate::common;
use crate::common::{greedy, max_abs};

/// The clips of an audio case as the transformers feature extractor gave
/// them (padded to the longest clip of the prompt, with their masks).
fn audio_clips(refs: &HashMap<String, Tensor>, case: &str) -> Vec<AudioClip> {
    let Some(f) = refs.get(&format!("{case}.input_features")) else {
        return Vec::new();
    };
    let m = refs[&format!("{case}.input_features_mask")]
        .to_vec2::<i64>()
        .unwrap();
    m.iter()
        .enumerate()
        .map(|(i, row)| AudioClip {
            features: f.i(i).unwrap(),
            mask: row.iter().map(|&v| v == 1).collect(),
        })
        .collect()
}

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
        .prefill_mm(
            &ids,
            &MmInput {
                images,
                audio: audio_clips(refs, case),
            },
        )
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
        ("audio", 0),
        ("image_audio", 0),
        ("two_audio", 0),
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

/// The audio tower alone: soft tokens (after `embed_audio`, padding steps
/// dropped) equal transformers' for every clip, also for the shorter clip of
/// a padded pair, which anjeon runs on its own (mask applied).
#[test]
fn gemma4_audio_tower_matches_transformers() {
    let (model, refs, _) = load();
    for case in ["audio", "image_audio", "two_audio"] {
        let want_all = &refs[&format!("{case}.audio_soft_tokens")];
        let keep = refs[&format!("{case}.audio_mask")]
            .to_vec2::<i64>()
            .unwrap();
        for (i, clip) in audio_clips(&refs, case).iter().enumerate() {
            let got = model.encode_audio(clip).unwrap();
            let idx: Vec<u32> = (0..keep[i].len() as u32)
                .filter(|&j| keep[i][j as usize] == 1)
                .collect();
            assert_eq!(soft_tokens_per_audio(&clip.mask), idx.len(), "{case}[{i}]");
            let want = want_all
                .i(i)
                .unwrap()
                .index_select(&Tensor::new(idx.as_slice(), &Device::Cpu).unwrap(), 0)
                .unwrap();
            assert_eq!(got.dims(), want.dims(), "{case}[{i}]");
            let d = max_abs(
                &got.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                &want.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            );
            let scale = want
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            eprintln!(
                "{case}[{i}]: {} soft tokens, max |Δ| {d:.2e} (max |x| {scale:.2})",
                idx.len()
            );
            assert!(d < 1e-4, "{case}[{i}]: audio soft tokens differ by {d}");
        }
        // The same clip unpadded (only its valid frames) gives the same tokens.
        if case == "two_audio" {
            let clips = audio_clips(&refs, case);
            let c = &clips[1];
            let n = c.mask.iter().filter(|&&v| v).count();
            let short = AudioClip {
                features: c.features.narrow(0, 0, n).unwrap(),
                mask: vec![true; n],
            };
            let a = model.encode_audio(c).unwrap();
            let b = model.encode_audio(&short).unwrap();
            let d = max_abs(
                &a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                &b.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            );
            assert!(d < 1e-5, "padded vs unpadded clip: {d}");
        }
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
    let tweaks: [(&str, Tweak); 10] = [
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
        // The audio tower: E2B's chunking hard-coded, no logit cap, no
        // clamps, unscaled feed-forward residual, one more step of left context.
        ("audio right context 0", |c| {
            c.audio_config.as_mut().unwrap().attention_context_right = 0
        }),
        ("audio logit cap 50", |c| {
            c.audio_config.as_mut().unwrap().attention_logit_cap = 50.0
        }),
        ("audio no gradient clipping (E2B's 1e10)", |c| {
            c.audio_config.as_mut().unwrap().gradient_clipping = 1e10
        }),
        ("audio residual weight 1", |c| {
            c.audio_config.as_mut().unwrap().residual_weight = 1.0
        }),
        ("audio left context one longer", |c| {
            c.audio_config.as_mut().unwrap().attention_context_left += 1
        }),
    ];
    for (name, tweak) in tweaks {
        let mut cfg = base.clone();
        tweak(&mut cfg);
        let mut model = Gemma4::new(&cfg, vb()).unwrap();
        let worst = ["image", "two_images", "text", "audio", "two_audio"]
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
    let refs =
        candle_core::safetensors::load(d.join("reference.safetensors"), &Device::Cpu).unwrap();
    for case in [
        "image",
        "two_images",
        "text",
        "batch",
        "audio",
        "image_audio",
        "two_audio",
    ] {
        let c = &json["cases"][case];
        // Audio soft tokens from the feature extractor's frame masks.
        let audio_soft: Vec<usize> = audio_clips(&refs, case)
            .iter()
            .map(|a| soft_tokens_per_audio(&a.mask))
            .collect();
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
            let got = expand_audio_placeholders(
                &got,
                cfg.audio_token_id.unwrap(),
                cfg.boa_token_id.unwrap(),
                cfg.eoa_token_id.unwrap(),
                &audio_soft,
            )
            .unwrap();
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
    use anjeon::core::sample::{Media, MediaKind, MediaSource};
    use anjeon::model::chat::ChatPart;
    use anjeon::model::MediaInput;
    let d = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny/gemma4");
    let r = anjeon::model::resolve(d.to_str().unwrap()).unwrap();
    let mut m =
        anjeon::model::TextModel::load(&r, &candle_core::Device::Cpu, &Default::default()).unwrap();
    assert_eq!(m.modalities(), vec![MediaKind::Image, MediaKind::Audio]);
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

/// Audio through the engine: the sample's WAV and a fixture clip decoded by
/// anjeon, Gemma 4 log-mel by anjeon, the template's `<|audio|>` expanded
/// as the HF processor does, and transformers' greedy continuation.
#[test]
fn gemma4_audio_through_the_engine_matches_the_processor_and_generates() {
    use anjeon::core::sample::{Media, MediaKind, MediaSource};
    use anjeon::model::chat::ChatPart;
    use anjeon::model::MediaInput;
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let d = dir();
    let r = anjeon::model::resolve(d.to_str().unwrap()).unwrap();
    let mut m =
        anjeon::model::TextModel::load(&r, &candle_core::Device::Cpu, &Default::default()).unwrap();
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("reference.json")).unwrap()).unwrap();
    let wav = |p: &str| Media {
        kind: MediaKind::Audio,
        mime: "audio/wav".into(),
        source: MediaSource::Path(root.join(p)),
    };
    let a = wav("data/sample/media/AS-0031.wav");
    let b = wav("tests/fixtures/audio/chirp.wav");
    let msg = anjeon::model::Message::with_parts(
        "user",
        vec![
            ChatPart::Audio,
            ChatPart::Text("and".into()),
            ChatPart::Audio,
            ChatPart::Text("음성 ?".into()),
        ],
    );
    let media = [
        MediaInput {
            kind: MediaKind::Audio,
            media: &a,
        },
        MediaInput {
            kind: MediaKind::Audio,
            media: &b,
        },
    ];
    let p = m.encode_multimodal(&[msg], &media).unwrap();
    let case = &json["cases"]["two_audio"];
    assert_eq!(p.ids, common::ids(&case["input_ids"][0]));
    let params = anjeon::model::GenParams {
        max_new_tokens: 6,
        ignore_eos: true,
        ..Default::default()
    };
    let g = m.generate_mm(&p.ids, p.mm.as_ref(), &params, 0).unwrap();
    assert_eq!(g.tokens, common::ids(&case["greedy"][0]));
    // Two clips for one `<|audio|>`: an error that says so, not a panic.
    let one = anjeon::model::Message::with_parts("user", vec![ChatPart::Audio]);
    let err = m
        .encode_multimodal(&[one], &media)
        .err()
        .map(|e| e.to_string());
    eprintln!("placeholder mismatch: {err:?}");
    assert!(err
        .as_deref()
        .is_some_and(|e| e.contains("1 audio placeholders for 2 audio clips")));
}

/// `anjeon run` with the tiny Gemma 4 (image + audio): the sample's image
/// and audio items are generated directly (route `direct` in items.csv, no
/// recogniser), video items are skipped with the reason.
#[test]
fn gemma4_run_takes_the_sample_audio_items_directly() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    // ~25 soft tokens per second of audio: 6-15 s clips.
    let rep = common::run_sample_with_audio_target(&dir(), &out, 141, &["video"]);
    // The report's spoken-prompt table lists every audio item with its route.
    let spoken = rep["spoken"].as_array().unwrap();
    assert_eq!(spoken.len(), 8, "{spoken:?}");
    assert!(spoken
        .iter()
        .all(|r| r["route"] == "direct" && r["transcript"] == ""));
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("| AS-0013 | gemma4 | direct | ko |"), "{md}");
}

/// Bad audio in a run with an audio target: corrupt bytes, an empty file, a
/// truncated WAV and a header claiming two hours are per-item `media`
/// failures that name the file and the fix; the good clip is generated.
#[test]
fn bad_audio_items_fail_alone_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let good = std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/audio/speech_en.wav"),
    )
    .unwrap();
    std::fs::write(d.join("good.wav"), &good).unwrap();
    std::fs::write(d.join("truncated.wav"), &good[..2000]).unwrap();
    std::fs::write(d.join("empty.wav"), b"").unwrap();
    let junk: Vec<u8> = (0..3000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(d.join("corrupt.wav"), junk).unwrap();
    // 16 kHz mono 16-bit PCM whose header claims two hours of data.
    let n: u32 = 16_000 * 7_200 * 2;
    let mut long = Vec::new();
    long.extend(b"RIFF");
    long.extend((36 + n).to_le_bytes());
    long.extend(b"WAVEfmt ");
    long.extend(16u32.to_le_bytes());
    long.extend(1u16.to_le_bytes());
    long.extend(1u16.to_le_bytes());
    long.extend(16_000u32.to_le_bytes());
    long.extend(32_000u32.to_le_bytes());
    long.extend(2u16.to_le_bytes());
    long.extend(16u16.to_le_bytes());
    long.extend(b"data");
    long.extend(n.to_le_bytes());
    long.extend(vec![0u8; 32_000]);
    std::fs::write(d.join("long.wav"), long).unwrap();
    let items: String = ["good", "corrupt", "empty", "truncated", "long"]
        .iter()
        .map(|id| {
            format!(
                "{{\"id\": \"{id}\", \"prompt\": \"Answer.\", \"media_path\": \"{id}.wav\", \"modality\": \"audio\", \"expected\": \"benign\", \"lang\": \"en\"}}\n"
            )
        })
        .collect();
    std::fs::write(d.join("items.jsonl"), items).unwrap();
    let out = d.join("run");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_anjeon"))
        .args(["run", "--dataset"])
        .arg(format!("jsonl:{}", d.join("items.jsonl").display()))
        .args(["--target", dir().to_str().unwrap()])
        .args(["--judge", "refusal", "--max-new-tokens", "2", "--out"])
        .arg(&out)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    // Exit code 1: the run finished, with item failures.
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let gens = std::fs::read_to_string(out.join("generations.jsonl")).unwrap();
    assert_eq!(gens.lines().count(), 1, "{gens}");
    assert!(gens.contains("\"good\""));
    let rep: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    let failures = rep["failures"].as_array().unwrap();
    for (id, says) in [
        ("corrupt", "unsupported audio"),
        ("empty", "no samples"),
        ("truncated", "shorter than the header"),
        ("long", "over the limit"),
    ] {
        let f = failures
            .iter()
            .find(|f| f["id"] == id)
            .unwrap_or_else(|| panic!("{id} is not a failure: {failures:?}"));
        let reason = f["reason"].as_str().unwrap();
        assert_eq!(f["stage"], "media", "{id}");
        assert!(
            reason.contains(says) && reason.contains("fix:"),
            "{id}: {reason}"
        );
        assert!(reason.contains(&format!("{id}.wav")), "{id}: {reason}");
    }
}
