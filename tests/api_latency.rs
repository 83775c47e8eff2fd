//! The agent API stays fast while a long command runs: p99 under 10 ms over verified TLS.
//! A test binary of its own, so no other test's agents compete for the CPU meanwhile.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

#[test]
fn api_latency_while_a_command_runs() {
    let ironic = MockIronic::start(vec![], lookup_ok(&token(), 300));
    let state = tempfile::tempdir().unwrap();
    let agent = Agent::spawn(&format!("ipa-api-url={}", ironic.url), state.path(), &[]);
    let hb = ironic.wait_heartbeats(1, Duration::from_secs(20));
    let ca = hb[0].body["agent_verify_ca"].as_str().unwrap().to_string();
    let client = agent_client(Some(&ca));
    let base = format!(
        "https://127.0.0.1:{}/v1/commands/?agent_token={}",
        agent.port,
        token()
    );
    let r: Value = client
        .post(format!("{base}&wait=false"))
        .json(&json!({"name": "test.sleep", "params": {"seconds": 5}}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(r["command_status"], "RUNNING");
    let mut lat = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        let s = client.get(&base).send().unwrap().status().as_u16();
        assert_eq!(s, 200);
        lat.push(t.elapsed());
    }
    lat.sort();
    let (p50, p99) = (lat[100], lat[198]);
    eprintln!("API latency during a running command: p50 {p50:?} p99 {p99:?}");
    assert!(p99 < Duration::from_millis(10), "p99 {p99:?}");
}
