//! The library's log lines (the `log` crate) on stderr: information as is,
//! warnings after `warning:`. `ANJEON_LOG=warn` (or `error`, `off`) quiets
//! them, `ANJEON_LOG=debug` adds detail. Other crates' logs are left out.

use log::{Level, LevelFilter, Log, Metadata, Record};

struct Stderr;

impl Log for Stderr {
    fn enabled(&self, m: &Metadata) -> bool {
        m.target().starts_with("anjeon")
    }
    fn log(&self, r: &Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let line = match r.level() {
            Level::Error => format!(
                "{} {}",
                anjeon::core::progress::paint("error:", "31"),
                r.args()
            ),
            Level::Warn => format!(
                "{} {}",
                anjeon::core::progress::paint("warning:", "33"),
                r.args()
            ),
            _ => r.args().to_string(),
        };
        anjeon::core::progress::eprint_line(&line);
    }
    fn flush(&self) {}
}

static LOGGER: Stderr = Stderr;

pub fn init() {
    let level = match std::env::var("ANJEON_LOG").ok().as_deref() {
        Some("off") => LevelFilter::Off,
        Some("error") => LevelFilter::Error,
        Some("warn") => LevelFilter::Warn,
        Some("debug") => LevelFilter::Debug,
        Some("trace") => LevelFilter::Trace,
        _ => LevelFilter::Info,
    };
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(level);
    }
}
