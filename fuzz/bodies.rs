//! The bodies of the fuzz targets, shared by cargo-fuzz (fuzz_targets/*.rs, libFuzzer with
//! coverage) and the test command's bounded smoke run (tests/fuzz_smoke.rs, stable Rust):
//! each takes any bytes and must return without panicking; the asserts are invariants.
#![allow(dead_code)]

use rivet::conductor::client::ApiVersion;
use rivet::conductor::lookup;
use rivet::config::{cmdline, AgentArgs, Config};
use rivet::deploy::inject_files;
use rivet::deploy::partition_image;
use rivet::disk::partitions::{self, Label};
use rivet::hardware::hints;
use rivet::image::info::ImageInfo;
use rivet::image::qcow2::{self, decompress, ClusterCompression, MapBuilder};
use rivet::image::verify::{parse_checksum_file, Expected};
use rivet::image::write::{Sink, WriteError};
use serde_json::Value;

struct Bounded {
    size: u64,
}

impl Sink for Bounded {
    fn write_at(&mut self, off: u64, data: &[u8]) -> Result<(), WriteError> {
        assert!(
            off.checked_add(data.len() as u64)
                .is_some_and(|e| e <= self.size),
            "write past the virtual size"
        );
        Ok(())
    }
    fn zero(&mut self, off: u64, len: u64) -> Result<(), WriteError> {
        assert!(
            off.checked_add(len).is_some_and(|e| e <= self.size),
            "zeroing past the virtual size"
        );
        Ok(())
    }
}

fn slice(data: &[u8], off: u64, len: u64) -> &[u8] {
    let s = (off as usize).min(data.len());
    let e = (off.saturating_add(len) as usize).min(data.len());
    &data[s..e]
}

/// The whole qcow2 path on one in-memory file: header, L1 and L2 tables, then the write pass
/// that checks the metadata against the stream and scatters clusters. Invariant: nothing is
/// ever written outside the virtual disk, and errors are errors, never panics.
pub fn qcow2(data: &[u8]) {
    let Ok(h) = qcow2::parse_header(data, Some(data.len() as u64)) else {
        return;
    };
    let size = h.virtual_size;
    let cs = h.cluster_size();
    let mut b = MapBuilder::new(h, data);
    let (l1_off, l1_len) = b.l1_region();
    let Ok(l2s) = b.add_l1(slice(data, l1_off, l1_len)) else {
        return;
    };
    for (host, index) in l2s {
        if b.add_l2(host, index, slice(data, host, cs)).is_err() {
            return;
        }
    }
    let Ok(map) = b.finish() else {
        return;
    };
    let mut sink = Bounded { size };
    let _ = qcow2::write_pass(&map, data, &mut sink, &|_| {});
}

/// The compressed-cluster decoder: any input, deflate or zstd, into one cluster.
pub fn qcow2_cluster(data: &[u8]) {
    let Some((&sel, input)) = data.split_first() else {
        return;
    };
    let kind = if sel & 1 == 0 {
        ClusterCompression::Deflate
    } else {
        ClusterCompression::Zstd
    };
    // Cluster sizes from 512 B to 2 MiB, as qcow2 allows.
    let mut out = vec![0u8; 512usize << ((sel >> 1) % 13)];
    let _ = decompress(kind, input, &mut out);
}

/// Checksum files (GNU, BSD, bare hash) as servers publish them, and the expected-hash rules.
pub fn checksum_file(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (name, body) = text.split_once('\n').unwrap_or(("image.qcow2", &text));
    if let Ok(hex) = parse_checksum_file(body, name) {
        let _ = Expected::infer(&hex, true);
    }
    let _ = Expected::infer(&text, false);
}

/// The kernel command line, all the way to the agent's configuration.
pub fn cmdline(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let params = cmdline::parse_params(&text);
    let _ = Config::from_params(&params, &AgentArgs::default());
}

/// Command bodies and the JSON inside them: image_info, inject_files lists, root device hints.
pub fn command_json(data: &[u8]) {
    let Ok(v) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    if let Ok(info) = ImageInfo::parse(&v) {
        // The id is used in paths: whatever it was, the safe form must be a plain name.
        let id = info.safe_id();
        assert!(
            !id.contains('/') && id != "." && id != "..",
            "unsafe id {id:?}"
        );
    }
    let _ = inject_files::validate(&v, v.get("files").unwrap_or(&Value::Null));
    let _ = hints::parse(&v);
}

/// Root device hints: parsing any JSON object, then matching against a disk.
pub fn root_hints(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    // Hints arrive as a JSON object of strings, numbers and booleans.
    let doc = format!("{{{text}}}");
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&doc) else {
        return;
    };
    if let Ok(hs) = hints::parse(&v) {
        let target = hints::HintTarget {
            name: "/dev/sda".into(),
            size: 480 << 30,
            model: Some("Samsung SSD 860".into()),
            vendor: Some("ATA".into()),
            serial: vec!["S3Z9NB0K123456".into()],
            wwn: vec!["0x5002538e40a1b2c3".into()],
            wwn_with_extension: None,
            wwn_vendor_extension: None,
            rotational: false,
            hctl: Some("0:0:0:0".into()),
            by_path: Some("/dev/disk/by-path/pci-0000:00:17.0-ata-1".into()),
            tran: Some("sata".into()),
        };
        for h in &hs {
            let _ = hints::check(h, &target);
        }
    }
}

/// A lookup answer from the conductor (also the 1.84 inspection answer): the node, and its
/// config applied to the agent's settings. Invariant: whatever number the conductor sends,
/// the heartbeat timeout the agent follows is between 1 s and an hour.
pub fn lookup_config(data: &[u8]) {
    let Ok(v) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let Ok(found) = lookup::from_answer(v, ApiVersion(1, 84)) else {
        return;
    };
    let params = cmdline::parse_params("ipa-api-url=http://127.0.0.1:6385");
    let Ok(mut cfg) = Config::from_params(&params, &AgentArgs::default()) else {
        return;
    };
    if cfg.apply_lookup(&found.config).is_ok() {
        let t = cfg.heartbeat_timeout.as_secs_f64();
        assert!(
            (1.0..=3600.0).contains(&t),
            "heartbeat timeout {t} s from {}",
            found.config
        );
    }
}

/// A partition image's layout arguments (`root_mb`, `swap_mb`, `ephemeral_mb`, labels) planned
/// on disks of several sizes. Invariant: a plan that is accepted fits the disk, keeps the
/// first MiB (and for GPT the last) free, and has no overlapping partitions.
pub fn step_sizes(data: &[u8]) {
    let Ok(Value::Object(o)) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let cd = o.get("configdrive_bytes").and_then(Value::as_u64);
    let Ok(opts) = rivet::image::info::PartitionOptions::parse(&o) else {
        return;
    };
    let r = partition_image::layout_request(&opts, cd);
    const MIB: u64 = 1 << 20;
    for disk in [0, MIB, 600 * MIB, 8 << 30, 1 << 50, u64::MAX] {
        let Ok(plan) = partitions::plan(&r, "fuzz", disk) else {
            continue;
        };
        let end_limit = if r.label == Label::Gpt {
            (disk / MIB - 1) * MIB
        } else {
            disk
        };
        let mut at = MIB;
        for (_, start, len) in &plan {
            assert!(*start >= at, "overlap or below 1 MiB: {plan:?}");
            let end = start.checked_add(*len).expect("partition end overflows");
            assert!(
                end <= end_limit,
                "past the end of a {disk}-byte disk: {plan:?}"
            );
            at = end;
        }
    }
}

/// Custom step manifests (`/etc/rivet/steps.d/*.toml`): any text parses to a valid step or a
/// clear error. Invariants: a parsed step has a safe name, a bounded timeout, an absolute path.
pub fn step_manifest(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let dir = std::path::Path::new("/etc/rivet/steps.d");
    if let Ok(s) = rivet::config::steps_d::parse(&text, dir, &dir.join("m.toml")) {
        assert!(
            !s.name.is_empty()
                && s.name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
            "unsafe name {:?}",
            s.name
        );
        assert!(s.timeout.as_secs() >= 1 && s.timeout.as_secs() <= 7 * 24 * 3600);
        assert!(s.exec.is_absolute(), "{:?}", s.exec);
        assert!(!s.kinds.is_empty());
        let _ = s.argsinfo_json();
    }
}

/// Secret masking, which every result, error and log line passes through: any text, valid
/// UTF-8 or bytes made lossy (a conductor's step name, an image's file names, a tool's
/// output). Invariants: it never panics, and a secret `key=value` put after any text is
/// masked.
pub fn redact(data: &[u8]) {
    let text = match std::str::from_utf8(data) {
        Ok(s) => std::borrow::Cow::Borrowed(s),
        Err(_) => String::from_utf8_lossy(data),
    };
    let _ = rivet::redact::text(&text);
    let _ = rivet::redact::url(&text);
    if let Ok(mut v) = serde_json::from_slice::<Value>(data) {
        rivet::redact::value(&mut v);
    }
    // A secret made from the input (so it is not in it), after the input and a space.
    let secret: String = data
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
        })
        .to_string()
        .chars()
        .map(|c| (b'g' + (c as u8 - b'0')) as char)
        .collect();
    if !text.contains(&secret) {
        let line = format!("{text} ipa-agent-token={secret} password={secret}");
        let masked = rivet::redact::text(&line);
        assert!(!masked.contains(&secret), "{secret} left in {masked:?}");
    }
}

/// URL templates in inject_files and deploy templates (`{node[a][b]}`, `{ports[0][address]}`)
/// against a node and ports. Invariant: no panic, and the result is never over the cap.
pub fn url_template(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let node = serde_json::json!({
        "uuid": "1be26c0b-03f2-4d2e-ae87-c02d7f33c123",
        "properties": {"capabilities": "boot_mode:uefi", "cpus": 8, "«": ["ü", null, 1.5]},
        "extra": {"big": "x".repeat(40_000)},
    });
    let ports = serde_json::json!([{"address": "52:54:00:12:34:56"}, {"address": null}]);
    if let Ok(out) = inject_files::expand(&text, &node, &ports) {
        assert!(out.len() <= inject_files::MAX_EXPANDED);
    }
}

/// What the agent reads from tools and conductors as text: `efibootmgr -v`, `ipmitool lan
/// print`, `mdadm --export`, /proc/cpuinfo, fio's JSON, Ironic's error bodies and version
/// headers. The first byte picks the reader.
pub fn tool_output(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    match sel % 7 {
        0 => {
            for r in rivet::deploy::nvram::parse_records(&text) {
                assert!(text.contains(r.path.as_str()));
            }
        }
        1 => {
            let _ = rivet::hardware::bmc::parse_lan_print(&text);
            let _ = rivet::hardware::bmc::parse_lan6_print(&text);
        }
        2 => {
            let _ = rivet::disk::md::name_from_export(&text);
        }
        3 => {
            let _ = rivet::hardware::inventory::cpu(&text);
        }
        4 => {
            if let Ok(v) = serde_json::from_slice::<Value>(rest) {
                let _ = rivet::system::burnin::fio_summary(&v);
            }
        }
        5 => {
            let _ = rivet::conductor::client::ironic_faultstring(rest);
        }
        _ => {
            let _ = ApiVersion::parse(&text);
        }
    }
}

/// LLDP frames from the wire and SMBIOS tables from firmware: binary, from outside. The first
/// byte picks the reader.
pub fn frames_and_tables(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    if sel & 1 == 0 {
        if let Some(tlvs) = rivet::hardware::lldp::parse_frame(rest) {
            let _ = rivet::hardware::lldp::decode(&tlvs);
        }
        if let Some(tlvs) = rivet::hardware::lldp::parse_tlvs(rest) {
            let _ = rivet::hardware::lldp::decode(&tlvs);
        }
    } else {
        let _ = rivet::hardware::smbios::structures(rest);
        let _ = rivet::hardware::smbios::dmi(rest);
        let _ = rivet::hardware::smbios::physical_mb(rest);
    }
}

/// Walks of file-system trees from tenants and conductors: an ISO9660 config drive made into
/// a vfat one, an ESP searched for boot loaders and mirrored. The first byte picks the walk.
/// Invariant: each ends (a loop in the tree is an error), never a panic.
pub fn fs_walks(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    if sel & 1 == 0 {
        let _ = rivet::disk::configdrive::iso_to_vfat(rest, 1 << 20, 512);
    } else {
        let _ = rivet::disk::esp::loaders_in(std::io::Cursor::new(rest.to_vec()), "fuzz");
        let _ = rivet::disk::esp::mirror(
            std::io::Cursor::new(rest.to_vec()),
            std::io::Cursor::new(vec![0u8; 1 << 20]),
            512,
        );
    }
}

/// network_data.json from the virtual media (an operator's or a template's document): read
/// into a plan whose every entry is valid, or refused; never a panic. Also the two other
/// network inputs: an SNTP answer and a DHCP lease's variables.
pub fn network_data(data: &[u8]) {
    use rivet::network::network_data::{parse, resolv_conf, Addressing, LinkKind};
    use rivet::network::{dhcp, sntp};
    let _ = sntp::parse_answer(data, 0x0102_0304_0506_0708);
    let text = String::from_utf8_lossy(data);
    let _ = dhcp::lease_from(|k| {
        text.lines()
            .find_map(|l| l.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
            .map(str::to_string)
    });
    let Ok(plan) = parse(data) else {
        return;
    };
    for l in &plan.links {
        match &l.kind {
            LinkKind::Vlan { vid, parent, .. } => {
                assert!((1..=4094).contains(vid), "VLAN id {vid}");
                assert!(
                    plan.links.iter().any(|p| &p.id == parent),
                    "VLAN on a link not applied"
                );
            }
            LinkKind::Bond(b) => assert!(!b.members.is_empty()),
            LinkKind::Phy { mac } => assert_eq!(mac.len(), 17, "MAC {mac}"),
        }
        if let Some(m) = l.mtu {
            assert!((68..=65535).contains(&m));
        }
    }
    for n in &plan.networks {
        assert!(
            plan.links.iter().any(|l| l.id == n.link),
            "network on a link not applied"
        );
        if let Addressing::Static {
            address,
            prefix,
            routes,
        } = &n.addressing
        {
            assert!(*prefix <= if address.is_ipv6() { 128 } else { 32 });
            for r in routes {
                assert_eq!(r.dest.is_ipv6(), address.is_ipv6());
                assert_eq!(r.gateway.is_ipv6(), address.is_ipv6());
            }
        }
    }
    if let Some(r) = resolv_conf(&plan) {
        assert!(r.lines().filter(|l| l.starts_with("nameserver")).count() <= 3);
    }
}

/// What peers and the provisioning network send a node sharing an image: the `.torrent` from
/// the image server, LSD announcements, and peer wire messages (first byte 0, 1, 2 picks).
/// Invariants: a torrent that parses describes whole pieces within its length, and a message
/// read is never larger than the bound it was read with.
pub fn torrent(data: &[u8]) {
    use rivet::image::share::{lsd, wire, Torrent};
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 3 {
        0 => {
            let Ok(t) = Torrent::parse(rest) else {
                return;
            };
            let count = t.piece_count();
            assert_eq!(count as usize, t.pieces.len());
            let mut total = 0u64;
            for i in 0..count {
                let (s, e) = t.piece_range(i);
                assert!(s < e && e <= t.length, "piece {i} {s}..{e} of {}", t.length);
                assert!(t.piece_len(i) <= t.piece_length);
                total += e - s;
            }
            assert_eq!(total, t.length);
            assert!(!t.check_piece(count, rest));
        }
        1 => {
            if let Some(a) = lsd::parse(rest) {
                assert_ne!(a.port, 0);
                assert!(a.info_hashes.iter().all(|h| h.len() == 40));
            }
        }
        _ => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let mut r = rest;
                let max = wire::max_message(64);
                while let Ok(m) = wire::read_message(&mut r, max).await {
                    if let wire::Message::Piece { data, .. } | wire::Message::Bitfield(data) = m {
                        assert!(data.len() <= max as usize);
                    }
                }
            });
        }
    }
}
