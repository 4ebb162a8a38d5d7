//! Runs third-party decoders so that a panic inside them becomes an error, without the panic
//! message on stderr: a malformed file is bad input, not a crash.
//!
//! # Design
//! `catch_unwind` stops the unwind, but the process-wide panic hook has already printed
//! "thread panicked at ...". The hook is replaced once by one that stays silent while the
//! current thread is inside [`quietly`] and defers to the previous hook everywhere else, so
//! real bugs elsewhere still print as usual.

use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Once;

thread_local! {
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

static INSTALL: Once = Once::new();

/// Runs `f`; a panic inside it comes back as `Err` with the panic's message.
pub fn quietly<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(Cell::get) {
                previous(info);
            }
        }));
    });
    let was_quiet = QUIET.with(|q| q.replace(true));
    // The closure's state is dropped with the unwind and never observed again.
    let result = catch_unwind(AssertUnwindSafe(f));
    QUIET.with(|q| q.set(was_quiet));
    result.map_err(|payload| {
        payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_string()))
            .unwrap_or_else(|| "a panic without a message".into())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_its_message() {
        assert_eq!(quietly(|| 7), Ok(7));
        let err = quietly(|| -> u8 { panic!("palette too short") }).unwrap_err();
        assert_eq!(err, "palette too short");
        let err = quietly(|| -> u8 { panic!("{} entries", 4) }).unwrap_err();
        assert_eq!(err, "4 entries");
    }
}
