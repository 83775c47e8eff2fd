//! `rivet network`, the ramdisk's network bring-up, on real interfaces: two network namespaces
//! made by the test, the node's (n0, n1) and the provisioning network's (s0, s1, dnsmasq, a
//! DHCP), joined by veth pairs. (Bonds and VLANs need kernel support this machine lacks: they
//! are tested in the lab's VMs.) What the node ends up with is read back with
//! `ip -j` and proven by traffic (ping, DHCP leases), not by what rivet says it did.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn must(args: &[&str]) {
    assert!(ip(args), "ip {}", args.join(" "));
}

/// The node's namespace and the network's, n0↔s0 and n1↔s1; everything in them (dnsmasq,
/// udhcpc, the LLDP sender) ends with them.
struct Lab {
    node: String,
    net: String,
    children: Vec<Child>,
    dir: tempfile::TempDir,
}

impl Lab {
    fn new(tag: &str) -> Option<Lab> {
        let node = format!("rivet-nd-{tag}-{}", std::process::id());
        let net = format!("rivet-nw-{tag}-{}", std::process::id());
        if !ip(&["netns", "add", &node]) {
            common::skipped("cannot create a network namespace (needs root and iproute2)");
            return None;
        }
        must(&["netns", "add", &net]);
        let lab = Lab {
            node,
            net,
            children: Vec::new(),
            dir: tempfile::tempdir().unwrap(),
        };
        // Fixed MACs: the kernel's random ones start with fa: one time in 64, which IPA's
        // rule (a BMC's USB NIC) never takes as the node's.
        for (a, b, ma, mb) in [
            ("n0", "s0", "02:00:00:5d:00:01", "02:00:00:5d:01:01"),
            ("n1", "s1", "02:00:00:5d:00:02", "02:00:00:5d:01:02"),
        ] {
            must(&[
                "-n", &lab.node, "link", "add", a, "address", ma, "type", "veth", "peer", "name",
                b, "address", mb, "netns", &lab.net,
            ]);
            must(&["-n", &lab.net, "link", "set", b, "up"]);
        }
        must(&["-n", &lab.net, "link", "set", "lo", "up"]);
        Some(lab)
    }

    fn net(&self, args: &[&str]) {
        let mut a = vec!["-n", self.net.as_str()];
        a.extend_from_slice(args);
        must(&a);
    }

    fn mac(&self, iface: &str) -> String {
        let v = self.node_json(&["link", "show", iface]);
        v[0]["address"].as_str().unwrap().to_string()
    }

    /// dnsmasq serving DHCPv4 on `iface` (in the network's namespace) from `range`.
    fn dnsmasq(&mut self, iface: &str, range: &str) {
        self.dnsmasq_with(iface, &[format!("--dhcp-range={range},12h")]);
    }

    /// dnsmasq on `iface` with these DHCP arguments.
    fn dnsmasq_with(&mut self, iface: &str, args: &[String]) {
        let lease = self.dir.path().join(format!("{iface}.leases"));
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.net,
                "dnsmasq",
                "--no-daemon",
                "--port=0",
            ])
            .arg(format!("--interface={iface}"))
            .args(["--bind-interfaces", "--conf-file=/dev/null"])
            .args(args)
            .arg(format!("--dhcp-leasefile={}", lease.display()))
            .arg(format!(
                "--pid-file={}",
                self.dir.path().join(format!("{iface}.pid")).display()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        match child {
            Ok(c) => self.children.push(c),
            Err(e) => panic!("dnsmasq: {e}"),
        }
    }

    /// Run `rivet network` in the node's namespace.
    fn rivet_network(&self, cmdline: &str, network_data: Option<&str>, extra: &[&str]) -> Output {
        let cmd = self.dir.path().join("cmdline");
        std::fs::write(&cmd, cmdline).unwrap();
        let mut c = Command::new("ip");
        c.args([
            "netns",
            "exec",
            &self.node,
            env!("CARGO_BIN_EXE_rivet"),
            "network",
        ])
        .arg("--cmdline-file")
        .arg(&cmd)
        .arg("--run-dir")
        .arg(self.dir.path().join("run"))
        .arg("--resolv-conf")
        .arg(self.dir.path().join("resolv.conf"))
        .arg("--dhcp-log")
        .arg(self.dir.path().join("dhcp.log"))
        .args(["--allow-virtual-nics", "--nic-wait", "2"])
        .args(extra);
        if let Some(nd) = network_data {
            let p = self.dir.path().join("network_data.json");
            std::fs::write(&p, nd).unwrap();
            c.arg("--network-data").arg(p);
        }
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "rivet network failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn node_json(&self, args: &[&str]) -> Value {
        let out = Command::new("ip")
            .args(["-n", &self.node, "-j"])
            .args(args)
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    /// Addresses (address/prefix) of a node interface, global scope.
    fn addrs(&self, iface: &str) -> Vec<String> {
        self.node_json(&["addr", "show", "dev", iface])
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
            .filter(|a| a["scope"] == "global")
            .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
            .collect()
    }

    fn ping(&self, to: &str) -> bool {
        Command::new("ip")
            .args([
                "netns", "exec", &self.node, "busybox", "ping", "-c", "1", "-W", "2", to,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    fn wait_for(&self, what: &str, secs: u64, mut ok: impl FnMut() -> bool) {
        let start = Instant::now();
        while !ok() {
            assert!(
                start.elapsed() < Duration::from_secs(secs),
                "{what}: not within {secs} s"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        // The DHCP clients rivet left running (as in the ramdisk) end with their namespace.
        for ns in [&self.node, &self.net] {
            if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    if let Ok(p) = pid.parse::<i32>() {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(p),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                }
            }
            ip(&["netns", "del", ns]);
        }
    }
}

#[test]
fn static_ipv4_and_ipv6_from_network_data_with_routes_and_dns() {
    let Some(lab) = Lab::new("static") else {
        return;
    };
    lab.net(&["addr", "add", "10.61.0.1/24", "dev", "s0"]);
    lab.net(&["addr", "add", "fd61::1/64", "dev", "s0", "nodad"]);
    let mac = lab.mac("n0");
    // Ironic's documented shape, plus an IPv6 network and one broken network that must be
    // named and skipped while the rest is applied.
    let doc = format!(
        r#"{{
      "links": [{{"id": "port-1", "type": "phy", "ethernet_mac_address": "{mac}", "mtu": 1400}}],
      "networks": [
        {{"id": "v4", "type": "ipv4", "link": "port-1", "ip_address": "10.61.0.2",
          "netmask": "255.255.255.0",
          "routes": [{{"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": "10.61.0.1"}}]}},
        {{"id": "v6", "type": "ipv6", "link": "port-1", "ip_address": "fd61::2/64",
          "routes": [{{"network": "fd62::", "netmask": "ffff:ffff:ffff:ffff::", "gateway": "fd61::1"}}]}},
        {{"id": "broken", "type": "ipv4", "link": "port-1", "ip_address": "10.61.0.3",
          "netmask": "255.0.255.0"}}
      ],
      "services": [{{"type": "dns", "address": "10.61.0.1"}}]
    }}"#
    );
    let out = lab.rivet_network("ro quiet", Some(&doc), &[]);
    let log =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("networks[2].netmask: \"255.0.255.0\" is not a contiguous netmask"),
        "{log}"
    );
    let addrs = lab.addrs("n0");
    assert!(addrs.contains(&"10.61.0.2/24".to_string()), "{addrs:?}");
    assert!(addrs.contains(&"fd61::2/64".to_string()), "{addrs:?}");
    assert!(
        !addrs.iter().any(|a| a.starts_with("10.61.0.3")),
        "{addrs:?}"
    );
    let link = lab.node_json(&["link", "show", "n0"]);
    assert_eq!(link[0]["mtu"], 1400);
    let routes = lab.node_json(&["route", "show", "default"]);
    assert_eq!(routes[0]["gateway"], "10.61.0.1", "{routes}");
    let r6 = lab.node_json(&["-6", "route", "show", "fd62::/64"]);
    assert_eq!(r6[0]["gateway"], "fd61::1", "{r6}");
    let resolv = std::fs::read_to_string(lab.dir.path().join("resolv.conf")).unwrap();
    assert!(resolv.contains("nameserver 10.61.0.1\n"), "{resolv}");
    assert!(
        lab.ping("10.61.0.1"),
        "the static address carries no traffic"
    );
    lab.wait_for("IPv6 duplicate address detection", 10, || {
        lab.ping("fd61::1")
    });
    // n1, which network_data does not name, is left alone (no DHCP on it).
    assert!(lab.addrs("n1").is_empty());
}

#[test]
fn dhcp_on_every_nic_applied_through_the_hook() {
    let Some(mut lab) = Lab::new("dhcp") else {
        return;
    };
    lab.net(&["addr", "add", "10.63.0.1/24", "dev", "s0"]);
    lab.net(&["addr", "add", "10.64.0.1/24", "dev", "s1"]);
    lab.dnsmasq("s0", "10.63.0.50,10.63.0.60");
    lab.dnsmasq("s1", "10.64.0.50,10.64.0.60");
    let started = Instant::now();
    // The VLAN parameter names an interface that is not there: said, not fatal.
    let out = lab.rivet_network("ipa-enable-vlan-interfaces=nosuch.200,n0.x", None, &[]);
    let log =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("no interface nosuch for VLAN 200"), "{log}");
    assert!(log.contains("\"x\" is not a VLAN id"), "{log}");
    lab.wait_for("a DHCP lease on n0", 30, || {
        lab.addrs("n0").iter().any(|a| a.starts_with("10.63.0."))
    });
    lab.wait_for("a DHCP lease on n1", 30, || {
        lab.addrs("n1").iter().any(|a| a.starts_with("10.64.0."))
    });
    let took = started.elapsed();
    // The hook applied the leases and said so in its log (not rivet network's output, which
    // a caller reads to its end: the DHCP clients outlive it).
    lab.wait_for("the hook's log line", 5, || {
        std::fs::read_to_string(lab.dir.path().join("dhcp.log"))
            .is_ok_and(|l| l.contains("DHCP bound: 10.63.0.") && l.contains("DHCP bound: 10.64.0."))
    });
    let routes = lab.node_json(&["route", "show", "default"]);
    assert!(
        routes
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["gateway"] == "10.63.0.1" || r["gateway"] == "10.64.0.1"),
        "{routes}"
    );
    assert!(lab.ping("10.63.0.1") && lab.ping("10.64.0.1"));
    figure!(
        "network: DHCP leases on two NICs applied by the hook in {:.1} s",
        took.as_secs_f64()
    );
}

#[test]
fn ipv6_only_router_advertisements_and_dhcpv6() {
    let Some(mut lab) = Lab::new("dhcp6") else {
        return;
    };
    // Nothing IPv4 on this network: a managed router advertisement (no default route) and
    // DHCPv6 with a name server, as an IPv6-only provisioning network has.
    lab.net(&["addr", "add", "fd63::1/64", "dev", "s0", "nodad"]);
    lab.dnsmasq_with(
        "s0",
        &[
            "--dhcp-range=fd63::100,fd63::1ff,64,1h".into(),
            "--enable-ra".into(),
            "--ra-param=s0,5,0".into(),
            "--dhcp-option=option6:dns-server,[fd63::1]".into(),
        ],
    );
    let started = Instant::now();
    lab.rivet_network("ro quiet", None, &[]);
    lab.wait_for("a DHCPv6 address on n0", 40, || {
        lab.addrs("n0")
            .iter()
            .any(|a| a.starts_with("fd63::1") && a.ends_with("/128"))
    });
    let took = started.elapsed();
    let addr = lab
        .addrs("n0")
        .into_iter()
        .find(|a| a.ends_with("/128"))
        .unwrap();
    let addr = addr.trim_end_matches("/128").to_string();
    // The address is the one dnsmasq leased to this NIC's DUID (DUID-LL from its MAC).
    let leases = std::fs::read_to_string(lab.dir.path().join("s0.leases")).unwrap_or_default();
    let mac = lab.mac("n0").replace(':', "");
    assert!(
        leases
            .lines()
            .any(|l| l.contains(&addr) && l.replace(':', "").contains(&format!("00030001{mac}"))),
        "{leases}"
    );
    // The router's advertisement gave the on-link prefix; traffic flows from the address.
    lab.wait_for(
        "the on-link route from the router advertisement",
        20,
        || {
            lab.node_json(&["-6", "route", "show", "fd63::/64"])
                .as_array()
                .is_some_and(|r| !r.is_empty())
        },
    );
    lab.wait_for("ping over IPv6", 10, || lab.ping("fd63::1"));
    let resolv = std::fs::read_to_string(lab.dir.path().join("resolv.conf")).unwrap_or_default();
    assert!(resolv.contains("nameserver fd63::1\n"), "{resolv}");
    let log = std::fs::read_to_string(lab.dir.path().join("dhcp.log")).unwrap_or_default();
    assert!(
        log.contains(&format!("DHCPv6: {addr}/128 on n0, DNS fd63::1")),
        "{log}"
    );
    // No IPv4 anywhere, and n1 (no server behind it) has nothing routable.
    assert!(!lab.addrs("n0").iter().any(|a| a.contains('.')));
    assert!(lab.addrs("n1").is_empty(), "{:?}", lab.addrs("n1"));
    figure!(
        "network: an IPv6-only NIC got its DHCPv6 address in {:.1} s",
        took.as_secs_f64()
    );
}
