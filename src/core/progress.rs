//! Terminal output helpers: colour (respecting `NO_COLOR`) and progress on
//! stderr (a bar on a terminal, periodic lines off one).

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

/// Progress of one stage on stderr: a bar on a terminal; off a terminal
/// (nohup, Slurm, a pod's log) a plain line every 30 s or every 5% of the
/// work, whichever comes first, with the same numbers the bar shows.
pub struct Progress {
    bar: indicatif::ProgressBar,
    /// Off a terminal: what is printed, and when it was last.
    log: Option<std::sync::Mutex<LogState>>,
}

struct LogState {
    what: String,
    len: u64,
    pos: u64,
    bytes: bool,
    start: std::time::Instant,
    last: std::time::Instant,
    last_step: u64,
}

/// How often a progress line is printed off a terminal.
const LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

impl Progress {
    pub fn inc(&self, n: u64) {
        self.bar.inc(n);
        if let Some(log) = &self.log {
            let mut l = log.lock().unwrap_or_else(|e| e.into_inner());
            l.pos += n;
            // 5% steps of the total (every item when there are fewer than 20).
            let step = (l.pos * 20).checked_div(l.len).unwrap_or(0);
            if step > l.last_step || l.last.elapsed() >= LOG_EVERY {
                l.last_step = step;
                l.last = std::time::Instant::now();
                eprintln!("{}", l.line());
            }
        }
    }

    /// Count bytes rather than items (downloads).
    pub fn bytes(self) -> Self {
        self.bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .expect("template")
            .progress_chars("=> "),
        );
        if let Some(log) = &self.log {
            log.lock().unwrap_or_else(|e| e.into_inner()).bytes = true;
        }
        self
    }

    pub fn finish_and_clear(&self) {
        self.bar.finish_and_clear();
        if let Some(log) = &self.log {
            let l = log.lock().unwrap_or_else(|e| e.into_inner());
            // The last line says the stage is done, unless that was printed.
            if l.pos > 0 && l.last_step < 20 {
                eprintln!("{}", l.line());
            }
        }
    }
}

impl LogState {
    fn line(&self) -> String {
        let secs = self.start.elapsed().as_secs_f64().max(1e-9);
        let rate = self.pos as f64 / secs;
        let (done, total, speed) = if self.bytes {
            let mb = |b: u64| b as f64 / (1024.0 * 1024.0);
            (
                format!("{:.1} MiB", mb(self.pos)),
                format!("{:.1} MiB", mb(self.len)),
                format!("{:.1} MiB/s", rate / (1024.0 * 1024.0)),
            )
        } else {
            (
                self.pos.to_string(),
                self.len.to_string(),
                format!("{rate:.2} items/s"),
            )
        };
        let eta = if self.pos >= self.len || rate <= 0.0 {
            "done".to_string()
        } else {
            let s = ((self.len - self.pos) as f64 / rate).round() as u64;
            format!("eta {}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
        };
        let pct = if self.len == 0 {
            100.0
        } else {
            100.0 * self.pos as f64 / self.len as f64
        };
        format!("{}: {done}/{total} ({pct:.0}%), {speed}, {eta}", self.what)
    }
}

/// Progress of `len` items of work called `what` (see [`Progress`]).
pub fn bar(len: u64, what: &str) -> Progress {
    use std::io::IsTerminal;
    let terminal = std::io::stderr().is_terminal();
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
    let now = std::time::Instant::now();
    Progress {
        bar: pb,
        log: (!terminal && std::env::var_os("ANJEON_NO_PROGRESS").is_none()).then(|| {
            std::sync::Mutex::new(LogState {
                what: what.to_string(),
                len,
                pos: 0,
                bytes: false,
                start: now,
                last: now,
                last_step: 0,
            })
        }),
    }
}

/// One line on stderr (a log line); a failed write is ignored, as
/// `eprintln!` would panic instead.
pub fn eprint_line(s: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{s}");
}
