//! TLS towards the Ironic API (CA file, insecure, untrusted), static server certificates, and
//! JSON logs.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

#[test]
fn https_api_verified_with_ca_file() {
    let (ironic, cert) = MockIronic::start_tls(vec![], lookup_ok(&token(), 300));
    let d = tempfile::tempdir().unwrap();
    let ca = d.path().join("ironic.crt");
    std::fs::write(&ca, &cert).unwrap();
    let _agent = Agent::spawn(
        &format!("ipa-api-url={}", ironic.url),
        &d.path().join("state"),
        &["--ca-file", ca.to_str().unwrap()],
    );
    let hb = ironic.wait_heartbeats(1, Duration::from_secs(20));
    assert_eq!(hb[0].body["agent_token"], token());
}

#[test]
fn https_api_insecure_skips_verification() {
    let (ironic, _) = MockIronic::start_tls(vec![], lookup_ok(&token(), 300));
    let d = tempfile::tempdir().unwrap();
    let _agent = Agent::spawn(
        &format!("ipa-api-url={} ipa-insecure=1", ironic.url),
        &d.path().join("state"),
        &[],
    );
    ironic.wait_heartbeats(1, Duration::from_secs(20));
}

#[test]
fn https_api_untrusted_certificate_is_refused() {
    let (ironic, _) = MockIronic::start_tls(vec![], lookup_ok(&token(), 300));
    let d = tempfile::tempdir().unwrap();
    let empty_ca = d.path().join("other.crt");
    let (other, _) = rivet::tls::generate(
        "127.0.0.1".parse().unwrap(),
        rivet::config::Curve::P256,
        Duration::ZERO,
        "x",
    )
    .unwrap();
    std::fs::write(&empty_ca, other).unwrap();
    let mut agent = Agent::spawn(
        &format!("ipa-api-url={} ipa-lookup-timeout=2", ironic.url),
        &d.path().join("state"),
        &["--ca-file", empty_ca.to_str().unwrap()],
    );
    assert!(!agent.wait_exit(Duration::from_secs(15)).success());
    assert!(
        ironic.lookups().is_empty(),
        "no request got through an unverified TLS session"
    );
    let log = agent.log_text();
    assert!(log.to_lowercase().contains("certificate"), "{log}");
}

/// Operator-provided certificate and key: served as is, advertised as https, and not sent as
/// agent_verify_ca (the conductor verifies it with its own CA settings).
#[test]
fn static_tls_certificate_files() {
    let ironic = MockIronic::start(vec![], lookup_ok(&token(), 300));
    let d = tempfile::tempdir().unwrap();
    let (cert, key) = rivet::tls::generate(
        "127.0.0.1".parse().unwrap(),
        rivet::config::Curve::P384,
        Duration::from_secs(60),
        "op",
    )
    .unwrap();
    let (cf, kf) = (d.path().join("agent.crt"), d.path().join("agent.key"));
    std::fs::write(&cf, &cert).unwrap();
    std::fs::write(&kf, &key).unwrap();
    let agent = Agent::spawn(
        &format!("ipa-api-url={}", ironic.url),
        &d.path().join("state"),
        &[
            "--tls-cert-file",
            cf.to_str().unwrap(),
            "--tls-key-file",
            kf.to_str().unwrap(),
        ],
    );
    let hb = ironic.wait_heartbeats(1, Duration::from_secs(20));
    assert_eq!(
        hb[0].body["callback_url"],
        format!("https://127.0.0.1:{}", agent.port)
    );
    assert!(hb[0].body.get("agent_verify_ca").is_none());
    let c = common::agent_client(Some(&cert));
    let r = c
        .post(format!(
            "https://127.0.0.1:{}/v1/commands/?wait=true&agent_token={}",
            agent.port,
            token()
        ))
        .json(&json!({"name": "standby.sync", "params": {}}))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

#[test]
fn json_log_format() {
    let ironic = MockIronic::start(vec![], lookup_ok(&token(), 300));
    let d = tempfile::tempdir().unwrap();
    let agent = Agent::spawn(
        &format!("ipa-api-url={}", ironic.url),
        &d.path().join("state"),
        &["--log-format", "json"],
    );
    ironic.wait_heartbeats(1, Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(200));
    let log = agent.log_text();
    let events: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        events
            .iter()
            .any(|e| e["fields"]["message"] == "lookup succeeded"),
        "{log}"
    );
}
