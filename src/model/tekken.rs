//! Mistral's Tekken tokenizer files (`tekken.json`), for checkpoints that
//! ship no `tokenizer.json` (Voxtral, also Mistral NeMo / Pixtral).
//!
//! Tekken is a tiktoken-style byte-level BPE: `vocab` lists byte strings
//! (base64) by rank, a piece is merged pairwise, lowest-rank result first,
//! after splitting the text with `config.pattern`; token ids are the rank
//! plus `default_num_special_tokens`, and the special tokens take the ids
//! below (`special_tokens`, the rest filled with `<SPECIAL_n>`), as
//! mistral_common's `Tekkenizer` does. The vocabulary is cut to
//! `default_vocab_size − num_special` ranks.
//!
//! [`hf_tokenizer_json`] converts a tekken file into an equivalent Hugging
//! Face `tokenizer.json` (the way transformers converts tiktoken files:
//! byte-to-unicode vocabulary, merges recovered from the ranks — every split
//! of a token into two tokens, ordered by the token's rank — the pattern as a
//! `Split` pre-tokenizer, `ignore_merges` so whole pieces in the vocabulary
//! map directly), which the `tokenizers` crate then runs. Checked against
//! mistral_common 1.13.1 on a truncated copy of its bundled Tekken
//! vocabulary (tests/fixtures/tekken/, tests/tekken.rs).

use std::collections::HashMap;

use base64::Engine as _;
use serde_json::{json, Value};

/// GPT-2's byte-to-unicode table (printable stand-ins for every byte), as
/// tokenizers' ByteLevel uses it.
fn byte_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..256u32 {
        let printable =
            (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        table[b as usize] = if printable {
            char::from_u32(b).expect("latin-1")
        } else {
            n += 1;
            char::from_u32(255 + n).expect("bmp")
        };
    }
    table
}

/// A tekken file as a Hugging Face `tokenizer.json` string, plus the
/// special tokens' texts by id (`<s>` = bos, `</s>` = eos in Tekken).
pub fn hf_tokenizer_json(tekken: &[u8]) -> Result<String, String> {
    let t: Value = serde_json::from_slice(tekken).map_err(|e| format!("malformed JSON: {e}"))?;
    let cfg = &t["config"];
    let pattern = cfg["pattern"].as_str().ok_or("config.pattern is missing")?;
    let n_special = cfg["default_num_special_tokens"]
        .as_u64()
        .ok_or("config.default_num_special_tokens is missing")? as usize;
    let vocab_size = cfg["default_vocab_size"]
        .as_u64()
        .ok_or("config.default_vocab_size is missing")? as usize;
    let specials = t["special_tokens"].as_array().ok_or(
        "no special_tokens list (a pre-v7 tekken file); anjeon reads the v7+ layout that Voxtral ships",
    )?;
    if vocab_size < n_special {
        return Err(format!(
            "default_vocab_size {vocab_size} < default_num_special_tokens {n_special}"
        ));
    }
    let mut special: Vec<String> = (0..n_special).map(|i| format!("<SPECIAL_{i}>")).collect();
    for s in specials {
        let rank = s["rank"].as_u64().ok_or("a special token has no rank")? as usize;
        let text = s["token_str"]
            .as_str()
            .ok_or("a special token has no token_str")?;
        if rank >= n_special {
            return Err(format!(
                "special token {text} has rank {rank} ≥ {n_special} special tokens"
            ));
        }
        special[rank] = text.to_string();
    }
    let entries = t["vocab"].as_array().ok_or("vocab is missing")?;
    let n_vocab = (vocab_size - n_special).min(entries.len());
    let b2u = byte_to_unicode();
    let b64 = base64::engine::general_purpose::STANDARD;
    // Byte strings by rank; the BPE vocabulary under byte-level names.
    let mut bytes_of: Vec<Vec<u8>> = Vec::with_capacity(n_vocab);
    let mut rank_of: HashMap<Vec<u8>, usize> = HashMap::with_capacity(n_vocab);
    for (i, e) in entries.iter().take(n_vocab).enumerate() {
        let rank = e["rank"].as_u64().ok_or("a vocab entry has no rank")? as usize;
        if rank != i {
            return Err(format!(
                "vocab entry {i} has rank {rank} (ranks must be 0, 1, 2, …)"
            ));
        }
        let b = b64
            .decode(
                e["token_bytes"]
                    .as_str()
                    .ok_or("a vocab entry has no token_bytes")?,
            )
            .map_err(|err| format!("vocab rank {rank}: token_bytes: {err}"))?;
        rank_of.insert(b.clone(), rank);
        bytes_of.push(b);
    }
    let name = |b: &[u8]| -> String { b.iter().map(|&x| b2u[x as usize]).collect() };
    // The special tokens are in the BPE vocabulary too (ids 0..n_special),
    // so that tokenizers keeps their ids when it loads the added tokens.
    let mut vocab = serde_json::Map::with_capacity(n_special + n_vocab);
    for (id, s) in special.iter().enumerate() {
        vocab.insert(s.clone(), json!(id));
    }
    for (rank, b) in bytes_of.iter().enumerate() {
        let n = name(b);
        if vocab.contains_key(&n) {
            return Err(format!(
                "vocab rank {rank} ({n:?}) has the name of a special token; anjeon cannot tell them apart"
            ));
        }
        vocab.insert(n, json!(rank + n_special));
    }
    // Merges: every split of a token into two tokens, by the token's rank,
    // then by the parts' ranks (transformers' tiktoken conversion).
    let mut merges: Vec<Value> = Vec::new();
    for b in &bytes_of {
        let mut local: Vec<(usize, usize, usize)> = Vec::new();
        for i in 1..b.len() {
            if let (Some(&l), Some(&r)) = (rank_of.get(&b[..i]), rank_of.get(&b[i..])) {
                local.push((l, r, i));
            }
        }
        local.sort();
        for (_, _, i) in local {
            merges.push(json!([name(&b[..i]), name(&b[i..])]));
        }
    }
    let added: Vec<Value> = special
        .iter()
        .enumerate()
        .map(|(id, s)| {
            json!({"id": id, "content": s, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let tok = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}
        ]},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
                  "continuing_subword_prefix": null, "end_of_word_suffix": null,
                  "fuse_unk": false, "byte_fallback": false, "ignore_merges": true,
                  "vocab": vocab, "merges": merges}
    });
    Ok(tok.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_is_a_bijection_onto_printables() {
        let t = byte_to_unicode();
        let mut seen: Vec<char> = t.to_vec();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 256);
        assert_eq!(t[b' ' as usize], 'Ġ');
        assert_eq!(t[b'\n' as usize], 'Ċ');
        assert_eq!(t[b'A' as usize], 'A');
    }

    #[test]
    fn pre_v7_files_are_refused_with_the_reason() {
        let f = br#"{"config": {"pattern": "x", "default_num_special_tokens": 2, "default_vocab_size": 4}, "vocab": []}"#;
        let e = hf_tokenizer_json(f).unwrap_err();
        assert!(e.contains("special_tokens"), "{e}");
    }
}
