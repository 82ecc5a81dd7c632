//! Files read and written whole: errors name the file; writes are atomic.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use super::error::{Error, Result};

/// Read a whole file, naming it in the error.
pub fn read_file(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut f = open_regular(path)?;
    let mut v = Vec::new();
    f.read_to_end(&mut v).map_err(|e| Error::io(path, e))?;
    Ok(v)
}

/// Open a file for reading, refusing what is not a regular file (a FIFO
/// would block forever, a device never end, a folder fail obscurely).
pub fn open_regular(path: &Path) -> Result<File> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        let what = if meta.is_dir() {
            "a folder"
        } else {
            "not a regular file (a FIFO, device or socket)"
        };
        return Err(Error::input(
            crate::core::error::Location::file(path),
            format!("is {what}"),
            "point at a regular file",
        ));
    }
    File::open(path).map_err(|e| Error::io(path, e))
}

/// Write a file atomically: temporary file in the same folder, fsync, rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let written = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        // A full disk or a dead mount: leave no half-written temporary file.
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}
