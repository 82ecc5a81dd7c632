//! `anjeon data`: what a data set holds, and every problem in it.

use std::collections::BTreeMap;
use std::process::ExitCode;

use anjeon::dataset;
use anjeon::model::hub;

use super::args::ReadArgs;

#[derive(clap::Subcommand)]
pub enum DataCmd {
    /// Counts by benchmark, modality, risk factor, language, expected behaviour.
    Stats {
        /// FORMAT:PATH or PATH (format detected).
        dataset: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        read: ReadArgs,
    },
    /// Download a data set repository from a Hugging Face Hub (HF_ENDPOINT;
    /// gated sets such as K-intelligence/KSAFE-MM need HF_TOKEN) into the
    /// Hugging Face cache; prints the local folder to pass as --dataset.
    Fetch {
        /// ORG/NAME[@REV], e.g. TTA01/AssurAI.
        repo: String,
        /// Only the files matching this glob (repeatable; e.g. 'data/*.parquet').
        #[arg(long, value_name = "GLOB")]
        include: Vec<String>,
    },
    /// List every problem of a data set, with file and line.
    Validate {
        dataset: String,
        #[command(flatten)]
        read: ReadArgs,
    },
}

pub fn run(cmd: DataCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        DataCmd::Stats {
            dataset: spec,
            json,
            read,
        } => {
            let ds = dataset::load(&spec, &read.spec().options()?)?;
            let st = dataset::stats(&ds);
            for p in &ds.problems {
                log::warn!("{}: {}", p.location, p.message);
            }
            if json {
                anjeon::outln!("{}", serde_json::to_string_pretty(&st)?);
            } else {
                anjeon::outln!(
                    "data set {spec}: {} items (sha256 {})",
                    st.total,
                    anjeon::runlog::manifest::short(&ds.hash)
                );
                print_map("by benchmark", &st.by_benchmark)?;
                print_map("by modality", &st.by_modality)?;
                print_map("by expected behaviour", &st.by_expected)?;
                print_map("by language", &st.by_language)?;
                print_map("by group", &st.by_group)?;
                print_map("by risk factor", &st.by_risk_factor)?;
                print_map("by prompt type", &st.by_prompt_type)?;
                print_map("by attack", &st.by_attack)?;
                anjeon::outln!(
                    "reference answers: {} on {} items",
                    st.reference_answers,
                    st.with_reference_answers
                );
                if st.problems > 0 {
                    anjeon::outln!(
                        "items that could not be read: {} (see `anjeon data validate`)",
                        st.problems
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        DataCmd::Fetch { repo, include } => {
            let req = hub::HubRequest::parse(&repo, hub::RepoKind::Dataset, include)?;
            let f = hub::fetch(&req)?;
            print_fetched(&f)?;
            log::info!(
                "read it offline with --dataset {} (add FORMAT: for a public format, e.g. assurai:)",
                f.snapshot.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        DataCmd::Validate {
            dataset: spec,
            read,
        } => {
            let opts = read.spec().options()?;
            let ds = dataset::load(&spec, &opts)?;
            let problems = dataset::validate(&ds, &opts.limits);
            for p in &problems {
                anjeon::outln!("{}: {}", p.location, p.message);
            }
            if problems.is_empty() {
                log::info!("{spec}: {} items, no problems", ds.samples.len());
                Ok(ExitCode::SUCCESS)
            } else {
                log::info!(
                    "{spec}: {} items read, {} problems",
                    ds.samples.len(),
                    problems.len()
                );
                Ok(ExitCode::from(super::exit::INPUT))
            }
        }
    }
}

fn print_map(title: &str, m: &BTreeMap<String, usize>) -> anjeon::Result<()> {
    anjeon::outln!("{title}:");
    for (k, v) in m {
        anjeon::outln!("  {k:<50} {v:>7}");
    }
    Ok(())
}

/// The files a Hub fetch left in the cache (stdout), then the folder.
pub fn print_fetched(f: &hub::Fetched) -> anjeon::Result<()> {
    for (name, size, hash) in &f.files {
        anjeon::outln!("{hash}  {size:>12}  {name}");
    }
    anjeon::outln!("{}", f.snapshot.display());
    Ok(())
}
