//! The swarm one deploy joins: pieces of the image come from peers (other agents deploying the
//! same image, or any BitTorrent client seeding it) and from the image server as a web seed
//! (BEP 19: ranged GETs with the image's own credentials), are each checked against the
//! torrent, and are handed to the image pipeline in order. Nothing unverified leaves this
//! module: not to the disk, not to another peer.
//!
//! Memory: only pieces inside a window ahead of the pipeline are fetched (so assembly buffers
//! and pieces waiting for their turn are bounded by the window), and delivered pieces are kept
//! to serve others within the same budget, oldest dropped first.
//!
//! The swarm runs on its own thread and runtime for as long as the image is being written (its
//! owner, the pipeline, drops it at the end): a node never serves once its deploy is over.
//!
//! Parts: `state` (what this node knows, and which piece to fetch from whom), `discovery`
//! (peers found and met), `session` (one peer: reading it, downloading from it), `upload`
//! (serving it), `web_seed` (the image server).

mod discovery;
mod options;
mod session;
mod state;
mod upload;
mod web_seed;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::torrent::Torrent;
use crate::image::fetch::{self, FetchError, FetchOptions, Msg};
use crate::image::progress::Progress;
pub use options::ShareOptions;
pub use state::ShareStats;
use state::{DiskCopy, Shared};

/// A running swarm for one torrent.
pub struct Swarm {
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Swarm {
    /// Bind the peer port, start discovery and the web seed. Fails only when nothing can run
    /// (no port, no thread): the caller falls back to the image server alone.
    pub fn start(
        t: Torrent,
        urls: Vec<String>,
        o: &FetchOptions,
        opts: ShareOptions,
    ) -> std::io::Result<Swarm> {
        let t = Arc::new(t);
        // Both address families when the kernel has IPv6, else IPv4 alone.
        let listener = std::net::TcpListener::bind(opts.listen).or_else(|e| {
            if opts.listen.ip().is_unspecified() && opts.listen.is_ipv6() {
                std::net::TcpListener::bind(SocketAddr::from(([0u8; 4], opts.listen.port())))
            } else {
                Err(e)
            }
        })?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared::new(t, opts, port));
        let window = shared.window;
        let client = fetch::client(o).map_err(std::io::Error::other)?;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let sh = shared.clone();
        let o = o.clone();
        let thread = std::thread::Builder::new()
            .name("rivet-swarm".into())
            .spawn(move || {
                let _nice = crate::system::priority::lower_current_thread();
                // Its blocking threads read pieces back from the disk for peers (and resolve
                // the image server's name): their reads wait for the write's.
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .on_thread_start(crate::system::priority::idle_io_current_thread)
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        sh.fail(FetchError::Client(format!("swarm runtime: {e}")));
                        return;
                    }
                };
                rt.block_on(async move {
                    match TcpListener::from_std(listener) {
                        Ok(l) => {
                            tokio::spawn(discovery::accept(sh.clone(), l));
                        }
                        Err(e) => tracing::warn!(error = %e, "peer sharing: cannot accept peers"),
                    }
                    tokio::spawn(discovery::discover(sh.clone()));
                    for worker in 0..2 {
                        let (sh, c, u, o) = (sh.clone(), client.clone(), urls.clone(), o.clone());
                        tokio::spawn(web_seed::web_seed(sh, c, u, o, worker));
                    }
                    let _ = stop_rx.await;
                });
                rt.shutdown_background();
            })?;
        tracing::info!(
            info_hash = %shared.t.info_hash_hex(),
            port,
            pieces = shared.t.piece_count(),
            piece_length = shared.t.piece_length,
            window,
            "peer sharing on"
        );
        Ok(Swarm {
            shared,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// The pipeline writes this raw image to `file` from `base`: serve pieces from there once
    /// written (progress.written says how far).
    pub fn serve_from_disk(&self, file: std::fs::File, base: u64, progress: Arc<Progress>) {
        self.shared.lock().disk = Some(DiskCopy {
            file: Arc::new(file),
            base,
            progress,
        });
    }

    pub fn port(&self) -> u16 {
        self.shared.port
    }

    pub fn stats(&self) -> ShareStats {
        self.shared.lock().stats.clone()
    }

    /// Hand the image to the pipeline from byte 0, piece by verified piece, in order.
    pub async fn stream(
        &self,
        to_decode: mpsc::Sender<Msg>,
        to_hash: mpsc::Sender<Bytes>,
        progress: &Arc<Progress>,
        max_duration: Option<Duration>,
    ) -> Result<u64, FetchError> {
        let work = self.stream_inner(to_decode, to_hash, progress);
        match max_duration {
            Some(max) => tokio::time::timeout(max, work)
                .await
                .unwrap_or(Err(FetchError::Timeout(max))),
            None => work.await,
        }
    }

    async fn stream_inner(
        &self,
        to_decode: mpsc::Sender<Msg>,
        to_hash: mpsc::Sender<Bytes>,
        progress: &Arc<Progress>,
    ) -> Result<u64, FetchError> {
        let sh = &self.shared;
        let count = sh.t.piece_count();
        {
            let mut s = sh.lock();
            s.next = 0;
            s.next_since = Instant::now();
        }
        sh.changed.notify_waiters();
        progress.total.store(sh.t.length, Ordering::Relaxed);
        to_decode
            .send(Msg::Total(sh.t.length))
            .await
            .map_err(|_| FetchError::Stopped)?;
        let mut sent: u64 = 0;
        let mut i = 0;
        while i < count {
            let notified = sh.changed.notified();
            let ready = {
                let s = sh.lock();
                if let Some(e) = &s.fatal {
                    return Err(e.clone());
                }
                s.cache.get(&i).cloned()
            };
            let Some(piece) = ready else {
                // Woken by any change; the timeout is a safety net, not the mechanism.
                let _ = tokio::time::timeout(Duration::from_millis(500), notified).await;
                continue;
            };
            sent += piece.len() as u64;
            fetch::hand_on(piece, progress, &to_decode, &to_hash).await?;
            i += 1;
            {
                let mut s = sh.lock();
                s.next = i;
                s.next_since = Instant::now();
                sh.evict(&mut s);
            }
            sh.changed.notify_waiters();
        }
        let st = self.stats();
        tracing::info!(
            origin_bytes = st.origin_bytes,
            peer_bytes = st.peer_bytes,
            uploaded_bytes = st.uploaded_bytes,
            bad_pieces = st.bad_pieces,
            banned = st.banned,
            peers = st.peers_seen,
            "image received through the swarm"
        );
        Ok(sent)
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
