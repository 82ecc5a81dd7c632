//! `anjeon merge`: one run directory from the shards of a sharded run.

use std::path::PathBuf;
use std::process::ExitCode;

/// `anjeon merge SHARD_DIR… --out DIR`.
#[derive(clap::Args, Debug, Clone)]
pub struct MergeArgs {
    /// The shards' --out directories (one per shard of one sharded run).
    #[arg(required = true)]
    pub dirs: Vec<PathBuf>,
    /// The merged run directory (new).
    #[arg(long)]
    pub out: PathBuf,
    /// Render the report even if shards are missing; the report lists them.
    #[arg(long)]
    pub allow_partial: bool,
}

impl MergeArgs {
    /// The settings these flags give.
    pub fn spec(self) -> anjeon::pipeline::merge::MergeSpec {
        anjeon::pipeline::merge::MergeSpec {
            dirs: self.dirs,
            out: self.out,
            allow_partial: self.allow_partial,
        }
    }
}

pub fn run(args: MergeArgs) -> anyhow::Result<ExitCode> {
    let outcome = anjeon::pipeline::merge::merge(&args.spec())?;
    super::print_headline(&outcome)
}
