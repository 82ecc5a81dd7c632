//! JPEG decoding as Pillow does it, so that JPEG inputs give transformers'
//! `pixel_values` exactly.
//!
//! Pillow decodes JPEG with libjpeg-turbo's default settings (the accurate
//! integer IDCT, fancy upsampling); so does this module, through the
//! libjpeg-turbo decoder vendored in `mozjpeg-sys` (built from C source with
//! the system C compiler, no SIMD, no shared library: libjpeg-turbo's SIMD
//! paths give the same bits as its C paths for these settings). On top of
//! the decoder it follows `PIL.JpegImagePlugin` and `Image.convert("RGB")`:
//! - 1 component: grey, replicated to RGB; 3: RGB (libjpeg converts from
//!   YCbCr as the file's JFIF/Adobe markers say); 4: CMYK read inverted
//!   (Pillow's `CMYK;I`, "assume adobe conventions"), then Pillow's
//!   `cmyk2rgb`; other counts and precisions other than 8 bits are errors;
//! - the orientation of the first EXIF `APP1` (Pillow joins later EXIF
//!   segments to it), else the XMP `tiff:Orientation`, as
//!   `ImageOps.exif_transpose` reads it;
//! - data that ends before the EOI marker is an error (Pillow: "image file
//!   is truncated", even when only the marker is missing); libjpeg's other
//!   warnings (corrupt data it can
//!   resynchronise over) are ignored, as Pillow ignores them.
//!
//! libjpeg reports fatal errors through `error_exit`, which must not
//! return: here it unwinds (the C code is built with `-fexceptions`) with
//! the message as a `String` payload, without running the panic hook; each
//! libjpeg call runs inside `core::guard::contain`, and [`decode`] turns the
//! unwind into a [`MediaError`] after freeing the decoder.

use std::os::raw::{c_int, c_long, c_ulong};

use image::{DynamicImage, RgbImage};
use mozjpeg_sys as j;

use super::{Check, Limits, MediaError};
use crate::core::guard::contain;

/// Scans a progressive JPEG may have before it is refused: a few hundred is
/// already far beyond any encoder's output, and every scan re-reads the
/// whole coefficient buffer.
pub const MAX_SCANS: c_int = 1000;

/// Whether the bytes start like a JPEG file (SOI followed by a marker).
pub fn is_jpeg(bytes: &[u8]) -> bool {
    bytes.len() >= 3 && bytes[0] == 0xFF && bytes[1] == 0xD8 && bytes[2] == 0xFF
}

/// What the callbacks report back.
struct State {
    scans_refused: bool,
}

unsafe fn message(cinfo: &mut j::jpeg_common_struct) -> String {
    let err = &*cinfo.err;
    let mut buf = [0u8; 200]; // JMSG_LENGTH_MAX
    if let Some(f) = err.format_message {
        // The binding types the buffer as `&[u8; 80]`; libjpeg writes up to
        // JMSG_LENGTH_MAX (200) bytes, so pass a 200-byte buffer by pointer.
        let f: unsafe extern "C-unwind" fn(&mut j::jpeg_common_struct, *mut u8) =
            std::mem::transmute(f);
        f(cinfo, buf.as_mut_ptr());
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

unsafe extern "C-unwind" fn error_exit(cinfo: &mut j::jpeg_common_struct) {
    let msg = message(cinfo);
    std::panic::resume_unwind(Box::new(msg));
}

unsafe extern "C-unwind" fn emit_message(cinfo: &mut j::jpeg_common_struct, level: c_int) {
    if level >= 0 {
        return; // trace messages
    }
    let err = &mut *cinfo.err;
    err.num_warnings += 1;
    if err.msg_code == j::JWRN_JPEG_EOF as c_int {
        std::panic::resume_unwind(Box::new(
            "the JPEG data ends before the image does (the file is truncated)".to_string(),
        ));
    }
}

unsafe extern "C-unwind" fn output_message(_cinfo: &mut j::jpeg_common_struct) {}

unsafe extern "C-unwind" fn progress(cinfo: &mut j::jpeg_common_struct) {
    if cinfo.is_decompressor == 0 {
        return;
    }
    let d = &*(cinfo as *mut j::jpeg_common_struct as *const j::jpeg_decompress_struct);
    if d.input_scan_number > MAX_SCANS {
        let state = &mut *(cinfo.client_data as *mut State);
        state.scans_refused = true;
        std::panic::resume_unwind(Box::new(format!(
            "the progressive JPEG has more than {MAX_SCANS} scans"
        )));
    }
}

/// What the header says, read before any pixel is allocated.
struct Header {
    width: u32,
    height: u32,
    components: c_int,
    exif: Vec<u8>,
    xmp: Option<Vec<u8>>,
}

/// Decode a JPEG file's bytes to RGB as `load_image` (Pillow) sees it.
pub fn decode(bytes: &[u8], name: &str, limits: &Limits) -> Result<RgbImage, MediaError> {
    let bad = |reason: String| {
        MediaError::decode(
            name,
            reason,
            "the file is truncated or corrupt; re-export or re-download it",
        )
    };
    // libjpeg keeps pointers into these: they must not move until destroyed.
    let mut err: Box<j::jpeg_error_mgr> = Box::new(unsafe { std::mem::zeroed() });
    let mut cinfo: Box<j::jpeg_decompress_struct> = Box::new(unsafe { std::mem::zeroed() });
    let mut prog: Box<j::jpeg_progress_mgr> = Box::new(unsafe { std::mem::zeroed() });
    let mut state = Box::new(State {
        scans_refused: false,
    });
    unsafe {
        j::jpeg_std_error(&mut err);
        err.error_exit = Some(error_exit);
        err.emit_message = Some(emit_message);
        err.output_message = Some(output_message);
        cinfo.common.err = &mut *err;
    }
    let created = contain(|| unsafe { j::jpeg_create_decompress(&mut *cinfo) });
    if let Err(e) = created {
        return Err(bad(e));
    }
    cinfo.common.client_data = &mut *state as *mut State as *mut _;
    prog.progress_monitor = Some(progress);
    cinfo.common.progress = &mut *prog;
    let out = decode_with(&mut cinfo, bytes, name, limits);
    // Frees everything libjpeg allocated, after success or an error.
    let _ = contain(|| unsafe { j::jpeg_destroy_decompress(&mut cinfo) });
    match out {
        Ok(Ok(img)) => Ok(img),
        Ok(Err(e)) => Err(e),
        Err(reason) if state.scans_refused => Err(MediaError::Limit {
            name: name.to_string(),
            reason,
            which: "jpeg_scans",
        }),
        Err(reason) if reason.starts_with("Unsupported JPEG data precision") => {
            Err(MediaError::Unsupported {
                name: name.to_string(),
                reason: format!("{reason} (Pillow reads 8-bit JPEG only)"),
                fix: "convert the image to an 8-bit JPEG or PNG".into(),
            })
        }
        Err(reason) => Err(bad(reason)),
    }
}

/// The outer `Err` is libjpeg's own error message; the inner one a refusal
/// of ours (limits, layer count).
fn decode_with(
    cinfo: &mut j::jpeg_decompress_struct,
    bytes: &[u8],
    name: &str,
    limits: &Limits,
) -> Result<Result<RgbImage, MediaError>, String> {
    let header = contain(|| unsafe {
        j::jpeg_mem_src(cinfo, bytes.as_ptr(), bytes.len() as c_ulong);
        j::jpeg_save_markers(cinfo, 0xE1, 0xFFFF); // APP1: EXIF and XMP
        j::jpeg_read_header(cinfo, 1);
        let mut exif: Vec<u8> = Vec::new();
        let mut xmp = None;
        let mut m = cinfo.marker_list;
        while !m.is_null() {
            let mk = &*m;
            let data = std::slice::from_raw_parts(mk.data, mk.data_length as usize);
            if mk.marker == 0xE1 && data.starts_with(b"Exif\0\0") {
                if exif.is_empty() {
                    exif.extend_from_slice(data);
                } else {
                    exif.extend_from_slice(&data[6..]);
                }
            } else if mk.marker == 0xE1 && data.starts_with(b"http://ns.adobe.com/xap/1.0/\0") {
                xmp = Some(data[29..].to_vec());
            }
            m = mk.next;
        }
        Header {
            width: cinfo.image_width,
            height: cinfo.image_height,
            components: cinfo.num_components,
            exif,
            xmp,
        }
    })?;
    if let Err(e) = limits.check_size(name, header.width, header.height) {
        return Ok(Err(e));
    }
    let comps = header.components;
    let space = match comps {
        1 => j::JCS_GRAYSCALE,
        3 => j::JCS_RGB,
        4 => j::JCS_CMYK,
        n => {
            return Ok(Err(MediaError::Unsupported {
                name: name.to_string(),
                reason: format!("a JPEG with {n} components (Pillow reads 1, 3 or 4)"),
                fix: "convert the image to PNG or an RGB JPEG".into(),
            }))
        }
    };
    // The output plus, for a progressive file, the whole coefficient buffer
    // (2 bytes per sample at most): bounded before libjpeg allocates.
    let pixels = header.width as u64 * header.height as u64;
    let need = pixels * comps as u64 * 3;
    if need > limits.max_alloc {
        return Ok(Err(MediaError::Limit {
            name: name.to_string(),
            reason: format!(
                "decoding a {}x{} JPEG needs about {} MiB, over the {} MiB decoder limit",
                header.width,
                header.height,
                need >> 20,
                limits.max_alloc >> 20
            ),
            which: "max_alloc",
        }));
    }
    let (w, h) = (header.width as usize, header.height as usize);
    let raw = contain(|| unsafe {
        cinfo.out_color_space = space;
        (*cinfo.common.mem).max_memory_to_use = limits.max_alloc.min(c_long::MAX as u64) as c_long;
        j::jpeg_start_decompress(cinfo);
        let ow = cinfo.output_width as usize;
        let oh = cinfo.output_height as usize;
        let oc = cinfo.output_components as usize;
        assert!(
            ow == w && oh == h && oc == comps as usize,
            "libjpeg output size"
        );
        let stride = w * oc;
        let mut buf = vec![0u8; stride * h];
        while (cinfo.output_scanline as usize) < h {
            let row = cinfo.output_scanline as usize;
            let mut ptr = buf[row * stride..].as_mut_ptr();
            let n = j::jpeg_read_scanlines(cinfo, &mut ptr, 1);
            assert!(n == 1, "libjpeg read no scanline");
        }
        j::jpeg_finish_decompress(cinfo);
        buf
    })?;
    let rgb: Vec<u8> = match comps {
        1 => raw.iter().flat_map(|&g| [g, g, g]).collect(),
        3 => raw,
        _ => raw.chunks_exact(4).flat_map(cmyk_inverted_to_rgb).collect(),
    };
    let img = RgbImage::from_raw(header.width, header.height, rgb).expect("size");
    let orientation = orientation(&header.exif, header.xmp.as_deref());
    let mut img = DynamicImage::ImageRgb8(img);
    img.apply_orientation(orientation);
    Ok(Ok(img.into_rgb8()))
}

/// Pillow's `CMYK;I` unpacker (every channel inverted) followed by its
/// `cmyk2rgb`: `nk = 255 - k`, each channel `nk - c * nk / 255` with
/// Pillow's rounding (`MULDIV255`).
fn cmyk_inverted_to_rgb(p: &[u8]) -> [u8; 3] {
    let [c, m, y, k] = [255 - p[0], 255 - p[1], 255 - p[2], 255 - p[3]].map(|v| v as i32);
    let nk = 255 - k;
    let muldiv255 = |a: i32, b: i32| {
        let t = a * b + 128;
        ((t >> 8) + t) >> 8
    };
    let ch = |v: i32| (nk - muldiv255(v, nk)).clamp(0, 255) as u8;
    [ch(c), ch(m), ch(y)]
}

/// The orientation `ImageOps.exif_transpose` applies: the EXIF tag if
/// present, else the first `tiff:Orientation` in the XMP packet.
fn orientation(exif: &[u8], xmp: Option<&[u8]>) -> image::metadata::Orientation {
    use image::metadata::Orientation;
    if exif.len() > 6 {
        if let Some(o) = exif_orientation(&exif[6..]) {
            return Orientation::from_exif(o).unwrap_or(Orientation::NoTransforms);
        }
    }
    if let Some(x) = xmp {
        let pat = b"tiff:Orientation";
        let mut i = 0;
        while let Some(p) = x[i..].windows(pat.len()).position(|w| w == pat) {
            let at = i + p + pat.len();
            let rest = &x[at..];
            let digit = match rest {
                [b'=', b'"', d, ..] | [b'>', d, ..] if d.is_ascii_digit() => Some(d - b'0'),
                _ => None,
            };
            if let Some(d) = digit {
                return Orientation::from_exif(d).unwrap_or(Orientation::NoTransforms);
            }
            i = at;
        }
    }
    Orientation::NoTransforms
}

/// The Orientation tag (0x0112) of IFD0 in a TIFF-structured EXIF block,
/// whatever its value (an unknown value means no transform, as in Pillow).
fn exif_orientation(tiff: &[u8]) -> Option<u8> {
    let le = match tiff.get(..4)? {
        [b'I', b'I', 42, 0] => true,
        [b'M', b'M', 0, 42] => false,
        _ => return None,
    };
    let u16_at = |o: usize| -> Option<u16> {
        let b = tiff.get(o..o + 2)?;
        Some(if le {
            u16::from_le_bytes([b[0], b[1]])
        } else {
            u16::from_be_bytes([b[0], b[1]])
        })
    };
    let u32_at = |o: usize| -> Option<u32> {
        let b = tiff.get(o..o + 4)?;
        let a = [b[0], b[1], b[2], b[3]];
        Some(if le {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        })
    };
    let ifd = u32_at(4)? as usize;
    let n = u16_at(ifd)? as usize;
    for e in 0..n {
        let at = ifd.checked_add(2 + e * 12)?;
        if u16_at(at)? == 0x0112 {
            let ty = u16_at(at + 2)?;
            return match ty {
                3 => u16_at(at + 8).map(|v| v.min(255) as u8), // SHORT
                4 => u32_at(at + 8).map(|v| v.min(255) as u8), // LONG
                _ => None,
            };
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmyk_conversion_is_pillows() {
        // Inverted input: 255 - v. White paper (0 ink) is white; full black ink is black.
        assert_eq!(cmyk_inverted_to_rgb(&[255, 255, 255, 255]), [255, 255, 255]);
        assert_eq!(cmyk_inverted_to_rgb(&[255, 255, 255, 0]), [0, 0, 0]);
        // c = 255 - 55 = 200, k = 255 - 205 = 50 → nk 205, 205 - round(200*205/255) = 205 - 161 = 44
        assert_eq!(cmyk_inverted_to_rgb(&[55, 255, 255, 205])[0], 44);
    }

    #[test]
    fn orientation_from_exif_and_xmp() {
        use image::metadata::Orientation;
        // Little-endian TIFF, one IFD entry: Orientation SHORT 6.
        let mut t = b"Exif\0\0II*\0\x08\0\0\0\x01\0\x12\x01\x03\0\x01\0\0\0\x06\0\0\0".to_vec();
        assert_eq!(orientation(&t, None), Orientation::Rotate90);
        t[6 + 18] = 9; // an unknown value: no transform, and XMP is not consulted
        assert_eq!(
            orientation(&t, Some(b"<x tiff:Orientation=\"3\"/>")),
            Orientation::NoTransforms
        );
        assert_eq!(
            orientation(&[], Some(b"<tiff:Orientation>8</tiff:Orientation>")),
            Orientation::Rotate270
        );
        assert_eq!(orientation(&[], None), Orientation::NoTransforms);
    }

    #[test]
    fn not_a_jpeg_and_garbage_are_errors_not_crashes() {
        assert!(!is_jpeg(b"\x89PNG"));
        let l = Limits::default();
        let e = decode(b"\xFF\xD8\xFF\xE0garbage", "x.jpg", &l).unwrap_err();
        assert!(e.to_string().contains("x.jpg"), "{e}");
    }
}
