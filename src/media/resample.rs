//! Pillow's convolution resampler (`Image.resize` with BILINEAR or BICUBIC on
//! 8-bit images), re-implemented from the algorithm in Pillow's
//! `libImaging/Resample.c` so that results are bit-identical:
//!
//! * per output pixel, the filter (support × scale when downscaling) is
//!   sampled over the input pixels whose centres fall in the window, the
//!   weights are normalised to sum 1 and converted to 22-bit fixed point
//!   (`PRECISION_BITS = 32 - 8 - 2`, rounded away from zero);
//! * the horizontal pass runs first, over only the rows the vertical pass
//!   will read, into an 8-bit intermediate (rounded, clipped to 0..=255);
//!   then the vertical pass — except, since Pillow 13 (python-pillow/Pillow
//!   #9549), when the height shrinks by more than twice as many pixels as the
//!   width: then the vertical pass runs first (the rule was found by testing
//!   against Pillow 13.0.0; the fixture covers its boundary);
//! * a pass is skipped when that dimension does not change.

use image::RgbImage;

/// A resampling filter, with Pillow's numbering (`PIL.Image.Resampling`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// `Resampling.BILINEAR` (2): triangle, support 1.
    Bilinear,
    /// `Resampling.BICUBIC` (3): Keys cubic with a = -0.5, support 2.
    Bicubic,
}

impl Filter {
    /// From PIL's integer code (`"resample": 3` in processor configs).
    pub fn from_pil(code: i64) -> Option<Filter> {
        match code {
            2 => Some(Filter::Bilinear),
            3 => Some(Filter::Bicubic),
            _ => None,
        }
    }
    fn support(self) -> f64 {
        match self {
            Filter::Bilinear => 1.0,
            Filter::Bicubic => 2.0,
        }
    }
    #[inline]
    fn eval(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Filter::Bilinear => {
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            Filter::Bicubic => {
                const A: f64 = -0.5;
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
        }
    }
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Fixed-point weights for one axis: output pixel `i` reads `len[i]` input
/// pixels from `start[i]` with weights `k[i * ksize ..]`.
struct Coeffs {
    ksize: usize,
    start: Vec<usize>,
    len: Vec<usize>,
    k: Vec<i32>,
}

fn coeffs(in_size: usize, out_size: usize, filter: Filter) -> Coeffs {
    // The box is the whole image (in0 = 0, in1 = in_size), as `resize` without `box`.
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut start = Vec::with_capacity(out_size);
    let mut len = Vec::with_capacity(out_size);
    let mut k = vec![0i32; out_size * ksize];
    let mut w = vec![0f64; ksize];
    let ss = 1.0 / filterscale;
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        // C's `(int)` truncates toward zero; negative values clamp to 0 anyway.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let n = xmax.saturating_sub(xmin);
        let mut ww = 0.0;
        for (x, wx) in w.iter_mut().enumerate().take(n) {
            let v = filter.eval((x as f64 + xmin as f64 - center + 0.5) * ss);
            *wx = v;
            ww += v;
        }
        let kk = &mut k[xx * ksize..(xx + 1) * ksize];
        for x in 0..n {
            let v = if ww != 0.0 { w[x] / ww } else { w[x] };
            let f = v * (1u32 << PRECISION_BITS) as f64;
            kk[x] = if v < 0.0 {
                (-0.5 + f) as i32
            } else {
                (0.5 + f) as i32
            };
        }
        start.push(xmin);
        len.push(n);
    }
    Coeffs {
        ksize,
        start,
        len,
        k,
    }
}

#[inline]
fn clip8(v: i32) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Horizontal pass over `rows` rows of `src` starting at `row0`.
fn h_pass(src: &[u8], in_w: usize, row0: usize, rows: usize, hc: &Coeffs) -> Vec<u8> {
    let out_w = hc.start.len();
    let mut tmp = vec![0u8; rows * out_w * 3];
    let half = 1i32 << (PRECISION_BITS - 1);
    for y in 0..rows {
        let srow = &src[(y + row0) * in_w * 3..(y + row0 + 1) * in_w * 3];
        let drow = &mut tmp[y * out_w * 3..(y + 1) * out_w * 3];
        for xx in 0..out_w {
            let k = &hc.k[xx * hc.ksize..xx * hc.ksize + hc.len[xx]];
            let s = &srow[hc.start[xx] * 3..];
            let (mut r, mut g, mut b) = (half, half, half);
            for (i, &kv) in k.iter().enumerate() {
                r += s[i * 3] as i32 * kv;
                g += s[i * 3 + 1] as i32 * kv;
                b += s[i * 3 + 2] as i32 * kv;
            }
            drow[xx * 3] = clip8(r);
            drow[xx * 3 + 1] = clip8(g);
            drow[xx * 3 + 2] = clip8(b);
        }
    }
    tmp
}

/// Vertical pass; `src` row 0 is source row `row0`.
fn v_pass(src: &[u8], width: usize, row0: usize, vc: &Coeffs) -> Vec<u8> {
    let out_h = vc.start.len();
    let stride = width * 3;
    let mut out = vec![0u8; out_h * stride];
    let half = 1i32 << (PRECISION_BITS - 1);
    let mut acc = vec![0i32; stride];
    for yy in 0..out_h {
        let k = &vc.k[yy * vc.ksize..yy * vc.ksize + vc.len[yy]];
        let y0 = vc.start[yy] - row0;
        acc.fill(half);
        for (i, &kv) in k.iter().enumerate() {
            let row = &src[(y0 + i) * stride..(y0 + i + 1) * stride];
            for (a, &p) in acc.iter_mut().zip(row) {
                *a += p as i32 * kv;
            }
        }
        for (o, &a) in out[yy * stride..(yy + 1) * stride].iter_mut().zip(&acc) {
            *o = clip8(a);
        }
    }
    out
}

/// Resize an RGB image to `width` x `height` exactly as Pillow's
/// `Image.resize((width, height), filter)` does (Pillow 13: the vertical
/// pass runs first when the height shrinks by more than twice as many
/// pixels as the width, otherwise the horizontal pass first).
pub fn resize(img: &RgbImage, width: u32, height: u32, filter: Filter) -> RgbImage {
    let (in_w, in_h) = (img.width() as usize, img.height() as usize);
    let (out_w, out_h) = (width as usize, height as usize);
    if out_w == 0 || out_h == 0 || in_w == 0 || in_h == 0 {
        return RgbImage::new(width, height);
    }
    let need_h = out_w != in_w;
    let need_v = out_h != in_h;
    if !need_h && !need_v {
        return img.clone();
    }
    let src = img.as_raw();
    let out = if !need_h {
        v_pass(src, in_w, 0, &coeffs(in_h, out_h, filter))
    } else if !need_v {
        h_pass(src, in_w, 0, in_h, &coeffs(in_w, out_w, filter))
    } else if out_h < in_h && (in_h - out_h) as i64 > 2 * (in_w as i64 - out_w as i64) {
        let tmp = v_pass(src, in_w, 0, &coeffs(in_h, out_h, filter));
        h_pass(&tmp, in_w, 0, out_h, &coeffs(in_w, out_w, filter))
    } else {
        // Horizontal first, over only the rows the vertical pass reads.
        let vc = coeffs(in_h, out_h, filter);
        let first = vc.start[0];
        let last = vc.start[out_h - 1] + vc.len[out_h - 1];
        let tmp = h_pass(src, in_w, first, last - first, &coeffs(in_w, out_w, filter));
        v_pass(&tmp, out_w, first, &vc)
    };
    RgbImage::from_raw(width, height, out).expect("size")
}
