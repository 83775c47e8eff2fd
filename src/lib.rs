//! Rivet: an ironic-python-agent compatible deploy agent.
//!
//! Layers, data flowing one way: a module uses only modules of lower layers (and its own
//! files), and no files use each other in a loop; `tests/layering.rs` reads every `crate::`
//! and `super::` path and fails otherwise. From the top:
//!
//! 1. `agent`: the wiring (inspection, lookup, TLS, the API server, heartbeats, power).
//! 2. `api`: the HTTP server (routes, token gate, JSON errors).
//! 3. `executor`: the one command executor; runs one command at a time.
//! 4. `commands` (IPA's extensions: thin handlers that turn wire arguments into typed
//!    requests; one table of commands, one of steps) and `install` (the same pipeline from
//!    the command line).
//! 5. `deploy`: partition-image layouts, boot loaders (firmware entries, ESP, GRUB), files
//!    injected into the image.
//! 6. `image`: the pipeline (fetch → verify → decode → write).
//! 7. `disk` (`device`: the one owner of a disk being written; `table`: the one partition
//!    type and its reader; `nodes`: the kernel's partition nodes; layouts, mounts, ESP,
//!    config drives, wiping, erasing) and `inspect` (the inspection collectors).
//!    `network` (the ramdisk's network: network_data.json, DHCP, VLANs, bonds, SNTP) sits
//!    beside them.
//! 8. `hardware`: discovery (disks, NICs, inventory, hints, SMBIOS, LLDP, PCI, NUMA, USB).
//! 9. `system` (tools, ioctls, raw sockets, power, logs, files inside an image) and
//!    `conductor` (the Ironic API client: inspection, lookup, heartbeat).
//! 10. `logging`, `tls`.
//! 11. `config`.
//! 12. `panics` (the panic hook, poison-tolerant locks).
//! 13. `error`, `redact`, `fsread`, `state`, `timeline` (the boot timeline every layer marks),
//!     `test_support` (unit tests only).

pub mod agent;
pub mod api;
pub mod commands;
pub mod conductor;
pub mod config;
pub mod deploy;
pub mod disk;
pub mod error;
pub mod executor;
pub mod fsread;
pub mod hardware;
pub mod image;
pub mod inspect;
pub mod install;
pub mod logging;
pub mod network;
pub mod panics;
pub mod redact;
pub mod state;
pub mod system;
#[cfg(test)]
mod test_support;
pub mod timeline;
pub mod tls;
