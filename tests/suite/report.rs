//! The renderers against committed outputs: `report.md` and `report.html`
//! of two real reports (the sample's human-scored reference answers judged
//! by the refusal detector, and a SmolLM2 run with an attack strategy) are
//! compared byte for byte with `tests/fixtures/report/*.md|.html`. A change
//! to the templates shows up here as a diff to review; `ANJEON_BLESS=1`
//! rewrites the expected files.

use std::path::PathBuf;

use anjeon::metrics::Report;

fn fixtures() -> Vec<(String, Report)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/report");
    ["sample-reference", "sample-run-attacks"]
        .iter()
        .map(|n| {
            let text = std::fs::read_to_string(dir.join(format!("{n}.json"))).unwrap();
            (n.to_string(), serde_json::from_str(&text).unwrap())
        })
        .collect()
}

fn check(name: &str, got: &str) {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/report")
        .join(name);
    if std::env::var("ANJEON_BLESS").is_ok_and(|v| v == "1") {
        std::fs::write(&p, got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    assert_eq!(
        got.len(),
        want.len(),
        "{name}: length differs from the committed file"
    );
    if got != want {
        let at = got
            .bytes()
            .zip(want.bytes())
            .position(|(a, b)| a != b)
            .unwrap_or(got.len().min(want.len()));
        let around = |s: &str| -> String {
            s.char_indices()
                .filter(|(i, _)| i + 60 >= at && *i <= at + 60)
                .map(|(_, c)| c)
                .collect()
        };
        assert_eq!(
            around(got),
            around(&want),
            "{name} differs from the committed file at byte {at}"
        );
    }
}

#[test]
fn markdown_reports_equal_the_committed_ones() {
    for (n, rep) in fixtures() {
        check(&format!("{n}.md"), &anjeon::report::markdown(&rep));
    }
}

#[test]
fn html_reports_equal_the_committed_ones() {
    for (n, rep) in fixtures() {
        check(&format!("{n}.html"), &anjeon::report::html(&rep));
    }
}
