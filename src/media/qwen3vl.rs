//! Qwen3-VL image and video preprocessing, matching transformers 5.23's
//! `Qwen2VLImageProcessorPil` (the PIL backend Qwen3-VL's processor uses for
//! images) and `Qwen3VLVideoProcessor` (frame sampling, temporal smart_resize,
//! patch layout) and the `<t seconds>` timestamps of `Qwen3VLProcessor`.
//!
//! Built-in defaults ([`ImageProcessor::qwen3vl_default`],
//! [`VideoProcessor::qwen3vl_default`]) are the values of
//! `Qwen/Qwen3-VL-2B-Instruct`'s `preprocessor_config.json`
//! (`size = {shortest_edge: 65536, longest_edge: 16777216}`, patch 16,
//! temporal patch 2, merge 2, mean = std = 0.5) and
//! `video_preprocessor_config.json` (`size = {shortest_edge: 4096,
//! longest_edge: 25165824}`, fps 2, min_frames 4, max_frames 768), as quoted
//! in several public code bases (found with a code search; the hub files
//! themselves were not reachable from here).

use std::path::{Path, PathBuf};

use image::RgbImage;
use serde_json::Value;

use super::resample::{resize, Filter};
use super::{check_normalisation, MediaError, Video, MAX_BUDGET_PIXELS};

/// Flattened vision patches, as the model's `pixel_values` /
/// `pixel_values_videos` (row-major `[rows, cols]`) with its `*_grid_thw`.
#[derive(Debug, Clone, PartialEq)]
pub struct VisionPatches {
    pub pixel_values: Vec<f32>,
    /// `grid_t * grid_h * grid_w`.
    pub rows: usize,
    /// `channels * temporal_patch_size * patch_size * patch_size`.
    pub cols: usize,
    pub grid_thw: [u32; 3],
    /// The size the frames were resized to (height, width).
    pub resized: (u32, u32),
}

impl VisionPatches {
    /// Placeholder tokens in the prompt: `t * h * w / merge_size²`.
    pub fn num_tokens(&self, merge_size: usize) -> usize {
        num_tokens(self.grid_thw, merge_size)
    }
}

/// `t * h * w / merge_size²` (the processor's `image_grid_thw.prod() // merge_length`).
pub fn num_tokens(grid_thw: [u32; 3], merge_size: usize) -> usize {
    grid_thw.iter().map(|&v| v as usize).product::<usize>() / (merge_size * merge_size)
}

#[derive(Debug, Clone, PartialEq)]
pub struct VideoPatches {
    pub patches: VisionPatches,
    /// Source frame index of every frame that went in (before padding to a
    /// multiple of the temporal patch size).
    pub frame_indices: Vec<usize>,
    /// One per temporal patch: the mean of its frames' times in seconds.
    pub timestamps: Vec<f64>,
}

impl VideoPatches {
    /// The `<t seconds>` strings the Qwen3-VL processor puts before each
    /// temporal patch's vision tokens (`f"<{t:.1f} seconds>"`).
    pub fn timestamp_strings(&self) -> Vec<String> {
        self.timestamps
            .iter()
            .map(|&t| format!("<{} seconds>", super::py_format_1f(t)))
            .collect()
    }
    /// Tokens per temporal patch (`grid_h * grid_w / merge²`).
    pub fn tokens_per_frame(&self, merge_size: usize) -> usize {
        let g = self.patches.grid_thw;
        g[1] as usize * g[2] as usize / (merge_size * merge_size)
    }
}

/// The settings both processors share.
#[derive(Debug, Clone, PartialEq)]
pub struct Common {
    pub min_pixels: u64,
    pub max_pixels: u64,
    pub patch_size: usize,
    pub temporal_patch_size: usize,
    pub merge_size: usize,
    pub image_mean: [f32; 3],
    pub image_std: [f32; 3],
    pub rescale_factor: f64,
    pub do_resize: bool,
    pub do_rescale: bool,
    pub do_normalize: bool,
    pub resample: Filter,
}

impl Common {
    fn parse(v: &Value, path: &Path, defaults: Common) -> Result<Common, MediaError> {
        let cfg_err = |msg: String| MediaError::Config {
            path: path.to_path_buf(),
            msg,
            fix: "compare with the model's preprocessor_config.json on the Hugging Face hub".into(),
        };
        let obj = v
            .as_object()
            .ok_or_else(|| cfg_err("not a JSON object".into()))?;
        let int = |k: &str| -> Result<Option<u64>, MediaError> {
            match obj.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(x) => x
                    .as_u64()
                    .map(Some)
                    .ok_or_else(|| cfg_err(format!("`{k}` must be a non-negative integer"))),
            }
        };
        let boolean = |k: &str, d: bool| -> Result<bool, MediaError> {
            match obj.get(k) {
                None | Some(Value::Null) => Ok(d),
                Some(x) => x
                    .as_bool()
                    .ok_or_else(|| cfg_err(format!("`{k}` must be true or false"))),
            }
        };
        let triple = |k: &str, d: [f32; 3]| -> Result<[f32; 3], MediaError> {
            match obj.get(k) {
                None | Some(Value::Null) => Ok(d),
                Some(Value::Number(n)) => {
                    let x = n.as_f64().unwrap_or(0.0) as f32;
                    Ok([x, x, x])
                }
                Some(Value::Array(a)) if a.len() == 3 => {
                    let mut out = [0f32; 3];
                    for (o, x) in out.iter_mut().zip(a) {
                        *o = x
                            .as_f64()
                            .ok_or_else(|| cfg_err(format!("`{k}` must hold numbers")))?
                            as f32;
                    }
                    Ok(out)
                }
                Some(_) => Err(cfg_err(format!("`{k}` must be a list of 3 numbers"))),
            }
        };
        let mut c = defaults;
        // `size: {shortest_edge, longest_edge}` (transformers >= 4.5x) or the
        // older top-level `min_pixels` / `max_pixels`; the top-level keys win,
        // as in the processor's __init__.
        if let Some(size) = obj.get("size").filter(|s| !s.is_null()) {
            let s = size
                .as_object()
                .ok_or_else(|| cfg_err("`size` must be an object".into()))?;
            for (key, is_min) in [
                ("shortest_edge", true),
                ("min_pixels", true),
                ("longest_edge", false),
                ("max_pixels", false),
            ] {
                if let Some(x) = s.get(key).filter(|x| !x.is_null()) {
                    let x = x
                        .as_u64()
                        .ok_or_else(|| cfg_err(format!("`size.{key}` must be an integer")))?;
                    if is_min {
                        c.min_pixels = x;
                    } else {
                        c.max_pixels = x;
                    }
                }
            }
        }
        if let Some(x) = int("min_pixels")? {
            c.min_pixels = x;
        }
        if let Some(x) = int("max_pixels")? {
            c.max_pixels = x;
        }
        if let Some(x) = int("patch_size")? {
            c.patch_size = x as usize;
        }
        if let Some(x) = int("temporal_patch_size")? {
            c.temporal_patch_size = x as usize;
        }
        if let Some(x) = int("merge_size")? {
            c.merge_size = x as usize;
        }
        if let Some(x) = int("resample")? {
            c.resample = Filter::from_pil(x as i64).ok_or_else(|| {
                cfg_err(format!(
                    "`resample` = {x}: only 2 (BILINEAR) and 3 (BICUBIC) are implemented"
                ))
            })?;
        }
        if let Some(x) = obj.get("rescale_factor").and_then(|x| x.as_f64()) {
            c.rescale_factor = x;
        }
        c.image_mean = triple("image_mean", c.image_mean)?;
        c.image_std = triple("image_std", c.image_std)?;
        c.do_resize = boolean("do_resize", c.do_resize)?;
        c.do_rescale = boolean("do_rescale", c.do_rescale)?;
        c.do_normalize = boolean("do_normalize", c.do_normalize)?;
        if c.patch_size == 0 || c.merge_size == 0 || c.temporal_patch_size == 0 {
            return Err(cfg_err(
                "patch_size, merge_size and temporal_patch_size must be > 0".into(),
            ));
        }
        // Real checkpoints use 16, 2 and 2; sizes are multiplied together.
        if c.patch_size > 1024 || c.merge_size > 64 || c.temporal_patch_size > 64 {
            return Err(cfg_err(format!(
                "patch_size {}, merge_size {} or temporal_patch_size {} is implausibly large (at most 1024, 64 and 64)",
                c.patch_size, c.merge_size, c.temporal_patch_size
            )));
        }
        if c.min_pixels > MAX_BUDGET_PIXELS || c.max_pixels > MAX_BUDGET_PIXELS {
            return Err(cfg_err(format!(
                "pixel budget shortest_edge={} longest_edge={} is over anjeon's cap of {MAX_BUDGET_PIXELS} pixels per image or frame",
                c.min_pixels, c.max_pixels
            )));
        }
        check_normalisation(c.rescale_factor, &c.image_mean, &c.image_std).map_err(cfg_err)?;
        if c.min_pixels == 0 || c.max_pixels == 0 || c.min_pixels > c.max_pixels {
            return Err(cfg_err(format!(
                "pixel budget shortest_edge={} longest_edge={} is not a valid range",
                c.min_pixels, c.max_pixels
            )));
        }
        Ok(c)
    }

    /// The spatial factor, `patch_size * merge_size`.
    pub fn factor(&self) -> usize {
        self.patch_size * self.merge_size
    }

    /// Rescale and normalise one resized frame into channel-first f32, as
    /// numpy does it: `(x as f64 * rescale) as f32`, then `(x - mean) / std` in f32.
    fn to_chw(&self, img: &RgbImage) -> Vec<f32> {
        let (w, h) = (img.width() as usize, img.height() as usize);
        let lut = super::pixel_lut(
            self.do_rescale.then_some(self.rescale_factor),
            self.do_normalize
                .then_some((self.image_mean, self.image_std)),
        );
        let mut out = vec![0f32; 3 * h * w];
        let (r, rest) = out.split_at_mut(h * w);
        let (g, b) = rest.split_at_mut(h * w);
        for (i, p) in img.as_raw().chunks_exact(3).enumerate() {
            r[i] = lut[0][p[0] as usize];
            g[i] = lut[1][p[1] as usize];
            b[i] = lut[2][p[2] as usize];
        }
        out
    }

    /// Lay out channel-first frames as `(grid_t*grid_h*grid_w, C*T*P*P)` in
    /// transformers' order: rows (t, h/m, w/m, m, m), columns (c, t, py, px).
    /// A frame count that is not a multiple of T is padded with the last frame.
    fn patchify(&self, frames: &[Vec<f32>], h: usize, w: usize) -> VisionPatches {
        let (p, m, t) = (self.patch_size, self.merge_size, self.temporal_patch_size);
        let n = frames.len().div_ceil(t) * t;
        let grid_t = n / t;
        let (gh, gw) = (h / p, w / p);
        let cols = 3 * t * p * p;
        let rows = grid_t * gh * gw;
        let mut out = Vec::with_capacity(rows * cols);
        let plane = h * w;
        for gt in 0..grid_t {
            for bh in 0..gh / m {
                for bw in 0..gw / m {
                    for mh in 0..m {
                        for mw in 0..m {
                            let y0 = (bh * m + mh) * p;
                            let x0 = (bw * m + mw) * p;
                            for c in 0..3 {
                                for ti in 0..t {
                                    let f = &frames[(gt * t + ti).min(frames.len() - 1)];
                                    let base = c * plane;
                                    for py in 0..p {
                                        let s = base + (y0 + py) * w + x0;
                                        out.extend_from_slice(&f[s..s + p]);
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        VisionPatches {
            pixel_values: out,
            rows,
            cols,
            grid_thw: [grid_t as u32, gh as u32, gw as u32],
            resized: (h as u32, w as u32),
        }
    }
}

fn read_json(path: &Path) -> Result<(Value, PathBuf), MediaError> {
    let s = std::fs::read_to_string(path).map_err(|e| MediaError::io(path, e))?;
    let v = serde_json::from_str(&s).map_err(|e| MediaError::Config {
        path: path.to_path_buf(),
        msg: format!("not valid JSON: {e}"),
        fix: "re-download the file".into(),
    })?;
    Ok((v, path.to_path_buf()))
}

fn parse_str(s: &str) -> Result<Value, MediaError> {
    serde_json::from_str(s).map_err(|e| MediaError::Config {
        path: PathBuf::from("<json>"),
        msg: format!("not valid JSON: {e}"),
        fix: "pass the contents of preprocessor_config.json".into(),
    })
}

/// Some processors nest the image or video settings (`processor_config.json`).
fn section<'a>(v: &'a Value, key: &str) -> &'a Value {
    v.get(key).filter(|x| x.is_object()).unwrap_or(v)
}

/// Qwen2-VL `smart_resize` for images: both sides multiples of `factor`,
/// area within `[min_pixels, max_pixels]`, aspect ratio kept; Python's
/// rounding (halves to even). Errors as HF does for aspect ratios over 200.
pub fn smart_resize(
    height: u32,
    width: u32,
    factor: usize,
    min_pixels: u64,
    max_pixels: u64,
) -> Result<(u32, u32), String> {
    let (h, w, f) = (height as f64, width as f64, factor as f64);
    if height == 0 || width == 0 {
        return Err(format!("image has zero size ({width}x{height})"));
    }
    let ratio = h.max(w) / h.min(w);
    if ratio > 200.0 {
        return Err(format!(
            "absolute aspect ratio must be smaller than 200, got {ratio} ({width}x{height})"
        ));
    }
    let mut h_bar = (h / f).round_ties_even() * f;
    let mut w_bar = (w / f).round_ties_even() * f;
    if h_bar * w_bar > max_pixels as f64 {
        let beta = ((height as u64 * width as u64) as f64 / max_pixels as f64).sqrt();
        h_bar = f.max((h / beta / f).floor() * f);
        w_bar = f.max((w / beta / f).floor() * f);
    } else if h_bar * w_bar < min_pixels as f64 {
        let beta = (min_pixels as f64 / (height as u64 * width as u64) as f64).sqrt();
        h_bar = (h * beta / f).ceil() * f;
        w_bar = (w * beta / f).ceil() * f;
    }
    Ok((h_bar as u32, w_bar as u32))
}

/// Qwen3-VL video `smart_resize`: small frames are first scaled up to the
/// factor (truncating), and the budget counts `num_frames` frames.
pub fn smart_resize_video(
    num_frames: usize,
    height: u32,
    width: u32,
    temporal_factor: usize,
    factor: usize,
    min_pixels: u64,
    max_pixels: u64,
) -> Result<(u32, u32), String> {
    if num_frames < temporal_factor {
        return Err(format!(
            "t:{num_frames} must be larger than temporal_factor:{temporal_factor}"
        ));
    }
    if height == 0 || width == 0 {
        return Err(format!("frames have zero size ({width}x{height})"));
    }
    let f = factor as f64;
    let (mut height, mut width) = (height as u64, width as u64);
    if (height as usize) < factor || (width as usize) < factor {
        let scale = (f / height as f64).max(f / width as f64);
        height = (height as f64 * scale) as u64;
        width = (width as f64 * scale) as u64;
    }
    let (h, w) = (height as f64, width as f64);
    let ratio = h.max(w) / h.min(w);
    if ratio > 200.0 {
        return Err(format!(
            "absolute aspect ratio must be smaller than 200, got {ratio}"
        ));
    }
    let mut h_bar = (h / f).round_ties_even() * f;
    let mut w_bar = (w / f).round_ties_even() * f;
    let tf = temporal_factor as f64;
    let t_bar = (num_frames as f64 / tf).round_ties_even() * tf;
    let n = num_frames as u64;
    if t_bar * h_bar * w_bar > max_pixels as f64 {
        let beta = ((n * height * width) as f64 / max_pixels as f64).sqrt();
        h_bar = f.max((h / beta / f).floor() * f);
        w_bar = f.max((w / beta / f).floor() * f);
    } else if t_bar * h_bar * w_bar < min_pixels as f64 {
        let beta = (min_pixels as f64 / (n * height * width) as f64).sqrt();
        h_bar = (h * beta / f).ceil() * f;
        w_bar = (w * beta / f).ceil() * f;
    }
    Ok((h_bar as u32, w_bar as u32))
}

/// `Qwen2VLImageProcessor` (PIL backend) with Qwen3-VL's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageProcessor {
    pub common: Common,
}

impl ImageProcessor {
    /// Qwen/Qwen3-VL-2B-Instruct's `preprocessor_config.json`.
    pub fn qwen3vl_default() -> Self {
        ImageProcessor {
            common: Common {
                min_pixels: 65_536,
                max_pixels: 16_777_216,
                patch_size: 16,
                temporal_patch_size: 2,
                merge_size: 2,
                image_mean: [0.5; 3],
                image_std: [0.5; 3],
                rescale_factor: 1.0 / 255.0,
                do_resize: true,
                do_rescale: true,
                do_normalize: true,
                resample: Filter::Bicubic,
            },
        }
    }
    pub fn from_json_file(path: &Path) -> Result<Self, MediaError> {
        let (v, p) = read_json(path)?;
        Self::from_value(&v, &p)
    }
    pub fn from_json_str(s: &str) -> Result<Self, MediaError> {
        Self::from_value(&parse_str(s)?, Path::new("<json>"))
    }
    fn from_value(v: &Value, path: &Path) -> Result<Self, MediaError> {
        let v = section(v, "image_processor");
        // Keys absent from the file take the class defaults of
        // `Qwen2VLImageProcessorPil`, except those Qwen3-VL always sets.
        Ok(ImageProcessor {
            common: Common::parse(v, path, Self::qwen3vl_default().common)?,
        })
    }
    /// The (height, width) an image of this size is resized to.
    pub fn target_size(&self, height: u32, width: u32) -> Result<(u32, u32), String> {
        let c = &self.common;
        if !c.do_resize {
            return Ok((height, width));
        }
        smart_resize(height, width, c.factor(), c.min_pixels, c.max_pixels)
    }
    /// Resize (Pillow bicubic), rescale, normalise and patchify one image.
    pub fn preprocess(&self, img: &RgbImage) -> Result<VisionPatches, MediaError> {
        self.preprocess_named(img, "image")
    }
    pub fn preprocess_named(
        &self,
        img: &RgbImage,
        name: &str,
    ) -> Result<VisionPatches, MediaError> {
        let c = &self.common;
        let (h, w) = self
            .target_size(img.height(), img.width())
            .map_err(|reason| MediaError::Shape {
                name: name.to_string(),
                reason,
                fix: "crop or pad the image to a less extreme shape".into(),
            })?;
        if h as usize % c.factor() != 0 || w as usize % c.factor() != 0 {
            return Err(MediaError::Shape {
                name: name.to_string(),
                reason: format!(
                    "{w}x{h} is not a multiple of patch_size*merge_size = {}",
                    c.factor()
                ),
                fix: "enable do_resize in the processor config".into(),
            });
        }
        let resized = self.resize(img, w, h);
        let chw = c.to_chw(&resized);
        Ok(c.patchify(&[chw], h as usize, w as usize))
    }
    /// The uint8 image after the resize step (for inspection and tests).
    pub fn resize(&self, img: &RgbImage, width: u32, height: u32) -> RgbImage {
        resize(img, width, height, self.common.resample)
    }
}

/// `Qwen3VLVideoProcessor`.
#[derive(Debug, Clone, PartialEq)]
pub struct VideoProcessor {
    pub common: Common,
    /// Frames sampled per second of video.
    pub fps: f64,
    pub min_frames: usize,
    pub max_frames: usize,
    /// A fixed frame count instead of `fps` (`num_frames` in the config).
    pub num_frames: Option<usize>,
    pub do_sample_frames: bool,
    /// qwen-vl-utils' per-frame pixel cap (`cap_pixels_per_frame`); off by
    /// default as in transformers 5.23.
    pub cap_pixels_per_frame: bool,
    pub max_video_tokens: u64,
}

impl VideoProcessor {
    /// Qwen/Qwen3-VL-2B-Instruct's `video_preprocessor_config.json`.
    pub fn qwen3vl_default() -> Self {
        let mut common = ImageProcessor::qwen3vl_default().common;
        common.min_pixels = 4096;
        common.max_pixels = 25_165_824;
        VideoProcessor {
            common,
            fps: 2.0,
            min_frames: 4,
            max_frames: 768,
            num_frames: None,
            do_sample_frames: true,
            cap_pixels_per_frame: false,
            max_video_tokens: 768,
        }
    }
    pub fn from_json_file(path: &Path) -> Result<Self, MediaError> {
        let (v, p) = read_json(path)?;
        Self::from_value(&v, &p)
    }
    pub fn from_json_str(s: &str) -> Result<Self, MediaError> {
        Self::from_value(&parse_str(s)?, Path::new("<json>"))
    }
    fn from_value(v: &Value, path: &Path) -> Result<Self, MediaError> {
        let v = section(v, "video_processor");
        let mut p = Self::qwen3vl_default();
        p.common = Common::parse(v, path, p.common)?;
        let bad = |k: &str| MediaError::Config {
            path: path.to_path_buf(),
            msg: format!("`{k}` has the wrong type"),
            fix: "compare with the model's video_preprocessor_config.json".into(),
        };
        if let Some(x) = v.get("fps").filter(|x| !x.is_null()) {
            p.fps = x.as_f64().ok_or_else(|| bad("fps"))?;
        }
        for (k, slot) in [
            ("min_frames", &mut p.min_frames),
            ("max_frames", &mut p.max_frames),
        ] {
            if let Some(x) = v.get(k).filter(|x| !x.is_null()) {
                *slot = x.as_u64().ok_or_else(|| bad(k))? as usize;
            }
        }
        if let Some(x) = v.get("num_frames").filter(|x| !x.is_null()) {
            p.num_frames = Some(x.as_u64().ok_or_else(|| bad("num_frames"))? as usize);
        }
        if let Some(x) = v.get("do_sample_frames").filter(|x| !x.is_null()) {
            p.do_sample_frames = x.as_bool().ok_or_else(|| bad("do_sample_frames"))?;
        }
        if let Some(x) = v.get("cap_pixels_per_frame").filter(|x| !x.is_null()) {
            p.cap_pixels_per_frame = x.as_bool().ok_or_else(|| bad("cap_pixels_per_frame"))?;
        }
        if let Some(x) = v.get("max_video_tokens").filter(|x| !x.is_null()) {
            p.max_video_tokens = x.as_u64().ok_or_else(|| bad("max_video_tokens"))?;
        }
        Ok(p)
    }

    /// The source frame indices `sample_frames` picks: `fps` frames per
    /// second (at least `min_frames`, at most `max_frames` and the video's
    /// frame count), spread with `np.linspace(0, total-1, n).round()`.
    pub fn sample_indices(&self, total_frames: usize, fps: f64) -> Vec<usize> {
        if total_frames == 0 {
            return vec![];
        }
        if !self.do_sample_frames {
            return (0..total_frames).collect();
        }
        let n = match self.num_frames {
            Some(n) => n,
            None => {
                // HF assumes 24 fps when the metadata has none.
                let video_fps = if fps > 0.0 && fps.is_finite() {
                    fps
                } else {
                    24.0
                };
                let n = (total_frames as f64 / video_fps * self.fps) as usize;
                n.max(self.min_frames)
                    .min(self.max_frames)
                    .min(total_frames)
            }
        };
        linspace_round(total_frames - 1, n)
    }

    /// The (height, width) frames are resized to when `num_frames` frames go in.
    pub fn target_size(
        &self,
        num_frames: usize,
        height: u32,
        width: u32,
    ) -> Result<(u32, u32), String> {
        let c = &self.common;
        if !c.do_resize {
            return Ok((height, width));
        }
        let mut max_pixels = c.max_pixels;
        if self.cap_pixels_per_frame {
            let factor = c.factor() as u64;
            let frame_cap = self.max_video_tokens * factor * factor;
            let per_frame = frame_cap
                .min(c.max_pixels / num_frames as u64)
                .max((c.min_pixels as f64 * 1.05) as u64);
            max_pixels = per_frame * num_frames as u64;
        }
        smart_resize_video(
            num_frames,
            height,
            width,
            c.temporal_patch_size,
            c.factor(),
            c.min_pixels,
            max_pixels,
        )
    }

    /// Sample frames (from `video.frame_indices`, which must contain the
    /// sampled indices), resize, rescale, normalise and patchify.
    pub fn preprocess(&self, video: &Video) -> Result<VideoPatches, MediaError> {
        let wanted = self.sample_indices(video.total_frames, video.fps);
        self.preprocess_indices(video, &wanted)
    }

    /// As [`preprocess`](Self::preprocess) with explicit source frame indices.
    pub fn preprocess_indices(
        &self,
        video: &Video,
        wanted: &[usize],
    ) -> Result<VideoPatches, MediaError> {
        let name = video.name.as_str();
        let mut frames: Vec<&RgbImage> = Vec::with_capacity(wanted.len());
        for &i in wanted {
            let pos = video
                .frame_indices
                .iter()
                .position(|&j| j == i)
                .ok_or_else(|| MediaError::Decode {
                    name: name.to_string(),
                    reason: format!(
                        "frame {i} of {} was not decoded (the stream ended early or the frame count in the header is wrong)",
                        video.total_frames
                    ),
                    fix: "re-encode the video (e.g. ffmpeg -i in.mp4 -c:v libx264 out.mp4)".into(),
                })?;
            frames.push(&video.frames[pos]);
        }
        if frames.is_empty() {
            return Err(MediaError::Decode {
                name: name.to_string(),
                reason: "the video has no frames".into(),
                fix: "check the file".into(),
            });
        }
        let (h0, w0) = (frames[0].height(), frames[0].width());
        if frames.iter().any(|f| f.dimensions() != (w0, h0)) {
            return Err(MediaError::Shape {
                name: name.to_string(),
                reason: "frames have different sizes".into(),
                fix: "re-encode the video with one frame size".into(),
            });
        }
        let c = &self.common;
        let (h, w) =
            self.target_size(frames.len(), h0, w0)
                .map_err(|reason| {
                    MediaError::Shape {
                name: name.to_string(),
                reason,
                fix:
                    "pass a video with at least temporal_patch_size frames and a less extreme shape"
                        .into(),
            }
                })?;
        let chw: Vec<Vec<f32>> = frames
            .iter()
            .map(|f| c.to_chw(&resize(f, w, h, c.resample)))
            .collect();
        let patches = c.patchify(&chw, h as usize, w as usize);
        let timestamps = timestamps(wanted, video.fps, c.temporal_patch_size);
        Ok(VideoPatches {
            patches,
            frame_indices: wanted.to_vec(),
            timestamps,
        })
    }
}

/// `np.linspace(0, last, n).round().astype(int)`.
pub fn linspace_round(last: usize, n: usize) -> Vec<usize> {
    match n {
        0 => vec![],
        1 => vec![0],
        _ => {
            let step = last as f64 / (n - 1) as f64;
            (0..n)
                .map(|i| {
                    // numpy: start + i*step, with the last value exactly `stop`.
                    let v = if i == n - 1 {
                        last as f64
                    } else {
                        i as f64 * step
                    };
                    v.round_ties_even() as usize
                })
                .collect()
        }
    }
}

/// `Qwen3VLProcessor._calculate_timestamps`: indices padded with the last to
/// a multiple of `merge`, `idx / fps`, then the mean of each group's first
/// and last. A non-positive fps is taken as 24, as HF does.
pub fn timestamps(indices: &[usize], fps: f64, merge: usize) -> Vec<f64> {
    let fps = if fps > 0.0 && fps.is_finite() {
        fps
    } else {
        24.0
    };
    let mut idx = indices.to_vec();
    if let Some(&last) = idx.last() {
        while idx.len() % merge != 0 {
            idx.push(last);
        }
    }
    let t: Vec<f64> = idx.iter().map(|&i| i as f64 / fps).collect();
    t.chunks(merge)
        .map(|g| (g[0] + g[g.len() - 1]) / 2.0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_processor_numbers_are_refused() {
        // Red-team findings: a shortest_edge with no cap asked resample for
        // 3 TB; image_std 0 gave all-NaN pixel values with exit 0.
        let e = ImageProcessor::from_json_str(
            r#"{"size": {"shortest_edge": 1000000000000, "longest_edge": 2000000000000}}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("over anjeon's cap"), "{e}");
        let e = ImageProcessor::from_json_str(r#"{"image_std": [0.5, 0.0, 0.5]}"#)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("image_std") && e.contains("divide by zero"),
            "{e}"
        );
        let e = crate::media::gemma4::ImageProcessor::from_json_str(
            r#"{"image_std": [0, 0, 0], "do_normalize": true}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("image_std"), "{e}");
    }

    #[test]
    fn smart_resize_rounds_like_python() {
        // 720 / 32 = 22.5 rounds to 22 (ties to even).
        assert_eq!(
            smart_resize(720, 1280, 32, 65536, 16777216).unwrap(),
            (704, 1280)
        );
        // Tiny images are scaled up to min_pixels; 1x1 becomes 256x256.
        assert_eq!(smart_resize(1, 1, 32, 65536, 16777216).unwrap(), (256, 256));
        // Over the budget: floor after dividing by beta.
        assert_eq!(
            smart_resize(4200, 4100, 32, 65536, 16777216).unwrap(),
            (4128, 4032)
        );
        assert!(smart_resize(10, 3000, 32, 65536, 16777216).is_err());
        assert!(smart_resize(0, 10, 32, 65536, 16777216).is_err());
    }

    #[test]
    fn video_smart_resize_scales_small_frames_first() {
        // 10x20 frames: scaled to 32x64 before the budget check.
        let (h, w) = smart_resize_video(4, 10, 20, 2, 32, 4096, 25165824).unwrap();
        assert_eq!((h % 32, w % 32), (0, 0));
        assert!(smart_resize_video(1, 64, 64, 2, 32, 4096, 25165824).is_err());
    }

    #[test]
    fn linspace_and_timestamps() {
        assert_eq!(linspace_round(29, 6), vec![0, 6, 12, 17, 23, 29]);
        assert_eq!(linspace_round(9, 1), vec![0]);
        // Odd count: the last index repeats to fill the pair.
        assert_eq!(timestamps(&[0, 4, 8], 4.0, 2), vec![0.5, 2.0]);
        let v = VideoPatches {
            patches: VisionPatches {
                pixel_values: vec![],
                rows: 0,
                cols: 0,
                grid_thw: [2, 4, 4],
                resized: (64, 64),
            },
            frame_indices: vec![0, 1, 2, 3],
            timestamps: vec![0.25, 1.25],
        };
        assert_eq!(v.timestamp_strings(), ["<0.2 seconds>", "<1.2 seconds>"]);
        assert_eq!(v.tokens_per_frame(2), 4);
        assert_eq!(num_tokens([2, 4, 4], 2), 8);
    }

    #[test]
    fn patch_layout_matches_hf_order() {
        // 32x32 image, P=16, m=2: one merge block; column (c, t, py, px).
        let p = ImageProcessor::from_json_str(
            r#"{"min_pixels": 1024, "max_pixels": 1024, "do_normalize": false, "do_rescale": false}"#,
        )
        .unwrap();
        let img = RgbImage::from_fn(32, 32, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let v = p.preprocess(&img).unwrap();
        assert_eq!(v.grid_thw, [1, 2, 2]);
        assert_eq!((v.rows, v.cols), (4, 1536));
        let row = |r: usize| &v.pixel_values[r * 1536..(r + 1) * 1536];
        // Row 1 is the top-right patch (mh=0, mw=1): x starts at 16.
        assert_eq!(row(1)[0], 16.0);
        assert_eq!(row(2)[0], 0.0);
        // Green of row 2 (bottom-left) at py=0: y = 16; t=1 repeats t=0.
        assert_eq!(row(2)[512], 16.0);
        assert_eq!(row(2)[512 + 256], 16.0);
        assert_eq!(row(0)[1024], 7.0);
    }
}
