//! Gemma 4 image preprocessing, matching transformers 5.23's
//! `Gemma4ImageProcessorPil`: an aspect-preserving resize to multiples of
//! `pooling_kernel_size * patch_size` (48) within `max_soft_tokens *
//! pooling_kernel_size²` patches (Pillow bicubic), rescale by 1/255 (no
//! normalisation by default), `(patch_rows*patch_cols, P*P*C)` patches in
//! (py, px, c) order, zero-padded to the full patch budget, with (x, y)
//! position ids (-1 for padding) and the soft-token count.

use std::path::Path;

use image::RgbImage;
use serde_json::Value;

use super::resample::{resize, Filter};
use super::MediaError;

/// The soft-token budgets the processor accepts.
pub const SUPPORTED_SOFT_TOKENS: [usize; 5] = [70, 140, 280, 560, 1120];

#[derive(Debug, Clone, PartialEq)]
pub struct ImageProcessor {
    pub patch_size: usize,
    pub max_soft_tokens: usize,
    pub pooling_kernel_size: usize,
    pub rescale_factor: f64,
    pub do_rescale: bool,
    pub do_normalize: bool,
    pub image_mean: [f32; 3],
    pub image_std: [f32; 3],
    pub resample: Filter,
}

/// What the model receives for one image.
#[derive(Debug, Clone, PartialEq)]
pub struct Gemma4Patches {
    /// `[max_patches, patch_size² * 3]`, row-major; rows past
    /// `num_patches` are zero.
    pub pixel_values: Vec<f32>,
    pub rows: usize,
    pub cols: usize,
    /// `[max_patches, 2]` (x, y) per patch; -1 for padding rows.
    pub position_ids: Vec<i64>,
    /// Real (unpadded) patches.
    pub num_patches: usize,
    /// `num_patches / pooling_kernel_size²`: image tokens in the prompt.
    pub num_soft_tokens: usize,
    /// (height, width) after the resize.
    pub resized: (u32, u32),
}

impl Default for ImageProcessor {
    fn default() -> Self {
        ImageProcessor {
            patch_size: 16,
            max_soft_tokens: 280,
            pooling_kernel_size: 3,
            rescale_factor: 1.0 / 255.0,
            do_rescale: true,
            do_normalize: false,
            image_mean: [0.0; 3],
            image_std: [1.0; 3],
            resample: Filter::Bicubic,
        }
    }
}

/// `get_aspect_ratio_preserving_size`: the largest (height, width), both
/// multiples of `pooling_kernel_size * patch_size`, with at most
/// `max_patches` patches.
pub fn aspect_ratio_preserving_size(
    height: u32,
    width: u32,
    patch_size: usize,
    max_patches: usize,
    pooling_kernel_size: usize,
) -> Result<(u32, u32), String> {
    if height == 0 || width == 0 {
        return Err(format!("image has zero size ({width}x{height})"));
    }
    let total_px = height as f64 * width as f64;
    let target_px = (max_patches * patch_size * patch_size) as f64;
    let factor = (target_px / total_px).sqrt();
    let ideal_h = factor * height as f64;
    let ideal_w = factor * width as f64;
    let side = (pooling_kernel_size * patch_size) as f64;
    let mut th = (ideal_h / side).floor() * side;
    let mut tw = (ideal_w / side).floor() * side;
    if th == 0.0 && tw == 0.0 {
        return Err(format!(
            "resizing to a 0 x 0 image; sides must be multiples of pooling_kernel_size * patch_size = {side}"
        ));
    }
    let max_side = ((max_patches / (pooling_kernel_size * pooling_kernel_size)) as f64) * side;
    if th == 0.0 {
        th = side;
        tw = ((width as f64 / height as f64).floor() * side).min(max_side);
    } else if tw == 0.0 {
        tw = side;
        th = ((height as f64 / width as f64).floor() * side).min(max_side);
    }
    if th * tw > target_px {
        return Err(format!(
            "resizing [{height}x{width}] to [{th}x{tw}] exceeds {max_patches} patches of {patch_size}x{patch_size}"
        ));
    }
    Ok((th as u32, tw as u32))
}

impl ImageProcessor {
    pub fn from_json_file(path: &Path) -> Result<Self, MediaError> {
        let s = std::fs::read_to_string(path).map_err(|e| MediaError::io(path, e))?;
        Self::parse(&s, path)
    }
    pub fn from_json_str(s: &str) -> Result<Self, MediaError> {
        Self::parse(s, Path::new("<json>"))
    }
    fn parse(s: &str, path: &Path) -> Result<Self, MediaError> {
        let err = |msg: String| MediaError::Config {
            path: path.to_path_buf(),
            msg,
            fix: "compare with the model's processor_config.json".into(),
        };
        let v: Value = serde_json::from_str(s).map_err(|e| err(format!("not valid JSON: {e}")))?;
        let v = v
            .get("image_processor")
            .filter(|x| x.is_object())
            .unwrap_or(&v);
        let mut p = ImageProcessor::default();
        let uint = |k: &str| v.get(k).and_then(|x| x.as_u64()).map(|x| x as usize);
        if let Some(x) = uint("patch_size") {
            p.patch_size = x;
        }
        if let Some(x) = uint("max_soft_tokens") {
            p.max_soft_tokens = x;
        }
        if let Some(x) = uint("pooling_kernel_size") {
            p.pooling_kernel_size = x;
        }
        if let Some(x) = v.get("rescale_factor").and_then(|x| x.as_f64()) {
            p.rescale_factor = x;
        }
        if let Some(x) = v.get("do_rescale").and_then(|x| x.as_bool()) {
            p.do_rescale = x;
        }
        if let Some(x) = v.get("do_normalize").and_then(|x| x.as_bool()) {
            p.do_normalize = x;
        }
        for (k, slot) in [
            ("image_mean", &mut p.image_mean),
            ("image_std", &mut p.image_std),
        ] {
            if let Some(a) = v.get(k).and_then(|x| x.as_array()) {
                if a.len() != 3 {
                    return Err(err(format!("`{k}` must have 3 values")));
                }
                for (o, x) in slot.iter_mut().zip(a) {
                    *o = x.as_f64().unwrap_or(0.0) as f32;
                }
            }
        }
        if let Some(x) = v.get("resample").and_then(|x| x.as_i64()) {
            p.resample = Filter::from_pil(x)
                .ok_or_else(|| err(format!("`resample` = {x} is not implemented")))?;
        }
        if !SUPPORTED_SOFT_TOKENS.contains(&p.max_soft_tokens) {
            return Err(err(format!(
                "`max_soft_tokens` must be one of {SUPPORTED_SOFT_TOKENS:?}, got {}",
                p.max_soft_tokens
            )));
        }
        super::check_normalisation(p.rescale_factor, &p.image_mean, &p.image_std).map_err(err)?;
        if p.patch_size == 0 || p.pooling_kernel_size == 0 {
            return Err(err("patch_size and pooling_kernel_size must be > 0".into()));
        }
        // Real checkpoints use 16 and 3; sizes are multiplied together below.
        if p.patch_size > 1024 || p.pooling_kernel_size > 64 {
            return Err(err(format!(
                "patch_size {} or pooling_kernel_size {} is implausibly large (at most 1024 and 64)",
                p.patch_size, p.pooling_kernel_size
            )));
        }
        Ok(p)
    }

    pub fn max_patches(&self) -> usize {
        self.max_soft_tokens * self.pooling_kernel_size * self.pooling_kernel_size
    }

    /// The (height, width) the image is resized to.
    pub fn target_size(&self, height: u32, width: u32) -> Result<(u32, u32), String> {
        aspect_ratio_preserving_size(
            height,
            width,
            self.patch_size,
            self.max_patches(),
            self.pooling_kernel_size,
        )
    }

    pub fn preprocess(&self, img: &RgbImage) -> Result<Gemma4Patches, MediaError> {
        let (h, w) = self
            .target_size(img.height(), img.width())
            .map_err(|reason| MediaError::Shape {
                name: "image".into(),
                reason,
                fix: "crop or pad the image to a less extreme shape".into(),
            })?;
        let resized;
        let img = if (h, w) == (img.height(), img.width()) {
            img
        } else {
            resized = resize(img, w, h, self.resample);
            &resized
        };
        let p = self.patch_size;
        let (ph, pw) = (h as usize / p, w as usize / p);
        let cols = p * p * 3;
        let max_patches = self.max_patches();
        let num = ph * pw;
        let lut = super::pixel_lut(
            self.do_rescale.then_some(self.rescale_factor),
            self.do_normalize
                .then_some((self.image_mean, self.image_std)),
        );
        let raw = img.as_raw();
        let wu = w as usize;
        let mut pixel_values = vec![0f32; max_patches.max(num) * cols];
        let mut position_ids = vec![-1i64; max_patches.max(num) * 2];
        for gy in 0..ph {
            for gx in 0..pw {
                let row = gy * pw + gx;
                let out = &mut pixel_values[row * cols..(row + 1) * cols];
                let mut o = 0;
                for py in 0..p {
                    let s = ((gy * p + py) * wu + gx * p) * 3;
                    for px in 0..p {
                        for c in 0..3 {
                            out[o] = lut[c][raw[s + px * 3 + c] as usize];
                            o += 1;
                        }
                    }
                }
                position_ids[row * 2] = gx as i64;
                position_ids[row * 2 + 1] = gy as i64;
            }
        }
        Ok(Gemma4Patches {
            rows: max_patches.max(num),
            cols,
            pixel_values,
            position_ids,
            num_patches: num,
            num_soft_tokens: num / (self.pooling_kernel_size * self.pooling_kernel_size),
            resized: (h, w),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_multiples_of_48_within_budget() {
        let (h, w) = aspect_ratio_preserving_size(720, 1280, 16, 280 * 9, 3).unwrap();
        assert_eq!((h % 48, w % 48), (0, 0));
        assert!((h as usize / 16) * (w as usize / 16) <= 280 * 9);
        // Very wide: one row of 48, width capped.
        let (h, w) = aspect_ratio_preserving_size(10, 3000, 16, 280 * 9, 3).unwrap();
        assert_eq!(h, 48);
        assert_eq!(w, 280 * 48, "capped at (max_patches / k²) * 48");
        assert!(aspect_ratio_preserving_size(0, 5, 16, 2520, 3).is_err());
    }
}
