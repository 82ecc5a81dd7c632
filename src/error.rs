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
    Media(#[from] crate::media::MediaError),
    /// An audio input that cannot be used (names the file, the reason and the fix).
    #[error(transparent)]
    Audio(#[from] crate::audio::AudioError),

    #[error("{path}:{line}: corrupt store record: {msg}\n  fix: the run directory was edited or damaged; delete line {line} of that file and run the same command again: the other records are kept and only that one is recomputed", path = .path.display())]
    Store {
        path: PathBuf,
        line: usize,
        msg: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

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
    /// True for errors caused by what the user passed in or left on disk
    /// (exit code 2): a bad flag, bad input, a damaged run directory. False
    /// for failures of the machine (exit code 1): out of space, a device
    /// error.
    pub fn is_user_error(&self) -> bool {
        match self {
            Error::Io { source, .. } => !matches!(
                source.kind(),
                std::io::ErrorKind::StorageFull | std::io::ErrorKind::OutOfMemory
            ),
            _ => true,
        }
    }
}

/// Read a whole file, naming it in the error.
pub fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io(path, e))
}

/// `println!` that returns an [`Error::Io`] naming stdout instead of
/// panicking when stdout cannot be written (a full disk, a closed pipe).
/// For functions that return this crate's `Result` (or `anyhow`'s).
#[macro_export]
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($t)*)
            .map_err(|e| $crate::error::Error::io("<stdout>", e))?
    }};
}

/// `print!` with the same error handling as [`outln!`].
#[macro_export]
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        write!(std::io::stdout().lock(), $($t)*)
            .map_err(|e| $crate::error::Error::io("<stdout>", e))?
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
