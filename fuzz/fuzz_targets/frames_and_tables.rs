//! LLDP frames and SMBIOS tables.
#![no_main]

#[path = "../bodies.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::frames_and_tables(data));
