//! `anjeon score`: judge responses that already exist, and report.

use std::path::PathBuf;
use std::process::ExitCode;

use super::args::{JudgeArgs, ReadArgs};

#[derive(clap::Args, Debug, Clone)]
pub struct ScoreArgs {
    /// Data set: FORMAT:PATH or PATH (default: the bundled sample).
    #[arg(long, default_value = "data/sample")]
    pub dataset: String,
    /// JSONL of {"id", "response"[, "model"]}, or `reference` to score the
    /// data set's own human-labelled reference answers.
    #[arg(long, required_unless_present = "from", conflicts_with = "from")]
    pub responses: Option<String>,
    /// Re-score the responses of an existing run directory (no generation):
    /// judgments already made with the same judge and rubric are reused, a new
    /// judge or rubric judges every response again. Reports are rewritten.
    #[arg(long)]
    pub from: Option<PathBuf>,
    /// Model name for responses that do not name one.
    #[arg(long, default_value = "responses")]
    pub model: String,
    #[command(flatten)]
    pub judge: JudgeArgs,
    /// Run directory (default with --from: that directory).
    #[arg(long, required_unless_present = "from")]
    pub out: Option<PathBuf>,
    /// Seed for bootstrap intervals.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub read: ReadArgs,
    /// Stop after N responses (for a quick look).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Score one shard, INDEX/COUNT (as `run --shard`; merge with `anjeon merge`).
    #[arg(long, value_name = "I/N", conflicts_with = "from")]
    pub shard: Option<String>,
    /// The shard count of a Kubernetes Indexed Job (its completions).
    #[arg(long, value_name = "N", conflicts_with = "from")]
    pub shards: Option<u64>,
}

impl ScoreArgs {
    /// The settings these flags give.
    pub fn spec(self) -> anjeon::pipeline::score::ScoreSpec {
        anjeon::pipeline::score::ScoreSpec {
            dataset: self.dataset,
            responses: self.responses,
            from: self.from,
            model: self.model,
            judge: self.judge.spec(),
            out: self.out,
            seed: self.seed,
            read: self.read.spec(),
            limit: self.limit,
            shard: self.shard,
            shards: self.shards,
        }
    }
}

pub fn run(args: ScoreArgs) -> anyhow::Result<ExitCode> {
    let outcome = anjeon::pipeline::score::score(&args.spec())?;
    super::print_headline(&outcome)
}
