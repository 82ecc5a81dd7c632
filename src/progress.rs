//! Terminal output helpers: colour (respecting `NO_COLOR`) and progress bars
//! on stderr.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};

static COLOR: AtomicBool = AtomicBool::new(false);

/// Decide once whether to colour stderr: a terminal and no `NO_COLOR`.
pub fn init_color() {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    COLOR.store(
        !no_color && std::io::stderr().is_terminal(),
        Ordering::Relaxed,
    );
}

/// Wrap `s` in an ANSI colour code when colour is on.
pub fn paint(s: &str, code: &str) -> String {
    if COLOR.load(Ordering::Relaxed) {
        format!("\x1b[{code}m{s}\x1b[0m")
    } else {
        s.to_string()
    }
}

/// A progress bar on stderr; hidden when stderr is not a terminal.
pub fn bar(len: u64, what: &str) -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::with_draw_target(
        Some(len),
        indicatif::ProgressDrawTarget::stderr(),
    );
    let color = COLOR.load(Ordering::Relaxed);
    let tpl = if color {
        "{prefix:.bold} [{bar:30.cyan/blue}] {pos}/{len} {per_sec} eta {eta}"
    } else {
        "{prefix} [{bar:30}] {pos}/{len} {per_sec} eta {eta}"
    };
    pb.set_style(
        indicatif::ProgressStyle::with_template(tpl)
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.set_prefix(what.to_string());
    pb
}
