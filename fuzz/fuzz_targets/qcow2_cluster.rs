//! The compressed-cluster decoder: any input, deflate or zstd, into one cluster.
#![no_main]

#[path = "../bodies.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::qcow2_cluster(data));
