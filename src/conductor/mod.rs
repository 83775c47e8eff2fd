//! The conductor side of the protocol: version discovery, inspection, lookup, heartbeat.

pub mod backoff;
pub mod client;
pub mod heartbeat;
pub mod inspection;
pub mod lookup;

/// What we report as `agent_version`: the IPA protocol release we implement, with our own
/// version as semver build metadata (the conductor only records it).
pub fn agent_version() -> String {
    format!("13.0.0+rivet.{}", env!("CARGO_PKG_VERSION"))
}
