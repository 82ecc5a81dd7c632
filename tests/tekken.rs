//! Tekken (`tekken.json`) tokenization equals mistral_common's: a truncated
//! copy of the real Tekken vocabulary and mistral_common 1.13.1's encodings
//! (tests/fixtures/tekken/make_tekken_fixtures.py).

use std::path::PathBuf;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tekken")
}

fn expected() -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(fixtures().join("expected.json")).unwrap()).unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn tekken_encodes_and_decodes_as_mistral_common() {
    let raw = std::fs::read(fixtures().join("tekken.json")).unwrap();
    let json = anjeon::model::tekken::hf_tokenizer_json(&raw).unwrap();
    let tok = tokenizers::Tokenizer::from_bytes(json.as_bytes()).unwrap();
    let exp = expected();
    assert_eq!(
        tok.get_vocab_size(true),
        exp["n_vocab"].as_u64().unwrap() as usize
    );
    for (name, id) in exp["special"].as_object().unwrap() {
        assert_eq!(
            tok.token_to_id(name),
            id.as_u64().map(|x| x as u32),
            "{name}"
        );
    }
    for c in exp["cases"].as_array().unwrap() {
        let text = c["text"].as_str().unwrap();
        let got = tok.encode(text, false).unwrap().get_ids().to_vec();
        assert_eq!(got, ids(&c["ids"]), "{text:?}");
        let back = tok.decode(&got, true).unwrap();
        assert_eq!(back, c["decoded"].as_str().unwrap(), "{text:?}");
    }
}

/// A model folder with only tekken.json: the engine's tokenizer reads it,
/// `<s>`/`</s>` are bos/eos, and special tokens in a rendered prompt are
/// parsed (the Voxtral prompt shape).
#[test]
fn a_folder_with_only_tekken_json_tokenizes_prompts() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixtures().join("tekken.json"),
        tmp.path().join("tekken.json"),
    )
    .unwrap();
    let empty = serde_json::json!({});
    let tok =
        anjeon::model::tokenizer::Tok::from_hf_dir(tmp.path(), &empty, &empty, &empty).unwrap();
    assert_eq!(tok.bos_text(), "<s>");
    assert_eq!(tok.eos_text(), "</s>");
    let exp = expected();
    let c = &exp["cases"][0];
    let text = c["text"].as_str().unwrap();
    let got = tok
        .encode_prompt(&format!("<s>[INST][BEGIN_AUDIO][AUDIO]{text}[/INST]"))
        .unwrap();
    let mut want = vec![1, 3, 25, 24];
    want.extend(ids(&c["ids"]));
    want.push(4);
    assert_eq!(got, want);
}
