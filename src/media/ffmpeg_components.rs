// What the built-in FFmpeg is configured with: one list, read by build.rs
// (`include!`, to pass `--enable-demuxer=…` etc. to configure) and by
// src/media/video.rs (`BUILT_DECODERS`, for errors and `anjeon doctor`).

/// Containers the built-in FFmpeg reads.
pub const BUILT_DEMUXERS: &[&str] = &[
    "mov", "matroska", "avi", "mpegts", "mpegps", "flv", "h264", "hevc", "m4v", "ivf",
];

/// Codecs the built-in FFmpeg decodes. AV1 is not among them (FFmpeg
/// decodes AV1 in software only through libdav1d or libaom): with the `av1`
/// feature (default) rav1d decodes it.
pub const BUILT_DECODERS: &[&str] = &[
    "h264",
    "hevc",
    "vp8",
    "vp9",
    "mpeg4",
    "h263",
    "mpeg1video",
    "mpeg2video",
    "mjpeg",
];

/// Bitstream parsers the demuxers use.
pub const BUILT_PARSERS: &[&str] = &[
    "h264",
    "hevc",
    "vp8",
    "vp9",
    "mpeg4video",
    "mpegvideo",
    "h263",
    "mjpeg",
    "av1",
];
