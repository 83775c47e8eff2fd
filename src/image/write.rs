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

use std::path::Path;

use crate::disk::device::{zeros, Device, DeviceError, ZERO_CHUNK as CHUNK};

/// The held-back head of the image, also the size of the wiped areas.
pub const HEAD: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Device(#[from] DeviceError),
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
    #[error("writer thread: {0}")]
    Thread(String),
}

pub use crate::disk::device::{AlignedBuf, ALIGN};

/// Where the write pass sends its output.
pub trait Sink {
    fn write_at(&mut self, off: u64, data: &[u8]) -> Result<(), WriteError>;
    fn zero(&mut self, off: u64, len: u64) -> Result<(), WriteError>;
}

/// The image's destination: the whole device, or a byte window of it (a partition written
/// through its disk: no partition device node needed).
pub struct Target {
    dev: Device,
    /// Capacity in bytes; `None` for an empty regular file that may grow.
    pub size: Option<u64>,
    pub sector: u32,
    /// Offset of the target within the device.
    base: u64,
}

impl Target {
    pub fn open(path: &Path) -> Result<Target, WriteError> {
        Ok(Target::whole(Device::open(path)?))
    }

    /// The whole of an opened device.
    pub fn whole(dev: Device) -> Target {
        let size = Some(dev.size()).filter(|n| *n > 0 || dev.is_block());
        Target {
            sector: dev.logical_sector(),
            size,
            dev,
            base: 0,
        }
    }

    /// The byte range `[start, start+len)` of `path` as the target.
    pub fn open_window(path: &Path, start: u64, len: u64) -> Result<Target, WriteError> {
        Target::window(Device::open(path)?, start, len)
    }

    /// The byte range `[start, start+len)` of an opened device.
    pub fn window(dev: Device, start: u64, len: u64) -> Result<Target, WriteError> {
        let end = start.checked_add(len);
        if end.is_none_or(|e| e > dev.size()) {
            return Err(WriteError::TooLarge {
                path: dev.name(),
                image: end.unwrap_or(u64::MAX),
                disk: dev.size(),
                more: "",
            });
        }
        Ok(Target {
            sector: dev.logical_sector(),
            size: Some(len),
            dev,
            base: start,
        })
    }

    pub fn path(&self) -> &Path {
        self.dev.path()
    }

    /// A read-only handle on what has been written, and where the target starts in it: peer
    /// sharing serves a raw image's pieces back from the disk (each checked before it leaves).
    pub fn reader(&self) -> std::io::Result<(std::fs::File, u64)> {
        Ok((std::fs::File::open(self.dev.path())?, self.base))
    }

    pub fn is_block(&self) -> bool {
        self.dev.is_block()
    }

    /// Give the device back (to lay out partitions after wiping, say).
    pub fn into_device(self) -> Device {
        self.dev
    }

    /// Refuse an image known in advance to be larger than the disk.
    pub fn check_size(&self, image: u64, exact: bool) -> Result<(), WriteError> {
        match self.size {
            Some(disk) if image > disk => Err(WriteError::TooLarge {
                path: self.dev.name(),
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
        let zeros = &crate::disk::device::zeros()[..HEAD];
        let at_start = self.size.map_or(HEAD, |end| HEAD.min(end as usize));
        self.pwrite_any(&zeros[..at_start], 0)?;
        if let Some(end) = self.size.filter(|e| *e > HEAD as u64) {
            let start = (end - HEAD as u64).max(HEAD as u64);
            self.pwrite_any(&zeros[..(end - start) as usize], start)?;
        }
        self.sync()
    }

    /// Write at `offset`, O_DIRECT when aligned, buffered otherwise.
    fn pwrite_any(&self, data: &[u8], offset: u64) -> Result<(), WriteError> {
        Ok(self.dev.write_at(data, self.base + offset)?)
    }

    /// Write at `offset` without O_DIRECT (unaligned heads and tails).
    fn pwrite_buffered(&self, data: &[u8], offset: u64) -> Result<(), WriteError> {
        Ok(self.dev.write_buffered_at(data, self.base + offset)?)
    }

    /// Whether zeroing is cheaper than writing zeros.
    pub fn zeroes_cheaply(&self) -> bool {
        self.dev.zeroes_cheaply()
    }

    /// Make `[off, off+len)` of the target read as zeros.
    pub fn zero_range(&self, off: u64, len: u64) -> Result<(), WriteError> {
        Ok(self.dev.zero(self.base + off, len)?)
    }

    /// A second handle on the same target, for the writer thread.
    fn try_clone(&self) -> Result<Target, WriteError> {
        Ok(Target {
            dev: self.dev.try_clone()?,
            size: self.size,
            sector: self.sector,
            base: self.base,
        })
    }

    /// Write one gathered chunk: a whole chunk of zeros becomes write-zeroes when that is
    /// cheap; a tail shorter than a sector (only at the image's end) goes buffered.
    fn write_chunk(&self, data: &[u8], off: u64) -> Result<(), WriteError> {
        if data.len() == CHUNK && data == zeros() && self.zeroes_cheaply() {
            return self.zero_range(off, CHUNK as u64);
        }
        let sector = self.sector.max(512) as usize;
        let whole = data.len() / sector * sector;
        if whole > 0 {
            self.pwrite_any(&data[..whole], off)?;
        }
        if whole < data.len() {
            self.pwrite_buffered(&data[whole..], off + whole as u64)?;
        }
        Ok(())
    }

    pub fn sync(&self) -> Result<(), WriteError> {
        Ok(self.dev.sync()?)
    }

    /// Bring the kernel's partitions in line with the table now on the disk.
    pub fn reread_partitions(&self) {
        if self.dev.is_block() && self.base == 0 {
            crate::disk::table::refresh(&self.dev);
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

/// Writes image bytes at any offset to a [`Target`], holding the first MiB back until
/// `commit`. Contiguous writes are gathered into large aligned ones; zero ranges use the
/// device's write-zeroes when it has one.
pub struct DiskWriter<'t> {
    t: &'t Target,
    head: AlignedBuf,
    /// End of the image bytes seen so far (the image's size once complete).
    end: u64,
    started: bool,
    buf: AlignedBuf,
    buf_len: usize,
    buf_start: u64,
    pipe: Option<Pipe>,
}

/// Work for the writer thread, in order.
enum Job {
    Write(AlignedBuf, usize, u64),
    Zero(u64, u64),
}

/// The writer thread: the disk writes while the next chunk is fetched, hashed and decoded,
/// so a deploy takes the slowest of these, not their sum. Buffers go round a small pool
/// (at most `POOL` chunks exist), which bounds memory.
struct Pipe {
    jobs: Option<std::sync::mpsc::SyncSender<Job>>,
    free: std::sync::mpsc::Receiver<AlignedBuf>,
    made: usize,
    handle: Option<std::thread::JoinHandle<Result<(), WriteError>>>,
}

const POOL: usize = 3;

impl Pipe {
    fn start(t: &Target) -> Result<Pipe, WriteError> {
        let t = t.try_clone()?;
        let (jobs, rx) = std::sync::mpsc::sync_channel::<Job>(1);
        let (free_tx, free) = std::sync::mpsc::channel();
        let handle = std::thread::Builder::new()
            .name("disk-writer".into())
            .spawn(move || {
                let _nice = crate::system::priority::lower_current_thread();
                for job in rx {
                    match job {
                        Job::Write(buf, len, off) => {
                            t.write_chunk(&buf.get()[..len], off)?;
                            let _ = free_tx.send(buf);
                        }
                        Job::Zero(off, len) => t.zero_range(off, len)?,
                    }
                }
                Ok(())
            })
            .map_err(|e| WriteError::Thread(format!("cannot start: {e}")))?;
        Ok(Pipe {
            jobs: Some(jobs),
            free,
            made: 1,
            handle: Some(handle),
        })
    }

    /// Wait for the thread; its first error, if any.
    fn join(&mut self) -> Result<(), WriteError> {
        self.jobs = None;
        match self.handle.take().map(|h| h.join()) {
            None | Some(Ok(Ok(()))) => Ok(()),
            Some(Ok(Err(e))) => Err(e),
            Some(Err(_)) => Err(WriteError::Thread("panicked".into())),
        }
    }

    fn send(&mut self, job: Job) -> Result<(), WriteError> {
        let sent = self.jobs.as_ref().map(|j| j.send(job));
        match sent {
            Some(Ok(())) => Ok(()),
            // The thread stopped: it failed, and says why.
            _ => self.join().and(Err(WriteError::Thread("stopped".into()))),
        }
    }

    fn next_buf(&mut self) -> Result<AlignedBuf, WriteError> {
        if let Ok(b) = self.free.try_recv() {
            return Ok(b);
        }
        if self.made < POOL {
            self.made += 1;
            return Ok(AlignedBuf::new(CHUNK));
        }
        match self.free.recv() {
            Ok(b) => Ok(b),
            Err(_) => self.join().and(Err(WriteError::Thread("stopped".into()))),
        }
    }
}

impl Drop for DiskWriter<'_> {
    fn drop(&mut self) {
        // Never leave a write in flight behind a caller that goes on to wipe the disk.
        if let Some(p) = self.pipe.as_mut() {
            let _ = p.join();
        }
    }
}

impl<'t> DiskWriter<'t> {
    pub fn new(t: &'t Target) -> DiskWriter<'t> {
        DiskWriter {
            t,
            head: AlignedBuf::new(HEAD),
            end: 0,
            started: false,
            buf: AlignedBuf::new(CHUNK),
            buf_len: 0,
            buf_start: 0,
            pipe: None,
        }
    }

    /// Refuse an image whose GPT was made for another sector size, judged on its first bytes.
    pub fn check_head(&self, head: &[u8]) -> Result<(), WriteError> {
        match gpt_sector_size(head) {
            Some(img) if img != self.t.sector => Err(WriteError::SectorMismatch {
                path: self.t.path().display().to_string(),
                image_sector: img,
                disk_sector: self.t.sector,
            }),
            _ => Ok(()),
        }
    }

    /// Wipe both ends of the disk: after every check that can refuse the image, before the
    /// first byte of it is written.
    pub fn start(&mut self) -> Result<(), WriteError> {
        if !self.started {
            self.t.wipe_ends()?;
            self.pipe = Some(Pipe::start(self.t)?);
            self.started = true;
        }
        Ok(())
    }

    fn room(&self, end: u64) -> Result<(), WriteError> {
        match self.t.size {
            Some(cap) if end > cap => Err(WriteError::TooLarge {
                path: self.t.path().display().to_string(),
                image: end,
                disk: cap,
                more: " at least",
            }),
            _ => Ok(()),
        }
    }

    pub fn write_at(&mut self, mut off: u64, mut data: &[u8]) -> Result<(), WriteError> {
        let end = off + data.len() as u64;
        self.room(end)?;
        self.end = self.end.max(end);
        if off < HEAD as u64 {
            let n = (HEAD as u64 - off).min(data.len() as u64) as usize;
            self.head.get_mut()[off as usize..off as usize + n].copy_from_slice(&data[..n]);
            off += n as u64;
            data = &data[n..];
        }
        if data.is_empty() {
            return Ok(());
        }
        self.start()?;
        if self.buf_len > 0 && off != self.buf_start + self.buf_len as u64 {
            self.flush()?;
        }
        if self.buf_len == 0 {
            self.buf_start = off;
        }
        while !data.is_empty() {
            let n = (CHUNK - self.buf_len).min(data.len());
            self.buf.get_mut()[self.buf_len..self.buf_len + n].copy_from_slice(&data[..n]);
            self.buf_len += n;
            data = &data[n..];
            if self.buf_len == CHUNK {
                self.flush()?;
                self.buf_start += CHUNK as u64;
            }
        }
        Ok(())
    }

    /// The image reads as zeros over `[off, off+len)`: old data there must go.
    pub fn zero(&mut self, off: u64, len: u64) -> Result<(), WriteError> {
        let end = off + len;
        self.room(end)?;
        self.end = self.end.max(end);
        // The held-back head starts as zeros.
        let off = off.max(HEAD as u64);
        if off >= end {
            return Ok(());
        }
        self.start()?;
        self.flush()?;
        match self.pipe.as_mut() {
            Some(p) => p.send(Job::Zero(off, end - off)),
            None => self.t.zero_range(off, end - off),
        }
    }

    fn flush(&mut self) -> Result<(), WriteError> {
        if self.buf_len == 0 {
            return Ok(());
        }
        match self.pipe.as_mut() {
            Some(p) => {
                let next = p.next_buf()?;
                let full = std::mem::replace(&mut self.buf, next);
                p.send(Job::Write(full, self.buf_len, self.buf_start))?;
            }
            None => self
                .t
                .write_chunk(&self.buf.get()[..self.buf_len], self.buf_start)?,
        }
        self.buf_len = 0;
        Ok(())
    }

    /// Everything but the head is on the disk and flushed. Call `commit` once the checksum
    /// is verified, or `abort` otherwise.
    pub fn finish(&mut self) -> Result<u64, WriteError> {
        self.check_head(self.head.get())?;
        self.start()?;
        self.flush()?;
        if let Some(p) = self.pipe.as_mut() {
            p.join()?;
        }
        self.t.sync()?;
        Ok(self.end)
    }

    /// Write the held-back first MiB, flush, re-read partitions.
    pub fn commit(mut self) -> Result<u64, WriteError> {
        if let Some(p) = self.pipe.as_mut() {
            p.join()?;
        }
        let n = (self.end as usize).min(HEAD);
        if n == HEAD {
            self.t.pwrite_any(self.head.get(), 0)?;
        } else {
            self.t.pwrite_buffered(&self.head.get()[..n], 0)?;
        }
        self.t.sync()?;
        self.t.reread_partitions();
        Ok(self.end)
    }
}

impl Sink for DiskWriter<'_> {
    fn write_at(&mut self, off: u64, data: &[u8]) -> Result<(), WriteError> {
        DiskWriter::write_at(self, off, data)
    }
    fn zero(&mut self, off: u64, len: u64) -> Result<(), WriteError> {
        DiskWriter::zero(self, off, len)
    }
}

/// Streams image bytes in order: a [`DiskWriter`] whose checks run once the first MiB is in.
pub struct StreamWriter<'t> {
    w: DiskWriter<'t>,
    offset: u64,
}

impl<'t> StreamWriter<'t> {
    pub fn new(t: &'t Target) -> StreamWriter<'t> {
        StreamWriter {
            w: DiskWriter::new(t),
            offset: 0,
        }
    }

    /// Image bytes received so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    pub fn write(&mut self, data: &[u8]) -> Result<(), WriteError> {
        let (off, end) = (self.offset, self.offset + data.len() as u64);
        if !self.w.started && end >= HEAD as u64 {
            // The head is complete with this write: check it before anything reaches the disk.
            let n = (HEAD as u64 - off.min(HEAD as u64)) as usize;
            let mut head = self.w.head.get()[..off.min(HEAD as u64) as usize].to_vec();
            head.extend_from_slice(&data[..n.min(data.len())]);
            self.w.room(end)?;
            self.w.check_head(&head)?;
        }
        self.w.write_at(off, data)?;
        self.offset = end;
        Ok(())
    }

    pub fn into_inner(self) -> DiskWriter<'t> {
        self.w
    }

    pub fn finish(&mut self) -> Result<u64, WriteError> {
        self.w.finish()
    }

    pub fn commit(self) -> Result<u64, WriteError> {
        self.w.commit()
    }
}

/// After a failure: make sure nothing bootable or half-written is left.
pub fn abort(t: &Target) {
    if let Err(e) = t.wipe_ends() {
        tracing::error!(path = %t.path().display(), error = %e, "could not wipe the disk after a failed write");
    }
    t.reread_partitions();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::os::unix::fs::FileExt;

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
        let disk = std::fs::read(t.path()).unwrap();
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
        let disk = std::fs::read(t.path()).unwrap();
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
            std::fs::read(t.path()).unwrap().iter().all(|b| *b == 0xAA),
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
            std::fs::read(t.path()).unwrap().iter().all(|b| *b == 0xAA),
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
        let disk = std::fs::read(t.path()).unwrap();
        assert_eq!(&disk[..1000], &[7u8; 1000][..]);
        abort(&t);
        let disk = std::fs::read(t.path()).unwrap();
        assert!(
            disk[..HEAD].iter().all(|b| *b == 0)
                && disk[disk.len() - HEAD..].iter().all(|b| *b == 0)
        );
        assert_eq!(gpt_sector_size(&[0u8; 8192]), None);
    }
}
