//! Write stage: the decoded image onto a block device (or a file), safely.
//!
//! * The target is refused before any write when it is in use (mounted partition, swap, md/dm
//!   holder), when the image is known to be larger, or when the image is a GPT made for another
//!   logical sector size (a 512-byte GPT cannot boot from a 4Kn disk, and the reverse).
//! * The first MiB of the image (partition table, boot code) is held back and written last,
//!   after every other byte is on the disk and the checksum has been verified: a deploy that
//!   fails at any point never leaves a bootable half-image. Old signatures at both ends of the
//!   disk are zeroed before the image is written; on failure they are zeroed again.
//! * Writes are large (4 MiB), O_DIRECT and aligned; the disk is flushed and the kernel told
//!   to re-read the partition table at the end.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::system::blockdev;

/// The held-back head of the image, also the size of the wiped areas.
pub const HEAD: usize = 1 << 20;
const CHUNK: usize = 4 << 20;
const ALIGN: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("{path}: {what}: {source}")]
    Io {
        path: String,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("refusing to write {path}: {why}")]
    InUse { path: String, why: String },
    #[error("{path} is neither a block device nor a regular file")]
    NotADisk { path: String },
    #[error("the image ({image} bytes{more}) is larger than the disk {path} ({disk} bytes)")]
    TooLarge {
        path: String,
        image: u64,
        disk: u64,
        more: &'static str,
    },
    #[error(
        "the image has a GPT for {image_sector}-byte sectors but {path} has {disk_sector}-byte logical sectors; \
         it could not boot from this disk (use an image built for {disk_sector}-byte sectors)"
    )]
    SectorMismatch {
        path: String,
        image_sector: u32,
        disk_sector: u32,
    },
}

/// A buffer whose start is aligned for O_DIRECT, without unsafe allocation: over-allocate and
/// start at the aligned offset (a Vec never moves while we hold it).
struct AlignedBuf {
    raw: Vec<u8>,
    off: usize,
    len: usize,
}

impl AlignedBuf {
    fn new(len: usize) -> AlignedBuf {
        let raw = vec![0u8; len + ALIGN];
        let off = raw.as_ptr().align_offset(ALIGN).min(ALIGN);
        AlignedBuf { raw, off, len }
    }
    fn get(&self) -> &[u8] {
        &self.raw[self.off..self.off + self.len]
    }
    fn get_mut(&mut self) -> &mut [u8] {
        &mut self.raw[self.off..self.off + self.len]
    }
}

/// An opened write target.
pub struct Target {
    pub path: PathBuf,
    direct: File,
    buffered: File,
    /// Capacity in bytes; `None` for a regular file that may grow.
    pub size: Option<u64>,
    pub sector: u32,
    pub is_block: bool,
}

fn io<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(std::io::Error) -> WriteError + 'a {
    move |source| WriteError::Io {
        path: path.display().to_string(),
        what,
        source,
    }
}

impl Target {
    pub fn open(path: &Path) -> Result<Target, WriteError> {
        let meta = std::fs::metadata(path).map_err(io(path, "stat"))?;
        let is_block = meta.file_type().is_block_device();
        if !is_block && !meta.is_file() {
            return Err(WriteError::NotADisk {
                path: path.display().to_string(),
            });
        }
        if is_block {
            let canon = std::fs::canonicalize(path).map_err(io(path, "resolve"))?;
            let name = canon
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if let Some(why) = blockdev::in_use(&name) {
                return Err(WriteError::InUse {
                    path: path.display().to_string(),
                    why,
                });
            }
        }
        let mut opts = OpenOptions::new();
        opts.read(true).write(true);
        if is_block {
            // O_EXCL on a block device: the kernel refuses if anything else holds it.
            opts.custom_flags(libc::O_EXCL);
        }
        let buffered = opts.open(path).map_err(|e| match e.raw_os_error() {
            Some(libc::EBUSY) => WriteError::InUse {
                path: path.display().to_string(),
                why: "the kernel reports it busy (mounted, or held by another program)".into(),
            },
            _ => io(path, "open")(e),
        })?;
        // A second descriptor with O_DIRECT for the aligned bulk; file systems that refuse it
        // (tmpfs) get buffered writes instead.
        let direct = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .or_else(|_| buffered.try_clone())
            .map_err(io(path, "open"))?;
        let (size, sector) = if is_block {
            (
                Some(blockdev::size(&buffered).map_err(io(path, "BLKGETSIZE64"))?),
                blockdev::logical_sector_size(&buffered).map_err(io(path, "BLKSSZGET"))?,
            )
        } else {
            (Some(meta.len()).filter(|n| *n > 0), 512)
        };
        Ok(Target {
            path: path.to_path_buf(),
            direct,
            buffered,
            size,
            sector,
            is_block,
        })
    }

    fn err(&self, what: &'static str) -> impl FnOnce(std::io::Error) -> WriteError + '_ {
        io(&self.path, what)
    }

    /// Refuse an image known in advance to be larger than the disk.
    pub fn check_size(&self, image: u64, exact: bool) -> Result<(), WriteError> {
        match self.size {
            Some(disk) if image > disk => Err(WriteError::TooLarge {
                path: self.path.display().to_string(),
                image,
                disk,
                more: if exact { "" } else { " at least" },
            }),
            _ => Ok(()),
        }
    }

    /// Zero the first and last MiB: old partition tables (primary and backup GPT), boot code,
    /// and the superblocks that live at either end (md 0.90/1.0 at the end).
    pub fn wipe_ends(&self) -> Result<(), WriteError> {
        let zeros = AlignedBuf::new(HEAD);
        let at_start = self.size.map_or(HEAD, |end| HEAD.min(end as usize));
        self.pwrite_any(&zeros.get()[..at_start], 0)?;
        if let Some(end) = self.size.filter(|e| *e > HEAD as u64) {
            let start = (end - HEAD as u64).max(HEAD as u64);
            self.pwrite_any(&zeros.get()[..(end - start) as usize], start)?;
        }
        self.sync()
    }

    /// Write at `offset`, O_DIRECT when aligned, buffered otherwise.
    fn pwrite_any(&self, data: &[u8], offset: u64) -> Result<(), WriteError> {
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

    pub fn sync(&self) -> Result<(), WriteError> {
        self.buffered.sync_all().map_err(self.err("fsync"))?;
        self.direct.sync_all().map_err(self.err("fsync"))
    }

    pub fn reread_partitions(&self) {
        if self.is_block {
            if let Err(e) = blockdev::reread_partitions(&self.buffered) {
                tracing::debug!(path = %self.path.display(), error = %e, "BLKRRPART");
            }
        }
    }
}

/// GPT header signature position tells which sector size an image was made for.
pub fn gpt_sector_size(head: &[u8]) -> Option<u32> {
    if head.get(512..520) == Some(b"EFI PART") {
        Some(512)
    } else if head.get(4096..4104) == Some(b"EFI PART") {
        Some(4096)
    } else {
        None
    }
}

/// Streams image bytes to a [`Target`], first MiB last.
pub struct StreamWriter<'t> {
    t: &'t Target,
    head: Vec<u8>,
    started: bool,
    offset: u64,
    buf: AlignedBuf,
    buf_len: usize,
    buf_start: u64,
}

impl<'t> StreamWriter<'t> {
    pub fn new(t: &'t Target) -> StreamWriter<'t> {
        StreamWriter {
            t,
            head: Vec::with_capacity(HEAD),
            started: false,
            offset: 0,
            buf: AlignedBuf::new(CHUNK),
            buf_len: 0,
            buf_start: HEAD as u64,
        }
    }

    /// Image bytes received so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Checks that need the image's first MiB, then the wipe: nothing is written before both.
    fn start(&mut self) -> Result<(), WriteError> {
        if let Some(img) = gpt_sector_size(&self.head) {
            if img != self.t.sector {
                return Err(WriteError::SectorMismatch {
                    path: self.t.path.display().to_string(),
                    image_sector: img,
                    disk_sector: self.t.sector,
                });
            }
        }
        self.t.wipe_ends()?;
        self.started = true;
        Ok(())
    }

    pub fn write(&mut self, mut data: &[u8]) -> Result<(), WriteError> {
        if let Some(cap) = self.t.size {
            if self.offset + data.len() as u64 > cap {
                return Err(WriteError::TooLarge {
                    path: self.t.path.display().to_string(),
                    image: self.offset + data.len() as u64,
                    disk: cap,
                    more: " at least",
                });
            }
        }
        if self.head.len() < HEAD {
            let n = (HEAD - self.head.len()).min(data.len());
            self.head.extend_from_slice(&data[..n]);
            self.offset += n as u64;
            data = &data[n..];
            if self.head.len() == HEAD {
                self.start()?;
            }
        }
        while !data.is_empty() {
            let n = (CHUNK - self.buf_len).min(data.len());
            self.buf.get_mut()[self.buf_len..self.buf_len + n].copy_from_slice(&data[..n]);
            self.buf_len += n;
            self.offset += n as u64;
            data = &data[n..];
            if self.buf_len == CHUNK {
                self.flush()?;
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), WriteError> {
        if self.buf_len == 0 {
            return Ok(());
        }
        let sector = self.t.sector.max(512) as usize;
        let whole = self.buf_len / sector * sector;
        if whole > 0 {
            self.t
                .pwrite_any(&self.buf.get()[..whole], self.buf_start)?;
        }
        if whole < self.buf_len {
            // Only the very end of an image can be shorter than a sector.
            self.t
                .buffered
                .write_all_at(
                    &self.buf.get()[whole..self.buf_len],
                    self.buf_start + whole as u64,
                )
                .map_err(self.t.err("write"))?;
        }
        self.buf_start += self.buf_len as u64;
        self.buf_len = 0;
        Ok(())
    }

    /// Everything but the head is on the disk and flushed. Call `commit` once the checksum
    /// is verified, or `abort` otherwise.
    pub fn finish(&mut self) -> Result<u64, WriteError> {
        if !self.started {
            self.start()?;
        }
        self.flush()?;
        self.t.sync()?;
        Ok(self.offset)
    }

    /// Write the held-back first MiB, flush, re-read partitions.
    pub fn commit(self) -> Result<u64, WriteError> {
        let mut head = AlignedBuf::new(HEAD);
        head.get_mut()[..self.head.len()].copy_from_slice(&self.head);
        if self.head.len() == HEAD {
            self.t.pwrite_any(head.get(), 0)?;
        } else {
            self.t
                .buffered
                .write_all_at(&self.head, 0)
                .map_err(self.t.err("write"))?;
        }
        self.t.sync()?;
        self.t.reread_partitions();
        Ok(self.offset)
    }
}

/// After a failure: make sure nothing bootable or half-written is left.
pub fn abort(t: &Target) {
    if let Err(e) = t.wipe_ends() {
        tracing::error!(path = %t.path.display(), error = %e, "could not wipe the disk after a failed write");
    }
    t.reread_partitions();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_target(dir: &Path, size: u64) -> Target {
        let p = dir.join("disk.img");
        let f = File::create(&p).unwrap();
        f.set_len(size).unwrap();
        // Old content everywhere: it must be gone where the image has data or zeros.
        f.write_all_at(&vec![0xAA; size as usize], 0).unwrap();
        Target::open(&p).unwrap()
    }

    #[test]
    fn first_mib_is_written_last() {
        let d = tempfile::tempdir().unwrap();
        let t = file_target(d.path(), 8 << 20);
        let image: Vec<u8> = (0..(5u32 << 20) + 123).map(|i| (i % 251) as u8).collect();
        let mut w = StreamWriter::new(&t);
        for c in image.chunks(70_000) {
            w.write(c).unwrap();
        }
        assert_eq!(w.finish().unwrap(), image.len() as u64);
        let disk = std::fs::read(&t.path).unwrap();
        assert!(
            disk[..HEAD].iter().all(|b| *b == 0),
            "head held back and the old head wiped"
        );
        assert_eq!(&disk[HEAD..image.len()], &image[HEAD..]);
        assert!(
            disk[disk.len() - HEAD..].iter().all(|b| *b == 0),
            "end wiped"
        );
        w.commit().unwrap();
        let disk = std::fs::read(&t.path).unwrap();
        assert_eq!(&disk[..image.len()], &image[..]);
    }

    #[test]
    fn refusals_happen_before_any_write() {
        let d = tempfile::tempdir().unwrap();
        let t = file_target(d.path(), 2 << 20);
        let mut w = StreamWriter::new(&t);
        assert!(matches!(
            w.write(&vec![1u8; (3 << 20) as usize]),
            Err(WriteError::TooLarge { .. })
        ));
        assert!(
            std::fs::read(&t.path).unwrap().iter().all(|b| *b == 0xAA),
            "nothing written"
        );
        assert!(t.check_size(3 << 20, true).is_err());

        // A 4Kn GPT on a 512-byte disk.
        let mut head = vec![0u8; HEAD];
        head[4096..4104].copy_from_slice(b"EFI PART");
        let t = file_target(d.path(), 4 << 20);
        let mut w = StreamWriter::new(&t);
        let e = w.write(&head).unwrap_err();
        assert!(
            matches!(
                e,
                WriteError::SectorMismatch {
                    image_sector: 4096,
                    disk_sector: 512,
                    ..
                }
            ),
            "{e}"
        );
        assert!(
            std::fs::read(&t.path).unwrap().iter().all(|b| *b == 0xAA),
            "nothing written"
        );
    }

    #[test]
    fn abort_wipes_both_ends_and_small_images_work() {
        let d = tempfile::tempdir().unwrap();
        let t = file_target(d.path(), 4 << 20);
        let mut w = StreamWriter::new(&t);
        w.write(&[7u8; 1000]).unwrap();
        w.finish().unwrap();
        w.commit().unwrap();
        let disk = std::fs::read(&t.path).unwrap();
        assert_eq!(&disk[..1000], &[7u8; 1000][..]);
        abort(&t);
        let disk = std::fs::read(&t.path).unwrap();
        assert!(
            disk[..HEAD].iter().all(|b| *b == 0)
                && disk[disk.len() - HEAD..].iter().all(|b| *b == 0)
        );
        assert_eq!(gpt_sector_size(&[0u8; 8192]), None);
    }
}
