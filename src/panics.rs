//! What a panic may leave behind, kept small: a panic is a bug, but one command's bug must not
//! take the node down with it (the release build unwinds, and the executor, the API and the
//! heartbeat loop each catch what unwinds out of their work).
//!
//! * [`install_hook`]: the panic message goes to the log like any other line, through the
//!   redacting writer. Rust's default hook writes it raw to stderr, and a slicing panic quotes
//!   the text it sliced, which can hold a URL's password or a token. The hook must not panic
//!   itself (that aborts the process): the message is cut down to printable ASCII before it is
//!   masked, so the one text that made the masking panic cannot make it panic again here.
//! * [`lock`]: a mutex a panicking thread held is still usable. Every value behind the agent's
//!   mutexes is replaced whole under the lock, so what a panic leaves there is a value some
//!   code wrote completely; refusing it ("poisoned") would silently stop the executor's table,
//!   the progress and the deployed-image memory for the rest of the boot.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Lock `m`, recovering the value if a panicking thread held it.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Log panics through `tracing` (and so through the redacting writers) instead of stderr.
pub fn install_hook() {
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let thread = std::thread::current();
        tracing::error!(
            thread = thread.name().unwrap_or("unnamed"),
            %location,
            message = %message(info.payload()),
            "internal error (panic)"
        );
    }));
}

/// The text of a panic's payload as printable ASCII (anything else becomes `?`), redacted: for
/// the log and for the error a command fails with.
pub fn message(payload: &(dyn std::any::Any + Send)) -> String {
    let msg = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)");
    let ascii: String = msg
        .chars()
        .map(|c| {
            if c == ' ' || c.is_ascii_graphic() {
                c
            } else {
                '?'
            }
        })
        .collect();
    crate::redact::text(&ascii).into_owned()
}
