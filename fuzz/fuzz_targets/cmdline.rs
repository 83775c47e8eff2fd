//! The kernel command line, all the way to the agent's configuration.
#![no_main]

#[path = "../bodies.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::cmdline(data));
