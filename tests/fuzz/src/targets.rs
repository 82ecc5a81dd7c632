//! The fuzz targets: `run(target, bytes)` feeds the bytes to one reader.
//! Shared by the AFL++ harness (main.rs) and the regression test that runs
//! the committed findings in CI (tests/suite/fuzz_regressions.rs).

use std::path::PathBuf;

use anjeon::core::limits::Limits;

/// Small limits so that a hostile input cannot make a single execution slow.
fn limits() -> Limits {
    Limits {
        max_pixels: 4_000_000,
        max_alloc: 64 << 20,
        max_frames: 16,
        max_video_bytes: 64 << 20,
        max_audio_seconds: 30.0,
        max_decompressed_mb: 16,
        max_context: 1 << 16,
        ..Limits::default()
    }
}

/// The input as a file with extension `ext` (per process: AFL runs one
/// input at a time in each).
fn file(data: &[u8], ext: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "anjeon-fuzz-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::create_dir_all(&dir);
    let p = dir.join(format!("input.{ext}"));
    std::fs::write(&p, data).expect("write the input");
    p
}

/// Resolve and load a model file or folder on the CPU, with the small limits.
fn load_model(path: &std::path::Path) {
    if let Ok(r) = anjeon::model::resolve(path.to_str().unwrap_or_default()) {
        let _ = anjeon::model::TextModel::load(
            &r,
            &candle_core::Device::Cpu,
            &anjeon::model::LoadOptions {
                max_context: limits().max_context,
                ..Default::default()
            },
        );
    }
}

/// The targets, by name.
pub const TARGETS: &[&str] = &[
    "image",
    "audio",
    "jsonl",
    "csv",
    "parquet",
    "gguf",
    "tekken",
    "template",
    "card",
    "processor",
    "video",
    "safetensors",
    "tokenizer",
];

/// The tiny Llama fixture (a Hugging Face folder), from the fuzz crate or
/// from the repository root (the regression test includes this file).
fn tiny_llama() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    for p in ["tests/fixtures/tiny/llama", "../fixtures/tiny/llama"] {
        if here.join(p).join("config.json").exists() {
            return here.join(p);
        }
    }
    panic!("the tiny llama fixture is missing");
}

/// A per-process copy of the tiny model folder with `name` replaced by the
/// input.
fn model_dir_with(name: &str, data: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "anjeon-fuzz-{}-{:?}-{name}",
        std::process::id(),
        std::thread::current().id()
    ));
    if !dir.join("config.json").exists() {
        let _ = std::fs::create_dir_all(&dir);
        for e in std::fs::read_dir(tiny_llama()).expect("fixture").flatten() {
            let _ = std::fs::copy(e.path(), dir.join(e.file_name()));
        }
        let _ = std::fs::remove_file(dir.join("model.safetensors.sha256"));
    }
    std::fs::write(dir.join(name), data).expect("write the input");
    dir
}

pub fn run(target: &str, data: &[u8]) {
    assert!(
        TARGETS.contains(&target),
        "unknown fuzz target {target:?}: use one of {TARGETS:?}"
    );
    match target {
        "image" => {
            let _ = anjeon::media::decode_image(data, "fuzz", &limits());
        }
        "audio" => {
            let _ = anjeon::audio::decode::decode_bytes(data, "fuzz", &limits().audio());
        }
        "jsonl" | "csv" | "parquet" => {
            let p = file(data, target);
            let opts = anjeon::dataset::ReadOptions {
                limits: limits(),
                ..Default::default()
            };
            let fmt = match target {
                "parquet" => "assurai",
                t => t,
            };
            if let Ok(ds) = anjeon::dataset::load(&format!("{fmt}:{}", p.display()), &opts) {
                let _ = anjeon::dataset::validate(&ds, &opts.limits);
            }
        }
        "gguf" => {
            load_model(&file(data, "gguf"));
        }
        "tekken" => {
            let _ = anjeon::model::tekken::hf_tokenizer_json(data);
        }
        "template" => {
            let src = String::from_utf8_lossy(data);
            let t = anjeon::model::ChatTemplate::new(src, "fuzz", "<s>", "</s>");
            let msgs = [
                anjeon::model::Message::new("system", "s"),
                anjeon::model::Message::new("user", "안녕"),
                anjeon::model::Message::new("assistant", "a"),
            ];
            let _ = t.render(&msgs, true);
        }
        "card" => {
            let p = file(data, "toml");
            let _ = anjeon::model::card::from_file(&p);
        }
        "processor" => {
            let s = String::from_utf8_lossy(data);
            if let Ok(p) = anjeon::media::qwen3vl::ImageProcessor::from_json_str(&s) {
                let _ = p.target_size(37, 1031);
            }
            if let Ok(p) = anjeon::media::gemma4::ImageProcessor::from_json_str(&s) {
                let _ = p.target_size(37, 1031);
            }
            let _ = anjeon::media::qwen3vl::VideoProcessor::from_json_str(&s);
        }
        "video" => {
            // Containers through the built-in FFmpeg (and rav1d for AV1):
            // probe, demux, decode, sample 4 frames, convert to RGB.
            let _ = anjeon::media::decode_video_sampled(
                anjeon::media::VideoSource::Bytes(data),
                "fuzz",
                &limits(),
                &|n, _| (0..n).step_by((n / 4).max(1)).take(4).collect(),
            );
        }
        "safetensors" => {
            // The weights file of a Hugging Face folder: header, tensor
            // offsets, dtypes and shapes against the config.
            load_model(&model_dir_with("model.safetensors", data));
        }
        "tokenizer" => {
            // tokenizer.json of a Hugging Face folder, then encode/decode.
            let dir = model_dir_with("tokenizer.json", data);
            let read = |n: &str| -> serde_json::Value {
                std::fs::read(dir.join(n))
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok())
                    .unwrap_or(serde_json::Value::Null)
            };
            if let Ok(t) = anjeon::model::tokenizer::Tok::from_hf_dir(
                &dir,
                &read("tokenizer_config.json"),
                &read("generation_config.json"),
                &read("config.json"),
            ) {
                if let Ok(ids) = t.encode_prompt("안녕하세요, <s> hello [INST] 1234") {
                    let _ = t.decode(&ids);
                }
            }
        }
        _ => unreachable!("checked against TARGETS above"),
    }
}
