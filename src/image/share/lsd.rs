//! Local Service Discovery (BEP 14): peers of the same torrent on the provisioning network find
//! each other by multicast announcements, with no tracker and nothing new in Ironic.
//!
//! Both groups of BEP 14, IPv4 (239.192.152.143:6771) and IPv6 (ff15::efc0:988f, port 6771:
//! IPv6-only provisioning networks), each on every interface that can multicast, with a hop
//! limit of 1: the announcements stay on the node's own network segment.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::net::UdpSocket;

pub const GROUP_V4: Ipv4Addr = Ipv4Addr::new(239, 192, 152, 143);
pub const GROUP_V6: Ipv6Addr = Ipv6Addr::new(0xff15, 0, 0, 0, 0, 0, 0xefc0, 0x988f);
pub const PORT: u16 = 6771;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announce {
    pub port: u16,
    pub info_hashes: Vec<String>,
    pub cookie: Option<String>,
}

pub fn message(port: u16, info_hash_hex: &str, cookie: &str) -> String {
    message_to(&format!("{GROUP_V4}:{PORT}"), port, info_hash_hex, cookie)
}

fn message_to(host: &str, port: u16, info_hash_hex: &str, cookie: &str) -> String {
    format!(
        "BT-SEARCH * HTTP/1.1\r\nHost: {host}\r\nPort: {port}\r\nInfohash: {info_hash_hex}\r\ncookie: {cookie}\r\n\r\n\r\n"
    )
}

/// Where the announcing peer listens: its source address (with its link's scope for an IPv6
/// link-local address) and the port it announced.
pub fn peer_addr(from: SocketAddr, port: u16) -> SocketAddr {
    match from {
        SocketAddr::V4(a) => SocketAddr::V4(SocketAddrV4::new(*a.ip(), port)),
        SocketAddr::V6(a) => SocketAddr::V6(SocketAddrV6::new(*a.ip(), port, 0, a.scope_id())),
    }
}

/// Parse an announcement; anything else on the group is ignored (None).
pub fn parse(datagram: &[u8]) -> Option<Announce> {
    let text = std::str::from_utf8(datagram).ok()?;
    let mut lines = text.lines();
    if lines.next()?.trim_end() != "BT-SEARCH * HTTP/1.1" {
        return None;
    }
    let mut port = None;
    let mut info_hashes = Vec::new();
    let mut cookie = None;
    for line in lines {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        match k.trim().to_ascii_lowercase().as_str() {
            "port" => port = v.parse::<u16>().ok().filter(|p| *p != 0),
            "infohash" if v.len() == 40 && v.bytes().all(|b| b.is_ascii_hexdigit()) => {
                info_hashes.push(v.to_ascii_lowercase())
            }
            "cookie" => cookie = Some(v.to_string()),
            _ => {}
        }
    }
    Some(Announce {
        port: port?,
        info_hashes,
        cookie,
    })
}

/// The interfaces that are up and can multicast (loopback excluded): their IPv4 addresses,
/// and the indexes of those with an IPv6 address.
pub fn multicast_interfaces() -> (Vec<Ipv4Addr>, Vec<u32>) {
    use nix::net::if_::InterfaceFlags as F;
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return (Vec::new(), Vec::new());
    };
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for a in addrs {
        if !a.flags.contains(F::IFF_UP | F::IFF_MULTICAST) || a.flags.contains(F::IFF_LOOPBACK) {
            continue;
        }
        let Some(addr) = a.address else { continue };
        if let Some(s) = addr.as_sockaddr_in() {
            v4.push(s.ip());
        } else if addr.as_sockaddr_in6().is_some() {
            if let Ok(i) = nix::net::if_::if_nametoindex(a.interface_name.as_str()) {
                v6.push(i);
            }
        }
    }
    v4.sort();
    v4.dedup();
    v6.sort();
    v6.dedup();
    (v4, v6)
}

pub struct Lsd {
    v4: Option<(UdpSocket, Vec<Ipv4Addr>)>,
    v6: Option<(UdpSocket, Vec<u32>)>,
}

fn open_v4(ifaces: &[Ipv4Addr]) -> std::io::Result<UdpSocket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.bind(&SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, PORT)).into())?;
    for a in ifaces {
        s.join_multicast_v4(&GROUP_V4, a)?;
    }
    s.set_multicast_loop_v4(true)?;
    s.set_multicast_ttl_v4(1)?;
    s.set_nonblocking(true)?;
    UdpSocket::from_std(s.into())
}

fn open_v6(ifaces: &[u32]) -> std::io::Result<UdpSocket> {
    let s = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_only_v6(true)?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.bind(&SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, PORT, 0, 0)).into())?;
    for i in ifaces {
        s.join_multicast_v6(&GROUP_V6, *i)?;
    }
    s.set_multicast_loop_v6(true)?;
    s.set_multicast_hops_v6(1)?;
    s.set_nonblocking(true)?;
    UdpSocket::from_std(s.into())
}

impl Lsd {
    /// Join the groups on every multicast interface. Several agents in one network namespace
    /// (tests) share the port (SO_REUSEPORT: each gets every announcement).
    pub fn open() -> std::io::Result<Lsd> {
        let (v4, v6) = multicast_interfaces();
        let mut why = String::from("no interface that can multicast");
        let v4 = match (!v4.is_empty()).then(|| open_v4(&v4)) {
            Some(Ok(s)) => Some((s, v4)),
            Some(Err(e)) => {
                why = format!("IPv4: {e}");
                None
            }
            None => None,
        };
        let v6 = match (!v6.is_empty()).then(|| open_v6(&v6)) {
            Some(Ok(s)) => Some((s, v6)),
            Some(Err(e)) => {
                why = format!("IPv6: {e}");
                None
            }
            None => None,
        };
        if v4.is_none() && v6.is_none() {
            return Err(std::io::Error::other(why));
        }
        Ok(Lsd { v4, v6 })
    }

    /// Announce on every interface (a send failing on one does not stop the others).
    pub async fn announce(&self, port: u16, info_hash_hex: &str, cookie: &str) {
        if let Some((sock, ifaces)) = &self.v4 {
            let msg = message(port, info_hash_hex, cookie);
            for a in ifaces {
                if let Err(e) = SockRef::from(sock).set_multicast_if_v4(a) {
                    tracing::debug!(iface = %a, error = %e, "LSD: cannot pick the interface");
                    continue;
                }
                let to = SocketAddr::V4(SocketAddrV4::new(GROUP_V4, PORT));
                if let Err(e) = sock.send_to(msg.as_bytes(), to).await {
                    tracing::debug!(iface = %a, error = %e, "LSD: announcement not sent");
                }
            }
        }
        if let Some((sock, ifaces)) = &self.v6 {
            let msg = message_to(&format!("[{GROUP_V6}]:{PORT}"), port, info_hash_hex, cookie);
            for i in ifaces {
                if let Err(e) = SockRef::from(sock).set_multicast_if_v6(*i) {
                    tracing::debug!(iface = i, error = %e, "LSD: cannot pick the interface");
                    continue;
                }
                let to = SocketAddr::V6(SocketAddrV6::new(GROUP_V6, PORT, 0, *i));
                if let Err(e) = sock.send_to(msg.as_bytes(), to).await {
                    tracing::debug!(iface = i, error = %e, "LSD: announcement not sent");
                }
            }
        }
    }

    /// The next datagram on either group, and the announcement in it if it is one.
    pub async fn recv(&self) -> std::io::Result<(SocketAddr, Option<Announce>)> {
        async fn one(s: Option<&UdpSocket>) -> std::io::Result<(SocketAddr, Option<Announce>)> {
            let Some(s) = s else {
                return std::future::pending().await;
            };
            let mut buf = [0u8; 1500];
            let (n, from) = s.recv_from(&mut buf).await?;
            Ok((from, parse(&buf[..n])))
        }
        tokio::select! {
            r = one(self.v4.as_ref().map(|(s, _)| s)) => r,
            r = one(self.v6.as_ref().map(|(s, _)| s)) => r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcements() {
        let ih = "0123456789abcdef0123456789ABCDEF01234567";
        let a = parse(message(6881, ih, "c1").as_bytes()).unwrap();
        assert_eq!(a.port, 6881);
        assert_eq!(a.info_hashes, vec![ih.to_ascii_lowercase()]);
        assert_eq!(a.cookie.as_deref(), Some("c1"));
        // Two info hashes, bare LF line ends, header case (what other clients send).
        let other = format!(
            "BT-SEARCH * HTTP/1.1\nHost: x\nport: 7000\nInfohash: {ih}\nINFOHASH: {}\n\n",
            "f".repeat(40)
        );
        assert_eq!(parse(other.as_bytes()).unwrap().info_hashes.len(), 2);
        for bad in [
            "HTTP/1.1 200 OK\r\n\r\n".to_string(),
            "BT-SEARCH * HTTP/1.1\r\nInfohash: x\r\n\r\n".to_string(),
            "BT-SEARCH * HTTP/1.1\r\nPort: 0\r\n\r\n".to_string(),
            "BT-SEARCH * HTTP/1.1\r\nPort: 99999\r\n\r\n".to_string(),
        ] {
            assert_eq!(parse(bad.as_bytes()), None, "{bad}");
        }
        assert_eq!(parse(&[0xff, 0xfe]), None);
        let v6 = message_to(&format!("[{GROUP_V6}]:{PORT}"), 7000, ih, "c");
        assert!(v6.contains("Host: [ff15::efc0:988f]:6771"));
        assert_eq!(parse(v6.as_bytes()).unwrap().port, 7000);
        let ll: SocketAddr = "[fe80::1%7]:6771".parse().unwrap();
        assert_eq!(peer_addr(ll, 6881).to_string(), "[fe80::1%7]:6881");
        let v4: SocketAddr = "10.0.0.5:6771".parse().unwrap();
        assert_eq!(peer_addr(v4, 6881).to_string(), "10.0.0.5:6881");
        let short = parse(b"BT-SEARCH * HTTP/1.1\r\nPort: 1\r\nInfohash: abc\r\n\r\n").unwrap();
        assert!(short.info_hashes.is_empty());
    }
}
