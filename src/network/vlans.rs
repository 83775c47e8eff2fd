//! `ipa-enable-vlan-interfaces`, with IPA's semantics (Metal3 sets `all` by default): a
//! comma-separated list of `iface.vid` (the interface by name or by MAC), of interfaces whose
//! VLANs LLDP names, or `all` (every NIC's LLDP VLANs). Each VLAN is named `iface.vid`, brought
//! up and asked for DHCP, so lookup and heartbeats can go over it.

use std::path::Path;
use std::time::{Duration, Instant};

use super::{dhcp, links::Netlink, NetError, Options, Outcome};
use crate::hardware::{lldp, net};

/// One entry of the parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Want {
    /// Every NIC, VLANs from LLDP.
    All,
    /// One interface (name or MAC), VLANs from LLDP.
    FromLldp(String),
    /// One VLAN on one interface (name or MAC).
    One(String, u16),
}

/// The VLAN interface's name, as IPA makes it (`eth0.100`), cut to the kernel's 15 bytes by
/// shortening the interface part.
pub fn name(iface: &str, vid: u16) -> String {
    let suffix = format!(".{vid}");
    let keep = 15usize.saturating_sub(suffix.len()).min(iface.len());
    let mut cut = keep;
    while !iface.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{suffix}", &iface[..cut])
}

/// Read the parameter; entries that are not understood are returned as problems.
pub fn parse(value: &str) -> (Vec<Want>, Vec<String>) {
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if item == "all" {
            out.push(Want::All);
            continue;
        }
        // A MAC has colons and no dot: `aa:bb:…:ff.100` splits at the last dot.
        match item.rsplit_once('.') {
            Some((iface, vid)) => match vid.parse::<u16>() {
                Ok(v) if (1..=4094).contains(&v) && !iface.is_empty() => {
                    out.push(Want::One(iface.to_string(), v))
                }
                _ => problems.push(format!(
                    "ipa-enable-vlan-interfaces: {item:?}: {vid:?} is not a VLAN id (1 to 4094)"
                )),
            },
            None => out.push(Want::FromLldp(item.to_string())),
        }
    }
    (out, problems)
}

/// The VLAN ids an LLDP neighbour names in its 802.1 VLAN Name TLVs (what IPA reads).
pub fn vlans_from_lldp(tlvs: &[(u8, Vec<u8>)]) -> Vec<u16> {
    let mut v: Vec<u16> = lldp::decode(tlvs)
        .vlans
        .into_iter()
        .map(|(id, _)| id)
        .filter(|id| (1..=4094).contains(id))
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

fn matches(nic: &net::Interface, who: &str) -> bool {
    nic.name == who
        || nic
            .mac_address
            .as_deref()
            .is_some_and(|m| m.eq_ignore_ascii_case(who))
        || nic
            .current_mac
            .as_deref()
            .is_some_and(|m| m.eq_ignore_ascii_case(who))
}

/// Create, bring up and DHCP every VLAN the parameter asks for.
pub async fn bring_up(value: &str, opts: &Options, hook: &Path) -> Result<Outcome, NetError> {
    let mut out = Outcome::default();
    let (wants, problems) = parse(value);
    for p in problems {
        out.problem(p);
    }
    if wants.is_empty() {
        return Ok(out);
    }
    let nl = Netlink::open()?;
    // The NICs named must be there; `all` takes those present once the first appears.
    let start = Instant::now();
    let nics = loop {
        // NICs with a wire: not VLANs, not a bond the bonding module made by itself.
        let nics = net::interfaces(Path::new("/sys/class/net"), opts.allow_virtual_nics)
            .into_iter()
            .filter(|n| {
                !n.name.contains('.')
                    && (opts.allow_virtual_nics
                        || Path::new("/sys/class/net")
                            .join(&n.name)
                            .join("device")
                            .exists())
            })
            .collect::<Vec<_>>();
        let named_missing = wants.iter().any(|w| match w {
            Want::All => nics.is_empty(),
            Want::FromLldp(who) | Want::One(who, _) => !nics.iter().any(|n| matches(n, who)),
        });
        if !named_missing || start.elapsed() >= opts.nic_wait {
            break nics;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut todo: Vec<(String, u16)> = Vec::new();
    let mut listen: Vec<String> = Vec::new();
    for w in &wants {
        match w {
            Want::One(who, vid) => match nics.iter().find(|n| matches(n, who)) {
                Some(n) => todo.push((n.name.clone(), *vid)),
                None => out.problem(format!(
                    "ipa-enable-vlan-interfaces: no interface {who} for VLAN {vid}"
                )),
            },
            Want::FromLldp(who) => match nics.iter().find(|n| matches(n, who)) {
                Some(n) => listen.push(n.name.clone()),
                None => out.problem(format!("ipa-enable-vlan-interfaces: no interface {who}")),
            },
            Want::All => listen.extend(nics.iter().map(|n| n.name.clone())),
        }
    }
    // The VLANs named outright first: they need no switch to speak.
    todo.sort();
    todo.dedup();
    for (iface, vid) in todo {
        make(&nl, &iface, vid, opts, hook, &mut out).await;
    }
    listen.sort();
    listen.dedup();
    if !listen.is_empty() {
        // LLDP frames only arrive on a link that is up.
        for name in &listen {
            if let Some(k) = nl.by_name(name).await? {
                nl.up(k.index, None).await?;
            }
        }
        // Each NIC on its own: a VLAN is made the moment its switch names it, not when the
        // slowest (or a silent) NIC's wait ends.
        let mut heard = tokio::task::JoinSet::new();
        for name in listen.clone() {
            let wait = opts.lldp_wait;
            heard.spawn_blocking(move || {
                let (found, errors) = lldp::capture(std::slice::from_ref(&name), wait);
                (name, found, errors)
            });
        }
        while let Some(done) = heard.join_next().await {
            let Ok((name, found, errors)) = done else {
                out.problem("ipa-enable-vlan-interfaces: an LLDP listener failed".into());
                continue;
            };
            for e in errors {
                out.problem(format!("ipa-enable-vlan-interfaces: {e}"));
            }
            let tlvs: Option<Vec<(u8, Vec<u8>)>> = found.get(&name).map(|raw| {
                raw.iter()
                    .filter_map(|(t, h)| hex::decode(h).ok().map(|b| (*t, b)))
                    .collect()
            });
            let vids = match tlvs.filter(|t| !t.is_empty()) {
                Some(tlvs) => {
                    let v = vlans_from_lldp(&tlvs);
                    if v.is_empty() {
                        out.problem(format!(
                            "ipa-enable-vlan-interfaces: the LLDP heard on {name} names no VLAN"
                        ));
                    }
                    v
                }
                None => {
                    out.problem(format!(
                        "ipa-enable-vlan-interfaces: no LLDP on {name} within {:.0} s",
                        opts.lldp_wait.as_secs_f64()
                    ));
                    Vec::new()
                }
            };
            for vid in vids {
                make(&nl, &name, vid, opts, hook, &mut out).await;
            }
        }
    }
    Ok(out)
}

/// Make VLAN `vid` on `iface`, bring it up and ask DHCP (v4 and v6) on it.
async fn make(nl: &Netlink, iface: &str, vid: u16, opts: &Options, hook: &Path, out: &mut Outcome) {
    let r: Result<String, NetError> = async {
        let parent = nl
            .by_name(iface)
            .await?
            .ok_or_else(|| NetError::Setup(format!("{iface} vanished")))?;
        nl.up(parent.index, None).await?;
        let vname = name(iface, vid);
        let idx = nl.vlan(&vname, parent.index, vid, None).await?;
        nl.up(idx, None).await?;
        dhcp::start_v4(&vname, hook)?;
        dhcp::start_v6(&vname, &opts.dhcp_log, &opts.resolv_conf)?;
        Ok(vname)
    }
    .await;
    match r {
        Ok(v) => out.did(&v, format!("VLAN {vid} on {iface}, DHCPv4 and DHCPv6")),
        Err(e) => out.problem(format!("VLAN {vid} on {iface}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter() {
        let (w, p) = parse("all, eth0.100 ,52:54:00:AA:BB:CC.200,eth1,eth2.0,eth3.x");
        assert_eq!(
            w,
            vec![
                Want::All,
                Want::One("eth0".into(), 100),
                Want::One("52:54:00:AA:BB:CC".into(), 200),
                Want::FromLldp("eth1".into()),
            ]
        );
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(parse("").0.is_empty());
    }

    #[test]
    fn names_fit_the_kernel() {
        assert_eq!(name("eth0", 100), "eth0.100");
        assert_eq!(name("enp0s20f0u1u2", 4094), "enp0s20f0u.4094");
        assert!(name("enp0s20f0u1u2", 4094).len() <= 15);
    }

    #[test]
    fn vlan_ids_from_lldp() {
        // 802.1 VLAN Name TLVs for 100 and 200, a port VLAN id (not a VLAN to bring up).
        let vname = |id: u16, n: &str| {
            let mut v = vec![0x00, 0x80, 0xc2, 3];
            v.extend(id.to_be_bytes());
            v.push(n.len() as u8);
            v.extend(n.bytes());
            (127u8, v)
        };
        let tlvs = vec![
            vname(200, "storage"),
            vname(100, "provisioning"),
            (127u8, vec![0x00, 0x80, 0xc2, 1, 0, 7]),
            vname(100, "again"),
        ];
        assert_eq!(vlans_from_lldp(&tlvs), vec![100, 200]);
    }
}
