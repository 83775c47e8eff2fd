//! Network interfaces from sysfs: the inventory's `interfaces` and the MACs the lookup sends.

use std::collections::HashMap;
use std::fs;
use std::net::IpAddr;
use std::path::Path;

use serde::Serialize;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Interface {
    pub name: String,
    pub mac_address: Option<String>,
    pub ipv4_address: Option<String>,
    pub ipv6_address: Option<String>,
    pub has_carrier: bool,
    pub lldp: Option<Vec<(u8, String)>>,
    pub vendor: Option<String>,
    pub product: Option<String>,
    pub client_id: Option<String>,
    pub biosdevname: Option<String>,
    pub speed_mbps: Option<u64>,
    pub pci_address: Option<String>,
    pub driver: Option<String>,
    /// The MAC the interface has now, when it differs from `mac_address` (the permanent one):
    /// a bond or a driver changed it. Sent in the lookup beside the permanent one, not part of
    /// IPA's inventory.
    #[serde(skip)]
    pub current_mac: Option<String>,
}

use super::read_trim;

/// The permanent MAC (`ethtool -P`), where the driver knows one.
pub fn permanent_mac(iface: &str) -> Option<String> {
    crate::system::ethtool::permanent_mac(iface)
}

/// IPA's rule: a MAC starting `fa:` is locally assigned (a BMC's USB NIC on HPE Gen12 and
/// others; every node has the same one) and never identifies a node.
pub fn locally_assigned_usb_nic(mac: &str) -> bool {
    mac.to_ascii_lowercase().starts_with("fa:")
}

/// The MAC reported for an interface (permanent, else current; none for IPA's `fa:` rule) and
/// the current one when it differs.
fn macs_of(
    name: &str,
    current: Option<String>,
    ask_driver: bool,
) -> (Option<String>, Option<String>) {
    let current = current.map(|m| m.to_ascii_lowercase());
    let permanent = ask_driver.then(|| permanent_mac(name)).flatten();
    let reported = permanent.clone().or_else(|| current.clone());
    if reported.as_deref().is_some_and(locally_assigned_usb_nic) {
        tracing::warn!(
            interface = name,
            mac = ?reported,
            "ignoring a locally assigned MAC (fa:…), as IPA does: it does not identify this node"
        );
        return (None, None);
    }
    let differs = current.filter(|c| permanent.as_ref().is_some_and(|p| p != c));
    (reported, differs)
}

fn link_name(p: &Path) -> Option<String> {
    fs::read_link(p)
        .ok()
        .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()))
}

/// The IP address of an interface address entry, if it is an IPv4 or IPv6 one.
fn ip_of(a: &nix::ifaddrs::InterfaceAddress) -> Option<IpAddr> {
    let sa = a.address.as_ref()?;
    sa.as_sockaddr_in()
        .map(|s| IpAddr::V4(s.ip()))
        .or_else(|| sa.as_sockaddr_in6().map(|s| IpAddr::V6(s.ip())))
}

/// First IPv4 and IPv6 address of each interface.
fn addresses() -> HashMap<String, (Option<String>, Option<String>)> {
    let mut out: HashMap<String, (Option<String>, Option<String>)> = HashMap::new();
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return out;
    };
    for a in addrs {
        if a.address.is_none() {
            continue;
        }
        let ip = ip_of(&a);
        let e = out.entry(a.interface_name).or_default();
        match ip {
            Some(IpAddr::V4(v4)) if e.0.is_none() => e.0 = Some(v4.to_string()),
            // A routable address before the link-local one every NIC has (which is no way
            // to reach the node), whatever order the kernel lists them in.
            Some(IpAddr::V6(v6))
                if e.1.is_none()
                    || (e.1.as_deref().is_some_and(|s| s.starts_with("fe80:"))
                        && (v6.segments()[0] & 0xffc0) != 0xfe80) =>
            {
                e.1 = Some(v6.to_string())
            }
            _ => {}
        }
    }
    out
}

/// Every address the machine has beyond loopback, sorted: what changes when DHCP (or SLAAC)
/// completes on any NIC.
pub fn local_addresses() -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = nix::ifaddrs::getifaddrs()
        .map(|addrs| {
            addrs
                .filter_map(|a| ip_of(&a))
                .filter(|ip| !ip.is_loopback())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out.dedup();
    out
}

/// Physical NICs (those with a `device` link), VLANs and bonds; never `lo`. With
/// `allow_virtual` (tests in a network namespace) veth pairs count as NICs too.
pub fn interfaces(sys_class_net: &Path, allow_virtual: bool) -> Vec<Interface> {
    let Ok(entries) = fs::read_dir(sys_class_net) else {
        return Vec::new();
    };
    let addrs = addresses();
    let mut names: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "lo")
        .collect();
    names.sort();
    let mut out = Vec::new();
    for name in names {
        let d = sys_class_net.join(&name);
        let physical = d.join("device").exists();
        let vlan_or_bond = name.contains('.') || d.join("bonding").exists();
        let veth = allow_virtual
            && read_trim(&d.join("type")).as_deref() == Some("1")
            && fs::read_link(&d)
                .map(|t| t.to_string_lossy().contains("/virtual/"))
                .unwrap_or(false)
            && !d.join("bridge").exists();
        if !physical && !vlan_or_bond && !veth {
            continue;
        }
        let mac = read_trim(&d.join("address")).filter(|m| m != "00:00:00:00:00:00");
        // The driver is asked only about the real interfaces (tests give a sysfs of their own).
        let (mac, current_mac) = macs_of(&name, mac, sys_class_net == Path::new("/sys/class/net"));
        let (v4, v6) = addrs.get(&name).cloned().unwrap_or_default();
        out.push(Interface {
            mac_address: mac,
            current_mac,
            ipv4_address: v4,
            ipv6_address: v6,
            has_carrier: read_trim(&d.join("carrier")).as_deref() == Some("1"),
            lldp: None,
            vendor: read_trim(&d.join("device/vendor")),
            product: read_trim(&d.join("device/device")),
            client_id: None,
            biosdevname: None,
            // sysfs says -1 (or fails) when the link is down or the driver does not know.
            speed_mbps: read_trim(&d.join("speed"))
                .and_then(|s| s.parse::<i64>().ok())
                .filter(|s| *s > 0)
                .map(|s| s as u64),
            pci_address: physical.then(|| link_name(&d.join("device"))).flatten(),
            driver: link_name(&d.join("device/driver")),
            name,
        });
    }
    out
}

#[cfg(test)]
impl Interface {
    /// A NIC with a MAC and optionally an IPv4 address (tests).
    pub(crate) fn fixture(name: &str, mac: &str, ipv4: Option<&str>) -> Interface {
        Interface {
            name: name.into(),
            mac_address: Some(mac.into()),
            ipv4_address: ipv4.map(str::to_string),
            ipv6_address: None,
            has_carrier: true,
            lldp: None,
            vendor: None,
            product: None,
            client_id: None,
            biosdevname: None,
            speed_mbps: None,
            pci_address: None,
            driver: None,
            current_mac: None,
        }
    }
}

/// MACs for the lookup: BOOTIF first, then every interface's MAC (permanent, and current
/// where a bond or driver changed it), lower-case, no duplicates, never a locally assigned
/// `fa:` one.
pub fn lookup_macs(bootif: Option<&str>, ifaces: &[Interface]) -> Vec<String> {
    let mut macs: Vec<String> = Vec::new();
    for m in bootif.into_iter().map(str::to_string).chain(
        ifaces
            .iter()
            .flat_map(|i| [i.mac_address.clone(), i.current_mac.clone()])
            .flatten(),
    ) {
        let m = m.to_ascii_lowercase();
        if !macs.contains(&m) && !locally_assigned_usb_nic(&m) {
            macs.push(m);
        }
    }
    macs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_macs_puts_bootif_first_without_duplicates() {
        let iface = |m: &str| Interface::fixture("x", m, None);
        let macs = lookup_macs(
            Some("52:54:00:00:00:02"),
            &[iface("52:54:00:00:00:01"), iface("52:54:00:00:00:02")],
        );
        assert_eq!(macs, vec!["52:54:00:00:00:02", "52:54:00:00:00:01"]);
    }

    #[test]
    fn lookup_sends_permanent_and_current_macs_but_never_fa() {
        let mut bonded = Interface::fixture("eth1", "52:54:00:00:00:03", None);
        bonded.current_mac = Some("52:54:00:00:00:01".into());
        let macs = lookup_macs(
            Some("fa:16:3e:00:00:09"),
            &[
                Interface::fixture("eth0", "52:54:00:00:00:01", None),
                bonded,
            ],
        );
        assert_eq!(macs, vec!["52:54:00:00:00:01", "52:54:00:00:00:03"]);
        assert!(locally_assigned_usb_nic("FA:00:00:00:00:01"));
        assert!(!locally_assigned_usb_nic("52:fa:00:00:00:01"));
        // An interface with no permanent address (sysfs fixtures, veth): the current one.
        assert_eq!(
            macs_of("no-such-nic", Some("52:54:00:AA:00:01".into()), true),
            (Some("52:54:00:aa:00:01".into()), None)
        );
        assert_eq!(
            macs_of("no-such-nic", Some("fa:54:00:aa:00:01".into()), true),
            (None, None)
        );
    }

    #[test]
    fn fake_sysfs_interfaces() {
        let d = tempfile::tempdir().unwrap();
        let nic = d.path().join("eth0");
        fs::create_dir_all(nic.join("device")).unwrap();
        fs::write(nic.join("address"), "52:54:00:AA:BB:CC\n").unwrap();
        fs::write(nic.join("carrier"), "1\n").unwrap();
        fs::write(nic.join("speed"), "1000\n").unwrap();
        fs::write(nic.join("device/vendor"), "0x1af4\n").unwrap();
        let virt = d.path().join("veth0");
        fs::create_dir_all(&virt).unwrap();
        fs::write(virt.join("address"), "aa:aa:aa:aa:aa:aa\n").unwrap();
        fs::create_dir_all(d.path().join("lo")).unwrap();
        let list = interfaces(d.path(), false);
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].name, "eth0");
        assert_eq!(list[0].mac_address.as_deref(), Some("52:54:00:aa:bb:cc"));
        assert_eq!(list[0].speed_mbps, Some(1000));
        assert!(list[0].has_carrier);
        assert_eq!(list[0].vendor.as_deref(), Some("0x1af4"));
    }
}
