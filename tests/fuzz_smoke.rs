//! The fuzz targets' bodies (fuzz/bodies.rs) run briefly under `cargo test`, on the stable
//! toolchain: seeded random mutations (bit flips, interesting integers at aligned offsets,
//! truncations, splices) of a seed corpus, without libFuzzer's coverage guidance. This is the
//! fuzzing the test command does; libFuzzer itself (coverage-guided, nightly, a build of
//! several minutes) is `scripts/fuzz.sh`, run apart. Every input a libFuzzer run ever crashed
//! on is kept under fuzz/regressions/TARGET/ and replayed here first. Every target runs (a
//! missing seed tool fails the test in CI), and each must get through at least MIN_MUTATED
//! mutated inputs; executions are printed per target.
#![allow(clippy::unwrap_used)]

#[path = "../fuzz/bodies.rs"]
mod bodies;
mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const INTERESTING: &[u64] = &[
    0,
    1,
    0x7f,
    0x80,
    0xff,
    0x200,
    0x1_0000,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    1 << 62,
    1 << 63,
    u64::MAX,
];

fn mutate(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut d = seeds[rng.below(seeds.len())].clone();
    for _ in 0..1 + rng.below(6) {
        if d.is_empty() {
            d.push(rng.next() as u8);
            continue;
        }
        match rng.below(7) {
            0 => {
                let i = rng.below(d.len());
                d[i] ^= 1 << rng.below(8);
            }
            1 => {
                let i = rng.below(d.len());
                d[i] = rng.next() as u8;
            }
            2 if d.len() >= 8 => {
                // Integers as qcow2 and friends store them: big-endian, aligned.
                let i = rng.below(d.len() / 8) * 8;
                let v = INTERESTING[rng.below(INTERESTING.len())]
                    .wrapping_add(rng.below(3) as u64)
                    .wrapping_sub(1);
                d[i..i + 8].copy_from_slice(&v.to_be_bytes());
            }
            3 if d.len() >= 4 => {
                let i = rng.below(d.len() / 4) * 4;
                let v = INTERESTING[rng.below(INTERESTING.len())] as u32;
                d[i..i + 4].copy_from_slice(&v.to_be_bytes());
            }
            4 => d.truncate(rng.below(d.len())),
            5 => {
                let other = &seeds[rng.below(seeds.len())];
                let at = rng.below(d.len());
                let from = rng.below(other.len().max(1));
                let n = rng.below(256).min(other.len().saturating_sub(from));
                d.splice(at..at, other[from..from + n].iter().copied());
            }
            _ => {
                let at = rng.below(d.len());
                let n = rng.below(64).min(d.len() - at);
                d.drain(at..at + n);
            }
        }
    }
    d
}

fn qcow2_seeds() -> Vec<Vec<u8>> {
    let d = tempfile::tempdir().unwrap();
    let raw = d.path().join("raw");
    let mut data = vec![0u8; 256 << 10];
    let mut r = Rng(0x9e37_79b9);
    for (i, b) in data.iter_mut().enumerate() {
        if (i / 4096) % 3 != 1 {
            *b = r.next() as u8;
        }
    }
    std::fs::write(&raw, &data).unwrap();
    let mut out = Vec::new();
    for o in [
        "cluster_size=512",
        "cluster_size=4096",
        "cluster_size=65536",
        "cluster_size=32768,extended_l2=on",
        "compression_type=zstd",
    ] {
        let q = d.path().join("q");
        match Command::new("qemu-img")
            .args(["convert", "-q", "-c", "-f", "raw", "-O", "qcow2", "-o", o])
            .arg(&raw)
            .arg(&q)
            .status()
        {
            Ok(s) => {
                assert!(s.success(), "qemu-img convert -o {o} failed: {s}");
                out.push(std::fs::read(&q).unwrap());
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                common::skipped("qemu-img is not installed: no qcow2 seeds");
                return Vec::new();
            }
            Err(e) => panic!("cannot run qemu-img: {e}"),
        }
    }
    out
}

/// A small config-drive ISO (selector 0) and a small FAT file system with an EFI tree
/// (selector 1), made with the tools operators use.
fn fs_seeds() -> Vec<Vec<u8>> {
    let d = tempfile::tempdir().unwrap();
    let tree = d.path().join("cd/openstack/latest");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("meta_data.json"), r#"{"uuid": "n1"}"#).unwrap();
    let iso = d.path().join("cd.iso");
    let fat = d.path().join("esp.img");
    std::fs::File::create(&fat)
        .unwrap()
        .set_len(256 << 10)
        .unwrap();
    let img = fat.display().to_string();
    let mut steps = [
        Command::new("genisoimage"),
        Command::new("mkfs.fat"),
        Command::new("mmd"),
    ];
    steps[0]
        .args(["-quiet", "-r", "-V", "config-2", "-o"])
        .arg(&iso)
        .arg(d.path().join("cd"));
    steps[1].args(["-s", "1"]).arg(&fat);
    steps[2].args(["-i", &img, "::/EFI", "::/EFI/BOOT"]);
    for c in &mut steps {
        let tool = c.get_program().to_string_lossy().into_owned();
        match c.stdout(std::process::Stdio::null()).status() {
            Ok(s) => assert!(s.success(), "{tool} failed: {s}"),
            Err(_) => {
                common::skipped(&format!("{tool} is not installed: no file-system seeds"));
                return Vec::new();
            }
        }
    }
    let mut a = vec![0u8];
    a.extend(std::fs::read(&iso).unwrap());
    let mut b = vec![1u8];
    b.extend(std::fs::read(&fat).unwrap());
    vec![a, b]
}

fn regressions(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/regressions")
        .join(target);
    let mut v: Vec<Vec<u8>> = std::fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .map(|e| std::fs::read(e.path()).unwrap())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Mutated inputs every target must get through in its budget: far below what a debug build
/// does in a second, far above nothing (a target that stopped running shows up here).
const MIN_MUTATED: usize = 50;

/// Targets run so far.
static TARGETS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn run(target: &str, body: fn(&[u8]), seeds: Vec<Vec<u8>>, budget: Duration) -> usize {
    assert!(!seeds.is_empty(), "{target}: no seeds");
    TARGETS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut execs = 0;
    for input in regressions(target).iter().chain(seeds.iter()) {
        body(input);
        execs += 1;
    }
    let mut rng = Rng(0x5eed ^ target.len() as u64 ^ (execs as u64) << 32 | 1);
    let start = Instant::now();
    let mut mutated = 0;
    while start.elapsed() < budget || mutated < MIN_MUTATED {
        let input = mutate(&mut rng, &seeds);
        let r = std::panic::catch_unwind(|| body(&input));
        if r.is_err() {
            let keep = std::env::temp_dir().join(format!("rivet-fuzz-crash-{target}"));
            std::fs::write(&keep, &input).unwrap();
            panic!(
                "{target} crashed on a mutated input, saved at {} (copy it to fuzz/regressions/{target}/)",
                keep.display()
            );
        }
        execs += 1;
        mutated += 1;
    }
    figure(&format!("fuzz_smoke {target} executions {execs}"));
    execs
}

#[test]
fn fuzz_bodies_survive_a_bounded_mutation_run() {
    let secs: u64 = std::env::var("RIVET_FUZZ_SMOKE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let b = Duration::from_secs(secs);
    let text = |v: &[&str]| v.iter().map(|s| s.as_bytes().to_vec()).collect::<Vec<_>>();
    let mut total = 0;
    let q = qcow2_seeds();
    if !q.is_empty() {
        total += run("qcow2", bodies::qcow2, q, b);
    }
    let mut deflate = vec![0u8];
    deflate.extend_from_slice(&[0x4b, 0x4c, 0x4a, 0x06, 0x00]);
    let mut zstd = vec![1u8];
    zstd.extend(zstd::encode_all(&b"hello hello hello"[..], 3).unwrap());
    total += run(
        "qcow2_cluster",
        bodies::qcow2_cluster,
        vec![deflate, zstd],
        b,
    );
    total += run(
        "checksum_file",
        bodies::checksum_file,
        text(&[
            "image.qcow2\n9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08  image.qcow2\n",
            "image.raw\nSHA256 (image.raw) = 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\n",
            "x\n098f6bcd4621d373cade4e832627b4f6",
        ]),
        b,
    );
    total += run(
        "cmdline",
        bodies::cmdline,
        text(&[
            "ipa-api-url=https://10.0.0.1:6385,http://[fd00::1]:6385 BOOTIF=01-52-54-00-12-34-56 ipa-insecure=1 ipa-lookup-timeout=300 ipa-tls-min-version=1.3 \"ipa-global-request-id=req-1\" boot_method=vmedia",
            "ipa-api-url=http://h:6385 ipa-advertise-port=99999 ipa-lookup-interval=-1 ipa-image-download-connection-retries=x",
        ]),
        b,
    );
    total += run(
        "command_json",
        bodies::command_json,
        text(&[
            r#"{"id":"../../etc","urls":["http://h/i"],"os_hash_algo":"sha256","os_hash_value":"ab","disk_format":"qcow2","image_type":"partition","root_mb":1024,"files":[{"path":"/etc/x","content":"eA=="}],"name":"s== /dev/sda","size":">= 10"}"#,
            r#"{"id":"i","urls":[],"checksum":"http://h/sums","image_download_source":"http","files":[{"path":"/x","partition":1,"deleted":true,"mode":493}]}"#,
        ]),
        b,
    );
    total += run(
        "root_hints",
        bodies::root_hints,
        text(&[
            r#""name": "s== /dev/sda", "size": "<range-in> [100 200]", "rotational": false, "serial": "<or> A <or> B""#,
            r#""wwn": "0x5002538e40a1b2c3", "hctl": "0:0:0:0", "by_path": "/dev/disk/by-path/pci-0000:00:17.0-ata-1", "size": 480"#,
        ]),
        b,
    );
    total += run(
        "lookup_config",
        bodies::lookup_config,
        text(&[
            r#"{"node": {"uuid": "1be26c0b-03f2-4d2e-ae87-c02d7f33c123", "properties": {}}, "config": {"heartbeat_timeout": 300, "agent_token": "t", "agent_md5_checksum_enable": false, "permitted_image_formats": ["raw", "qcow2"], "tls_min_version": "1.3"}}"#,
            r#"{"node": {"uuid": "u"}, "config": {"heartbeat_timeout": 1e300}, "heartbeat_timeout": -5}"#,
        ]),
        b,
    );
    total += run(
        "step_sizes",
        bodies::step_sizes,
        text(&[
            r#"{"root_mb": 1024, "swap_mb": 512, "ephemeral_mb": "2048", "deploy_boot_mode": "bios", "disk_label": "msdos", "configdrive_bytes": 65536}"#,
            r#"{"root_mb": 18446744073709551615, "swap_mb": 18446744073709551615, "deploy_boot_mode": "uefi", "preserve_ephemeral": "yes"}"#,
        ]),
        b,
    );
    total += run(
        "step_manifest",
        bodies::step_manifest,
        text(&[
            "step = \"write_marker\"\nkinds = [\"clean\", \"service\"]\ninterface = \"deploy\"\npriority = 0\nabortable = true\nreboot_requested = false\ntimeout = 60\nexec = \"marker.sh\"\n\n[argsinfo.text]\ndescription = \"What to write\"\nrequired = true\n",
            "step = \"x\"\nkinds = [\"deploy\"]\ntimeout = 604800\nexec = \"/usr/local/bin/x\"\npriority = 1000\n",
        ]),
        b,
    );
    total += run(
        "redact",
        bodies::redact,
        text(&[
            "unknown step «http://user:pw@example.invalid/x",
            "args:\u{a0}token=abc GET https://u:p@h/x?temp_url_sig=0123&a=b failed (https://h/y)",
            r#"{"image_server_password": "pw", "urls": ["https://u:p@h/i"], "n": [1, "ipa-agent-token=t"]}"#,
            "BOOT_IMAGE=/vmlinuz ipa-agent-token=secret ipa-api-url=https://[fd00::1]:6385 €😀",
        ]),
        b,
    );
    total += run(
        "url_template",
        bodies::url_template,
        text(&[
            "http://h/{node[uuid]}/{ports[0][address]}?b={node[properties][cpus]}&{{x}}",
            "{node[properties][«][0]}{node[extra][big]}{node}",
            "http://h/{ports[1][address]}/{node[nope]}",
        ]),
        b,
    );
    total += run(
        "tool_output",
        bodies::tool_output,
        text(&[
            "\u{0}BootCurrent: 0001\nBoot0001* debian\tHD(1,GPT,0a1b,0x800,0x100000)/File(\\EFI\\debian\\shimx64.efi)\nBoot0002* UEFI PXE\tPciRoot(0x0)/Pci(0x3,0x0)/MAC(525400123456,1)\n",
            "\u{1}IP Address Source       : Static Address\nIP Address              : 10.0.0.5\nMAC Address             : 52:54:00:aa:bb:cc\nIPv6 Static Address 0:\n    Address: fd00::5/64\n",
            "\u{2}MD_LEVEL=raid1\nMD_DEVICES=2\nMD_NAME=host:root\nMD_UUID=1:2:3:4\n",
            "\u{3}processor\t: 0\nmodel name\t: Intel(R) Xeon(R)\ncpu MHz\t\t: 2100.000\nflags\t\t: fpu vme sse2\nphysical id\t: 0\n",
            "\u{4}{\"jobs\": [{\"jobname\": \"/dev/sda\", \"error\": 0, \"read\": {\"io_bytes\": 1, \"bw\": 2}, \"write\": {\"io_bytes\": 3, \"bw\": 4}}]}",
            "\u{5}{\"error_message\": \"{\\\"faultstring\\\": \\\"Node x is locked\\\"}\"}",
            "\u{6}1.84",
        ]),
        b,
    );
    total += run(
        "network_data",
        bodies::network_data,
        text(&[
            r#"{"links": [{"id": "port-1", "type": "phy", "ethernet_mac_address": "52:54:00:d3:6a:71", "mtu": 1500}], "networks": [{"id": "n", "type": "ipv4", "link": "port-1", "ip_address": "192.168.122.42", "netmask": "255.255.255.0", "routes": [{"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": "192.168.122.1"}]}], "services": [{"type": "dns", "address": "192.168.122.1"}]}"#,
            r#"{"links": [{"id": "a", "ethernet_mac_address": "52:54:00:00:00:01"}, {"id": "b", "ethernet_mac_address": "52:54:00:00:00:02"}, {"id": "v", "type": "vlan", "vlan_link": "bond0", "vlan_id": 100, "vlan_mac_address": "52:54:00:00:00:01"}, {"id": "bond0", "type": "bond", "bond_links": ["a", "b"], "bond_mode": "802.3ad", "bond_xmit_hash_policy": "layer3+4", "bond_lacp_rate": "fast", "ethernet_mac_address": "52:54:00:00:00:01"}], "networks": [{"id": "6", "type": "ipv6", "link": "v", "ip_address": "fd00::5/64", "routes": [{"network": "::", "netmask": "::", "gateway": "fd00::1"}], "dns_nameservers": ["fd00::1"]}, {"id": "s", "type": "ipv6_slaac", "link": "a"}, {"id": "d", "type": "ipv4_dhcp", "link": "b"}], "services": []}"#,
            "interface=eth0\nip=192.168.150.20\nmask=24\nrouter=192.168.150.1\ndns=192.168.150.1\n",
        ]),
        b,
    );
    total += run("torrent", bodies::torrent, torrent_seeds(), b);
    let mut lldp = vec![0u8];
    lldp.extend(hex_fixture("lldp-switch-frame.hex"));
    let mut smbios = vec![1u8];
    smbios.extend(std::fs::read(fixture("smbios.bin")).unwrap());
    total += run(
        "frames_and_tables",
        bodies::frames_and_tables,
        vec![lldp, smbios],
        b,
    );
    let walks = fs_seeds();
    if !walks.is_empty() {
        total += run("fs_walks", bodies::fs_walks, walks, b);
    }
    let targets = TARGETS.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        total >= targets * MIN_MUTATED,
        "{total} executions over {targets} targets"
    );
    figure(&format!(
        "fuzz_smoke targets {targets} total_executions {total} crashes 0"
    ));
}

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn hex_fixture(name: &str) -> Vec<u8> {
    let text = std::fs::read_to_string(fixture(name)).unwrap();
    let digits: String = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .flat_map(|l| l.chars().filter(char::is_ascii_hexdigit))
        .collect();
    hex::decode(digits).unwrap()
}

/// Print past the harness's output capture, so the test command's log shows the figures.
fn figure(line: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// A torrent `rivet torrent` makes (with a web seed), an LSD announcement, peer messages.
fn torrent_seeds() -> Vec<Vec<u8>> {
    use rivet::image::share::{lsd, torrent, wire};
    let img: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let mut t = vec![0u8];
    t.extend(
        torrent::make(
            &img[..],
            "disk.raw",
            16 << 10,
            &["http://h/disk.raw".into()],
        )
        .unwrap(),
    );
    let mut a = vec![1u8];
    a.extend(lsd::message(6881, &"ab".repeat(20), "0123456789abcdef01234567").into_bytes());
    let mut m = vec![2u8];
    for msg in [
        wire::Message::Bitfield(wire::bitfield(64, |i| i % 2 == 0)),
        wire::Message::Unchoke,
        wire::Message::Request {
            index: 3,
            begin: 0,
            length: 16384,
        },
        wire::Message::Piece {
            index: 3,
            begin: 0,
            data: bytes::Bytes::from_static(b"0123456789"),
        },
        wire::Message::Have(63),
    ] {
        m.extend_from_slice(&wire::encode(&msg));
    }
    vec![t, a, m]
}
