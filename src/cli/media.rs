//! `anjeon media inspect`: exactly what a model receives from a file.

use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Subcommand)]
pub enum MediaCmd {
    /// Run a processor on one file; write the model's input tensors (HF names) as safetensors.
    Inspect(InspectArgs),
}

/// The media to inspect: exactly one of the inputs. (Further kinds, e.g.
/// `--audio`, join the `input` group.)
#[derive(clap::Args, Debug, Clone)]
#[command(group(clap::ArgGroup::new("input").required(true).multiple(false)))]
pub struct InspectArgs {
    /// The processor settings: `preprocessor_config.json` (images),
    /// `video_preprocessor_config.json` (videos), or the model folder holding them.
    #[arg(long, value_name = "CONFIG")]
    pub processor: PathBuf,
    /// An image file (png, jpeg, webp, gif, bmp).
    #[arg(long, value_name = "FILE", group = "input")]
    pub image: Option<PathBuf>,
    /// A video: mp4/webm/mkv (FFmpeg), animated GIF/APNG, or a folder of frames.
    #[arg(long, value_name = "FILE", group = "input")]
    pub video: Option<PathBuf>,
    /// An audio file (wav, flac, mp3, ogg, m4a): Whisper (`WhisperFeatureExtractor`)
    /// or Gemma 4 (`Gemma4AudioFeatureExtractor`) features, by the config.
    #[arg(long, value_name = "FILE", group = "input")]
    pub audio: Option<PathBuf>,
    /// Where the safetensors file is written.
    #[arg(long, value_name = "OUT.safetensors")]
    pub out: PathBuf,
    /// Largest image or frame in pixels accepted (header check).
    #[arg(long, default_value_t = anjeon::media::Limits::default().max_pixels)]
    pub max_pixels: u64,
}

impl InspectArgs {
    /// The settings these flags give.
    pub fn spec(self) -> anjeon::media::inspect::InspectSpec {
        anjeon::media::inspect::InspectSpec {
            processor: self.processor,
            image: self.image,
            video: self.video,
            audio: self.audio,
            out: self.out,
            max_pixels: self.max_pixels,
        }
    }
}

pub fn run(cmd: MediaCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        MediaCmd::Inspect(args) => {
            let spec = args.spec();
            let s = anjeon::media::inspect::run(&spec).map_err(anjeon::Error::from)?;
            log::info!("{} -> {}", s.line, spec.out.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}
