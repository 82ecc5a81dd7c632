//! Offline bundles: carry a checked set of files across an air gap.
//!
//! `anjeon bundle create` writes one tar holding the binary, the cached
//! files of the named models, data sets, the models' licences and a
//! manifest with every file's sha256 and size (first in the tar, so that a
//! reader can check as it streams). `verify` re-hashes every member against
//! the manifest and names what is missing, altered or unexpected; `unpack`
//! verifies first and refuses a bundle that does not verify. With
//! `ANJEON_HOME` at the unpacked `home/`, `anjeon run` needs no network.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::core::error::{Error, Result};

/// The folder every member sits in.
pub const ROOT: &str = "anjeon-bundle";
const MANIFEST: &str = "anjeon-bundle/manifest.json";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BundleFile {
    pub path: String,
    pub sha256: String,
    pub bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BundleManifest {
    pub schema: String,
    pub anjeon_version: String,
    pub created_at: String,
    pub models: Vec<String>,
    pub datasets: Vec<String>,
    pub files: Vec<BundleFile>,
}

/// What to put in a bundle.
#[derive(Debug, Clone)]
pub struct CreateSpec {
    /// Bundled model names (see `anjeon models list`), comma-separated; each
    /// must be in the cache.
    pub models: Vec<String>,
    /// Data set files or folders, comma-separated.
    pub datasets: Vec<PathBuf>,
    /// Leave the running binary out (e.g. to carry another build).
    pub no_binary: bool,
    /// The tar file to write.
    pub out: PathBuf,
}

/// sha256 and length of everything `r` yields, read in 1 MiB pieces.
fn sha256_of(mut r: impl Read) -> std::io::Result<(String, u64)> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = r.read(&mut buf)?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((hex::encode(h.finalize()), n))
}

fn sha256_file(p: &Path) -> Result<(String, u64)> {
    let f = std::fs::File::open(p).map_err(|e| Error::io(p, e))?;
    sha256_of(f).map_err(|e| Error::io(p, e))
}

/// Files below `dir` (sorted), as (path on disk, path relative to `dir`).
fn walk(dir: &Path, rel: &Path, out: &mut Vec<(PathBuf, PathBuf)>) -> Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok())
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let p = e.path();
        let r = rel.join(e.file_name());
        let t = e.file_type().map_err(|e| Error::io(&p, e))?;
        if t.is_dir() {
            walk(&p, &r, out)?;
        } else if t.is_file() {
            out.push((p, r));
        }
    }
    Ok(())
}

/// `anjeon bundle create`.
pub fn create(args: &CreateSpec) -> Result<BundleManifest> {
    // (source on disk, path in the bundle)
    let mut members: Vec<(PathBuf, String)> = Vec::new();
    let mut licences = String::from("# Licences of the bundled models\n\n");
    for name in &args.models {
        let card = crate::model::card::find(name).ok_or_else(|| {
            Error::Usage(format!(
                "bundle: no bundled model card {name:?}\n  fix: see `anjeon models list`"
            ))
        })?;
        if !crate::model::fetch::is_cached(&card) {
            return Err(Error::Usage(format!(
                "bundle: model {name} is not in the cache with its sha256\n  fix: run `anjeon models fetch {name}` first"
            )));
        }
        let dir = crate::model::fetch::model_path(&card)
            .parent()
            .expect("a model file has a folder")
            .to_path_buf();
        let mut files = Vec::new();
        walk(&dir, Path::new(""), &mut files)?;
        for (src, rel) in files {
            let r = rel.to_string_lossy().to_string();
            // Download leftovers, locks and hash sidecars are the cache's own.
            let hidden = rel
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'));
            if hidden || r.ends_with(".partial") || r.ends_with(".sha256") || r.ends_with(".zip") {
                continue;
            }
            members.push((src, format!("{ROOT}/home/models/{name}/{r}")));
        }
        licences.push_str(&format!("- {name}: {}\n", card.license));
    }
    for d in &args.datasets {
        let base = d
            .canonicalize()
            .map_err(|e| Error::io(d, e))?
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_else(|| "data".into());
        if d.is_dir() {
            let mut files = Vec::new();
            walk(d, Path::new(""), &mut files)?;
            for (src, rel) in files {
                members.push((src, format!("{ROOT}/data/{base}/{}", rel.to_string_lossy())));
            }
        } else {
            members.push((d.clone(), format!("{ROOT}/data/{base}")));
        }
    }
    if !args.no_binary {
        let exe = std::env::current_exe().map_err(|e| Error::io("<current executable>", e))?;
        members.push((exe, format!("{ROOT}/bin/anjeon")));
    }
    let lic_path = std::env::temp_dir().join(format!("anjeon-licences-{}.md", std::process::id()));
    std::fs::write(&lic_path, &licences).map_err(|e| Error::io(&lic_path, e))?;
    members.push((lic_path.clone(), format!("{ROOT}/LICENSES.md")));
    let mut seen = BTreeMap::new();
    for (src, path) in &members {
        if let Some(other) = seen.insert(path.clone(), src.clone()) {
            return Err(Error::Usage(format!(
                "bundle: {} and {} would both be {path}\n  fix: give data sets different folder names",
                other.display(),
                src.display()
            )));
        }
    }
    let mut files = Vec::new();
    for (src, path) in &members {
        let (sha256, bytes) = sha256_file(src)?;
        files.push(BundleFile {
            path: path.clone(),
            sha256,
            bytes,
        });
    }
    let manifest = BundleManifest {
        schema: "anjeon.bundle/1".into(),
        anjeon_version: env!("CARGO_PKG_VERSION").into(),
        created_at: crate::core::time::now_rfc3339(),
        models: args.models.clone(),
        datasets: args
            .datasets
            .iter()
            .map(|d| d.display().to_string())
            .collect(),
        files,
    };
    let partial = args.out.with_extension("tar.partial");
    let f = std::fs::File::create(&partial).map_err(|e| Error::io(&partial, e))?;
    let mut tar = tar::Builder::new(std::io::BufWriter::new(f));
    tar.mode(tar::HeaderMode::Deterministic);
    let io = |e: std::io::Error| Error::io(&partial, e);
    let json = serde_json::to_vec_pretty(&manifest).expect("serialise bundle manifest");
    let mut h = tar::Header::new_gnu();
    h.set_size(json.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    tar.append_data(&mut h, MANIFEST, json.as_slice())
        .map_err(io)?;
    for (src, path) in &members {
        let mut f = std::fs::File::open(src).map_err(|e| Error::io(src, e))?;
        let mut h = tar::Header::new_gnu();
        h.set_size(f.metadata().map_err(|e| Error::io(src, e))?.len());
        h.set_mode(if path.ends_with("/bin/anjeon") {
            0o755
        } else {
            0o644
        });
        h.set_cksum();
        tar.append_data(&mut h, path, &mut f).map_err(io)?;
    }
    tar.into_inner()
        .and_then(|mut w| std::io::Write::flush(&mut w))
        .map_err(io)?;
    let _ = std::fs::remove_file(&lic_path);
    std::fs::rename(&partial, &args.out).map_err(|e| Error::io(&args.out, e))?;
    Ok(manifest)
}

/// What `verify` found.
#[derive(Debug, Default, Serialize)]
pub struct Verified {
    pub files: usize,
    pub bytes: u64,
    /// Members whose sha256 or size differs from the manifest's.
    pub altered: Vec<String>,
    /// Manifest entries the tar lacks.
    pub missing: Vec<String>,
    /// Members the manifest does not list.
    pub unexpected: Vec<String>,
}

impl Verified {
    pub fn ok(&self) -> bool {
        self.altered.is_empty() && self.missing.is_empty() && self.unexpected.is_empty()
    }
}

fn open_tar(path: &Path) -> Result<tar::Archive<std::io::BufReader<std::fs::File>>> {
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    Ok(tar::Archive::new(std::io::BufReader::new(f)))
}

/// Re-hash every member of a bundle against its manifest.
pub fn verify(path: &Path) -> Result<(BundleManifest, Verified)> {
    let bad = |msg: String| {
        Error::Usage(format!(
            "{}: {msg}\n  fix: the bundle is truncated or not an anjeon bundle; copy it again",
            path.display()
        ))
    };
    let mut ar = open_tar(path)?;
    let mut entries = ar.entries().map_err(|e| bad(e.to_string()))?;
    let mut first = entries
        .next()
        .ok_or_else(|| bad("empty tar".into()))?
        .map_err(|e| bad(e.to_string()))?;
    let name = first
        .path()
        .map_err(|e| bad(e.to_string()))?
        .to_string_lossy()
        .to_string();
    if name != MANIFEST {
        return Err(bad(format!("the first member is {name}, not {MANIFEST}")));
    }
    let mut json = Vec::new();
    first
        .read_to_end(&mut json)
        .map_err(|e| bad(e.to_string()))?;
    drop(first);
    let manifest: BundleManifest =
        serde_json::from_slice(&json).map_err(|e| bad(format!("manifest: {e}")))?;
    let want: BTreeMap<&str, &BundleFile> = manifest
        .files
        .iter()
        .map(|f| (f.path.as_str(), f))
        .collect();
    let mut v = Verified::default();
    let mut found = std::collections::BTreeSet::new();
    for e in entries {
        let mut e = e.map_err(|e| bad(e.to_string()))?;
        let p = e
            .path()
            .map_err(|e| bad(e.to_string()))?
            .to_string_lossy()
            .to_string();
        let (sha, n) = sha256_of(&mut e).map_err(|e| bad(format!("{p}: {e}")))?;
        match want.get(p.as_str()) {
            Some(f) if f.sha256 == sha && f.bytes == n => {}
            Some(_) => v.altered.push(p.clone()),
            None => v.unexpected.push(p.clone()),
        }
        v.files += 1;
        v.bytes += n;
        found.insert(p);
    }
    v.missing = want
        .keys()
        .filter(|k| !found.contains(**k))
        .map(|k| k.to_string())
        .collect();
    Ok((manifest, v))
}

/// Verify, then unpack into `to` (members stay inside it). Returns the
/// folder to use as `ANJEON_HOME`.
pub fn unpack(path: &Path, to: &Path) -> Result<PathBuf> {
    let (_, v) = verify(path)?;
    if !v.ok() {
        return Err(Error::Usage(format!(
            "{}: does not verify ({}); nothing was unpacked\n  fix: copy the bundle again from its source",
            path.display(),
            describe(&v)
        )));
    }
    std::fs::create_dir_all(to).map_err(|e| Error::io(to, e))?;
    let mut ar = open_tar(path)?;
    for e in ar.entries().map_err(|e| Error::io(path, e))? {
        let mut e = e.map_err(|e| Error::io(path, e))?;
        // `unpack_in` refuses members that would leave `to`.
        e.unpack_in(to).map_err(|e| Error::io(to, e))?;
    }
    Ok(to.join(ROOT).join("home"))
}

/// One line naming every problem.
pub fn describe(v: &Verified) -> String {
    let mut parts = Vec::new();
    if !v.altered.is_empty() {
        parts.push(format!("altered: {}", v.altered.join(", ")));
    }
    if !v.missing.is_empty() {
        parts.push(format!("missing: {}", v.missing.join(", ")));
    }
    if !v.unexpected.is_empty() {
        parts.push(format!("not in the manifest: {}", v.unexpected.join(", ")));
    }
    parts.join("; ")
}
