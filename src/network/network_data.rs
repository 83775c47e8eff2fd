//! OpenStack's `network_data.json` (what Nova and Ironic put in config drives and Ironic puts on
//! the virtual-media ISO from `node.network_data`; Metal3 fills it from
//! `preprovisioningNetworkDataName`), read into a [`Plan`] the netlink side applies.
//!
//! The document comes from an operator's hand or a template: every entry that is wrong is
//! named (`networks[1].netmask: …`) and left out, and the rest is still applied when that is
//! safe (a network whose link is wrong is dropped, not the whole file).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde_json::Value;

/// Largest document read: real ones are a few KiB.
pub const MAX_BYTES: usize = 1 << 20;
/// More entries than any server has NICs or networks: beyond this the file is refused.
const MAX_ENTRIES: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkKind {
    /// A NIC found by its MAC (`phy`, `ethernet`, and Nova's other physical kinds).
    Phy {
        mac: String,
    },
    Bond(Bond),
    Vlan {
        /// Id of the link it is on.
        parent: String,
        vid: u16,
        mac: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bond {
    pub mode: BondMode,
    /// Ids of the member links.
    pub members: Vec<String>,
    pub miimon: Option<u32>,
    /// The kernel's numbering: 0 layer2, 1 layer3+4, 2 layer2+3, 3 encap2+3, 4 encap3+4.
    pub xmit_hash_policy: Option<u8>,
    pub lacp_rate_fast: bool,
    pub mac: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BondMode {
    BalanceRr,
    ActiveBackup,
    BalanceXor,
    Broadcast,
    Lacp,
    BalanceTlb,
    BalanceAlb,
}

impl BondMode {
    fn parse(s: &str) -> Option<BondMode> {
        Some(match s {
            "balance-rr" | "0" => BondMode::BalanceRr,
            "active-backup" | "1" => BondMode::ActiveBackup,
            "balance-xor" | "2" => BondMode::BalanceXor,
            "broadcast" | "3" => BondMode::Broadcast,
            "802.3ad" | "4" => BondMode::Lacp,
            "balance-tlb" | "5" => BondMode::BalanceTlb,
            "balance-alb" | "6" => BondMode::BalanceAlb,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub id: String,
    pub kind: LinkKind,
    pub mtu: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dest: IpAddr,
    pub prefix: u8,
    pub gateway: IpAddr,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Addressing {
    Static {
        address: IpAddr,
        prefix: u8,
        routes: Vec<Route>,
    },
    Dhcp4,
    /// DHCPv6 (stateful; `ipv6_dhcpv6-stateless` is SLAAC plus DHCPv6 information).
    Dhcp6,
    Slaac,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    pub id: String,
    /// Id of the link it is on.
    pub link: String,
    pub addressing: Addressing,
}

/// What to apply, and what was wrong in the document.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// In dependency order: members before their bond, a VLAN after its parent.
    pub links: Vec<Link>,
    pub networks: Vec<Network>,
    pub dns: Vec<IpAddr>,
    pub search: Vec<String>,
    /// Each names the entry and field, e.g. `networks[1].netmask: …`.
    pub problems: Vec<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("network_data.json is {0} bytes, more than the {MAX_BYTES} read")]
    TooLarge(usize),
    #[error("network_data.json is not JSON: {0}")]
    Json(String),
    #[error("network_data.json: {0}")]
    Shape(String),
}

fn mac_of(v: &Value) -> Option<String> {
    let s = v.as_str()?.trim().to_ascii_lowercase();
    let parts: Vec<&str> = s.split(':').collect();
    (parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit())))
    .then_some(s)
}

fn string_or_number(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The prefix length of a netmask: a dotted IPv4 mask, an IPv6 mask, or a plain number.
fn prefix_of(mask: &str, v6: bool) -> Option<u8> {
    let max = if v6 { 128 } else { 32 };
    if let Ok(n) = mask.trim_start_matches('/').parse::<u8>() {
        return (n <= max).then_some(n);
    }
    let bits: u128 = match mask.parse::<IpAddr>().ok()? {
        IpAddr::V4(m) if !v6 => u128::from(u32::from(m)) << 96,
        IpAddr::V6(m) if v6 => u128::from(m),
        _ => return None,
    };
    let ones = bits.leading_ones();
    // Contiguous: every bit after the first zero is zero.
    (bits.checked_shl(ones).unwrap_or(0) == 0).then_some(ones as u8)
}

/// `ip_address` with an optional `/prefix`, and `netmask` when there is no prefix.
fn address_of(net: &Value, at: &str, v6: bool) -> Result<(IpAddr, u8), String> {
    let raw = net
        .get("ip_address")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("{at}.ip_address: missing"))?;
    let (ip, inline) = match raw.split_once('/') {
        Some((ip, p)) => (ip, Some(p)),
        None => (raw, None),
    };
    let ip: IpAddr = ip
        .parse()
        .map_err(|_| format!("{at}.ip_address: {raw:?} is not an IP address"))?;
    if ip.is_ipv6() != v6 {
        return Err(format!(
            "{at}.ip_address: {raw:?} is not an IPv{} address",
            if v6 { 6 } else { 4 }
        ));
    }
    let prefix = match (inline, net.get("netmask").and_then(Value::as_str)) {
        (Some(p), _) => {
            prefix_of(p, v6).ok_or_else(|| format!("{at}.ip_address: bad prefix in {raw:?}"))?
        }
        (None, Some(m)) => prefix_of(m, v6)
            .ok_or_else(|| format!("{at}.netmask: {m:?} is not a contiguous netmask"))?,
        (None, None) if v6 => 64,
        (None, None) => return Err(format!("{at}.netmask: missing")),
    };
    Ok((ip, prefix))
}

fn routes_of(net: &Value, at: &str, v6: bool, problems: &mut Vec<String>) -> Vec<Route> {
    let mut out = Vec::new();
    if let Some(list) = net.get("routes") {
        let Some(list) = list.as_array() else {
            problems.push(format!("{at}.routes: not a list"));
            return out;
        };
        for (i, r) in list.iter().take(MAX_ENTRIES).enumerate() {
            let rat = format!("{at}.routes[{i}]");
            let field = |k: &str| r.get(k).and_then(Value::as_str);
            let parsed = (|| {
                let gw: IpAddr = field("gateway")
                    .ok_or_else(|| format!("{rat}.gateway: missing"))?
                    .parse()
                    .map_err(|_| format!("{rat}.gateway: not an IP address"))?;
                let dest: IpAddr = field("network")
                    .ok_or_else(|| format!("{rat}.network: missing"))?
                    .parse()
                    .map_err(|_| format!("{rat}.network: not an IP address"))?;
                let prefix = prefix_of(field("netmask").unwrap_or("0"), v6)
                    .ok_or_else(|| format!("{rat}.netmask: not a contiguous netmask"))?;
                if gw.is_ipv6() != v6 || dest.is_ipv6() != v6 {
                    return Err(format!("{rat}: mixes IPv4 and IPv6"));
                }
                Ok(Route {
                    dest,
                    prefix,
                    gateway: gw,
                })
            })();
            match parsed {
                Ok(r) => out.push(r),
                Err(e) => problems.push(e),
            }
        }
    }
    // A top-level `gateway` (some generators write one instead of a default route).
    if let Some(gw) = net.get("gateway").and_then(Value::as_str) {
        match gw.parse::<IpAddr>() {
            Ok(g) if g.is_ipv6() == v6 && !out.iter().any(|r| r.prefix == 0) => out.push(Route {
                dest: if v6 {
                    IpAddr::V6(Ipv6Addr::UNSPECIFIED)
                } else {
                    IpAddr::V4(Ipv4Addr::UNSPECIFIED)
                },
                prefix: 0,
                gateway: g,
            }),
            Ok(_) => {}
            Err(_) => problems.push(format!("{at}.gateway: {gw:?} is not an IP address")),
        }
    }
    out
}

fn parse_link(l: &Value, at: &str) -> Result<Link, String> {
    let id = l
        .get("id")
        .and_then(string_or_number)
        .ok_or_else(|| format!("{at}.id: missing"))?;
    let typ = l.get("type").and_then(Value::as_str).unwrap_or("phy");
    let mtu = match l.get("mtu") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .filter(|m| (68..=65535).contains(m))
                .map(|m| m as u32)
                .ok_or_else(|| format!("{at}.mtu: {v} is not an MTU (68 to 65535)"))?,
        ),
    };
    let mac = |k: &str| -> Result<Option<String>, String> {
        match l.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => mac_of(v)
                .map(Some)
                .ok_or_else(|| format!("{at}.{k}: {v} is not a MAC address")),
        }
    };
    let kind = match typ {
        "bond" => {
            let members: Vec<String> = l
                .get("bond_links")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(string_or_number).collect())
                .unwrap_or_default();
            if members.is_empty() {
                return Err(format!("{at}.bond_links: missing or empty"));
            }
            let mode_raw = l
                .get("bond_mode")
                .and_then(string_or_number)
                .unwrap_or_else(|| "balance-rr".into());
            let mode = BondMode::parse(&mode_raw)
                .ok_or_else(|| format!("{at}.bond_mode: {mode_raw:?} is not a bonding mode"))?;
            let miimon = match l.get("bond_miimon") {
                None | Some(Value::Null) => None,
                Some(v) => Some(
                    string_or_number(v)
                        .and_then(|s| s.parse::<u32>().ok())
                        .ok_or_else(|| format!("{at}.bond_miimon: {v} is not a number"))?,
                ),
            };
            let xmit_hash_policy = match l.get("bond_xmit_hash_policy").and_then(Value::as_str) {
                None => None,
                Some("layer2") => Some(0),
                Some("layer3+4") => Some(1),
                Some("layer2+3") => Some(2),
                Some("encap2+3") => Some(3),
                Some("encap3+4") => Some(4),
                Some(p) => return Err(format!("{at}.bond_xmit_hash_policy: {p:?} is unknown")),
            };
            let lacp_rate_fast = matches!(
                l.get("bond_lacp_rate")
                    .and_then(string_or_number)
                    .as_deref(),
                Some("fast" | "1")
            );
            LinkKind::Bond(Bond {
                mode,
                members,
                miimon,
                xmit_hash_policy,
                lacp_rate_fast,
                mac: mac("ethernet_mac_address")?,
            })
        }
        "vlan" => {
            let parent = l
                .get("vlan_link")
                .and_then(string_or_number)
                .ok_or_else(|| format!("{at}.vlan_link: missing"))?;
            let vid = l
                .get("vlan_id")
                .and_then(|v| string_or_number(v)?.parse::<u16>().ok())
                .filter(|v| (1..=4094).contains(v))
                .ok_or_else(|| format!("{at}.vlan_id: missing or not a VLAN id (1 to 4094)"))?;
            LinkKind::Vlan {
                parent,
                vid,
                mac: mac("vlan_mac_address")?,
            }
        }
        _ => LinkKind::Phy {
            mac: mac("ethernet_mac_address")?.ok_or_else(|| {
                format!("{at}.ethernet_mac_address: missing (a {typ} link is found by its MAC)")
            })?,
        },
    };
    Ok(Link { id, kind, mtu })
}

/// A network with its name servers and the problems that did not cost it (a bad route, a bad
/// name server); `Err` when the network itself cannot be applied.
type Parsed = (Network, Vec<IpAddr>, Vec<String>);

fn parse_network(n: &Value, at: &str) -> Result<Parsed, String> {
    let mut problems = Vec::new();
    let id = n
        .get("id")
        .and_then(string_or_number)
        .unwrap_or_else(|| at.to_string());
    let link = n
        .get("link")
        .and_then(string_or_number)
        .ok_or_else(|| format!("{at}.link: missing"))?;
    let typ = n.get("type").and_then(Value::as_str).unwrap_or("");
    let addressing = match typ {
        "ipv4" | "ipv6" => {
            let v6 = typ == "ipv6";
            let (address, prefix) = address_of(n, at, v6)?;
            let routes = routes_of(n, at, v6, &mut problems);
            Addressing::Static {
                address,
                prefix,
                routes,
            }
        }
        "ipv4_dhcp" | "dhcp4" => Addressing::Dhcp4,
        "ipv6_dhcp" | "ipv6_dhcpv6-stateful" | "dhcp6" => Addressing::Dhcp6,
        "ipv6_slaac" | "ipv6_dhcpv6-stateless" => Addressing::Slaac,
        other => return Err(format!("{at}.type: {other:?} is unknown")),
    };
    let mut dns = Vec::new();
    if let Some(list) = n.get("dns_nameservers").and_then(Value::as_array) {
        for (i, d) in list.iter().take(MAX_ENTRIES).enumerate() {
            match d.as_str().and_then(|s| s.parse::<IpAddr>().ok()) {
                Some(ip) => dns.push(ip),
                None => problems.push(format!("{at}.dns_nameservers[{i}]: not an IP address")),
            }
        }
    }
    Ok((
        Network {
            id,
            link,
            addressing,
        },
        dns,
        problems,
    ))
}

/// Put links in an order where every link comes after those it is built on; links in a loop
/// or on a missing link are dropped with a problem.
fn order_links(links: Vec<Link>, problems: &mut Vec<String>) -> Vec<Link> {
    let deps = |l: &Link| -> Vec<String> {
        match &l.kind {
            LinkKind::Phy { .. } => Vec::new(),
            LinkKind::Bond(b) => b.members.clone(),
            LinkKind::Vlan { parent, .. } => vec![parent.clone()],
        }
    };
    let mut pending: BTreeMap<String, Link> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    for l in links {
        order.push(l.id.clone());
        pending.insert(l.id.clone(), l);
    }
    let mut out: Vec<Link> = Vec::new();
    loop {
        let ready: Vec<String> = order
            .iter()
            .filter(|id| {
                pending
                    .get(*id)
                    .is_some_and(|l| deps(l).iter().all(|d| out.iter().any(|o| &o.id == d)))
            })
            .cloned()
            .collect();
        if ready.is_empty() {
            break;
        }
        for id in ready {
            if let Some(l) = pending.remove(&id) {
                out.push(l);
            }
        }
    }
    for id in order {
        if let Some(l) = pending.remove(&id) {
            let missing: Vec<String> = deps(&l)
                .into_iter()
                .filter(|d| !out.iter().any(|o| &o.id == d))
                .collect();
            problems.push(format!(
                "links: {:?} is built on {} that no usable link provides",
                l.id,
                missing.join(", ")
            ));
        }
    }
    out
}

/// Read the document. Only a document that is not JSON, too large or not an object is an
/// error; everything else is a [`Plan`] with its problems.
pub fn parse(bytes: &[u8]) -> Result<Plan, ParseError> {
    if bytes.len() > MAX_BYTES {
        return Err(ParseError::TooLarge(bytes.len()));
    }
    let doc: Value = serde_json::from_slice(bytes).map_err(|e| ParseError::Json(e.to_string()))?;
    let Some(obj) = doc.as_object() else {
        return Err(ParseError::Shape(
            "the document is not a JSON object".into(),
        ));
    };
    let list = |k: &str| -> Result<Vec<Value>, ParseError> {
        match obj.get(k) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(a)) if a.len() <= MAX_ENTRIES => Ok(a.clone()),
            Some(Value::Array(a)) => Err(ParseError::Shape(format!(
                "{k}: {} entries, more than {MAX_ENTRIES}",
                a.len()
            ))),
            Some(_) => Err(ParseError::Shape(format!("{k}: not a list"))),
        }
    };
    let mut plan = Plan::default();
    let mut links = Vec::new();
    for (i, l) in list("links")?.iter().enumerate() {
        match parse_link(l, &format!("links[{i}]")) {
            Ok(l) if links.iter().any(|o: &Link| o.id == l.id) => plan
                .problems
                .push(format!("links[{i}].id: {:?} is used twice", l.id)),
            Ok(l) => links.push(l),
            Err(e) => plan.problems.push(e),
        }
    }
    plan.links = order_links(links, &mut plan.problems);
    for (i, n) in list("networks")?.iter().enumerate() {
        let at = format!("networks[{i}]");
        match parse_network(n, &at) {
            Ok((net, dns, problems)) => {
                plan.problems.extend(problems);
                if !plan.links.iter().any(|l| l.id == net.link) {
                    plan.problems.push(format!(
                        "{at}.link: {:?} is not a usable link; network not applied",
                        net.link
                    ));
                    continue;
                }
                for d in dns {
                    if !plan.dns.contains(&d) {
                        plan.dns.push(d);
                    }
                }
                plan.networks.push(net);
            }
            Err(e) => plan.problems.push(e),
        }
    }
    for (i, s) in list("services")?.iter().enumerate() {
        if s.get("type").and_then(Value::as_str) != Some("dns") {
            continue;
        }
        match s
            .get("address")
            .and_then(Value::as_str)
            .and_then(|a| a.parse::<IpAddr>().ok())
        {
            Some(ip) if !plan.dns.contains(&ip) => plan.dns.push(ip),
            Some(_) => {}
            None => plan
                .problems
                .push(format!("services[{i}].address: not an IP address")),
        }
    }
    if let Some(search) = obj.get("dns_search").and_then(Value::as_array) {
        plan.search = search
            .iter()
            .filter_map(Value::as_str)
            .filter(|s| !s.is_empty() && s.len() <= 253 && !s.contains(char::is_whitespace))
            .map(str::to_string)
            .collect();
    }
    Ok(plan)
}

/// `resolv.conf` for the plan's name servers (none: no file).
pub fn resolv_conf(plan: &Plan) -> Option<String> {
    if plan.dns.is_empty() {
        return None;
    }
    let mut s = String::from("# written by rivet from network_data.json\n");
    for d in plan.dns.iter().take(3) {
        s.push_str(&format!("nameserver {d}\n"));
    }
    if !plan.search.is_empty() {
        s.push_str(&format!("search {}\n", plan.search.join(" ")));
    }
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ironic's documented example (doc/source/admin/dhcp-less.rst) with a static IPv4.
    const IRONIC_DHCPLESS: &str = r#"{
      "links": [{"id": "port-92750f6c-60a9-4897-9cd1-090c5f361e18", "type": "phy",
                 "ethernet_mac_address": "52:54:00:d3:6a:71", "mtu": 1500}],
      "networks": [{"id": "network0", "type": "ipv4",
                    "link": "port-92750f6c-60a9-4897-9cd1-090c5f361e18",
                    "ip_address": "192.168.122.42", "netmask": "255.255.255.0",
                    "network_id": "network0",
                    "routes": [{"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": "192.168.122.1"}]}],
      "services": [{"type": "dns", "address": "192.168.122.1"}]
    }"#;

    /// A Metal3-style document: bond of two NICs, a VLAN on it, static IPv6 and SLAAC.
    const METAL3_BOND_VLAN: &str = r#"{
      "links": [
        {"id": "enp1s0", "type": "phy", "ethernet_mac_address": "52:54:00:00:00:01"},
        {"id": "enp2s0", "type": "phy", "ethernet_mac_address": "52:54:00:00:00:02"},
        {"id": "vlan100", "type": "vlan", "vlan_link": "bond0", "vlan_id": 100,
         "vlan_mac_address": "52:54:00:00:00:01"},
        {"id": "bond0", "type": "bond", "bond_links": ["enp1s0", "enp2s0"],
         "bond_mode": "active-backup", "bond_miimon": 100, "ethernet_mac_address": "52:54:00:00:00:01"}
      ],
      "networks": [
        {"id": "prov", "type": "ipv6", "link": "vlan100", "ip_address": "fd00:1::5/64",
         "routes": [{"network": "::", "netmask": "::", "gateway": "fd00:1::1"}],
         "dns_nameservers": ["fd00:1::1"]},
        {"id": "other", "type": "ipv6_slaac", "link": "bond0"},
        {"id": "v4", "type": "ipv4_dhcp", "link": "enp1s0"}
      ],
      "services": []
    }"#;

    #[test]
    fn ironic_example() {
        let p = parse(IRONIC_DHCPLESS.as_bytes()).unwrap();
        assert!(p.problems.is_empty(), "{:?}", p.problems);
        assert_eq!(
            p.links[0].kind,
            LinkKind::Phy {
                mac: "52:54:00:d3:6a:71".into()
            }
        );
        assert_eq!(p.links[0].mtu, Some(1500));
        assert_eq!(
            p.networks[0].addressing,
            Addressing::Static {
                address: "192.168.122.42".parse().unwrap(),
                prefix: 24,
                routes: vec![Route {
                    dest: "0.0.0.0".parse().unwrap(),
                    prefix: 0,
                    gateway: "192.168.122.1".parse().unwrap()
                }]
            }
        );
        assert_eq!(p.dns, vec!["192.168.122.1".parse::<IpAddr>().unwrap()]);
        assert!(resolv_conf(&p)
            .unwrap()
            .contains("nameserver 192.168.122.1\n"));
    }

    #[test]
    fn bonds_and_vlans_are_ordered_after_what_they_are_built_on() {
        let p = parse(METAL3_BOND_VLAN.as_bytes()).unwrap();
        assert!(p.problems.is_empty(), "{:?}", p.problems);
        let ids: Vec<&str> = p.links.iter().map(|l| l.id.as_str()).collect();
        assert_eq!(ids, ["enp1s0", "enp2s0", "bond0", "vlan100"]);
        assert!(matches!(
            &p.links[2].kind,
            LinkKind::Bond(Bond { mode: BondMode::ActiveBackup, members, miimon: Some(100), .. })
                if members == &["enp1s0", "enp2s0"]
        ));
        assert!(matches!(p.links[3].kind, LinkKind::Vlan { vid: 100, .. }));
        assert_eq!(
            p.networks
                .iter()
                .map(|n| &n.addressing)
                .filter(|a| matches!(a, Addressing::Static { prefix: 64, .. }))
                .count(),
            1
        );
        assert_eq!(p.networks[1].addressing, Addressing::Slaac);
        assert_eq!(p.networks[2].addressing, Addressing::Dhcp4);
        assert_eq!(p.dns, vec!["fd00:1::1".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn every_network_type() {
        for (t, want) in [
            ("ipv4_dhcp", Addressing::Dhcp4),
            ("ipv6_dhcp", Addressing::Dhcp6),
            ("ipv6_dhcpv6-stateful", Addressing::Dhcp6),
            ("ipv6_dhcpv6-stateless", Addressing::Slaac),
            ("ipv6_slaac", Addressing::Slaac),
        ] {
            let doc = format!(
                r#"{{"links":[{{"id":"a","type":"phy","ethernet_mac_address":"52:54:00:00:00:01"}}],
                    "networks":[{{"id":"n","type":"{t}","link":"a"}}]}}"#
            );
            let p = parse(doc.as_bytes()).unwrap();
            assert_eq!(p.networks[0].addressing, want, "{t}");
        }
    }

    #[test]
    fn bad_fields_are_named_and_the_rest_applied() {
        let doc = r#"{
          "links": [
            {"id": "a", "type": "phy", "ethernet_mac_address": "52:54:00:00:00:01"},
            {"id": "b", "type": "phy"},
            {"id": "c", "type": "phy", "ethernet_mac_address": "zz:54:00:00:00:01"},
            {"id": "v", "type": "vlan", "vlan_link": "a", "vlan_id": 5000},
            {"id": "w", "type": "vlan", "vlan_link": "b", "vlan_id": 7},
            {"id": "k", "type": "bond", "bond_links": ["a"], "bond_mode": "fastest"},
            {"id": "m", "type": "phy", "ethernet_mac_address": "52:54:00:00:00:09", "mtu": 9999999}
          ],
          "networks": [
            {"id": "n0", "type": "ipv4", "link": "a", "ip_address": "10.0.0.5", "netmask": "255.0.255.0"},
            {"id": "n1", "type": "ipv4", "link": "a", "ip_address": "10.0.0.6/24",
             "routes": [{"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": "fd00::1"},
                        {"network": "10.9.0.0", "netmask": "255.255.0.0", "gateway": "10.0.0.1"}]},
            {"id": "n2", "type": "ipv4", "link": "b", "ip_address": "10.0.1.5/24"},
            {"id": "n3", "type": "carrier-pigeon", "link": "a"},
            {"id": "n4", "type": "ipv6", "link": "a", "ip_address": "10.0.0.7"},
            {"id": "n5", "type": "ipv4", "link": "a"},
            {"id": "n6", "type": "ipv4_dhcp"}
          ],
          "services": [{"type": "dns", "address": "not-an-ip"}, {"type": "ntp", "address": "x"}]
        }"#;
        let p = parse(doc.as_bytes()).unwrap();
        let all = p.problems.join("\n");
        for want in [
            "links[1].ethernet_mac_address: missing",
            "links[2].ethernet_mac_address:",
            "links[3].vlan_id:",
            "links[5].bond_mode: \"fastest\"",
            "links[6].mtu:",
            "links: \"w\" is built on b",
            "networks[0].netmask: \"255.0.255.0\" is not a contiguous netmask",
            "networks[1].routes[0]: mixes IPv4 and IPv6",
            "networks[2].link: \"b\" is not a usable link",
            "networks[3].type: \"carrier-pigeon\" is unknown",
            "networks[4].ip_address: \"10.0.0.7\" is not an IPv6 address",
            "networks[5].ip_address: missing",
            "networks[6].link: missing",
            "services[0].address: not an IP address",
        ] {
            assert!(all.contains(want), "missing {want:?} in:\n{all}");
        }
        // What was right is still there: link a, and n1 with its good route.
        assert_eq!(p.links.iter().map(|l| &l.id).collect::<Vec<_>>(), ["a"]);
        assert_eq!(p.networks.len(), 1);
        assert_eq!(
            p.networks[0].addressing,
            Addressing::Static {
                address: "10.0.0.6".parse().unwrap(),
                prefix: 24,
                routes: vec![Route {
                    dest: "10.9.0.0".parse().unwrap(),
                    prefix: 16,
                    gateway: "10.0.0.1".parse().unwrap()
                }]
            }
        );
    }

    #[test]
    fn documents_that_cannot_be_read() {
        assert!(matches!(parse(b"{"), Err(ParseError::Json(_))));
        assert!(matches!(parse(b"[]"), Err(ParseError::Shape(_))));
        assert!(matches!(
            parse(br#"{"links": 5}"#),
            Err(ParseError::Shape(m)) if m.contains("links")
        ));
        assert!(matches!(
            parse(&vec![b' '; MAX_BYTES + 1]),
            Err(ParseError::TooLarge(_))
        ));
        let many = format!(
            r#"{{"links": [{}]}}"#,
            vec!["{}"; MAX_ENTRIES + 1].join(",")
        );
        assert!(matches!(parse(many.as_bytes()), Err(ParseError::Shape(_))));
        // Empty is fine: nothing to apply.
        assert_eq!(parse(b"{}").unwrap(), Plan::default());
    }

    #[test]
    fn netmasks() {
        assert_eq!(prefix_of("255.255.255.0", false), Some(24));
        assert_eq!(prefix_of("0.0.0.0", false), Some(0));
        assert_eq!(prefix_of("255.255.255.255", false), Some(32));
        assert_eq!(prefix_of("255.0.255.0", false), None);
        assert_eq!(prefix_of("ffff:ffff:ffff:ffff::", true), Some(64));
        assert_eq!(prefix_of("::", true), Some(0));
        assert_eq!(prefix_of("64", true), Some(64));
        assert_eq!(prefix_of("129", true), None);
        assert_eq!(prefix_of("33", false), None);
        assert_eq!(prefix_of("ffff::", false), None);
    }

    #[test]
    fn a_gateway_field_is_a_default_route() {
        let doc = r#"{"links":[{"id":"a","ethernet_mac_address":"52:54:00:00:00:01"}],
          "networks":[{"id":"n","type":"ipv4","link":"a","ip_address":"10.1.0.2",
                       "netmask":"255.255.0.0","gateway":"10.1.0.1"}]}"#;
        let p = parse(doc.as_bytes()).unwrap();
        let Addressing::Static { routes, .. } = &p.networks[0].addressing else {
            panic!()
        };
        assert_eq!(routes[0].prefix, 0);
        assert_eq!(routes[0].gateway, "10.1.0.1".parse::<IpAddr>().unwrap());
    }
}
