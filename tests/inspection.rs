//! In-band inspection against a mock conductor: the post, IPA's retries (409 and 5xx, five
//! attempts at most), the conductor's refusal with and without `ipa-api-url`, a failing
//! collector reported in `error` while the rest is posted, the API 1.84 answer that carries
//! the token, and an agent restarted later in the boot that does not inspect again.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

fn callback(mock: &MockIronic) -> String {
    format!(
        "ipa-inspection-callback-url={}/v1/continue_inspection",
        mock.url
    )
}

/// Every inspection post carries the keys Ironic's hooks read.
fn assert_ipa_body(b: &Value) {
    let inv = &b["inventory"];
    for k in [
        "interfaces",
        "cpu",
        "disks",
        "memory",
        "system_vendor",
        "boot",
        "hostname",
    ] {
        assert!(inv.get(k).is_some(), "inventory.{k} missing: {b}");
    }
    assert!(inv["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .all(|i| i["mac_address"].is_string()));
    assert!(inv["memory"]["physical_mb"].as_u64().unwrap() > 0);
    assert_eq!(
        inv["boot"]["pxe_interface"],
        format!("01-{}", MAC.replace(':', "-"))
    );
    assert_eq!(b["boot_interface"], inv["boot"]["pxe_interface"]);
    assert!(b["configuration"]["collectors"].is_array(), "{b}");
    assert_eq!(
        b["configuration"]["managers"][0]["name"],
        "generic_hardware_manager"
    );
    assert!(b.get("error").is_some());
}

#[test]
fn conflict_then_accepted_then_lookup_by_the_returned_uuid() {
    let mock = MockIronic::start(vec![], lookup_ok(&token(), 300));
    mock.script_inspection(vec![
        ironic_error(409, "Node is locked by host x"),
        (202, json!({ "uuid": NODE })),
    ]);
    let state = tempfile::tempdir().unwrap();
    let cmdline = format!(
        "ipa-api-url={} {} ipa-inspection-collectors=default",
        mock.url,
        callback(&mock)
    );
    let mut agent = Agent::spawn(&cmdline, state.path(), &["--no-auto-tls"]);
    let posts = mock.wait_inspections(2, Duration::from_secs(30));
    let gap = posts[1].at - posts[0].at;
    assert!(
        gap >= Duration::from_millis(4900),
        "retried after {gap:?}, IPA waits 5 s"
    );
    assert_ipa_body(&posts[1].body);
    assert_eq!(posts[1].body["error"], Value::Null);
    assert_eq!(
        posts[1].body["configuration"]["collectors"],
        json!(["default"])
    );
    assert!(posts[1].body.get("logs").is_none());
    // The API offers 1.84, so the agent asked for the answer that carries the node.
    assert_eq!(posts[1].version.as_deref(), Some("1.84"));
    mock.wait_heartbeats(1, Duration::from_secs(20));
    let lookups = mock.lookups();
    assert!(
        lookups[0].path.contains(&format!("node_uuid={NODE}")),
        "lookup did not use the inspection's UUID: {}",
        lookups[0].path
    );
    assert_eq!(mock.inspections().len(), 2);
    // Restarted later in the same boot (same state directory): no second inspection.
    agent.kill();
    let mut again = Agent::spawn(&cmdline, state.path(), &["--no-auto-tls"]);
    let before = mock.heartbeats().len();
    mock.wait_heartbeats(before + 1, Duration::from_secs(20));
    assert_eq!(mock.inspections().len(), 2, "inspected twice in one boot");
    assert!(mock.lookups().last().unwrap().path.contains(NODE));
    again.kill();
}

#[test]
fn server_errors_are_retried() {
    let mock = MockIronic::start(vec![], lookup_ok(&token(), 300));
    mock.script_inspection(vec![
        ironic_error(500, "boom"),
        ironic_error(503, "busy"),
        (202, json!({ "uuid": NODE })),
    ]);
    let state = tempfile::tempdir().unwrap();
    let start = Instant::now();
    let _agent = Agent::spawn(
        &format!("ipa-api-url={} ipa-inspection-collectors=default", mock.url),
        state.path(),
        &["--no-auto-tls"],
    );
    // Without a callback URL the agent posts to the API's own endpoint.
    let posts = mock.wait_inspections(3, Duration::from_secs(40));
    assert!(posts.iter().all(|p| p.path == "/v1/continue_inspection"));
    assert!(
        start.elapsed() >= Duration::from_secs(10),
        "two 5 s waits expected"
    );
    mock.wait_heartbeats(1, Duration::from_secs(20));
}

#[test]
fn five_failures_then_lookup_goes_on() {
    let mock = MockIronic::start(vec![], lookup_ok(&token(), 300));
    mock.script_inspection((0..6).map(|_| ironic_error(500, "down")).collect());
    let state = tempfile::tempdir().unwrap();
    let agent = Agent::spawn(
        &format!("ipa-api-url={} {}", mock.url, callback(&mock)),
        state.path(),
        &["--no-auto-tls"],
    );
    mock.wait_heartbeats(1, Duration::from_secs(60));
    let posts = mock.inspections();
    assert_eq!(posts.len(), 5, "IPA makes five attempts");
    // 5 + 5 + 6 + 12 s between them.
    let span = posts[4].at - posts[0].at;
    assert!(span >= Duration::from_secs(27), "{span:?}");
    // Looked up by MAC: no UUID came back.
    assert!(!mock.lookups()[0].path.contains("node_uuid"));
    assert!(agent
        .log_text()
        .contains("inspection failed; going on with lookup"));
}

#[test]
fn not_found_with_and_without_an_api_url() {
    // With ipa-api-url: one post (404 is not retried), then lookup and heartbeats.
    let mock = MockIronic::start(vec![], lookup_ok(&token(), 300));
    mock.script_inspection(vec![ironic_error(404, "Not Found")]);
    let state = tempfile::tempdir().unwrap();
    let _agent = Agent::spawn(
        &format!("ipa-api-url={} {}", mock.url, callback(&mock)),
        state.path(),
        &["--no-auto-tls"],
    );
    mock.wait_heartbeats(1, Duration::from_secs(20));
    assert_eq!(mock.inspections().len(), 1);

    // Without: one post, then the agent waits to be powered off: no lookup, no heartbeat,
    // no crash, no API served.
    let mock = MockIronic::start(vec![], lookup_ok(&token(), 300));
    mock.script_inspection(vec![ironic_error(404, "Not Found")]);
    let state = tempfile::tempdir().unwrap();
    let mut agent = Agent::spawn(&callback(&mock), state.path(), &["--no-auto-tls"]);
    mock.wait_inspections(1, Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        agent.child.try_wait().unwrap().is_none(),
        "the agent exited:\n{}",
        agent.log_text()
    );
    assert_eq!(mock.inspections().len(), 1);
    assert!(mock.lookups().is_empty() && mock.heartbeats().is_empty());
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", agent.port)).is_err(),
        "an inspection-only agent has no token and must not serve the command API"
    );
    let log = agent.log_text();
    assert!(
        log.contains("404") && log.contains("waiting to be powered off"),
        "{log}"
    );
    // A signal ends it cleanly.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(agent.wait_exit(Duration::from_secs(10)).success());
}

#[test]
fn a_failing_collector_is_reported_and_the_rest_is_posted() {
    let mock = MockIronic::start(vec![], lookup_ok(&token(), 300));
    let tools = tempfile::tempdir().unwrap();
    let tool = tools.path().join("hardware-detect");
    std::fs::write(
        &tool,
        "#!/bin/sh\necho 'cannot open /dev/mem' >&2\nexit 3\n",
    )
    .unwrap();
    std::fs::set_permissions(&tool, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let launch = Launch {
        env: vec![(
            "PATH".into(),
            format!(
                "{}:{}",
                tools.path().display(),
                std::env::var("PATH").unwrap()
            ),
        )],
        ..Default::default()
    };
    let state = tempfile::tempdir().unwrap();
    let _agent = Agent::spawn_launch(
        &format!(
            "{} ipa-inspection-collectors=default,extra-hardware,pci-devices,no-such-collector,logs",
            callback(&mock)
        ),
        state.path(),
        &["--no-auto-tls"],
        &launch,
    );
    let b = mock.wait_inspections(1, Duration::from_secs(30))[0]
        .body
        .clone();
    let err = b["error"].as_str().unwrap_or_default();
    assert!(
        err.starts_with("The following errors were encountered:\n* "),
        "{err}"
    );
    assert!(
        err.contains("hardware-detect") && err.contains("cannot open /dev/mem"),
        "{err}"
    );
    assert!(err.contains("no-such-collector"), "{err}");
    assert!(b.get("data").is_none());
    assert_ipa_body(&b);
    assert!(b["pci_devices"].is_array());
    // The logs collector ran after the failures: a base64 tar.gz holding the agent's log.
    use base64::Engine;
    let tgz = base64::engine::general_purpose::STANDARD
        .decode(b["logs"].as_str().unwrap())
        .unwrap();
    let mut names = Vec::new();
    for e in tar::Archive::new(flate2::read::GzDecoder::new(&tgz[..]))
        .entries()
        .unwrap()
    {
        names.push(e.unwrap().path().unwrap().display().to_string());
    }
    assert!(names.contains(&"rivet.log".to_string()), "{names:?}");
}

#[test]
fn the_184_answer_carries_the_token_and_saves_the_lookup() {
    let mock = MockIronic::start(vec![], lookup_ok(&token(), 300));
    let (_, node_answer) = lookup_ok(&token(), 300);
    mock.script_inspection(vec![(202, node_answer)]);
    let state = tempfile::tempdir().unwrap();
    let agent = Agent::spawn(
        &format!("ipa-api-url={} {}", mock.url, callback(&mock)),
        state.path(),
        &["--no-auto-tls"],
    );
    let hb = mock.wait_heartbeats(1, Duration::from_secs(20));
    assert!(
        mock.lookups().is_empty(),
        "looked up although the answer had the node"
    );
    assert_eq!(hb[0].body["agent_token"], token());
    assert!(hb[0].path.ends_with(NODE));
    // The token works on the agent's API.
    let api = Api::plain(&agent);
    let (code, _) = api.get(&api.url("/v1/commands/", ""));
    assert_eq!(code, 200);
}

/// `a` and `b` have the same JSON shape where `ipa` has data: every key IPA sends is there
/// with the same type (or null where the machine has no such data); lists are compared by
/// their first items; maps keyed by interface name by their values.
fn same_shape(ipa: &Value, ours: &Value, path: &str, optional: &[&str]) {
    match (ipa, ours) {
        (_, Value::Null) | (Value::Null, _) => {}
        (Value::Object(a), Value::Object(b)) if path == "lldp_raw" => {
            if let (Some(x), Some(y)) = (a.values().next(), b.values().next()) {
                same_shape(x, y, "lldp_raw.*", optional);
            }
        }
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a.iter().filter(|(k, _)| !k.starts_with('_')) {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match b.get(k) {
                    Some(w) => same_shape(v, w, &p, optional),
                    None => assert!(optional.contains(&p.as_str()), "{p} is missing"),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            if let (Some(x), Some(y)) = (a.first(), b.first()) {
                same_shape(x, y, &format!("{path}[]"), optional);
            }
        }
        (a, b) => assert_eq!(
            std::mem::discriminant(a),
            std::mem::discriminant(b),
            "{path}: IPA sends {a}, Rivet {b}"
        ),
    }
}

#[test]
fn the_body_has_the_shape_ipa13_posts() {
    let d = tempfile::tempdir().unwrap();
    let write = |rel: &str, v: &str| {
        let p = d.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, v).unwrap();
    };
    for (f, v) in [
        ("vendor", "0x8086"),
        ("device", "0x1572"),
        ("class", "0x020000"),
        ("revision", "0x01"),
        ("numa_node", "0"),
    ] {
        write(&format!("pci/0000:18:00.0/{f}"), v);
    }
    write("node/node0/meminfo", "Node 0 MemTotal:       98292384 kB\n");
    write("node/node0/cpu0/topology/core_id", "0\n");
    write("node/node0/cpu40/topology/core_id", "0\n");
    for (f, v) in [
        ("idVendor", "0624"),
        ("idProduct", "0249"),
        ("bDeviceClass", "00"),
        ("busnum", "1"),
        ("devnum", "3"),
        ("product", "Virtual Keyboard"),
        ("manufacturer", "Avocent"),
    ] {
        write(&format!("usb/1-1/{f}"), v);
    }
    let paths = rivet::inspect::Paths {
        pci: d.path().join("pci"),
        numa_nodes: d.path().join("node"),
        usb: d.path().join("usb"),
        smbios: std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smbios.bin"),
        ..Default::default()
    };
    let params = rivet::config::cmdline::parse_params(&format!(
        "ipa-inspection-callback-url=http://127.0.0.1:1/v1/continue_inspection BOOTIF=01-{} \
         ipa-inspection-collectors=default,logs,pci-devices,numa-topology,dmi-decode,usb-devices,lldp \
         ipa-collect-lldp=1 ipa-lldp-timeout=0.2 ipa-inspection-dhcp-wait-timeout=0",
        MAC.replace(':', "-")
    ));
    let cfg = rivet::config::Config::from_params(&params, &Default::default()).unwrap();
    let ours = Value::Object(rivet::inspect::collect(&cfg, &paths).body);
    let ipa: Value =
        serde_json::from_str(include_str!("fixtures/ipa13_inspection_body.json")).unwrap();
    same_shape(&ipa, &ours, "", &["root_disk", "inventory.bmc_mac"]);
    // The fixture trees came through as IPA would report them.
    assert_eq!(ours["pci_devices"], ipa["pci_devices"]);
    assert_eq!(ours["numa_topology"]["cpus"], ipa["numa_topology"]["cpus"]);
    assert_eq!(ours["numa_topology"]["ram"], ipa["numa_topology"]["ram"]);
    assert_eq!(ours["usb_devices"], ipa["usb_devices"]);
    assert_eq!(ours["dmi"]["memory"]["devices"][0]["Type"], "DDR4");
    assert_eq!(
        ours["configuration"]["collectors"],
        ipa["configuration"]["collectors"]
    );
    // The same manager, under its own version (Rivet's step list differs from IPA 13's).
    assert_eq!(
        ours["configuration"]["managers"][0]["name"],
        ipa["configuration"]["managers"][0]["name"]
    );
    assert_eq!(
        ours["configuration"]["managers"][0]["version"],
        rivet::hardware::MANAGER_VERSION
    );
    assert_eq!(ours["error"], Value::Null, "{}", ours["error"]);
    assert!(ours["lldp_raw"].is_object());
}

/// An agent whose first heartbeat the mock refuses for its token; its next lookups get
/// `relookup`. Returns the mock, the agent's state directory and the agent.
fn token_refused_once(relookup: (u16, Value)) -> (MockIronic, tempfile::TempDir, Agent) {
    let mock = MockIronic::start(vec![lookup_ok(&token(), 300)], relookup);
    mock.state.lock().unwrap().heartbeat_script = vec![ironic_error(
        400,
        "Invalid or missing agent token received.",
    )]
    .into();
    let state = tempfile::tempdir().unwrap();
    let agent = Agent::spawn(
        &format!("ipa-api-url={}", mock.url),
        state.path(),
        &["--no-auto-tls"],
    );
    (mock, state, agent)
}

/// Fast-track: the conductor wipes the token between flows. The heartbeat it refuses makes
/// the agent look the node up again (by UUID) and take the new token, which the API then
/// accepts instead of the old one.
#[test]
fn a_wiped_token_is_replaced_by_a_new_lookup() {
    let new_token = "newtokennewtokennewtokennewtokennewtoken-_9".to_string();
    let (mock, state, agent) = token_refused_once(lookup_ok(&new_token, 300));
    let hb = mock.wait_heartbeats(2, Duration::from_secs(30));
    assert_eq!(hb[0].body["agent_token"], token());
    assert_eq!(hb[1].body["agent_token"], new_token.as_str());
    let lookups = mock.lookups();
    assert_eq!(lookups.len(), 2);
    assert!(
        lookups[1].path.contains(&format!("node_uuid={NODE}")),
        "{}",
        lookups[1].path
    );
    let mut api = Api::plain(&agent);
    let (old, _) = api.get(&api.url("/v1/commands/", ""));
    api.token = new_token;
    let (new, _) = api.get(&api.url("/v1/commands/", ""));
    assert_eq!((old, new), (401, 200));
    // Kept for a restart in the same boot.
    let saved = std::fs::read_to_string(state.path().join("session.json")).unwrap();
    assert!(saved.contains("newtoken"));
}

/// A new lookup (after a token refusal) answered with another node's UUID and token, as a
/// conductor or API that mixed nodes up would: the agent refuses it, keeps its node and its
/// token (the other node's token opens nothing), and heartbeats on for its own node only.
#[test]
fn a_lookup_answered_for_another_node_is_refused() {
    const OTHER: &str = "0ac1e0c4-5d3b-4b7e-9d7c-7a0f0e0b0a01";
    let other_token = "othertokenothertokenothertokenothertoken-_9".to_string();
    let (_, mut other) = lookup_ok(&other_token, 300);
    other["node"]["uuid"] = serde_json::json!(OTHER);
    let (mock, state, agent) = token_refused_once((200, other));
    // The refused heartbeat, the new lookup, then the next heartbeat (5-10 s later).
    let hb = mock.wait_heartbeats(2, Duration::from_secs(30));
    assert_eq!(
        mock.lookups().len(),
        2,
        "no second lookup after the token refusal"
    );
    for h in &hb {
        assert_eq!(
            h.path,
            format!("/v1/heartbeat/{NODE}"),
            "heartbeat for another node"
        );
        assert_eq!(
            h.body["agent_token"],
            token(),
            "the other node's token was taken"
        );
    }
    let mut api = Api::plain(&agent);
    let (ours, _) = api.get(&api.url("/v1/commands/", ""));
    api.token = other_token;
    let (theirs, _) = api.get(&api.url("/v1/commands/", ""));
    assert_eq!((ours, theirs), (200, 401));
    let saved = std::fs::read_to_string(state.path().join("session.json")).unwrap();
    assert!(saved.contains(NODE) && !saved.contains(OTHER), "{saved}");
    let log = agent.log_text();
    assert!(
        log.contains("the lookup answered for another node: refused"),
        "no clear log line: {log}"
    );
}
