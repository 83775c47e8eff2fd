//! Custom step manifests: TOML from the ramdisk's steps directory.
#![no_main]

#[path = "../bodies.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::step_manifest(data));
