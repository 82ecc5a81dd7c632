//! `anjeon audio`: transcribe a file, or measure WER/CER on a reference set.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(clap::Subcommand)]
pub enum AudioCmd {
    /// Transcribe an audio file (wav, flac, mp3, ogg, m4a); prints the text on stdout.
    Transcribe {
        file: PathBuf,
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
        refs: PathBuf,
        /// Folder of ID.wav files (default: `audio/` beside --refs).
        #[arg(long)]
        audio_dir: Option<PathBuf>,
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

pub fn run(cmd: AudioCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        AudioCmd::Transcribe {
            file,
            model,
            language,
            device,
            max_audio_seconds,
            json,
        } => {
            let opts = anjeon::audio::DecodeOptions {
                max_seconds: max_audio_seconds,
                ..Default::default()
            };
            let audio = anjeon::audio::decode_file(&file, &opts)?;
            let dev = anjeon::model::device(&device)?;
            let mut asr = anjeon::model::whisper::Asr::open(&model, &dev)?;
            let t = asr.transcribe(&audio.samples, language.as_deref())?;
            log::info!(
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
        }
        AudioCmd::Eval {
            refs,
            audio_dir,
            model,
            detect_language,
            device,
            json,
        } => {
            let dir =
                audio_dir.unwrap_or_else(|| refs.parent().unwrap_or(Path::new(".")).join("audio"));
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
        }
    }
    Ok(ExitCode::SUCCESS)
}
