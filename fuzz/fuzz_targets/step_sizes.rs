//! A partition image's layout arguments, planned on disks of several sizes.
#![no_main]

#[path = "../bodies.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::step_sizes(data));
