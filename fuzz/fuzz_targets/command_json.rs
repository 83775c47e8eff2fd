//! Command bodies and the JSON inside them: image_info, inject_files lists, root device hints.
#![no_main]

#[path = "../bodies.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::command_json(data));
