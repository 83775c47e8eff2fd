//! Serving peers: everything sent to a peer (our requests and announcements, and the blocks it
//! asks for, from memory or read back from the disk and checked again) goes out from one task
//! per peer. The peer's reader only queues its requests here (a few bytes each), so neither a
//! disk read nor a peer slow to take its blocks holds up what this node downloads, and a client
//! keeping hundreds of requests outstanding (aria2c does) is served, not dropped.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;

use super::super::wire::{self, Message};
use super::state::Shared;

/// The image's first MiB reaches the disk last (see image::write): not served from there.
const HEAD_WRITTEN_LAST: u64 = 1 << 20;

/// Requests of one peer waiting for their answer (a few bytes each; clients keep up to a few
/// hundred outstanding on a fast link). More, and the peer is asking faster than it reads.
pub(super) const ASKED: usize = 512;

/// Bytes of messages gathered for one write to a peer (two blocks).
const WRITE_BUFFER: usize = 32 << 10;

/// A block a peer asked for, checked against its piece already.
#[derive(Debug, Clone, Copy)]
pub(super) struct Ask {
    pub(super) index: u32,
    pub(super) begin: u32,
    pub(super) length: u32,
}

/// The write side of one peer connection: our own messages first, then the peer's requests,
/// answered in order.
pub(super) async fn serve(
    sh: Arc<Shared>,
    w: OwnedWriteHalf,
    mut ours: mpsc::Receiver<Message>,
    mut asks: mpsc::Receiver<Ask>,
) {
    // Messages queued at once leave in one write: a piece completed is a `have` to every
    // peer, a piece asked for is 16 requests, and a system call each cost more CPU than the
    // rest of sharing when 32 agents share two cores.
    let mut w = BufWriter::with_capacity(WRITE_BUFFER, w);
    // A refusal (the piece neither in memory nor on the disk) is a choke, then an unchoke:
    // the peer drops its requests and may ask again later; once per piece, since a choke
    // cancels all its requests, those for the pieces we do have too.
    let mut refused: HashSet<u32> = HashSet::new();
    loop {
        let m = tokio::select! {
            biased;
            m = ours.recv() => m,
            a = asks.recv() => match a {
                Some(a) => match answer(&sh, a).await {
                    Some(m) => Some(m),
                    None if refused.insert(a.index) => {
                        if wire::send(&mut w, &Message::Choke).await.is_err() {
                            break;
                        }
                        Some(Message::Unchoke)
                    }
                    None => continue,
                },
                None => None,
            },
        };
        let Some(m) = m else { break };
        if let Message::Piece { data, .. } = &m {
            if let Some(wait) = sh.upload_wait(data.len()) {
                // What is written already does not wait for the upload budget.
                if w.flush().await.is_err() {
                    break;
                }
                tokio::time::sleep(wait).await;
            }
            sh.lock().stats.uploaded_bytes += data.len() as u64;
        }
        if wire::send(&mut w, &m).await.is_err() {
            break;
        }
        if ours.is_empty() && asks.is_empty() && w.flush().await.is_err() {
            break;
        }
    }
}

/// The block asked for, if this node has its piece in memory or on the disk.
async fn answer(sh: &Shared, a: Ask) -> Option<Message> {
    let cached = sh.lock().cache.get(&a.index).cloned();
    let piece = match cached {
        Some(p) => p,
        None => sh.read_back(a.index).await?,
    };
    let data = Bytes::copy_from_slice(piece.get(a.begin as usize..(a.begin + a.length) as usize)?);
    Some(Message::Piece {
        index: a.index,
        begin: a.begin,
        data,
    })
}

impl Shared {
    /// Piece `i` from the disk, if the pipeline has written it there and it reads back whole.
    async fn read_back(&self, i: u32) -> Option<Bytes> {
        let (start, end) = self.t.piece_range(i);
        // The first MiB is written last (after the checksum): never there while serving.
        if start < HEAD_WRITTEN_LAST {
            return None;
        }
        let d = self.lock().disk.clone()?;
        let written = d.progress.written.load(Ordering::Relaxed);
        if end > written || self.lock().unreadable.get(&i) == Some(&written) {
            return None;
        }
        // One piece read at a time: what a peer's requests can make this node allocate and
        // hash is one piece, not one per request.
        let _one = self.disk_reads.acquire().await.ok()?;
        if self.lock().cache.contains_key(&i) {
            return self.lock().cache.get(&i).cloned();
        }
        let t = self.t.clone();
        let read = tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::FileExt;
            let mut buf = vec![0u8; (end - start) as usize];
            d.file
                .read_exact_at(&mut buf, d.base.checked_add(start)?)
                .ok()?;
            // The first MiB is written last, a write may still be in flight: only what reads
            // back as the torrent says leaves.
            t.check_piece(i, &buf).then(|| Bytes::from(buf))
        });
        let Some(data) = read.await.ok().flatten() else {
            // Not read again until more has been written.
            self.lock().unreadable.insert(i, written);
            return None;
        };
        self.keep(i, data.clone());
        Some(data)
    }

    /// Take `n` bytes from the upload budget: how long to wait before sending them, if at all.
    fn upload_wait(&self, n: usize) -> Option<Duration> {
        let rate = self.opts.upload_rate;
        if rate == 0 {
            return None;
        }
        let mut b = self.upload.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        // A token bucket holding at most a quarter second of upload.
        let refill = now.duration_since(b.0).as_secs_f64() * rate as f64;
        b.1 = (b.1 + refill).min(rate as f64 / 4.0) - n as f64;
        b.0 = now;
        (b.1 < 0.0).then(|| Duration::from_secs_f64(-b.1 / rate as f64))
    }
}
