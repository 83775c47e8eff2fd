//! DHCPv6 (RFC 8415), the client side, for IPv6-only provisioning networks: one stateful
//! address (IA_NA) and the DNS servers on one NIC, kept for as long as the ramdisk runs
//! (renewed at T1, rebound at T2, asked for afresh when it expires). Routes come from the
//! router's advertisements, which the kernel follows.
//!
//! Neither ramdisk has a DHCPv6 client to reuse: Debian's busybox is built without
//! `udhcpc6`, and `dhcpcd` would bring a second network manager with its own idea of the NIC.
//! The packets are encoded and decoded by the `dhcproto` crate (a maintained DHCP library;
//! it shares hickory-proto with reqwest's resolver, so it adds little to the binary); the
//! exchange, its retransmissions and the netlink changes are here. `rivet network` starts one
//! `rivet network-dhcp6 IFACE` process per NIC, as it starts one udhcpc per NIC for IPv4.

use std::ffi::OsString;
use std::net::{IpAddr, Ipv6Addr, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use dhcproto::v6::{
    DhcpOption, DhcpOptions, IAAddr, Message, MessageType, OptionCode, Status, IANA, ORO,
};
use dhcproto::{Decodable, Encodable};
use tokio::net::UdpSocket;

use super::links::Netlink;
use super::NetError;

pub const CLIENT_PORT: u16 = 546;
pub const SERVER_PORT: u16 = 547;
/// All_DHCP_Relay_Agents_and_Servers.
pub const ALL_SERVERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 1, 2);
/// A lifetime of all ones is infinite.
const INFINITE: u32 = u32::MAX;

/// What a server gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease6 {
    pub addr: Ipv6Addr,
    pub preferred: u32,
    pub valid: u32,
    pub t1: u32,
    pub t2: u32,
    pub dns: Vec<Ipv6Addr>,
    pub server_id: Vec<u8>,
}

/// A server's answer to one of our messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// An Advertise: a server offers this lease (to be Requested).
    Offer(Lease6),
    /// A Reply holding an address: bound.
    Bound(Lease6),
    /// A server said no (its status and message).
    Refused(String),
}

/// DUID-LL (type 3, Ethernet) from the NIC's MAC: the same on every boot of the ramdisk,
/// so a server hands the same address again.
pub fn duid(mac: [u8; 6]) -> Vec<u8> {
    let mut d = vec![0, 3, 0, 1];
    d.extend_from_slice(&mac);
    d
}

/// The IA's identifier: the MAC's last four bytes (stable, and distinct between NICs).
pub fn iaid(mac: [u8; 6]) -> u32 {
    u32::from_be_bytes([mac[2], mac[3], mac[4], mac[5]])
}

/// One client message. `addr` and `server_id` are those of the lease being requested,
/// renewed or rebound; `elapsed` is the time since the exchange began.
pub fn build(
    kind: MessageType,
    xid: [u8; 3],
    duid: &[u8],
    iaid: u32,
    server_id: Option<&[u8]>,
    addr: Option<Ipv6Addr>,
    elapsed: Duration,
) -> Result<Vec<u8>, NetError> {
    let mut m = Message::new_with_id(kind, xid);
    let o = m.opts_mut();
    o.insert(DhcpOption::ClientId(duid.to_vec()));
    if let Some(s) = server_id {
        o.insert(DhcpOption::ServerId(s.to_vec()));
    }
    let mut ia = DhcpOptions::new();
    if let Some(a) = addr {
        ia.insert(DhcpOption::IAAddr(IAAddr {
            addr: a,
            preferred_life: 0,
            valid_life: 0,
            opts: DhcpOptions::new(),
        }));
    }
    o.insert(DhcpOption::IANA(IANA {
        id: iaid,
        t1: 0,
        t2: 0,
        opts: ia,
    }));
    o.insert(DhcpOption::ORO(ORO {
        opts: vec![OptionCode::DomainNameServers],
    }));
    // Hundredths of a second, saturated at the field's maximum (RFC 8415 21.9).
    let cs = u16::try_from(elapsed.as_millis() / 10).unwrap_or(u16::MAX);
    o.insert(DhcpOption::ElapsedTime(cs));
    if kind == MessageType::Solicit {
        // A server that may commit at once answers the Solicit with its Reply.
        o.insert(DhcpOption::RapidCommit);
    }
    m.to_vec()
        .map_err(|e| NetError::Setup(format!("encoding a DHCPv6 {kind:?}: {e}")))
}

fn status_text(s: &dhcproto::v6::StatusCode) -> String {
    if s.msg.is_empty() {
        format!("{:?}", s.status)
    } else {
        // A server's words, on our console: printable and short.
        let msg: String = s
            .msg
            .chars()
            .filter(|c| !c.is_control())
            .take(200)
            .collect();
        format!("{:?}: {msg}", s.status)
    }
}

/// A usable address for a node: not multicast, loopback, unspecified or link-local.
fn usable(a: &Ipv6Addr) -> bool {
    !(a.is_multicast()
        || a.is_loopback()
        || a.is_unspecified()
        || (a.segments()[0] & 0xffc0) == 0xfe80)
}

/// Read a server's datagram. `None`: not an answer to this exchange (another transaction,
/// another client, a message a client never takes, or bytes that do not decode).
pub fn parse(buf: &[u8], xid: [u8; 3], duid: &[u8], iaid: u32) -> Option<Answer> {
    let m = Message::from_bytes(buf).ok()?;
    if m.xid() != xid {
        return None;
    }
    let kind = m.msg_type();
    if !matches!(kind, MessageType::Advertise | MessageType::Reply) {
        return None;
    }
    let o = m.opts();
    match o.get(OptionCode::ClientId) {
        Some(DhcpOption::ClientId(c)) if c.as_slice() == duid => {}
        _ => return None,
    }
    let server_id = match o.get(OptionCode::ServerId) {
        Some(DhcpOption::ServerId(s)) if !s.is_empty() => s.clone(),
        _ => return None,
    };
    if let Some(DhcpOption::StatusCode(s)) = o.get(OptionCode::StatusCode) {
        if s.status != Status::Success {
            return Some(Answer::Refused(status_text(s)));
        }
    }
    let ia = o
        .get_all(OptionCode::IANA)
        .into_iter()
        .flatten()
        .find_map(|x| match x {
            DhcpOption::IANA(ia) if ia.id == iaid => Some(ia),
            _ => None,
        });
    let Some(ia) = ia else {
        return Some(Answer::Refused("the answer holds no address for us".into()));
    };
    if let Some(DhcpOption::StatusCode(s)) = ia.opts.get(OptionCode::StatusCode) {
        if s.status != Status::Success {
            return Some(Answer::Refused(status_text(s)));
        }
    }
    let addr = ia
        .opts
        .get_all(OptionCode::IAAddr)
        .into_iter()
        .flatten()
        .find_map(|x| match x {
            DhcpOption::IAAddr(a)
                if a.valid_life > 0 && a.preferred_life <= a.valid_life && usable(&a.addr) =>
            {
                Some(a)
            }
            _ => None,
        });
    let Some(a) = addr else {
        return Some(Answer::Refused("the answer holds no usable address".into()));
    };
    let dns = match o.get(OptionCode::DomainNameServers) {
        Some(DhcpOption::DomainNameServers(d)) => d
            .iter()
            .copied()
            .filter(|d| !d.is_multicast() && !d.is_unspecified())
            .take(3)
            .collect(),
        _ => Vec::new(),
    };
    let lease = Lease6 {
        addr: a.addr,
        preferred: a.preferred_life,
        valid: a.valid_life,
        t1: ia.t1,
        t2: ia.t2,
        dns,
        server_id,
    };
    Some(match kind {
        MessageType::Advertise => Answer::Offer(lease),
        _ => Answer::Bound(lease),
    })
}

/// When to renew (T1) and rebind (T2), from the lease's start; `None` for a lease that
/// never ends. T1/T2 of zero leave the choice to the client: half and four fifths of the
/// preferred lifetime (RFC 8415 21.4). At least 10 s apart, so a server that hands out
/// tiny lifetimes is not asked in a loop.
pub fn timers(l: &Lease6) -> Option<(Duration, Duration, Duration)> {
    if l.valid == INFINITE {
        return None;
    }
    let base = u64::from(if l.preferred == 0 || l.preferred == INFINITE {
        l.valid
    } else {
        l.preferred
    });
    let t1 = match l.t1 {
        0 | INFINITE => base / 2,
        t => u64::from(t),
    };
    let t2 = match l.t2 {
        0 | INFINITE => base * 4 / 5,
        t => u64::from(t),
    };
    let valid = u64::from(l.valid).max(30);
    let t1 = t1.clamp(10, valid);
    let t2 = t2.clamp(t1, valid);
    Some((
        Duration::from_secs(t1),
        Duration::from_secs(t2),
        Duration::from_secs(valid),
    ))
}

/// A resolv.conf with `add`'s servers after those already there (DHCPv4's, say); `None`
/// when nothing changes or the file is network_data's (a static configuration wins).
pub fn resolv_with(existing: &str, add: &[Ipv6Addr]) -> Option<String> {
    if existing.starts_with("# written by rivet from network_data.json") {
        return None;
    }
    let have: Vec<IpAddr> = existing
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    let new: Vec<&Ipv6Addr> = add
        .iter()
        .filter(|a| !have.contains(&IpAddr::V6(**a)))
        .collect();
    if new.is_empty() {
        return None;
    }
    let mut out = existing.to_string();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    for a in new {
        out.push_str(&format!("nameserver {a}\n"));
    }
    Some(out)
}

/// The client's socket: port 546 on `iface` only (one client per NIC, each its own
/// process: bound to different devices, they do not conflict).
fn socket(iface: &str) -> Result<UdpSocket, NetError> {
    use nix::sys::socket::{
        bind, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn6,
    };
    let err =
        |what: &str, e: nix::Error| NetError::Setup(format!("DHCPv6 on {iface}: {what}: {e}"));
    let fd = socket(
        AddressFamily::Inet6,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(|e| err("socket", e))?;
    setsockopt(&fd, sockopt::BindToDevice, &OsString::from(iface))
        .map_err(|e| err("binding to the device", e))?;
    setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(|e| err("SO_REUSEADDR", e))?;
    bind(
        fd.as_raw_fd(),
        &SockaddrIn6::from(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, CLIENT_PORT, 0, 0)),
    )
    .map_err(|e| err("binding port 546", e))?;
    let std_sock = std::net::UdpSocket::from(fd);
    UdpSocket::from_std(std_sock).map_err(|e| NetError::Setup(format!("DHCPv6 on {iface}: {e}")))
}

/// How one exchange retransmits (RFC 8415 15): first wait, longest wait, and an end (a
/// number of tries, or a moment), with ±10 % jitter.
struct Retrans {
    irt: Duration,
    mrt: Duration,
    tries: Option<u32>,
    until: Option<Instant>,
}

struct Client {
    iface: String,
    index: u32,
    duid: Vec<u8>,
    iaid: u32,
    sock: UdpSocket,
    dest: SocketAddrV6,
    refusals: Vec<String>,
}

impl Client {
    /// Send `kind` until an Offer or a Bound answer comes, or the retransmissions end.
    async fn ask(
        &mut self,
        kind: MessageType,
        lease: Option<&Lease6>,
        with_server: bool,
        r: Retrans,
    ) -> Result<Option<Answer>, NetError> {
        use rand::Rng;
        let xid: [u8; 3] = rand::thread_rng().gen();
        let start = Instant::now();
        let mut rt = r.irt;
        let mut n = 0u32;
        let mut buf = vec![0u8; 1500];
        loop {
            if r.tries.is_some_and(|t| n >= t) || r.until.is_some_and(|u| Instant::now() >= u) {
                return Ok(None);
            }
            n += 1;
            let msg = build(
                kind,
                xid,
                &self.duid,
                self.iaid,
                lease
                    .filter(|_| with_server)
                    .map(|l| l.server_id.as_slice()),
                lease.map(|l| l.addr),
                start.elapsed(),
            )?;
            // Until duplicate address detection ends the NIC has no source address to send
            // from: the next retransmission tries again.
            if let Err(e) = self.sock.send_to(&msg, self.dest).await {
                tracing::debug!(interface = %self.iface, "DHCPv6 {kind:?} not sent: {e}");
            }
            let jitter: f64 = rand::thread_rng().gen_range(0.9..1.1);
            let mut wait = rt.mul_f64(jitter);
            if let Some(u) = r.until {
                wait = wait.min(u.saturating_duration_since(Instant::now()));
            }
            let deadline = tokio::time::Instant::now() + wait;
            loop {
                let got = tokio::time::timeout_at(deadline, self.sock.recv_from(&mut buf)).await;
                let Ok(got) = got else { break };
                let (len, _) = got.map_err(|e| {
                    NetError::Setup(format!("DHCPv6 on {}: receiving: {e}", self.iface))
                })?;
                match buf
                    .get(..len)
                    .and_then(|b| parse(b, xid, &self.duid, self.iaid))
                {
                    Some(Answer::Refused(why)) if !self.refusals.contains(&why) => {
                        tracing::warn!(interface = %self.iface, "DHCPv6 {kind:?}: a server refused: {why}");
                        self.refusals.push(why);
                    }
                    Some(Answer::Refused(_)) | None => {}
                    Some(a) => return Ok(Some(a)),
                }
            }
            rt = (rt * 2).min(r.mrt);
        }
    }

    async fn apply(
        &self,
        nl: &Netlink,
        old: Option<&Lease6>,
        new: &Lease6,
        resolv: Option<&Path>,
    ) -> Result<(), NetError> {
        if let Some(o) = old.filter(|o| o.addr != new.addr) {
            nl.remove_address(self.index, IpAddr::V6(o.addr)).await?;
        }
        nl.address(self.index, IpAddr::V6(new.addr), 128).await?;
        if let Some(p) = resolv {
            let existing = std::fs::read_to_string(p).unwrap_or_default();
            if let Some(text) = resolv_with(&existing, &new.dns) {
                std::fs::write(p, text)
                    .map_err(|e| NetError::Lease(format!("writing {}: {e}", p.display())))?;
            }
        }
        Ok(())
    }
}

fn mac_bytes(mac: &str) -> Option<[u8; 6]> {
    let v: Vec<u8> = mac
        .split(':')
        .map(|p| u8::from_str_radix(p, 16))
        .collect::<Result<_, _>>()
        .ok()?;
    v.try_into().ok()
}

/// Run the client on `iface` for as long as the process lives; returns only when it cannot
/// run at all (no such NIC, no socket).
pub async fn run(iface: &str, resolv: Option<&Path>) -> Result<(), NetError> {
    let nl = Netlink::open()?;
    let link = nl
        .by_name(iface)
        .await?
        .ok_or_else(|| NetError::Setup(format!("DHCPv6: no interface {iface}")))?;
    let mac = link
        .mac
        .as_deref()
        .and_then(mac_bytes)
        .ok_or_else(|| NetError::Setup(format!("DHCPv6: {iface} has no MAC address")))?;
    let mut c = Client {
        iface: iface.to_string(),
        index: link.index,
        duid: duid(mac),
        iaid: iaid(mac),
        sock: socket(iface)?,
        dest: SocketAddrV6::new(ALL_SERVERS, SERVER_PORT, 0, link.index),
        refusals: Vec::new(),
    };
    let mut current: Option<Lease6> = None;
    let mut first = true;
    loop {
        // Solicit until a server answers (every 1, 2, 4 … 60 s: a network may come late, and
        // a NIC on an IPv4-only network sends a few small packets a minute).
        let solicit = Retrans {
            irt: Duration::from_secs(1),
            mrt: Duration::from_secs(60),
            tries: None,
            until: None,
        };
        let offered = match c.ask(MessageType::Solicit, None, false, solicit).await? {
            Some(Answer::Bound(l)) => Some(l),
            Some(Answer::Offer(o)) => {
                let req = Retrans {
                    irt: Duration::from_secs(1),
                    mrt: Duration::from_secs(30),
                    tries: Some(10),
                    until: None,
                };
                match c.ask(MessageType::Request, Some(&o), true, req).await? {
                    Some(Answer::Bound(l)) => Some(l),
                    _ => None,
                }
            }
            _ => None,
        };
        let Some(mut lease) = offered else { continue };
        loop {
            c.apply(&nl, current.as_ref(), &lease, resolv).await?;
            let t = timers(&lease);
            tracing::info!(
                interface = %c.iface,
                "DHCPv6: {}/128 on {}{}{}",
                lease.addr,
                c.iface,
                if lease.dns.is_empty() {
                    String::new()
                } else {
                    format!(", DNS {}", lease.dns.iter().map(ToString::to_string).collect::<Vec<_>>().join(" "))
                },
                t.map(|(t1, _, _)| format!(", renewed in {} s", t1.as_secs())).unwrap_or_default()
            );
            if first {
                crate::timeline::mark("address");
                first = false;
            }
            current = Some(lease.clone());
            let Some((t1, t2, valid)) = t else {
                // Never ends: nothing more to do but keep the process (and the address).
                std::future::pending::<()>().await;
                return Ok(());
            };
            let bound_at = Instant::now();
            tokio::time::sleep(t1).await;
            let renew = Retrans {
                irt: Duration::from_secs(10),
                mrt: Duration::from_secs(600),
                tries: None,
                until: Some(bound_at + t2),
            };
            if let Some(Answer::Bound(l)) =
                c.ask(MessageType::Renew, Some(&lease), true, renew).await?
            {
                lease = l;
                continue;
            }
            let rebind = Retrans {
                irt: Duration::from_secs(10),
                mrt: Duration::from_secs(600),
                tries: None,
                until: Some(bound_at + valid),
            };
            if let Some(Answer::Bound(l)) = c
                .ask(MessageType::Rebind, Some(&lease), false, rebind)
                .await?
            {
                lease = l;
                continue;
            }
            tracing::warn!(interface = %c.iface, "DHCPv6: the lease of {} ended unrenewed; asking again", lease.addr);
            nl.remove_address(c.index, IpAddr::V6(lease.addr)).await?;
            current = None;
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x15, 0x00, 0x07];

    /// A server's answer, as dnsmasq would build it.
    fn answer(
        kind: MessageType,
        xid: [u8; 3],
        client: &[u8],
        ia: Option<IANA>,
        extra: Vec<DhcpOption>,
    ) -> Vec<u8> {
        let mut m = Message::new_with_id(kind, xid);
        let o = m.opts_mut();
        o.insert(DhcpOption::ClientId(client.to_vec()));
        o.insert(DhcpOption::ServerId(vec![0, 1, 0, 1, 9, 9, 9, 9]));
        if let Some(ia) = ia {
            o.insert(DhcpOption::IANA(ia));
        }
        for x in extra {
            o.insert(x);
        }
        m.to_vec().unwrap()
    }

    fn ia(addr: &str, pref: u32, valid: u32) -> IANA {
        let mut opts = DhcpOptions::new();
        opts.insert(DhcpOption::IAAddr(IAAddr {
            addr: addr.parse().unwrap(),
            preferred_life: pref,
            valid_life: valid,
            opts: DhcpOptions::new(),
        }));
        IANA {
            id: iaid(MAC),
            t1: 1800,
            t2: 2880,
            opts,
        }
    }

    #[test]
    fn solicit_carries_our_identity_and_asks_for_an_address_and_dns() {
        let d = duid(MAC);
        assert_eq!(d, vec![0, 3, 0, 1, 0x52, 0x54, 0, 0x15, 0, 7]);
        let b = build(
            MessageType::Solicit,
            [1, 2, 3],
            &d,
            iaid(MAC),
            None,
            None,
            Duration::from_millis(1500),
        )
        .unwrap();
        let m = Message::from_bytes(&b).unwrap();
        assert_eq!(m.msg_type(), MessageType::Solicit);
        assert_eq!(m.xid(), [1, 2, 3]);
        assert_eq!(
            m.opts().get(OptionCode::ClientId),
            Some(&DhcpOption::ClientId(d))
        );
        assert!(m.opts().get(OptionCode::RapidCommit).is_some());
        assert_eq!(
            m.opts().get(OptionCode::ElapsedTime),
            Some(&DhcpOption::ElapsedTime(150))
        );
        assert!(
            matches!(m.opts().get(OptionCode::IANA), Some(DhcpOption::IANA(ia)) if ia.id == 0x0015_0007)
        );
        let Some(DhcpOption::ORO(oro)) = m.opts().get(OptionCode::ORO) else {
            panic!("no ORO")
        };
        assert_eq!(oro.opts, vec![OptionCode::DomainNameServers]);
        // A Request names the server and the address offered; no rapid commit.
        let b = build(
            MessageType::Request,
            [1, 2, 3],
            &duid(MAC),
            7,
            Some(&[9, 9]),
            Some("fd00::5".parse().unwrap()),
            Duration::from_secs(999),
        )
        .unwrap();
        let m = Message::from_bytes(&b).unwrap();
        assert_eq!(
            m.opts().get(OptionCode::ServerId),
            Some(&DhcpOption::ServerId(vec![9, 9]))
        );
        assert!(m.opts().get(OptionCode::RapidCommit).is_none());
        assert_eq!(
            m.opts().get(OptionCode::ElapsedTime),
            Some(&DhcpOption::ElapsedTime(65535))
        );
    }

    #[test]
    fn answers_for_us_are_read_the_rest_ignored() {
        let d = duid(MAC);
        let x = [7, 7, 7];
        let dns = DhcpOption::DomainNameServers(vec![
            "fd00:151::1".parse().unwrap(),
            "ff02::1".parse().unwrap(),
        ]);
        let b = answer(
            MessageType::Advertise,
            x,
            &d,
            Some(ia("fd00:151::123", 3600, 7200)),
            vec![dns.clone()],
        );
        let Some(Answer::Offer(l)) = parse(&b, x, &d, iaid(MAC)) else {
            panic!("no offer")
        };
        assert_eq!(l.addr, "fd00:151::123".parse::<Ipv6Addr>().unwrap());
        assert_eq!(l.dns, vec!["fd00:151::1".parse::<Ipv6Addr>().unwrap()]);
        assert_eq!((l.t1, l.t2, l.preferred, l.valid), (1800, 2880, 3600, 7200));
        let b = answer(
            MessageType::Reply,
            x,
            &d,
            Some(ia("fd00:151::123", 3600, 7200)),
            vec![],
        );
        assert!(matches!(
            parse(&b, x, &d, iaid(MAC)),
            Some(Answer::Bound(_))
        ));
        // Another transaction, another client, a client's message, garbage: not ours.
        assert_eq!(parse(&b, [0, 0, 1], &d, iaid(MAC)), None);
        assert_eq!(parse(&b, x, &duid([1; 6]), iaid(MAC)), None);
        let s = build(
            MessageType::Solicit,
            x,
            &d,
            iaid(MAC),
            None,
            None,
            Duration::ZERO,
        )
        .unwrap();
        assert_eq!(parse(&s, x, &d, iaid(MAC)), None);
        for n in 0..b.len() {
            let _ = parse(&b[..n], x, &d, iaid(MAC));
        }
        assert_eq!(parse(&[0xff; 3], x, &d, iaid(MAC)), None);
        // A refusal, an answer without an address, an address a node cannot use.
        let no = answer(
            MessageType::Advertise,
            x,
            &d,
            None,
            vec![DhcpOption::StatusCode(dhcproto::v6::StatusCode {
                status: Status::NoAddrsAvail,
                msg: "pool\x1b[2J empty".into(),
            })],
        );
        assert_eq!(
            parse(&no, x, &d, iaid(MAC)),
            Some(Answer::Refused("NoAddrsAvail: pool[2J empty".into()))
        );
        let none = answer(MessageType::Reply, x, &d, None, vec![]);
        assert!(matches!(
            parse(&none, x, &d, iaid(MAC)),
            Some(Answer::Refused(_))
        ));
        for bad in ["ff02::1", "::", "::1", "fe80::1"] {
            let b = answer(MessageType::Reply, x, &d, Some(ia(bad, 10, 20)), vec![]);
            assert!(
                matches!(parse(&b, x, &d, iaid(MAC)), Some(Answer::Refused(_))),
                "{bad}"
            );
        }
        // Preferred longer than valid, or a zero valid lifetime: refused too.
        for (p, v) in [(30, 20), (0, 0)] {
            let b = answer(MessageType::Reply, x, &d, Some(ia("fd00::9", p, v)), vec![]);
            assert!(
                matches!(parse(&b, x, &d, iaid(MAC)), Some(Answer::Refused(_))),
                "{p} {v}"
            );
        }
    }

    #[test]
    fn renewal_timers() {
        let l = |p, v, t1, t2| Lease6 {
            addr: Ipv6Addr::LOCALHOST,
            preferred: p,
            valid: v,
            t1,
            t2,
            dns: vec![],
            server_id: vec![],
        };
        let s = Duration::from_secs;
        assert_eq!(
            timers(&l(3600, 7200, 1800, 2880)),
            Some((s(1800), s(2880), s(7200)))
        );
        assert_eq!(
            timers(&l(3600, 7200, 0, 0)),
            Some((s(1800), s(2880), s(7200)))
        );
        assert_eq!(timers(&l(INFINITE, INFINITE, 0, 0)), None);
        // Absurd numbers from a server: bounded, in order.
        assert_eq!(timers(&l(1, 1, 0, 0)), Some((s(10), s(10), s(30))));
        assert_eq!(
            timers(&l(100, 200, 9000, 5)),
            Some((s(200), s(200), s(200)))
        );
    }

    #[test]
    fn name_servers_are_added_not_replaced() {
        let add: Vec<Ipv6Addr> = vec!["fd00::1".parse().unwrap()];
        assert_eq!(
            resolv_with("nameserver 10.0.0.1\n", &add).as_deref(),
            Some("nameserver 10.0.0.1\nnameserver fd00::1\n")
        );
        assert_eq!(
            resolv_with("", &add).as_deref(),
            Some("nameserver fd00::1\n")
        );
        assert_eq!(resolv_with("nameserver fd00::1\n", &add), None);
        assert_eq!(
            resolv_with(
                "# written by rivet from network_data.json\nnameserver 10.0.0.9\n",
                &add
            ),
            None
        );
        assert_eq!(resolv_with("nameserver 10.0.0.1\n", &[]), None);
    }
}
