//! The inputs of peer image sharing: torrents, LSD announcements, peer wire messages.
#![no_main]

#[path = "../bodies.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::torrent(data));
