//! The run directory: a lock, the manifest, append-only JSONL record files
//! (one per stage) keyed by a hash of everything that determines the record,
//! and atomically written reports.
//!
//! Crash safety: each record is one `write` of a whole line. A run killed
//! mid-write leaves at most a torn last line, which the next open truncates
//! (the record is then recomputed). Records are never rewritten, so a kill
//! at any moment loses at most the record being written and never
//! duplicates one (keys are checked before appending).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::core::error::{Error, Result};
pub use crate::core::fs::write_atomic;
pub use crate::core::hash::{key_of, sha256_hex};
pub use crate::core::time::now_rfc3339;

/// An open run directory. Holding it holds the directory's lock.
pub struct RunDir {
    pub path: PathBuf,
    _lock: File,
}

impl RunDir {
    /// Create (if needed) and lock a run directory. Fails at once if another
    /// process holds it.
    pub fn open(path: &Path) -> Result<RunDir> {
        std::fs::create_dir_all(path).map_err(|e| Error::io(path, e))?;
        let lock_path = path.join(".lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| Error::io(&lock_path, e))?;
        match f.try_lock() {
            Ok(()) => Ok(RunDir {
                path: path.to_path_buf(),
                _lock: f,
            }),
            Err(std::fs::TryLockError::WouldBlock) => Err(Error::Locked {
                path: path.to_path_buf(),
            }),
            Err(std::fs::TryLockError::Error(e)) => Err(Error::io(&lock_path, e)),
        }
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Open a stage's record file, reading the records already there.
    pub fn stage<T: Serialize + DeserializeOwned + Keyed>(&self, name: &str) -> Result<Stage<T>> {
        Stage::open(&self.file(name))
    }
}

/// Records know their key.
pub trait Keyed {
    fn key(&self) -> &str;
}

/// An append-only JSONL file of records, indexed by key.
pub struct Stage<T> {
    path: PathBuf,
    file: File,
    records: Vec<T>,
    index: HashMap<String, usize>,
    last_sync: Instant,
    pub repaired_torn_tail: bool,
}

impl<T: Serialize + DeserializeOwned + Keyed> Stage<T> {
    pub fn open(path: &Path) -> Result<Stage<T>> {
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        // A torn last line (killed mid-write) is cut off; it is recomputed.
        let good_len = match bytes.iter().rposition(|&b| b == b'\n') {
            Some(i) => i + 1,
            None => 0,
        };
        let repaired = good_len < bytes.len();
        if repaired {
            file.set_len(good_len as u64)
                .map_err(|e| Error::io(path, e))?;
            file.seek(SeekFrom::End(0))
                .map_err(|e| Error::io(path, e))?;
        }
        let mut records = Vec::new();
        let mut index = HashMap::new();
        for (i, line) in bytes[..good_len].split(|&b| b == b'\n').enumerate() {
            if line.iter().all(|b| b.is_ascii_whitespace()) {
                continue;
            }
            let rec: T = serde_json::from_slice(line).map_err(|e| Error::Store {
                path: path.to_path_buf(),
                line: i + 1,
                msg: e.to_string(),
            })?;
            if index.contains_key(rec.key()) {
                continue; // tolerate a duplicate written by hand; keep the first
            }
            index.insert(rec.key().to_string(), records.len());
            records.push(rec);
        }
        Ok(Stage {
            path: path.to_path_buf(),
            file,
            records,
            index,
            last_sync: Instant::now(),
            repaired_torn_tail: repaired,
        })
    }

    pub fn get(&self, key: &str) -> Option<&T> {
        self.index.get(key).map(|&i| &self.records[i])
    }

    pub fn contains(&self, key: &str) -> bool {
        self.index.contains_key(key)
    }

    pub fn records(&self) -> &[T] {
        &self.records
    }

    /// Append a record (one write of a whole line). A record whose key is
    /// already stored is not written again.
    pub fn append(&mut self, rec: T) -> Result<()> {
        if self.contains(rec.key()) {
            return Ok(());
        }
        let mut line = serde_json::to_vec(&rec).map_err(|e| Error::Store {
            path: self.path.clone(),
            line: self.records.len() + 1,
            msg: e.to_string(),
        })?;
        line.push(b'\n');
        self.file
            .write_all(&line)
            .map_err(|e| Error::io(&self.path, e))?;
        if self.last_sync.elapsed() > Duration::from_secs(2) {
            self.sync()?;
        }
        self.index.insert(rec.key().to_string(), self.records.len());
        self.records.push(rec);
        Ok(())
    }

    pub fn sync(&mut self) -> Result<()> {
        self.file
            .sync_data()
            .map_err(|e| Error::io(&self.path, e))?;
        self.last_sync = Instant::now();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct R {
        key: String,
        v: u32,
    }
    impl Keyed for R {
        fn key(&self) -> &str {
            &self.key
        }
    }

    #[test]
    fn torn_tail_is_cut_and_records_survive() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.jsonl");
        {
            let mut s: Stage<R> = Stage::open(&p).unwrap();
            s.append(R {
                key: "a".into(),
                v: 1,
            })
            .unwrap();
            s.append(R {
                key: "b".into(),
                v: 2,
            })
            .unwrap();
            s.append(R {
                key: "a".into(),
                v: 9,
            })
            .unwrap(); // duplicate key: not written
        }
        // simulate a kill in the middle of writing a third record
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"{\"key\":\"c\",\"v\"").unwrap();
        drop(f);
        let mut s: Stage<R> = Stage::open(&p).unwrap();
        assert!(s.repaired_torn_tail);
        assert_eq!(s.records().len(), 2);
        assert_eq!(s.get("a").unwrap().v, 1);
        s.append(R {
            key: "c".into(),
            v: 3,
        })
        .unwrap();
        drop(s);
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(text.lines().count(), 3);
        assert!(text.ends_with("{\"key\":\"c\",\"v\":3}\n"));
    }

    #[test]
    fn corrupt_middle_line_is_an_error_naming_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.jsonl");
        std::fs::write(
            &p,
            "{\"key\":\"a\",\"v\":1}\nnot json\n{\"key\":\"b\",\"v\":2}\n",
        )
        .unwrap();
        let err = Stage::<R>::open(&p).err().unwrap().to_string();
        assert!(err.contains("s.jsonl:2"), "{err}");
    }

    #[test]
    fn lock_excludes_a_second_opener() {
        let dir = tempfile::tempdir().unwrap();
        let a = RunDir::open(dir.path()).unwrap();
        assert!(matches!(
            RunDir::open(dir.path()),
            Err(Error::Locked { .. })
        ));
        drop(a);
        RunDir::open(dir.path()).unwrap();
    }

    #[test]
    fn keys_separate_parts() {
        assert_ne!(key_of(&["ab", "c"]), key_of(&["a", "bc"]));
        assert_eq!(now_rfc3339().len(), 20);
    }
}

/// Refuse a list of directories that names one directory twice (however
/// spelt: `a`, `a/`, a symlink to it). `what` ends the message "… are the
/// same {what}".
pub fn distinct_dirs(dirs: &[PathBuf], what: &str) -> Result<()> {
    let mut seen: HashMap<PathBuf, &Path> = HashMap::new();
    for d in dirs {
        let c = d.canonicalize().map_err(|e| Error::io(d, e))?;
        if let Some(first) = seen.insert(c, d) {
            return Err(Error::Usage(format!(
                "{} and {} are the same {what}\n  fix: name each one once",
                first.display(),
                d.display()
            )));
        }
    }
    Ok(())
}
