//! DHCP: the IPv4 client is busybox's `udhcpc` (in both ramdisks: the minimal one's busybox,
//! the DIB one's Debian `busybox` package); DHCPv6 is this binary's own client
//! ([`super::dhcp6`]); SLAAC is the kernel's. The lease is applied by this binary (`rivet network-lease`, the
//! client's hook) through netlink, so both ramdisks configure an address the same way.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::links::Netlink;
use super::NetError;

/// The hook udhcpc runs: a two-line script calling this very binary (udhcpc runs its hook
/// with the event as the only argument), its log appended to `log` (the console in a
/// ramdisk). udhcpc's own output goes nowhere: it says a line a second while no server answers,
/// and a caller reading `rivet network`'s output must not wait for a client that never ends.
pub fn write_hook(dir: &Path, log: &Path) -> Result<PathBuf, NetError> {
    let exe = std::env::current_exe()
        .map_err(|e| NetError::Setup(format!("cannot find this binary: {e}")))?;
    let exe = exe.to_string_lossy();
    let log = log.to_string_lossy();
    if exe.contains('\'') || log.contains('\'') {
        return Err(NetError::Setup(format!(
            "{exe} or {log} cannot be quoted in a shell script"
        )));
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| NetError::Setup(format!("mkdir {}: {e}", dir.display())))?;
    let hook = dir.join("udhcpc-hook");
    let text = format!("#!/bin/sh\nexec '{exe}' network-lease \"$1\" >>'{log}' 2>&1\n");
    std::fs::write(&hook, text)
        .map_err(|e| NetError::Setup(format!("writing {}: {e}", hook.display())))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| NetError::Setup(format!("chmod {}: {e}", hook.display())))?;
    Ok(hook)
}

/// `udhcpc` itself, or busybox's applet where only the multi-call binary is installed.
fn udhcpc() -> Option<(PathBuf, Vec<String>)> {
    if let Some(p) = crate::system::tools::which("udhcpc") {
        return Some((p, Vec::new()));
    }
    crate::system::tools::which("busybox").map(|p| (p, vec!["udhcpc".to_string()]))
}

/// Start DHCPv4 on `iface`, in the background, for as long as the machine runs: asked again
/// and again until a server answers (5 tries a second apart, then a pause of 3 s), then the
/// lease renewed. The child is left to run; init (or systemd) reaps it.
pub fn start_v4(iface: &str, hook: &Path) -> Result<(), NetError> {
    let (bin, pre) = udhcpc().ok_or_else(|| {
        NetError::Setup("no DHCP client: neither udhcpc nor busybox is installed".into())
    })?;
    Command::new(&bin)
        .args(pre)
        .args(["-f", "-i", iface, "-t", "5", "-T", "1", "-A", "3", "-s"])
        .arg(hook)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(drop)
        .map_err(|e| NetError::Setup(format!("starting {} on {iface}: {e}", bin.display())))
}

/// Start DHCPv6 on `iface` in the background: this binary's client (`rivet network-dhcp6`,
/// [`super::dhcp6`]) for as long as the machine runs, its log appended to `log`, the name
/// servers it learns added to `resolv_conf`.
pub fn start_v6(iface: &str, log: &Path, resolv_conf: &Path) -> Result<(), NetError> {
    let exe = std::env::current_exe()
        .map_err(|e| NetError::Setup(format!("cannot find this binary: {e}")))?;
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| NetError::Setup(format!("opening {}: {e}", log.display())))?;
    let err = out
        .try_clone()
        .map_err(|e| NetError::Setup(format!("{}: {e}", log.display())))?;
    Command::new(&exe)
        .args(["network-dhcp6", iface, "--resolv-conf"])
        .arg(resolv_conf)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map(drop)
        .map_err(|e| NetError::Setup(format!("starting DHCPv6 on {iface}: {e}")))
}

/// What udhcpc passes its hook in the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub iface: String,
    pub ip: Ipv4Addr,
    pub prefix: u8,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<IpAddr>,
}

/// Read a lease from udhcpc's variables (`interface`, `ip`, `mask` as a prefix length or a
/// dotted mask, `router` and `dns` as space-separated lists).
pub fn lease_from(get: impl Fn(&str) -> Option<String>) -> Result<Lease, NetError> {
    let bad = |what: &str, v: &str| NetError::Lease(format!("{what} {v:?} is not valid"));
    let iface = get("interface").ok_or_else(|| NetError::Lease("no interface".into()))?;
    if iface.is_empty() || iface.len() > 15 || iface.contains('/') {
        return Err(bad("interface", &iface));
    }
    let ip_s = get("ip").unwrap_or_default();
    let ip: Ipv4Addr = ip_s.parse().map_err(|_| bad("ip", &ip_s))?;
    let mask = get("mask").unwrap_or_else(|| "24".into());
    let prefix = match mask.parse::<u8>() {
        Ok(p) if p <= 32 => p,
        _ => {
            let m: Ipv4Addr = mask.parse().map_err(|_| bad("mask", &mask))?;
            let bits = u32::from(m);
            if bits.leading_ones() + bits.trailing_zeros() != 32 {
                return Err(bad("mask", &mask));
            }
            bits.leading_ones() as u8
        }
    };
    let router = get("router")
        .unwrap_or_default()
        .split_whitespace()
        .next()
        .and_then(|r| r.parse().ok());
    let dns = get("dns")
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|d| d.parse().ok())
        .take(3)
        .collect();
    Ok(Lease {
        iface,
        ip,
        prefix,
        router,
        dns,
    })
}

/// Apply udhcpc's event: `bound`/`renew` set the address, the default route and DNS (DNS only
/// when `resolv_conf` is given: a static network_data's servers win); `deconfig` and the
/// failures remove the IPv4 addresses.
pub async fn apply_event(
    event: &str,
    get: impl Fn(&str) -> Option<String>,
    resolv_conf: Option<&Path>,
) -> Result<String, NetError> {
    let nl = Netlink::open()?;
    match event {
        "bound" | "renew" => {
            let lease = lease_from(get)?;
            let link = nl
                .by_name(&lease.iface)
                .await?
                .ok_or_else(|| NetError::Lease(format!("no interface {}", lease.iface)))?;
            let have = nl.addresses(link.index).await?;
            let want = (IpAddr::V4(lease.ip), lease.prefix);
            if !have.contains(&want) {
                nl.flush(link.index, false).await?;
                nl.address(link.index, want.0, want.1).await?;
            }
            if let Some(r) = lease.router {
                nl.route(
                    link.index,
                    IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                    0,
                    IpAddr::V4(r),
                )
                .await?;
            }
            if let (Some(path), false) = (resolv_conf, lease.dns.is_empty()) {
                let text: String = lease
                    .dns
                    .iter()
                    .map(|d| format!("nameserver {d}\n"))
                    .collect();
                std::fs::write(path, text)
                    .map_err(|e| NetError::Lease(format!("writing {}: {e}", path.display())))?;
            }
            Ok(format!(
                "{event}: {}/{} on {}{}",
                lease.ip,
                lease.prefix,
                lease.iface,
                lease
                    .router
                    .map(|r| format!(" via {r}"))
                    .unwrap_or_default()
            ))
        }
        "deconfig" | "leasefail" | "nak" => {
            let iface = get("interface").unwrap_or_default();
            if event == "deconfig" {
                if let Some(link) = nl.by_name(&iface).await? {
                    nl.up(link.index, None).await?;
                    nl.flush(link.index, false).await?;
                }
            }
            Ok(format!("{event} on {iface}"))
        }
        other => Ok(format!("{other}: nothing to do")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn leases() {
        let l = lease_from(env(&[
            ("interface", "eth0"),
            ("ip", "192.168.150.20"),
            ("mask", "24"),
            ("router", "192.168.150.1 192.168.150.2"),
            ("dns", "192.168.150.1 nonsense"),
        ]))
        .unwrap();
        assert_eq!(l.prefix, 24);
        assert_eq!(l.router, Some("192.168.150.1".parse().unwrap()));
        assert_eq!(l.dns, vec!["192.168.150.1".parse::<IpAddr>().unwrap()]);
        let l = lease_from(env(&[
            ("interface", "eth0"),
            ("ip", "10.0.0.2"),
            ("mask", "255.255.0.0"),
        ]))
        .unwrap();
        assert_eq!((l.prefix, l.router), (16, None));
        for bad in [
            vec![("interface", "eth0"), ("ip", "10.0.0.300")],
            vec![
                ("interface", "eth0"),
                ("ip", "10.0.0.2"),
                ("mask", "255.0.255.0"),
            ],
            vec![("interface", "../x"), ("ip", "10.0.0.2")],
            vec![("ip", "10.0.0.2")],
        ] {
            assert!(lease_from(env(&bad)).is_err(), "{bad:?}");
        }
    }
}
