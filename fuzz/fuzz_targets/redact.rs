//! Secret masking over any text (every result, error and log line goes through it).
#![no_main]

#[path = "../bodies.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::redact(data));
