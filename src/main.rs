//! The `anjeon` binary: a thin entry point; the command line lives in
//! `cli/` and the work in the `anjeon` library.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    // Exit quietly when stdout is closed early (`anjeon … | head`), like other CLI tools.
    #[cfg(unix)]
    // SAFETY: restoring the default SIGPIPE disposition before any thread is started.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    cli::main()
}
