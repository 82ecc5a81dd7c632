//! Containing panics of third-party decoders. Some parsers anjeon uses
//! panic on malformed input (fuzzing found index and arithmetic errors in
//! symphonia 0.5's MP4 demuxer and AAC decoder); a file that makes one
//! panic is that item's error, not the end of the run. The panic message
//! is kept for the error, and the command line's panic hook stays quiet
//! for a contained panic (see [`quiet`]).

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};

thread_local! {
    static CONTAINED: Cell<bool> = const { Cell::new(false) };
}

/// True while this thread runs inside [`contain`]: a panic hook should not
/// print the panic (it becomes an error that names the file).
pub fn quiet() -> bool {
    CONTAINED.with(|c| c.get())
}

/// Run `f`; a panic inside becomes `Err` with the panic's message.
pub fn contain<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    let was = CONTAINED.with(|c| c.replace(true));
    let r = catch_unwind(AssertUnwindSafe(f));
    CONTAINED.with(|c| c.set(was));
    r.map_err(|p| {
        p.downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".into())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_an_error_and_the_flag_is_restored() {
        assert_eq!(contain(|| 3), Ok(3));
        let e = contain(|| -> u8 { panic!("index out of bounds") }).unwrap_err();
        assert!(e.contains("index out of bounds"));
        assert!(!quiet());
    }
}
