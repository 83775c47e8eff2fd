//! network_data.json, SNTP answers and DHCP lease variables.
#![no_main]

#[path = "../bodies.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::network_data(data));
