//! Partition nodes as the kernel sees them.
//!
//! The kernel's partition nodes are not trusted to describe the table just written. When it
//! cannot re-read the table (a partition of the old one is still open: an old tenant's md
//! array or LVM group auto-activated, a udev mount), `/dev/sda3` may still be the old third
//! partition. After writing a table the kernel's view is brought in line partition by
//! partition (BLKPG) where it refused the re-read, and every use of a partition node first
//! checks its start and size against the table; a node that does not match is never used, the
//! partition is reached through a byte window of the disk instead.

use std::fs::File;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

/// Whether `path` is a block device; `false` for anything else (or what cannot be read).
pub fn is_block(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_block_device())
}

/// The kernel's name for partition `number` of `disk` (`/dev/sda3`, `/dev/nvme0n1p3`,
/// `/dev/loop0p3`). Only a name: I/O goes through [`partition_io`].
pub fn partition_name(disk: &Path, number: u32) -> String {
    let d = disk.display().to_string();
    if d.ends_with(|c: char| c.is_ascii_digit()) {
        format!("{d}p{number}")
    } else {
        format!("{d}{number}")
    }
}

/// How I/O reaches a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartitionIo {
    /// The kernel's node, checked to describe exactly the table's partition.
    Node(std::path::PathBuf),
    /// Bytes `[start, start+len)` of the disk: no node, or one that describes something else.
    Window { start: u64, len: u64 },
}

/// A partition the kernel has registered: number, start and size in bytes (sysfs counts
/// 512-byte units whatever the sector size).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Registered {
    pub number: u32,
    pub start: u64,
    pub len: u64,
}

fn sys_u64(p: &Path) -> Option<u64> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

/// The partitions the kernel has registered for `disk` (empty for a regular file).
pub fn registered(disk: &Path) -> Vec<Registered> {
    let Some(name) = std::fs::canonicalize(disk)
        .ok()
        .and_then(|c| c.file_name().map(|n| n.to_string_lossy().into_owned()))
    else {
        return Vec::new();
    };
    let dir = Path::new("/sys/class/block").join(&name);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut out: Vec<Registered> = entries
        .flatten()
        .filter_map(|e| {
            let p = e.path();
            let number = u32::try_from(sys_u64(&p.join("partition"))?).ok()?;
            Some(Registered {
                number,
                start: sys_u64(&p.join("start"))?.checked_mul(512)?,
                len: sys_u64(&p.join("size"))?.checked_mul(512)?,
            })
        })
        .collect();
    out.sort_by_key(|r| r.number);
    out
}

/// How to reach partition `number` (bytes `[start, start+len)` in the table) of `disk`: its
/// node when the kernel registered exactly that partition, else a byte window (logged when a
/// node exists but describes something else).
pub fn partition_io(disk: &Path, number: u32, start: u64, len: u64) -> PartitionIo {
    let node = partition_name(disk, number);
    let window = PartitionIo::Window { start, len };
    if !is_block(Path::new(&node)) {
        return window;
    }
    match registered(disk).into_iter().find(|r| r.number == number) {
        Some(r) if r.start == start && r.len == len => PartitionIo::Node(node.into()),
        Some(r) => {
            tracing::warn!(
                disk = %disk.display(), partition = number, node = %node,
                kernel_start = r.start, kernel_len = r.len, table_start = start, table_len = len,
                "the kernel's partition node describes another partition than the table (stale); using the disk's byte range instead"
            );
            window
        }
        None => {
            tracing::warn!(disk = %disk.display(), partition = number, node = %node,
                "a partition node the kernel did not register for this disk; using the disk's byte range instead");
            window
        }
    }
}

/// After writing a table (`parts`: number, start, length in bytes) through `f`: ask the kernel
/// to re-read it. When it cannot, its old partitions are stale: those that are not in the new
/// table are dropped (BLKPG; a busy one stays, and [`partition_io`] will not use it), and on a
/// disk that scans partitions but refused because one is busy, the new ones are registered.
/// A disk without partition scanning (a loop device here) gets none registered: partitions
/// registered by hand (partprobe, partx) outlive the device, and the next user inherits them.
pub fn refresh_partitions(f: &File, disk: &Path, parts: &[(u32, u64, u64)]) {
    use crate::system::blockdev::{partition_op, reread_partitions, PartitionOp};
    let busy = match reread_partitions(f) {
        Ok(()) => return,
        Err(e) => e.raw_os_error() == Some(libc::EBUSY),
    };
    let stale: Vec<Registered> = registered(disk)
        .into_iter()
        .filter(|r| !parts.contains(&(r.number, r.start, r.len)))
        .collect();
    if !busy && stale.is_empty() {
        return;
    }
    tracing::warn!(disk = %disk.display(), busy, stale = stale.len(),
        "the kernel did not re-read the partition table; updating its partitions one by one");
    let mut kept = Vec::new();
    for r in &stale {
        match partition_op(f, PartitionOp::Delete, r.number, 0, 0) {
            Ok(()) => {
                tracing::info!(disk = %disk.display(), partition = r.number, "stale partition dropped")
            }
            Err(e) => {
                kept.push(r.number);
                tracing::warn!(disk = %disk.display(), partition = r.number, error = %e,
                    "a stale partition stays registered (busy); it will not be used");
            }
        }
    }
    if !busy {
        return;
    }
    let present: Vec<u32> = registered(disk).iter().map(|r| r.number).collect();
    for &(n, s, l) in parts
        .iter()
        .filter(|(n, _, _)| !present.contains(n) && !kept.contains(n))
    {
        if let Err(e) = partition_op(f, PartitionOp::Add, n, s, l) {
            tracing::warn!(disk = %disk.display(), partition = n, error = %e, "cannot register the partition");
        }
    }
}

/// Stop what holds the old table before a new one is written, as IPA's cleaning does: md
/// arrays built on the disk or its partitions (`mdadm --stop`), LVM volume groups on them
/// (`vgchange -an`). Returns what was done; what cannot be done is logged, and the exclusive
/// open that follows refuses the disk with the reason.
pub fn release_holders(disk: &Path) -> Vec<String> {
    use crate::system::tools::run_capture;
    let Some(name) = std::fs::canonicalize(disk)
        .ok()
        .and_then(|c| c.file_name().map(|n| n.to_string_lossy().into_owned()))
    else {
        return Vec::new();
    };
    let base = Path::new("/sys/class/block").join(&name);
    let mut holders: Vec<String> = Vec::new();
    let mut add = |dir: &Path| {
        if let Ok(rd) = std::fs::read_dir(dir.join("holders")) {
            holders.extend(
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned()),
            );
        }
    };
    add(&base);
    for r in registered(disk) {
        add(&base.join(format!(
            "{name}{}{}",
            if name.ends_with(|c: char| c.is_ascii_digit()) {
                "p"
            } else {
                ""
            },
            r.number
        )));
    }
    holders.sort();
    holders.dedup();
    let t = std::time::Duration::from_secs(60);
    let mut done = Vec::new();
    for h in holders {
        let (tool, args): (&str, Vec<String>) = if h.starts_with("md") {
            ("mdadm", vec!["--stop".into(), format!("/dev/{h}")])
        } else if let Some(vg) = lvm_group(&h) {
            ("vgchange", vec!["-an".into(), vg])
        } else {
            tracing::warn!(disk = %disk.display(), holder = %h, "held by a device Rivet does not know how to release");
            continue;
        };
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        match run_capture(tool, &argv, t, 1 << 14) {
            Ok((true, _)) => {
                let what = format!("{tool} {}", args.join(" "));
                tracing::info!(disk = %disk.display(), holder = %h, "released: {what}");
                done.push(what);
            }
            Ok((false, out)) => tracing::warn!(disk = %disk.display(), holder = %h, tool,
                output = %String::from_utf8_lossy(&out).trim(), "could not release"),
            Err(e) => {
                tracing::warn!(disk = %disk.display(), holder = %h, error = %e, "could not release")
            }
        }
    }
    done
}

/// The LVM volume group of device-mapper device `dm` (`dm-3`), from its dm name
/// (`vg--name-lv`: dashes doubled inside names) when its uuid says LVM.
fn lvm_group(dm: &str) -> Option<String> {
    let dir = Path::new("/sys/class/block").join(dm).join("dm");
    let uuid = std::fs::read_to_string(dir.join("uuid")).ok()?;
    if !uuid.starts_with("LVM-") {
        return None;
    }
    vg_of_dm_name(std::fs::read_to_string(dir.join("name")).ok()?.trim())
}

fn vg_of_dm_name(name: &str) -> Option<String> {
    let b = name.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'-' {
            if b.get(i + 1) == Some(&b'-') {
                i += 2;
                continue;
            }
            return Some(name[..i].replace("--", "-")).filter(|v| !v.is_empty());
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_names_and_lvm_groups() {
        assert_eq!(partition_name(Path::new("/dev/sda"), 3), "/dev/sda3");
        assert_eq!(
            partition_name(Path::new("/dev/nvme0n1"), 3),
            "/dev/nvme0n1p3"
        );
        assert_eq!(partition_name(Path::new("/dev/loop7"), 1), "/dev/loop7p1");
        assert_eq!(vg_of_dm_name("vg0-root").as_deref(), Some("vg0"));
        assert_eq!(vg_of_dm_name("my--vg-lv--data").as_deref(), Some("my-vg"));
        assert_eq!(vg_of_dm_name("nodash"), None);
        // A regular file has no registered partitions, and is reached by byte ranges.
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("disk");
        std::fs::write(&f, [0u8; 512]).unwrap();
        assert!(registered(&f).is_empty());
        assert_eq!(
            partition_io(&f, 1, 1 << 20, 4 << 20),
            PartitionIo::Window {
                start: 1 << 20,
                len: 4 << 20
            }
        );
    }
}
