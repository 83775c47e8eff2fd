//! Before posting, wait (up to `ipa-inspection-dhcp-wait-timeout`) for the PXE NIC, or every
//! NIC with `ipa-inspection-dhcp-all-interfaces`, to have an IPv4 address: the conductor's
//! port hooks keep the interfaces that have one. With no PXE NIC known, for any address. Interfaces are checked every 250 ms, so the
//! post goes out as soon as the last address arrives.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::hardware::net::{self, Interface};

const POLL: Duration = Duration::from_millis(250);

/// The interfaces still waiting for an IPv4 address, or `None` when there is nothing to
/// wait for (no PXE NIC known and not waiting for all).
pub fn missing(ifaces: &[Interface], pxe_mac: Option<&str>, all: bool) -> Option<Vec<String>> {
    if !all && pxe_mac.is_none() {
        return None;
    }
    Some(
        ifaces
            .iter()
            .filter(|i| all || i.mac_address.as_deref() == pxe_mac)
            .filter(|i| i.ipv4_address.is_none())
            .map(|i| i.name.clone())
            .collect(),
    )
}

/// Returns true when every awaited NIC has an address (or waiting is off).
pub fn wait(cfg: &Config, sys_class_net: &Path) -> bool {
    let timeout = cfg.inspection.dhcp_wait_timeout;
    if timeout.is_zero() {
        return true;
    }
    let all = cfg.inspection.dhcp_all_interfaces;
    let start = Instant::now();
    let mut logged = false;
    loop {
        let ifaces = net::interfaces(sys_class_net, cfg.allow_virtual_nics);
        let Some(left) = missing(&ifaces, cfg.bootif.as_deref(), all) else {
            // No PXE NIC known (a virtual-media boot): any address will carry the post. IPA
            // posts at once and fails where the network comes up later (a VLAN found by
            // LLDP, a bond, a slow DHCP server).
            if any_address() {
                return true;
            }
            if start.elapsed() >= timeout {
                tracing::warn!(?timeout, "no address on any interface; posting anyway");
                return false;
            }
            if waited_logged(&mut logged) {
                tracing::info!("no PXE interface known (BOOTIF): waiting for any address");
            }
            std::thread::sleep(POLL);
            continue;
        };
        if left.is_empty() {
            return true;
        }
        if start.elapsed() >= timeout {
            tracing::warn!(interfaces = ?left, ?timeout, "not every interface got an IPv4 address");
            return false;
        }
        tracing::debug!(interfaces = ?left, "waiting for IPv4 addresses");
        std::thread::sleep(POLL);
    }
}

/// An address beyond loopback and link-local, on any interface.
fn any_address() -> bool {
    net::local_addresses().iter().any(|ip| match ip {
        std::net::IpAddr::V4(v4) => !v4.is_link_local(),
        std::net::IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) != 0xfe80,
    })
}

/// True the first time (a line for the log once, not every poll).
fn waited_logged(logged: &mut bool) -> bool {
    !std::mem::replace(logged, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nic(name: &str, mac: &str, v4: Option<&str>) -> Interface {
        Interface::fixture(name, mac, v4)
    }

    #[test]
    fn waits_for_the_pxe_nic_or_all() {
        let l = [
            nic("eth0", "aa:00:00:00:00:01", Some("10.0.0.5")),
            nic("eth1", "aa:00:00:00:00:02", None),
        ];
        assert_eq!(missing(&l, Some("aa:00:00:00:00:01"), false), Some(vec![]));
        assert_eq!(
            missing(&l, Some("aa:00:00:00:00:02"), false),
            Some(vec!["eth1".to_string()])
        );
        assert_eq!(missing(&l, None, true), Some(vec!["eth1".to_string()]));
        assert_eq!(missing(&l, None, false), None);
        // A BOOTIF that matches no NIC: nothing to wait for (IPA's behaviour).
        assert_eq!(missing(&l, Some("aa:00:00:00:00:09"), false), Some(vec![]));
    }
}
