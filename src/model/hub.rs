//! Downloads from a Hugging Face Hub (`models fetch ORG/NAME[@REV]`, `data
//! fetch ORG/NAME[@REV]`) into the standard Hugging Face cache that the
//! offline resolver reads, with the `hf-hub` crate. `HF_ENDPOINT` picks the
//! Hub (a mirror inside a lab network, or the tests' server on 127.0.0.1),
//! `HF_TOKEN` (or the token file under `HF_HOME`) opens gated repos.
//!
//! Each file is checked after its download against the hash the Hub gives
//! as its ETag: sha256 for LFS files, the git blob sha1 for the others; a
//! file that does not match is removed and named (nothing unverified stays
//! in the cache). A cut download keeps its `.sync.part` file and the next
//! fetch resumes from where it stopped.

use std::path::{Path, PathBuf};

use hf_hub::api::sync::{ApiBuilder, ApiError};
use hf_hub::{Cache, Repo, RepoType};
use sha2::{Digest, Sha256};

use crate::core::error::{Error, Result};

/// A model or a data set repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepoKind {
    Model,
    Dataset,
}

impl RepoKind {
    fn prefix(self) -> &'static str {
        match self {
            RepoKind::Model => "models",
            RepoKind::Dataset => "datasets",
        }
    }
}

/// What to download.
#[derive(Debug, Clone)]
pub struct HubRequest {
    /// `ORG/NAME`.
    pub repo: String,
    /// A branch, tag or commit (default `main`).
    pub revision: String,
    pub kind: RepoKind,
    /// Only the files matching one of these globs (`*` and `?`); all when empty.
    pub include: Vec<String>,
}

impl HubRequest {
    /// `ORG/NAME[@REV]`.
    pub fn parse(spec: &str, kind: RepoKind, include: Vec<String>) -> Result<HubRequest> {
        let (repo, revision) = match spec.split_once('@') {
            Some((r, v)) => (r, v),
            None => (spec, "main"),
        };
        let ok = |s: &str| {
            !s.is_empty()
                && !s.starts_with('.')
                && !s.contains("..")
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        let rev_ok = !revision.is_empty()
            && !revision.contains("..")
            && revision
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
        match repo.split_once('/') {
            Some((org, name)) if ok(org) && ok(name) && rev_ok => Ok(HubRequest {
                repo: repo.to_string(),
                revision: revision.to_string(),
                kind,
                include,
            }),
            _ => Err(Error::Usage(format!(
                "{spec:?}: not a Hub repository id\n  fix: write ORG/NAME or ORG/NAME@REVISION (e.g. Qwen/Qwen3-VL-2B-Instruct)"
            ))),
        }
    }
}

/// What a fetch left in the cache.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The snapshot folder (`…/snapshots/COMMIT`), what `--target` or
    /// `--dataset` reads.
    pub snapshot: PathBuf,
    pub commit: String,
    /// Each file: its name in the repository, size and the hash it was checked against.
    pub files: Vec<(String, u64, String)>,
}

/// The Hugging Face hub cache: `HF_HUB_CACHE`, else `HF_HOME/hub`, else
/// `~/.cache/huggingface/hub` (as `huggingface_hub` decides).
pub fn cache_dir() -> PathBuf {
    std::env::var_os("HF_HUB_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HF_HOME").map(|h| PathBuf::from(h).join("hub")))
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache")
                .join("huggingface")
                .join("hub")
        })
}

/// The snapshot of `repo` at `revision` (a branch or tag through `refs/`,
/// or a commit) in the local cache, if it is there. Never touches the network.
pub fn cached_snapshot(kind: RepoKind, repo: &str, revision: &str) -> Option<PathBuf> {
    let dir = cache_dir().join(format!("{}--{}", kind.prefix(), repo.replace('/', "--")));
    let rev = if dir.join("snapshots").join(revision).is_dir() {
        revision.to_string()
    } else {
        std::fs::read_to_string(dir.join("refs").join(revision))
            .ok()?
            .trim()
            .to_string()
    };
    let snap = dir.join("snapshots").join(rev);
    snap.is_dir().then_some(snap)
}

/// Whether `name` matches the glob `pat` (`*` any run, `?` one character).
pub fn glob_match(pat: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pat.chars().collect(), name.chars().collect());
    let (mut i, mut j, mut star, mut mark) = (0, 0, None, 0);
    while j < n.len() {
        if i < p.len() && (p[i] == '?' || p[i] == n[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some(i);
            mark = j;
            i += 1;
        } else if let Some(s) = star {
            i = s + 1;
            mark += 1;
            j = mark;
        } else {
            return false;
        }
    }
    p[i..].iter().all(|&c| c == '*')
}

/// An `hf-hub` failure as anjeon's error, by kind: a missing repository or
/// revision and a refused token are the user's to fix (exit 2); anything
/// else on the way is the network's (exit 3).
fn hub_err(what: &str, req: &HubRequest, e: ApiError) -> Error {
    let repo = format!("{} {}@{}", req.kind.prefix(), req.repo, req.revision);
    if let ApiError::RequestError(re) = &e {
        if let ureq2::Error::Status(code, _) = re.as_ref() {
            return match code {
                401 | 403 => Error::Usage(format!(
                    "{repo}: the Hub refused access (HTTP {code}) to {what}\n  fix: the repository is gated or private: accept its terms on the Hub and set HF_TOKEN to a token with read access"
                )),
                404 => Error::Usage(format!(
                    "{repo}: {what} not found on the Hub (HTTP 404)\n  fix: check the repository id, the revision and the file name (and that it is a {} repository)",
                    match req.kind {
                        RepoKind::Model => "model",
                        RepoKind::Dataset => "data set",
                    }
                )),
                _ => Error::Network {
                    what: format!("{repo}: {what}"),
                    msg: format!("HTTP {code}"),
                    fix: "retry later; a partly downloaded file is kept and the next fetch resumes it".into(),
                },
            };
        }
    }
    Error::Network {
        what: format!("{repo}: {what}"),
        msg: e.to_string(),
        fix: "check the route to the Hub (HF_ENDPOINT) and run the same fetch again: a partly downloaded file is kept and resumed".into(),
    }
}

/// A download's progress as anjeon shows all progress: a bar on a
/// terminal, a line every 30 s or 5% off one.
struct Bar(Option<crate::core::progress::Progress>);

impl hf_hub::api::Progress for Bar {
    fn init(&mut self, size: usize, filename: &str) {
        if self.0.is_none() {
            self.0 = Some(crate::core::progress::bar(size as u64, filename).bytes());
        }
    }
    fn update(&mut self, size: usize) {
        if let Some(b) = &self.0 {
            b.inc(size as u64);
        }
    }
    fn finish(&mut self) {
        if let Some(b) = self.0.take() {
            b.finish_and_clear();
        }
    }
}

/// The git blob hash of `bytes` (what the Hub's ETag is for a non-LFS file).
fn git_blob_sha1(bytes: &[u8]) -> String {
    use sha1::Digest as _;
    let mut h = sha1::Sha1::new();
    h.update(format!("blob {}\0", bytes.len()).as_bytes());
    h.update(bytes);
    hex::encode(h.finalize())
}

/// Check a downloaded file against its ETag (the blob's file name).
fn verify(pointer: &Path, blob: &Path) -> Result<String> {
    let etag = blob
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_string();
    let bytes = crate::core::fs::read_file(blob)?;
    let actual = match etag.len() {
        64 => hex::encode(Sha256::digest(&bytes)),
        40 => git_blob_sha1(&bytes),
        _ => {
            log::warn!(
                "{}: the Hub gave no content hash (ETag {etag:?}); the file is kept unchecked",
                pointer.display()
            );
            return Ok(etag);
        }
    };
    if actual != etag {
        let _ = std::fs::remove_file(pointer);
        let _ = std::fs::remove_file(blob);
        return Err(Error::Integrity {
            path: pointer.to_path_buf(),
            expected: etag,
            actual,
            fix: "the download was altered or corrupted on the way; it was removed: fetch again (from another mirror if it repeats)".into(),
        });
    }
    Ok(etag)
}

/// Download the files of a Hub repository into the cache (skipping the ones
/// already there) and check each; returns the snapshot folder.
pub fn fetch(req: &HubRequest) -> Result<Fetched> {
    let cache = cache_dir();
    let mut builder = ApiBuilder::from_cache(Cache::new(cache.clone()))
        .with_progress(false)
        .with_retries(0);
    if let Ok(endpoint) = std::env::var("HF_ENDPOINT") {
        builder = builder.with_endpoint(endpoint.trim_end_matches('/').to_string());
    }
    if let Some(token) = std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty()) {
        builder = builder.with_token(Some(token));
    }
    let api = builder.build().map_err(|e| hub_err("the client", req, e))?;
    let kind = match req.kind {
        RepoKind::Model => RepoType::Model,
        RepoKind::Dataset => RepoType::Dataset,
    };
    let hub_repo = Repo::with_revision(req.repo.clone(), kind, req.revision.clone());
    let repo = api.repo(hub_repo.clone());
    let cached = Cache::new(cache.clone()).repo(hub_repo);
    let info = repo
        .info()
        .map_err(|e| hub_err("the repository's file list", req, e))?;
    let mut names: Vec<String> = info
        .siblings
        .iter()
        .map(|s| s.rfilename.clone())
        .filter(|n| req.include.is_empty() || req.include.iter().any(|g| glob_match(g, n)))
        .collect();
    names.sort();
    if names.is_empty() {
        return Err(Error::Usage(format!(
            "{}@{}: no file matches --include {}\n  fix: the repository has {}",
            req.repo,
            req.revision,
            req.include.join(" "),
            info.siblings
                .iter()
                .map(|s| s.rfilename.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let ggufs: Vec<&String> = names.iter().filter(|n| n.ends_with(".gguf")).collect();
    if req.kind == RepoKind::Model && ggufs.len() > 1 && req.include.is_empty() {
        return Err(Error::Usage(format!(
            "{}: the repository holds {} GGUF files ({}); downloading all of them is rarely meant\n  fix: pick one with --include, e.g. --include '*Q4_K_M.gguf'",
            req.repo,
            ggufs.len(),
            ggufs.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
        )));
    }
    let mut files = Vec::new();
    let mut snapshot = None;
    for name in &names {
        log::info!("{}: {name}", req.repo);
        let pointer = match cached.get(name) {
            Some(p) => p,
            None => repo
                .download_with_progress(name, Bar(None))
                .map_err(|e| hub_err(&format!("file {name}"), req, e))?,
        };
        let blob = std::fs::canonicalize(&pointer).map_err(|e| Error::io(&pointer, e))?;
        let hash = verify(&pointer, &blob)?;
        let size = std::fs::metadata(&blob).map(|m| m.len()).unwrap_or(0);
        files.push((name.clone(), size, hash));
        // The snapshot folder: the pointer's path minus the file's own.
        let mut dir = pointer.clone();
        for _ in name.split('/') {
            dir.pop();
        }
        snapshot = Some(dir);
    }
    let snapshot = snapshot.expect("at least one file");
    let commit = snapshot
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or(&info.sha)
        .to_string();
    Ok(Fetched {
        snapshot,
        commit,
        files,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_and_repository_ids() {
        assert!(glob_match("*.gguf", "model-Q4_K_M.gguf"));
        assert!(glob_match("*Q4_K_M*", "model-Q4_K_M.gguf"));
        assert!(!glob_match("*.gguf", "config.json"));
        assert!(glob_match("config.json", "config.json"));
        assert!(glob_match("?onfig.*", "config.json"));
        assert!(glob_match("data/*.parquet", "data/test-00000.parquet"));
        let r =
            HubRequest::parse("Qwen/Qwen3-VL-2B-Instruct@v1.0", RepoKind::Model, vec![]).unwrap();
        assert_eq!(
            (r.repo.as_str(), r.revision.as_str()),
            ("Qwen/Qwen3-VL-2B-Instruct", "v1.0")
        );
        assert_eq!(
            HubRequest::parse("TTA01/AssurAI", RepoKind::Dataset, vec![])
                .unwrap()
                .revision,
            "main"
        );
        for bad in [
            "noslash",
            "a/b/c",
            "../x",
            "a/",
            "a/b@",
            "a/b@../../x",
            "a/.hidden",
        ] {
            assert!(
                HubRequest::parse(bad, RepoKind::Model, vec![]).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn git_blob_hash_matches_git() {
        // `printf 'hello\n' | git hash-object --stdin`
        assert_eq!(
            git_blob_sha1(b"hello\n"),
            "ce013625030ba8dba906f756967f9e9ca394464a"
        );
    }
}
