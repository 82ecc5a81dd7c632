//! The integration tests: one binary (one link of candle, FFmpeg and
//! parquet) with a module per area. Tests that run the real binary use
//! `common::bin`/`common::anjeon`; tests that need a bundled model read it
//! from the cache through `common::model_file` (see `.ci/run`).

mod common;

mod architecture;
mod attacks;
mod audio;
mod bad_inputs;
mod cli;
mod dataset;
mod embedding;
mod fuzz_regressions;
mod gemma4;
mod guard;
mod heads;
mod hub;
mod judge;
mod media;
mod metrics;
mod models;
mod report;
mod tekken;
mod vision;
mod voxtral;
mod whisper;

/// Every file of `tests/suite/` is declared above: a file left out would
/// compile to nothing and its tests would silently never run.
#[test]
fn every_test_file_is_a_module_of_the_suite() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/suite");
    let main = std::fs::read_to_string(dir.join("main.rs")).unwrap();
    let mut missing = Vec::new();
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(stem) = name.strip_suffix(".rs") {
            if stem != "main" && !main.contains(&format!("\nmod {stem};\n")) {
                missing.push(name);
            }
        }
    }
    assert!(
        missing.is_empty(),
        "not declared in tests/suite/main.rs: {missing:?}"
    );
}
