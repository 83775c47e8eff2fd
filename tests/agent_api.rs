//! The agent against a mock Ironic on 127.0.0.1, driven the way Ironic's `agent_client` does.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

fn assert_result_shape(v: &Value) {
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    let mut k = keys.clone();
    k.sort();
    assert_eq!(
        k,
        vec![
            "command_error",
            "command_name",
            "command_result",
            "command_status",
            "id"
        ],
        "{v}"
    );
}

/// A started agent with its mock conductor, and a client that trusts the advertised CA.
struct Running {
    ironic: MockIronic,
    _state: tempfile::TempDir,
    agent: Agent,
    api: Api,
    /// The CA certificate the agent advertised in its first heartbeat.
    ca: String,
}

/// Lookup fails twice (404) then succeeds; the agent heartbeats over auto-TLS.
fn start() -> Running {
    let ironic = MockIronic::start(
        vec![
            (404, json!({"error_message": "not found"})),
            (404, json!({})),
        ],
        lookup_ok(&token(), 300),
    );
    let state = tempfile::tempdir().unwrap();
    let agent = Agent::spawn(
        &format!("ipa-api-url={} ipa-global-request-id=req-42", ironic.url),
        state.path(),
        &[],
    );
    let hb = ironic.wait_heartbeats(1, Duration::from_secs(20));
    let ca = hb[0].body["agent_verify_ca"]
        .as_str()
        .expect("agent_verify_ca")
        .to_string();
    let api = Api::over_tls(&agent, &ca);
    Running {
        ironic,
        _state: state,
        agent,
        api,
        ca,
    }
}

fn node() -> Value {
    json!({"uuid": NODE, "provision_state": "wait call-back"})
}

/// Lookup 404 → 200 with IPA's headers, then a heartbeat with the token and a CA that
/// verifies the agent (and a client that does not trust it fails the handshake).
#[test]
fn lookup_retries_then_heartbeats_over_verified_tls() {
    let r = start();
    let (ironic, agent, api) = (&r.ironic, &r.agent, &r.api);
    let hb = ironic.heartbeats();
    let lookups = ironic.lookups();
    assert_eq!(lookups.len(), 3, "two 404s then success");
    assert!(
        lookups[0].path.contains(&format!("addresses={MAC}")),
        "{}",
        lookups[0].path
    );
    assert_eq!(lookups[0].version.as_deref(), Some("1.62"));
    assert_eq!(lookups[0].request_id.as_deref(), Some("req-42"));
    let first = &hb[0];
    assert_eq!(first.path, format!("/v1/heartbeat/{NODE}"));
    assert_eq!(first.version.as_deref(), Some("1.72"));
    assert_eq!(first.request_id.as_deref(), Some("req-42"));
    let b = &first.body;
    assert_eq!(
        b["callback_url"],
        format!("https://127.0.0.1:{}", agent.port)
    );
    assert_eq!(b["agent_token"], token());
    assert!(b["agent_version"].as_str().unwrap().starts_with("13.0.0"));
    let ca = b["agent_verify_ca"]
        .as_str()
        .expect("agent_verify_ca")
        .to_string();
    assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"));

    // An HTTP client that does not trust the advertised CA must fail the handshake.
    let untrusting = reqwest::blocking::Client::builder()
        .use_preconfigured_tls(
            rustls::ClientConfig::builder_with_provider(rivet::tls::provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
        )
        .build()
        .unwrap();
    assert!(untrusting
        .get(format!("{}/v1/status", api.base))
        .send()
        .is_err());
}

/// Status and version routes need no token; every command route refuses a missing, empty or
/// wrong one.
#[test]
fn open_routes_and_token_checks() {
    let r = start();
    let api = &r.api;
    // Unauthenticated routes.
    let (s, v) = api.get(&format!("{}/v1/status", api.base));
    assert_eq!(s, 200);
    assert!(v["started_at"].as_f64().unwrap() > 1.7e9 && v["version"].is_string());
    for p in ["/", "/v1", "/v1/"] {
        let (s, v) = api.get(&format!("{}{p}", api.base));
        assert_eq!(s, 200, "{p}");
        assert!(
            v.get("default_version").is_some() || v.get("commands").is_some(),
            "{p}: {v}"
        );
    }

    // Token: missing, empty and wrong tokens are 401 on every command route.
    for url in [
        format!("{}/v1/commands/", api.base),
        format!("{}/v1/commands/?agent_token=", api.base),
        format!("{}/v1/commands?agent_token=wrong", api.base),
        format!("{}/v1/commands/abc?agent_token={}x", api.base, token()),
    ] {
        let (s, v) = api.get(&url);
        assert_eq!(s, 401, "{url}");
        assert_eq!(v["faultstring"], "401 Unauthorized: Token invalid.");
    }
    let r = api
        .client
        .post(format!(
            "{}/v1/commands/?wait=true&agent_token=bad",
            api.base
        ))
        .json(&json!({"name": "standby.sync", "params": {}}))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
}

/// Malformed requests get their status and a faultstring, and none is recorded.
#[test]
fn bad_requests_get_a_status_and_a_faultstring() {
    let r = start();
    let api = &r.api;
    // Bad requests: each gets its status and a faultstring.
    let raw = |body: &str| {
        let r = api
            .client
            .post(api.url("/v1/commands/", "wait=true"))
            .body(body.to_string())
            .send()
            .unwrap();
        let s = r.status().as_u16();
        (s, r.json::<Value>().unwrap())
    };
    let (s, v) = raw("{not json");
    assert_eq!(s, 400);
    assert!(v["faultstring"]
        .as_str()
        .unwrap()
        .starts_with("400 Bad Request: Failed to decode JSON object"));
    let (s, v) = raw(r#"{"name": "standby.sync"}"#);
    assert_eq!(
        (s, v["faultstring"].as_str().unwrap()),
        (400, "400 Bad Request: Missing or invalid name or params")
    );
    let (s, v) = raw(r#"{"name": 5, "params": {}}"#);
    assert_eq!(
        (s, v["faultstring"].as_str().unwrap()),
        (400, "400 Bad Request: Missing or invalid name or params")
    );
    let (s, v) = api.post("sync", json!({}), true);
    assert_eq!(s, 400);
    assert!(v["faultstring"]
        .as_str()
        .unwrap()
        .contains("<extension>.<name>"));
    let (s, v) = api.post("nosuch.sync", json!({}), true);
    assert_eq!(
        (s, v["faultstring"].as_str().unwrap()),
        (404, "Not found: Extension with id nosuch not found.")
    );
    let (s, v) = api.post("standby.nosuch", json!({}), true);
    assert_eq!(
        (s, v["faultstring"].as_str().unwrap()),
        (400, "Invalid command: Unknown command: nosuch")
    );
    let (s, v) = api.get(&api.url("/v1/commands/no-such-id", ""));
    assert_eq!(
        (s, v["faultstring"].as_str().unwrap()),
        (
            404,
            "Not found: Command Result with id no-such-id not found."
        )
    );
    let (s, v) = api.get(&format!("{}/v2/nothing", api.base));
    assert_eq!(s, 404);
    assert!(v["faultstring"].is_string());
    let r = api
        .client
        .delete(api.url("/v1/commands/", ""))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 405);
    assert!(r.json::<Value>().unwrap()["faultstring"].is_string());
    // None of the refused requests was recorded.
    let (_, v) = api.get(&api.url("/v1/commands/", ""));
    assert_eq!(v["commands"], json!([]));
}

/// The sync commands, with the arguments the conductor sends.
#[test]
fn sync_commands_as_the_conductor_sends_them() {
    let r = start();
    let api = &r.api;
    // Sync commands, as the conductor sends them.
    let node = node();
    let (s, v) = api.post(
        "deploy.get_deploy_steps",
        json!({"node": node, "ports": []}),
        true,
    );
    assert_eq!(s, 200);
    assert_result_shape(&v);
    assert_eq!(v["command_name"], "get_deploy_steps");
    assert_eq!(v["command_status"], "SUCCEEDED");
    assert!(v["command_result"]["deploy_steps"]["GenericHardwareManager"].is_array());
    assert_eq!(
        v["command_result"]["hardware_manager_version"],
        json!({"generic_hardware_manager": "1.4"})
    );
    for (name, key) in [
        ("clean.get_clean_steps", "clean_steps"),
        ("service.get_service_steps", "service_steps"),
    ] {
        let (s, v) = api.post(name, json!({"node": node, "ports": []}), true);
        assert_eq!(s, 200);
        assert!(v["command_result"][key].is_object(), "{v}");
    }
    let (_, v) = api.post("standby.get_partition_uuids", json!({}), true);
    assert_eq!(v["command_result"], json!({}));
    let (_, v) = api.post("standby.sync", json!({}), true);
    assert_eq!(
        (v["command_status"].as_str(), &v["command_result"]),
        (Some("SUCCEEDED"), &Value::Null)
    );
    // Unknown keyword arguments: recorded as a FAILED TypeError, never a 500.
    let (s, v) = api.post("standby.sync", json!({"bogus": 1}), true);
    assert_eq!(s, 200);
    assert_eq!(v["command_status"], "FAILED");
    assert_eq!(v["command_error"]["type"], "TypeError");
    let (_, v) = api.post("poll.get_hardware_info", json!({}), true);
    let inv = &v["command_result"];
    for k in [
        "interfaces",
        "cpu",
        "disks",
        "memory",
        "system_vendor",
        "boot",
        "hostname",
    ] {
        assert!(inv.get(k).is_some(), "inventory lacks {k}: {inv}");
    }
    assert_eq!(
        inv["boot"]["pxe_interface"],
        format!("01-{}", MAC.replace(':', "-"))
    );
    let (_, v) = api.post("log.collect_system_logs", json!({}), true);
    let logs = v["command_result"]["system_logs"].as_str().unwrap();
    let tgz = base64_decode(logs);
    let mut names = Vec::new();
    let mut a = tar::Archive::new(flate2::read::GzDecoder::new(&tgz[..]));
    let mut agent_log = String::new();
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let n = e.path().unwrap().display().to_string();
        if n == "rivet.log" {
            std::io::Read::read_to_string(&mut e, &mut agent_log).unwrap();
        }
        names.push(n);
    }
    assert!(names.contains(&"rivet.log".to_string()), "{names:?}");
    assert!(
        agent_log.contains("lookup succeeded"),
        "agent log in the archive: {agent_log}"
    );
}

/// An async command: RUNNING at once, busy for everything else, then an early heartbeat.
#[test]
fn async_command_busy_then_early_heartbeat() {
    let r = start();
    let (ironic, api, ca) = (&r.ironic, &r.api, &r.ca);
    // An async command: RUNNING at once, busy for everything else, the API stays fast.
    let hb_before = ironic.heartbeats().len();
    let t0 = Instant::now();
    let (s, run) = api.post("test.sleep", json!({"seconds": 3}), false);
    assert_eq!(s, 200);
    assert_eq!(run["command_status"], "RUNNING");
    assert_eq!(run["command_name"], "sleep");
    assert!(t0.elapsed() < Duration::from_millis(500));
    let (s, v) = api.post("standby.sync", json!({}), true);
    assert_eq!(s, 409);
    assert_eq!(v["faultstring"], "Agent is busy: executing command sleep");
    let (s, _) = api.post("nosuch.cmd", json!({}), true);
    assert_eq!(s, 409, "busy is checked before the name");
    let id = run["id"].as_str().unwrap();
    let (s, done) = api.get(&api.url(&format!("/v1/commands/{id}"), "wait=true"));
    assert_eq!(s, 200);
    assert_result_shape(&done);
    assert_eq!(done["command_status"], "SUCCEEDED");
    assert_eq!(done["command_result"], json!({"result": "sleep: slept 3s"}));
    // Early heartbeat: at once (IPA waits 5 s), well before the 90–180 s interval.
    let finished = Instant::now();
    let hb = ironic.wait_heartbeats(hb_before + 1, Duration::from_secs(3));
    let early = hb[hb_before].clone();
    assert!(
        early.at.saturating_duration_since(finished) < Duration::from_secs(1),
        "early heartbeat {:?} after the command ended",
        early.at.saturating_duration_since(finished)
    );
    assert_eq!(early.body["agent_status"], "end");
    assert_eq!(
        early.body["agent_verify_ca"], *ca,
        "the certificate never changes"
    );
    // The conductor did not read the command list (it may have dropped the heartbeat while it
    // held the node's lock): the heartbeat is repeated a second later…
    let hb = ironic.wait_heartbeats(hb_before + 2, Duration::from_secs(3));
    let gap = hb[hb_before + 1].at.duration_since(early.at);
    assert!(
        gap >= Duration::from_millis(900) && gap < Duration::from_secs(2),
        "follow-up after {gap:?}"
    );
    // …until it reads the list, as a conductor acting on a heartbeat does: no more follow-ups
    // (they would have come 2 and 4 s later).
    let (s, _) = api.get(&api.url("/v1/commands/", ""));
    assert_eq!(s, 200);
    let n = ironic.heartbeats().len();
    std::thread::sleep(Duration::from_millis(4500));
    assert_eq!(
        ironic.heartbeats().len(),
        n,
        "heartbeats after the conductor polled"
    );
}

/// Failures carry IPA's error objects; the history lists every command in order; lockdown
/// answers, then the process ends (simulated power).
#[test]
fn failures_history_and_lockdown() {
    let Running {
        ironic: _ironic,
        _state,
        mut agent,
        api,
        ..
    } = start();
    let node = node();
    // wait=true on an async command gives the final state; failures carry IPA's error object.
    let (_, v) = api.post("test.sleep", json!({"seconds": 0.2}), true);
    assert_eq!(v["command_status"], "SUCCEEDED");
    let (_, v) = api.post("test.fail", json!({"message": "boom"}), true);
    assert_eq!(v["command_status"], "FAILED");
    assert_eq!(
        v["command_error"],
        json!({"type": "CommandExecutionError", "code": 500, "message": "Command execution failed", "details": "boom"})
    );
    // Step commands: the version map is checked, and unknown steps fail with the kind's error.
    let (_, v) = api.post(
        "deploy.execute_deploy_step",
        json!({"step": {"interface": "deploy", "step": "write_image", "args": {}}, "node": node, "ports": [],
               "deploy_version": {"generic_hardware_manager": "0.1"}}),
        true,
    );
    assert_eq!(v["command_status"], "CLEAN_VERSION_MISMATCH");
    assert_eq!(v["command_error"]["type"], "VersionMismatch");
    let (_, v) = api.post(
        "clean.execute_clean_step",
        json!({"step": {"interface": "deploy", "step": "no_such_step"}, "node": node, "ports": [],
               "clean_version": {"generic_hardware_manager": "1.4"}}),
        true,
    );
    assert_eq!(v["command_status"], "FAILED");
    assert_eq!(v["command_error"]["type"], "CleaningError");

    // History: every recorded command, oldest first, five keys each.
    let (_, v) = api.get(&api.url("/v1/commands", ""));
    let names: Vec<&str> = v["commands"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["command_name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        vec!["sleep", "fail", "execute_deploy_step", "execute_clean_step"]
    );
    for c in v["commands"].as_array().unwrap() {
        assert_result_shape(c);
    }

    // Lockdown: answered, then the API goes away and the process ends (simulated power).
    let (s, v) = api.post("system.lockdown", json!({}), true);
    assert_eq!((s, v["command_status"].as_str()), (200, Some("SUCCEEDED")));
    let st = agent.wait_exit(Duration::from_secs(10));
    assert!(st.success(), "{st:?}");
    assert!(api
        .client
        .get(format!("{}/v1/status", api.base))
        .send()
        .is_err());
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

/// 409 on lookup pauses ≥ 5 s; a rejected heartbeat is retried after 5–10 s.
#[test]
fn lookup_conflict_pause_and_heartbeat_retry() {
    let ironic = MockIronic::start(vec![(409, json!({}))], lookup_ok(&token(), 300));
    ironic
        .state
        .lock()
        .unwrap()
        .heartbeat_script
        .push_back(ironic_error(
            400,
            "Invalid or missing agent token received.",
        ));
    let state = tempfile::tempdir().unwrap();
    let agent = Agent::spawn(&format!("ipa-api-url={}", ironic.url), state.path(), &[]);
    let hb = ironic.wait_heartbeats(2, Duration::from_secs(30));
    let l = ironic.lookups();
    // The 409, the lookup that found the node, and the one the refused token caused (by the
    // node's UUID, for a new token: fast-track conductors wipe tokens between flows).
    assert_eq!(l.len(), 3);
    assert!(
        l[2].path.contains(&format!("node_uuid={NODE}")),
        "{}",
        l[2].path
    );
    let pause = l[1].at.duration_since(l[0].at);
    assert!(pause >= Duration::from_secs(5), "{pause:?}");
    let gap = hb[1].at.duration_since(hb[0].at);
    assert!(
        gap >= Duration::from_millis(4900) && gap <= Duration::from_millis(10500),
        "{gap:?}"
    );
    assert!(agent
        .log_text()
        .contains("Invalid or missing agent token received."));
}

/// Several API URLs: a dead one first is skipped.
#[test]
fn failover_across_api_urls() {
    let ironic = MockIronic::start(vec![], lookup_ok(&token(), 300));
    let dead = format!("http://127.0.0.1:{}", free_port());
    let state = tempfile::tempdir().unwrap();
    let _agent = Agent::spawn(
        &format!("ipa-api-url={dead},{}", ironic.url),
        state.path(),
        &[],
    );
    let hb = ironic.wait_heartbeats(1, Duration::from_secs(20));
    assert_eq!(hb[0].body["agent_token"], token());
}

/// No node within ipa-lookup-timeout: the agent exits non-zero, saying why.
#[test]
fn lookup_timeout_exits_nonzero() {
    let ironic = MockIronic::start(vec![], (404, json!({"error_message": "nope"})));
    let state = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    let mut agent = Agent::spawn(
        &format!("ipa-api-url={} ipa-lookup-timeout=2", ironic.url),
        state.path(),
        &[],
    );
    let st = agent.wait_exit(Duration::from_secs(15));
    assert!(!st.success());
    assert!(t0.elapsed() < Duration::from_secs(10));
    assert!(ironic.lookups().len() >= 2);
    assert!(
        agent.log_text().contains("gave no node within"),
        "{}",
        agent.log_text()
    );
}

/// A restarted agent in the same boot keeps its token and certificate, and reports the
/// command that was running when it died as FAILED.
#[test]
fn restart_keeps_token_cert_and_history() {
    let ironic = MockIronic::start(vec![lookup_ok(&token(), 300)], lookup_ok("******", 300));
    let state = tempfile::tempdir().unwrap();
    let mut agent = Agent::spawn(&format!("ipa-api-url={}", ironic.url), state.path(), &[]);
    let hb = ironic.wait_heartbeats(1, Duration::from_secs(20));
    let ca = hb[0].body["agent_verify_ca"].as_str().unwrap().to_string();
    let api = Api::over_tls(&agent, &ca);
    let (_, run) = api.post("test.sleep", json!({"seconds": 60}), false);
    assert_eq!(run["command_status"], "RUNNING");
    agent.kill();

    let mut agent2 = Agent::spawn(&format!("ipa-api-url={}", ironic.url), state.path(), &[]);
    let hb = ironic.wait_heartbeats(2, Duration::from_secs(20));
    assert_eq!(
        hb[1].body["agent_token"],
        token(),
        "saved token reused after ******"
    );
    assert_eq!(hb[1].body["agent_verify_ca"], ca, "same certificate");
    let api = Api::over_tls(&agent2, &ca);
    let (_, v) = api.get(&api.url("/v1/commands/", ""));
    let last = &v["commands"][0];
    assert_eq!(last["id"], run["id"]);
    assert_eq!(last["command_status"], "FAILED");
    assert!(last["command_error"]["details"]
        .as_str()
        .unwrap()
        .contains("restarted"));
    // Not busy any more: a new command runs.
    let (s, v) = api.post("standby.sync", json!({}), true);
    assert_eq!((s, v["command_status"].as_str()), (200, Some("SUCCEEDED")));
    // Simulated power off: answered, then the process exits 0.
    let (s, v) = api.post("standby.power_off", json!({}), false);
    assert_eq!((s, v["command_status"].as_str()), (200, Some("RUNNING")));
    assert!(agent2.wait_exit(Duration::from_secs(10)).success());
}

/// A masked token and nothing saved: a clear fatal error, not an agent nobody can talk to.
#[test]
fn masked_token_without_state_is_fatal() {
    let ironic = MockIronic::start(vec![], lookup_ok("******", 300));
    let state = tempfile::tempdir().unwrap();
    let mut agent = Agent::spawn(&format!("ipa-api-url={}", ironic.url), state.path(), &[]);
    assert!(!agent.wait_exit(Duration::from_secs(15)).success());
    assert!(
        agent
            .log_text()
            .contains("already issued this boot's agent token"),
        "{}",
        agent.log_text()
    );
    assert!(ironic.heartbeats().is_empty());
}

/// Before API 1.68 there is no auto-TLS: plain HTTP callback, no agent_verify_ca; a
/// pregenerated token (virtual media) is used when the lookup masks it.
#[test]
fn old_api_plain_http_and_pregenerated_token() {
    let pre = "pregeneratedpregeneratedpregenerated-tok";
    let ironic = MockIronic::start(vec![], lookup_ok("******", 300));
    let state = tempfile::tempdir().unwrap();
    let agent = Agent::spawn(
        &format!(
            "ipa-api-url={} ipa-ironic-api-version=1.65 ipa-agent-token={pre}",
            ironic.url
        ),
        state.path(),
        &[],
    );
    let hb = ironic.wait_heartbeats(1, Duration::from_secs(20));
    assert_eq!(hb[0].version.as_deref(), Some("1.65"));
    assert_eq!(
        hb[0].body["callback_url"],
        format!("http://127.0.0.1:{}", agent.port)
    );
    assert!(hb[0].body.get("agent_verify_ca").is_none());
    assert_eq!(hb[0].body["agent_token"], pre);
    let api = Api {
        client: common::agent_client(None),
        base: format!("http://127.0.0.1:{}", agent.port),
        token: pre.to_string(),
    };
    let (s, _) = api.post("standby.sync", json!({}), true);
    assert_eq!(s, 200);
}

/// A malformed kernel parameter stops the agent at start with the key named.
#[test]
fn malformed_cmdline_is_a_startup_error() {
    let state = tempfile::tempdir().unwrap();
    let mut agent = Agent::spawn(
        "ipa-api-url=http://127.0.0.1:9 ipa-lookup-timeout=soon",
        state.path(),
        &[],
    );
    let st = agent.wait_exit(Duration::from_secs(10));
    assert_eq!(st.code(), Some(2));
    let log = agent.log_text();
    assert!(
        log.contains("ipa-lookup-timeout") && log.contains("soon"),
        "{log}"
    );
}

/// The list answers from encoded rows once a command is final: a running command shows as
/// RUNNING, and the same row shows its final state once it ends (never a stale copy).
#[test]
fn command_list_follows_a_command_to_its_end() {
    let ironic = MockIronic::start(vec![], lookup_ok(&token(), 300));
    let state = tempfile::tempdir().unwrap();
    let agent = Agent::spawn(&format!("ipa-api-url={}", ironic.url), state.path(), &[]);
    let hb = ironic.wait_heartbeats(1, Duration::from_secs(20));
    let ca = hb[0].body["agent_verify_ca"].as_str().unwrap().to_string();
    let api = Api::over_tls(&agent, &ca);
    let (_, first) = api.post("standby.sync", json!({}), true);
    let (_, run) = api.post("test.sleep", json!({"seconds": 1}), false);
    assert_eq!(run["command_status"], "RUNNING");
    let (s, v) = api.get(&api.url("/v1/commands/", ""));
    assert_eq!(s, 200);
    let rows = v["commands"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0], first);
    assert_eq!(rows[1]["id"], run["id"]);
    assert_eq!(rows[1]["command_status"], "RUNNING");
    let done = wait_done(&api, run["id"].as_str().unwrap());
    assert_eq!(done["command_status"], "SUCCEEDED");
    let (_, v) = api.get(&api.url("/v1/commands/", ""));
    assert_eq!(v["commands"], json!([first, done]));
    for c in v["commands"].as_array().unwrap() {
        assert_result_shape(c);
    }
}

/// A conductor's string once aborted the agent (a step name with a two-byte character before
/// `http://`); a command that panics (a bug) fails alone: the conductor sees the error, the
/// agent serves and heartbeats on, and no secret of the text reaches the log or the result.
#[test]
fn panics_fail_one_command_and_the_agent_goes_on() {
    let r = start();
    let (ironic, agent, api) = (&r.ironic, &r.agent, &r.api);
    let (_, v) = api.post(
        "clean.execute_clean_step",
        json!({"step": {"interface": "deploy", "step": "«http://user:pw0rd@example.invalid/x"},
               "node": node(), "ports": [], "clean_version": {"generic_hardware_manager": "1.4"}}),
        true,
    );
    assert_eq!(v["command_status"], "FAILED", "{v}");
    assert_eq!(v["command_error"]["type"], "CleaningError", "{v}");
    assert!(v.to_string().contains("«http://user:***@"), "{v}");

    for name in ["test.panic", "test.panic_sync"] {
        let (status, v) = api.post(
            name,
            json!({"message": "boom at https://u:s3cretpw@img.example/x?temp_url_sig=abc"}),
            true,
        );
        assert_eq!(status, 200, "{name}: {v}");
        assert_eq!(v["command_status"], "FAILED", "{name}: {v}");
        let details = v["command_error"]["details"].as_str().unwrap();
        assert!(
            details.contains("internal error in the agent") && details.contains("boom at"),
            "{name}: {details}"
        );
        assert!(!v.to_string().contains("s3cretpw"), "{name}: {v}");
    }
    // The agent is alive, serves, runs the next commands and still heartbeats.
    let (_, v) = api.post("test.echo", json!({"x": 1}), true);
    assert_eq!(v["command_status"], "SUCCEEDED", "{v}");
    let before = ironic.heartbeats().len();
    let (_, v) = api.post("test.sleep", json!({"seconds": 0.1}), true);
    assert_eq!(v["command_status"], "SUCCEEDED", "{v}");
    ironic.wait_heartbeats(before + 1, Duration::from_secs(20));
    let (_, v) = api.get(&api.url("/v1/commands", ""));
    let names: Vec<&str> = v["commands"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["command_name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["execute_clean_step", "panic", "panic_sync", "echo", "sleep"],
        "{v}"
    );
    let log = agent.log_text();
    assert!(log.contains("internal error (panic)"), "{log}");
    assert!(
        !log.contains("s3cretpw") && !log.contains("pw0rd"),
        "a secret reached the log:\n{log}"
    );
}
