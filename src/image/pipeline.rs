//! The image pipeline: fetch → verify (hash tee) → decode → write, each stage on its own
//! thread so throughput is the slowest stage, not their sum, and memory stays bounded by the
//! channel depths and a few MiB of buffers whatever the image size.
//!
//! Order of commitment: every byte but the first MiB is written and flushed, then the hash of
//! the downloaded bytes is compared, and only then is the first MiB written. Any failure wipes
//! both ends of the disk.

use std::io::{BufReader, Cursor, Read};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::mpsc;

use super::decode::{self, Compression, Format, FormatError};
use super::fetch::{self, FetchError, FetchOptions, Msg};
use super::progress::Progress;
use super::qcow2::{self, Qcow2Error};
use super::qcow2_fetch::{self, PrepareError, Prepared};
use super::share::{self, ShareStats, Swarm};
use super::verify::{self, Expected, VerifyError};
use super::write::{self, DiskWriter, StreamWriter, Target, WriteError};

impl From<PrepareError> for ImageError {
    fn from(e: PrepareError) -> Self {
        match e {
            PrepareError::Fetch(f) => ImageError::Fetch(f),
            PrepareError::Qcow2(q) => ImageError::Qcow2(q),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    Verify(#[from] VerifyError),
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error(transparent)]
    Qcow2(#[from] Qcow2Error),
    #[error("the image data is corrupt ({what}): {detail}")]
    Corrupt { what: &'static str, detail: String },
    #[error("internal error: {0}")]
    Internal(String),
}

impl ImageError {
    /// The IPA error type the conductor sees for this failure.
    pub fn kind(&self) -> crate::error::ErrorKind {
        use crate::error::ErrorKind;
        match self {
            ImageError::Fetch(_) => ErrorKind::ImageDownload,
            ImageError::Verify(_) => ErrorKind::ImageChecksum,
            ImageError::Format(_) | ImageError::Corrupt { .. } => ErrorKind::InvalidImage,
            ImageError::Qcow2(Qcow2Error::Write(_)) => ErrorKind::ImageWrite,
            ImageError::Qcow2(_) => ErrorKind::InvalidImage,
            ImageError::Write(_) | ImageError::Internal(_) => ErrorKind::ImageWrite,
        }
    }
}

/// What to write.
#[derive(Debug, Clone)]
pub struct ImageRequest {
    pub urls: Vec<String>,
    pub expected: Expected,
    pub disk_format: Option<String>,
    pub permitted: Vec<String>,
    /// Share pieces with peers when the image has a torrent (`rivet-peer-share=1`).
    pub peer_share: Option<share::ShareOptions>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub bytes_downloaded: u64,
    pub bytes_written: u64,
    pub compression: Option<&'static str>,
    pub format: &'static str,
    pub checksum: String,
    pub restarts: u32,
    pub seconds: f64,
    /// Where the bytes came from when peer sharing was used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shared: Option<ShareStats>,
}

const CHANNEL_DEPTH: usize = 64;
const IO_CHUNK: usize = 1 << 20;

/// The decode stage's input: the fetched chunks as a `Read`.
struct ChannelReader {
    rx: mpsc::Receiver<Msg>,
    cur: Bytes,
    total: Option<u64>,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                Some(Msg::Data(b)) => self.cur = b,
                Some(Msg::Total(t)) => self.total = Some(t),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        bytes::Buf::advance(&mut self.cur, n);
        Ok(n)
    }
}

fn corrupt(what: &'static str) -> impl Fn(std::io::Error) -> ImageError {
    move |e| ImageError::Corrupt {
        what,
        detail: e.to_string(),
    }
}

/// Resolve the expected checksum (fetching a checksum file if the value is a URL).
pub fn resolve_checksum(
    algo: Option<&str>,
    value: &str,
    image_url: &str,
    md5_enabled: bool,
    o: &FetchOptions,
) -> Result<Expected, ImageError> {
    let value = if verify::is_url(value) {
        let body = fetch::fetch_small(value.trim(), o, 1 << 20)?;
        let text = String::from_utf8_lossy(&body);
        let name = image_url
            .split(['?', '#'])
            .next()
            .unwrap_or(image_url)
            .rsplit('/')
            .next()
            .unwrap_or("");
        verify::parse_checksum_file(&text, name)?
    } else {
        value.to_string()
    };
    Ok(match algo.map(str::trim).filter(|a| !a.is_empty()) {
        Some(a) => Expected::new(verify::Algo::parse(a)?, &value, md5_enabled)?,
        None => Expected::infer(&value, md5_enabled)?,
    })
}

/// Write the image onto `target`. Blocking: run it on a blocking thread.
pub fn run(
    req: &ImageRequest,
    o: &FetchOptions,
    target: &Target,
    progress: &Arc<Progress>,
) -> Result<Report, ImageError> {
    let started = Instant::now();
    let client = fetch::client(o)?;
    // With sharing on and a torrent beside the image, the pieces come through the swarm; it
    // serves others until this returns (the image written or the deploy failed).
    let swarm = match &req.peer_share {
        Some(so) => share::join(&req.urls, o, so)?,
        None => None,
    };
    let mut restarts = 0;
    let mut qcow2: Option<Prepared> = None;
    loop {
        match attempt(
            req,
            o,
            &client,
            target,
            progress,
            qcow2.as_ref(),
            swarm.as_ref(),
        ) {
            Ok(Attempt::Done(mut r)) => {
                r.restarts = restarts;
                r.shared = swarm.as_ref().map(Swarm::stats);
                r.seconds = started.elapsed().as_secs_f64();
                return Ok(r);
            }
            Err(ImageError::Fetch(FetchError::Restart(why))) if restarts < o.retries => {
                restarts += 1;
                tracing::warn!(reason = %why, restarts, "restarting the image transfer from byte 0");
                let d = progress.downloaded.swap(0, Ordering::Relaxed);
                progress.refetched.fetch_add(d, Ordering::Relaxed);
                progress.written.store(0, Ordering::Relaxed);
                std::thread::sleep(o.retry_interval);
            }
            Ok(Attempt::NeedsQcow2Map { start, size }) if qcow2.is_none() => {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| ImageError::Internal(e.to_string()))?;
                let prepared =
                    rt.block_on(qcow2_fetch::prepare(&client, &req.urls, o, &start, size));
                match prepared {
                    Ok(p) => qcow2 = Some(p),
                    Err(e) => {
                        write::abort(target);
                        return Err(e.into());
                    }
                }
                let d = progress.downloaded.swap(0, Ordering::Relaxed);
                progress.refetched.fetch_add(d, Ordering::Relaxed);
            }
            Ok(Attempt::NeedsQcow2Map { .. }) => {
                write::abort(target);
                return Err(ImageError::Internal(
                    "the qcow2 tables were read and asked for again".into(),
                ));
            }
            Err(e) => {
                write::abort(target);
                return Err(e);
            }
        }
    }
}

/// What one pass over the image's stream ended with.
enum Attempt {
    Done(Report),
    /// A qcow2 image: its tables are read (by range) before its data can be placed; the pass
    /// starts again with them. `start` is what was read so far, `size` the object's length.
    NeedsQcow2Map {
        start: Vec<u8>,
        size: Option<u64>,
    },
}

/// What decoding the stream gave.
enum Pass<'t> {
    Written(DiskWriter<'t>, Compression, Format),
    NeedsQcow2Map { start: Vec<u8>, size: Option<u64> },
}

fn attempt(
    req: &ImageRequest,
    o: &FetchOptions,
    client: &reqwest::Client,
    target: &Target,
    progress: &Arc<Progress>,
    qcow2: Option<&Prepared>,
    swarm: Option<&Swarm>,
) -> Result<Attempt, ImageError> {
    let (dtx, drx) = mpsc::channel::<Msg>(CHANNEL_DEPTH);
    let (htx, mut hrx) = mpsc::channel::<Bytes>(CHANNEL_DEPTH);
    let algo = req.expected.algo;
    // Below the agent API's threads: see system::priority.
    let _nice = crate::system::priority::lower_current_thread();
    std::thread::scope(|s| {
        let fetcher = s.spawn(move || -> Result<u64, FetchError> {
            let _nice = crate::system::priority::lower_current_thread();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| FetchError::Client(e.to_string()))?;
            match swarm {
                Some(sw) => rt.block_on(sw.stream(dtx, htx, progress, o.max_duration)),
                None => rt.block_on(fetch::stream(client, &req.urls, o, dtx, htx, progress)),
            }
        });
        let hasher = s.spawn(move || {
            let _nice = crate::system::priority::lower_current_thread();
            let mut h = algo.hasher();
            while let Some(b) = hrx.blocking_recv() {
                h.update(&b);
            }
            hex::encode(h.finalize())
        });
        // Decode and write here; the reader (and so the channel) is dropped when this returns,
        // which unblocks the fetcher if we stopped early.
        let decoded = decode_and_write(req, drx, target, progress, qcow2, swarm);
        let fetched = fetcher
            .join()
            .map_err(|_| ImageError::Internal("fetch thread panicked".into()))?;
        let digest = hasher
            .join()
            .map_err(|_| ImageError::Internal("hash thread panicked".into()))?;
        // A transfer failure explains whatever the decoder saw (a truncated stream), so it
        // takes precedence.
        let downloaded = match fetched {
            Ok(n) => n,
            // The decoder stopped reading: either it failed (report that), or the stream went on
            // after the end of the compressed image.
            Err(FetchError::Stopped) => {
                if let Pass::NeedsQcow2Map { start, size } = decoded? {
                    return Ok(Attempt::NeedsQcow2Map { start, size });
                }
                return Err(ImageError::Corrupt {
                    what: "trailing data",
                    detail: "data continues after the end of the compressed image".into(),
                });
            }
            Err(e) => return Err(ImageError::Fetch(e)),
        };
        let (mut w, compression, format) = match decoded? {
            Pass::Written(w, c, f) => (w, c, f),
            Pass::NeedsQcow2Map { start, size } => {
                return Ok(Attempt::NeedsQcow2Map { start, size })
            }
        };
        w.finish()?;
        req.expected.check(&digest)?;
        let written = w.commit()?;
        progress.written.store(written, Ordering::Relaxed);
        tracing::info!(bytes = written, checksum = %digest, "image written and verified");
        Ok(Attempt::Done(Report {
            bytes_downloaded: downloaded,
            bytes_written: written,
            compression: compression.name(),
            format: format.name(),
            checksum: digest,
            restarts: 0,
            seconds: 0.0,
            shared: None,
        }))
    })
}

/// Detect, check, decode and stream into a writer (not yet finished or committed).
fn decode_and_write<'t>(
    req: &ImageRequest,
    rx: mpsc::Receiver<Msg>,
    target: &'t Target,
    progress: &Arc<Progress>,
    qcow2: Option<&Prepared>,
    swarm: Option<&Swarm>,
) -> Result<Pass<'t>, ImageError> {
    let mut reader = ChannelReader {
        rx,
        cur: Bytes::new(),
        total: None,
    };
    let first = decode::read_up_to(&mut reader, Format::SNIFF).map_err(corrupt("reading"))?;
    if first.is_empty() {
        return Err(ImageError::Corrupt {
            what: "empty",
            detail: "the image is empty".into(),
        });
    }
    let compression = Compression::sniff(&first);
    let total = reader.total;
    let mut dec = compression
        .decoder(BufReader::with_capacity(
            IO_CHUNK,
            Cursor::new(first).chain(reader),
        ))
        .map_err(corrupt("decompressor"))?;
    let what = compression.name().unwrap_or("raw");
    let inner = decode::read_up_to(&mut dec, Format::SNIFF).map_err(corrupt(what))?;
    let format = Format::sniff(&inner);
    decode::check(format, req.disk_format.as_deref(), &req.permitted)?;
    if let (Compression::None, Some(t)) = (compression, total) {
        // Known size of an uncompressed image: refuse before touching the disk.
        target.check_size(t, true)?;
    }
    tracing::info!(format = format.name(), compression = ?compression.name(), "image recognised");
    if format == Format::Qcow2 {
        if compression != Compression::None {
            return Err(FormatError::Unsupported(
                "compressed qcow2 (a qcow2 file inside gzip/zstd/xz)",
            )
            .into());
        }
        let Some(p) = qcow2 else {
            return Ok(Pass::NeedsQcow2Map {
                start: inner,
                size: total,
            });
        };
        // Refusals first, then the wipe, then the data.
        target.check_size(p.map.header.virtual_size, true)?;
        let mut w = DiskWriter::new(target);
        w.check_head(&p.head)?;
        w.start()?;
        let stream = Cursor::new(inner).chain(dec);
        let done = |n: u64| progress.written.store(n, Ordering::Relaxed);
        qcow2::write_pass(&p.map, stream, &mut w, &done)?;
        return Ok(Pass::Written(w, compression, format));
    }
    if let (Some(sw), Compression::None) = (swarm, compression) {
        // The image's bytes are the disk's: pieces the swarm no longer holds in memory are
        // read back from there for peers (checked against the torrent first).
        match target.reader() {
            Ok((file, base)) => sw.serve_from_disk(file, base, progress.clone()),
            Err(e) => tracing::debug!(error = %e, "peer sharing: pieces served from memory only"),
        }
    }
    let mut w = StreamWriter::new(target);
    w.write(&inner)?;
    let mut buf = vec![0u8; IO_CHUNK];
    loop {
        let n = match dec.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(corrupt(what)(e)),
        };
        w.write(&buf[..n])?;
        progress.written.store(w.offset(), Ordering::Relaxed);
    }
    Ok(Pass::Written(w.into_inner(), compression, format))
}
