//! Checksum files (GNU, BSD, bare hash) as servers publish them, and the expected-hash rules.
#![no_main]

#[path = "../bodies.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::checksum_file(data));
