//! The command line: clap flags, one file per command, and everything
//! printed. Data goes to stdout, logs and progress to stderr. The library
//! takes typed settings (`*Spec`) and returns typed results; this layer
//! converts flags into settings and results into text and exit codes.

mod args;
mod attacks;
mod audio;
mod bench;
mod bundle;
mod data;
mod doctor;
mod generate;
mod judge;
mod judge_eval;
mod log_stderr;
mod media;
mod merge;
mod models;
mod report;
mod run;
mod score;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "anjeon",
    version,
    about = "Offline AI-safety benchmarks for Korean, multimodal generative AI"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Inspect data sets.
    Data {
        #[command(subcommand)]
        cmd: data::DataCmd,
    },
    /// Generate responses with a target model, judge them, and report.
    Run(run::RunArgs),
    /// Offline bundles: the binary, models and data sets in one checked tar.
    Bundle {
        #[command(subcommand)]
        cmd: bundle::BundleCmd,
    },
    /// What this machine and build can do: CPU features, kernels, threads, devices,
    /// FFmpeg, free disk, cached models; one verdict per line (exit 3 if any fails).
    Doctor {
        #[arg(long)]
        json: bool,
    },
    /// Merge the run directories of a sharded run (`run --shard I/N`) into one.
    Merge(merge::MergeArgs),
    /// Score given responses with a judge; writes a run directory and reports.
    Score(score::ScoreArgs),
    /// Attack variants: list the strategies, or show one item's variant.
    Attacks {
        #[command(subcommand)]
        cmd: attacks::AttacksCmd,
    },
    /// Generate for one prompt; prints only the generated text on stdout.
    Generate(generate::GenerateArgs),
    /// Measure prefill and decode tokens/s and peak memory of a model.
    Bench(bench::BenchArgs),
    /// Speech: transcribe a file, or measure WER/CER on a reference set.
    Audio {
        #[command(subcommand)]
        cmd: audio::AudioCmd,
    },
    /// List or fetch the bundled models.
    Models {
        #[command(subcommand)]
        cmd: models::ModelsCmd,
    },
    /// Train a judge head on human labels (offline, deterministic for a seed).
    Judge {
        #[command(subcommand)]
        cmd: judge::JudgeCmd,
    },
    /// Measure a judge against human labels.
    JudgeEval(judge_eval::JudgeEvalArgs),
    /// Media preprocessing: see exactly what a model receives.
    Media {
        #[command(subcommand)]
        cmd: media::MediaCmd,
    },
    /// Re-render the reports of a run directory from its store; with several
    /// run directories and --out, one comparison report across them.
    Report(report::ReportArgs),
}

/// Exit codes: the contract in the README ("Exit codes").
pub mod exit {
    /// The command finished, but some items failed (listed in the report).
    pub const ITEM_FAILURES: u8 = 1;
    /// Bad flags or bad input (including a damaged run directory): fix the input.
    pub const INPUT: u8 = 2;
    /// The machine or environment failed (disk full, out of memory, a device,
    /// the network, a model that would not run): runs resume where they stopped.
    pub const ENVIRONMENT: u8 = 3;
    /// A file's bytes are not the ones recorded (a model, a bundle, a
    /// download): fetch or copy it again.
    pub const INTEGRITY: u8 = 4;
}

/// Parse the command line, run the command, and turn an error into its
/// message on stderr and its exit code.
pub fn main() -> ExitCode {
    // Error messages name the file and the fix; they never carry a library's
    // backtrace. candle captures one into its errors whenever RUST_BACKTRACE
    // is set (and prints it inside the message); RUST_LIB_BACKTRACE, which
    // std reads first, turns that off while panics keep RUST_BACKTRACE. Set
    // RUST_LIB_BACKTRACE=1 yourself to get them back.
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // Before any thread exists: nothing else reads the environment yet.
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
    }
    let cli = Cli::parse();
    anjeon::core::progress::init_color();
    // A panic the library contains (a third-party decoder on a malformed
    // file) becomes an error naming the file: do not print it as a crash.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !anjeon::core::guard::quiet() {
            default_hook(info)
        }
    }));
    log_stderr::init();
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            let code = match e.downcast_ref::<anjeon::Error>() {
                Some(err) => exit_code(err),
                None => ExitCode::from(exit::ENVIRONMENT),
            };
            // The chain of causes, each once (an I/O error's text is already
            // part of the message that wraps it).
            let mut msg = e.to_string();
            for c in e.chain().skip(1) {
                let t = c.to_string();
                if !msg.contains(&t) {
                    msg = format!("{msg}: {t}");
                }
            }
            eprintln!("{} {msg}", anjeon::core::progress::paint("error:", "31"));
            code
        }
    }
}

/// The exit code of an error, by its kind.
fn exit_code(e: &anjeon::Error) -> ExitCode {
    use anjeon::core::error::Kind;
    match e.kind() {
        Kind::Input => ExitCode::from(exit::INPUT),
        Kind::Environment => ExitCode::from(exit::ENVIRONMENT),
        Kind::Integrity => ExitCode::from(exit::INTEGRITY),
    }
}

fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.cmd {
        Cmd::Data { cmd } => data::run(cmd),
        Cmd::Run(args) => run::run(args),
        Cmd::Bundle { cmd } => bundle::run(cmd),
        Cmd::Doctor { json } => doctor::run(json),
        Cmd::Merge(args) => merge::run(args),
        Cmd::Score(args) => score::run(args),
        Cmd::Attacks { cmd } => attacks::run(cmd),
        Cmd::Generate(args) => generate::run(args),
        Cmd::Bench(args) => bench::run(args),
        Cmd::Audio { cmd } => audio::run(cmd),
        Cmd::Models { cmd } => models::run(cmd),
        Cmd::Judge { cmd } => judge::run(cmd),
        Cmd::JudgeEval(args) => judge_eval::run(args),
        Cmd::Media { cmd } => media::run(cmd),
        Cmd::Report(args) => report::run(args),
    }
}

/// After `run`, `score` or `merge`: the headline table on stdout; exit 1
/// when items failed.
fn print_headline(outcome: &anjeon::pipeline::Outcome) -> anyhow::Result<ExitCode> {
    anjeon::out!("{}", anjeon::report::headline(&outcome.report));
    Ok(if outcome.failures > 0 {
        ExitCode::from(exit::ITEM_FAILURES)
    } else {
        ExitCode::SUCCESS
    })
}
