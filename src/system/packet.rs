//! Raw link-layer sockets (AF_PACKET) bound to one interface and one EtherType: what LLDP
//! needs to hear the switch's frames. The multicast membership is taken per socket
//! (PACKET_ADD_MEMBERSHIP), so the kernel drops it when the socket closes; unlike IPA's
//! promiscuous mode, a crash cannot leave the NIC in a changed state.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// A non-blocking raw socket on one interface.
pub struct PacketSocket {
    fd: OwnedFd,
    pub ifname: String,
}

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn ifindex(ifname: &str) -> io::Result<libc::c_int> {
    let idx = nix::net::if_::if_nametoindex(ifname).map_err(io::Error::from)?;
    libc::c_int::try_from(idx).map_err(|_| io::Error::other("interface index out of range"))
}

impl PacketSocket {
    /// Open a socket receiving (and sending) frames of `ethertype` on `ifname`, joined to the
    /// link-layer multicast `groups`.
    pub fn open(ifname: &str, ethertype: u16, groups: &[[u8; 6]]) -> io::Result<PacketSocket> {
        let index = ifindex(ifname)?;
        let proto = ethertype.to_be();
        // SAFETY: plain socket(2) call; the returned descriptor is owned below.
        let raw = check(unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                libc::c_int::from(proto),
            )
        })?;
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid value to fill in.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = index;
        // SAFETY: the pointer and length describe `sll`, which outlives the call.
        check(unsafe {
            libc::bind(
                fd.as_raw_fd(),
                std::ptr::addr_of!(sll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        })?;
        for addr in groups {
            // SAFETY: packet_mreq is plain data.
            let mut mr: libc::packet_mreq = unsafe { std::mem::zeroed() };
            mr.mr_ifindex = index;
            mr.mr_type = libc::PACKET_MR_MULTICAST as u16;
            mr.mr_alen = 6;
            mr.mr_address[..6].copy_from_slice(addr);
            // SAFETY: the pointer and length describe `mr`, which outlives the call.
            check(unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_PACKET,
                    libc::PACKET_ADD_MEMBERSHIP,
                    std::ptr::addr_of!(mr).cast(),
                    std::mem::size_of::<libc::packet_mreq>() as libc::socklen_t,
                )
            })?;
        }
        Ok(PacketSocket {
            fd,
            ifname: ifname.to_string(),
        })
    }

    /// The next frame that arrived from the wire (frames this host sent are skipped), or
    /// `None` when nothing is queued.
    pub fn recv_incoming(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        loop {
            // SAFETY: plain data, filled in by the kernel.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: `buf` and `from` are valid for the lengths given.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_TRUNC,
                    std::ptr::addr_of_mut!(from).cast(),
                    &mut len,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                return match e.kind() {
                    io::ErrorKind::WouldBlock => Ok(None),
                    io::ErrorKind::Interrupted => continue,
                    _ => Err(e),
                };
            }
            if from.sll_pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            // With MSG_TRUNC the kernel reports the frame's real length; keep what fit.
            return Ok(Some((n as usize).min(buf.len())));
        }
    }

    /// Send one whole frame (Ethernet header included).
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: `frame` is valid for its length.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Wait until any of `socks` has a frame queued, at most `timeout`. Returns the indexes of
/// the readable ones (empty on timeout).
pub fn wait_readable(socks: &[&PacketSocket], timeout: Duration) -> io::Result<Vec<usize>> {
    let mut fds: Vec<libc::pollfd> = socks
        .iter()
        .map(|s| libc::pollfd {
            fd: s.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: `fds` is a valid array of the length given.
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(Vec::new());
        }
        return Err(e);
    }
    Ok(fds
        .iter()
        .enumerate()
        .filter(|(_, p)| p.revents & (libc::POLLIN | libc::POLLERR) != 0)
        .map(|(i, _)| i)
        .collect())
}
