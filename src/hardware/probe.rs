//! Filesystem and partition-table probing with libblkid (linked statically): what is on a
//! disk or partition (TYPE, UUID, LABEL, PTTYPE, PTUUID, PART_ENTRY_UUID), read from the
//! device itself (`blkid -p` semantics, no cache, no udev).
//!
//! This is the crate's only FFI. The wrapper owns the probe handle and frees it on drop;
//! every value is copied out before the handle goes away.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use serde::Serialize;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Probe {
    /// Filesystem or other superblock type (`ext4`, `vfat`, `iso9660`, `swap`, …).
    pub fs_type: Option<String>,
    pub uuid: Option<String>,
    pub label: Option<String>,
    /// Partition table type of a whole disk (`gpt`, `dos`).
    pub pt_type: Option<String>,
    /// Disk identifier of that table (GPT disk GUID, MBR signature).
    pub pt_uuid: Option<String>,
    /// For a partition: its PARTUUID.
    pub part_uuid: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("{0}: cannot open for probing")]
    Open(String),
    #[error("{0}: libblkid found conflicting signatures (ambivalent result); wipe or inspect the device")]
    Ambivalent(String),
    #[error("{0}: libblkid probing failed")]
    Failed(String),
}

struct Handle(blkid_sys::blkid_probe);

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: `self.0` came from a successful blkid_new_probe_from_filename (non-null, checked
        // in `probe`) and is freed exactly once, here.
        unsafe { blkid_sys::blkid_free_probe(self.0) }
    }
}

impl Handle {
    fn value(&self, name: &CStr) -> Option<String> {
        let mut data: *const libc::c_char = std::ptr::null();
        let mut len: usize = 0;
        // SAFETY: the handle is valid for the lifetime of `self`; `name` is NUL-terminated;
        // `data`/`len` are valid out-pointers. On success libblkid points `data` at a
        // NUL-terminated string owned by the probe, which we copy before returning.
        let rc = unsafe {
            blkid_sys::blkid_probe_lookup_value(self.0, name.as_ptr(), &mut data, &mut len)
        };
        if rc != 0 || data.is_null() {
            return None;
        }
        // SAFETY: non-null and NUL-terminated per libblkid's contract (see above); still owned
        // by the live probe handle.
        let s = unsafe { CStr::from_ptr(data) }
            .to_string_lossy()
            .into_owned();
        (!s.is_empty()).then_some(s)
    }
}

/// Probe a block device or image file.
pub fn probe(path: &Path) -> Result<Probe, ProbeError> {
    let shown = path.display().to_string();
    let c =
        CString::new(path.as_os_str().as_bytes()).map_err(|_| ProbeError::Open(shown.clone()))?;
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    let raw = unsafe { blkid_sys::blkid_new_probe_from_filename(c.as_ptr()) };
    if raw.is_null() {
        return Err(ProbeError::Open(shown));
    }
    finish(Handle(raw), shown)
}

/// Probe the byte range `[offset, offset+size)` of a disk: a partition's file system, read
/// through the whole disk (no partition device node needed).
pub fn probe_at(path: &Path, offset: u64, size: u64) -> Result<Probe, ProbeError> {
    use std::os::unix::io::AsRawFd;
    let shown = format!("{}@{offset}", path.display());
    let f = std::fs::File::open(path).map_err(|_| ProbeError::Open(shown.clone()))?;
    let (off, len) = (
        i64::try_from(offset).map_err(|_| ProbeError::Open(shown.clone()))?,
        i64::try_from(size).map_err(|_| ProbeError::Open(shown.clone()))?,
    );
    // SAFETY: blkid_new_probe takes no argument and returns an owned handle or null.
    let raw = unsafe { blkid_sys::blkid_new_probe() };
    if raw.is_null() {
        return Err(ProbeError::Open(shown));
    }
    let h = Handle(raw);
    // SAFETY: valid probe handle; the fd stays open (held by `f`) until `finish` returned,
    // as libblkid does not take ownership of it.
    if unsafe { blkid_sys::blkid_probe_set_device(h.0, f.as_raw_fd(), off, len) } != 0 {
        return Err(ProbeError::Open(shown));
    }
    let r = finish(h, shown);
    drop(f);
    r
}

fn finish(h: Handle, shown: String) -> Result<Probe, ProbeError> {
    // SAFETY: `h.0` is a valid probe; these calls only set flags on it.
    let rc = unsafe {
        blkid_sys::blkid_probe_enable_superblocks(h.0, 1);
        blkid_sys::blkid_probe_set_superblocks_flags(
            h.0,
            (blkid_sys::BLKID_SUBLKS_LABEL
                | blkid_sys::BLKID_SUBLKS_UUID
                | blkid_sys::BLKID_SUBLKS_TYPE) as libc::c_int,
        );
        blkid_sys::blkid_probe_enable_partitions(h.0, 1);
        blkid_sys::blkid_probe_set_partitions_flags(
            h.0,
            blkid_sys::BLKID_PARTS_ENTRY_DETAILS as libc::c_int,
        );
        blkid_sys::blkid_do_safeprobe(h.0)
    };
    match rc {
        0 | 1 => {}
        -2 => return Err(ProbeError::Ambivalent(shown)),
        _ => return Err(ProbeError::Failed(shown)),
    }
    let v = |n: &'static CStr| h.value(n);
    Ok(Probe {
        fs_type: v(c"TYPE"),
        uuid: v(c"UUID"),
        label: v(c"LABEL"),
        pt_type: v(c"PTTYPE"),
        pt_uuid: v(c"PTUUID"),
        part_uuid: v(c"PART_ENTRY_UUID"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn have(tool: &str) -> bool {
        crate::system::tools::which(tool).is_some()
    }

    #[test]
    fn probes_filesystems_and_partition_tables_like_blkid() {
        if !(have("mkfs.ext4") && have("sgdisk") && have("blkid"))
            && crate::test_support::skipped("e2fsprogs, gdisk or util-linux missing")
        {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let fs = d.path().join("fs.img");
        std::fs::File::create(&fs)
            .unwrap()
            .set_len(16 << 20)
            .unwrap();
        let uuid = "2f6c1b0e-9a0e-4c4b-8d2f-8b0a6f0d1c3e";
        let st = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "rootfs", "-U", uuid])
            .arg(&fs)
            .status()
            .unwrap();
        assert!(st.success());
        let p = probe(&fs).unwrap();
        assert_eq!(p.fs_type.as_deref(), Some("ext4"));
        assert_eq!(p.uuid.as_deref(), Some(uuid));
        assert_eq!(p.label.as_deref(), Some("rootfs"));
        // Same answer as the real tool.
        let out = Command::new("blkid")
            .args(["-p", "-s", "UUID", "-o", "value"])
            .arg(&fs)
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), uuid);

        let disk = d.path().join("disk.img");
        std::fs::File::create(&disk)
            .unwrap()
            .set_len(32 << 20)
            .unwrap();
        let guid = "11111111-2222-3333-4444-555555555555";
        let st = Command::new("sgdisk")
            .args(["-o", "-U", guid, "-n", "1:2048:+8M"])
            .arg(&disk)
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(st.success());
        let p = probe(&disk).unwrap();
        assert_eq!(p.pt_type.as_deref(), Some("gpt"));
        assert_eq!(p.pt_uuid.as_deref(), Some(guid));

        let empty = d.path().join("empty.img");
        std::fs::File::create(&empty)
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        assert_eq!(probe(&empty).unwrap(), Probe::default());
        assert!(matches!(
            probe(&d.path().join("missing")),
            Err(ProbeError::Open(_))
        ));
    }
}
