//! The guard against erasing a volume other hosts may share: a SAN LUN formatted VMFS, GPFS,
//! GFS2 or OCFS2 can be presented to a bare-metal node by mistake, and an erase of it wipes
//! the cluster that uses it (IPA's `_check_for_special_partitions_filesystems` and its
//! `ProtectedDeviceError`). The erase steps ask [`find`] first, unless the operator turned the
//! guard off (`ipa-guard-special-filesystems=false`, or the node's
//! `wipe_special_filesystems: false`).
//!
//! Looked at: the partition types of the disk's table (GPT type GUIDs, MBR type bytes) and
//! the file-system signatures libblkid finds on the whole disk and in each partition. (IPA
//! compares lsblk's GUIDs case-sensitively with upper-case constants and never asks lsblk
//! for the file-system type, so its GPT and GFS2 checks do not fire; these do.)

use std::path::Path;

use super::device::DeviceError;
use crate::hardware::probe;

/// GPT partition type GUIDs (upper case, as `table::read` gives them) of shared volumes.
const GPT_TYPES: &[(&str, &str)] = &[
    (
        "37AFFC90-EF7D-4E96-91C3-2D7AE055B174",
        "an IBM GPFS partition",
    ),
    (
        "AA31E02A-400F-11DB-9590-000C2911D1B8",
        "a VMware VMFS partition",
    ),
];
/// MBR partition type bytes (two hex digits, upper case).
const MBR_TYPES: &[(&str, &str)] = &[("FB", "a VMware VMFS partition")];
/// libblkid's TYPE values of cluster file systems.
const FS_TYPES: &[(&str, &str)] = &[
    ("VMFS", "a VMware VMFS file system"),
    ("VMFS_volume_member", "a VMware VMFS volume"),
    ("gfs2", "a GFS2 cluster file system"),
    ("gfs", "a GFS cluster file system"),
    ("ocfs2", "an OCFS2 cluster file system"),
];

/// What was found, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub what: &'static str,
    /// "the whole disk" or "partition N".
    pub place: String,
}

#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error(
        "{disk} holds {what} ({place}): a volume other hosts may share is not erased. Detach it \
         from this node, or set \"wipe_special_filesystems\": false in the node's driver_info \
         (or boot with ipa-guard-special-filesystems=false) to erase it anyway"
    )]
    Protected {
        disk: String,
        what: &'static str,
        place: String,
    },
    #[error(transparent)]
    Device(#[from] DeviceError),
}

fn fs_kind(fs: Option<&str>) -> Option<&'static str> {
    let fs = fs?;
    FS_TYPES.iter().find(|(t, _)| *t == fs).map(|(_, w)| *w)
}

/// The first shared-volume sign on `path` (a disk or an image file), if any.
pub fn find(path: &Path) -> Result<Option<Found>, GuardError> {
    // The disk's own superblock: a LUN formatted whole, without a table.
    let whole = probe::probe(path).ok();
    if let Some(what) = fs_kind(whole.as_ref().and_then(|p| p.fs_type.as_deref())) {
        return Ok(Some(Found {
            what,
            place: "the whole disk".into(),
        }));
    }
    let parts = super::table::read(&mut super::device::open_read(path)?);
    for p in &parts {
        let by_type = GPT_TYPES
            .iter()
            .chain(MBR_TYPES)
            .find(|(t, _)| p.type_id.eq_ignore_ascii_case(t))
            .map(|(_, w)| *w);
        let by_fs = || {
            probe::probe_at(path, p.start, p.len)
                .ok()
                .and_then(|pr| fs_kind(pr.fs_type.as_deref()))
        };
        if let Some(what) = by_type.or_else(by_fs) {
            return Ok(Some(Found {
                what,
                place: format!("partition {}", p.number),
            }));
        }
    }
    Ok(None)
}

/// Refuse `path` when it holds a shared volume.
pub fn check(path: &Path) -> Result<(), GuardError> {
    match find(path)? {
        None => Ok(()),
        Some(f) => Err(GuardError::Protected {
            disk: path.display().to_string(),
            what: f.what,
            place: f.place,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;
    use std::process::{Command, Stdio};

    fn have(tool: &str) -> bool {
        crate::system::tools::which(tool).is_some()
    }

    fn image(dir: &Path, name: &str, mib: u64) -> std::path::PathBuf {
        let p = dir.join(name);
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(mib << 20).unwrap();
        p
    }

    fn run(cmd: &str, args: &[&str]) {
        let ok = Command::new(cmd)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success();
        assert!(ok, "{cmd} {args:?}");
    }

    #[test]
    fn shared_volumes_are_found_and_ordinary_ones_are_not() {
        if !(have("sgdisk") && have("sfdisk") && have("mkfs.ext4"))
            && crate::test_support::skipped("sgdisk, sfdisk or mkfs.ext4 missing")
        {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        // GPT with a VMFS partition (second) behind an ordinary one.
        let gpt = image(dir.path(), "gpt", 64);
        let g = gpt.to_str().unwrap();
        run("sgdisk", &["-n", "1:2048:+8M", "-t", "1:8300", g]);
        run(
            "sgdisk",
            &[
                "-n",
                "2:0:+8M",
                "-t",
                "2:AA31E02A-400F-11DB-9590-000C2911D1B8",
                g,
            ],
        );
        let f = find(&gpt).unwrap().unwrap();
        assert_eq!(
            (f.what, f.place.as_str()),
            ("a VMware VMFS partition", "partition 2")
        );
        let e = check(&gpt).unwrap_err().to_string();
        assert!(
            e.contains("holds a VMware VMFS partition (partition 2)"),
            "{e}"
        );
        assert!(e.contains("wipe_special_filesystems"), "{e}");
        // GPFS by its GPT type.
        run(
            "sgdisk",
            &["-t", "2:37AFFC90-EF7D-4E96-91C3-2D7AE055B174", g],
        );
        assert_eq!(find(&gpt).unwrap().unwrap().what, "an IBM GPFS partition");
        // MBR type 0xfb.
        let mbr = image(dir.path(), "mbr", 64);
        let mut c = Command::new("sfdisk")
            .arg(&mbr)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::io::Write::write_all(
            c.stdin.as_mut().unwrap(),
            b"label: dos\n2048,16384,83\n,16384,fb\n",
        )
        .unwrap();
        assert!(c.wait().unwrap().success());
        assert_eq!(find(&mbr).unwrap().unwrap().place, "partition 2");
        // An ordinary disk: ext4 in a partition, and a blank one.
        let plain = image(dir.path(), "plain", 64);
        let p = plain.to_str().unwrap();
        run("sgdisk", &["-n", "1:2048:+16M", "-t", "1:8300", p]);
        assert_eq!(find(&plain).unwrap(), None);
        let blank = image(dir.path(), "blank", 8);
        assert_eq!(find(&blank).unwrap(), None);
    }

    #[test]
    fn cluster_file_systems_inside_partitions_and_whole_disks() {
        if !(have("mkfs.gfs2") && have("sgdisk"))
            && crate::test_support::skipped("mkfs.gfs2 (gfs2-utils) or sgdisk missing")
        {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let whole = image(dir.path(), "whole", 64);
        run(
            "mkfs.gfs2",
            &[
                "-O",
                "-p",
                "lock_nolock",
                "-j",
                "1",
                whole.to_str().unwrap(),
            ],
        );
        assert_eq!(
            find(&whole).unwrap(),
            Some(Found {
                what: "a GFS2 cluster file system",
                place: "the whole disk".into()
            })
        );
        // A fake VMFS volume signature (libblkid's: magic 0xc001d00d 1 MiB into the volume)
        // in partition 1 of an otherwise ordinary GPT disk (type "Linux").
        let vm = image(dir.path(), "vmfs", 64);
        run(
            "sgdisk",
            &["-n", "1:2048:+32M", "-t", "1:8300", vm.to_str().unwrap()],
        );
        let f = std::fs::OpenOptions::new().write(true).open(&vm).unwrap();
        f.write_all_at(&0xc001_d00d_u32.to_le_bytes(), (2048 * 512) + (1 << 20))
            .unwrap();
        drop(f);
        let found = find(&vm).unwrap();
        assert!(
            matches!(&found, Some(f) if f.place == "partition 1" && f.what.contains("VMFS")),
            "{found:?}"
        );
    }
}
