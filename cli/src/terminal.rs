//! The user's terminal: raw mode for the console, restored on every way out
//! (normal return, error, signal and panic), and a panic hook that prints one
//! line instead of a backtrace.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{Error, Result};

/// Whether this process put the terminal into raw mode and has not restored it.
static RAW: AtomicBool = AtomicBool::new(false);

/// Raw mode while alive; the terminal is restored when it is dropped.
#[must_use = "raw mode ends when the guard is dropped"]
pub struct RawMode {
    active: bool,
}

impl RawMode {
    /// Puts the terminal into raw mode when standard input is one; otherwise
    /// (input from a pipe or file) changes nothing.
    pub fn enable() -> Result<RawMode> {
        if !std::io::stdin().is_terminal() {
            return Ok(RawMode { active: false });
        }
        crossterm::terminal::enable_raw_mode()
            .map_err(|e| Error::Local(format!("cannot put the terminal into raw mode: {e}")))?;
        RAW.store(true, Ordering::SeqCst);
        Ok(RawMode { active: true })
    }

    /// Whether the terminal is in raw mode (output then needs "\r\n").
    pub fn is_active(&self) -> bool {
        self.active
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if self.active {
            restore();
        }
    }
}

/// Restores the terminal if this process left it in raw mode. Safe to call
/// more than once and from a panic hook.
pub fn restore() {
    if RAW.swap(false, Ordering::SeqCst) {
        let _ = crossterm::terminal::disable_raw_mode();
    }
}

/// Installs the panic hook: restore the terminal, print one line, exit 1.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        restore();
        let what = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown cause".to_owned());
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!(
            "error: ironctl failed unexpectedly ({}{at}); please report this",
            crate::status::one_line(&what)
        );
        std::process::exit(1);
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restoring_without_raw_mode_does_nothing_and_repeats_safely() {
        restore();
        restore();
        assert!(!RAW.load(Ordering::SeqCst));
        // Under `cargo test` standard input is not a terminal: no raw mode.
        if !std::io::stdin().is_terminal() {
            let guard = RawMode::enable().unwrap();
            assert!(!guard.is_active());
        }
    }
}
