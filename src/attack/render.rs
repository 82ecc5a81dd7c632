//! Text rendered into a PNG for the typographic strategies, with the bundled
//! Korean-capable font (`data/fonts/NanumSquareR.ttf`, OFL). Lines are
//! wrapped to the canvas and the font shrinks down to a minimum size; text
//! that still does not fit, and characters the font has no glyph for, are
//! errors: an image is never silently blank or missing characters.

use std::sync::OnceLock;

use ab_glyph::{point, Font, FontRef, PxScale, ScaleFont};

/// The bundled font file and its name (for messages and provenance).
pub const FONT_FILE: &str = "data/fonts/NanumSquareR.ttf";
static FONT_BYTES: &[u8] = include_bytes!("../../data/fonts/NanumSquareR.ttf");

fn font() -> &'static FontRef<'static> {
    static FONT: OnceLock<FontRef<'static>> = OnceLock::new();
    FONT.get_or_init(|| FontRef::try_from_slice(FONT_BYTES).expect("bundled font parses"))
}

/// sha256 of the bundled font (recorded with each image variant).
pub fn font_sha256() -> String {
    crate::core::hash::sha256_hex(FONT_BYTES)
}

/// The canvas and the font sizes to try.
#[derive(Debug, Clone, Copy)]
pub struct Canvas {
    pub width: u32,
    pub height: u32,
    pub margin: u32,
    /// Largest and smallest font size, in pixels.
    pub max_px: f32,
    pub min_px: f32,
}

impl Canvas {
    /// FigStep's 760×760 canvas.
    pub const SQUARE: Canvas = Canvas {
        width: 760,
        height: 760,
        margin: 40,
        max_px: 64.0,
        min_px: 22.0,
    };
}

/// Why text could not be rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RenderError {
    /// Characters with no glyph in the font (each listed once, in order).
    MissingGlyphs(Vec<char>),
    /// The wrapped text is taller than the canvas even at the smallest size.
    TooLong {
        lines: usize,
        px: u32,
        height: u32,
    },
    Blank,
    Encode(String),
}

impl std::fmt::Display for RenderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RenderError::MissingGlyphs(cs) => {
                let list: Vec<String> = cs
                    .iter()
                    .map(|c| format!("{c:?} (U+{:04X})", *c as u32))
                    .collect();
                write!(
                    f,
                    "the font {FONT_FILE} has no glyph for {}",
                    list.join(", ")
                )
            }
            RenderError::TooLong { lines, px, height } => write!(
                f,
                "text too long for the image: {lines} wrapped lines at {px} px do not fit in {height} px"
            ),
            RenderError::Blank => write!(f, "the rendered image has no visible text"),
            RenderError::Encode(e) => write!(f, "PNG encoding failed: {e}"),
        }
    }
}

/// Characters of `text` that the font cannot draw (whitespace and control
/// characters are not drawn and never missing), each once, in order.
pub fn missing_glyphs(text: &str) -> Vec<char> {
    let f = font();
    let mut out: Vec<char> = Vec::new();
    for c in text.chars() {
        if c.is_whitespace() || c.is_control() {
            continue;
        }
        if f.glyph_id(c).0 == 0 && !out.contains(&c) {
            out.push(c);
        }
    }
    out
}

fn text_width<S: ScaleFont<F>, F: Font>(sf: &S, s: &str) -> f32 {
    let mut w = 0.0;
    let mut prev = None;
    for c in s.chars() {
        let id = sf.glyph_id(c);
        if let Some(p) = prev {
            w += sf.kern(p, id);
        }
        w += sf.h_advance(id);
        prev = Some(id);
    }
    w
}

/// Greedy wrapping at spaces; a word wider than the line breaks between characters.
fn wrap<S: ScaleFont<F>, F: Font>(sf: &S, text: &str, max_w: f32) -> Vec<String> {
    let mut lines = Vec::new();
    for para in text.split('\n') {
        let mut line = String::new();
        for word in para.split(' ').filter(|w| !w.is_empty()) {
            let candidate = if line.is_empty() {
                word.to_string()
            } else {
                format!("{line} {word}")
            };
            if text_width(sf, &candidate) <= max_w {
                line = candidate;
                continue;
            }
            if !line.is_empty() {
                lines.push(std::mem::take(&mut line));
            }
            if text_width(sf, word) <= max_w {
                line = word.to_string();
            } else {
                for c in word.chars() {
                    let mut t = line.clone();
                    t.push(c);
                    if text_width(sf, &t) > max_w && !line.is_empty() {
                        lines.push(std::mem::take(&mut line));
                        line.push(c);
                    } else {
                        line = t;
                    }
                }
            }
        }
        lines.push(line);
    }
    lines
}

/// Render `text` (black on white, top-left aligned, `\n` for line breaks)
/// into an 8-bit grayscale PNG, at the largest size from `canvas.max_px`
/// down to `canvas.min_px` (2 px steps) at which the wrapped text fits.
pub fn render_png(text: &str, canvas: &Canvas) -> Result<Vec<u8>, RenderError> {
    let missing = missing_glyphs(text);
    if !missing.is_empty() {
        return Err(RenderError::MissingGlyphs(missing));
    }
    let f = font();
    let inner_w = (canvas.width - 2 * canvas.margin) as f32;
    let inner_h = (canvas.height - 2 * canvas.margin) as f32;
    let mut px = canvas.max_px;
    let (lines, px) = loop {
        let sf = f.as_scaled(PxScale::from(px));
        let lines = wrap(&sf, text, inner_w);
        let line_h = sf.ascent() - sf.descent() + sf.line_gap();
        let total = line_h * lines.len() as f32;
        if total <= inner_h {
            break (lines, px);
        }
        if px - 2.0 < canvas.min_px {
            return Err(RenderError::TooLong {
                lines: lines.len(),
                px: px as u32,
                height: canvas.height,
            });
        }
        px -= 2.0;
    };
    let sf = f.as_scaled(PxScale::from(px));
    let line_h = sf.ascent() - sf.descent() + sf.line_gap();
    let mut img = image::GrayImage::from_pixel(canvas.width, canvas.height, image::Luma([255]));
    let mut dark = 0usize;
    for (row, line) in lines.iter().enumerate() {
        let baseline = canvas.margin as f32 + sf.ascent() + line_h * row as f32;
        let mut x = canvas.margin as f32;
        let mut prev = None;
        for c in line.chars() {
            let id = sf.glyph_id(c);
            if let Some(p) = prev {
                x += sf.kern(p, id);
            }
            let glyph = id.with_scale_and_position(sf.scale(), point(x, baseline));
            x += sf.h_advance(id);
            prev = Some(id);
            let Some(outlined) = f.outline_glyph(glyph) else {
                continue;
            };
            let b = outlined.px_bounds();
            outlined.draw(|gx, gy, cov| {
                let px_x = b.min.x as i64 + gx as i64;
                let px_y = b.min.y as i64 + gy as i64;
                if px_x < 0
                    || px_y < 0
                    || px_x >= canvas.width as i64
                    || px_y >= canvas.height as i64
                {
                    return;
                }
                let v = (255.0 * (1.0 - cov.clamp(0.0, 1.0))).round() as u8;
                let p = img.get_pixel_mut(px_x as u32, px_y as u32);
                if v < p.0[0] {
                    if p.0[0] >= 128 && v < 128 {
                        dark += 1;
                    }
                    p.0[0] = v;
                }
            });
        }
    }
    if dark == 0 {
        return Err(RenderError::Blank);
    }
    let mut out = Vec::new();
    image::DynamicImage::ImageLuma8(img)
        .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .map_err(|e| RenderError::Encode(e.to_string()))?;
    Ok(out)
}
