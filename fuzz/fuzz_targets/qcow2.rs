//! The whole qcow2 path on one in-memory file: header, L1 and L2 tables, then the write pass
//! that checks the metadata against the stream and scatters clusters. Invariant: nothing is
//! ever written outside the virtual disk, and errors are errors, never panics.
#![no_main]

#[path = "../bodies.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::qcow2(data));
