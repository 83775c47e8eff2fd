//! The one ethtool ioctl the agent needs: a NIC's permanent MAC.
#![allow(unsafe_code)]

/// `SIOCETHTOOL` and `ETHTOOL_GPERMADDR` from linux/sockios.h and linux/ethtool.h.
const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GPERMADDR: u32 = 0x20;

/// The permanent (burnt-in) MAC of `iface` as the driver reports it (`ethtool -P`), or None
/// when the driver does not know it (veth, some virtual NICs) or it is all zeros.
pub fn permanent_mac(iface: &str) -> Option<String> {
    #[repr(C)]
    struct PermAddr {
        cmd: u32,
        size: u32,
        data: [u8; 32],
    }
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        data: *mut PermAddr,
        _pad: [u8; 16],
    }
    if iface.is_empty() || iface.len() >= libc::IFNAMSIZ {
        return None;
    }
    let mut addr = PermAddr {
        cmd: ETHTOOL_GPERMADDR,
        size: 32,
        data: [0; 32],
    };
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        data: &mut addr,
        _pad: [0; 16],
    };
    req.name[..iface.len()].copy_from_slice(iface.as_bytes());
    // SAFETY: a datagram socket only for the ioctl, closed below; `req` and `addr` outlive the
    // call and have the layout the kernel expects (struct ifreq with ifr_data, struct
    // ethtool_perm_addr with room for `size` bytes).
    let ok = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return None;
        }
        let r = libc::ioctl(fd, SIOCETHTOOL as _, &mut req as *mut IfReq);
        libc::close(fd);
        r == 0
    };
    let len = (addr.size as usize).min(addr.data.len());
    let bytes = &addr.data[..len];
    (ok && len == 6 && bytes.iter().any(|b| *b != 0)).then(|| {
        bytes
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    })
}
