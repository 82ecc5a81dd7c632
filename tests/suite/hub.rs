//! `anjeon models fetch ORG/NAME` and `anjeon data fetch ORG/NAME` against a
//! small Hugging Face Hub on 127.0.0.1 (never the real Hub): the API's
//! revision route and the resolve route with ranges, ETags and
//! `X-Repo-Commit`, as `huggingface_hub` and `hf-hub` use them. Checked: a
//! fetched GGUF runs offline by its Hub id, a cut download resumes from
//! where it stopped, a gated set needs HF_TOKEN, a wrong hash is removed and
//! named (exit 4), a missing repository is exit 2 and an unreachable Hub 3.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use crate::common::{bin, stderr, stdout};

struct HubFile {
    name: String,
    bytes: Arc<Vec<u8>>,
    /// What the Hub says the hash is (sha256 for LFS files).
    etag: String,
}

struct HubRepo {
    /// `models` or `datasets`.
    kind: &'static str,
    id: String,
    commit: String,
    files: Vec<HubFile>,
    /// A token the repository needs (a gated repository).
    token: Option<String>,
}

#[derive(Default)]
struct State {
    repos: Vec<HubRepo>,
    /// Cut the next full download of this file after this many bytes.
    cut: Option<(String, usize)>,
    /// Send this file slowly: this many bytes, then a pause of this many ms.
    trickle: Option<(String, usize, u64)>,
    /// Each request: path and Range header.
    log: Vec<String>,
}

struct MockHub {
    endpoint: String,
    state: Arc<Mutex<State>>,
}

fn lfs(name: &str, bytes: Vec<u8>) -> HubFile {
    let etag = hex::encode(Sha256::digest(&bytes));
    HubFile {
        name: name.into(),
        bytes: Arc::new(bytes),
        etag,
    }
}

impl MockHub {
    fn start(repos: Vec<HubRepo>) -> MockHub {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State {
            repos,
            ..Default::default()
        }));
        let st = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let st = st.clone();
                std::thread::spawn(move || {
                    let _ = serve(conn, &st);
                });
            }
        });
        MockHub { endpoint, state }
    }

    fn log(&self) -> Vec<String> {
        self.state.lock().unwrap().log.clone()
    }
}

fn respond(s: &mut TcpStream, status: &str, headers: &[(String, String)], body: &[u8]) {
    let mut h = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    for (k, v) in headers {
        h.push_str(&format!("{k}: {v}\r\n"));
    }
    h.push_str("\r\n");
    let _ = s.write_all(h.as_bytes());
    let _ = s.write_all(body);
}

fn serve(mut conn: TcpStream, state: &Mutex<State>) -> std::io::Result<()> {
    let mut r = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let range = headers.get("range").cloned().unwrap_or_default();
    let mut st = state.lock().unwrap();
    st.log.push(format!("{path} {range}"));
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    // /api/{kind}/{org}/{name}/revision/{rev}
    // /{org}/{name}/resolve/{rev}/{file…} and /datasets/{org}/{name}/resolve/…
    let (kind, org_at, api) = match parts.first() {
        Some(&"api") => (parts.get(1).copied().unwrap_or(""), 2, true),
        Some(&"datasets") => ("datasets", 1, false),
        _ => ("models", 0, false),
    };
    let id = format!(
        "{}/{}",
        parts.get(org_at).unwrap_or(&""),
        parts.get(org_at + 1).unwrap_or(&"")
    );
    let Some(repo) = st.repos.iter().find(|r| r.kind == kind && r.id == id) else {
        respond(
            &mut conn,
            "404 Not Found",
            &[],
            b"{\"error\":\"Repository not found\"}",
        );
        return Ok(());
    };
    if let Some(t) = &repo.token {
        if headers.get("authorization") != Some(&format!("Bearer {t}")) {
            respond(&mut conn, "401 Unauthorized", &[], b"{\"error\":\"gated\"}");
            return Ok(());
        }
    }
    let commit = repo.commit.clone();
    if api {
        let siblings: Vec<String> = repo
            .files
            .iter()
            .map(|f| format!("{{\"rfilename\":\"{}\"}}", f.name))
            .collect();
        let body = format!(
            "{{\"id\":\"{id}\",\"sha\":\"{commit}\",\"siblings\":[{}]}}",
            siblings.join(",")
        );
        respond(
            &mut conn,
            "200 OK",
            &[("Content-Type".into(), "application/json".into())],
            body.as_bytes(),
        );
        return Ok(());
    }
    let file = parts[org_at + 4..].join("/");
    let Some(f) = repo.files.iter().find(|f| f.name == file) else {
        respond(
            &mut conn,
            "404 Not Found",
            &[("X-Error-Code".into(), "EntryNotFound".into())],
            b"",
        );
        return Ok(());
    };
    let (bytes, etag) = (f.bytes.clone(), f.etag.clone());
    let n = bytes.len();
    let (start, end) = match range.strip_prefix("bytes=").and_then(|r| r.split_once('-')) {
        Some((a, b)) => (
            a.parse::<usize>().unwrap_or(0),
            b.parse::<usize>().map(|e| e.min(n - 1)).unwrap_or(n - 1),
        ),
        None => (0, n - 1),
    };
    let cut = match &st.cut {
        Some((name, at)) if *name == file && end > 0 => Some(*at),
        _ => None,
    };
    if cut.is_some() {
        st.cut = None;
    }
    let trickle = match &st.trickle {
        Some((name, n, ms)) if *name == file => Some((*n, *ms)),
        _ => None,
    };
    drop(st);
    let hdrs = vec![
        ("X-Repo-Commit".to_string(), commit),
        ("ETag".to_string(), format!("\"{etag}\"")),
        ("X-Linked-Etag".to_string(), format!("\"{etag}\"")),
        (
            "Content-Range".to_string(),
            format!("bytes {start}-{end}/{n}"),
        ),
        ("Content-Length".to_string(), (end + 1 - start).to_string()),
        ("Accept-Ranges".to_string(), "bytes".to_string()),
    ];
    let body = &bytes[start..=end];
    match cut {
        // The connection drops part way through the body.
        Some(at) => respond(
            &mut conn,
            "206 Partial Content",
            &hdrs,
            &body[..at.min(body.len())],
        ),
        None => match trickle {
            Some((n, ms)) => {
                respond(&mut conn, "206 Partial Content", &hdrs, &[]);
                for chunk in body.chunks(n.max(1)) {
                    conn.write_all(chunk)?;
                    conn.flush()?;
                    std::thread::sleep(std::time::Duration::from_millis(ms));
                }
            }
            None => respond(&mut conn, "206 Partial Content", &hdrs, body),
        },
    }
    Ok(())
}

/// The binary with `args`, pointed at the mock Hub and a cache folder.
fn fetch_cmd(
    hub: &MockHub,
    cache: &Path,
    args: &[&str],
    token: Option<&str>,
) -> std::process::Command {
    let mut c = bin();
    c.args(args)
        .env("HF_ENDPOINT", &hub.endpoint)
        .env("HF_HUB_CACHE", cache)
        .env_remove("HF_TOKEN")
        .env("HF_HOME", cache.join("hf-home"));
    if let Some(t) = token {
        c.env("HF_TOKEN", t);
    }
    c
}

fn fetch(hub: &MockHub, cache: &Path, args: &[&str], token: Option<&str>) -> std::process::Output {
    fetch_cmd(hub, cache, args, token).output().unwrap()
}

fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) as u8
        })
        .collect()
}

#[test]
fn a_model_fetched_from_the_hub_runs_offline_by_its_id() {
    let gguf = std::fs::read(crate::common::model_file("smollm2-135m-instruct")).unwrap();
    let hub = MockHub::start(vec![HubRepo {
        kind: "models",
        id: "test-org/smol".into(),
        commit: "c0ffee0000000000000000000000000000000001".into(),
        files: vec![
            lfs("smollm2.gguf", gguf),
            lfs("README.md", b"# smol\n".to_vec()),
        ],
        token: None,
    }]);
    let cache = tempfile::tempdir().unwrap();
    let o = fetch(
        &hub,
        cache.path(),
        &["models", "fetch", "test-org/smol"],
        None,
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    let snap = cache
        .path()
        .join("models--test-org--smol/snapshots/c0ffee0000000000000000000000000000000001");
    assert!(out.contains(&snap.display().to_string()), "{out}");
    assert!(snap.join("smollm2.gguf").exists());
    // No network from here: the Hub id resolves from the cache.
    let o = bin()
        .args([
            "generate",
            "--model",
            "test-org/smol",
            "--prompt",
            "Hi",
            "--max-tokens",
            "3",
        ])
        .env("HF_HUB_CACHE", cache.path())
        .env("HF_ENDPOINT", "http://127.0.0.1:9")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(!stdout(&o).trim().is_empty());
    // A second fetch finds every file in the cache: the API only.
    let before = hub.log().len();
    let o = fetch(
        &hub,
        cache.path(),
        &["models", "fetch", "test-org/smol"],
        None,
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let again: Vec<String> = hub.log()[before..].to_vec();
    assert!(again.iter().all(|l| l.starts_with("/api/")), "{again:?}");
}

#[test]
fn a_cut_download_resumes_where_it_stopped() {
    let data = noise(200_000, 7);
    let hub = MockHub::start(vec![HubRepo {
        kind: "datasets",
        id: "test-org/set".into(),
        commit: "da7a000000000000000000000000000000000002".into(),
        files: vec![lfs("data/test.parquet", data.clone())],
        token: None,
    }]);
    hub.state.lock().unwrap().cut = Some(("data/test.parquet".into(), 70_000));
    let cache = tempfile::tempdir().unwrap();
    let o = fetch(&hub, cache.path(), &["data", "fetch", "test-org/set"], None);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(3), "{e}");
    assert!(e.contains("resume"), "{e}");
    let blobs = cache.path().join("datasets--test-org--set/blobs");
    let part: Vec<_> = std::fs::read_dir(&blobs)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".part"))
        .collect();
    assert_eq!(part.len(), 1, "the partial file is kept");
    let kept = part[0].metadata().unwrap().len();
    assert!(kept > 0 && kept < data.len() as u64, "{kept}");

    let o = fetch(&hub, cache.path(), &["data", "fetch", "test-org/set"], None);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let got = std::fs::read(
        cache
            .path()
            .join("datasets--test-org--set/snapshots/da7a000000000000000000000000000000000002/data/test.parquet"),
    )
    .unwrap();
    assert_eq!(got, data);
    assert!(
        hub.log()
            .iter()
            .any(|l| l.ends_with(&format!("bytes={kept}-"))),
        "the second download asked for the rest only: {:?}",
        hub.log()
    );
}

/// Issue 16: `kill -9` at any moment of a download loses nothing and
/// corrupts nothing. A slowly served file is fetched and the process
/// killed at eight moments (before the first byte, and while the partial
/// file grows); after each kill the snapshot holds nothing or the whole
/// checked file, never part of it; the ninth fetch completes from where the last one stopped, and
/// the file is the Hub's, byte for byte (its hash checked).
#[test]
fn a_fetch_killed_at_any_moment_resumes_to_the_right_file() {
    let data = noise(1_600_000, 11);
    let hub = MockHub::start(vec![HubRepo {
        kind: "models",
        id: "test-org/slow".into(),
        commit: "5104000000000000000000000000000000000003".into(),
        files: vec![lfs("weights.gguf", data.clone())],
        token: None,
    }]);
    // 8 KB every 4 ms: about 800 ms for the whole file, longer than the
    // eight waits together.
    hub.state.lock().unwrap().trickle = Some(("weights.gguf".into(), 8 << 10, 4));
    let cache = tempfile::tempdir().unwrap();
    let repo = cache.path().join("models--test-org--slow");
    let snapshot_file =
        repo.join("snapshots/5104000000000000000000000000000000000003/weights.gguf");
    let part_len = || -> u64 {
        std::fs::read_dir(repo.join("blobs"))
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".part"))
                    .map(|e| e.metadata().unwrap().len())
                    .sum()
            })
            .unwrap_or(0)
    };
    let mut grown = Vec::new();
    for wait_ms in [5u64, 40, 60, 80, 30, 90, 50, 70] {
        let mut child = fetch_cmd(
            &hub,
            cache.path(),
            &["models", "fetch", "test-org/slow"],
            None,
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(wait_ms));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        // Either nothing is in the snapshot yet, or the whole, checked file.
        if let Ok(got) = std::fs::read(&snapshot_file) {
            assert!(
                got == data,
                "a killed fetch (after {wait_ms} ms) left a wrong file in the snapshot"
            );
        }
        grown.push(part_len());
    }
    assert!(
        grown.iter().any(|&n| n > 0),
        "no kill landed during the download: {grown:?}"
    );
    assert!(
        grown.windows(2).all(|w| w[1] >= w[0]),
        "the partial file shrank: {grown:?}"
    );
    let o = fetch(
        &hub,
        cache.path(),
        &["models", "fetch", "test-org/slow"],
        None,
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(std::fs::read(&snapshot_file).unwrap(), data);
    assert_eq!(part_len(), 0, "no partial file is left");
    let last = *grown.last().unwrap();
    if last > 0 {
        assert!(
            hub.log()
                .iter()
                .any(|l| l.ends_with(&format!("bytes={last}-"))),
            "the last fetch resumed at {last}: {:?}",
            hub.log()
        );
    }
}

#[test]
fn gated_sets_wrong_hashes_and_missing_repositories_are_named() {
    let mut bad = lfs("weights.gguf", noise(5_000, 1));
    bad.etag = hex::encode(Sha256::digest(b"something else"));
    let hub = MockHub::start(vec![
        HubRepo {
            kind: "datasets",
            id: "gated/set".into(),
            commit: "9a7ed00000000000000000000000000000000003".into(),
            files: vec![lfs(
                "items.jsonl",
                b"{\"id\": \"a\", \"prompt\": \"p\"}\n".to_vec(),
            )],
            token: Some("hf_test_token".into()),
        },
        HubRepo {
            kind: "models",
            id: "test-org/tampered".into(),
            commit: "badbad0000000000000000000000000000000004".into(),
            files: vec![bad],
            token: None,
        },
        HubRepo {
            kind: "models",
            id: "test-org/many".into(),
            commit: "0000000000000000000000000000000000000005".into(),
            files: vec![
                lfs("a-Q4_K_M.gguf", vec![1; 10]),
                lfs("a-Q8_0.gguf", vec![2; 10]),
            ],
            token: None,
        },
    ]);
    let cache = tempfile::tempdir().unwrap();
    let c = cache.path();

    let o = fetch(&hub, c, &["data", "fetch", "gated/set"], None);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(e.contains("HF_TOKEN") && e.contains("401"), "{e}");
    let o = fetch(
        &hub,
        c,
        &["data", "fetch", "gated/set"],
        Some("hf_test_token"),
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));

    let o = fetch(&hub, c, &["models", "fetch", "test-org/tampered"], None);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(4), "{e}");
    assert!(e.contains("weights.gguf") && e.contains("removed"), "{e}");
    let snap =
        c.join("models--test-org--tampered/snapshots/badbad0000000000000000000000000000000004");
    assert!(
        !snap.join("weights.gguf").exists(),
        "nothing unverified stays"
    );

    let o = fetch(&hub, c, &["models", "fetch", "test-org/many"], None);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(
        e.contains("a-Q4_K_M.gguf") && e.contains("--include"),
        "{e}"
    );
    let o = fetch(
        &hub,
        c,
        &[
            "models",
            "fetch",
            "test-org/many",
            "--include",
            "*Q8_0.gguf",
        ],
        None,
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("a-Q8_0.gguf") && !stdout(&o).contains("Q4_K_M"));

    let o = fetch(&hub, c, &["models", "fetch", "nobody/nothing"], None);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(e.contains("404") && e.contains("nobody/nothing"), "{e}");

    // No Hub at all: the network's failure, exit 3.
    let o = bin()
        .args(["data", "fetch", "gated/set@other"])
        .env("HF_ENDPOINT", "http://127.0.0.1:9")
        .env("HF_HUB_CACHE", c)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
}
