//! Abuse of the agent API, and crash safety:
//! * slow clients (TLS handshake, headers, body trickled byte by byte) are cut off after the
//!   client timeout; hundreds of idle connections do not block real requests;
//! * oversized bodies get 413, wrong types 400 with a faultstring, without the token 401;
//! * the agent killed mid-write and restarted in the same boot keeps its token and
//!   certificate, reports the write as failed, the half-written disk carries no partition
//!   table, and a new write succeeds.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::imgserver::ImageServer;
use common::install_util::{assert_blank, gpt_image, skip, MIB};
use common::loopdev::Loop;
use common::*;
use serde_json::{json, Value};

/// A connection to `to` from the local address `from` (any 127/8 address works on lo).
fn connect_from(from: &str, to: &str) -> TcpStream {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    rt.block_on(async {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind(format!("{from}:0").parse().unwrap()).unwrap();
        let c = s
            .connect(to.parse().unwrap())
            .await
            .unwrap()
            .into_std()
            .unwrap();
        c.set_nonblocking(false).unwrap();
        c
    })
}

/// Reads until the server closes the connection (or `limit` passes); returns what it sent and
/// how long it took to close.
fn until_closed(s: &mut TcpStream, limit: Duration) -> (String, Option<Duration>) {
    let start = Instant::now();
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while start.elapsed() < limit {
        match s.read(&mut buf) {
            Ok(0) => return (String::from_utf8_lossy(&got).into(), Some(start.elapsed())),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return (String::from_utf8_lossy(&got).into(), Some(start.elapsed())),
        }
    }
    (String::from_utf8_lossy(&got).into(), None)
}

#[test]
fn slow_clients_idle_floods_and_bad_bodies() {
    let ironic = MockIronic::start(vec![], lookup_ok(&token(), 300));
    let state = tempfile::tempdir().unwrap();
    // Plain HTTP, so the test can speak raw bytes; a 1 s client timeout.
    let agent = Agent::spawn(
        &format!("ipa-api-url={}", ironic.url),
        state.path(),
        &["--no-auto-tls", "--api-client-timeout", "1"],
    );
    ironic.wait_heartbeats(1, Duration::from_secs(20));
    let addr = format!("127.0.0.1:{}", agent.port);
    let path = format!("/v1/commands/?agent_token={}&wait=true", token());

    // Headers trickled one byte every 200 ms: dropped after about a second.
    let mut s = TcpStream::connect(&addr).unwrap();
    let head = format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n");
    let start = Instant::now();
    for b in head.bytes().take(12) {
        if s.write_all(&[b]).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let (_, closed) = until_closed(&mut s, Duration::from_secs(5));
    let took = start.elapsed();
    assert!(
        closed.is_some() && took < Duration::from_secs(4),
        "slow headers kept for {took:?}"
    );
    crate::figure!("slow_headers_closed_after_ms {}", took.as_millis());

    // Complete headers, then a body that never comes: 408 after about a second.
    let mut s = TcpStream::connect(&addr).unwrap();
    s.write_all(format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"na").as_bytes())
        .unwrap();
    let start = Instant::now();
    let (resp, _) = until_closed(&mut s, Duration::from_secs(5));
    assert!(resp.starts_with("HTTP/1.1 408"), "{resp}");
    assert!(resp.contains("faultstring"), "{resp}");
    crate::figure!("slow_body_408_after_ms {}", start.elapsed().as_millis());

    // Hundreds of idle connections (from 30 addresses: one address alone gets no more than its
    // share, see the flood test): a real request is still answered at once.
    let idle: Vec<TcpStream> = (0..300)
        .map(|i| connect_from(&format!("127.0.1.{}", i % 30 + 1), &addr))
        .collect();
    let client = agent_client(None);
    let t = Instant::now();
    let r = client
        .get(format!("http://{addr}/v1/status"))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    // …and they are all closed by the server after the timeout.
    std::thread::sleep(Duration::from_millis(1500));
    let still_open = idle
        .into_iter()
        .filter_map(|mut c| {
            c.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            let mut b = [0u8; 1];
            match c.read(&mut b) {
                Ok(0) => None,
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    Some(())
                }
                _ => None,
            }
        })
        .count();
    assert_eq!(still_open, 0, "idle connections left open");

    // A body over the limit: 413, without reading it all.
    let mut s = TcpStream::connect(&addr).unwrap();
    s.write_all(format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", 200u64 << 20).as_bytes())
        .unwrap();
    let _ = s.write_all(&vec![b' '; 1 << 20]);
    let (resp, _) = until_closed(&mut s, Duration::from_secs(5));
    assert!(
        resp.starts_with("HTTP/1.1 413"),
        "{}",
        &resp[..resp.len().min(200)]
    );

    // Wrong types and shapes: 400 with a faultstring; no token: 401.
    let base = format!("http://{addr}");
    for (body, code) in [
        (json!({"name": 5, "params": {}}), 400),
        (json!({"name": "standby.sync", "params": []}), 400),
        (json!({"name": "standby.get_partition_uuids"}), 400),
        (
            json!({"name": "deploy.execute_deploy_step", "params": {"step": 7}}),
            400,
        ),
        (
            json!({"name": "standby.no_such_command", "params": {}}),
            400,
        ),
        // IPA's answer for an unknown extension.
        (json!({"name": "no.such_command", "params": {}}), 404),
    ] {
        let r = client
            .post(format!("{base}{path}"))
            .json(&body)
            .send()
            .unwrap();
        let st = r.status().as_u16();
        let v: Value = r.json().unwrap();
        let fault = v["faultstring"].as_str().unwrap_or("");
        let result_error = v["command_error"]["type"].as_str().unwrap_or("");
        assert!(
            (st == code && !fault.is_empty()) || (st == 200 && !result_error.is_empty()),
            "{body}: {st} {v}"
        );
    }
    let r = client
        .post(format!("{base}/v1/commands/?wait=true"))
        .json(&json!({"name": "standby.sync", "params": {}}))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
}

/// One client opening connections without end (here 1,100 idle ones from 127.0.0.2, past the
/// ramdisk's descriptor limit of 1024) locks nobody out: the conductor (127.0.0.1) is answered
/// at once, and the agent's own outgoing connections (its heartbeats) still work.
#[test]
fn a_connection_flood_from_one_address_leaves_the_conductor_served() {
    let ironic = MockIronic::start(vec![], lookup_ok(&token(), 300));
    let state = tempfile::tempdir().unwrap();
    let agent = Agent::spawn_launch(
        &format!("ipa-api-url={}", ironic.url),
        state.path(),
        &[],
        &Launch {
            nofile: Some(1024),
            ..Default::default()
        },
    );
    let hb = ironic.wait_heartbeats(1, Duration::from_secs(20));
    let ca = hb[0].body["agent_verify_ca"].as_str().unwrap().to_string();
    let api = Api::over_tls(&agent, &ca);
    let flood_script = r#"
import resource, socket, sys, time
resource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096))
held = []
for _ in range(1100):
    s = socket.socket()
    s.bind(("127.0.0.2", 0))
    s.connect(("127.0.0.1", int(sys.argv[1])))
    held.append(s)
print("ready", len(held), flush=True)
time.sleep(120)
"#;
    let mut flood = std::process::Command::new("python3")
        .args(["-c", flood_script, &agent.port.to_string()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(flood.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "ready 1100", "the flood did not start");
    let mut slowest = Duration::ZERO;
    for _ in 0..5 {
        let t = Instant::now();
        let (s, _) = api.get(&api.url("/v1/commands", ""));
        assert_eq!(s, 200);
        slowest = slowest.max(t.elapsed());
    }
    // A command finishing sends a heartbeat at once: the agent can still open connections.
    let before = ironic.heartbeats().len();
    let (_, v) = api.post("test.sleep", json!({"seconds": 0.1}), true);
    assert_eq!(v["command_status"], "SUCCEEDED", "{v}");
    ironic.wait_heartbeats(before + 1, Duration::from_secs(10));
    let _ = flood.kill();
    let _ = flood.wait();
    crate::figure!("flood_1100_conductor_slowest_ms {}", slowest.as_millis());
    assert!(
        slowest < Duration::from_secs(2),
        "the conductor waited {slowest:?} behind the flood"
    );
    assert!(
        agent.log_text().contains("connections refused"),
        "{}",
        agent.log_text()
    );
}

#[test]
fn killed_mid_write_then_restarted() {
    if skip() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let data = gpt_image(d.path(), "img.raw", 64, 512);
    let srv = ImageServer::start();
    let url = srv.add("img.raw", data.clone());
    let disk = Loop::new(d.path(), "t.img", 80 * MIB, 512);
    // Old data with a partition table, as on a reused machine.
    std::fs::write(&disk.file, gpt_image(d.path(), "old.raw", 80, 512)).unwrap();
    let ironic = MockIronic::start(
        vec![lookup_with_disk(&disk.dev, &token())],
        lookup_with_disk(&disk.dev, "******"),
    );
    let state = d.path().join("state");
    let mut agent = Agent::spawn(
        &format!("ipa-api-url={}", ironic.url),
        &state,
        &["--allow-loop-devices"],
    );
    let hb = ironic.wait_heartbeats(1, Duration::from_secs(20));
    let ca = hb[0].body["agent_verify_ca"].as_str().unwrap().to_string();
    let api = Api::over_tls(&agent, &ca);
    // The server stalls half-way: the write is surely in progress when the agent dies.
    srv.faults(|f| f.stall = Some((40 * MIB, Duration::from_secs(30))));
    let (_, run) = api.post(
        "standby.prepare_image",
        raw_image_params(&url, &data, "first"),
        false,
    );
    assert_eq!(run["command_status"], "RUNNING");
    let t = Instant::now();
    while srv.sent_bytes() < 40 * MIB && t.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    agent.kill();
    // Half-written, but never bootable: the ends were wiped first and the first MiB comes last.
    assert_blank(&disk.dev);

    srv.faults(|f| *f = Default::default());
    let agent2 = Agent::spawn(
        &format!("ipa-api-url={}", ironic.url),
        &state,
        &["--allow-loop-devices"],
    );
    let hb = ironic.wait_heartbeats(2, Duration::from_secs(20));
    assert_eq!(
        hb[1].body["agent_token"],
        token(),
        "token kept across the restart"
    );
    assert_eq!(
        hb[1].body["agent_verify_ca"], ca,
        "certificate kept across the restart"
    );
    let api = Api::over_tls(&agent2, &ca);
    let (_, v) = api.get(&api.url("/v1/commands/", ""));
    let old = v["commands"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == run["id"])
        .cloned()
        .unwrap();
    assert_eq!(old["command_status"], "FAILED", "{old}");
    let (_, v) = api.post(
        "standby.prepare_image",
        raw_image_params(&url, &data, "second"),
        false,
    );
    let done = wait_done(&api, v["id"].as_str().unwrap());
    assert_eq!(done["command_status"], "SUCCEEDED", "{done}");
    let on_disk = std::fs::read(&disk.dev).unwrap();
    assert!(
        on_disk[..data.len()] == data[..],
        "the disk does not hold the image"
    );
}
