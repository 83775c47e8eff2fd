//! Metadata erase (`erase_devices_metadata`): make a disk look blank to every tool, quickly.
//!
//! The partition table is read first (GPT, else MBR) so that each partition's first and last
//! MiB can be zeroed: that is where file systems (ext*, xfs, vfat, btrfs, swap, LVM) and md
//! superblocks (0.90/1.0 at the end, 1.1/1.2 at the start) keep their signatures. Then the
//! disk's own first and last MiB go (MBR, primary and backup GPT). The result is checked with
//! libblkid: a signature still found is an error, never a silent success.

use std::path::Path;

use super::device::{Device, DeviceError};
use crate::hardware::probe;

const MIB: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum WipeError {
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error("{0} still carries {1} after the erase")]
    NotBlank(String, String),
}

/// Zero the first and last MiB of `[start, start+len)`, clipped to the device.
fn zero_ends(dev: &Device, start: u64, len: u64) -> Result<(), WipeError> {
    let end = start.saturating_add(len).min(dev.size());
    if start >= end {
        return Ok(());
    }
    dev.zero(start, MIB.min(end - start))?;
    if end - start > MIB {
        let tail = (end - MIB).max(start + MIB);
        dev.zero(tail, end - tail)?;
    }
    Ok(())
}

/// Erase the metadata of `dev` (a whole disk or an image file). Returns what was found on it.
pub fn erase_metadata(path: &Path) -> Result<Vec<String>, WipeError> {
    let name = path.display().to_string();
    // Opened before looking: a disk in use is refused with the reason.
    let dev = Device::open(path)?;
    let before = probe::probe(path).ok();
    let mut found: Vec<String> = before
        .iter()
        .flat_map(|p| [p.pt_type.clone(), p.fs_type.clone()])
        .flatten()
        .collect();
    let parts = super::table::read(&mut dev.file()?);
    if !parts.is_empty() {
        found.push(format!("{} partitions", parts.len()));
    }
    for p in &parts {
        zero_ends(&dev, p.start, p.len)?;
    }
    zero_ends(&dev, 0, dev.size())?;
    dev.sync()?;
    super::table::refresh(&dev);
    drop(dev);
    let after = probe::probe(path).map_err(|e| WipeError::NotBlank(name.clone(), e.to_string()))?;
    if let Some(left) = after.pt_type.or(after.fs_type) {
        return Err(WipeError::NotBlank(name, left));
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::os::unix::fs::FileExt;
    use std::process::{Command, Stdio};

    #[test]
    fn erases_partition_table_and_file_systems_inside_partitions() {
        let have = |t: &str| crate::system::tools::which(t).is_some();
        if !(have("sgdisk") && have("mkfs.ext4") && have("blkid"))
            && crate::test_support::skipped("sgdisk, mkfs.ext4 or blkid missing")
        {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("disk.img");
        File::create(&p).unwrap().set_len(64 << 20).unwrap();
        let ok = |c: &mut Command| {
            c.stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .unwrap()
                .success()
        };
        assert!(ok(Command::new("sgdisk")
            .args(["-o", "-n", "1:2048:+16M", "-n", "2:0:0"])
            .arg(&p)));
        // ext4 inside partition 2 (starts at sector 2048 + 32768).
        let off = (2048 + 32768) * 512u64;
        assert!(ok(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-E", &format!("offset={off}")])
            .arg(&p)
            .arg("16M")));
        let magic_at = off + 0x438;
        let mut m = [0u8; 2];
        File::open(&p)
            .unwrap()
            .read_exact_at(&mut m, magic_at)
            .unwrap();
        assert_eq!(m, [0x53, 0xef], "ext4 magic present before");

        let found = erase_metadata(&p).unwrap();
        assert!(found.iter().any(|f| f == "gpt"), "{found:?}");
        let out = Command::new("blkid")
            .args(["-p", "-o", "export"])
            .arg(&p)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(2),
            "blkid finds: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        File::open(&p)
            .unwrap()
            .read_exact_at(&mut m, magic_at)
            .unwrap();
        assert_eq!(m, [0, 0], "ext4 superblock inside the partition erased");
        let mut tail = vec![0u8; MIB as usize];
        File::open(&p)
            .unwrap()
            .read_exact_at(&mut tail, (64 << 20) - MIB)
            .unwrap();
        assert!(tail.iter().all(|b| *b == 0), "backup GPT erased");
    }
}
