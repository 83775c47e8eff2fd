//! The fuzz targets' bodies (fuzz/bodies.rs) run briefly under `cargo test`, on the stable
//! toolchain: seeded random mutations (bit flips, interesting integers at aligned offsets,
//! truncations, splices) of a seed corpus, without libFuzzer's coverage guidance. This keeps
//! the bodies honest for anyone running `cargo test` alone; the test command also runs the real
//! thing (`scripts/fuzz.sh`, libFuzzer). Every input a libFuzzer run ever crashed on is kept
//! under fuzz/regressions/TARGET/ and replayed here first. Prints executions per target.
#![allow(clippy::unwrap_used)]

#[path = "../fuzz/bodies.rs"]
mod bodies;

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
        let ok = Command::new("qemu-img")
            .args(["convert", "-q", "-c", "-f", "raw", "-O", "qcow2", "-o", o])
            .arg(&raw)
            .arg(&q)
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            out.push(std::fs::read(&q).unwrap());
        }
    }
    out
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

fn run(target: &str, body: fn(&[u8]), seeds: Vec<Vec<u8>>, budget: Duration) -> usize {
    let mut execs = 0;
    for input in regressions(target).iter().chain(seeds.iter()) {
        body(input);
        execs += 1;
    }
    let mut rng = Rng(0x5eed ^ target.len() as u64 ^ (execs as u64) << 32 | 1);
    let start = Instant::now();
    while start.elapsed() < budget {
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
    figure(&format!("fuzz_smoke total_executions {total} crashes 0"));
}

/// Print past the harness's output capture, so the test command's log shows the figures.
fn figure(line: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}
