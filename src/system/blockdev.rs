//! Block-device ioctls and "is this disk in use" checks.
#![allow(unsafe_code)]

use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::path::Path;

nix::ioctl_read!(blkgetsize64, 0x12, 114, u64);
nix::ioctl_read_bad!(blksszget, 0x1268, libc::c_int);
nix::ioctl_none!(blkrrpart, 0x12, 95);
nix::ioctl_write_ptr_bad!(blkzeroout, 0x127f, [u64; 2]);
nix::ioctl_write_ptr_bad!(blkdiscard, 0x1277, [u64; 2]);
nix::ioctl_write_ptr_bad!(blksecdiscard, 0x127d, [u64; 2]);
// BLKPG = _IO(0x12, 105); the argument is a pointer to `blkpg_ioctl_arg`.
nix::ioctl_write_ptr_bad!(blkpg, 0x1269, BlkpgArg);

/// `struct blkpg_partition` (linux/blkpg.h): byte offsets and lengths.
#[repr(C)]
struct BlkpgPartition {
    start: libc::c_longlong,
    length: libc::c_longlong,
    pno: libc::c_int,
    devname: [libc::c_char; 64],
    volname: [libc::c_char; 64],
}

/// `struct blkpg_ioctl_arg`.
#[repr(C)]
pub struct BlkpgArg {
    op: libc::c_int,
    flags: libc::c_int,
    datalen: libc::c_int,
    data: *mut libc::c_void,
}

/// What BLKPG is asked to do with one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionOp {
    Add,
    Delete,
}

/// Register (`Add`, bytes `[start, start+len)`) or drop (`Delete`) partition `number` of the
/// open disk in the kernel, without re-reading the whole table: what is left to do when
/// BLKRRPART is refused because another partition is busy.
pub fn partition_op(
    f: &File,
    op: PartitionOp,
    number: u32,
    start: u64,
    len: u64,
) -> std::io::Result<()> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, what.to_string());
    let mut part = BlkpgPartition {
        start: libc::c_longlong::try_from(start).map_err(|_| bad("start out of range"))?,
        length: libc::c_longlong::try_from(len).map_err(|_| bad("length out of range"))?,
        pno: libc::c_int::try_from(number).map_err(|_| bad("partition number out of range"))?,
        devname: [0; 64],
        volname: [0; 64],
    };
    let arg = BlkpgArg {
        op: match op {
            PartitionOp::Add => 1,
            PartitionOp::Delete => 2,
        },
        flags: 0,
        datalen: std::mem::size_of::<BlkpgPartition>() as libc::c_int,
        data: std::ptr::addr_of_mut!(part).cast(),
    };
    // SAFETY: the fd is open for the call; `arg` points at `part`, both live until it returns,
    // and the sizes are the kernel's (linux/blkpg.h).
    unsafe { blkpg(f.as_raw_fd(), &arg) }
        .map(|_| ())
        .map_err(std::io::Error::from)
}

/// Size in bytes of an open block device.
pub fn size(f: &File) -> std::io::Result<u64> {
    let mut n: u64 = 0;
    // SAFETY: the fd is open for the whole call and BLKGETSIZE64 writes exactly one u64 to the
    // pointer we pass, which points at `n`.
    unsafe { blkgetsize64(f.as_raw_fd(), &mut n) }.map_err(std::io::Error::from)?;
    Ok(n)
}

/// Logical sector size of an open block device.
pub fn logical_sector_size(f: &File) -> std::io::Result<u32> {
    let mut n: libc::c_int = 0;
    // SAFETY: as above; BLKSSZGET writes one c_int.
    unsafe { blksszget(f.as_raw_fd(), &mut n) }.map_err(std::io::Error::from)?;
    Ok(n.max(512) as u32)
}

/// Ask the kernel to re-read the partition table (best effort: loop devices without
/// partition scanning refuse with EINVAL, which is harmless).
pub fn reread_partitions(f: &File) -> std::io::Result<()> {
    // SAFETY: BLKRRPART takes no argument; the fd is valid for the call.
    unsafe { blkrrpart(f.as_raw_fd()) }
        .map(|_| ())
        .map_err(std::io::Error::from)
}

/// The range ioctls: each takes `[offset, length]` in bytes, sector-aligned.
#[derive(Debug, Clone, Copy)]
enum RangeOp {
    ZeroOut,
    Discard,
    SecureDiscard,
}

fn range_ioctl(f: &File, op: RangeOp, off: u64, len: u64) -> std::io::Result<()> {
    let range = [off, len];
    let fd = f.as_raw_fd();
    // SAFETY: each of these ioctls reads two u64 from the pointer, which points at `range`,
    // alive for the call; the fd is open (held by `f`).
    unsafe {
        match op {
            RangeOp::ZeroOut => blkzeroout(fd, &range),
            RangeOp::Discard => blkdiscard(fd, &range),
            RangeOp::SecureDiscard => blksecdiscard(fd, &range),
        }
    }
    .map(|_| ())
    .map_err(std::io::Error::from)
}

/// Zero `[off, off+len)` of a block device in the device itself (write-zeroes), without
/// sending zero pages over the bus. Offsets must be multiples of the logical sector size.
pub fn zeroout(f: &File, off: u64, len: u64) -> std::io::Result<()> {
    range_ioctl(f, RangeOp::ZeroOut, off, len)
}

/// Discard (TRIM/UNMAP) `[off, off+len)`.
pub fn discard(f: &File, off: u64, len: u64) -> std::io::Result<()> {
    range_ioctl(f, RangeOp::Discard, off, len)
}

/// Secure discard: the device must also drop every copy of the data (refused by most).
pub fn secure_discard(f: &File, off: u64, len: u64) -> std::io::Result<()> {
    range_ioctl(f, RangeOp::SecureDiscard, off, len)
}

/// Zero a range of a regular file by allocation, not by writing.
pub fn fallocate_zero(f: &File, off: u64, len: u64) -> std::io::Result<()> {
    let (o, l) = (
        i64::try_from(off).map_err(|_| std::io::ErrorKind::InvalidInput)?,
        i64::try_from(len).map_err(|_| std::io::ErrorKind::InvalidInput)?,
    );
    nix::fcntl::fallocate(
        f.as_raw_fd(),
        nix::fcntl::FallocateFlags::FALLOC_FL_ZERO_RANGE,
        o,
        l,
    )
    .map_err(std::io::Error::from)
}

/// Whether the device with this `st_rdev` advertises write-zeroes (queue limit above 0).
pub fn advertises_write_zeroes(rdev: u64) -> bool {
    let p = format!(
        "/sys/dev/block/{}:{}/queue/write_zeroes_max_bytes",
        nix::sys::stat::major(rdev),
        nix::sys::stat::minor(rdev)
    );
    std::fs::read_to_string(p)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .is_some_and(|n| n > 0)
}

/// `maj:min` of the disk and all its partitions, from sysfs.
fn devnos(sys_block: &Path, disk: &str) -> Vec<String> {
    let mut out = Vec::new();
    let d = sys_block.join(disk);
    if let Ok(s) = std::fs::read_to_string(d.join("dev")) {
        out.push(s.trim().to_string());
    }
    if let Ok(entries) = std::fs::read_dir(&d) {
        for e in entries.flatten() {
            if e.path().join("partition").exists() {
                if let Ok(s) = std::fs::read_to_string(e.path().join("dev")) {
                    out.push(s.trim().to_string());
                }
            }
        }
    }
    out
}

/// Why `disk` (a name under /sys/block, e.g. `sda`) must not be overwritten: a mounted
/// partition, an active swap area, or a holder (md, dm) using it. `None` when free.
pub fn in_use(disk: &str) -> Option<String> {
    let sys_block = Path::new("/sys/block");
    let nos = devnos(sys_block, disk);
    if let Ok(mi) = std::fs::read_to_string("/proc/self/mountinfo") {
        for line in mi.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 4 && nos.iter().any(|n| n == f[2]) {
                return Some(format!("it is mounted on {}", f[4]));
            }
        }
    }
    if let Ok(swaps) = std::fs::read_to_string("/proc/swaps") {
        for l in swaps.lines().skip(1) {
            if let Some(dev) = l.split_whitespace().next() {
                let base = dev.rsplit('/').next().unwrap_or(dev);
                if base == disk
                    || base
                        .strip_prefix(disk)
                        .is_some_and(|r| r.chars().all(|c| c.is_ascii_digit() || c == 'p'))
                {
                    return Some(format!("{dev} is an active swap area"));
                }
            }
        }
    }
    let holders = |p: &Path| -> Vec<String> {
        std::fs::read_dir(p.join("holders"))
            .map(|e| {
                e.flatten()
                    .map(|x| x.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    let d = sys_block.join(disk);
    let mut all = holders(&d);
    if let Ok(entries) = std::fs::read_dir(&d) {
        for e in entries.flatten() {
            if e.path().join("partition").exists() {
                all.extend(holders(&e.path()));
            }
        }
    }
    (!all.is_empty()).then(|| format!("it is in use by {}", all.join(", ")))
}
