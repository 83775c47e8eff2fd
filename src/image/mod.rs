//! The image pipeline: fetch → verify → decode → write, plus progress reporting.

pub mod decode;
pub mod fetch;
pub mod info;
pub mod pipeline;
pub mod progress;
pub mod qcow2;
pub mod qcow2_fetch;
pub mod ranges;
pub mod share;
pub mod verify;
pub mod write;
