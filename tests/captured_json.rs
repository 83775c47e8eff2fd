//! Wire shapes against JSON captured from real conductor ⇄ agent conversations (Ironic 39):
//! every captured command result round-trips through Rivet's result type unchanged, and the
//! captured lookup answer configures the agent.
#![allow(clippy::unwrap_used)]

use rivet::config::{cmdline::parse_params, AgentArgs, Config, TlsVersion};
use rivet::executor::CommandResult;
use serde_json::Value;

fn fixture(name: &str) -> Value {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

#[test]
fn captured_command_results_round_trip() {
    let all = fixture("captured_command_results.json");
    let all = all.as_array().unwrap();
    assert!(all.len() >= 10);
    let mut statuses = std::collections::BTreeSet::new();
    for v in all {
        let r: CommandResult =
            serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{e}: {v}"));
        statuses.insert(format!("{:?}", r.command_status));
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            *v,
            "round trip changed {v}"
        );
    }
    for s in ["Running", "Succeeded", "Failed"] {
        assert!(statuses.contains(s), "fixtures cover {s}");
    }
}

#[test]
fn captured_lookup_configures_the_agent() {
    let lookup = fixture("captured_lookup.json");
    let mut cfg = Config::from_params(
        &parse_params("ipa-api-url=http://127.0.0.1:6385"),
        &AgentArgs::default(),
    )
    .unwrap();
    cfg.apply_lookup(&lookup["config"]).unwrap();
    assert_eq!(
        cfg.heartbeat_timeout.as_secs(),
        lookup["config"]["heartbeat_timeout"].as_u64().unwrap()
    );
    assert!(cfg.md5_enabled);
    assert_eq!(cfg.tls_min_version, TlsVersion::V1_3);
    assert!(cfg.permitted_image_formats.contains(&"qcow2".to_string()));
    assert!(lookup["node"]["uuid"].is_string());
}
