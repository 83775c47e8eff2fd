//! A lookup (or 1.84 inspection) answer applied to the agent's settings.
#![no_main]

#[path = "../bodies.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::lookup_config(data));
