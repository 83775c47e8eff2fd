//! Block devices from sysfs, in the inventory's shape. (Root-device selection, hints, by-path
//! and libblkid probing build on this list.)

use std::fs;
use std::path::Path;

use serde::Serialize;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Disk {
    pub name: String,
    pub model: Option<String>,
    pub size: u64,
    pub rotational: bool,
    pub wwn: Option<String>,
    pub serial: Option<String>,
    pub vendor: Option<String>,
    pub wwn_with_extension: Option<String>,
    pub wwn_vendor_extension: Option<String>,
    pub hctl: Option<String>,
    pub by_path: Option<String>,
    pub logical_sectors: u64,
    pub physical_sectors: u64,
    pub tran: Option<String>,
}

fn read_trim(p: &Path) -> Option<String> {
    fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

fn read_u64(p: &Path) -> Option<u64> {
    read_trim(p).and_then(|s| s.parse().ok())
}

/// Whole disks worth reporting: not RAM, zram, floppy, optical or (unless allowed) loop
/// devices, and not empty.
pub fn list(sys_block: &Path, allow_loop: bool) -> Vec<Disk> {
    let Ok(entries) = fs::read_dir(sys_block) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut out = Vec::new();
    for name in names {
        let skip = ["ram", "zram", "fd", "sr", "dm-", "nbd"]
            .iter()
            .any(|p| name.starts_with(p))
            || (name.starts_with("loop") && !allow_loop);
        if skip {
            continue;
        }
        let d = sys_block.join(&name);
        let size = read_u64(&d.join("size")).unwrap_or(0) * 512;
        if size == 0 {
            continue;
        }
        let dev = d.join("device");
        let wwid = read_trim(&dev.join("wwid")).or_else(|| read_trim(&d.join("wwid")));
        out.push(Disk {
            name: format!("/dev/{name}"),
            model: read_trim(&dev.join("model")),
            size,
            rotational: read_trim(&d.join("queue/rotational")).as_deref() == Some("1"),
            wwn: wwid.clone(),
            serial: read_trim(&dev.join("serial")).or_else(|| read_trim(&d.join("serial"))),
            vendor: read_trim(&dev.join("vendor")),
            wwn_with_extension: wwid,
            wwn_vendor_extension: None,
            hctl: fs::read_dir(dev.join("scsi_device"))
                .ok()
                .and_then(|mut e| e.next())
                .and_then(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned()),
            by_path: None,
            logical_sectors: read_u64(&d.join("queue/logical_block_size")).unwrap_or(512),
            physical_sectors: read_u64(&d.join("queue/physical_block_size")).unwrap_or(512),
            tran: None,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_sysfs_disks() {
        let d = tempfile::tempdir().unwrap();
        let mk = |name: &str, sectors: u64, lbs: u64| {
            let p = d.path().join(name);
            fs::create_dir_all(p.join("queue")).unwrap();
            fs::create_dir_all(p.join("device")).unwrap();
            fs::write(p.join("size"), format!("{sectors}\n")).unwrap();
            fs::write(p.join("queue/logical_block_size"), format!("{lbs}\n")).unwrap();
            fs::write(p.join("queue/physical_block_size"), format!("{lbs}\n")).unwrap();
            fs::write(p.join("queue/rotational"), "0\n").unwrap();
            fs::write(p.join("device/model"), "QEMU HARDDISK   \n").unwrap();
        };
        mk("sda", 2097152, 512);
        mk("nvme0n1", 4194304, 4096);
        mk("loop0", 2048, 512);
        mk("ram0", 2048, 512);
        mk("sdb", 0, 512);
        let l = list(d.path(), false);
        let names: Vec<&str> = l.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, vec!["/dev/nvme0n1", "/dev/sda"]);
        assert_eq!(l[0].logical_sectors, 4096);
        assert_eq!(l[1].size, 1 << 30);
        assert_eq!(l[1].model.as_deref(), Some("QEMU HARDDISK"));
        assert_eq!(list(d.path(), true).len(), 3);
    }
}
