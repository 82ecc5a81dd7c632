//! Media decoding and model-exact preprocessing.
//!
//! Images are decoded with the `image` crate, JPEG with libjpeg-turbo's
//! decoder as Pillow does ([`jpeg`]) (EXIF orientation applied, alpha
//! dropped as PIL's `convert("RGB")` does), resized with a bit-exact port of
//! Pillow's resampler ([`resample`]), and turned into the tensors that
//! transformers' processors produce: Qwen3-VL ([`qwen3vl`]) and Gemma 4
//! ([`gemma4`]). Videos come from FFmpeg (feature `video-ffmpeg`), animated
//! GIF/APNG or a folder of frames ([`video`]).

pub mod gemma4;
pub mod inspect;
pub mod jpeg;
pub mod qwen3vl;
pub mod resample;
pub mod video;

use std::io::Cursor;
use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageDecoder, RgbImage};

pub use video::{decode_video, decode_video_sampled, Video, VideoSource};

pub use crate::core::error::MediaError;

/// The limits decoding applies (pixels, allocation, frames, video bytes):
/// the run's limits, set in `core::limits`.
pub use crate::core::limits::Limits;

/// Checks against [`Limits`] before and while decoding.
pub(crate) trait Check {
    fn check_size(&self, name: &str, width: u32, height: u32) -> Result<(), MediaError>;
    fn image_limits(&self) -> image::Limits;
}

impl Check for Limits {
    fn check_size(&self, name: &str, width: u32, height: u32) -> Result<(), MediaError> {
        if width == 0 || height == 0 {
            return Err(MediaError::Empty {
                name: name.to_string(),
                width,
                height,
            });
        }
        if width as u64 * height as u64 > self.max_pixels {
            return Err(MediaError::TooLarge {
                name: name.to_string(),
                width,
                height,
                max: self.max_pixels,
            });
        }
        Ok(())
    }
    fn image_limits(&self) -> image::Limits {
        let mut l = image::Limits::default();
        l.max_alloc = Some(self.max_alloc);
        l
    }
}

/// Decode an image file's bytes to 8-bit RGB, as transformers' `load_image`
/// followed by the processors' `convert_rgb` sees it: EXIF orientation applied
/// (`ImageOps.exif_transpose`), alpha dropped (PIL `convert("RGB")` does not
/// composite), grey replicated to three channels, the first frame of an
/// animation. 16-bit RGB(A) keeps the high byte (PIL's `RGB;16B` raw mode).
///
/// The size in the header is checked against `limits` before the pixels are
/// allocated.
pub fn decode_image(bytes: &[u8], name: &str, limits: &Limits) -> Result<RgbImage, MediaError> {
    if bytes.is_empty() {
        return Err(MediaError::decode(
            name,
            "the file is empty (0 bytes)",
            "replace the file with a real image",
        ));
    }
    if jpeg::is_jpeg(bytes) {
        return jpeg::decode(bytes, name, limits);
    }
    let reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| MediaError::decode(name, e.to_string(), "check the file"))?;
    if reader.format().is_none() {
        return Err(MediaError::decode(
            name,
            "unknown image format (not PNG, JPEG, WebP, GIF or BMP)",
            "convert the image to PNG or JPEG",
        ));
    }
    let mut decoder = reader.into_decoder().map_err(|e| image_err(name, e))?;
    let (w, h) = decoder.dimensions();
    limits.check_size(name, w, h)?;
    decoder
        .set_limits(limits.image_limits())
        .map_err(|e| image_err(name, e))?;
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| image_err(name, e))?;
    img.apply_orientation(orientation);
    Ok(to_rgb_like_pil(img))
}

/// PIL `convert("RGB")`: alpha is dropped, not composited.
pub fn to_rgb_like_pil(img: DynamicImage) -> RgbImage {
    match img {
        DynamicImage::ImageRgb8(i) => i,
        DynamicImage::ImageRgb16(i) => {
            let (w, h) = i.dimensions();
            let raw: Vec<u8> = i.into_raw().into_iter().map(|v| (v >> 8) as u8).collect();
            RgbImage::from_raw(w, h, raw).expect("size")
        }
        DynamicImage::ImageRgba16(i) => {
            let (w, h) = i.dimensions();
            let raw: Vec<u8> = i
                .into_raw()
                .chunks_exact(4)
                .flat_map(|p| [(p[0] >> 8) as u8, (p[1] >> 8) as u8, (p[2] >> 8) as u8])
                .collect();
            RgbImage::from_raw(w, h, raw).expect("size")
        }
        // RGBA8 drops alpha; L8/LA8 replicate grey: the same as PIL.
        other => other.to_rgb8(),
    }
}

fn image_err(name: &str, e: image::ImageError) -> MediaError {
    match e {
        image::ImageError::Limits(l) => MediaError::Limit {
            name: name.to_string(),
            reason: format!("decoder limit exceeded: {l}"),
            which: "max_alloc",
        },
        image::ImageError::Unsupported(u) => MediaError::Unsupported {
            name: name.to_string(),
            reason: u.to_string(),
            fix: "convert the image to PNG or JPEG".into(),
        },
        other => MediaError::decode(
            name,
            other.to_string(),
            "the file is truncated or corrupt; re-export or re-download it",
        ),
    }
}

/// Read and decode an image file.
pub fn load_image(path: &Path, limits: &Limits) -> Result<RgbImage, MediaError> {
    let bytes = std::fs::read(path).map_err(|e| MediaError::io(path, e))?;
    decode_image(&bytes, &path.display().to_string(), limits)
}

/// Resolve a media reference from a data set against the data set's folder,
/// refusing references that leave it (`..`, absolute paths elsewhere,
/// symlinks pointing out). The file must exist.
pub fn resolve_in_dataset(root: &Path, reference: &str) -> Result<PathBuf, MediaError> {
    let root_c = root.canonicalize().map_err(|e| MediaError::io(root, e))?;
    let joined = root.join(reference);
    let resolved = joined
        .canonicalize()
        .map_err(|e| MediaError::io(&joined, e))?;
    if !resolved.starts_with(&root_c) {
        return Err(MediaError::OutsideDataset {
            reference: reference.to_string(),
            resolved,
            root: root_c,
        });
    }
    Ok(resolved)
}

/// The most pixels a processor config may ask an image or frame to be
/// resized to (Qwen3-VL's own video budget is 25,165,824): a larger budget
/// is a corrupt or hostile config, refused before anything is allocated.
pub const MAX_BUDGET_PIXELS: u64 = 1 << 26;

/// A processor's rescale factor, mean and std must give finite pixel values:
/// a std of 0 would make every value infinite or NaN.
pub fn check_normalisation(rescale: f64, mean: &[f32; 3], std: &[f32; 3]) -> Result<(), String> {
    if !(rescale.is_finite() && rescale > 0.0) {
        return Err(format!(
            "`rescale_factor` = {rescale} must be a positive number"
        ));
    }
    if mean.iter().any(|m| !m.is_finite()) {
        return Err(format!("`image_mean` = {mean:?} must be finite numbers"));
    }
    if std.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
        return Err(format!(
            "`image_std` = {std:?} must be positive numbers (a 0 would divide by zero)"
        ));
    }
    Ok(())
}

/// Python's `f"{x:.1f}"`: the exact binary value rounded to one decimal,
/// ties to even (as the Qwen3-VL processor formats `<t seconds>`).
pub fn py_format_1f(x: f64) -> String {
    // Rust's `{:.1}` formats the exact binary value and rounds ties to even,
    // which is what CPython does; kept as a function so it is tested.
    format!("{x:.1}")
}

/// The value of each 8-bit level of each channel after the processors'
/// rescale and normalise, computed as numpy does: `(x as f64 * rescale) as
/// f32`, then `(x - mean) / std` in f32. Indexed `[channel][level]`.
pub(crate) fn pixel_lut(
    rescale: Option<f64>,
    normalize: Option<([f32; 3], [f32; 3])>,
) -> [[f32; 256]; 3] {
    let mut lut = [[0f32; 256]; 3];
    for (c, l) in lut.iter_mut().enumerate() {
        for (v, o) in l.iter_mut().enumerate() {
            let mut x = match rescale {
                Some(r) => (v as f64 * r) as f32,
                None => v as f32,
            };
            if let Some((mean, std)) = normalize {
                x = (x - mean[c]) / std[c];
            }
            *o = x;
        }
    }
    lut
}
