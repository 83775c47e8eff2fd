//! Helpers for tests that run `rivet install`: images made with real tools, the install
//! command, and read-backs of the result with qemu-img and blkid.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output, Stdio};

use super::loopdev::{is_root, Loop};

pub const MIB: u64 = 1 << 20;

/// A 16 MiB ext4 partition image of `tree` with file-system UUID `uuid`, made in `d`.
pub fn ext4_image(d: &Path, tree: &Path, uuid: &str) -> Vec<u8> {
    let part = d.join(format!("{uuid}.raw"));
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-U", uuid, "-d"])
        .arg(tree)
        .arg(&part)
        .arg("16M")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mkfs.ext4: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(&part).unwrap()
}

/// A GPT disk image with data in its partitions: `sector`-byte sectors, `mib` MiB.
pub fn gpt_image(dir: &Path, name: &str, mib: u64, sector: u32) -> Vec<u8> {
    let p = dir.join(name);
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(mib * MIB).unwrap();
    drop(f);
    // A 4Kn image is partitioned through a 4Kn loop device over the file.
    let l = (sector != 512).then(|| Loop::attach(&p, sector));
    let target = l
        .as_ref()
        .map_or(p.display().to_string(), |l| l.dev.clone());
    let st = Command::new("sgdisk")
        .args(["-o", "-n", "1:0:+4M", "-t", "1:ef00", "-n", "2:0:0"])
        .arg(&target)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "sgdisk");
    drop(l);
    let mut data = std::fs::read(&p).unwrap();
    // Pseudo-random, partly compressible content after the first 2 MiB, with zero runs.
    let mut x: u64 = 0x9e3779b97f4a7c15 ^ mib;
    for (i, chunk) in data[(2 * MIB) as usize..].chunks_mut(4096).enumerate() {
        if i % 7 == 3 {
            continue;
        }
        for b in chunk.iter_mut().step_by(3) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
    }
    // Keep the backup GPT intact: the data above stops before the last MiB.
    let end = data.len() - MIB as usize;
    let backup = std::fs::read(&p).unwrap()[end..].to_vec();
    data[end..].copy_from_slice(&backup);
    std::fs::write(&p, &data).unwrap();
    data
}

pub fn compress(tool: &str, data: &[u8]) -> Vec<u8> {
    let mut c = Command::new(tool)
        .args(["-c", "-1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = c.stdin.take().unwrap();
    let data = data.to_vec();
    let t = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &data).unwrap());
    let out = c.wait_with_output().unwrap();
    t.join().unwrap();
    assert!(out.status.success());
    out.stdout
}

pub fn sha256(data: &[u8]) -> String {
    rivet::image::verify::digest_hex(rivet::image::verify::Algo::Sha256, data)
}

pub fn install(url: &str, checksum: &str, device: &str, extra: &[&str]) -> Output {
    install_command(url, checksum, device, extra)
        .output()
        .unwrap()
}

/// `rivet install` as [`install`] runs it, to spawn (several at once) or run.
pub fn install_command(url: &str, checksum: &str, device: &str, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rivet"));
    c.args([
        "install",
        "--quiet",
        "--timeout",
        "3",
        "--image-url",
        url,
        "--checksum",
        checksum,
        "--device",
        device,
    ]);
    if !extra.contains(&"--retry-interval") {
        c.args(["--retry-interval", "0.1"]);
    }
    c.args(extra);
    c
}

pub fn ok(o: &Output) {
    assert!(
        o.status.success(),
        "install failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

pub fn err(o: &Output) -> String {
    assert!(
        !o.status.success(),
        "install unexpectedly succeeded: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// The disk holds exactly the image (and zeros after it), per qemu-img.
pub fn assert_same(image: &Path, device: &str) {
    let out = Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw"])
        .arg(image)
        .arg(device)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "qemu-img compare: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// No partition table or filesystem signature anywhere blkid looks.
pub fn assert_blank(device: &str) {
    let out = Command::new("blkid")
        .args(["-p", "-o", "export"])
        .arg(device)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "blkid still finds: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let head = std::fs::read(device)
        .map(|d| d[..MIB as usize].to_vec())
        .unwrap_or_default();
    assert!(head.iter().all(|b| *b == 0), "first MiB not blank");
}

pub fn skip() -> bool {
    !is_root() && crate::common::skipped("needs root for loop devices")
}

/// A config-drive ISO (label config-2) holding `openstack/latest/meta_data.json` = `meta`,
/// made with genisoimage in `dir`; returns its path.
pub fn config_drive_iso(dir: &Path, meta: &str) -> std::path::PathBuf {
    let root = dir.join("cd");
    std::fs::create_dir_all(root.join("openstack/latest")).unwrap();
    std::fs::write(root.join("openstack/latest/meta_data.json"), meta).unwrap();
    let out = dir.join("cd.iso");
    let ok = Command::new("genisoimage")
        .args(["-quiet", "-R", "-J", "-V", "config-2", "-o"])
        .arg(&out)
        .arg(&root)
        .status()
        .unwrap()
        .success();
    assert!(ok, "genisoimage");
    out
}

/// What `blkid -p` finds at byte `offset` of `dev` (export format).
pub fn blkid_at(dev: &str, offset: u64) -> String {
    let out = Command::new("blkid")
        .args(["-p", "-O", &offset.to_string(), "-o", "export", dev])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).to_string()
}
