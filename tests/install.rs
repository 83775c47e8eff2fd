//! `rivet install` end to end: images made with real tools, served by a fault-injecting server
//! on 127.0.0.1, written to loop devices (512 B and 4 KiB sectors) and files, and compared with
//! the source by `qemu-img compare`. Every refusal leaves no partition table behind.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::imgserver::ImageServer;
use common::install_util::*;
use common::loopdev::Loop;

#[test]
fn raw_and_compressed_images_to_loop_devices() {
    if skip() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let srv = ImageServer::start();
    let img = gpt_image(d.path(), "disk.raw", 24, 512);
    let sum = sha256(&img);
    let raw_url = srv.add("disk.raw", img.clone());
    let disk = Loop::new(d.path(), "target.img", 32 * MIB, 512);
    // Old data on the target, as on a reused machine: where the image goes (it must vanish
    // even under the image's zero runs) and in the last MiB (old backup GPT, wiped).
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&disk.file)
            .unwrap();
        f.write_all_at(&vec![0x5Au8; (24 * MIB) as usize], 0)
            .unwrap();
        f.write_all_at(&vec![0x5Au8; MIB as usize], 31 * MIB)
            .unwrap();
    }
    let o = install(
        &raw_url,
        &format!("sha256:{sum}"),
        &disk.dev,
        &["--disk-format", "raw"],
    );
    ok(&o);
    assert_same(&d.path().join("disk.raw"), &disk.dev);
    let pt = Command::new("sgdisk")
        .arg("-p")
        .arg(&disk.dev)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&pt.stdout).contains("EF00"),
        "partition table read back"
    );

    for (tool, ext) in [("gzip", "gz"), ("zstd", "zst"), ("xz", "xz")] {
        let z = compress(tool, &img);
        let zsum = sha256(&z);
        let url = srv.add(&format!("disk.raw.{ext}"), z);
        let t = Loop::new(d.path(), &format!("t-{ext}.img"), 32 * MIB, 512);
        let o = install(&url, &zsum, &t.dev, &[]);
        ok(&o);
        assert!(
            String::from_utf8_lossy(&o.stdout).contains(&format!("{tool}-compressed")),
            "{}",
            String::from_utf8_lossy(&o.stdout)
        );
        assert_same(&d.path().join("disk.raw"), &t.dev);
    }

    // Checksum from a checksum file (GNU format), and to a plain file target.
    let sums = srv.add(
        "SHA256SUMS",
        format!("{}  other.raw\n{sum}  disk.raw\n", "0".repeat(64)).into_bytes(),
    );
    let file = d.path().join("out.img");
    std::fs::File::create(&file)
        .unwrap()
        .set_len(32 * MIB)
        .unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_rivet"))
        .args([
            "install",
            "--quiet",
            "--image-url",
            &raw_url,
            "--checksum-url",
            &sums,
            "--device",
            file.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    ok(&o);
    assert_same(&d.path().join("disk.raw"), file.to_str().unwrap());
}

#[test]
fn resume_after_disconnects_and_retry_server_errors() {
    if skip() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let srv = ImageServer::start();
    let img = gpt_image(d.path(), "disk.raw", 20, 512);
    let sum = sha256(&img);
    let url = srv.add("disk.raw", img.clone());
    let disk = Loop::new(d.path(), "t.img", 24 * MIB, 512);
    srv.faults(|f| {
        f.statuses.extend([503, 502]);
        f.drop_at
            .extend([3 * MIB + 17, 9 * MIB + 4093, 15 * MIB + 1]);
    });
    let o = install(&url, &sum, &disk.dev, &[]);
    ok(&o);
    assert_same(&d.path().join("disk.raw"), &disk.dev);
    let seen = srv.seen();
    let ranges: Vec<_> = seen.iter().filter_map(|s| s.range.clone()).collect();
    assert_eq!(ranges.len(), 3, "one resume per cut: {seen:?}");
    assert!(
        seen.iter()
            .filter(|s| s.range.is_some())
            .all(|s| s.status == 206 && s.if_range.is_some()),
        "{seen:?}"
    );
    // Resumed from the exact byte received: each resume starts just below its cut (what was
    // in flight when the connection died), so nothing near a whole image is sent twice.
    for (r, cut) in ranges
        .iter()
        .zip([3 * MIB + 17, 9 * MIB + 4093, 15 * MIB + 1])
    {
        let start: u64 = r
            .trim_start_matches("bytes=")
            .trim_end_matches('-')
            .parse()
            .unwrap();
        assert!(
            start <= cut && cut - start < MIB,
            "resumed at {start} after a cut at {cut}"
        );
    }
    let extra = srv.sent_bytes() - img.len() as u64;
    assert!(extra < 3 * MIB, "resume re-sent {extra} bytes");
}

#[test]
fn restart_when_the_server_cannot_resume_or_the_object_changes() {
    if skip() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let srv = ImageServer::start();
    let img = gpt_image(d.path(), "disk.raw", 12, 512);
    let sum = sha256(&img);
    let url = srv.add("disk.raw", img.clone());
    let disk = Loop::new(d.path(), "t.img", 16 * MIB, 512);
    srv.faults(|f| {
        f.no_range = true;
        f.drop_at.push_back(5 * MIB);
    });
    ok(&install(&url, &sum, &disk.dev, &[]));
    assert_same(&d.path().join("disk.raw"), &disk.dev);
    // The object's ETag changes between the cut and the resume: If-Range fails, the server
    // sends the whole object again, and it is restarted, not spliced.
    let srv = ImageServer::start();
    let url = srv.add("disk.raw", img.clone());
    srv.faults(|f| {
        f.drop_at.push_back(4 * MIB);
        f.change_etag_after = Some(1);
    });
    let disk2 = Loop::new(d.path(), "t2.img", 16 * MIB, 512);
    ok(&install(&url, &sum, &disk2.dev, &[]));
    let seen = srv.seen();
    // The cut GET, the resume attempt answered 200 (If-Range failed: a different object), and
    // a fresh GET from byte 0.
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(seen[1].range.is_some() && seen[1].status == 200, "{seen:?}");
    assert!(seen[2].range.is_none() && seen[2].status == 200, "{seen:?}");
    assert_same(&d.path().join("disk.raw"), &disk2.dev);
}

#[test]
fn refusals_leave_no_partition_table() {
    if skip() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let srv = ImageServer::start();
    let img = gpt_image(d.path(), "disk.raw", 16, 512);
    let sum = sha256(&img);
    let url = srv.add("disk.raw", img.clone());

    // Bad checksum: everything streamed, nothing bootable left.
    let disk = Loop::new(d.path(), "a.img", 20 * MIB, 512);
    let e = err(&install(&url, &"0".repeat(64), &disk.dev, &[]));
    assert!(e.contains("checksum mismatch"), "{e}");
    assert_blank(&disk.dev);

    // Image larger than the disk: refused before any write (old data still there).
    let small = Loop::new(d.path(), "small.img", 8 * MIB, 512);
    std::fs::write(&small.file, vec![0x77u8; (8 * MIB) as usize]).unwrap();
    let e = err(&install(&url, &sum, &small.dev, &[]));
    assert!(e.contains("larger than the disk"), "{e}");
    // A compressed image larger than the disk: found while streaming, disk left blank.
    let z = compress("zstd", &img);
    let zurl = srv.add("disk.raw.zst", z.clone());
    let e = err(&install(&zurl, &sha256(&z), &small.dev, &[]));
    assert!(e.contains("larger than the disk"), "{e}");
    assert_blank(&small.dev);

    // A 512-byte-sector GPT image on a 4Kn disk.
    let k4 = Loop::new(d.path(), "4k.img", 20 * MIB, 4096);
    let e = err(&install(&url, &sum, &k4.dev, &[]));
    assert!(
        e.contains("512-byte sectors") && e.contains("4096-byte"),
        "{e}"
    );

    // 404 fails at once (no retries), a corrupt compressed image is reported as such.
    let t0 = std::time::Instant::now();
    let e = err(&install(
        &format!("{}/missing.raw", srv.url),
        &sum,
        &disk.dev,
        &["--retry-interval", "5"],
    ));
    assert!(
        e.contains("HTTP 404") && t0.elapsed() < Duration::from_secs(4),
        "{e}"
    );
    let mut bad = compress("gzip", &img);
    let n = bad.len();
    for b in &mut bad[n / 2..n / 2 + 64] {
        *b ^= 0x5a;
    }
    let burl = srv.add("bad.gz", bad.clone());
    let e = err(&install(&burl, &sha256(&bad), &disk.dev, &[]));
    assert!(e.contains("corrupt") && e.contains("gzip"), "{e}");
    assert_blank(&disk.dev);

    // disk_format that contradicts the bytes.
    let e = err(&install(&url, &sum, &disk.dev, &["--disk-format", "qcow2"]));
    assert!(e.contains("Security") && e.contains("qcow2"), "{e}");
}

#[test]
fn a_disk_with_a_mounted_filesystem_is_refused() {
    if skip() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let srv = ImageServer::start();
    let img = gpt_image(d.path(), "disk.raw", 8, 512);
    let url = srv.add("disk.raw", img.clone());
    let disk = Loop::new(d.path(), "m.img", 16 * MIB, 512);
    assert!(Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&disk.dev)
        .status()
        .unwrap()
        .success());
    let mnt = d.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    if !Command::new("mount")
        .arg(&disk.dev)
        .arg(&mnt)
        .status()
        .unwrap()
        .success()
        && common::skipped("cannot mount ext4 here")
    {
        return;
    }
    let o = install(&url, &sha256(&img), &disk.dev, &[]);
    let _ = Command::new("umount").arg(&mnt).status();
    let e = err(&o);
    assert!(e.contains("mounted"), "{e}");
    let out = Command::new("blkid")
        .args(["-p", "-s", "TYPE", "-o", "value"])
        .arg(&disk.dev)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "ext4",
        "the mounted file system is untouched"
    );
}

#[test]
fn proxies_no_proxy_and_the_download_time_limit() {
    if skip() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let img = gpt_image(d.path(), "disk.raw", 8, 512);
    let sum = sha256(&img);
    // The proxy: the image server answers absolute-form requests for any host. The image's
    // own host does not exist, so only the proxy can have served it.
    let proxy = ImageServer::start();
    proxy.add("disk.raw", img.clone());
    let t = Loop::new(d.path(), "t1.img", 16 * MIB, 512);
    let o = install(
        "http://image-host.invalid:81/disk.raw",
        &sum,
        &t.dev,
        &["--http-proxy", &proxy.url, "--no-proxy", ""],
    );
    ok(&o);
    assert_same(&d.path().join("disk.raw"), &t.dev);
    assert!(proxy.seen().iter().any(|s| s.path == "/disk.raw"));

    // no_proxy: a listed host is reached directly even with a (dead) proxy configured.
    let direct = ImageServer::start();
    let url = direct.add("disk.raw", img.clone());
    let t2 = Loop::new(d.path(), "t2.img", 16 * MIB, 512);
    let o = install(
        &url,
        &sum,
        &t2.dev,
        &[
            "--http-proxy",
            "http://127.0.0.1:9",
            "--no-proxy",
            "127.0.0.1,localhost",
        ],
    );
    ok(&o);
    assert_same(&d.path().join("disk.raw"), &t2.dev);

    // A server that stalls: the download gives up at --max-duration, leaving a blank disk.
    let slow = ImageServer::start();
    let url = slow.add("disk.raw", img.clone());
    slow.faults(|f| f.stall = Some((2 * MIB, Duration::from_secs(30))));
    let t3 = Loop::new(d.path(), "t3.img", 16 * MIB, 512);
    let started = std::time::Instant::now();
    let e = err(&install(&url, &sum, &t3.dev, &["--max-duration", "1.5"]));
    assert!(e.contains("time limit"), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_blank(&t3.dev);
}

#[test]
fn install_with_a_config_drive() {
    if skip() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let img = gpt_image(d.path(), "disk.raw", 24, 512);
    let sum = sha256(&img);
    let srv = ImageServer::start();
    let url = srv.add("disk.raw", img.clone());
    let iso = config_drive_iso(d.path(), r#"{"uuid": "abc"}"#);
    let t = Loop::new(d.path(), "t.img", 128 * MIB, 512);
    let o = install(
        &url,
        &sum,
        &t.dev,
        &["--configdrive", iso.to_str().unwrap()],
    );
    ok(&o);
    // The image's two partitions, then the config drive as the third, in the last 64 MiB.
    let info = Command::new("sgdisk")
        .args(["-i", "3", &t.dev])
        .output()
        .unwrap();
    let info = String::from_utf8_lossy(&info.stdout).to_string();
    let first: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("First sector: "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no partition 3: {info}"));
    assert!(first * 512 >= 60 * MIB, "{info}");
    let id = Command::new("blkid")
        .args([
            "-p",
            "-O",
            &(first * 512).to_string(),
            "-o",
            "export",
            &t.dev,
        ])
        .output()
        .unwrap();
    let id = String::from_utf8_lossy(&id.stdout).to_string();
    assert!(
        id.contains("TYPE=iso9660") && id.contains("LABEL=config-2"),
        "{id}"
    );
    // The image itself is intact before the config drive.
    let disk = std::fs::read(&t.dev).unwrap();
    assert_eq!(
        &disk[MIB as usize..20 * MIB as usize],
        &img[MIB as usize..20 * MIB as usize]
    );

    // A config drive that cannot be read refuses the install before the disk is touched.
    let t2 = Loop::new(d.path(), "t2.img", 64 * MIB, 512);
    let e = err(&install(
        &url,
        &sum,
        &t2.dev,
        &["--configdrive", "/nonexistent/cd.iso"],
    ));
    assert!(e.contains("config drive"), "{e}");
}
