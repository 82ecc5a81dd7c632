//! `anjeon media inspect`: run a processor on one file and write exactly the
//! tensors the model would receive, with transformers' names, to a
//! safetensors file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use super::{gemma4, qwen3vl, Limits, MediaError, VideoSource};

/// The media to inspect: exactly one of the inputs. (Further kinds, e.g.
/// `--audio`, join the `input` group.)
#[derive(Debug, Clone)]
pub struct InspectSpec {
    /// The processor settings: `preprocessor_config.json` (images),
    /// `video_preprocessor_config.json` (videos), or the model folder holding them.
    pub processor: PathBuf,
    /// An image file (png, jpeg, webp, gif, bmp).
    pub image: Option<PathBuf>,
    /// A video: mp4/webm/mkv (FFmpeg), animated GIF/APNG, or a folder of frames.
    pub video: Option<PathBuf>,
    /// An audio file (wav, flac, mp3, ogg, m4a): Whisper (`WhisperFeatureExtractor`)
    /// or Gemma 4 (`Gemma4AudioFeatureExtractor`) features, by the config.
    pub audio: Option<PathBuf>,
    /// Where the safetensors file is written.
    pub out: PathBuf,
    /// Largest image or frame in pixels accepted (header check).
    pub max_pixels: u64,
}

/// What was written.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Tensor name and shape, in write order.
    pub tensors: Vec<(String, Vec<usize>)>,
    pub line: String,
}

fn config_file(p: &Path, names: &[&str]) -> PathBuf {
    if p.is_dir() {
        for n in names {
            let c = p.join(n);
            if c.exists() {
                return c;
            }
        }
        p.join(names[0])
    } else {
        p.to_path_buf()
    }
}

fn tensor_err(path: &Path, e: candle_core::Error) -> MediaError {
    MediaError::io(path, std::io::Error::other(e.to_string()))
}

/// Run the processor and write the safetensors file.
pub fn run(args: &InspectSpec) -> Result<Summary, MediaError> {
    let limits = Limits {
        max_pixels: args.max_pixels,
        ..Limits::default()
    };
    let dev = Device::Cpu;
    let mut tensors: Vec<(String, Tensor)> = vec![];
    let out = &args.out;
    let te = |e| tensor_err(out, e);
    let line;
    if let Some(img_path) = &args.image {
        let cfg = config_file(
            &args.processor,
            &["preprocessor_config.json", "processor_config.json"],
        );
        let text = std::fs::read_to_string(&cfg).map_err(|e| MediaError::io(&cfg, e))?;
        let img = super::load_image(img_path, &limits)?;
        let name = img_path.display().to_string();
        if text.contains("Gemma4") {
            let p = gemma4::ImageProcessor::from_json_file(&cfg)?;
            let g = p.preprocess(&img)?;
            tensors.push((
                "pixel_values".into(),
                Tensor::from_vec(g.pixel_values, (1, g.rows, g.cols), &dev).map_err(te)?,
            ));
            tensors.push((
                "image_position_ids".into(),
                Tensor::from_vec(g.position_ids, (1, g.rows, 2), &dev).map_err(te)?,
            ));
            tensors.push((
                "num_soft_tokens_per_image".into(),
                Tensor::from_vec(vec![g.num_soft_tokens as i64], 1, &dev).map_err(te)?,
            ));
            line = format!(
                "{name}: {}x{} -> {}x{} (gemma4), {} patches, {} soft tokens",
                img.width(),
                img.height(),
                g.resized.1,
                g.resized.0,
                g.num_patches,
                g.num_soft_tokens
            );
        } else {
            let p = qwen3vl::ImageProcessor::from_json_file(&cfg)?;
            let v = p.preprocess_named(&img, &name)?;
            let tokens = v.num_tokens(p.common.merge_size);
            line = format!(
                "{name}: {}x{} -> {}x{}, image_grid_thw {:?}, pixel_values [{}, {}], {tokens} image tokens",
                img.width(),
                img.height(),
                v.resized.1,
                v.resized.0,
                v.grid_thw,
                v.rows,
                v.cols
            );
            tensors.push((
                "pixel_values".into(),
                Tensor::from_vec(v.pixel_values, (v.rows, v.cols), &dev).map_err(te)?,
            ));
            let g: Vec<i64> = v.grid_thw.iter().map(|&x| x as i64).collect();
            tensors.push((
                "image_grid_thw".into(),
                Tensor::from_vec(g, (1, 3), &dev).map_err(te)?,
            ));
        }
    } else if let Some(vid_path) = &args.video {
        let cfg = config_file(
            &args.processor,
            &["video_preprocessor_config.json", "preprocessor_config.json"],
        );
        let p = qwen3vl::VideoProcessor::from_json_file(&cfg)?;
        let name = vid_path.display().to_string();
        let video =
            super::decode_video_sampled(VideoSource::Path(vid_path), &name, &limits, &|n, fps| {
                p.sample_indices(n, fps)
            })?;
        let v = p.preprocess(&video)?;
        let merge = p.common.merge_size;
        line = format!(
            "{name}: {} frames at {:.3} fps, sampled {:?}, {}x{} -> {}x{}, video_grid_thw {:?}, pixel_values_videos [{}, {}], {} tokens, timestamps {}",
            video.total_frames,
            video.fps,
            v.frame_indices,
            video.frames.first().map_or(0, |f| f.width()),
            video.frames.first().map_or(0, |f| f.height()),
            v.patches.resized.1,
            v.patches.resized.0,
            v.patches.grid_thw,
            v.patches.rows,
            v.patches.cols,
            v.patches.num_tokens(merge),
            v.timestamp_strings().join("")
        );
        let idx: Vec<i64> = v.frame_indices.iter().map(|&i| i as i64).collect();
        let n = idx.len();
        let g: Vec<i64> = v.patches.grid_thw.iter().map(|&x| x as i64).collect();
        let ts: Vec<f64> = v.timestamps.clone();
        let nts = ts.len();
        tensors.push((
            "pixel_values_videos".into(),
            Tensor::from_vec(
                v.patches.pixel_values,
                (v.patches.rows, v.patches.cols),
                &dev,
            )
            .map_err(te)?,
        ));
        tensors.push((
            "video_grid_thw".into(),
            Tensor::from_vec(g, (1, 3), &dev).map_err(te)?,
        ));
        tensors.push((
            "frame_indices".into(),
            Tensor::from_vec(idx, n, &dev).map_err(te)?,
        ));
        tensors.push((
            "timestamps".into(),
            Tensor::from_vec(ts, nts, &dev).map_err(te)?,
        ));
    } else if let Some(a_path) = &args.audio {
        let cfg = config_file(
            &args.processor,
            &["preprocessor_config.json", "processor_config.json"],
        );
        let text = std::fs::read_to_string(&cfg).map_err(|e| MediaError::io(&cfg, e))?;
        let name = a_path.display().to_string();
        let audio = crate::audio::decode_file(a_path, &Default::default()).map_err(|e| {
            MediaError::Decode {
                name: name.clone(),
                reason: e.to_string(),
                fix: "use a wav, flac, mp3, ogg or m4a file".into(),
            }
        })?;
        if text.contains("Gemma4AudioFeatureExtractor") {
            let f = crate::audio::Gemma4Features::new().extract(&audio.samples);
            let mask: Vec<u8> = f.mask.iter().map(|&v| v as u8).collect();
            line = format!(
                "{name}: {:.2} s -> gemma4 input_features [1, {}, {}], {} valid frames",
                audio.samples.len() as f64 / 16000.0,
                f.frames,
                f.n_mels,
                f.mask.iter().filter(|&&v| v).count()
            );
            tensors.push((
                "input_features".into(),
                Tensor::from_vec(f.values, (1, f.frames, f.n_mels), &dev).map_err(te)?,
            ));
            tensors.push((
                "input_features_mask".into(),
                Tensor::from_vec(mask, (1, f.frames), &dev).map_err(te)?,
            ));
        } else {
            let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            let v = if v.get("feature_extractor").is_some() {
                &v["feature_extractor"]
            } else {
                &v
            };
            let n_mels = v["feature_size"].as_u64().unwrap_or(80) as usize;
            // The processor's default truncation: the first 30 s.
            let f = crate::audio::WhisperFeatures::new(n_mels).chunk(&audio.samples);
            let frames = f.len() / n_mels;
            line = format!(
                "{name}: {:.2} s -> whisper input_features [1, {n_mels}, {frames}]",
                audio.samples.len() as f64 / 16000.0
            );
            tensors.push((
                "input_features".into(),
                Tensor::from_vec(f, (1, n_mels, frames), &dev).map_err(te)?,
            ));
        }
    } else {
        return Err(MediaError::Config {
            path: args.processor.clone(),
            msg: "no input".into(),
            fix: "pass --image FILE, --video FILE or --audio FILE".into(),
        });
    }
    let shapes = tensors
        .iter()
        .map(|(n, t)| (n.clone(), t.dims().to_vec()))
        .collect();
    let map: HashMap<String, Tensor> = tensors.into_iter().collect();
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| MediaError::io(dir, e))?;
    }
    candle_core::safetensors::save(&map, out).map_err(te)?;
    Ok(Summary {
        tensors: shapes,
        line,
    })
}
