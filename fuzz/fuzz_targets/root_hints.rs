//! Root device hints: parsing any JSON object, then matching against a disk.
#![no_main]

#[path = "../bodies.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::root_hints(data));
