//! The disk being written: one owner for every writer (image, partition table, ESP, swap,
//! config drive, wipe, erase).
//!
//! Opening for write follows one rule: a block device that is mounted, swapped on, or held by
//! md, dm or LVM is refused with the reason, and the open itself is exclusive (`O_EXCL`), so
//! the kernel refuses it too if anything else holds the disk. A regular file (tests, images on
//! disk) is opened plainly. Bulk I/O goes through a second, O_DIRECT descriptor when it is
//! aligned (the exclusive claim belongs to the first one and lasts as long as the `Device`).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::system::blockdev;

/// Alignment of O_DIRECT buffers and offsets (covers 512-byte and 4Kn disks).
pub const ALIGN: usize = 4096;

/// A buffer whose start is aligned for O_DIRECT, without unsafe allocation: over-allocate and
/// start at the aligned offset (a Vec never moves while we hold it).
pub struct AlignedBuf {
    raw: Vec<u8>,
    off: usize,
    len: usize,
}

impl AlignedBuf {
    pub fn new(len: usize) -> AlignedBuf {
        let raw = vec![0u8; len + ALIGN];
        let off = raw.as_ptr().align_offset(ALIGN).min(ALIGN);
        AlignedBuf { raw, off, len }
    }
    pub fn get(&self) -> &[u8] {
        &self.raw[self.off..self.off + self.len]
    }
    pub fn get_mut(&mut self) -> &mut [u8] {
        &mut self.raw[self.off..self.off + self.len]
    }
}

pub use super::nodes::is_block;

/// Why the block device `path` may not be written now, if anything holds it.
pub fn in_use(path: &Path) -> Option<String> {
    let canon = std::fs::canonicalize(path).ok()?;
    let name = canon.file_name()?.to_string_lossy().into_owned();
    blockdev::in_use(&name)
}

/// Size of the zero chunk and of the writes [`Device::zero`] falls back to.
pub const ZERO_CHUNK: usize = 4 << 20;

/// One aligned chunk of zeros, allocated on first use (an immutable static array would sit in
/// the binary's read-only data: 4 MiB of file).
pub fn zeros() -> &'static [u8] {
    static Z: std::sync::OnceLock<AlignedBuf> = std::sync::OnceLock::new();
    Z.get_or_init(|| AlignedBuf::new(ZERO_CHUNK)).get()
}

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("{path}: {what}: {source}")]
    Io {
        path: String,
        what: &'static str,
        source: io::Error,
    },
    #[error("refusing to write {path}: {why}")]
    InUse { path: String, why: String },
    #[error("{path} is neither a block device nor a regular file")]
    NotADisk { path: String },
}

impl DeviceError {
    /// The I/O error underneath, for callers that report errno-style failures.
    pub fn into_io(self) -> io::Error {
        match self {
            DeviceError::Io { source, .. } => source,
            DeviceError::InUse { .. } => {
                io::Error::new(io::ErrorKind::ResourceBusy, self.to_string())
            }
            DeviceError::NotADisk { .. } => {
                io::Error::new(io::ErrorKind::InvalidInput, self.to_string())
            }
        }
    }
}

fn io_err<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(io::Error) -> DeviceError + 'a {
    move |source| DeviceError::Io {
        path: path.display().to_string(),
        what,
        source,
    }
}

/// `path`'s metadata and whether it is a block device; anything but a block device or a
/// regular file is refused.
fn stat_disk(path: &Path) -> Result<(std::fs::Metadata, bool), DeviceError> {
    let meta = std::fs::metadata(path).map_err(io_err(path, "stat"))?;
    let block = meta.file_type().is_block_device();
    if !block && !meta.is_file() {
        return Err(DeviceError::NotADisk {
            path: path.display().to_string(),
        });
    }
    Ok((meta, block))
}

/// Size in bytes and logical sector size of an open disk (a regular file: its length, 512).
fn geometry(f: &File, path: &Path, meta: &std::fs::Metadata) -> Result<(u64, u32), DeviceError> {
    if meta.file_type().is_block_device() {
        Ok((
            blockdev::size(f).map_err(io_err(path, "BLKGETSIZE64"))?,
            blockdev::logical_sector_size(f).map_err(io_err(path, "BLKSSZGET"))?,
        ))
    } else {
        Ok((meta.len(), 512))
    }
}

/// A disk (or an image file) opened for writing under the rule above.
#[derive(Debug)]
pub struct Device {
    path: PathBuf,
    /// The exclusive descriptor: partition tables, unaligned heads and tails, ioctls.
    buffered: File,
    /// O_DIRECT for aligned bulk I/O; a duplicate of `buffered` where the file system refuses
    /// O_DIRECT (tmpfs).
    direct: File,
    /// Capacity in bytes (a regular file: its length when opened).
    size: u64,
    /// Logical sector size (512 for a regular file).
    sector: u32,
    block: bool,
    /// Zeroing is cheaper than writing zeros (the device advertises write-zeroes, or a file
    /// that can allocate zeros).
    write_zeroes: bool,
}

impl Device {
    /// Open `path` for writing: refused when in use, exclusive on a block device.
    pub fn open(path: &Path) -> Result<Device, DeviceError> {
        let (meta, block) = stat_disk(path)?;
        if block {
            if let Some(why) = in_use(path) {
                return Err(DeviceError::InUse {
                    path: path.display().to_string(),
                    why,
                });
            }
        }
        let mut opts = OpenOptions::new();
        opts.read(true).write(true);
        if block {
            // O_EXCL on a block device: the kernel refuses if anything else holds it.
            opts.custom_flags(libc::O_EXCL);
        }
        let buffered = opts.open(path).map_err(|e| match e.raw_os_error() {
            Some(libc::EBUSY) => DeviceError::InUse {
                path: path.display().to_string(),
                why: "the kernel reports it busy (mounted, or held by another program)".into(),
            },
            _ => io_err(path, "open")(e),
        })?;
        let direct = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .or_else(|_| buffered.try_clone())
            .map_err(io_err(path, "open"))?;
        let (size, sector) = geometry(&buffered, path, &meta)?;
        let write_zeroes = !block || blockdev::advertises_write_zeroes(meta.rdev());
        Ok(Device {
            path: path.to_path_buf(),
            buffered,
            direct,
            size,
            sector,
            block,
            write_zeroes,
        })
    }

    /// Open a disk whose partitions are in use (members of md arrays) to add a partition in
    /// its free space: neither refused for those holders nor exclusive (the kernel would refuse
    /// an exclusive open while a partition is claimed). Only the table and the new
    /// partition's range may be written through it.
    pub fn open_to_add_partition(path: &Path) -> Result<Device, DeviceError> {
        let (meta, block) = stat_disk(path)?;
        let buffered = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io_err(path, "open"))?;
        let direct = buffered.try_clone().map_err(io_err(path, "dup"))?;
        let (size, sector) = geometry(&buffered, path, &meta)?;
        Ok(Device {
            path: path.to_path_buf(),
            buffered,
            direct,
            size,
            sector,
            block,
            write_zeroes: false,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn name(&self) -> String {
        self.path.display().to_string()
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn logical_sector(&self) -> u32 {
        self.sector
    }

    pub fn is_block(&self) -> bool {
        self.block
    }

    pub fn zeroes_cheaply(&self) -> bool {
        self.write_zeroes
    }

    fn err(&self, what: &'static str) -> impl FnOnce(io::Error) -> DeviceError + '_ {
        io_err(&self.path, what)
    }

    /// Another handle on the same open disk (the writer thread's); the exclusive claim stays
    /// with the open file description both share.
    pub fn try_clone(&self) -> Result<Device, DeviceError> {
        Ok(Device {
            path: self.path.clone(),
            buffered: self.buffered.try_clone().map_err(self.err("dup"))?,
            direct: self.direct.try_clone().map_err(self.err("dup"))?,
            size: self.size,
            sector: self.sector,
            block: self.block,
            write_zeroes: self.write_zeroes,
        })
    }

    /// A plain file handle on the open disk, for table and file system libraries that want
    /// `Read + Write + Seek` (gptman, mbrman, fatfs).
    pub fn file(&self) -> Result<File, DeviceError> {
        self.buffered.try_clone().map_err(self.err("dup"))
    }

    /// Write `data` at `offset`: O_DIRECT when offset, length and buffer are aligned, else
    /// buffered.
    pub fn write_at(&self, data: &[u8], offset: u64) -> Result<(), DeviceError> {
        let aligned = offset % ALIGN as u64 == 0
            && data.len() % self.sector.max(512) as usize == 0
            && data.as_ptr() as usize % ALIGN == 0;
        let f = if aligned {
            &self.direct
        } else {
            &self.buffered
        };
        f.write_all_at(data, offset).map_err(self.err("write"))
    }

    /// Write without O_DIRECT (unaligned heads and tails).
    pub fn write_buffered_at(&self, data: &[u8], offset: u64) -> Result<(), DeviceError> {
        self.buffered
            .write_all_at(data, offset)
            .map_err(self.err("write"))
    }

    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), DeviceError> {
        self.buffered
            .read_exact_at(buf, offset)
            .map_err(self.err("read"))
    }

    /// Make `[off, off+len)` read as zeros: BLKZEROOUT on a device that advertises
    /// write-zeroes, fallocate on a file, else plain zero writes.
    pub fn zero(&self, off: u64, len: u64) -> Result<(), DeviceError> {
        let end = off.checked_add(len).ok_or_else(|| {
            self.err("zero")(io::Error::new(
                io::ErrorKind::InvalidInput,
                "range overflows",
            ))
        })?;
        let sector = u64::from(self.sector.max(512));
        if self.write_zeroes && off % sector == 0 && len % sector == 0 {
            let done = if self.block {
                blockdev::zeroout(&self.buffered, off, len)
            } else {
                blockdev::fallocate_zero(&self.buffered, off, len)
            };
            match done {
                Ok(()) => return Ok(()),
                Err(e) => tracing::debug!(error = %e, "zeroing offload failed; writing zeros"),
            }
        }
        let mut at = off;
        while at < end {
            let n = (end - at).min(ZERO_CHUNK as u64) as usize;
            self.write_at(&zeros()[..n], at)?;
            at += n as u64;
        }
        Ok(())
    }

    /// Zero `[off, off+len)` with the device's write-zeroes only; an error where it has none.
    pub fn zero_offloaded(&self, off: u64, len: u64) -> Result<(), DeviceError> {
        if !self.block || !self.write_zeroes {
            return Err(self.err("BLKZEROOUT")(io::Error::from_raw_os_error(
                libc::EOPNOTSUPP,
            )));
        }
        blockdev::zeroout(&self.buffered, off, len).map_err(self.err("BLKZEROOUT"))
    }

    /// Discard `[off, off+len)` (TRIM/UNMAP; `secure`: BLKSECDISCARD).
    pub fn discard(&self, off: u64, len: u64, secure: bool) -> Result<(), DeviceError> {
        if secure {
            blockdev::secure_discard(&self.buffered, off, len).map_err(self.err("BLKSECDISCARD"))
        } else {
            blockdev::discard(&self.buffered, off, len).map_err(self.err("BLKDISCARD"))
        }
    }

    /// Flush both descriptors to stable storage.
    pub fn sync(&self) -> Result<(), DeviceError> {
        self.buffered.sync_all().map_err(self.err("fsync"))?;
        self.direct.sync_all().map_err(self.err("fsync"))
    }

    /// Bring the kernel's partitions in line with `parts` (number, start, length in bytes),
    /// the table just written: see [`super::nodes::refresh_partitions`].
    pub fn refresh_partitions(&self, parts: &[(u32, u64, u64)]) {
        if self.block {
            super::nodes::refresh_partitions(&self.buffered, &self.path, parts);
        }
    }
}

/// Open a disk (or image file) to read it: its table, a file system in user space.
pub fn open_read(path: &Path) -> Result<File, DeviceError> {
    File::open(path).map_err(io_err(path, "open"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_open_and_missing_paths_fail() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("disk");
        std::fs::write(&f, [7u8; 4096 * 3]).unwrap();
        assert!(!is_block(&f));
        let dev = Device::open(&f).unwrap();
        assert_eq!(
            (dev.size(), dev.logical_sector(), dev.is_block()),
            (12288, 512, false)
        );
        assert!(matches!(
            Device::open(&d.path().join("missing")),
            Err(DeviceError::Io { what: "stat", .. })
        ));
        assert!(matches!(
            Device::open(d.path()),
            Err(DeviceError::NotADisk { .. })
        ));
        // Aligned and unaligned writes, zeroing, and reads all reach the same bytes.
        let mut b = AlignedBuf::new(4096);
        b.get_mut().fill(1);
        dev.write_at(b.get(), 4096).unwrap();
        dev.write_at(&[2u8; 3], 5).unwrap();
        dev.zero(8192, 4096).unwrap();
        dev.sync().unwrap();
        let got = std::fs::read(&f).unwrap();
        assert_eq!(&got[5..8], &[2, 2, 2]);
        assert!(got[4096..8192].iter().all(|&x| x == 1));
        assert!(got[8192..].iter().all(|&x| x == 0));
        let mut back = [0u8; 4];
        dev.read_at(&mut back, 4095).unwrap();
        assert_eq!(back, [7, 1, 1, 1]);
        assert!(dev.zero(u64::MAX, 2).is_err(), "overflowing range refused");
    }
}
