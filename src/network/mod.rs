//! The ramdisk's network, brought up by `rivet network` in both ramdisks (the minimal one's
//! /init and the DIB one's `rivet-network.service`), so they behave the same:
//!
//! 1. `network_data.json` from the virtual media (Ironic writes the node's `network_data`
//!    there, Metal3 its `preprovisioningNetworkDataName`): links (`phy` by MAC, `bond`,
//!    `vlan`), static IPv4/IPv6 with routes, DHCPv4, DHCPv6, SLAAC, DNS;
//! 2. otherwise DHCP on every NIC as it appears (SLAAC is the kernel's on every NIC anyway);
//! 3. then `ipa-enable-vlan-interfaces` (IPA's semantics: `iface.vid`, `mac.vid`, an
//!    interface or `all` for the VLANs LLDP names), each VLAN asked for DHCP.
//!
//! Addresses, links and routes go through netlink ([`links`]); the DHCPv4 client is the
//! ramdisk's `udhcpc`, its leases applied by this binary ([`dhcp`]); DHCPv6 is this binary's
//! own client ([`dhcp6`]). The clock
//! (`ipa-ntp-server`) is set by the agent ([`sntp`]) before its first TLS connection.

pub mod dhcp;
pub mod dhcp6;
pub mod links;
pub mod network_data;
pub mod sntp;
pub mod vlans;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use network_data::{Addressing, LinkKind, Plan};

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("netlink: {0}")]
    Netlink(String),
    #[error("{0}")]
    Setup(String),
    #[error("DHCP lease: {0}")]
    Lease(String),
    #[error(transparent)]
    Data(#[from] network_data::ParseError),
}

/// What `rivet network` is told.
#[derive(Debug, Clone)]
pub struct Options {
    /// A network_data.json to apply instead of the one on the virtual media (tests, and
    /// operators who bake one into the ramdisk).
    pub network_data: Option<PathBuf>,
    /// How long to wait for the virtual media to appear (boot_method=vmedia); zero: look once.
    pub vmedia_wait: Duration,
    pub allow_loop_devices: bool,
    /// veth pairs count as NICs (tests in a network namespace).
    pub allow_virtual_nics: bool,
    /// How long NICs are waited for: those of network_data, or any for DHCP.
    pub nic_wait: Duration,
    /// Where the DHCP hook is written.
    pub run_dir: PathBuf,
    /// resolv.conf to write (name servers from network_data or a lease).
    pub resolv_conf: PathBuf,
    /// Where the DHCP hook logs the leases it applies.
    pub dhcp_log: PathBuf,
    /// `ipa-enable-vlan-interfaces`.
    pub vlan_interfaces: Option<String>,
    /// How long to listen for LLDP when VLANs come from it.
    pub lldp_wait: Duration,
}

/// What was done, for the log and the tests.
#[derive(Debug, Default)]
pub struct Outcome {
    pub source: String,
    /// Interface → what was configured on it.
    pub applied: BTreeMap<String, Vec<String>>,
    pub problems: Vec<String>,
}

impl Outcome {
    fn did(&mut self, iface: &str, what: String) {
        tracing::info!(interface = iface, "{what}");
        self.applied
            .entry(iface.to_string())
            .or_default()
            .push(what);
    }
    fn problem(&mut self, p: String) {
        tracing::warn!("{p}");
        self.problems.push(p);
    }
}

/// Interface names the kernel takes: 1 to 15 bytes, no '/', ':' or white space.
fn valid_ifname(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 15
        && n != "."
        && n != ".."
        && !n
            .bytes()
            .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace())
}

/// The network_data to apply, and where it came from.
pub fn load_plan(opts: &Options) -> Result<Option<(String, Plan)>, NetError> {
    let (source, bytes) = match &opts.network_data {
        Some(p) => {
            let b = std::fs::read(p)
                .map_err(|e| NetError::Setup(format!("reading {}: {e}", p.display())))?;
            (p.display().to_string(), b)
        }
        None => {
            match crate::config::vmedia::network_data(opts.allow_loop_devices, opts.vmedia_wait)
                .map_err(|e| NetError::Setup(e.to_string()))?
            {
                Some(found) => found,
                None => return Ok(None),
            }
        }
    };
    Ok(Some((source, network_data::parse(&bytes)?)))
}

/// The NIC each `phy` link names, waited for up to `wait`; by permanent MAC first (a bond
/// changes its members' current one), then current.
async fn find_phys(
    nl: &links::Netlink,
    plan: &Plan,
    wait: Duration,
) -> Result<BTreeMap<String, links::KernelLink>, NetError> {
    let start = Instant::now();
    loop {
        let kernel = nl.links().await?;
        let by_current = links::by_mac(&kernel);
        let mut found = BTreeMap::new();
        let mut missing = false;
        for l in &plan.links {
            let LinkKind::Phy { mac } = &l.kind else {
                continue;
            };
            let by_perm = kernel.iter().find(|k| {
                crate::hardware::net::permanent_mac(&k.name).as_deref() == Some(mac.as_str())
            });
            match by_perm.or_else(|| by_current.get(mac)) {
                Some(k) => {
                    found.insert(l.id.clone(), k.clone());
                }
                None => missing = true,
            }
        }
        if !missing || start.elapsed() >= wait {
            return Ok(found);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Let the kernel configure addresses from router advertisements on `iface` (SLAAC), even
/// where forwarding is on.
fn enable_slaac(iface: &str) -> Result<(), String> {
    for (k, v) in [("accept_ra", "2"), ("autoconf", "1")] {
        let p = format!("/proc/sys/net/ipv6/conf/{iface}/{k}");
        std::fs::write(&p, v).map_err(|e| format!("{p}: {e}"))?;
    }
    Ok(())
}

/// Apply a network_data plan.
pub async fn apply_plan(
    nl: &links::Netlink,
    plan: &Plan,
    opts: &Options,
    hook: &Path,
    out: &mut Outcome,
) -> Result<(), NetError> {
    for p in &plan.problems {
        out.problem(format!("network_data.json: {p}"));
    }
    let phys = find_phys(nl, plan, opts.nic_wait).await?;
    // Link id → (kernel index, interface name).
    let mut made: BTreeMap<String, (u32, String)> = BTreeMap::new();
    for (i, l) in plan.links.iter().enumerate() {
        let result: Result<(u32, String), NetError> = async {
            match &l.kind {
                LinkKind::Phy { mac } => {
                    let k = phys.get(&l.id).ok_or_else(|| {
                        NetError::Setup(format!(
                            "no NIC with MAC {mac} appeared within {:.0} s",
                            opts.nic_wait.as_secs_f64()
                        ))
                    })?;
                    nl.up(k.index, l.mtu).await?;
                    Ok((k.index, k.name.clone()))
                }
                LinkKind::Bond(bond) => {
                    let name = if valid_ifname(&l.id) {
                        l.id.clone()
                    } else {
                        format!("bond{i}")
                    };
                    let idx: Vec<u32> = bond
                        .members
                        .iter()
                        .filter_map(|m| made.get(m).map(|(i, _)| *i))
                        .collect();
                    if idx.is_empty() {
                        return Err(NetError::Setup(format!(
                            "bond {name}: none of its members ({}) is up",
                            bond.members.join(", ")
                        )));
                    }
                    let index = nl.bond(&name, bond, &idx).await?;
                    nl.up(index, l.mtu).await?;
                    Ok((index, name))
                }
                LinkKind::Vlan { parent, vid, mac } => {
                    let (pidx, pname) = made
                        .get(parent)
                        .cloned()
                        .ok_or_else(|| NetError::Setup(format!("its link {parent} is not up")))?;
                    let name = vlans::name(&pname, *vid);
                    let index = nl.vlan(&name, pidx, *vid, mac.as_deref()).await?;
                    nl.up(index, l.mtu).await?;
                    Ok((index, name))
                }
            }
        }
        .await;
        match result {
            Ok((index, name)) => {
                out.did(&name, format!("link {} up", l.id));
                made.insert(l.id.clone(), (index, name));
            }
            Err(e) => out.problem(format!("link {}: {e}", l.id)),
        }
    }
    for n in &plan.networks {
        let Some((index, name)) = made.get(&n.link) else {
            out.problem(format!(
                "network {}: its link {} is not up; not applied",
                n.id, n.link
            ));
            continue;
        };
        let r: Result<String, NetError> = async {
            match &n.addressing {
                Addressing::Static {
                    address,
                    prefix,
                    routes,
                } => {
                    nl.address(*index, *address, *prefix).await?;
                    let mut s = format!("{address}/{prefix}");
                    for r in routes {
                        nl.route(*index, r.dest, r.prefix, r.gateway).await?;
                        s.push_str(&format!(
                            ", route {}/{} via {}",
                            r.dest, r.prefix, r.gateway
                        ));
                    }
                    crate::timeline::mark("address");
                    Ok(s)
                }
                Addressing::Dhcp4 => dhcp::start_v4(name, hook).map(|()| "DHCPv4".into()),
                Addressing::Dhcp6 => dhcp::start_v6(name, &opts.dhcp_log, &opts.resolv_conf)
                    .map(|()| "DHCPv6".into()),
                Addressing::Slaac => enable_slaac(name)
                    .map(|()| "SLAAC".to_string())
                    .map_err(NetError::Setup),
            }
        }
        .await;
        match r {
            Ok(s) => out.did(name, format!("network {}: {s}", n.id)),
            Err(e) => out.problem(format!("network {} on {name}: {e}", n.id)),
        }
    }
    if let Some(text) = network_data::resolv_conf(plan) {
        match std::fs::write(&opts.resolv_conf, text) {
            Ok(()) => out.did(
                "dns",
                format!(
                    "name servers {}",
                    plan.dns
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ),
            Err(e) => out.problem(format!("writing {}: {e}", opts.resolv_conf.display())),
        }
    }
    Ok(())
}

/// DHCP on every NIC as it appears, for `opts.nic_wait`.
async fn dhcp_everywhere(
    nl: &links::Netlink,
    opts: &Options,
    hook: &Path,
    out: &mut Outcome,
) -> Result<(), NetError> {
    let start = Instant::now();
    let mut started: Vec<String> = Vec::new();
    loop {
        let nics =
            crate::hardware::net::interfaces(Path::new("/sys/class/net"), opts.allow_virtual_nics);
        for nic in nics {
            // NICs only: not a VLAN or bond something else made (the bonding module's own
            // empty bond0), which has no wire of its own to ask on.
            let wired = Path::new("/sys/class/net")
                .join(&nic.name)
                .join("device")
                .exists();
            if started.contains(&nic.name) || !(wired || opts.allow_virtual_nics) {
                continue;
            }
            started.push(nic.name.clone());
            let Some(k) = nl.by_name(&nic.name).await? else {
                continue;
            };
            if let Err(e) = nl.up(k.index, None).await {
                out.problem(format!("{}: {e}", nic.name));
                continue;
            }
            crate::timeline::mark("link_up");
            match dhcp::start_v4(&nic.name, hook) {
                Ok(()) => out.did(&nic.name, "DHCPv4".into()),
                Err(e) => out.problem(format!("{}: {e}", nic.name)),
            }
            // And DHCPv6 (an IPv6-only network has no DHCPv4 server); SLAAC is the kernel's.
            match dhcp::start_v6(&nic.name, &opts.dhcp_log, &opts.resolv_conf) {
                Ok(()) => out.did(&nic.name, "DHCPv6".into()),
                Err(e) => out.problem(format!("{}: {e}", nic.name)),
            }
        }
        if start.elapsed() >= opts.nic_wait {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The whole bring-up: network_data or DHCP, then the VLANs `ipa-enable-vlan-interfaces`
/// asks for.
pub async fn bring_up(opts: &Options) -> Result<Outcome, NetError> {
    let nl = links::Netlink::open()?;
    let mut out = Outcome::default();
    if let Some(lo) = nl.by_name("lo").await? {
        nl.up(lo.index, None).await?;
    }
    let hook = dhcp::write_hook(&opts.run_dir, &opts.dhcp_log)?;
    let plan = match load_plan(opts) {
        Ok(p) => p,
        Err(e) => {
            // A document that cannot be read at all: said loudly, and DHCP as without one
            // (the node may still reach Ironic; with no DHCP server it will say so).
            out.problem(format!("{e}; falling back to DHCP on every NIC"));
            None
        }
    };
    let vlan_task = opts.vlan_interfaces.clone().map(|v| {
        let o = opts.clone();
        let hook = hook.clone();
        tokio::spawn(async move { vlans::bring_up(&v, &o, &hook).await })
    });
    match plan {
        Some((source, plan)) => {
            out.source = format!("network_data.json ({source})");
            tracing::info!(source = %out.source, links = plan.links.len(), networks = plan.networks.len(), "applying network_data");
            apply_plan(&nl, &plan, opts, &hook, &mut out).await?;
        }
        None => {
            out.source = "DHCP on every NIC".into();
            dhcp_everywhere(&nl, opts, &hook, &mut out).await?;
        }
    }
    if let Some(t) = vlan_task {
        match t.await {
            Ok(Ok(v)) => {
                for (iface, what) in v.applied {
                    for w in what {
                        out.did(&iface, w);
                    }
                }
                for p in v.problems {
                    out.problem(p);
                }
            }
            Ok(Err(e)) => out.problem(format!("ipa-enable-vlan-interfaces: {e}")),
            Err(e) => out.problem(format!("ipa-enable-vlan-interfaces: the task failed: {e}")),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names() {
        assert!(valid_ifname("bond0"));
        assert!(valid_ifname("enp1s0.100"));
        assert!(!valid_ifname("port-92750f6c-60a9-4897"));
        assert!(!valid_ifname("a/b"));
        assert!(!valid_ifname(""));
        assert!(!valid_ifname(".."));
    }
}
