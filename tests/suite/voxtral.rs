//! Voxtral parity with transformers on a tiny random checkpoint
//! (tests/fixtures/tiny/make_tiny_voxtral.py): same features and ids in,
//! logits of the prompt's last position and a greedy continuation out; and
//! anjeon's input processing (PCM -> features, placeholder expansion)
//! against the processor's.

use std::collections::HashMap;
use std::path::PathBuf;

use anjeon::model::voxtral::{AudioInput, Config, Processor, Voxtral};
use candle_core::{DType, Device, IndexOp, Tensor};

use crate::common;
use crate::common::{greedy, max_abs};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny/voxtral")
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

fn config() -> Config {
    serde_json::from_slice(&std::fs::read(dir().join("config.json")).unwrap()).unwrap()
}

fn refs() -> (HashMap<String, Tensor>, serde_json::Value) {
    let d = dir();
    let refs =
        candle_core::safetensors::load(d.join("reference.safetensors"), &Device::Cpu).unwrap();
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("reference.json")).unwrap()).unwrap();
    (refs, json)
}

fn ids_of(refs: &HashMap<String, Tensor>, case: &str) -> Vec<u32> {
    refs[&format!("{case}.input_ids")]
        .i(0)
        .unwrap()
        .to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|x| x as u32)
        .collect()
}

fn audio_of(refs: &HashMap<String, Tensor>, case: &str) -> Option<AudioInput> {
    refs.get(&format!("{case}.input_features"))
        .map(|f| AudioInput {
            input_features: f.clone(),
        })
}

/// Max |Δlogit| of the prompt, and the greedy continuation (got, want).
fn run_case(
    model: &mut Voxtral,
    refs: &HashMap<String, Tensor>,
    json: &serde_json::Value,
    case: &str,
) -> (f32, Vec<u32>, Vec<u32>) {
    let ids = ids_of(refs, case);
    let audio = audio_of(refs, case);
    let logits = model
        .prefill(&ids, audio.as_ref())
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let want = refs[&format!("{case}.logits_last")]
        .i(0)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let d = max_abs(&logits, &want);
    let want_gen = common::ids(&json["cases"][case]["greedy"]);
    let got = greedy(&logits, ids.len(), want_gen.len(), |t, o| {
        model.forward(t, o)
    });
    (d, got, want_gen)
}

const CASES: [&str; 3] = ["speech", "long", "text"];
// Measured: 1.1e-6 (speech), 1.2e-6 (long), 8.6e-7 (text); max |logit| ~2.4.
const TOL: f32 = 1e-5;

#[test]
fn voxtral_logits_and_greedy_match_transformers() {
    let (refs, json) = refs();
    let mut model = Voxtral::new(&config(), vb()).unwrap();
    for case in CASES {
        let (d, got, want) = run_case(&mut model, &refs, &json, case);
        eprintln!("{case}: max |Δlogit| {d:.2e}, greedy {got:?}");
        assert!(d < TOL, "{case}: logits differ by {d}");
        assert_eq!(got, want, "{case}: greedy continuation");
    }
}

/// The tolerance is meaningful: small deviations, made through the config,
/// move the logits well past it on at least one case.
#[test]
fn voxtral_small_bugs_exceed_tolerance() {
    let (refs, json) = refs();
    let base = config();
    type Tweak = fn(&mut Config);
    let tweaks: [(&str, Tweak); 4] = [
        ("tanh GELU in the projector", |c| {
            c.projector_hidden_act = candle_nn::Activation::GeluPytorchTanh
        }),
        ("tanh GELU in the encoder MLP", |c| {
            c.audio_config.activation_function = candle_nn::Activation::GeluPytorchTanh
        }),
        ("rope theta 1e6", |c| c.text_config.rope_theta = Some(1e6)),
        ("rms eps 1e-6", |c| c.text_config.rms_norm_eps = 1e-6),
    ];
    for (name, tweak) in tweaks {
        let mut cfg = base.clone();
        tweak(&mut cfg);
        if name.starts_with("rope") {
            cfg.text_config.rope_parameters = None;
        }
        let mut model = Voxtral::new(&cfg, vb()).unwrap();
        let worst = CASES
            .iter()
            .map(|case| run_case(&mut model, &refs, &json, case).0)
            .fold(0f32, f32::max);
        eprintln!("{name}: max |Δlogit| {worst:.2e}");
        assert!(worst > 10.0 * TOL, "{name}: only {worst}");
    }
}

#[test]
fn voxtral_cache_clone_continues_identically() {
    let (refs, json) = refs();
    let mut model = Voxtral::new(&config(), vb()).unwrap();
    let (_, got, _) = run_case(&mut model, &refs, &json, "speech");
    let mut copy = model.clone();
    let n = ids_of(&refs, "speech").len() + got.len() - 1;
    assert_eq!(model.cached_len(), n);
    let input = Tensor::new(&[*got.last().unwrap()], &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let a = model.forward(&input, n).unwrap().to_vec1::<f32>().unwrap();
    let b = copy.forward(&input, n).unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(a, b);
}

/// anjeon's processing of the committed clips (decode -> one-pass Whisper
/// features -> 30 s chunks; placeholder expansion) gives the processor's
/// features and ids.
#[test]
fn voxtral_processor_matches_transformers() {
    let (refs, json) = refs();
    let cfg = config();
    let proc = Processor::from_dir(&dir(), &cfg).unwrap();
    assert_eq!(proc.tokens_per_chunk, 375);
    assert_eq!(proc.audio_token_id, 24);
    assert_eq!(proc.begin_audio_token_id, 25);
    let audio_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/audio");
    let pcm = |name: &str| {
        let a = anjeon::audio::decode_file(
            &audio_dir.join(format!("{name}.wav")),
            &anjeon::audio::DecodeOptions::default(),
        )
        .unwrap();
        assert_eq!(a.rate, 16_000);
        a.samples
    };
    // As make_tiny_voxtral.py: speech_en at 0 s, speech_ko at 28.5 s.
    let long = {
        let (en, ko) = (pcm("speech_en"), pcm("speech_ko"));
        let start = 28_500 * 16;
        let mut x = vec![0f32; start + ko.len()];
        x[..en.len()].copy_from_slice(&en);
        x[start..].copy_from_slice(&ko);
        x
    };
    let long_clip = long.clone();
    for (case, clip) in [("speech", pcm("speech_en")), ("long", long)] {
        let c = &json["cases"][case];
        assert_eq!(clip.len() as u64, c["samples"].as_u64().unwrap(), "{case}");
        let (chunks, input) = proc.process(&[&clip], &Device::Cpu).unwrap();
        assert_eq!(
            chunks,
            vec![c["chunks"].as_u64().unwrap() as usize],
            "{case}"
        );
        let want = &refs[&format!("{case}.input_features")];
        assert_eq!(input.input_features.dims(), want.dims(), "{case}");
        let d = max_abs(
            &input
                .input_features
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap(),
            &want.flatten_all().unwrap().to_vec1().unwrap(),
        );
        eprintln!("{case}: features max |d| {d:.2e}");
        assert!(d <= 1e-4, "{case}: features differ by {d}");
        let placeholder = common::ids(&c["placeholder_ids"]);
        let expanded = proc.expand(&placeholder, &chunks).unwrap();
        assert_eq!(expanded, ids_of(&refs, case), "{case}: expanded ids");
    }
    // Per-chunk extraction (Whisper's long-form chunking) is not what
    // Voxtral does: the same for one chunk, different across a boundary.
    let one = proc.features.chunks(&pcm("speech_en")).concat();
    let want = refs["speech.input_features"].flatten_all().unwrap();
    assert_eq!(one, want.to_vec1::<f32>().unwrap());
    let sep = proc.features.chunks(&long_clip).concat();
    let want = refs["long.input_features"].flatten_all().unwrap();
    let d = max_abs(&sep, &want.to_vec1::<f32>().unwrap());
    eprintln!("long, chunk by chunk: features max |d| {d:.2e}");
    assert!(d > 1e-2, "{d}");
}

/// Wrong inputs are errors, not panics.
#[test]
fn voxtral_rejects_mismatched_inputs() {
    let (refs, _) = refs();
    let cfg = config();
    let mut model = Voxtral::new(&cfg, vb()).unwrap();
    let audio = audio_of(&refs, "speech").unwrap();
    let mut ids = ids_of(&refs, "speech");
    // One [AUDIO] too few.
    let at = ids.iter().position(|&t| t == cfg.audio_token_id).unwrap();
    ids.remove(at);
    let e = model.prefill(&ids, Some(&audio)).unwrap_err().to_string();
    assert!(
        e.contains("374 [AUDIO] tokens, 375 audio embeddings"),
        "{e}"
    );
    // Audio tokens without audio.
    let e = model
        .prefill(&ids_of(&refs, "speech"), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no audio features"), "{e}");
    // Features of the wrong length.
    let short = AudioInput {
        input_features: audio.input_features.narrow(2, 0, 2000).unwrap(),
    };
    let e = model
        .prefill(&ids_of(&refs, "speech"), Some(&short))
        .unwrap_err()
        .to_string();
    assert!(e.contains("chunks of 128 mel bins x 3000 frames"), "{e}");
    // Placeholders and clips that do not pair up.
    let proc = Processor::from_dir(&dir(), &cfg).unwrap();
    let e = proc.expand(&[1, 3, 24, 24, 4], &[1]).unwrap_err();
    assert!(matches!(e, anjeon::core::error::Error::Usage(_)), "{e}");
    // A decode step at the wrong offset.
    let input = Tensor::new(&[5u32], &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    model.clear_kv_cache();
    assert!(model.forward(&input, 3).is_err());
}

/// Through the engine: the folder loads as an audio target (Voxtral ships no
/// chat template; anjeon's pinned mistral_common rendering is used), the
/// clip decoded and featurised by anjeon, the prompt ids equal the
/// reference's, and generation gives transformers' greedy continuation.
#[test]
fn voxtral_through_the_engine_matches_the_reference_and_generates() {
    use anjeon::core::sample::{Media, MediaKind, MediaSource};
    use anjeon::model::chat::ChatPart;
    use anjeon::model::MediaInput;
    let r = anjeon::model::resolve(dir().to_str().unwrap()).unwrap();
    let mut m = anjeon::model::TextModel::load(&r, &Device::Cpu, &Default::default()).unwrap();
    assert_eq!(m.modalities(), vec![MediaKind::Audio]);
    assert!(
        m.template.origin.starts_with("anjeon:voxtral"),
        "{}",
        m.template.origin
    );
    let (refs, json) = refs();
    let params = anjeon::model::GenParams {
        max_new_tokens: 6,
        ignore_eos: true,
        ..Default::default()
    };
    // Text only.
    let msg = anjeon::model::Message::new("user", "Hello world this is a test .");
    let p = m.encode_multimodal(&[msg], &[]).unwrap();
    assert_eq!(p.ids, ids_of(&refs, "text"), "{}", p.text);
    let g = m.generate_mm(&p.ids, p.mm.as_ref(), &params, 0).unwrap();
    assert_eq!(g.tokens, common::ids(&json["cases"]["text"]["greedy"]));
    // Speech + question.
    let media = Media {
        kind: MediaKind::Audio,
        mime: "audio/wav".into(),
        source: MediaSource::Path(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/audio/speech_en.wav"),
        ),
    };
    let msg = anjeon::model::Message::with_parts(
        "user",
        vec![ChatPart::Audio, ChatPart::Text("What is said ?".into())],
    );
    let p = m
        .encode_multimodal(
            &[msg],
            &[MediaInput {
                kind: MediaKind::Audio,
                media: &media,
            }],
        )
        .unwrap();
    assert_eq!(p.ids, ids_of(&refs, "speech"), "{}", p.text);
    let g = m.generate_mm(&p.ids, p.mm.as_ref(), &params, 0).unwrap();
    assert_eq!(g.tokens, common::ids(&json["cases"]["speech"]["greedy"]));
    // A system prompt next to audio is refused, as mistral_common does
    // before tokenizer v13 (tests/tekken.rs records its refusal).
    let sys = anjeon::model::Message::new("system", "Be careful.");
    let user = anjeon::model::Message::with_parts("user", vec![ChatPart::Audio]);
    let err = m
        .encode_multimodal(
            &[sys, user],
            &[MediaInput {
                kind: MediaKind::Audio,
                media: &media,
            }],
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("system prompt"), "{err}");
}

/// `anjeon run` with the tiny Voxtral: the sample's audio items go to it
/// directly (route `direct`, 375 audio tokens per clip), text items run,
/// image and video items are skipped with the reason.
#[test]
fn voxtral_run_takes_the_sample_audio_items_directly() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    common::run_sample_with_audio_target(&dir(), &out, 377, &["image", "video"]);
}
