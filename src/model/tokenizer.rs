//! Tokenizers: `tokenizer.json` when the model folder has one, otherwise built
//! from GGUF metadata (GPT-2-style BPE vocabularies: SmolLM2, Qwen). Plus an
//! incremental detokenizer that never emits half a character (Hangul
//! syllables are three UTF-8 bytes and often span byte-level tokens).

use std::path::Path;

use candle_core::quantized::gguf_file;
use candle_core::quantized::tokenizer::TokenizerFromGguf;
use tokenizers::Tokenizer;

use crate::core::error::{Error, Result};

/// The tokenization algorithm behind a [`Tok`].
pub enum Inner {
    /// Hugging Face `tokenizers` (tokenizer.json, or GPT-2 BPE rebuilt from GGUF).
    Hf(Box<Tokenizer>),
    /// SentencePiece BPE from GGUF metadata (llama.cpp's algorithm).
    Spm(Box<super::spm::Spm>),
}

pub struct Tok {
    pub inner: Inner,
    pub bos: Option<(u32, String)>,
    pub eos: Option<(u32, String)>,
    /// Every id that ends generation (EOS, end-of-turn tokens).
    pub stop_ids: Vec<u32>,
    /// Prepend BOS to prompts (GGUF `tokenizer.ggml.add_bos_token`, llama.cpp's rule).
    pub add_bos: bool,
    pub fingerprint: String,
}

/// End-of-turn tokens that stop generation when the vocabulary has them.
const END_OF_TURN: &[&str] = &[
    "<|im_end|>",
    "<|endoftext|>",
    "<end_of_turn>",
    "<|eot_id|>",
    "<|end|>",
    "<|end_of_text|>",
    "</s>",
];

/// candle 0.11's GGUF tokenizer builder uses a byte-level pre-tokenizer that
/// adds a prefix space for every `tokenizer.ggml.pre` it does not know, so
/// "Hello" became "ĠHello" for SmolLM2 (pre = "smollm"); llama.cpp and the
/// model's tokenizer.json add none. Set the pre-tokenizer the way the
/// reference tokenizers define it (checked id by id against llama.cpp).
fn fix_pre_tokenizer(t: &mut Tokenizer, pre: &str) {
    use tokenizers::pre_tokenizers::{
        byte_level::ByteLevel, digits::Digits, sequence::Sequence, PreTokenizerWrapper,
    };
    match pre {
        // candle's own settings for these match their tokenizer.json files.
        "qwen2" | "smaug-bpe" | "llama3" | "lfm2" => {}
        // SmolLM: digits split one by one, then GPT-2 byte-level without prefix space.
        "smollm" => {
            t.with_pre_tokenizer(Some(PreTokenizerWrapper::Sequence(Sequence::new(vec![
                Digits::new(true).into(),
                ByteLevel::new(false, true, true).into(),
            ]))));
        }
        _ => {
            t.with_pre_tokenizer(Some(PreTokenizerWrapper::ByteLevel(ByteLevel::new(
                false, true, true,
            ))));
        }
    }
}

/// Build a Hugging Face tokenizer from the bytes of a `tokenizer.json`
/// (`path` names it in errors). The `tokenizers` crate (0.23) panics on some
/// malformed files (`.expect("Helper")` on a bad `decoder`, found by
/// fuzzing, `tests/fixtures/fuzz/tokenizer/`): that is contained and becomes
/// an error naming the file.
pub fn hf_tokenizer(bytes: &[u8], path: &std::path::Path) -> Result<Tokenizer> {
    let r = crate::core::guard::contain(|| Tokenizer::from_bytes(bytes).map_err(|e| e.to_string()));
    let msg = match r {
        Ok(Ok(t)) => return Ok(t),
        Ok(Err(e)) => e,
        Err(panic) => format!("the tokenizers library failed on the file ({panic})"),
    };
    Err(Error::Usage(format!(
        "{}: tokenizer: {msg}\n  fix: use the model's own tokenizer.json (re-download it)",
        path.display()
    )))
}

/// Read and build a `tokenizer.json` (see [`hf_tokenizer`]).
pub fn hf_tokenizer_file(path: &std::path::Path) -> Result<Tokenizer> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    hf_tokenizer(&bytes, path)
}

/// A tokenizer that cannot be built from the file's metadata: the file is
/// incomplete or damaged (an input error, not a device failure).
fn tok_err(e: impl std::fmt::Display) -> Error {
    let msg = e.to_string();
    let msg = msg.trim_end_matches("\nunwrap none").trim_end();
    Error::Usage(format!(
        "tokenizer: {msg}\n  fix: the tokenizer in the file is incomplete or damaged; fetch the model again or check its sha256"
    ))
}

impl Tok {
    pub fn from_gguf(ct: &gguf_file::Content) -> Result<Tok> {
        let md = |k: &str| ct.metadata.get(k);
        let kind = md("tokenizer.ggml.model")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_default();
        let tokens: Vec<String> = md("tokenizer.ggml.tokens")
            .and_then(|v| v.to_vec().ok())
            .map(|a| {
                a.iter()
                    .filter_map(|t| t.to_string().ok().cloned())
                    .collect()
            })
            .unwrap_or_default();
        let inner = match kind.as_str() {
            "gpt2" => {
                let mut t = Tokenizer::from_gguf(ct).map_err(tok_err)?;
                fix_pre_tokenizer(
                    &mut t,
                    md("tokenizer.ggml.pre")
                        .and_then(|v| v.to_string().ok())
                        .map(String::as_str)
                        .unwrap_or("default"),
                );
                Inner::Hf(Box::new(t))
            }
            "llama" => {
                let num = |v: &gguf_file::Value| -> f64 {
                    v.to_f32()
                        .map(|x| x as f64)
                        .or_else(|_| v.to_i32().map(|x| x as f64))
                        .or_else(|_| v.to_u32().map(|x| x as f64))
                        .unwrap_or(0.0)
                };
                let list = |k: &str| -> Vec<f64> {
                    md(k)
                        .and_then(|v| v.to_vec().ok())
                        .map(|a| a.iter().map(num).collect())
                        .unwrap_or_default()
                };
                let scores: Vec<f32> = list("tokenizer.ggml.scores")
                    .into_iter()
                    .map(|x| x as f32)
                    .collect();
                let types: Vec<i32> = list("tokenizer.ggml.token_type")
                    .into_iter()
                    .map(|x| x as i32)
                    .collect();
                if scores.len() != tokens.len() {
                    return Err(Error::Usage(
                        "GGUF SentencePiece vocabulary has no scores".into(),
                    ));
                }
                let prefix = md("tokenizer.ggml.add_space_prefix")
                    .and_then(|v| v.to_bool().ok())
                    .unwrap_or(true);
                Inner::Spm(Box::new(super::spm::Spm::new(
                    tokens.clone(),
                    scores,
                    types,
                    prefix,
                )))
            }
            other => {
                return Err(Error::Usage(format!(
                    "GGUF tokenizer model {other:?} is not supported (gpt2 and llama are)"
                )))
            }
        };
        let id_of = |k: &str| md(k).and_then(|v| v.to_u32().ok());
        let named =
            |id: Option<u32>| id.and_then(|i| tokens.get(i as usize).map(|t| (i, t.clone())));
        let bos = named(id_of("tokenizer.ggml.bos_token_id"));
        let eos = named(id_of("tokenizer.ggml.eos_token_id"));
        let mut stop_ids: Vec<u32> = [
            id_of("tokenizer.ggml.eos_token_id"),
            id_of("tokenizer.ggml.eot_token_id"),
        ]
        .into_iter()
        .flatten()
        .collect();
        for t in END_OF_TURN {
            if let Some(i) = tokens.iter().position(|x| x == t) {
                stop_ids.push(i as u32);
            }
        }
        stop_ids.sort();
        stop_ids.dedup();
        let add_bos = md("tokenizer.ggml.add_bos_token")
            .and_then(|v| v.to_bool().ok())
            .unwrap_or(false);
        let pre = md("tokenizer.ggml.pre")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_default();
        let fingerprint = crate::core::hash::key_of(&[
            "gguf-tokenizer",
            &kind,
            &pre,
            &tokens.join("\u{1}"),
            &add_bos.to_string(),
        ]);
        Ok(Tok {
            inner,
            bos,
            eos,
            stop_ids,
            add_bos,
            fingerprint,
        })
    }

    pub fn from_hf_dir(
        dir: &Path,
        tok_cfg: &serde_json::Value,
        gen_cfg: &serde_json::Value,
        config: &serde_json::Value,
    ) -> Result<Tok> {
        let p = dir.join("tokenizer.json");
        let tekken = dir.join("tekken.json");
        // Mistral checkpoints (Voxtral) may ship only Tekken's tekken.json.
        let (hf, source, bytes) = if !p.exists() && tekken.exists() {
            let raw = std::fs::read(&tekken).map_err(|e| Error::io(&tekken, e))?;
            let json = super::tekken::hf_tokenizer_json(&raw).map_err(|e| {
                Error::Usage(format!(
                    "{}: {e}\n  fix: use the checkpoint's own tekken.json or a tokenizer.json",
                    tekken.display()
                ))
            })?;
            let hf = hf_tokenizer(json.as_bytes(), &tekken)?;
            (hf, "tekken.json", raw)
        } else {
            let bytes = std::fs::read(&p).map_err(|e| Error::io(&p, e))?;
            let hf = hf_tokenizer(&bytes, &p)?;
            (hf, "tokenizer.json", bytes)
        };
        let text_of = |v: &serde_json::Value| {
            v.as_str()
                .map(str::to_string)
                .or_else(|| v["content"].as_str().map(str::to_string))
        };
        let with_id = |t: Option<String>| t.and_then(|t| hf.token_to_id(&t).map(|i| (i, t)));
        // Tekken: <s> and </s> are the bos / eos tokens.
        let default = |name: &str| (source == "tekken.json").then(|| name.to_string());
        let bos = with_id(text_of(&tok_cfg["bos_token"]).or_else(|| default("<s>")));
        let eos = with_id(text_of(&tok_cfg["eos_token"]).or_else(|| default("</s>")));
        let mut stop_ids: Vec<u32> = eos.iter().map(|e| e.0).collect();
        for cfg in [gen_cfg, config] {
            match &cfg["eos_token_id"] {
                serde_json::Value::Number(n) => stop_ids.extend(n.as_u64().map(|n| n as u32)),
                serde_json::Value::Array(a) => {
                    stop_ids.extend(a.iter().filter_map(|n| n.as_u64().map(|n| n as u32)))
                }
                _ => {}
            }
        }
        stop_ids.sort();
        stop_ids.dedup();
        // transformers' apply_chat_template tokenizes with add_special_tokens=False.
        let fingerprint =
            crate::core::hash::key_of(&[source, &crate::core::hash::sha256_hex(&bytes)]);
        Ok(Tok {
            inner: Inner::Hf(Box::new(hf)),
            bos,
            eos,
            stop_ids,
            add_bos: false,
            fingerprint,
        })
    }

    pub fn bos_text(&self) -> String {
        self.bos.as_ref().map(|b| b.1.clone()).unwrap_or_default()
    }
    pub fn eos_text(&self) -> String {
        self.eos.as_ref().map(|b| b.1.clone()).unwrap_or_default()
    }

    /// Tokenize a rendered prompt (special tokens in the text are parsed),
    /// adding BOS only where the source's rule says so and never twice.
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = self.encode_plain(text)?;
        if let (true, Some((b, _))) = (self.add_bos, &self.bos) {
            if ids.first() != Some(b) {
                ids.insert(0, *b);
            }
        }
        Ok(ids)
    }

    /// Tokenize without adding BOS/EOS; special tokens in the text are parsed.
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>> {
        match &self.inner {
            Inner::Hf(t) => Ok(t.encode(text, false).map_err(tok_err)?.get_ids().to_vec()),
            Inner::Spm(t) => Ok(t.encode(text)),
        }
    }

    /// Decode, skipping special tokens.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        match &self.inner {
            Inner::Hf(t) => t.decode(ids, true).map_err(tok_err),
            Inner::Spm(t) => Ok(t.decode(ids)),
        }
    }

    /// Number of ids the tokenizer can produce (added tokens included).
    pub fn vocab_size(&self) -> usize {
        match &self.inner {
            Inner::Hf(t) => t.get_vocab_size(true),
            Inner::Spm(t) => t.vocab_size(),
        }
    }

    /// Texts that the tokenizer turns into added or control tokens when they
    /// appear in a prompt (role markers and the like), longest first. A judge
    /// neutralises them in the text under test.
    pub fn special_texts(&self) -> Vec<String> {
        let mut v: Vec<String> = match &self.inner {
            Inner::Hf(t) => t
                .get_added_tokens_decoder()
                .values()
                .map(|a| a.content.clone())
                .filter(|c| !c.is_empty())
                .collect(),
            Inner::Spm(t) => t.special_texts(),
        };
        v.sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
        v.dedup();
        v
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        match &self.inner {
            Inner::Hf(t) => t.token_to_id(token),
            Inner::Spm(t) => t.token_to_id(token),
        }
    }
}

/// Incremental detokenization: feed ids one at a time, get the new text once
/// it is complete (a trailing U+FFFD means a multi-byte character is still
/// being spelled out by byte tokens, so it is held back).
pub struct Detokenizer<'a> {
    tok: &'a Tok,
    ids: Vec<u32>,
    prev_len: usize,
    emitted: String,
}

impl<'a> Detokenizer<'a> {
    pub fn new(tok: &'a Tok) -> Self {
        Detokenizer {
            tok,
            ids: Vec::new(),
            prev_len: 0,
            emitted: String::new(),
        }
    }

    /// Add a token; returns newly completed text (possibly empty).
    pub fn push(&mut self, id: u32) -> Result<String> {
        self.ids.push(id);
        let text = self.tok.decode(&self.ids)?;
        if text.ends_with('\u{FFFD}')
            || text.len() < self.prev_len
            || !text.is_char_boundary(self.prev_len)
        {
            return Ok(String::new());
        }
        let new = text[self.prev_len..].to_string();
        self.prev_len = text.len();
        self.emitted.push_str(&new);
        Ok(new)
    }

    pub fn text(&self) -> &str {
        &self.emitted
    }
}
