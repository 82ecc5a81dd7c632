//! The fuzzing findings and a sample of each target's corpus
//! (`tests/fixtures/fuzz/TARGET/*`), run through the same targets as the
//! AFL++ harness (`tests/fuzz/src/targets.rs`): each must come back (an
//! error is fine) without a panic. An abort or a hang would stop this test.

#[path = "../fuzz/src/targets.rs"]
mod targets;

#[test]
fn fuzz_findings_and_corpus_samples_run_without_a_panic() {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fuzz");
    let mut ran = 0;
    let mut panicked = Vec::new();
    for target in targets::TARGETS {
        let dir = root.join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut files: Vec<_> = entries.flatten().map(|e| e.path()).collect();
        files.sort();
        for f in files {
            let data = std::fs::read(&f).unwrap();
            if std::env::var_os("ANJEON_FUZZ_TRACE").is_some() {
                eprintln!("{}", f.display());
            }
            let r = std::panic::catch_unwind(|| targets::run(target, &data));
            if r.is_err() {
                panicked.push(f.display().to_string());
            }
            ran += 1;
        }
    }
    assert!(ran >= 80, "only {ran} committed fuzz inputs");
    assert!(panicked.is_empty(), "panicked on: {panicked:?}");
}
