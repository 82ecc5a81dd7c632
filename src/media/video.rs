//! Video decoding to RGB frames.
//!
//! * mp4/webm/mkv/... through the system FFmpeg (`ffmpeg-next`, feature
//!   `video-ffmpeg`, on by default); frames are converted to RGB24 with
//!   swscale's default bicubic flags, as `ffmpeg -pix_fmt rgb24` does;
//! * animated GIF and APNG with the `image` crate (always available);
//! * a folder of frames: image files sorted by name; the frame rate is read
//!   from `fps.txt` in the folder, else 24 (transformers' default when a
//!   video has no metadata).

use std::collections::BTreeSet;
use std::io::Cursor;
use std::path::Path;

use image::{AnimationDecoder, RgbImage};

use super::{to_rgb_like_pil, Limits, MediaError};

/// Decoded frames with the metadata frame sampling needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Video {
    /// RGB frames, in source order.
    pub frames: Vec<RgbImage>,
    /// Source frame index of each entry of `frames` (all of 0..total_frames
    /// when everything was decoded).
    pub frame_indices: Vec<usize>,
    /// Average frame rate of the source.
    pub fps: f64,
    /// Frames in the source.
    pub total_frames: usize,
    /// Name used in errors.
    pub name: String,
}

impl Video {
    /// Build a video from frames already in memory (all frames of the source).
    pub fn from_frames(frames: Vec<RgbImage>, fps: f64, name: &str) -> Video {
        let n = frames.len();
        Video {
            frames,
            frame_indices: (0..n).collect(),
            fps,
            total_frames: n,
            name: name.to_string(),
        }
    }
    /// Duration in seconds (`total_frames / fps`).
    pub fn duration_s(&self) -> f64 {
        if self.fps > 0.0 {
            self.total_frames as f64 / self.fps
        } else {
            0.0
        }
    }
}

/// Where a video's bytes are.
#[derive(Debug, Clone, Copy)]
pub enum VideoSource<'a> {
    /// A file, or a folder of frames.
    Path(&'a Path),
    /// The file's bytes (mp4/webm/... are written to a temporary file for FFmpeg).
    Bytes(&'a [u8]),
}

/// Decode every frame.
pub fn decode_video(
    src: VideoSource<'_>,
    name: &str,
    limits: &Limits,
) -> Result<Video, MediaError> {
    decode_video_sampled(src, name, limits, &|total, _| (0..total).collect())
}

/// Decode, keeping (converting to RGB) only the frames `sample(total_frames,
/// fps)` picks, e.g. `|n, fps| processor.sample_indices(n, fps)`. FFmpeg
/// still decodes every frame (inter-frame codecs need them), but only the
/// kept ones are converted and stored.
pub fn decode_video_sampled(
    src: VideoSource<'_>,
    name: &str,
    limits: &Limits,
    sample: &dyn Fn(usize, f64) -> Vec<usize>,
) -> Result<Video, MediaError> {
    match src {
        VideoSource::Path(p) if p.is_dir() => decode_folder(p, name, limits, sample),
        VideoSource::Path(p) => {
            let mut head = [0u8; 64];
            let n = {
                use std::io::Read;
                let mut f = std::fs::File::open(p).map_err(|e| MediaError::io(p, e))?;
                f.read(&mut head).map_err(|e| MediaError::io(p, e))?
            };
            if is_gif(&head[..n]) || is_png(&head[..n]) {
                let bytes = std::fs::read(p).map_err(|e| MediaError::io(p, e))?;
                decode_animation(&bytes, name, limits, sample)
            } else {
                decode_ffmpeg_path(p, name, limits, sample)
            }
        }
        VideoSource::Bytes(b) => {
            if is_gif(b) || is_png(b) {
                decode_animation(b, name, limits, sample)
            } else {
                if b.is_empty() {
                    return Err(MediaError::Decode {
                        name: name.to_string(),
                        reason: "the file is empty (0 bytes)".into(),
                        fix: "replace the file with a real video".into(),
                    });
                }
                let dir = tempfile_dir();
                let path = dir.join(format!(
                    "anjeon-video-{}-{}",
                    std::process::id(),
                    COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                ));
                std::fs::write(&path, b).map_err(|e| MediaError::io(&path, e))?;
                let r = decode_ffmpeg_path(&path, name, limits, sample);
                let _ = std::fs::remove_file(&path);
                r
            }
        }
    }
}

static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn tempfile_dir() -> std::path::PathBuf {
    std::env::temp_dir()
}

fn is_gif(b: &[u8]) -> bool {
    b.starts_with(b"GIF87a") || b.starts_with(b"GIF89a")
}
fn is_png(b: &[u8]) -> bool {
    b.starts_with(&[0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a])
}

/// Keeps frames within the limits.
struct Keeper<'a> {
    name: &'a str,
    limits: &'a Limits,
    bytes: u64,
    frames: Vec<RgbImage>,
    indices: Vec<usize>,
}

impl<'a> Keeper<'a> {
    fn new(name: &'a str, limits: &'a Limits) -> Self {
        Keeper {
            name,
            limits,
            bytes: 0,
            frames: vec![],
            indices: vec![],
        }
    }
    fn push(&mut self, index: usize, f: RgbImage) -> Result<(), MediaError> {
        if self.frames.len() >= self.limits.max_frames {
            return Err(MediaError::Limit {
                name: self.name.to_string(),
                reason: format!("more than {} frames to keep", self.limits.max_frames),
                which: "max_frames",
            });
        }
        self.bytes += f.as_raw().len() as u64;
        if self.bytes > self.limits.max_video_bytes {
            return Err(MediaError::Limit {
                name: self.name.to_string(),
                reason: format!(
                    "decoded frames exceed {} bytes",
                    self.limits.max_video_bytes
                ),
                which: "max_video_bytes",
            });
        }
        self.frames.push(f);
        self.indices.push(index);
        Ok(())
    }
    fn finish(self, fps: f64, total: usize) -> Video {
        Video {
            frames: self.frames,
            frame_indices: self.indices,
            fps,
            total_frames: total,
            name: self.name.to_string(),
        }
    }
}

fn decode_animation(
    bytes: &[u8],
    name: &str,
    limits: &Limits,
    sample: &dyn Fn(usize, f64) -> Vec<usize>,
) -> Result<Video, MediaError> {
    let bad = |e: image::ImageError| MediaError::Decode {
        name: name.to_string(),
        reason: e.to_string(),
        fix: "the file is truncated or corrupt; re-export it".into(),
    };
    let mut il = image::Limits::default();
    il.max_alloc = Some(limits.max_alloc);
    // Two passes over the animation, one frame in memory at a time: the
    // first counts the frames and their delays (the sampler needs both),
    // the second keeps only the sampled ones. Limits count what is kept
    // (a 10,000-frame GIF used to be held whole before sampling).
    let frames = || -> Result<image::Frames<'_>, MediaError> {
        if is_gif(bytes) {
            let mut d = image::codecs::gif::GifDecoder::new(Cursor::new(bytes)).map_err(bad)?;
            let (w, h) = image::ImageDecoder::dimensions(&d);
            limits.check_size(name, w, h)?;
            image::ImageDecoder::set_limits(&mut d, il.clone()).map_err(bad)?;
            Ok(d.into_frames())
        } else {
            let mut d = image::codecs::png::PngDecoder::new(Cursor::new(bytes)).map_err(bad)?;
            let (w, h) = image::ImageDecoder::dimensions(&d);
            limits.check_size(name, w, h)?;
            image::ImageDecoder::set_limits(&mut d, il.clone()).map_err(bad)?;
            if !d.is_apng().map_err(bad)? {
                return Err(MediaError::Unsupported {
                    name: name.to_string(),
                    reason: "a still PNG is not a video".into(),
                    fix: "pass it as an image, or use an animated PNG/GIF, an mp4 or a folder of frames"
                        .into(),
                });
            }
            Ok(d.apng().map_err(bad)?.into_frames())
        }
    };
    let frame_err = |e: image::ImageError| MediaError::Decode {
        name: name.to_string(),
        reason: e.to_string(),
        fix: "the file is truncated or corrupt; re-export it".into(),
    };
    // Decoding time is bounded too: at most 8x the frames that may be kept.
    let most = limits.max_frames.max(1) * 8;
    let (mut total, mut total_ms) = (0usize, 0f64);
    for f in frames()? {
        let f = f.map_err(frame_err)?;
        total += 1;
        if total > most {
            return Err(MediaError::Limit {
                name: name.to_string(),
                reason: format!("the animation has more than {most} frames (8x max_frames)"),
                which: "max_frames",
            });
        }
        let (n, d) = f.delay().numer_denom_ms();
        total_ms += n as f64 / d.max(1) as f64;
    }
    if total == 0 {
        return Err(MediaError::Decode {
            name: name.to_string(),
            reason: "the animation has no frames".into(),
            fix: "re-export it".into(),
        });
    }
    let fps = if total_ms > 0.0 {
        total as f64 * 1000.0 / total_ms
    } else {
        10.0
    };
    let wanted: BTreeSet<usize> = sample(total, fps).into_iter().collect();
    let mut keep = Keeper::new(name, limits);
    for (i, f) in frames()?.enumerate() {
        if i > *wanted.last().unwrap_or(&0) {
            break;
        }
        if wanted.contains(&i) {
            let f = f.map_err(frame_err)?;
            keep.push(
                i,
                to_rgb_like_pil(image::DynamicImage::ImageRgba8(f.into_buffer())),
            )?;
        }
    }
    Ok(keep.finish(fps, total))
}

fn decode_folder(
    dir: &Path,
    name: &str,
    limits: &Limits,
    sample: &dyn Fn(usize, f64) -> Vec<usize>,
) -> Result<Video, MediaError> {
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| MediaError::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            matches!(
                crate::sample::MediaKind::from_extension(p),
                Some((crate::sample::MediaKind::Image, _))
            )
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(MediaError::Decode {
            name: name.to_string(),
            reason: "the folder has no image files (png/jpg/webp/gif/bmp)".into(),
            fix: "put the frames in the folder, named so that they sort in order (frame_0001.png, ...)".into(),
        });
    }
    let fps_file = dir.join("fps.txt");
    let fps = if fps_file.exists() {
        let s = std::fs::read_to_string(&fps_file).map_err(|e| MediaError::io(&fps_file, e))?;
        s.trim()
            .parse::<f64>()
            .ok()
            .filter(|f| *f > 0.0 && f.is_finite())
            .ok_or_else(|| MediaError::Decode {
                name: fps_file.display().to_string(),
                reason: format!("not a positive frame rate: {:?}", s.trim()),
                fix: "write the frame rate as a number, e.g. 30".into(),
            })?
    } else {
        24.0
    };
    let total = files.len();
    let wanted: BTreeSet<usize> = sample(total, fps).into_iter().collect();
    let mut keep = Keeper::new(name, limits);
    for (i, f) in files.iter().enumerate() {
        if wanted.contains(&i) {
            keep.push(i, super::load_image(f, limits)?)?;
        }
    }
    Ok(keep.finish(fps, total))
}

#[cfg(not(feature = "video-ffmpeg"))]
fn decode_ffmpeg_path(
    _path: &Path,
    name: &str,
    _limits: &Limits,
    _sample: &dyn Fn(usize, f64) -> Vec<usize>,
) -> Result<Video, MediaError> {
    Err(MediaError::Unsupported {
        name: name.to_string(),
        reason: "this build has no FFmpeg video decoder (feature `video-ffmpeg` is off)".into(),
        fix: "rebuild with the default features (needs libavcodec-dev, libavformat-dev, libavutil-dev, libswscale-dev, libclang-dev, clang, pkg-config), or pass an animated GIF/APNG or a folder of frames".into(),
    })
}

#[cfg(feature = "video-ffmpeg")]
fn decode_ffmpeg_path(
    path: &Path,
    name: &str,
    limits: &Limits,
    sample: &dyn Fn(usize, f64) -> Vec<usize>,
) -> Result<Video, MediaError> {
    let (v, decoded) = ffmpeg_pass(path, name, limits, None, sample)?;
    if v.total_frames != decoded {
        // The header's frame count was wrong: sample again from the real count.
        eprintln!(
            "warning: {name}: header says {} frames, {decoded} decoded; sampling from {decoded}",
            v.total_frames
        );
        return ffmpeg_pass(path, name, limits, Some(decoded), sample).map(|r| r.0);
    }
    Ok(v)
}

#[cfg(feature = "video-ffmpeg")]
fn ffmpeg_pass(
    path: &Path,
    name: &str,
    limits: &Limits,
    known_total: Option<usize>,
    sample: &dyn Fn(usize, f64) -> Vec<usize>,
) -> Result<(Video, usize), MediaError> {
    use ffmpeg_next as ff;
    use std::sync::Once;
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let _ = ff::init();
        ff::log::set_level(ff::log::Level::Error);
    });
    let corrupt = |e: ff::Error| MediaError::Decode {
        name: name.to_string(),
        reason: format!("FFmpeg: {e}"),
        fix: "the file is truncated, corrupt or not a video; re-encode or re-download it".into(),
    };
    let mut ictx = ff::format::input(path).map_err(corrupt)?;
    let stream =
        ictx.streams()
            .best(ff::media::Type::Video)
            .ok_or_else(|| MediaError::NoVideoStream {
                name: name.to_string(),
            })?;
    let index = stream.index();
    let rate = |r: ff::Rational| {
        if r.denominator() != 0 && r.numerator() > 0 {
            Some(r.numerator() as f64 / r.denominator() as f64)
        } else {
            None
        }
    };
    let fps = rate(stream.avg_frame_rate())
        .or_else(|| rate(stream.rate()))
        .unwrap_or(24.0);
    let header_frames = stream.frames().max(0) as usize;
    // Containers without a frame count (webm/mkv): estimate it from the
    // duration; a wrong estimate is corrected by a second pass.
    let estimated = {
        let tb = stream.time_base();
        let secs = if stream.duration() > 0 && tb.denominator() != 0 {
            stream.duration() as f64 * tb.numerator() as f64 / tb.denominator() as f64
        } else if ictx.duration() > 0 {
            ictx.duration() as f64 / 1_000_000.0
        } else {
            0.0
        };
        let n = (secs * fps).round();
        (n >= 1.0).then_some(n as usize)
    };
    let ctx = ff::codec::context::Context::from_parameters(stream.parameters()).map_err(corrupt)?;
    let codec_id = stream.parameters().id();
    let mut decoder = ctx.decoder().video().map_err(|e| MediaError::Unsupported {
        name: name.to_string(),
        reason: format!("no decoder for codec {codec_id:?} in this FFmpeg ({e})"),
        fix: "re-encode the video as H.264 (ffmpeg -i in -c:v libx264 out.mp4)".into(),
    })?;
    let (w, h) = (decoder.width(), decoder.height());
    limits.check_size(name, w, h)?;
    // Frames to keep; `None` = the frame count is unknown: keep everything
    // and sample afterwards.
    let total_guess = known_total
        .or((header_frames > 0).then_some(header_frames))
        .or(estimated);
    let wanted: Option<BTreeSet<usize>> = total_guess.map(|t| sample(t, fps).into_iter().collect());
    let mut scaler: Option<(ff::format::Pixel, u32, u32, ff::software::scaling::Context)> = None;
    let mut keep = Keeper::new(name, limits);
    let mut count = 0usize;
    let mut frame = ff::frame::Video::empty();
    let mut receive = |decoder: &mut ff::decoder::Video,
                       keep: &mut Keeper<'_>,
                       count: &mut usize|
     -> Result<(), MediaError> {
        while decoder.receive_frame(&mut frame).is_ok() {
            let i = *count;
            *count += 1;
            if wanted.as_ref().is_some_and(|s| !s.contains(&i)) {
                continue;
            }
            let (fw, fh, fmt) = (frame.width(), frame.height(), frame.format());
            limits.check_size(name, fw, fh)?;
            if scaler
                .as_ref()
                .is_none_or(|s| (s.0, s.1, s.2) != (fmt, fw, fh))
            {
                let sc = ff::software::scaling::Context::get(
                    fmt,
                    fw,
                    fh,
                    ff::format::Pixel::RGB24,
                    fw,
                    fh,
                    ff::software::scaling::Flags::BICUBIC,
                )
                .map_err(corrupt)?;
                scaler = Some((fmt, fw, fh, sc));
            }
            let mut rgb = ff::frame::Video::empty();
            scaler
                .as_mut()
                .expect("scaler")
                .3
                .run(&frame, &mut rgb)
                .map_err(corrupt)?;
            let stride = rgb.stride(0);
            let data = rgb.data(0);
            let row = fw as usize * 3;
            let mut buf = Vec::with_capacity(row * fh as usize);
            for y in 0..fh as usize {
                buf.extend_from_slice(&data[y * stride..y * stride + row]);
            }
            keep.push(i, RgbImage::from_raw(fw, fh, buf).expect("size"))?;
        }
        Ok(())
    };
    let mut packet_errors = 0usize;
    for (s, packet) in ictx.packets() {
        if s.index() != index {
            continue;
        }
        if decoder.send_packet(&packet).is_err() {
            packet_errors += 1;
            continue;
        }
        receive(&mut decoder, &mut keep, &mut count)?;
    }
    let _ = decoder.send_eof();
    receive(&mut decoder, &mut keep, &mut count)?;
    if count == 0 {
        return Err(MediaError::Decode {
            name: name.to_string(),
            reason: format!(
                "no frame could be decoded ({packet_errors} bad packets); the file is truncated or corrupt"
            ),
            fix: "re-encode or re-download the video".into(),
        });
    }
    if packet_errors > 0 {
        eprintln!("warning: {name}: {packet_errors} packets could not be decoded");
    }
    let mut v = keep.finish(fps, total_guess.unwrap_or(count));
    if wanted.is_none() {
        // Unknown count: sample now from what was decoded.
        let want: BTreeSet<usize> = sample(count, fps).into_iter().collect();
        let mut frames = vec![];
        let mut idx = vec![];
        for (f, i) in v.frames.into_iter().zip(v.frame_indices) {
            if want.contains(&i) {
                frames.push(f);
                idx.push(i);
            }
        }
        v.frames = frames;
        v.frame_indices = idx;
        v.total_frames = count;
    }
    Ok((v, count))
}
