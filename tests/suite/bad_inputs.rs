//! The committed bad-input corpus (`tests/fixtures/bad/corpus/`, made by
//! `tests/fixtures/bad/make_corpus.py`): data set lines, media files, model
//! files, processor configs, responses files and flags a hostile or careless
//! user could hand anjeon. Each case runs the real binary and must
//! - end with an exit code of 1 (item failures), 2 (input), 3 or 4, never 0,
//!   a panic (101) or a signal;
//! - say what is wrong where: the output names the file (and the line, the
//!   limit's flag, … as the case lists) and, for an error, a `fix:`;
//! - give exactly the reviewed output (the exit code and
//!   every line of stdout and stderr) in `corpus_expected.txt`.
//!   `ANJEON_BLESS=1` rewrites the file
//!   after a change whose new messages were reviewed.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::common::bin;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else if !dest.exists() {
            std::fs::copy(e.path(), &dest).unwrap();
        }
    }
}

/// Make what cannot be committed: FIFOs, symlinks, large files, and the
/// rest of a model folder of which only the edited file is committed.
fn setup(dir: &Path, root: &Path, steps: &Value) {
    for s in steps.as_array().unwrap() {
        if let Some(p) = s.get("fifo") {
            let p = dir.join(p.as_str().unwrap());
            let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
            assert_eq!(
                unsafe { libc::mkfifo(c.as_ptr(), 0o644) },
                0,
                "mkfifo {}",
                p.display()
            );
        } else if let Some(l) = s.get("symlink") {
            let link = dir.join(l[0].as_str().unwrap());
            std::os::unix::fs::symlink(l[1].as_str().unwrap(), link).unwrap();
        } else if let Some(r) = s.get("repeat") {
            let text = format!(
                "{}{}{}",
                r["head"].as_str().unwrap(),
                r["unit"]
                    .as_str()
                    .unwrap()
                    .repeat(r["count"].as_u64().unwrap() as usize),
                r["tail"].as_str().unwrap()
            );
            std::fs::write(dir.join(r["path"].as_str().unwrap()), text).unwrap();
        } else if let Some(f) = s.get("fill") {
            copy_dir(
                &root.join(f[1].as_str().unwrap()),
                &dir.join(f[0].as_str().unwrap()),
            );
        } else {
            panic!("unknown setup step {s}");
        }
    }
}

#[test]
fn every_bad_input_gets_its_exit_code_and_a_message_naming_it() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let src = root.join("tests/fixtures/bad/corpus");
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("corpus");
    copy_dir(&src, &dir);
    let cases: Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("cases.json")).unwrap()).unwrap();
    let cases = cases["cases"].as_array().unwrap();
    assert!(cases.len() >= 80, "only {} cases", cases.len());
    let home = work.path().join("home"); // an empty model cache: nothing is fetched
    let mut out = String::new();
    let mut wrong = Vec::new();
    for c in cases {
        let name = c["name"].as_str().unwrap();
        setup(&dir, &root, &c["setup"]);
        let tmp = work.path().join("tmp").join(name);
        std::fs::create_dir_all(&tmp).unwrap();
        let args: Vec<String> = c["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().replace("{tmp}", tmp.to_str().unwrap()))
            .collect();
        let o = bin()
            .args(&args)
            .current_dir(&dir)
            .env("ANJEON_HOME", &home)
            .env("HF_HUB_CACHE", home.join("hf"))
            .env("HF_ENDPOINT", "http://127.0.0.1:9")
            .env_remove("ANJEON_LOG")
            // Users set it; messages must not grow backtraces then.
            .env("RUST_BACKTRACE", "1")
            .env_remove("RUST_LIB_BACKTRACE")
            .output()
            .unwrap();
        let rate = regex::Regex::new(r"[0-9.]+ items/s").unwrap();
        let clean = |s: &[u8]| {
            let s = String::from_utf8_lossy(s);
            rate.replace_all(&s, "N items/s")
                .replace(tmp.to_str().unwrap(), "$TMP")
                .replace(dir.to_str().unwrap(), "$CORPUS")
                .replace(home.to_str().unwrap(), "$HOME")
        };
        let (stdout, stderr) = (clean(&o.stdout), clean(&o.stderr));
        let code = o.status.code();
        let all = format!("{stdout}{stderr}");
        let mut problems = Vec::new();
        if !matches!(code, Some(1..=4)) {
            problems.push(format!("exit {code:?}"));
        }
        if all.contains("panicked") || all.contains("RUST_BACKTRACE") {
            problems.push("a panic".into());
        }
        if all.contains("stack backtrace") || all.contains("at /rustc/") {
            problems.push("a backtrace in the message".into());
        }
        for w in c["want"].as_array().unwrap() {
            let w = w.as_str().unwrap();
            if !all.contains(w) {
                problems.push(format!("does not say {w:?}"));
            }
        }
        let usage = stderr.contains("For more information, try '--help'");
        if stderr.contains("error:") && !usage && !stderr.contains("fix:") {
            problems.push("an error without a fix".into());
        }
        if !problems.is_empty() {
            wrong.push(format!("{name}: {}\n{all}", problems.join(", ")));
        }
        out.push_str(&format!(
            "== {name}\n$ anjeon {}\nexit {}\n--- stdout\n{stdout}--- stderr\n{stderr}\n",
            args.join(" ").replace(tmp.to_str().unwrap(), "$TMP"),
            code.map_or("signal".into(), |c| c.to_string())
        ));
    }
    let golden = root.join("tests/fixtures/bad/corpus_expected.txt");
    if std::env::var_os("ANJEON_BLESS").is_some() {
        std::fs::write(&golden, &out).unwrap();
    }
    assert!(
        wrong.is_empty(),
        "{} of {} cases:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );
    let want = std::fs::read_to_string(&golden).unwrap_or_default();
    if want != out {
        let first = want
            .lines()
            .zip(out.lines())
            .enumerate()
            .find(|(_, (a, b))| a != b)
            .map(|(i, (a, b))| format!("line {}: expected {a:?}, got {b:?}", i + 1));
        panic!(
            "the outputs differ from {} ({first:?}); review them and rerun with ANJEON_BLESS=1",
            golden.display()
        );
    }
}
