//! One AFL++ harness for every reader: `ANJEON_FUZZ_TARGET` picks the
//! reader, the input is the file's bytes. Errors are fine; a panic, an
//! abort or a hang is a finding.
//!
//! Build and run (docs/reliability.md):
//! `cargo afl build --release` in tests/fuzz, then
//! `ANJEON_FUZZ_TARGET=image cargo afl fuzz -i seeds/image -o out/image target/release/anjeon-fuzz`.

mod targets;

fn main() {
    let target = std::env::var("ANJEON_FUZZ_TARGET").expect("set ANJEON_FUZZ_TARGET");
    assert!(
        targets::TARGETS.contains(&target.as_str()),
        "ANJEON_FUZZ_TARGET {target:?}: use one of {:?}",
        targets::TARGETS
    );
    // No panic hook: a panic the library contains (core::guard) is an error,
    // an uncaught one still aborts and is a finding.
    afl::fuzz_nohook!(|data: &[u8]| {
        targets::run(&target, data);
    });
}
