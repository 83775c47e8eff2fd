//! Links, addresses and routes through netlink (the `rtnetlink` crate, maintained by the
//! rust-netlink project): the same messages `ip` sends, without a shell or a tool in the
//! ramdisk, and with errors the agent can name.

use std::collections::BTreeMap;
use std::net::IpAddr;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{
    BondLacpRate, BondMode as NlBondMode, BondXmitHashPolicy, LinkAttribute, LinkMessage,
};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, LinkBond, LinkUnspec, LinkVlan, RouteMessageBuilder};

use super::network_data::{Bond, BondMode};
use super::NetError;

/// One netlink connection, served by a task on the current runtime.
pub struct Netlink {
    handle: Handle,
}

/// A link as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelLink {
    pub index: u32,
    pub name: String,
    pub mac: Option<String>,
}

fn nl(what: String) -> impl FnOnce(rtnetlink::Error) -> NetError {
    move |e| NetError::Netlink(format!("{what}: {e}"))
}

fn parse_mac(mac: &str) -> Option<Vec<u8>> {
    let b: Vec<u8> = mac
        .split(':')
        .map(|p| u8::from_str_radix(p, 16))
        .collect::<Result<_, _>>()
        .ok()?;
    (b.len() == 6).then_some(b)
}

fn kernel_link(m: &LinkMessage) -> KernelLink {
    let mut out = KernelLink {
        index: m.header.index,
        name: String::new(),
        mac: None,
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => out.name = n.clone(),
            LinkAttribute::Address(b) if b.len() == 6 && b.iter().any(|x| *x != 0) => {
                out.mac = Some(
                    b.iter()
                        .map(|x| format!("{x:02x}"))
                        .collect::<Vec<_>>()
                        .join(":"),
                )
            }
            _ => {}
        }
    }
    out
}

impl Netlink {
    /// Open the connection; its task runs on the current tokio runtime.
    pub fn open() -> Result<Netlink, NetError> {
        let (conn, handle, _) = rtnetlink::new_connection()
            .map_err(|e| NetError::Netlink(format!("opening a netlink socket: {e}")))?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    pub async fn links(&self) -> Result<Vec<KernelLink>, NetError> {
        let mut out = Vec::new();
        let mut s = self.handle.link().get().execute();
        while let Some(m) = s
            .try_next()
            .await
            .map_err(nl("listing links".to_string()))?
        {
            out.push(kernel_link(&m));
        }
        Ok(out)
    }

    pub async fn by_name(&self, name: &str) -> Result<Option<KernelLink>, NetError> {
        Ok(self.links().await?.into_iter().find(|l| l.name == name))
    }

    /// Bring a link up, with an MTU when one is given.
    pub async fn up(&self, index: u32, mtu: Option<u32>) -> Result<(), NetError> {
        let mut b = LinkUnspec::new_with_index(index).up();
        if let Some(m) = mtu {
            b = b.mtu(m);
        }
        self.handle
            .link()
            .set(b.build())
            .execute()
            .await
            .map_err(nl(format!("setting link {index} up")))
    }

    pub async fn down(&self, index: u32) -> Result<(), NetError> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).down().build())
            .execute()
            .await
            .map_err(nl(format!("setting link {index} down")))
    }

    /// Create a bond (or find the one a previous run made) and enslave its members, which the
    /// kernel wants down while they are added.
    pub async fn bond(&self, name: &str, spec: &Bond, members: &[u32]) -> Result<u32, NetError> {
        let (mode, miimon, xmit_hash_policy) = (spec.mode, spec.miimon, spec.xmit_hash_policy);
        let (lacp_fast, mac) = (spec.lacp_rate_fast, spec.mac.as_deref());
        // A bond of that name that is not ours (the bonding module makes an empty, round-robin
        // `bond0` when loaded without max_bonds=0) would keep its own mode: replaced.
        if let Some(old) = self.by_name(name).await? {
            self.handle
                .link()
                .del(old.index)
                .execute()
                .await
                .map_err(nl(format!("removing the existing {name}")))?;
        }
        {
            let mut b = LinkBond::new(name).mode(match mode {
                BondMode::BalanceRr => NlBondMode::BalanceRr,
                BondMode::ActiveBackup => NlBondMode::ActiveBackup,
                BondMode::BalanceXor => NlBondMode::BalanceXor,
                BondMode::Broadcast => NlBondMode::Broadcast,
                BondMode::Lacp => NlBondMode::Ieee8023Ad,
                BondMode::BalanceTlb => NlBondMode::BalanceTlb,
                BondMode::BalanceAlb => NlBondMode::BalanceAlb,
            });
            // Link monitoring is what makes a backup take over: 100 ms unless told otherwise.
            b = b.miimon(miimon.unwrap_or(100));
            if let Some(p) = xmit_hash_policy {
                b = b.xmit_hash_policy(match p {
                    1 => BondXmitHashPolicy::Layer34,
                    2 => BondXmitHashPolicy::Layer23,
                    3 => BondXmitHashPolicy::Encap23,
                    4 => BondXmitHashPolicy::Encap34,
                    _ => BondXmitHashPolicy::Layer2,
                });
            }
            if mode == BondMode::Lacp && lacp_fast {
                b = b.ad_lacp_rate(BondLacpRate::Fast);
            }
            if let Some(m) = mac.and_then(parse_mac) {
                b = b.address(m);
            }
            self.handle
                .link()
                .add(b.build())
                .execute()
                .await
                .map_err(nl(format!("creating bond {name}")))?;
        }
        let bond = self
            .by_name(name)
            .await?
            .ok_or_else(|| NetError::Netlink(format!("bond {name} vanished after creation")))?;
        for &m in members {
            self.down(m).await?;
            self.handle
                .link()
                .set(LinkUnspec::new_with_index(m).controller(bond.index).build())
                .execute()
                .await
                .map_err(nl(format!("adding link {m} to bond {name}")))?;
            self.up(m, None).await?;
        }
        Ok(bond.index)
    }

    /// Create `name` as VLAN `vid` on `parent` (or keep the one that exists).
    pub async fn vlan(
        &self,
        name: &str,
        parent: u32,
        vid: u16,
        mac: Option<&str>,
    ) -> Result<u32, NetError> {
        if let Some(l) = self.by_name(name).await? {
            return Ok(l.index);
        }
        let mut b = LinkVlan::new(name, parent, vid);
        if let Some(m) = mac.and_then(parse_mac) {
            b = b.address(m);
        }
        self.handle
            .link()
            .add(b.build())
            .execute()
            .await
            .map_err(nl(format!("creating VLAN {name} (id {vid})")))?;
        self.by_name(name)
            .await?
            .map(|l| l.index)
            .ok_or_else(|| NetError::Netlink(format!("VLAN {name} vanished after creation")))
    }

    /// Add (or replace) an address.
    pub async fn address(&self, index: u32, ip: IpAddr, prefix: u8) -> Result<(), NetError> {
        self.handle
            .address()
            .add(index, ip, prefix)
            .replace()
            .execute()
            .await
            .map_err(nl(format!("adding {ip}/{prefix} to link {index}")))
    }

    /// Every address message of one link.
    async fn address_messages(&self, index: u32) -> Result<Vec<AddressMessage>, NetError> {
        let mut s = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        let mut out = Vec::new();
        while let Some(a) = s
            .try_next()
            .await
            .map_err(nl(format!("listing addresses of link {index}")))?
        {
            out.push(a);
        }
        Ok(out)
    }

    /// Remove every address of one family from a link (a lease that ended or changed).
    pub async fn flush(&self, index: u32, v6: bool) -> Result<(), NetError> {
        let family = if v6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        self.delete_addresses(index, "an address", |a| a.header.family == family)
            .await
    }

    /// Remove one address from a link (a DHCPv6 lease that moved); absent is not an error.
    pub async fn remove_address(&self, index: u32, ip: IpAddr) -> Result<(), NetError> {
        self.delete_addresses(index, &ip.to_string(), |a| {
            a.attributes
                .iter()
                .any(|at| matches!(at, AddressAttribute::Address(x) if *x == ip))
        })
        .await
    }

    /// Delete the addresses of link `index` that `pick` chooses; `what` names them in errors.
    async fn delete_addresses(
        &self,
        index: u32,
        what: &str,
        pick: impl Fn(&AddressMessage) -> bool,
    ) -> Result<(), NetError> {
        for a in self.address_messages(index).await? {
            if !pick(&a) {
                continue;
            }
            self.handle
                .address()
                .del(a)
                .execute()
                .await
                .map_err(nl(format!("removing {what} from link {index}")))?;
        }
        Ok(())
    }

    /// Addresses of one link, with their prefix lengths.
    pub async fn addresses(&self, index: u32) -> Result<Vec<(IpAddr, u8)>, NetError> {
        let mut out = Vec::new();
        for a in self.address_messages(index).await? {
            for attr in &a.attributes {
                if let AddressAttribute::Address(ip) = attr {
                    out.push((*ip, a.header.prefix_len));
                }
            }
        }
        Ok(out)
    }

    /// Add (or replace) a route through `gateway` on link `index`.
    pub async fn route(
        &self,
        index: u32,
        dest: IpAddr,
        prefix: u8,
        gateway: IpAddr,
    ) -> Result<(), NetError> {
        let what = format!("route to {dest}/{prefix} via {gateway}");
        let msg = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(dest, prefix)
            .and_then(|b| b.gateway(gateway))
            .map_err(|e| NetError::Netlink(format!("{what}: {e}")))?
            .output_interface(index)
            .build();
        self.handle
            .route()
            .add(msg)
            .replace()
            .execute()
            .await
            .map_err(nl(what))
    }
}

/// Current links by MAC (the first link with that MAC: a bond copies its first member's, and
/// the member is listed first because its index is lower).
pub fn by_mac(links: &[KernelLink]) -> BTreeMap<String, KernelLink> {
    let mut sorted = links.to_vec();
    sorted.sort_by_key(|l| l.index);
    let mut out = BTreeMap::new();
    for l in sorted {
        if let Some(m) = &l.mac {
            out.entry(m.clone()).or_insert(l);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs() {
        assert_eq!(
            parse_mac("52:54:00:0a:0b:ff"),
            Some(vec![0x52, 0x54, 0, 0x0a, 0x0b, 0xff])
        );
        assert_eq!(parse_mac("52:54:00:0a:0b"), None);
        assert_eq!(parse_mac("52:54:00:0a:0b:zz"), None);
        let l = |i, n: &str, m: &str| KernelLink {
            index: i,
            name: n.into(),
            mac: Some(m.into()),
        };
        let m = by_mac(&[
            l(5, "bond0", "aa:00:00:00:00:01"),
            l(2, "eth0", "aa:00:00:00:00:01"),
        ]);
        assert_eq!(m["aa:00:00:00:00:01"].name, "eth0");
    }
}
