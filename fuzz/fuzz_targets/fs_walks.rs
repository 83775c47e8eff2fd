//! File-system walks over untrusted trees: ISO9660 config drive to vfat, ESP loaders and mirror.
#![no_main]

#[path = "../bodies.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::fs_walks(data));
