//! LLDP on real interfaces: a network namespace made by the test with two veth pairs; the
//! far end of each sends LLDP frames (a frame lldpd sent, and a switch's frame with VLANs,
//! MTU and link aggregation), the near ends are the node's NICs. `rivet inventory` and an
//! inspecting agent (posting to a mock conductor inside the namespace) must report the raw
//! TLVs per interface, listening on all NICs at once within one timeout.
#![allow(clippy::unwrap_used)]

mod common;

use std::os::fd::AsFd;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rivet::hardware::lldp;
use rivet::system::packet::PacketSocket;
use serde_json::Value;

fn fixture(text: &str) -> Vec<u8> {
    let hex: String = text.lines().filter(|l| !l.starts_with('#')).collect();
    hex::decode(hex.trim()).unwrap()
}

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// A network namespace with lo up and two veth pairs: n0 (node) ↔ s0 (switch), n1 ↔ s1.
/// Deleted on drop, with everything in it.
struct Netns {
    name: String,
    stop: Arc<AtomicBool>,
    sender: Option<std::thread::JoinHandle<()>>,
}

impl Netns {
    fn new(tag: &str) -> Option<Netns> {
        let name = format!("rivet-{tag}-{}", std::process::id());
        if !ip(&["netns", "add", &name]) {
            common::skipped("cannot create a network namespace (needs root and iproute2)");
            return None;
        }
        let ns = Netns {
            name,
            stop: Arc::new(AtomicBool::new(false)),
            sender: None,
        };
        let n = ns.name.as_str();
        // Fixed MACs: the kernel's random ones start with fa: one time in 64, which IPA's
        // rule (a BMC's USB NIC) leaves out of the inventory.
        for (a, b, ma, mb) in [
            ("n0", "s0", "02:00:00:5c:00:01", "02:00:00:5c:01:01"),
            ("n1", "s1", "02:00:00:5c:00:02", "02:00:00:5c:01:02"),
        ] {
            assert!(ip(&[
                "-n", n, "link", "add", a, "address", ma, "type", "veth", "peer", "name", b,
                "address", mb
            ]));
            assert!(ip(&["-n", n, "link", "set", a, "up"]));
            assert!(ip(&["-n", n, "link", "set", b, "up"]));
        }
        assert!(ip(&["-n", n, "link", "set", "lo", "up"]));
        Some(ns)
    }

    /// Run `f` on a thread inside the namespace (sockets it creates live there).
    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = std::fs::File::open(path).unwrap();
            nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            f()
        })
        .join()
        .unwrap()
    }

    /// The switch ends send their frame every 200 ms until the namespace goes.
    fn start_switches(&mut self) {
        let stop = self.stop.clone();
        let path = format!("/run/netns/{}", self.name);
        self.sender = Some(std::thread::spawn(move || {
            let file = std::fs::File::open(path).unwrap();
            nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let frames = [
                ("s0", fixture(include_str!("fixtures/lldpd-frame.hex"))),
                (
                    "s1",
                    fixture(include_str!("fixtures/lldp-switch-frame.hex")),
                ),
            ];
            let socks: Vec<(PacketSocket, Vec<u8>)> = frames
                .into_iter()
                .map(|(i, f)| (PacketSocket::open(i, lldp::ETHERTYPE, &[]).unwrap(), f))
                .collect();
            while !stop.load(Ordering::Relaxed) {
                for (s, f) in &socks {
                    s.send(f).unwrap();
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }));
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.sender.take() {
            let _ = h.join();
        }
        ip(&["netns", "del", &self.name]);
    }
}

fn raw(frame: &[u8]) -> Value {
    serde_json::to_value(lldp::to_raw(&lldp::parse_frame(frame).unwrap())).unwrap()
}

fn decode(tlvs: &Value) -> lldp::Neighbor {
    let pairs: Vec<(u8, Vec<u8>)> = tlvs
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p[0].as_u64().unwrap() as u8,
                hex::decode(p[1].as_str().unwrap()).unwrap(),
            )
        })
        .collect();
    lldp::decode(&pairs)
}

fn iface<'a>(inv: &'a Value, name: &str) -> &'a Value {
    inv["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == name)
        .unwrap_or_else(|| panic!("no interface {name} in {inv}"))
}

#[test]
fn inventory_reports_what_the_switches_say_listening_on_all_nics_at_once() {
    let Some(mut ns) = Netns::new("lldp-inv") else {
        return;
    };
    ns.start_switches();
    let timeout = 3.0;
    let start = Instant::now();
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.name,
            env!("CARGO_BIN_EXE_rivet"),
            "inventory",
        ])
        .args([
            "--allow-virtual-nics",
            "--lldp-timeout",
            &timeout.to_string(),
        ])
        .output()
        .unwrap();
    let took = start.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let inv: Value = serde_json::from_slice(&out.stdout).unwrap();
    let lldpd = fixture(include_str!("fixtures/lldpd-frame.hex"));
    assert_eq!(iface(&inv, "n0")["lldp"], raw(&lldpd));
    let n = decode(&iface(&inv, "n1")["lldp"]);
    assert_eq!(n.system_name.as_deref(), Some("tor-sw-01"));
    assert_eq!(n.port_id.as_deref(), Some("Ethernet1/7"));
    assert_eq!(n.vlans, vec![(100, "prov".to_string())]);
    assert_eq!(
        (n.port_vlan_id, n.mtu, n.aggregation),
        (Some(100), Some(9216), Some((true, 1007)))
    );
    // The switch ends hear nothing (their own frames are not "heard"): empty lists, as IPA.
    assert_eq!(iface(&inv, "s0")["lldp"], serde_json::json!([]));
    // Four NICs, two silent: one timeout in all, not one per NIC.
    assert!(
        took < Duration::from_secs_f64(timeout + 2.0),
        "took {took:?}"
    );
    figure!(
        "lldp: inventory of 4 NICs (2 silent) with --lldp-timeout {timeout} took {:.2} s",
        took.as_secs_f64()
    );
}

#[test]
fn inspection_posts_lldp_raw_and_interface_lldp() {
    let Some(mut ns) = Netns::new("lldp-insp") else {
        return;
    };
    ns.start_switches();
    let mock = ns.run(|| MockIronic::start(vec![], lookup_ok(&token(), 300)));
    let state = tempfile::tempdir().unwrap();
    let launch = Launch {
        netns: Some(ns.name.clone()),
        ..Default::default()
    };
    let _agent = Agent::spawn_launch(
        &format!(
            "ipa-inspection-callback-url={}/v1/continue_inspection ipa-inspection-collectors=default,lldp \
             ipa-collect-lldp=1 ipa-lldp-timeout=3",
            mock.url
        ),
        state.path(),
        &["--no-auto-tls", "--allow-virtual-nics"],
        &launch,
    );
    let b = mock.wait_inspections(1, Duration::from_secs(30))[0]
        .body
        .clone();
    assert_eq!(b["error"], Value::Null, "{b}");
    let lldpd = fixture(include_str!("fixtures/lldpd-frame.hex"));
    // lldp_raw for the parse-lldp hook, interfaces[].lldp for IPA's older consumers.
    assert_eq!(b["lldp_raw"]["n0"], raw(&lldpd));
    assert_eq!(iface(&b["inventory"], "n0")["lldp"], raw(&lldpd));
    assert_eq!(
        decode(&b["lldp_raw"]["n1"]).system_name.as_deref(),
        Some("tor-sw-01")
    );
    assert_eq!(b["lldp_raw"]["s1"], serde_json::json!([]));
    for n in ["n0", "n1", "s0", "s1"] {
        assert!(iface(&b["inventory"], n)["mac_address"].is_string());
    }
}
