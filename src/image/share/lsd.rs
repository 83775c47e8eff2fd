//! Local Service Discovery (BEP 14): peers of the same torrent on the provisioning network find
//! each other by multicast announcements, with no tracker and nothing new in Ironic.
//!
//! IPv4 only for now (239.192.152.143:6771), TTL 1: the announcements stay on the node's own
//! network segment.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::net::UdpSocket;

pub const GROUP_V4: Ipv4Addr = Ipv4Addr::new(239, 192, 152, 143);
pub const PORT: u16 = 6771;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announce {
    pub port: u16,
    pub info_hashes: Vec<String>,
    pub cookie: Option<String>,
}

pub fn message(port: u16, info_hash_hex: &str, cookie: &str) -> String {
    format!(
        "BT-SEARCH * HTTP/1.1\r\nHost: {GROUP_V4}:{PORT}\r\nPort: {port}\r\nInfohash: {info_hash_hex}\r\ncookie: {cookie}\r\n\r\n\r\n"
    )
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

/// The IPv4 addresses of the interfaces that are up and can multicast (loopback excluded).
pub fn multicast_addrs() -> Vec<Ipv4Addr> {
    use nix::net::if_::InterfaceFlags as F;
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let mut out: Vec<Ipv4Addr> = addrs
        .filter(|a| {
            a.flags.contains(F::IFF_UP | F::IFF_MULTICAST) && !a.flags.contains(F::IFF_LOOPBACK)
        })
        .filter_map(|a| a.address?.as_sockaddr_in().map(|s| s.ip()))
        .collect();
    out.sort();
    out.dedup();
    out
}

pub struct Lsd {
    sock: UdpSocket,
    ifaces: Vec<Ipv4Addr>,
}

impl Lsd {
    /// Join the group on every multicast interface. Several agents in one network namespace
    /// (tests) share the port (SO_REUSEPORT: each gets every announcement).
    pub fn open() -> std::io::Result<Lsd> {
        let ifaces = multicast_addrs();
        if ifaces.is_empty() {
            return Err(std::io::Error::other("no interface that can multicast"));
        }
        let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        s.set_reuse_address(true)?;
        s.set_reuse_port(true)?;
        s.bind(&SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, PORT)).into())?;
        for a in &ifaces {
            s.join_multicast_v4(&GROUP_V4, a)?;
        }
        s.set_multicast_loop_v4(true)?;
        s.set_multicast_ttl_v4(1)?;
        s.set_nonblocking(true)?;
        let sock = UdpSocket::from_std(s.into())?;
        Ok(Lsd { sock, ifaces })
    }

    /// Announce on every interface (a send failing on one does not stop the others).
    pub async fn announce(&self, msg: &str) {
        for a in &self.ifaces {
            let r = SockRef::from(&self.sock).set_multicast_if_v4(a);
            if let Err(e) = r {
                tracing::debug!(iface = %a, error = %e, "LSD: cannot pick the interface");
                continue;
            }
            let to = SocketAddr::V4(SocketAddrV4::new(GROUP_V4, PORT));
            if let Err(e) = self.sock.send_to(msg.as_bytes(), to).await {
                tracing::debug!(iface = %a, error = %e, "LSD: announcement not sent");
            }
        }
    }

    pub async fn recv(&self) -> std::io::Result<(SocketAddr, Option<Announce>)> {
        let mut buf = [0u8; 1500];
        let (n, from) = self.sock.recv_from(&mut buf).await?;
        Ok((from, parse(&buf[..n])))
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
        let short = parse(b"BT-SEARCH * HTTP/1.1\r\nPort: 1\r\nInfohash: abc\r\n\r\n").unwrap();
        assert!(short.info_hashes.is_empty());
    }
}
