//! `anjeon bundle`: offline bundles of the binary, models and data sets.

use std::path::PathBuf;
use std::process::ExitCode;

use anjeon::pipeline::bundle;

#[derive(clap::Subcommand)]
pub enum BundleCmd {
    /// Write a tar of the binary, the named cached models, data sets, licences and a
    /// manifest with every file's sha256.
    Create(CreateArgs),
    /// Re-hash every file of a bundle against its manifest; names what is altered,
    /// missing or unexpected (exit 2 if anything is).
    Verify { file: PathBuf },
    /// Verify, then unpack into a folder (refused if the bundle does not verify).
    Unpack {
        file: PathBuf,
        #[arg(long)]
        to: PathBuf,
    },
}

/// What to put in a bundle.
#[derive(clap::Args, Debug, Clone)]
pub struct CreateArgs {
    /// Bundled model names (see `anjeon models list`), comma-separated; each
    /// must be in the cache.
    #[arg(long, value_delimiter = ',')]
    pub models: Vec<String>,
    /// Data set files or folders, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub datasets: Vec<PathBuf>,
    /// Leave the running binary out (e.g. to carry another build).
    #[arg(long)]
    pub no_binary: bool,
    /// The tar file to write.
    #[arg(long)]
    pub out: PathBuf,
}

impl CreateArgs {
    /// The settings these flags give.
    pub fn spec(self) -> anjeon::pipeline::bundle::CreateSpec {
        anjeon::pipeline::bundle::CreateSpec {
            models: self.models,
            datasets: self.datasets,
            no_binary: self.no_binary,
            out: self.out,
        }
    }
}

pub fn run(cmd: BundleCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        BundleCmd::Create(args) => {
            let spec = args.spec();
            let m = bundle::create(&spec)?;
            let bytes: u64 = m.files.iter().map(|f| f.bytes).sum();
            log::info!(
                "wrote {}: {} files, {:.1} MiB (models: {}; data sets: {})",
                spec.out.display(),
                m.files.len(),
                bytes as f64 / (1u64 << 20) as f64,
                m.models.join(", "),
                m.datasets.join(", ")
            );
            Ok(ExitCode::SUCCESS)
        }
        BundleCmd::Verify { file } => {
            let (_, v) = bundle::verify(&file)?;
            if v.ok() {
                anjeon::outln!(
                    "ok: {} files, {:.1} MiB, every sha256 as in the manifest",
                    v.files,
                    v.bytes as f64 / (1u64 << 20) as f64
                );
                Ok(ExitCode::SUCCESS)
            } else {
                anjeon::outln!("{}: {}", file.display(), bundle::describe(&v));
                Ok(ExitCode::from(super::exit::INPUT))
            }
        }
        BundleCmd::Unpack { file, to } => {
            let home = bundle::unpack(&file, &to)?;
            anjeon::outln!(
                "verified and unpacked; run with ANJEON_HOME={}",
                home.display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
