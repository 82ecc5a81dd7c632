//! `anjeon report`: re-render a run's reports, or compare several runs.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

#[derive(clap::Args)]
pub struct ReportArgs {
    #[arg(required = true)]
    dirs: Vec<PathBuf>,
    /// Where the comparison of several runs is written.
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn run(args: ReportArgs) -> anyhow::Result<ExitCode> {
    let ReportArgs { dirs, out } = args;
    let rep = match (dirs.as_slice(), out) {
        ([dir], None) => anjeon::report::render_dir(dir)
            .with_context(|| format!("re-rendering reports in {}", dir.display()))?,
        (_, Some(out)) => anjeon::report::compare(&dirs, &out)?,
        (_, None) => anyhow::bail!(anjeon::Error::Usage(
            "several run directories need --out DIR for the comparison report".into()
        )),
    };
    anjeon::out!("{}", anjeon::report::headline(&rep));
    let unusable = rep
        .failures
        .iter()
        .filter(|f| f.stage == anjeon::runlog::UNUSABLE)
        .count();
    if unusable > 0 {
        log::info!("{unusable} planned records could not be used; they are listed under item failures in report.md");
        return Ok(ExitCode::from(super::exit::ITEM_FAILURES));
    }
    Ok(ExitCode::SUCCESS)
}
