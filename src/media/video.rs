//! Video decoding to RGB frames.
//!
//! * mp4/webm/mkv/... through FFmpeg (feature `video-ffmpeg`, on by default:
//!   built from source by build.rs and linked statically; or a system FFmpeg
//!   with `system-ffmpeg`), called through the small C shim
//!   src/media/ffshim.c; frames are converted to RGB24 with swscale's bicubic
//!   flags and turned upright by the stream's display matrix, as
//!   `ffmpeg -i IN -pix_fmt rgb24` does;
//! * animated GIF and APNG with the `image` crate (always available);
//! * a folder of frames: image files sorted by name; the frame rate is read
//!   from `fps.txt` in the folder, else 24 (transformers' default when a
//!   video has no metadata).

use std::collections::BTreeSet;
use std::io::Cursor;
use std::path::Path;

use image::{AnimationDecoder, RgbImage};

use super::Check as _;
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
                crate::core::sample::MediaKind::from_extension(p),
                Some((crate::core::sample::MediaKind::Image, _))
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
        reason: "this build has no FFmpeg video decoder (it was built with --no-default-features)".into(),
        fix: "rebuild with the default features (FFmpeg is then built from source inside `cargo build`), or pass an animated GIF/APNG or a folder of frames".into(),
    })
}

// BUILT_DEMUXERS, BUILT_DECODERS, BUILT_PARSERS: what build.rs configures
// the built-in FFmpeg with (a system FFmpeg may have more).
include!("ffmpeg_components.rs");

/// What [`ffmpeg_decoders`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FfmpegDecoders {
    /// libavcodec's major, minor and micro version.
    pub avcodec: (u32, u32, u32),
    /// Which of the asked codecs this build decodes.
    pub decoders: Vec<&'static str>,
}

/// The FFmpeg behind video decoding: its libavcodec version and which of
/// `names` this build can decode (AV1 also through rav1d). `None` in a
/// build without FFmpeg.
pub fn ffmpeg_decoders(names: &[&'static str]) -> Option<FfmpegDecoders> {
    #[cfg(feature = "video-ffmpeg")]
    {
        // SAFETY: plain functions of the shim, NUL-terminated input.
        let v = unsafe { ffi::anjeon_ffmpeg_avcodec_version() };
        let have = names
            .iter()
            .filter(|n| {
                let c = std::ffi::CString::new(**n).expect("codec name");
                (cfg!(feature = "av1") && **n == "av1")
                    || unsafe { ffi::anjeon_ffmpeg_has_decoder(c.as_ptr()) == 1 }
            })
            .copied()
            .collect();
        Some(FfmpegDecoders {
            avcodec: (v >> 16, (v >> 8) & 0xff, v & 0xff),
            decoders: have,
        })
    }
    #[cfg(not(feature = "video-ffmpeg"))]
    {
        let _ = names;
        None
    }
}

/// The C side is src/media/ffshim.c (built by build.rs).
#[cfg(feature = "video-ffmpeg")]
mod ffi {
    use std::os::raw::{c_char, c_int};

    /// `AnjeonVideoInfo` in ffshim.c.
    #[repr(C)]
    pub struct Info {
        pub width: i32,
        pub height: i32,
        pub header_frames: i64,
        pub avg_fps: f64,
        pub r_fps: f64,
        pub duration_secs: f64,
        pub has_matrix: i32,
        pub matrix: [i32; 9],
        pub rotation: f64,
        pub codec: [c_char; 32],
        pub external: i32,
    }

    #[repr(C)]
    pub struct AnjeonVideo {
        _opaque: [u8; 0],
    }

    pub const OK: c_int = 0;
    pub const NO_VIDEO: c_int = 2;
    pub const NO_DECODER: c_int = 3;
    pub const DECODER: c_int = 4;
    pub const NOMEM: c_int = 5;

    extern "C" {
        pub fn anjeon_video_open(
            path: *const c_char,
            out: *mut *mut AnjeonVideo,
            info: *mut Info,
            err: *mut c_char,
            errlen: usize,
        ) -> c_int;
        pub fn anjeon_video_next(v: *mut AnjeonVideo, w: *mut i32, h: *mut i32) -> c_int;
        pub fn anjeon_video_rgb(
            v: *mut AnjeonVideo,
            dst: *mut u8,
            len: usize,
            err: *mut c_char,
            errlen: usize,
        ) -> c_int;
        pub fn anjeon_video_packet_errors(v: *const AnjeonVideo) -> i64;
        #[cfg(feature = "av1")]
        pub fn anjeon_video_packet(
            v: *mut AnjeonVideo,
            data: *mut *const u8,
            size: *mut usize,
        ) -> c_int;
        #[cfg(feature = "av1")]
        #[allow(clippy::too_many_arguments)]
        pub fn anjeon_video_planes_rgb(
            v: *mut AnjeonVideo,
            planes: *const *const u8,
            strides: *const isize,
            w: i32,
            h: i32,
            layout: i32,
            bpc: i32,
            matrix: i32,
            full: i32,
            dst: *mut u8,
            len: usize,
            err: *mut c_char,
            errlen: usize,
        ) -> c_int;
        pub fn anjeon_video_close(v: *mut AnjeonVideo);
        pub fn anjeon_ffmpeg_avcodec_version() -> u32;
        pub fn anjeon_ffmpeg_has_decoder(name: *const c_char) -> c_int;
    }
}

/// An open FFmpeg decoder; closed on drop.
#[cfg(feature = "video-ffmpeg")]
struct FfVideo {
    ptr: *mut ffi::AnjeonVideo,
    info: ffi::Info,
    /// AV1 pictures decoded by rav1d from the packets FFmpeg demuxes.
    #[cfg(feature = "av1")]
    av1: Option<av1::Av1>,
}

#[cfg(feature = "video-ffmpeg")]
impl Drop for FfVideo {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from anjeon_video_open and is closed once.
        unsafe { ffi::anjeon_video_close(self.ptr) }
    }
}

#[cfg(feature = "video-ffmpeg")]
fn c_text(buf: &[std::os::raw::c_char]) -> String {
    let bytes: Vec<u8> = buf
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(feature = "video-ffmpeg")]
impl FfVideo {
    fn open(path: &Path, name: &str) -> Result<FfVideo, MediaError> {
        #[cfg(unix)]
        let bytes = {
            use std::os::unix::ffi::OsStrExt;
            path.as_os_str().as_bytes().to_vec()
        };
        #[cfg(not(unix))]
        let bytes = path.to_string_lossy().into_owned().into_bytes();
        let cpath = std::ffi::CString::new(bytes).map_err(|_| MediaError::Decode {
            name: name.to_string(),
            reason: "the path contains a NUL byte".into(),
            fix: "rename the file".into(),
        })?;
        let mut ptr = std::ptr::null_mut();
        let mut info: ffi::Info = unsafe { std::mem::zeroed() };
        let mut err = [0 as std::os::raw::c_char; 256];
        // SAFETY: valid pointers; the shim writes at most `err.len()` bytes.
        let r = unsafe {
            ffi::anjeon_video_open(
                cpath.as_ptr(),
                &mut ptr,
                &mut info,
                err.as_mut_ptr(),
                err.len(),
            )
        };
        let reason = c_text(&err);
        let codec = c_text(&info.codec);
        match r {
            ffi::OK => {
                #[cfg(feature = "av1")]
                let av1 = if info.external == 1 {
                    match av1::Av1::new() {
                        Ok(a) => Some(a),
                        Err(reason) => {
                            // SAFETY: opened above, closed once.
                            unsafe { ffi::anjeon_video_close(ptr) };
                            return Err(MediaError::Decode {
                                name: name.to_string(),
                                reason,
                                fix: "re-encode the video as H.264 (ffmpeg -i in -c:v libx264 out.mp4)".into(),
                            });
                        }
                    }
                } else {
                    None
                };
                Ok(FfVideo {
                    ptr,
                    info,
                    #[cfg(feature = "av1")]
                    av1,
                })
            }
            ffi::NO_VIDEO => Err(MediaError::NoVideoStream {
                name: name.to_string(),
            }),
            ffi::NO_DECODER | ffi::DECODER => Err(MediaError::Unsupported {
                name: name.to_string(),
                reason: format!("{reason} (codec {codec})"),
                fix: format!(
                    "re-encode the video as H.264 (ffmpeg -i in -c:v libx264 out.mp4){}",
                    if cfg!(feature = "system-ffmpeg") {
                        String::new()
                    } else {
                        format!(
                            ", or build with `--no-default-features --features system-ffmpeg` against a system FFmpeg that decodes {codec}; the built-in FFmpeg decodes {}",
                            BUILT_DECODERS.join(", ")
                        )
                    }
                ),
            }),
            ffi::NOMEM => Err(MediaError::Decode {
                name: name.to_string(),
                reason: "out of memory opening the video".into(),
                fix: "free memory or lower --jobs".into(),
            }),
            _ => Err(MediaError::Decode {
                name: name.to_string(),
                reason: format!("FFmpeg: {reason}"),
                fix: "the file is truncated, corrupt or not a video; re-encode or re-download it"
                    .into(),
            }),
        }
    }

    /// The next decoded frame's size, or `None` at the end.
    fn next(&mut self) -> Option<(u32, u32)> {
        #[cfg(feature = "av1")]
        if let Some(a) = self.av1.as_mut() {
            let ptr = self.ptr;
            return a.next(|| {
                let (mut data, mut size) = (std::ptr::null(), 0usize);
                // SAFETY: `ptr` is open; the packet stays valid until the next call.
                let r = unsafe { ffi::anjeon_video_packet(ptr, &mut data, &mut size) };
                (r == 1 && !data.is_null())
                    .then(|| unsafe { std::slice::from_raw_parts(data, size) }.to_vec())
            });
        }
        let (mut w, mut h) = (0i32, 0i32);
        // SAFETY: `ptr` is open.
        let r = unsafe { ffi::anjeon_video_next(self.ptr, &mut w, &mut h) };
        (r == 1).then_some((w.max(0) as u32, h.max(0) as u32))
    }

    /// The frame `next` returned, as RGB24 (swscale, bicubic flags).
    fn rgb(&mut self, w: u32, h: u32, name: &str) -> Result<RgbImage, MediaError> {
        let mut buf = vec![0u8; w as usize * h as usize * 3];
        let mut err = [0 as std::os::raw::c_char; 256];
        #[cfg(feature = "av1")]
        if let Some(a) = self.av1.as_ref() {
            let r = a.to_rgb(self.ptr, &mut buf, &mut err);
            if r != 0 {
                return Err(MediaError::Decode {
                    name: name.to_string(),
                    reason: format!("AV1 picture to RGB: {}", c_text(&err)),
                    fix: "re-encode the video as H.264 (ffmpeg -i in -c:v libx264 out.mp4)".into(),
                });
            }
            return Ok(RgbImage::from_raw(w, h, buf).expect("w*h*3 bytes"));
        }
        // SAFETY: `buf` holds w*h*3 bytes, the frame's size.
        let r = unsafe {
            ffi::anjeon_video_rgb(
                self.ptr,
                buf.as_mut_ptr(),
                buf.len(),
                err.as_mut_ptr(),
                err.len(),
            )
        };
        if r != 0 {
            return Err(MediaError::Decode {
                name: name.to_string(),
                reason: format!("FFmpeg: {}", c_text(&err)),
                fix: "re-encode the video as H.264 (ffmpeg -i in -c:v libx264 out.mp4)".into(),
            });
        }
        Ok(RgbImage::from_raw(w, h, buf).expect("w*h*3 bytes"))
    }

    fn packet_errors(&self) -> usize {
        #[cfg(feature = "av1")]
        if let Some(a) = self.av1.as_ref() {
            return a.errors;
        }
        // SAFETY: `ptr` is open.
        unsafe { ffi::anjeon_video_packet_errors(self.ptr) }.max(0) as usize
    }
}

// rav1d exports dav1d's C API under dav1d's own symbol names; a system
// FFmpeg linked to libdav1d would call those instead of its own library
// (different struct layouts: measured, a crash). A system FFmpeg decodes AV1
// through its libdav1d anyway.
#[cfg(all(feature = "system-ffmpeg", feature = "av1"))]
compile_error!("features `system-ffmpeg` and `av1` cannot be combined: rav1d's exported dav1d_* symbols would replace the system libdav1d that FFmpeg calls. Use `--no-default-features --features system-ffmpeg` (AV1 through the system's libdav1d) or the default features (built-in FFmpeg + rav1d).");

/// AV1 through rav1d (the Rust port of dav1d, bit-exact with it), fed the
/// packets FFmpeg demuxes; pictures are converted to RGB by the same code
/// as FFmpeg's own frames, so the result is what `ffmpeg` with libdav1d
/// gives.
#[cfg(feature = "av1")]
mod av1 {
    use rav1d::include::dav1d::data::Dav1dData;
    use rav1d::include::dav1d::dav1d::{Dav1dContext, Dav1dSettings};
    use rav1d::include::dav1d::picture::Dav1dPicture;
    use rav1d::src::lib::{
        dav1d_close, dav1d_data_create, dav1d_data_unref, dav1d_default_settings,
        dav1d_get_picture, dav1d_open, dav1d_picture_unref, dav1d_send_data,
    };
    use std::ptr::NonNull;

    /// dav1d's `DAV1D_ERR(EAGAIN)`.
    #[cfg(unix)]
    const EAGAIN: i32 = -libc::EAGAIN;
    #[cfg(not(unix))]
    const EAGAIN: i32 = -11;

    pub struct Av1 {
        ctx: Option<Dav1dContext>,
        pic: Dav1dPicture,
        has_pic: bool,
        pending: Dav1dData,
        eof: bool,
        /// Packets or pictures the decoder rejected.
        pub errors: usize,
    }

    impl Av1 {
        pub fn new() -> Result<Av1, String> {
            let mut s = std::mem::MaybeUninit::<Dav1dSettings>::uninit();
            // SAFETY: dav1d_default_settings writes every field.
            let mut s = unsafe {
                dav1d_default_settings(NonNull::new(s.as_mut_ptr()).expect("non-null"));
                s.assume_init()
            };
            // One thread, one frame in flight: the output does not depend on
            // either, and memory stays small.
            s.n_threads = 1;
            s.max_frame_delay = 1;
            let mut ctx: Option<Dav1dContext> = None;
            // SAFETY: valid pointers to a settings struct and a context slot.
            let r = unsafe { dav1d_open(NonNull::new(&mut ctx), NonNull::new(&mut s)) };
            if r.0 != 0 || ctx.is_none() {
                return Err(format!("the AV1 decoder (rav1d) did not start ({})", r.0));
            }
            Ok(Av1 {
                ctx,
                pic: Dav1dPicture::default(),
                has_pic: false,
                pending: Dav1dData::default(),
                eof: false,
                errors: 0,
            })
        }

        /// The next picture's size, feeding packets from `packet` as needed;
        /// `None` at the end.
        pub fn next(&mut self, mut packet: impl FnMut() -> Option<Vec<u8>>) -> Option<(u32, u32)> {
            if self.has_pic {
                // SAFETY: a picture returned by dav1d_get_picture, released once.
                unsafe { dav1d_picture_unref(NonNull::new(&mut self.pic)) };
                self.has_pic = false;
            }
            let mut failures = 0;
            loop {
                // SAFETY: `ctx` is open; `pic` is an empty picture to fill.
                let r = unsafe { dav1d_get_picture(self.ctx, NonNull::new(&mut self.pic)) };
                if r.0 == 0 {
                    self.has_pic = true;
                    let p = &self.pic.p;
                    return Some((p.w.max(0) as u32, p.h.max(0) as u32));
                }
                if r.0 != EAGAIN {
                    self.errors += 1;
                    failures += 1;
                    if failures > 64 {
                        return None;
                    }
                    continue;
                }
                if self.pending.sz > 0 {
                    // SAFETY: `pending` holds data from dav1d_data_create.
                    let r = unsafe { dav1d_send_data(self.ctx, NonNull::new(&mut self.pending)) };
                    if r.0 != 0 && r.0 != EAGAIN {
                        self.errors += 1;
                        // SAFETY: drop the rejected packet.
                        unsafe { dav1d_data_unref(NonNull::new(&mut self.pending)) };
                    }
                    continue;
                }
                if self.eof {
                    return None;
                }
                match packet() {
                    Some(bytes) => {
                        // SAFETY: dav1d allocates `bytes.len()` bytes for us to fill.
                        let dst = unsafe {
                            dav1d_data_create(NonNull::new(&mut self.pending), bytes.len())
                        };
                        if dst.is_null() {
                            self.errors += 1;
                            continue;
                        }
                        // SAFETY: `dst` has room for `bytes.len()` bytes.
                        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst, bytes.len()) };
                    }
                    None => self.eof = true,
                }
            }
        }

        /// The current picture as RGB24 into `buf` (0 on success).
        pub fn to_rgb(
            &self,
            v: *mut super::ffi::AnjeonVideo,
            buf: &mut [u8],
            err: &mut [std::os::raw::c_char],
        ) -> i32 {
            let p = &self.pic;
            let planes: [*const u8; 3] = p
                .data
                .map(|d| d.map_or(std::ptr::null(), |d| d.as_ptr() as *const u8));
            let strides: [isize; 3] = [p.stride[0], p.stride[1], p.stride[1]];
            // SAFETY: `seq_hdr` of a returned picture points to its header.
            let (matrix, full) = p
                .seq_hdr
                .map(|h| unsafe {
                    let h = h.as_ref();
                    (h.mtrx as i32, h.color_range as i32)
                })
                .unwrap_or((2, 0));
            // SAFETY: the planes belong to the current picture; `buf` holds w*h*3.
            unsafe {
                super::ffi::anjeon_video_planes_rgb(
                    v,
                    planes.as_ptr(),
                    strides.as_ptr(),
                    p.p.w,
                    p.p.h,
                    p.p.layout as i32,
                    p.p.bpc,
                    matrix,
                    full,
                    buf.as_mut_ptr(),
                    buf.len(),
                    err.as_mut_ptr(),
                    err.len(),
                )
            }
        }
    }

    impl Drop for Av1 {
        fn drop(&mut self) {
            // SAFETY: each released once; dav1d_close takes the context slot.
            unsafe {
                if self.has_pic {
                    dav1d_picture_unref(NonNull::new(&mut self.pic));
                }
                if self.pending.sz > 0 {
                    dav1d_data_unref(NonNull::new(&mut self.pending));
                }
                dav1d_close(NonNull::new(&mut self.ctx));
            }
        }
    }
}

/// How a display matrix turns decoded frames upright, as the `ffmpeg`
/// command line's autorotation does (transpose/hflip/vflip).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Orient {
    Upright,
    /// 90° clockwise (`transpose=clock`).
    Clock,
    /// 90° counter-clockwise (`transpose=cclock`).
    CClock,
    /// Transpose: `transpose=cclock_flip`.
    CClockFlip,
    /// Anti-transpose: `transpose=clock_flip`.
    ClockFlip,
    /// Flip each of the axes that is set.
    Flip {
        h: bool,
        v: bool,
    },
}

impl Orient {
    /// From a display matrix and `av_display_rotation_get`'s angle.
    /// `None` when the angle is not a multiple of 90° (left as decoded).
    pub fn from_matrix(m: &[i32; 9], rotation_get: f64) -> Option<Orient> {
        let mut theta = -rotation_get.round();
        theta -= 360.0 * (theta / 360.0 + 0.9 / 360.0).floor();
        let near = |a: f64| (theta - a).abs() < 1.0;
        Some(if near(90.0) {
            if m[3] > 0 {
                Orient::CClockFlip
            } else {
                Orient::Clock
            }
        } else if near(180.0) {
            Orient::Flip {
                h: m[0] < 0,
                v: m[4] < 0,
            }
        } else if near(270.0) {
            if m[3] < 0 {
                Orient::ClockFlip
            } else {
                Orient::CClock
            }
        } else if theta.abs() > 1.0 {
            return None;
        } else if m[4] < 0 {
            Orient::Flip { h: false, v: true }
        } else {
            Orient::Upright
        })
    }

    /// Apply to an RGB frame.
    pub fn apply(self, img: RgbImage) -> RgbImage {
        let (w, h) = img.dimensions();
        let px = |x: u32, y: u32| *img.get_pixel(x, y);
        match self {
            Orient::Upright | Orient::Flip { h: false, v: false } => img,
            Orient::Flip { h: fh, v: fv } => RgbImage::from_fn(w, h, |x, y| {
                px(
                    if fh { w - 1 - x } else { x },
                    if fv { h - 1 - y } else { y },
                )
            }),
            Orient::Clock => RgbImage::from_fn(h, w, |x, y| px(y, h - 1 - x)),
            Orient::CClock => RgbImage::from_fn(h, w, |x, y| px(w - 1 - y, x)),
            Orient::CClockFlip => RgbImage::from_fn(h, w, |x, y| px(y, x)),
            Orient::ClockFlip => RgbImage::from_fn(h, w, |x, y| px(w - 1 - y, h - 1 - x)),
        }
    }
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
        log::warn!(
            "{name}: header says {} frames, {decoded} decoded; sampling from {decoded}",
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
    let mut dec = FfVideo::open(path, name)?;
    let info = &dec.info;
    let fps = [info.avg_fps, info.r_fps]
        .into_iter()
        .find(|f| *f > 0.0 && f.is_finite())
        .unwrap_or(24.0);
    let header_frames = info.header_frames.max(0) as usize;
    // Containers without a frame count (webm/mkv): estimate it from the
    // duration; a wrong estimate is corrected by a second pass.
    let estimated = {
        let n = (info.duration_secs * fps).round();
        (n >= 1.0 && n.is_finite()).then_some(n as usize)
    };
    let orient = if info.has_matrix == 1 {
        match Orient::from_matrix(&info.matrix, info.rotation) {
            Some(o) => o,
            None => {
                if known_total.is_none() {
                    log::warn!("{name}: display rotation {:.1}° is not a multiple of 90°; frames are used as decoded",
                        -info.rotation
                    );
                }
                Orient::Upright
            }
        }
    } else {
        Orient::Upright
    };
    limits.check_size(name, info.width.max(0) as u32, info.height.max(0) as u32)?;
    // Frames to keep; `None` = the frame count is unknown: keep everything
    // and sample afterwards.
    let total_guess = known_total
        .or((header_frames > 0).then_some(header_frames))
        .or(estimated);
    let wanted: Option<BTreeSet<usize>> = total_guess.map(|t| sample(t, fps).into_iter().collect());
    let mut keep = Keeper::new(name, limits);
    let mut count = 0usize;
    while let Some((fw, fh)) = dec.next() {
        let i = count;
        count += 1;
        if wanted.as_ref().is_some_and(|s| !s.contains(&i)) {
            continue;
        }
        limits.check_size(name, fw, fh)?;
        let img = dec.rgb(fw, fh, name)?;
        keep.push(i, orient.apply(img))?;
    }
    let packet_errors = dec.packet_errors();
    if count == 0 {
        return Err(MediaError::Decode {
            name: name.to_string(),
            reason: format!(
                "no frame could be decoded ({packet_errors} bad packets); the file is truncated or corrupt"
            ),
            fix: "re-encode or re-download the video".into(),
        });
    }
    if packet_errors > 0 && known_total.is_none() {
        log::warn!("{name}: {packet_errors} packets could not be decoded");
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
