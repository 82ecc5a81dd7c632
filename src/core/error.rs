//! Typed errors for the library. Every input error names where it happened
//! (file, line or row, item id) and what the user can do about it.

use std::fmt;
use std::path::{Path, PathBuf};

/// Where in the input a problem is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: PathBuf,
    /// 1-based line (text formats) or row (parquet, CSV records).
    pub line: Option<usize>,
    pub item: Option<String>,
}

impl Location {
    pub fn file(file: impl Into<PathBuf>) -> Self {
        Location {
            file: file.into(),
            line: None,
            item: None,
        }
    }
    pub fn line(file: impl Into<PathBuf>, line: usize) -> Self {
        Location {
            file: file.into(),
            line: Some(line),
            item: None,
        }
    }
    pub fn with_item(mut self, id: impl Into<String>) -> Self {
        self.item = Some(id.into());
        self
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
        }
        if let Some(id) = &self.item {
            write!(f, " (item {id})")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}{}", .path.display(), io_fix(.source))]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    /// Bad input data: a malformed line, a missing column, a bad value.
    #[error("{loc}: {msg}\n  fix: {fix}")]
    Input {
        loc: Location,
        msg: String,
        fix: String,
    },

    /// The command line or configuration is wrong.
    #[error("{0}")]
    Usage(String),

    /// Another process holds the run directory.
    #[error("{path}: run directory is in use by another anjeon process (lock held)\n  fix: wait for it to finish, or use another --out directory", path = .path.display())]
    Locked { path: PathBuf },

    #[error("{path}: parquet: {msg}\n  fix: {fix}", path = .path.display())]
    Parquet {
        path: PathBuf,
        msg: String,
        fix: String,
    },

    /// A media file could not be decoded or preprocessed.
    #[error(transparent)]
    Media(#[from] MediaError),
    /// An audio input that cannot be used (names the file, the reason and the fix).
    #[error(transparent)]
    Audio(#[from] AudioError),

    /// A model or device failed while running (a candle op, device memory).
    #[error("{what}: {msg}\n  fix: check the device (`anjeon doctor`), free memory or use a smaller --batch; if it persists, report it with the model and device")]
    Backend { what: String, msg: String },

    /// A download or a registry could not be reached or answered wrongly.
    #[error("{what}: {msg}\n  fix: {fix}")]
    Network {
        what: String,
        msg: String,
        fix: String,
    },

    /// A file's bytes are not the ones recorded (model, download, bundle).
    #[error("{path}: sha256 {actual}, expected {expected}\n  fix: {fix}", path = .path.display())]
    Integrity {
        path: PathBuf,
        expected: String,
        actual: String,
        fix: String,
    },

    #[error("{path}:{line}: corrupt store record: {msg}\n  fix: the run directory was edited or damaged; delete line {line} of that file and run the same command again: the other records are kept and only that one is recomputed", path = .path.display())]
    Store {
        path: PathBuf,
        line: usize,
        msg: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The kinds of failure, each with its own exit code (see the README).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Bad flags or input, a damaged run directory: the user fixes the input (exit 2).
    Input,
    /// The machine, a device, the network: the same command may succeed
    /// later or elsewhere (exit 3).
    Environment,
    /// Bytes that are not the recorded ones (exit 4).
    Integrity,
}

impl Error {
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }
    pub fn input(loc: Location, msg: impl Into<String>, fix: impl Into<String>) -> Self {
        Error::Input {
            loc,
            msg: msg.into(),
            fix: fix.into(),
        }
    }
    /// What kind of failure this is, which decides the exit code.
    pub fn kind(&self) -> Kind {
        match self {
            Error::Io { source, .. } => match source.kind() {
                std::io::ErrorKind::StorageFull
                | std::io::ErrorKind::OutOfMemory
                | std::io::ErrorKind::Interrupted
                | std::io::ErrorKind::TimedOut => Kind::Environment,
                _ => Kind::Input,
            },
            Error::Backend { .. } | Error::Network { .. } => Kind::Environment,
            Error::Integrity { .. } => Kind::Integrity,
            Error::Input { .. }
            | Error::Usage(_)
            | Error::Locked { .. }
            | Error::Parquet { .. }
            | Error::Media(_)
            | Error::Audio(_)
            | Error::Store { .. } => Kind::Input,
        }
    }

    /// True for errors caused by what the user passed in or left on disk.
    pub fn is_user_error(&self) -> bool {
        self.kind() == Kind::Input
    }

    /// A model or device failure (a candle op, out of device memory, a
    /// kernel), naming what was being done.
    pub fn backend(what: impl Into<String>, e: impl fmt::Display) -> Self {
        Error::Backend {
            what: what.into(),
            msg: e.to_string(),
        }
    }
}

pub use super::fs::read_file;

/// `println!` that returns an [`Error::Io`] naming stdout instead of
/// panicking when stdout cannot be written (a full disk, a closed pipe).
/// For functions that return this crate's `Result` (or `anyhow`'s).
#[macro_export]
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($t)*)
            .map_err(|e| $crate::core::error::Error::io("<stdout>", e))?
    }};
}

/// `print!` with the same error handling as [`outln!`].
#[macro_export]
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        write!(std::io::stdout().lock(), $($t)*)
            .map_err(|e| $crate::core::error::Error::io("<stdout>", e))?
    }};
}

/// The fix line for an I/O error, by kind.
fn io_fix(e: &std::io::Error) -> &'static str {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::NotFound => "\n  fix: check the path",
        K::PermissionDenied => "\n  fix: check the file's or folder's permissions",
        K::StorageFull => "\n  fix: free disk space (or write elsewhere) and run the command again; finished records are kept",
        K::ReadOnlyFilesystem => "\n  fix: write to a writable folder",
        K::InvalidData => "\n  fix: the file is not valid UTF-8 or is corrupt; re-export it",
        _ => "",
    }
}

/// Why a media file could not be used. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error("{path}: {source}", path = .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The bytes are not a readable image or video (truncated, corrupt, unknown format).
    #[error("{name}: cannot decode: {reason}\n  fix: {fix}")]
    Decode {
        name: String,
        reason: String,
        fix: String,
    },
    /// The header says the image (or a video frame) is larger than the limit.
    #[error("{name}: {width}x{height} = {pixels} pixels is over the limit of {max} pixels\n  fix: downscale the file, or raise the limit with --max-pixels", pixels = (*.width as u64) * (*.height as u64))]
    TooLarge {
        name: String,
        width: u32,
        height: u32,
        max: u64,
    },
    /// Zero width or height.
    #[error(
        "{name}: image has zero size ({width}x{height})\n  fix: replace the file with a real image"
    )]
    Empty {
        name: String,
        width: u32,
        height: u32,
    },
    /// The processor cannot handle the image's shape (HF raises the same).
    #[error("{name}: {reason}\n  fix: {fix}")]
    Shape {
        name: String,
        reason: String,
        fix: String,
    },
    /// A video file with no video stream (e.g. audio only).
    #[error("{name}: no video stream in the file\n  fix: pass a file with a video track (mp4/webm/mkv), an animated GIF/APNG or a folder of frames")]
    NoVideoStream { name: String },
    /// Decoding needs something this build or this system does not have.
    #[error("{name}: unsupported: {reason}\n  fix: {fix}")]
    Unsupported {
        name: String,
        reason: String,
        fix: String,
    },
    /// Too many frames or too much decoded data.
    #[error("{name}: {reason}\n  fix: raise the limit with {flag}, or pass a shorter clip", flag = crate::core::limits::Limits::flag(.which))]
    Limit {
        name: String,
        reason: String,
        which: &'static str,
    },
    /// A processor configuration file is wrong.
    #[error("{path}: processor config: {msg}\n  fix: {fix}", path = .path.display())]
    Config {
        path: PathBuf,
        msg: String,
        fix: String,
    },
    /// A media reference points outside the data set's folder.
    #[error("{reference}: media path resolves to {resolved}, outside the data set folder {root}\n  fix: keep media files inside the data set folder (no `..` or absolute paths leaving it)", resolved = .resolved.display(), root = .root.display())]
    OutsideDataset {
        reference: String,
        resolved: PathBuf,
        root: PathBuf,
    },
}

impl MediaError {
    pub(crate) fn decode(name: &str, reason: impl Into<String>, fix: impl Into<String>) -> Self {
        MediaError::Decode {
            name: name.to_string(),
            reason: reason.into(),
            fix: fix.into(),
        }
    }
    pub(crate) fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        MediaError::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }
}

/// Why an audio input could not be used. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    #[error("{file}: cannot read: {source}\n  fix: check the path and its permissions")]
    Io {
        file: String,
        source: std::io::Error,
    },
    /// The container or codec is not one anjeon decodes.
    #[error("{file}: unsupported audio: {reason}\n  fix: convert it to 16-bit PCM WAV, FLAC, MP3, Ogg/Vorbis or M4A/AAC (e.g. `ffmpeg -i IN -ar 16000 -ac 1 OUT.wav`)")]
    Unsupported { file: String, reason: String },
    /// The file is damaged: truncated, a header that contradicts itself, bad packets.
    #[error("{file}: malformed audio: {reason}\n  fix: the file is damaged or truncated; re-export or re-download it")]
    Malformed { file: String, reason: String },
    /// Longer than the limit (checked from the header where possible).
    #[error("{file}: audio is {seconds:.1} s long, over the limit of {limit:.0} s\n  fix: cut it into shorter clips, or raise the limit (--max-audio-seconds)")]
    TooLong {
        file: String,
        seconds: f64,
        limit: f64,
    },
    /// No samples at all (silence is fine; nothing is not).
    #[error("{file}: audio has no samples (zero length)\n  fix: check the file; a clip of silence is accepted, an empty one is not")]
    Empty { file: String },
    #[error("{file}: resampling from {from} Hz to {to} Hz failed: {reason}\n  fix: convert the file to 16 kHz first")]
    Resample {
        file: String,
        from: u32,
        to: u32,
        reason: String,
    },
}

impl AudioError {
    pub fn file(&self) -> &str {
        match self {
            AudioError::Io { file, .. }
            | AudioError::Unsupported { file, .. }
            | AudioError::Malformed { file, .. }
            | AudioError::TooLong { file, .. }
            | AudioError::Empty { file }
            | AudioError::Resample { file, .. } => file,
        }
    }
}
