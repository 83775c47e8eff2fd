//! LLDP: hear what the switch says about the port each NIC is plugged into.
//!
//! Rivet reports what IPA reports, the raw TLVs of the first frame per interface as
//! `[type, "hex value"]` pairs (Ironic's `parse-lldp` and `local-link-connection` hooks decode
//! them), and decodes the common ones itself for its log: chassis and port id, system name,
//! VLANs, MTU, link aggregation. All interfaces listen at once and each stops at its first
//! frame, so a silent network costs at most one `ipa-lldp-timeout`, not one per NIC.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::system::packet::{self, PacketSocket};

pub const ETHERTYPE: u16 = 0x88cc;
/// Nearest bridge, nearest non-TPMR bridge and nearest customer bridge (IEEE 802.1AB).
pub const GROUPS: [[u8; 6]; 3] = [
    [0x01, 0x80, 0xc2, 0x00, 0x00, 0x0e],
    [0x01, 0x80, 0xc2, 0x00, 0x00, 0x03],
    [0x01, 0x80, 0xc2, 0x00, 0x00, 0x00],
];

pub const TLV_END: u8 = 0;
pub const TLV_CHASSIS_ID: u8 = 1;
pub const TLV_PORT_ID: u8 = 2;
pub const TLV_TTL: u8 = 3;
pub const TLV_PORT_DESCRIPTION: u8 = 4;
pub const TLV_SYSTEM_NAME: u8 = 5;
pub const TLV_ORG: u8 = 127;
const OUI_8021: [u8; 3] = [0x00, 0x80, 0xc2];
const OUI_8023: [u8; 3] = [0x00, 0x12, 0x0f];

/// One TLV as reported: type and lower-case hex of the value (IPA's `[type, hex]`).
pub type RawTlv = (u8, String);

/// The TLVs of an LLDP frame (Ethernet header included, an 802.1Q tag allowed), in order,
/// up to and including the End TLV. `None` when the frame is not LLDP or a TLV runs past the
/// end of the frame.
pub fn parse_frame(frame: &[u8]) -> Option<Vec<(u8, Vec<u8>)>> {
    let mut off = 12;
    let mut ethertype = u16::from_be_bytes([*frame.get(off)?, *frame.get(off + 1)?]);
    if ethertype == 0x8100 {
        off += 4;
        ethertype = u16::from_be_bytes([*frame.get(off)?, *frame.get(off + 1)?]);
    }
    if ethertype != ETHERTYPE {
        return None;
    }
    parse_tlvs(frame.get(off + 2..)?)
}

/// The TLV sequence of an LLDPDU (no Ethernet header).
pub fn parse_tlvs(mut buf: &[u8]) -> Option<Vec<(u8, Vec<u8>)>> {
    let mut out = Vec::new();
    while buf.len() >= 2 {
        let hdr = u16::from_be_bytes([buf[0], buf[1]]);
        let (typ, len) = ((hdr >> 9) as u8, usize::from(hdr & 0x1ff));
        let value = buf.get(2..2 + len)?;
        out.push((typ, value.to_vec()));
        buf = &buf[2 + len..];
        if typ == TLV_END {
            break;
        }
    }
    // A frame must start with chassis id, port id and TTL (802.1AB 8.2); anything else is
    // noise on the EtherType, not a neighbour.
    let starts_right = out.len() >= 3
        && out[0].0 == TLV_CHASSIS_ID
        && out[1].0 == TLV_PORT_ID
        && out[2].0 == TLV_TTL;
    starts_right.then_some(out)
}

pub fn to_raw(tlvs: &[(u8, Vec<u8>)]) -> Vec<RawTlv> {
    tlvs.iter().map(|(t, v)| (*t, hex::encode(v))).collect()
}

/// What an operator wants to know about the neighbour, decoded from the TLVs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Neighbor {
    pub chassis_id: Option<String>,
    pub port_id: Option<String>,
    pub port_description: Option<String>,
    pub system_name: Option<String>,
    pub port_vlan_id: Option<u16>,
    /// (VLAN id, name) from 802.1 VLAN Name TLVs.
    pub vlans: Vec<(u16, String)>,
    /// 802.3 maximum frame size.
    pub mtu: Option<u16>,
    /// Link aggregation: (enabled, aggregated port id), from the 802.3 or the older 802.1 TLV.
    pub aggregation: Option<(bool, u32)>,
}

fn text(v: &[u8]) -> String {
    String::from_utf8_lossy(v)
        .trim_end_matches('\0')
        .trim()
        .to_string()
}

fn mac(v: &[u8]) -> Option<String> {
    (v.len() == 6).then(|| {
        v.iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    })
}

/// Chassis and port ids: a subtype byte, then a MAC (subtype 4 chassis / 3 port), a network
/// address (5 / 4) or text.
fn id(v: &[u8], mac_subtype: u8, addr_subtype: u8) -> Option<String> {
    let (&sub, rest) = v.split_first()?;
    if sub == mac_subtype {
        return mac(rest);
    }
    if sub == addr_subtype {
        return match rest.split_first() {
            Some((1, a)) if a.len() == 4 => Some(format!("{}.{}.{}.{}", a[0], a[1], a[2], a[3])),
            Some((2, a)) if a.len() == 16 => {
                let b: [u8; 16] = a.try_into().ok()?;
                Some(std::net::Ipv6Addr::from(b).to_string())
            }
            _ => Some(hex::encode(rest)),
        };
    }
    Some(text(rest))
}

pub fn decode(tlvs: &[(u8, Vec<u8>)]) -> Neighbor {
    let mut n = Neighbor::default();
    for (typ, v) in tlvs {
        match *typ {
            TLV_CHASSIS_ID => n.chassis_id = id(v, 4, 5),
            TLV_PORT_ID => n.port_id = id(v, 3, 4),
            TLV_PORT_DESCRIPTION => n.port_description = Some(text(v)),
            TLV_SYSTEM_NAME => n.system_name = Some(text(v)),
            TLV_ORG if v.len() >= 4 => {
                let (oui, sub, body) = ([v[0], v[1], v[2]], v[3], &v[4..]);
                let u16_at =
                    |i: usize| Some(u16::from_be_bytes([*body.get(i)?, *body.get(i + 1)?]));
                let agg = || {
                    let status = *body.first()?;
                    let port = u32::from_be_bytes(body.get(1..5)?.try_into().ok()?);
                    Some((status & 0x02 != 0, port))
                };
                match (oui, sub) {
                    (OUI_8021, 1) => n.port_vlan_id = u16_at(0),
                    (OUI_8021, 3) => {
                        if let (Some(vid), Some(&len)) = (u16_at(0), body.get(2)) {
                            let name = body.get(3..3 + usize::from(len)).map(text);
                            n.vlans.push((vid, name.unwrap_or_default()));
                        }
                    }
                    (OUI_8021, 7) | (OUI_8023, 3) => n.aggregation = agg().or(n.aggregation),
                    (OUI_8023, 4) => n.mtu = u16_at(0),
                    _ => {}
                }
            }
            _ => {}
        }
    }
    n
}

/// Listen on `ifaces` for up to `timeout`, all at once; each interface stops at its first
/// LLDP frame. Every interface listened on is in the answer, with an empty list when no frame
/// came (as IPA reports it). Interfaces whose socket cannot be opened are left out, with the
/// reason in the second list.
pub fn capture(
    ifaces: &[String],
    timeout: Duration,
) -> (BTreeMap<String, Vec<RawTlv>>, Vec<String>) {
    let mut found = BTreeMap::new();
    let mut errors = Vec::new();
    let mut open: Vec<PacketSocket> = Vec::new();
    for name in ifaces {
        match PacketSocket::open(name, ETHERTYPE, &GROUPS) {
            Ok(s) => {
                found.insert(name.clone(), Vec::new());
                open.push(s);
            }
            Err(e) => errors.push(format!("LLDP on {name}: {e}")),
        }
    }
    if open.is_empty() {
        return (found, errors);
    }
    tracing::info!(interfaces = ?ifaces, ?timeout, "listening for LLDP");
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 9216];
    while !open.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let ready = match packet::wait_readable(&open.iter().collect::<Vec<_>>(), left) {
            Ok(r) => r,
            Err(e) => {
                errors.push(format!("LLDP: waiting for frames: {e}"));
                break;
            }
        };
        let mut done = Vec::new();
        for i in ready {
            let s = &open[i];
            loop {
                match s.recv_incoming(&mut buf) {
                    Ok(Some(n)) => {
                        if let Some(tlvs) = parse_frame(&buf[..n]) {
                            let nb = decode(&tlvs);
                            tracing::info!(interface = %s.ifname, switch = ?nb.system_name,
                                chassis = ?nb.chassis_id, port = ?nb.port_id, vlan = ?nb.port_vlan_id,
                                "LLDP neighbour");
                            found.insert(s.ifname.clone(), to_raw(&tlvs));
                            done.push(i);
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        errors.push(format!("LLDP on {}: {e}", s.ifname));
                        done.push(i);
                        break;
                    }
                }
            }
        }
        done.sort_unstable();
        for i in done.into_iter().rev() {
            open.remove(i);
        }
    }
    if !open.is_empty() {
        let silent: Vec<&str> = open.iter().map(|s| s.ifname.as_str()).collect();
        tracing::info!(interfaces = ?silent, ?timeout, "no LLDP frame");
    }
    (found, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame as a switch sends it.
    fn build_frame(src: [u8; 6], tlvs: &[(u8, Vec<u8>)]) -> Vec<u8> {
        let mut f = Vec::with_capacity(64);
        f.extend_from_slice(&GROUPS[0]);
        f.extend_from_slice(&src);
        f.extend_from_slice(&ETHERTYPE.to_be_bytes());
        for (t, v) in tlvs {
            let len = v.len().min(0x1ff) as u16;
            f.extend_from_slice(&((u16::from(*t) << 9) | len).to_be_bytes());
            f.extend_from_slice(&v[..usize::from(len)]);
        }
        f
    }

    fn fixture(text: &str) -> Vec<u8> {
        let hex: String = text.lines().filter(|l| !l.starts_with('#')).collect();
        hex::decode(hex.trim()).unwrap()
    }

    /// A real frame lldpd sent (see the fixture's header).
    fn captured() -> Vec<u8> {
        fixture(include_str!("../../tests/fixtures/lldpd-frame.hex"))
    }

    #[test]
    fn decodes_a_frame_lldpd_sent() {
        let tlvs = parse_frame(&captured()).unwrap();
        assert_eq!(
            tlvs.iter().map(|t| t.0).collect::<Vec<_>>(),
            vec![1, 2, 3, 5, 6, 7, 8, 4, 127, 127, 0]
        );
        let n = decode(&tlvs);
        assert_eq!(n.chassis_id.as_deref(), Some("fe:a3:ea:16:20:a4"));
        assert_eq!(n.port_id.as_deref(), Some("fe:a3:ea:16:20:a4"));
        assert_eq!(n.system_name.as_deref(), Some("vm"));
        assert_eq!(n.port_description.as_deref(), Some("lldpB"));
        assert_eq!(n.aggregation, Some((false, 0)));
        assert_eq!((n.port_vlan_id, n.mtu), (None, None));
        // Reported as IPA does: type and hex value, End TLV included.
        let raw = to_raw(&tlvs);
        assert_eq!(raw[0], (1, "04fea3ea1620a4".to_string()));
        assert_eq!(raw[3], (5, "766d".to_string()));
        assert_eq!(raw.last(), Some(&(0, String::new())));
    }

    #[test]
    fn decodes_vlans_mtu_and_aggregation() {
        let frame = fixture(include_str!("../../tests/fixtures/lldp-switch-frame.hex"));
        let n = decode(&parse_frame(&frame).unwrap());
        assert_eq!(n.chassis_id.as_deref(), Some("00:de:fb:5e:7a:80"));
        assert_eq!(n.port_id.as_deref(), Some("Ethernet1/7"));
        assert_eq!(n.port_description.as_deref(), Some("to node-7"));
        assert_eq!(n.system_name.as_deref(), Some("tor-sw-01"));
        assert_eq!(n.port_vlan_id, Some(100));
        assert_eq!(n.vlans, vec![(100, "prov".to_string())]);
        assert_eq!(n.mtu, Some(9216));
        assert_eq!(n.aggregation, Some((true, 1007)));
    }

    #[test]
    fn vlan_tagged_frames_and_address_ids() {
        let mut f = captured();
        // Insert an 802.1Q tag (VLAN 5) before the EtherType.
        f.splice(12..12, [0x81, 0x00, 0x00, 0x05]);
        assert!(parse_frame(&f).is_some());
        let tlvs = vec![
            (TLV_CHASSIS_ID, vec![5, 1, 192, 0, 2, 1]),
            (TLV_PORT_ID, vec![7, b'4', b'2']),
            (TLV_TTL, vec![0, 120]),
            (127, vec![0x00, 0x80, 0xc2, 7, 0x01, 0, 0, 0, 9]),
        ];
        let n = decode(&parse_frame(&build_frame([2, 0, 0, 0, 0, 1], &tlvs)).unwrap());
        assert_eq!(n.chassis_id.as_deref(), Some("192.0.2.1"));
        assert_eq!(n.port_id.as_deref(), Some("42"));
        // 802.1 aggregation TLV: capable but not enabled.
        assert_eq!(n.aggregation, Some((false, 9)));
    }

    #[test]
    fn malformed_frames_are_not_neighbours() {
        let good = captured();
        // Truncated in the middle of a TLV.
        assert!(parse_frame(&good[..30]).is_none());
        // Another EtherType.
        let mut ip = good.clone();
        ip[12] = 0x08;
        ip[13] = 0x00;
        assert!(parse_frame(&ip).is_none());
        // Too short for a header, empty, TLVs out of order.
        assert!(parse_frame(&good[..13]).is_none());
        assert!(parse_frame(&[]).is_none());
        let wrong_order = build_frame(
            [2; 6],
            &[
                (TLV_PORT_ID, vec![7, b'x']),
                (TLV_CHASSIS_ID, vec![7, b'y']),
            ],
        );
        assert!(parse_frame(&wrong_order).is_none());
        // Garbage in known TLVs decodes to nothing rather than panicking.
        let odd = vec![
            (TLV_CHASSIS_ID, vec![]),
            (TLV_PORT_ID, vec![3, 1, 2]),
            (TLV_TTL, vec![]),
            (127, vec![0x00, 0x80, 0xc2, 3, 0]),
            (127, vec![0x00, 0x12, 0x0f, 4]),
            (127, vec![0x00, 0x12]),
        ];
        let n = decode(&odd);
        assert_eq!(n.chassis_id, None);
        assert_eq!(n.port_id, None);
        assert!(n.vlans.is_empty() && n.mtu.is_none());
    }

    #[test]
    fn capture_on_a_missing_interface_reports_why() {
        let (found, errors) = capture(&["rivet-no-such0".into()], Duration::from_millis(10));
        assert!(found.is_empty());
        assert!(errors[0].contains("rivet-no-such0"), "{errors:?}");
    }
}
