//! The layering of `src/` (docs/architecture.md): each module imports only
//! from the layers below it, the library has no clap and prints nothing
//! but through `outln!`/`out!` (stdout data) and the progress bars, and
//! `main.rs` stays short. Read from the source, so a new import across the
//! layers fails here, naming the file and line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Each top-level module and the modules it may import (`crate::NAME`).
/// `core` is at the bottom; `cli` (the binary) may use everything.
const ALLOWED: &[(&str, &[&str])] = &[
    ("core", &[]),
    ("audio", &["core"]),
    ("media", &["core", "audio"]),
    ("dataset", &["core", "audio", "media"]),
    ("attack", &["core"]),
    ("model", &["core", "media", "audio"]),
    ("judge", &["core", "dataset", "model"]),
    ("runlog", &["core", "judge", "model"]),
    ("metrics", &["core", "judge", "runlog"]),
    ("report", &["core", "judge", "metrics", "runlog"]),
    (
        "pipeline",
        &[
            "core", "audio", "media", "dataset", "attack", "model", "judge", "runlog", "metrics",
            "report",
        ],
    ),
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level module a file of `src/` belongs to.
fn module_of(rel: &Path) -> String {
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    match first.as_ref() {
        "main.rs" => "cli".into(),
        f => f.trim_end_matches(".rs").into(),
    }
}

/// Source lines outside `#[cfg(test)]` modules and comments.
fn code_lines(text: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim_start() == "#[cfg(test)]" {
            break; // unit tests sit at the end of a file
        }
        let t = line.trim_start();
        if t.starts_with("//") {
            continue;
        }
        out.push((i + 1, line));
    }
    out
}

fn sources() -> Vec<(PathBuf, String, String)> {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let rel = p.strip_prefix(&src).unwrap().to_path_buf();
            let text = std::fs::read_to_string(&p).unwrap();
            (rel.clone(), module_of(&rel), text)
        })
        .collect()
}

#[test]
fn modules_import_only_the_layers_below_them() {
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut bad = Vec::new();
    for (rel, module, text) in sources() {
        if module == "cli" || module == "lib" {
            continue;
        }
        let ok = allowed
            .get(module.as_str())
            .unwrap_or_else(|| panic!("src/{}: module {module} is not in ALLOWED (add its layer here and to docs/architecture.md)", rel.display()));
        for (n, line) in code_lines(&text) {
            let mut rest = line;
            while let Some(i) = rest.find("crate::") {
                let name: String = rest[i + 7..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[i + 7..];
                // `$crate::` in macros and the crate's own exported macros.
                if name == module || name == "outln" || name == "out" || name.is_empty() {
                    continue;
                }
                if !ok.contains(&name.as_str()) {
                    bad.push(format!(
                        "src/{}:{n}: {module} imports {name}",
                        rel.display()
                    ));
                }
            }
        }
    }
    assert!(
        bad.is_empty(),
        "imports across the layers (docs/architecture.md):\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_library_has_no_command_line_and_prints_only_data() {
    let mut bad = Vec::new();
    for (rel, module, text) in sources() {
        if module == "cli" {
            continue;
        }
        for (n, line) in code_lines(&text) {
            if line.contains("clap::") {
                bad.push(format!("src/{}:{n}: clap in the library", rel.display()));
            }
            // Progress lines off a terminal are the one stderr output of the
            // library that is not a log record.
            let progress = rel == Path::new("core/progress.rs");
            let stdout = line.replace("eprintln!(", "").contains("println!(");
            if (line.contains("eprintln!(") && !progress) || stdout {
                bad.push(format!(
                    "src/{}:{n}: prints (use log::info!/warn!, or return the text)",
                    rel.display()
                ));
            }
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn main_is_a_thin_entry_point() {
    let main =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/main.rs"))
            .unwrap();
    let lines = main.lines().count();
    assert!(
        lines < 150,
        "src/main.rs has {lines} lines; commands go in src/cli/"
    );
}
