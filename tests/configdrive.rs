//! Config drives on real loop devices: a new partition in the last 64 MiB of a GPT disk
//! holding the ISO (512-byte sectors), a vfat CONFIG-2 copy of its files on a 4Kn disk, reuse
//! of an existing config-2 partition, msdos labels (a new primary partition, reused, and the
//! four-primaries limit). Read back with blkid,
//! sgdisk and mtools.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Command, Stdio};

use common::install_util::{blkid_at, config_drive_iso};
use common::loopdev::{is_root, Loop};
use rivet::disk::configdrive;
use rivet::disk::device::Device;

const META: &str = r#"{"uuid": "1be26c0b", "hostname": "node0.example"}"#;

fn iso(dir: &std::path::Path) -> Vec<u8> {
    std::fs::read(config_drive_iso(dir, META)).unwrap()
}

fn sgdisk(args: &[&str], dev: &str) {
    assert!(Command::new("sgdisk")
        .args(args)
        .arg(dev)
        .stdout(Stdio::null())
        .status()
        .unwrap()
        .success());
}

#[test]
fn config_drive_partitions() {
    if !is_root() && common::skipped("needs root for loop devices") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let iso = iso(d.path());

    // 512-byte sectors; the "image" GPT ends early (as a small image written to a big disk).
    let img = d.path().join("small.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    sgdisk(&["-o", "-n", "1:2048:+16M"], img.to_str().unwrap());
    let mut bytes = std::fs::read(&img).unwrap();
    bytes.resize(256 << 20, 0);
    std::fs::write(&img, &bytes).unwrap();
    let l = Loop::attach(&img, 512);
    let p = configdrive::write(&Device::open(std::path::Path::new(&l.dev)).unwrap(), &iso).unwrap();
    assert!(!p.reused && !p.vfat);
    assert_eq!(p.partition, 2);
    assert!(
        p.start + p.len <= (256 << 20) - 33 * 512 && p.start >= (256 << 20) - (65 << 20),
        "{p:?}"
    );
    let id = blkid_at(&l.dev, p.start);
    assert!(
        id.contains("TYPE=iso9660") && id.contains("LABEL=config-2"),
        "{id}"
    );
    let v = Command::new("sgdisk")
        .args(["-v"])
        .arg(&l.dev)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&v.stdout).contains("No problems found"),
        "{}",
        String::from_utf8_lossy(&v.stdout)
    );
    let data = std::fs::read(&l.dev).unwrap();
    let part = &data[p.start as usize..(p.start + p.len) as usize];
    let mut r = rivet::fsread::iso9660::Iso::open(std::io::Cursor::new(part)).unwrap();
    let e = r.list("openstack/latest").unwrap().unwrap();
    let f = e.iter().find(|x| x.name == "meta_data.json").unwrap();
    assert_eq!(r.read_file(f, 1 << 20).unwrap(), META.as_bytes());
    // Again: the existing config-2 partition is reused, not duplicated.
    let again =
        configdrive::write(&Device::open(std::path::Path::new(&l.dev)).unwrap(), &iso).unwrap();
    assert!(again.reused && again.partition == 2, "{again:?}");
    drop(l);

    // 4Kn: ISO9660 is unreadable there, so a vfat CONFIG-2 with the same files.
    let k = Loop::new(d.path(), "4k.img", 256 << 20, 4096);
    sgdisk(&["-o", "-n", "1:0:+16M"], &k.dev);
    let p = configdrive::write(&Device::open(std::path::Path::new(&k.dev)).unwrap(), &iso).unwrap();
    assert!(p.vfat, "{p:?}");
    let id = blkid_at(&k.dev, p.start);
    assert!(
        id.contains("TYPE=vfat") && id.contains("LABEL=CONFIG-2"),
        "{id}"
    );
    let out = Command::new("mtype")
        .args([
            "-i",
            &format!("{}@@{}", k.dev, p.start),
            "::/openstack/latest/meta_data.json",
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        META,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // An msdos label: a new primary partition in the last 64 MiB, then reused.
    let m = Loop::new(d.path(), "mbr.img", 128 << 20, 512);
    let put_mbr = |entries: &[(u32, u32)]| {
        use std::os::unix::fs::FileExt;
        let mut mbr = [0u8; 512];
        for (i, (start, len)) in entries.iter().enumerate() {
            let e = 446 + i * 16;
            mbr[e + 4] = 0x83;
            mbr[e + 8..e + 12].copy_from_slice(&start.to_le_bytes());
            mbr[e + 12..e + 16].copy_from_slice(&len.to_le_bytes());
        }
        mbr[510] = 0x55;
        mbr[511] = 0xaa;
        std::fs::OpenOptions::new()
            .write(true)
            .open(&m.dev)
            .unwrap()
            .write_all_at(&mbr, 0)
            .unwrap();
    };
    put_mbr(&[(2048, 32768)]);
    let p = configdrive::write(&Device::open(std::path::Path::new(&m.dev)).unwrap(), &iso).unwrap();
    assert_eq!(
        (p.partition, p.start, p.len),
        (2, 64 << 20, 64 << 20),
        "{p:?}"
    );
    let id = blkid_at(&m.dev, p.start);
    assert!(
        id.contains("TYPE=iso9660") && id.contains("LABEL=config-2"),
        "{id}"
    );
    let dump = Command::new("sfdisk")
        .args(["-d", &m.dev])
        .output()
        .unwrap();
    let dump = String::from_utf8_lossy(&dump.stdout).to_string();
    assert!(
        dump.contains("start=      131072, size=      131072, type=83"),
        "{dump}"
    );
    let again =
        configdrive::write(&Device::open(std::path::Path::new(&m.dev)).unwrap(), &iso).unwrap();
    assert!(again.reused && again.partition == 2, "{again:?}");

    // Four primaries already: no room, said clearly.
    put_mbr(&[(2048, 2048), (4096, 2048), (6144, 2048), (8192, 2048)]);
    let e = configdrive::write(&Device::open(std::path::Path::new(&m.dev)).unwrap(), &iso)
        .unwrap_err()
        .to_string();
    assert!(e.contains("4 primary partitions"), "{e}");
}
