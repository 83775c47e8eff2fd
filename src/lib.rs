//! Rivet: an ironic-python-agent compatible deploy agent.
//!
//! Layers, data flowing one way (each module only uses those below it):
//! `agent` (wiring) → `api` (HTTP server) and `conductor` (Ironic client) → `executor` (the
//! command table) → `commands` (IPA extensions) → `hardware`, `system` (and, later, the image
//! pipeline and partitioning). `inspect` (the inspection collectors) sits beside `commands`:
//! the agent calls it, it uses `hardware` and `system`. `config`, `tls`, `state`, `logging`,
//! `redact` and `error` are shared foundations.

pub mod agent;
pub mod api;
pub mod commands;
pub mod conductor;
pub mod config;
pub mod disk;
pub mod error;
pub mod executor;
pub mod fsread;
pub mod hardware;
pub mod image;
pub mod inspect;
pub mod install;
pub mod logging;
pub mod redact;
pub mod state;
pub mod system;
pub mod tls;
