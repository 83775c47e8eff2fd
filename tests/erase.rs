//! The erase steps' disk side on loop devices the test makes: four disks erased side by side
//! (`disk_erasure_concurrency` 4) with one that cannot be written failing alone, and the
//! express erase of a disk that cannot discard (the metadata wipe) beside one that can. The
//! disks are read back, not taken at the erase's word. (The steps' rules, read-only disks and
//! shared volumes, are driven through the agent's API in tests/flows.rs.)
#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use common::install_util::{skip, MIB};
use common::loopdev::Loop;
use rivet::disk::erase::{erase, erase_many, Policy};

/// Overwrite only: loop devices have no secure erase to try.
fn overwrite() -> Policy {
    Policy {
        nvme_secure_erase: false,
        ata_secure_erase: false,
        random_passes: 1,
        final_zeros: true,
        ..Policy::default()
    }
}

fn fill(dev: &str, len: u64) {
    let f = std::fs::OpenOptions::new().write(true).open(dev).unwrap();
    let chunk = vec![0xa5u8; MIB as usize];
    for off in (0..len).step_by(MIB as usize) {
        f.write_all_at(&chunk, off).unwrap();
    }
    f.sync_all().unwrap();
}

fn all_zero(dev: &str) -> bool {
    std::fs::read(dev).unwrap().iter().all(|b| *b == 0)
}

fn blockdev(flag: &str, dev: &str) {
    assert!(Command::new("blockdev")
        .args([flag, dev])
        .status()
        .unwrap()
        .success());
}

#[test]
fn four_disks_side_by_side_and_one_failing_alone() {
    if skip() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let size = 96 * MIB;
    let disks: Vec<Loop> = (0..4)
        .map(|i| Loop::new(d.path(), &format!("d{i}.img"), size, 512))
        .collect();
    let paths: Vec<PathBuf> = disks.iter().map(|l| PathBuf::from(&l.dev)).collect();
    let p = overwrite();

    // The four disks one after another, then side by side, for the figure.
    let mut took = Vec::new();
    for concurrency in [1, 4] {
        for l in &disks {
            fill(&l.dev, size);
        }
        let t = Instant::now();
        let out = erase_many(&paths, &p, concurrency);
        took.push(t.elapsed().as_secs_f64());
        assert!(out.iter().all(|(_, r)| r.is_ok()), "{out:?}");
        assert!(disks.iter().all(|l| all_zero(&l.dev)));
    }

    for l in &disks {
        fill(&l.dev, size);
    }
    // The fourth cannot be written (read-only): its error is its own.
    blockdev("--setro", &disks[3].dev);
    let out = erase_many(&paths, &p, 4);
    blockdev("--setrw", &disks[3].dev);
    assert_eq!(out.len(), 4);
    for (i, (path, r)) in out.iter().enumerate() {
        assert_eq!(path, &paths[i], "results in the order of the disks");
        if i < 3 {
            let done = r.as_ref().unwrap();
            assert_eq!(done.method, "overwrite");
            assert!(all_zero(&disks[i].dev), "{} not erased", disks[i].dev);
        } else {
            let e = r.as_ref().unwrap_err().to_string();
            assert!(e.contains(&disks[3].dev), "{e}");
        }
    }
    assert!(!all_zero(&disks[3].dev), "the read-only disk was written");
    // Side by side: every erase began before any ended.
    let done: Vec<_> = out[..3].iter().map(|(_, r)| r.as_ref().unwrap()).collect();
    let last_start = done.iter().map(|d| d.started).fold(f64::MIN, f64::max);
    let first_end = done.iter().map(|d| d.finished).fold(f64::MAX, f64::min);
    assert!(
        last_start < first_end,
        "not side by side: last start {last_start}, first end {first_end}"
    );
    figure!(
        "erase: four {} MiB loop disks overwritten and verified one after another in {:.2} s, side by side (disk_erasure_concurrency 4) in {:.2} s",
        size / MIB,
        took[0],
        took[1]
    );
}

/// A ramfs mount: its files cannot have holes punched, so the loop driver offers no discard
/// over them (a disk that cannot discard, as a spinning one), and nothing of the kernel's
/// state outlives the test. Unmounted when dropped.
struct Ramfs(tempfile::TempDir);

impl Ramfs {
    fn new() -> Ramfs {
        let d = tempfile::tempdir().unwrap();
        assert!(Command::new("mount")
            .args(["-t", "ramfs", "ramfs"])
            .arg(d.path())
            .status()
            .unwrap()
            .success());
        Ramfs(d)
    }
}

impl Drop for Ramfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

#[test]
fn express_erase_discards_or_falls_back_to_the_metadata_wipe() {
    if skip() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    // Declared before the loop devices: dropped (unmounted) after they are detached.
    let ram = Ramfs::new();
    let express = Policy {
        express: true,
        ..overwrite()
    };
    for discards in [false, true] {
        let dir = if discards { d.path() } else { ram.0.path() };
        let l = Loop::new(dir, &format!("x{discards}.img"), 64 * MIB, 512);
        let knob = format!(
            "/sys/block/{}/queue/discard_max_bytes",
            l.dev.trim_start_matches("/dev/")
        );
        let can = std::fs::read_to_string(&knob).unwrap().trim() != "0";
        assert_eq!(can, discards, "{}: discard_max_bytes", l.dev);
        fill(&l.dev, 64 * MIB);
        assert!(Command::new("mkfs.ext4")
            .args(["-q", "-F", &l.dev])
            .status()
            .unwrap()
            .success());
        let done = erase(std::path::Path::new(&l.dev), &express).unwrap();
        let blkid = Command::new("blkid").args(["-p", &l.dev]).output().unwrap();
        assert_eq!(
            blkid.status.code(),
            Some(2),
            "blkid still finds: {}",
            String::from_utf8_lossy(&blkid.stdout)
        );
        if discards {
            assert!(done.method.ends_with("discard"), "{done:?}");
            assert!(done.samples_checked > 0 && all_zero(&l.dev), "{done:?}");
        } else {
            assert_eq!(done.method, "metadata wipe", "{done:?}");
            // Only the metadata: the data between stays (that is what express means).
            assert!(!all_zero(&l.dev));
        }
    }
}
