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

/// anjeon's Voxtral prompts equal mistral_common's (the reference
/// `VoxtralProcessor` uses): the pinned chat template rendered, tokenized
/// with the tekken file and the `[AUDIO]` placeholders expanded (375 per
/// 30 s chunk of each clip) give `encode_chat_completion`'s tokens for audio
/// + question, two clips, several turns, a system prompt and plain text.
#[test]
fn voxtral_prompts_equal_mistral_common() {
    use anjeon::model::chat::{ChatPart, ChatTemplate, Message};
    use anjeon::model::voxtral::{expand_audio_placeholders, CHAT_TEMPLATE};
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixtures().join("tekken.json"),
        tmp.path().join("tekken.json"),
    )
    .unwrap();
    let empty = serde_json::json!({});
    let tok =
        anjeon::model::tokenizer::Tok::from_hf_dir(tmp.path(), &empty, &empty, &empty).unwrap();
    let template = ChatTemplate::new(CHAT_TEMPLATE, "anjeon:voxtral", "<s>", "</s>");
    let exp = expected();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let audio_id = tok.token_to_id("[AUDIO]").unwrap();
    let begin_id = tok.token_to_id("[BEGIN_AUDIO]").unwrap();
    for chat in exp["chats"].as_array().unwrap() {
        let name = chat["name"].as_str().unwrap();
        let mut messages = Vec::new();
        let mut chunks = Vec::new();
        for m in chat["messages"].as_array().unwrap() {
            let role = m[0].as_str().unwrap();
            let mut parts = Vec::new();
            for item in m[1].as_array().unwrap() {
                let (kind, value) = (item[0].as_str().unwrap(), item[1].as_str().unwrap());
                if kind == "audio" {
                    let path = root.join(exp["clips"][value].as_str().unwrap());
                    let a = anjeon::audio::decode::decode_file(&path, &Default::default()).unwrap();
                    chunks.push(a.samples.len().div_ceil(480_000).max(1));
                    parts.push(ChatPart::Audio);
                } else {
                    parts.push(ChatPart::Text(value.to_string()));
                }
            }
            messages.push(Message::with_parts(role, parts));
        }
        let text = template.render(&messages, true).unwrap();
        let got = tok.encode_prompt(&text).unwrap();
        let got = expand_audio_placeholders(&got, audio_id, begin_id, 375, &chunks).unwrap();
        assert_eq!(got, ids(&chat["tokens"]), "{name}: {text}");
    }
    // mistral_common (tokenizer v11) refuses a system prompt next to audio.
    assert!(exp["system_with_audio"]
        .as_str()
        .unwrap()
        .starts_with("refused"));
}
