//! `anjeon attacks`: the attack strategies, and one item's variant.

use std::process::ExitCode;

use anjeon::attack;
use anjeon::Error;

use super::args::ReadArgs;

#[derive(clap::Subcommand)]
pub enum AttacksCmd {
    /// Each strategy's name, template version, modality and source.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Print one item's variant text; --image-out FILE writes an image variant's PNG.
    Show(ShowArgs),
}

pub fn run(cmd: AttacksCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        AttacksCmd::List { json } => anjeon::out!("{}", attack::list(json)?),
        AttacksCmd::Show(args) => show(&args)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// `anjeon attacks show`.
#[derive(clap::Args, Debug, Clone)]
pub struct ShowArgs {
    /// The strategy (see `anjeon attacks list`).
    pub strategy: String,
    /// Data set: FORMAT:PATH or PATH.
    #[arg(long, default_value = "data/sample")]
    pub dataset: String,
    /// The item's id.
    #[arg(long)]
    pub id: String,
    /// Seed (as `anjeon run --seed`): picks the form and the cut points.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write an image variant's PNG to FILE.
    #[arg(long, value_name = "FILE")]
    pub image_out: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub read: ReadArgs,
}

/// Print one item's variant text to stdout (details to stderr); write the
/// image with `--image-out`.
fn show(args: &ShowArgs) -> anjeon::Result<()> {
    let t = attack::select(&args.strategy)?;
    let [t] = &t[..] else {
        return Err(Error::Usage(
            "attacks show takes one strategy\n  fix: name one strategy (see `anjeon attacks list`)"
                .into(),
        ));
    };
    let ds = anjeon::dataset::load(&args.dataset, &args.read.clone().spec().options()?)?;
    let Some(s) = ds.samples.iter().find(|s| s.id == args.id) else {
        return Err(Error::Usage(format!(
            "no item {:?} in {}\n  fix: use an id of the data set (see items.csv of a run, or samples.jsonl)",
            args.id, args.dataset
        )));
    };
    let v = match t.apply(s, args.seed) {
        Some(r) => r?,
        None => {
            return Err(Error::Usage(format!(
                "strategy {} does not apply to item {}: it needs a plain item with user text{}",
                t.name,
                s.id,
                if t.modality == attack::Modality::Image {
                    " and no media of its own"
                } else {
                    ""
                }
            )))
        }
    };
    let form = v
        .metadata
        .get("attack_form")
        .and_then(|x| x.as_str())
        .unwrap_or("");
    eprintln!(
        "{}: strategy {} v{} form {} ({}), seed {}",
        v.id, t.name, t.version, form, t.file, args.seed
    );
    if let Some(it) = v.metadata.get("attack_image_text").and_then(|x| x.as_str()) {
        eprintln!("image text:\n{it}");
    }
    anjeon::outln!("{}", v.prompt_text());
    if let Some(m) = v.media().next() {
        let data = m.load()?;
        match &args.image_out {
            Some(p) => {
                std::fs::write(p, &data).map_err(|e| Error::io(p, e))?;
                eprintln!("wrote {} ({} bytes)", p.display(), data.len());
            }
            None if t.modality == attack::Modality::Image => {
                eprintln!("note: an image variant; write the image with --image-out FILE")
            }
            None => {}
        }
    }
    Ok(())
}
