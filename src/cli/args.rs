//! Flag groups shared by several commands, and parsers for the library's
//! enums.

use std::path::PathBuf;

use anjeon::core::limits::Limits;
use anjeon::judge::labels::Split;
use anjeon::model::Requantize;

/// Flags for reading a data set (shared by every command).
#[derive(clap::Args, Debug, Clone)]
pub struct ReadArgs {
    /// Language column for multi-language sets (MultiJail: ko, en, zh, ...).
    #[arg(long)]
    pub lang: Option<String>,
    /// Map a logical field to a column: --field prompt=question (repeatable;
    /// overrides the config file).
    #[arg(long = "field", value_name = "LOGICAL=COLUMN")]
    pub fields: Vec<String>,
    /// TOML config with `lang = "ko"` and a `[fields]` table (logical = "column").
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub limits: LimitArgs,
}

/// The resource limits (defaults in `anjeon::core::limits`, recorded in the
/// manifest); an item over a limit fails, naming its flag.
#[derive(clap::Args, Debug, Clone)]
pub struct LimitArgs {
    /// Most MiB one parquet column chunk may decompress to (a zstd bomb of
    /// 67 KB can expand to gigabytes); refused before reading.
    #[arg(long, value_name = "MIB", default_value_t = Limits::default().max_decompressed_mb)]
    pub max_decompressed_mb: u64,
    /// Largest image or video frame, in pixels (checked from the header
    /// before decoding).
    #[arg(long, value_name = "PIXELS", default_value_t = Limits::default().max_pixels)]
    pub max_pixels: u64,
    /// Most frames kept from one video.
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_frames)]
    pub max_frames: usize,
    /// Most MiB of decoded frames kept from one video.
    #[arg(long, value_name = "MIB", default_value_t = Limits::default().max_video_bytes >> 20)]
    pub max_video_mb: u64,
    /// Longest audio input, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = Limits::default().max_audio_seconds)]
    pub max_audio_seconds: f64,
    /// Largest context a model may declare, in tokens (rotary tables and
    /// caches are sized from it).
    #[arg(long, value_name = "TOKENS", default_value_t = Limits::default().max_context)]
    pub max_context: u64,
    /// Largest JSONL line or CSV row of a data set or responses file, in
    /// MiB; a longer one is that line's error.
    #[arg(long, value_name = "MIB", default_value_t = Limits::default().max_record_mb)]
    pub max_record_mb: u64,
}

impl LimitArgs {
    /// The limits these flags give.
    pub fn spec(&self) -> Limits {
        Limits {
            max_decompressed_mb: self.max_decompressed_mb,
            max_pixels: self.max_pixels,
            max_frames: self.max_frames,
            max_video_bytes: self.max_video_mb << 20,
            max_audio_seconds: self.max_audio_seconds,
            max_context: self.max_context,
            max_record_mb: self.max_record_mb,
            ..Limits::default()
        }
    }
}

impl ReadArgs {
    /// The settings these flags give.
    pub fn spec(self) -> anjeon::dataset::ReadSpec {
        anjeon::dataset::ReadSpec {
            lang: self.lang,
            fields: self.fields,
            config: self.config,
            limits: self.limits.spec(),
        }
    }
}

/// How to judge: shared by `run`, `score` and `judge-eval`.
#[derive(clap::Args, Debug, Clone)]
pub struct JudgeArgs {
    /// `default` (= `ensemble`: the bundled classifier heads over
    /// EmbeddingGemma with the refusal detector), `head[:NAME|PATH|TASK=PATH+…]`
    /// (heads alone), `refusal` (the model-free refusal detector only), or any
    /// model the engine loads as a model judge: a bundled model name (e.g.
    /// qwen2.5-coder-1.5b-instruct), a .gguf file, a Hugging Face folder, a
    /// card, a hub id in the local cache. The refusal detector always runs
    /// beside the judge.
    #[arg(long, default_value = "default")]
    pub judge: String,
    /// Device of the judge model (default: --device of the run, else cpu).
    #[arg(long)]
    pub judge_device: Option<String>,
    /// Longest response the judge reads, in tokens; longer ones are cut (recorded).
    #[arg(long, default_value_t = anjeon::judge::model::DEFAULT_MAX_RESPONSE_TOKENS)]
    pub judge_max_tokens: usize,
    /// Download the bundled judge model (or the heads' embedder) if it is not cached.
    #[arg(long)]
    pub judge_fetch: bool,
    /// How the judge model is prompted: `rubric` (data/judge/*.toml) or a
    /// guard-model format (llama-guard-3, llama-guard-3-1b, llama-guard-4,
    /// kanana-safeguard, qwen3guard, shieldgemma). Default: a guard format when
    /// the model's name says it is one, else rubric.
    #[arg(long)]
    pub judge_format: Option<String>,
    /// A folder of rubric files (risk.toml, harm.toml, refusal.toml) replacing
    /// the bundled data/judge/ ones where present (their hashes are recorded).
    #[arg(long, value_name = "DIR")]
    pub judge_rubrics: Option<PathBuf>,
    /// Let the judge write its reasons first and read the LAST "점수: N" /
    /// "Answer: Yes" it gives (slower; no verdict = unscored, never safe).
    #[arg(long)]
    pub judge_rationale: bool,
    /// A model judge's scoring passes computed together: up to N responses
    /// continue the cached rubric prompt in one packed pass (linear layers
    /// over all their tokens at once). Verdicts do not depend on N (tested);
    /// only speed does. Rubric mode of GGUF Llama/Qwen2/Gemma 3 judges; guard formats,
    /// rationale mode and other models judge one at a time.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub judge_batch: u64,
}

impl JudgeArgs {
    /// The settings these flags give.
    pub fn spec(self) -> anjeon::judge::JudgeSpec {
        anjeon::judge::JudgeSpec {
            judge: self.judge,
            judge_device: self.judge_device,
            judge_max_tokens: self.judge_max_tokens,
            judge_fetch: self.judge_fetch,
            judge_format: self.judge_format,
            judge_rubrics: self.judge_rubrics,
            judge_rationale: self.judge_rationale,
            judge_batch: self.judge_batch as usize,
        }
    }
}

/// `--requantize auto|off` (listed in `--help` with what each does).
pub fn requantize() -> impl clap::builder::TypedValueParser<Value = Requantize> {
    use clap::builder::{PossibleValue, TypedValueParser};
    clap::builder::PossibleValuesParser::new(
        Requantize::NAMES.map(|(name, help)| PossibleValue::new(name).help(help)),
    )
    .map(|s| s.parse::<Requantize>().expect("a listed value parses"))
}

/// `--split all|dev|test`.
pub fn split() -> impl clap::builder::TypedValueParser<Value = Split> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(Split::NAMES)
        .map(|s| s.parse::<Split>().expect("a listed value parses"))
}

/// Load a model for `generate` and `bench`: resolve the argument (offline),
/// open the device, load with the file's formats or re-quantized.
pub fn load_model(
    spec: &str,
    device: &str,
    requantize: Requantize,
) -> anjeon::Result<anjeon::model::TextModel> {
    let r = anjeon::model::resolve(spec)?;
    let dev = anjeon::model::device(device)?;
    anjeon::model::TextModel::load(
        &r,
        &dev,
        &anjeon::model::LoadOptions {
            requantize,
            ..Default::default()
        },
    )
}
