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

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rand::Rng;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify};

use super::lsd;
use super::torrent::Torrent;
use super::wire::{self, Message, BLOCK, MAX_REQUEST};
use crate::image::fetch::{self, FetchError, FetchOptions, Msg};
use crate::image::progress::Progress;

/// How a node takes part (from `rivet-peer-share*` on the kernel command line, or `rivet
/// install --peer-share`).
#[derive(Debug, Clone)]
pub struct ShareOptions {
    /// Where to accept peers (port 0: any).
    pub listen: SocketAddr,
    /// Find peers by Local Service Discovery.
    pub lsd: bool,
    /// Peers to connect to from the start (tests, or a fixed seed).
    pub peers: Vec<SocketAddr>,
    /// Bytes of verified pieces held in memory (waiting for the pipeline or served to others).
    pub cache_bytes: usize,
    /// Upload ceiling in bytes per second (0: none).
    pub upload_rate: u64,
    /// A peer that sends nothing for a requested piece this long loses it.
    pub stall: Duration,
}

impl Default for ShareOptions {
    fn default() -> Self {
        ShareOptions {
            listen: SocketAddr::from(([0, 0, 0, 0], 0)),
            lsd: true,
            peers: Vec::new(),
            // With the window (half of it) and the pieces being assembled, what sharing adds
            // to the agent's memory: the deploy stays under its 64 MiB ceiling.
            cache_bytes: 16 << 20,
            upload_rate: 0,
            stall: Duration::from_secs(5),
        }
    }
}

impl ShareOptions {
    /// From the kernel command line (`rivet-peer-share*`); None when sharing is off.
    pub fn from_config(c: &crate::config::Config) -> Option<ShareOptions> {
        c.peer_share.then(|| ShareOptions {
            listen: std::net::SocketAddr::from(([0u8; 16], c.peer_share_port)),
            upload_rate: c.peer_share_upload_mib.saturating_mul(1 << 20),
            lsd: c.peer_share_lsd,
            peers: c.peer_share_peers.clone(),
            ..Default::default()
        })
    }
}

/// Where a piece came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Origin,
    Peer,
}

/// Figures for the logs and the benchmark.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ShareStats {
    pub origin_bytes: u64,
    pub peer_bytes: u64,
    pub uploaded_bytes: u64,
    pub bad_pieces: u32,
    pub banned: u32,
    pub peers_seen: u32,
}

struct PeerView {
    addr: SocketAddr,
    field: Vec<u8>,
    /// The first piece it lacks: where its window starts, if it is an agent like this one.
    first_missing: u32,
    unchoked_us: bool,
    tx: mpsc::Sender<Message>,
}

struct State {
    /// Verified pieces in memory.
    cache: BTreeMap<u32, Bytes>,
    cached_bytes: usize,
    /// Pieces ever verified here (announced to peers).
    have: Vec<bool>,
    /// The next piece the pipeline wants, and since when.
    next: u32,
    next_since: Instant,
    /// Pieces being fetched: since when, and by whom.
    claimed: HashMap<u32, (Instant, Source)>,
    /// When each piece of the window was first wanted (for [`UNANNOUNCED`]).
    wanted_since: HashMap<u32, Instant>,
    peers: HashMap<[u8; 20], PeerView>,
    /// Addresses connected to or tried.
    known: HashSet<SocketAddr>,
    /// Hosts that sent a corrupt piece.
    banned: HashSet<std::net::IpAddr>,
    banned_ids: HashSet<[u8; 20]>,
    fatal: Option<FetchError>,
    stats: ShareStats,
    /// Connections not yet peers (dialing, handshake).
    handshaking: usize,
    /// Peers that stalled, not dialed again before then.
    cooldown: HashMap<SocketAddr, Instant>,
    /// Cached pieces in the order they came (the oldest delivered ones leave first).
    order: VecDeque<u32>,
    /// A raw image: where its written bytes can be read back.
    disk: Option<DiskCopy>,
    /// Pieces that did not read back whole, and how far the write was then.
    unreadable: HashMap<u32, u64>,
}

#[derive(Clone)]
struct DiskCopy {
    file: Arc<std::fs::File>,
    base: u64,
    progress: Arc<Progress>,
}

struct Shared {
    t: Arc<Torrent>,
    opts: ShareOptions,
    window: u32,
    peer_id: [u8; 20],
    port: u16,
    state: Mutex<State>,
    changed: Notify,
    upload: Mutex<(Instant, f64)>,
    disk_reads: tokio::sync::Semaphore,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves consistent-enough state for a
        // failure report; the deploy fails on its own.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A piece to fetch from a peer whose bitfield is `field`.
    fn pick_for_peer(&self, field: &[u8]) -> Option<u32> {
        let mut s = self.lock();
        let end = s.next.saturating_add(self.window).min(self.t.piece_count());
        let pick = (s.next..end).find(|i| {
            !s.cache.contains_key(i) && !s.claimed.contains_key(i) && wire::bit(field, *i)
        })?;
        s.claimed.insert(pick, (Instant::now(), Source::Peer));
        Some(pick)
    }

    /// A piece for the web seed: one no peer that lets us download has, at random in the
    /// window (so nodes starting together fetch different pieces from the server).
    fn pick_for_origin(&self) -> Option<u32> {
        let mut s = self.lock();
        let end = s.next.saturating_add(self.window).min(self.t.piece_count());
        let now = Instant::now();
        let next = s.next;
        s.wanted_since.retain(|i, _| *i >= next);
        let mut free = Vec::new();
        for i in s.next..end {
            if s.cache.contains_key(&i) {
                continue;
            }
            let since = *s.wanted_since.entry(i).or_insert(now);
            let waited = now.duration_since(since) > UNANNOUNCED;
            // The first pieces of the window are the pipeline's next ones: a peer that holds
            // them claimed (or offers them) without delivering cannot keep them from the
            // server for more than a moment.
            let urgent = i < next.saturating_add(URGENT);
            match s.claimed.get(&i) {
                None => {}
                Some((at, Source::Peer)) if urgent && at.elapsed() > self.opts.stall / 2 => {}
                Some(_) => continue,
            }
            let offered = s
                .peers
                .values()
                .any(|p| p.unchoked_us && wire::bit(&p.field, i));
            // One node per piece goes to the server for it (rendezvous hashing over the
            // agents connected: each agent knows the others' ids, so all agree); the others
            // wait for its `have`. Whoever it is, a piece nobody has announced for a while is
            // fetched by any node (an agent gone, or a peer that only looks like one).
            let mine = self.responsible(&s, i)
                || waited
                || (i == next && s.next_since.elapsed() > STARVING);
            if (!offered && mine) || (urgent && waited) {
                free.push(i);
            }
        }
        // The pipeline waiting on its next piece: first when alone, and when it has waited
        // long with peers (every node of a fleet wants the same next piece: taken from the
        // server by all at once, it would come N times).
        let starving = s.peers.is_empty() || s.next_since.elapsed() > STARVING;
        let pick = if free.first() == Some(&s.next) && starving {
            s.next
        } else {
            *free.get(rand::thread_rng().gen_range(0..free.len().max(1)))?
        };
        s.claimed.insert(pick, (Instant::now(), Source::Origin));
        Some(pick)
    }

    /// Whether this node, of the agents it is connected to, is the one to fetch piece `i`
    /// from the server: the highest score of a stable hash of (peer id, piece).
    /// Only agents whose window holds the piece count: one that far behind would leave the
    /// nodes ahead waiting, piece after piece.
    fn responsible(&self, s: &State, i: u32) -> bool {
        let mine = rendezvous(&self.peer_id, i);
        s.peers
            .iter()
            .filter(|(id, p)| {
                id.starts_with(AGENT_ID_PREFIX)
                    && p.first_missing <= i
                    && i < p.first_missing.saturating_add(self.window)
            })
            .all(|(id, _)| rendezvous(id, i) < mine)
    }

    fn unclaim(&self, i: u32) {
        self.lock().claimed.remove(&i);
        self.changed.notify_waiters();
    }

    /// A verified piece: keep it, tell the peers.
    fn complete(&self, i: u32, data: Bytes, from: Source) {
        let mut s = self.lock();
        s.claimed.remove(&i);
        let len = data.len() as u64;
        match from {
            Source::Origin => s.stats.origin_bytes += len,
            Source::Peer => s.stats.peer_bytes += len,
        }
        if s.cache.contains_key(&i) || i < s.next {
            return;
        }
        s.cached_bytes += data.len();
        s.cache.insert(i, data);
        s.order.push_back(i);
        if !s.have[i as usize] {
            s.have[i as usize] = true;
            for p in s.peers.values() {
                // A peer too far behind to take it misses one announcement, nothing more.
                let _ = p.tx.try_send(Message::Have(i));
            }
        }
        self.evict(&mut s);
        drop(s);
        self.changed.notify_waiters();
    }

    /// Drop delivered pieces, oldest first, down to the budget (pieces the pipeline has yet
    /// to take stay: the window bounds them).
    fn evict(&self, s: &mut State) {
        let mut k = 0;
        while s.cached_bytes > self.opts.cache_bytes && k < s.order.len() {
            let i = s.order[k];
            if i >= s.next && s.cache.contains_key(&i) {
                k += 1;
                continue;
            }
            s.order.remove(k);
            if let Some(b) = s.cache.remove(&i) {
                s.cached_bytes -= b.len();
            }
        }
    }

    /// A piece read back from the disk and verified: held like the others, to answer the
    /// rest of the peer's requests for it.
    fn keep(&self, i: u32, data: Bytes) {
        let mut s = self.lock();
        if s.cache.contains_key(&i) {
            return;
        }
        s.cached_bytes += data.len();
        s.cache.insert(i, data);
        s.order.push_back(i);
        self.evict(&mut s);
    }

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

    fn fail(&self, e: FetchError) {
        let mut s = self.lock();
        if s.fatal.is_none() {
            s.fatal = Some(e);
        }
        drop(s);
        self.changed.notify_waiters();
    }

    /// Wait for the upload budget for `n` bytes.
    async fn throttle(&self, n: usize) {
        let rate = self.opts.upload_rate;
        if rate == 0 {
            return;
        }
        let wait = {
            let mut b = self.upload.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            // A token bucket holding at most a quarter second of upload.
            let refill = now.duration_since(b.0).as_secs_f64() * rate as f64;
            b.1 = (b.1 + refill).min(rate as f64 / 4.0) - n as f64;
            b.0 = now;
            (b.1 < 0.0).then(|| Duration::from_secs_f64(-b.1 / rate as f64))
        };
        if let Some(w) = wait {
            tokio::time::sleep(w).await;
        }
    }
}

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
        let piece = t.piece_length as usize;
        let window = ((opts.cache_bytes / 2) / piece).clamp(2, 1024) as u32;
        let mut peer_id = *b"-RV0001-000000000000";
        rand::thread_rng().fill(&mut peer_id[8..]);
        let count = t.piece_count() as usize;
        let shared = Arc::new(Shared {
            t,
            opts,
            window,
            peer_id,
            port,
            state: Mutex::new(State {
                cache: BTreeMap::new(),
                cached_bytes: 0,
                have: vec![false; count],
                next: 0,
                next_since: Instant::now(),
                claimed: HashMap::new(),
                wanted_since: HashMap::new(),
                peers: HashMap::new(),
                known: HashSet::new(),
                banned: HashSet::new(),
                banned_ids: HashSet::new(),
                fatal: None,
                stats: ShareStats::default(),
                handshaking: 0,
                cooldown: HashMap::new(),
                order: VecDeque::new(),
                disk: None,
                unreadable: HashMap::new(),
            }),
            changed: Notify::new(),
            upload: Mutex::new((Instant::now(), 0.0)),
            disk_reads: tokio::sync::Semaphore::new(1),
        });
        let client = fetch::client(o).map_err(std::io::Error::other)?;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let sh = shared.clone();
        let o = o.clone();
        let thread = std::thread::Builder::new()
            .name("rivet-swarm".into())
            .spawn(move || {
                let _nice = crate::system::priority::lower_current_thread();
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
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
                            tokio::spawn(accept(sh.clone(), l));
                        }
                        Err(e) => tracing::warn!(error = %e, "peer sharing: cannot accept peers"),
                    }
                    tokio::spawn(discover(sh.clone()));
                    for worker in 0..2 {
                        let (sh, c, u, o) = (sh.clone(), client.clone(), urls.clone(), o.clone());
                        tokio::spawn(web_seed(sh, c, u, o, worker));
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
            progress
                .downloaded
                .fetch_add(piece.len() as u64, Ordering::Relaxed);
            to_hash
                .send(piece.clone())
                .await
                .map_err(|_| FetchError::Stopped)?;
            to_decode
                .send(Msg::Data(piece))
                .await
                .map_err(|_| FetchError::Stopped)?;
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

/// The web seed: pieces nobody else has, by ranged GET, each verified.
async fn web_seed(
    sh: Arc<Shared>,
    c: reqwest::Client,
    urls: Vec<String>,
    o: FetchOptions,
    worker: u32,
) {
    // Nodes that start together learn of each other before most go to the server.
    let jitter = rand::thread_rng().gen_range(0..400);
    tokio::time::sleep(Duration::from_millis(jitter)).await;
    loop {
        let notified = sh.changed.notified();
        let (fatal, alone) = {
            let s = sh.lock();
            (s.fatal.is_some(), s.peers.is_empty())
        };
        if fatal {
            return;
        }
        // A second request to the server keeps a lone node's link full; with peers, one per
        // node is the node's share of the server, and fewer requests at once means fewer
        // pieces two nodes fetch from it at the same time.
        let pick = if worker == 0 || alone {
            sh.pick_for_origin()
        } else {
            None
        };
        let Some(i) = pick else {
            let _ = tokio::time::timeout(Duration::from_millis(250), notified).await;
            continue;
        };
        match origin_piece(&sh, &c, &urls, &o, i).await {
            Ok(data) => sh.complete(i, data, Source::Origin),
            Err(e) => {
                sh.unclaim(i);
                sh.fail(e);
                return;
            }
        }
    }
}

async fn origin_piece(
    sh: &Shared,
    c: &reqwest::Client,
    urls: &[String],
    o: &FetchOptions,
    i: u32,
) -> Result<Bytes, FetchError> {
    let (start, end) = sh.t.piece_range(i);
    let mut last = String::new();
    for attempt in 0..=o.retries {
        if attempt > 0 {
            tokio::time::sleep(o.retry_interval).await;
        }
        let mut body = match fetch::open_range(c, urls, o, start, end).await {
            Ok(b) => b,
            // A range answered from the wrong byte: one piece asked again, not the image.
            Err(FetchError::Restart(why)) => {
                last = why;
                continue;
            }
            Err(e) => return Err(e),
        };
        if let Some(total) = body.total {
            if total != sh.t.length {
                return Err(FetchError::Refused {
                    url: crate::redact::url(&urls[0]).into_owned(),
                    why: format!(
                        "the torrent describes a {}-byte image, the server's is {total} bytes: the torrent is for another image",
                        sh.t.length
                    ),
                });
            }
        }
        if body.start != start {
            return Err(FetchError::Refused {
                url: crate::redact::url(&urls[0]).into_owned(),
                why: "the image server ignores Range requests, so it cannot be a web seed".into(),
            });
        }
        let want = (end - start) as usize;
        let mut buf = BytesMut::with_capacity(want);
        let mut broke = None;
        while buf.len() < want {
            match body.resp.chunk().await {
                Ok(Some(b)) => {
                    let room = want - buf.len();
                    buf.extend_from_slice(&b[..b.len().min(room)]);
                }
                Ok(None) => break,
                Err(e) => {
                    broke = Some(crate::conductor::client::error_chain(&e));
                    break;
                }
            }
        }
        if buf.len() == want {
            let data = buf.freeze();
            if !sh.t.check_piece(i, &data) {
                return Err(FetchError::Refused {
                    url: crate::redact::url(&urls[0]).into_owned(),
                    why: format!(
                        "piece {i} from the image server does not match the torrent: the torrent is for another image"
                    ),
                });
            }
            return Ok(data);
        }
        last = broke.unwrap_or_else(|| format!("piece {i}: body ended early"));
        tracing::warn!(piece = i, error = %last, "web seed: piece interrupted, retrying");
    }
    Err(FetchError::Exhausted {
        attempts: o.retries + 1,
        last,
    })
}

async fn accept(sh: Arc<Shared>, l: TcpListener) {
    loop {
        match l.accept().await {
            Ok((s, addr)) => {
                let st = sh.lock();
                if st.banned.contains(&addr.ip()) || st.handshaking >= MAX_PEERS {
                    continue;
                }
                drop(st);
                let guard = Handshaking::new(&sh);
                let sh = sh.clone();
                tokio::spawn(peer(sh, s, addr, false, guard));
            }
            Err(e) => {
                tracing::debug!(error = %e, "peer sharing: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Why a peer was left when it did not deliver; it is not dialed again for [`COOLDOWN`].
const STALLED: &str = "stalled";
const COOLDOWN: Duration = Duration::from_secs(30);

/// The image's first MiB reaches the disk last (see image::write): not served from there.
const HEAD_WRITTEN_LAST: u64 = 1 << 20;

/// The first pieces of the window, the pipeline's next: the server is asked for them when a
/// peer holding or offering them does not deliver.
const URGENT: u32 = 4;

/// Rivet agents' peer ids begin so (Azureus-style client id).
const AGENT_ID_PREFIX: &[u8] = b"-RV";

/// A piece in the window that no peer has announced for this long is fetched from the server
/// by whoever wants it, whichever node was to fetch it.
const UNANNOUNCED: Duration = Duration::from_secs(2);

/// A stable score of (peer id, piece) for rendezvous hashing: the same in every agent
/// (splitmix64 over the id's random part and the piece index), cheap enough for every piece of
/// the window times every peer at each pick.
fn rendezvous(id: &[u8; 20], i: u32) -> u64 {
    let mut k = [0u8; 8];
    k.copy_from_slice(&id[12..20]);
    let mut z = u64::from_le_bytes(k) ^ u64::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The pipeline waiting this long on its next piece has it fetched from the server.
const STARVING: Duration = Duration::from_secs(1);

/// Blocks queued for one peer's upload (16 KiB each, as clients ask: 256 KiB a peer).
const UPLOAD_QUEUE: usize = 16;

/// At most this many peers at once.
const MAX_PEERS: usize = 32;

fn connect_to(sh: &Arc<Shared>, addr: SocketAddr) {
    {
        let mut s = sh.lock();
        let now = Instant::now();
        s.cooldown.retain(|_, until| *until > now);
        if s.banned.contains(&addr.ip())
            || s.cooldown.contains_key(&addr)
            || s.peers.len() + s.handshaking >= MAX_PEERS
            || !s.known.insert(addr)
        {
            return;
        }
    }
    let guard = Handshaking::new(sh);
    let sh = sh.clone();
    tokio::spawn(async move {
        let conn = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr)).await;
        match conn {
            Ok(Ok(s)) => peer(sh.clone(), s, addr, true, guard).await,
            _ => {
                // Tried again at its next announcement.
                sh.lock().known.remove(&addr);
            }
        }
    });
}

async fn discover(sh: Arc<Shared>) {
    // Given peers may not be listening yet: tried every second while not connected.
    let given = sh.opts.peers.clone();
    if !given.is_empty() {
        let sh = sh.clone();
        tokio::spawn(async move {
            loop {
                for p in &given {
                    connect_to(&sh, *p);
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }
    if !sh.opts.lsd {
        return;
    }
    let lsd = match lsd::Lsd::open() {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "peer sharing: no local service discovery");
            return;
        }
    };
    let ih = sh.t.info_hash_hex();
    let cookie = hex::encode(&sh.peer_id[8..]);
    let mut next_announce = Instant::now();
    let mut announced = 0u32;
    loop {
        if Instant::now() >= next_announce {
            lsd.announce(sh.port, &ih, &cookie).await;
            announced += 1;
            // Often while the swarm forms, then rarely (BEP 14 asks for restraint).
            next_announce = Instant::now()
                + if announced < 10 {
                    Duration::from_secs(1)
                } else {
                    Duration::from_secs(15)
                };
            // Connections lost (or never made) are worth another try now and then.
            let mut s = sh.lock();
            let State { known, peers, .. } = &mut *s;
            known.retain(|a| peers.values().any(|p| p.addr == *a));
        }
        let wait = next_announce.saturating_duration_since(Instant::now());
        let Ok(got) = tokio::time::timeout(wait, lsd.recv()).await else {
            continue;
        };
        match got {
            Ok((from, Some(a))) if a.info_hashes.contains(&ih) => {
                if a.cookie.as_deref() == Some(cookie.as_str()) {
                    continue;
                }
                // Two agents hearing each other would dial each other at once and each keep
                // a different one of the two connections: the one with the smaller cookie
                // dials. Other clients' cookies are not ours to order: dial them.
                let theirs = a.cookie.as_deref().unwrap_or("");
                let rivet_cookie =
                    theirs.len() == cookie.len() && theirs.bytes().all(|b| b.is_ascii_hexdigit());
                if rivet_cookie && theirs < cookie.as_str() {
                    continue;
                }
                let addr = lsd::peer_addr(from, a.port);
                let known = {
                    let s = sh.lock();
                    s.known.contains(&addr) || s.banned.contains(&addr.ip())
                };
                if !known {
                    tracing::debug!(peer = %addr, "peer sharing: peer announced");
                    connect_to(&sh, addr);
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(error = %e, "LSD receive failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// One peer connection, either way: handshake, then serve its requests and download from it.
async fn peer(sh: Arc<Shared>, s: TcpStream, addr: SocketAddr, outbound: bool, g: Handshaking) {
    if let Err(e) = handshake(&sh, s, addr, outbound, g).await {
        tracing::debug!(peer = %addr, error = %e, "peer sharing: handshake failed");
    }
}

/// A connection being dialed or shaken hands with: counted against [`MAX_PEERS`] with the
/// connected peers, so announcements from many addresses cannot open connections without end.
struct Handshaking(Arc<Shared>);

impl Handshaking {
    fn new(sh: &Arc<Shared>) -> Handshaking {
        sh.lock().handshaking += 1;
        Handshaking(sh.clone())
    }
}

impl Drop for Handshaking {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        s.handshaking = s.handshaking.saturating_sub(1);
    }
}

async fn handshake(
    sh: &Arc<Shared>,
    mut s: TcpStream,
    addr: SocketAddr,
    outbound: bool,
    counted: Handshaking,
) -> Result<(), wire::WireError> {
    let _ = s.set_nodelay(true);
    let ours = wire::handshake(&sh.t.info_hash, &sh.peer_id);
    if outbound {
        s.write_all(&ours).await?;
    }
    let (ih, id) = tokio::time::timeout(Duration::from_secs(10), wire::read_handshake(&mut s))
        .await
        .map_err(|_| wire::WireError::Protocol("no handshake within 10 s".into()))??;
    if ih != sh.t.info_hash || id == sh.peer_id {
        return Ok(());
    }
    if !outbound {
        s.write_all(&ours).await?;
    }
    {
        let st = sh.lock();
        if st.banned_ids.contains(&id) || st.peers.contains_key(&id) {
            return Ok(());
        }
    }
    // A peer from here on, counted as one.
    drop(counted);
    session(sh.clone(), s, addr, id).await;
    Ok(())
}

/// The download from one peer in progress.
struct Pending {
    index: u32,
    buf: Vec<u8>,
    received: Vec<bool>,
    left: u32,
    /// When a block not yet received last came.
    last: Instant,
    started: Instant,
}

async fn session(sh: Arc<Shared>, s: TcpStream, addr: SocketAddr, id: [u8; 20]) {
    let (mut rd, mut wr) = s.into_split();
    // Our block requests for one piece (at most MAX_PIECE / BLOCK = 1024) and the answers to
    // the peer's; a peer asking faster than it reads is dropped (see below).
    let (tx, mut rx) = mpsc::channel::<Message>(2048);
    let count = sh.t.piece_count();
    {
        let mut st = sh.lock();
        if st.peers.contains_key(&id) || st.peers.len() >= MAX_PEERS {
            return;
        }
        // Everything verified here, whether in memory, on the disk or neither any more (a
        // request for that is refused once): the peer also learns where this node stands.
        let field = wire::bitfield(count, |i| st.have.get(i as usize) == Some(&true));
        let _ = tx.try_send(Message::Bitfield(field));
        let _ = tx.try_send(Message::Unchoke);
        let _ = tx.try_send(Message::Interested);
        st.peers.insert(
            id,
            PeerView {
                addr,
                field: vec![0; count.div_ceil(8) as usize],
                first_missing: 0,
                unchoked_us: false,
                tx: tx.clone(),
            },
        );
        st.known.insert(addr);
        st.stats.peers_seen += 1;
    }
    tracing::info!(peer = %addr, "peer sharing: peer connected");
    // Blocks for the peer go their own, short way: the loop below waits for room there (so a
    // peer asking faster than the upload limit is slowed by TCP), and a block is a copy, not a
    // slice pinning its whole piece: what uploads hold is at most UPLOAD_QUEUE blocks a peer.
    let (up_tx, mut up_rx) = mpsc::channel::<Message>(UPLOAD_QUEUE);
    let writer_sh = sh.clone();
    let writer = tokio::spawn(async move {
        loop {
            let m = tokio::select! {
                biased;
                m = rx.recv() => m,
                m = up_rx.recv() => m,
            };
            let Some(m) = m else { break };
            if let Message::Piece { data, .. } = &m {
                writer_sh.throttle(data.len()).await;
                writer_sh.lock().stats.uploaded_bytes += data.len() as u64;
            }
            if wire::send(&mut wr, &m).await.is_err() {
                break;
            }
        }
    });
    // The reader on its own task: a message read half-way is never abandoned (reading is not
    // cancel-safe, and the loop below wakes up for other reasons).
    let (msg_tx, mut msg_rx) = mpsc::channel::<Result<Message, wire::WireError>>(16);
    let max = wire::max_message(count);
    let reader = tokio::spawn(async move {
        loop {
            let m = wire::read_message(&mut rd, max).await;
            let end = m.is_err();
            if msg_tx.send(m).await.is_err() || end {
                break;
            }
        }
    });
    let why = download_loop(&sh, &mut msg_rx, &tx, &up_tx, id, addr).await;
    reader.abort();
    writer.abort();
    let mut st = sh.lock();
    st.peers.remove(&id);
    st.known.remove(&addr);
    if why == STALLED {
        // Honest peers stall too (a busy node): not banned, but not asked again for a while.
        st.cooldown.insert(addr, Instant::now() + COOLDOWN);
    }
    drop(st);
    sh.changed.notify_waiters();
    tracing::info!(peer = %addr, reason = %why, "peer sharing: peer gone");
}

/// Read the peer's messages and keep one piece requested from it; returns why it ended.
async fn download_loop(
    sh: &Arc<Shared>,
    rd: &mut mpsc::Receiver<Result<Message, wire::WireError>>,
    tx: &mpsc::Sender<Message>,
    up: &mpsc::Sender<Message>,
    id: [u8; 20],
    addr: SocketAddr,
) -> String {
    let count = sh.t.piece_count();
    let mut pending: Option<Pending> = None;
    let mut refused: HashSet<u32> = HashSet::new();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let release = |p: &mut Option<Pending>| {
        if let Some(p) = p.take() {
            sh.unclaim(p.index);
        }
    };
    loop {
        // Ask for a piece when free and allowed to.
        if pending.is_none() && sh.lock().fatal.is_none() {
            let field = {
                let st = sh.lock();
                st.peers
                    .get(&id)
                    .filter(|p| p.unchoked_us)
                    .map(|p| p.field.clone())
            };
            if let Some(field) = field {
                if let Some(i) = sh.pick_for_peer(&field) {
                    let len = sh.t.piece_len(i);
                    let blocks = len.div_ceil(BLOCK);
                    for b in 0..blocks {
                        let begin = b * BLOCK;
                        let _ = tx.try_send(Message::Request {
                            index: i,
                            begin,
                            length: BLOCK.min(len - begin),
                        });
                    }
                    pending = Some(Pending {
                        index: i,
                        buf: vec![0; len as usize],
                        received: vec![false; blocks as usize],
                        left: blocks,
                        last: Instant::now(),
                        started: Instant::now(),
                    });
                }
            }
        }
        let notified = sh.changed.notified();
        let msg = tokio::select! {
            m = rd.recv() => m.unwrap_or_else(|| Err(wire::WireError::Protocol("connection closed".into()))),
            _ = tick.tick() => {
                // No new block for a while, or a piece dragged out block by block.
                let stalled = pending.as_ref().is_some_and(|p| {
                    p.last.elapsed() > sh.opts.stall || p.started.elapsed() > sh.opts.stall * 6
                });
                if stalled {
                    release(&mut pending);
                    return STALLED.into();
                }
                continue;
            }
            _ = notified => continue,
        };
        let msg = match msg {
            Ok(m) => m,
            Err(e) => {
                release(&mut pending);
                return e.to_string();
            }
        };
        match msg {
            Message::Bitfield(f) => {
                if f.len() != count.div_ceil(8) as usize {
                    release(&mut pending);
                    return "a bitfield of the wrong size".into();
                }
                if let Some(p) = sh.lock().peers.get_mut(&id) {
                    p.field = f.to_vec();
                    p.first_missing = 0;
                    while p.first_missing < count && wire::bit(&p.field, p.first_missing) {
                        p.first_missing += 1;
                    }
                }
                sh.changed.notify_waiters();
            }
            Message::Have(i) if i < count => {
                if let Some(p) = sh.lock().peers.get_mut(&id) {
                    if let Some(b) = p.field.get_mut((i / 8) as usize) {
                        *b |= 0x80 >> (i % 8);
                    }
                    while p.first_missing < count && wire::bit(&p.field, p.first_missing) {
                        p.first_missing += 1;
                    }
                }
                sh.changed.notify_waiters();
            }
            Message::Have(_) => {
                release(&mut pending);
                return "a have for a piece that does not exist".into();
            }
            Message::Unchoke => {
                if let Some(p) = sh.lock().peers.get_mut(&id) {
                    p.unchoked_us = true;
                }
            }
            Message::Choke => {
                // Our requests are dropped: that piece is not to be had here for now.
                if let Some(p) = pending.take() {
                    if let Some(v) = sh.lock().peers.get_mut(&id) {
                        if let Some(b) = v.field.get_mut((p.index / 8) as usize) {
                            *b &= !(0x80 >> (p.index % 8));
                        }
                    }
                    sh.unclaim(p.index);
                }
                if let Some(p) = sh.lock().peers.get_mut(&id) {
                    p.unchoked_us = false;
                }
                sh.changed.notify_waiters();
            }
            Message::Request {
                index,
                begin,
                length,
            } => {
                let piece = sh.lock().cache.get(&index).cloned();

                let ok = length > 0
                    && length <= MAX_REQUEST
                    && index < count
                    && u64::from(begin) + u64::from(length) <= u64::from(sh.t.piece_len(index));
                if !ok {
                    release(&mut pending);
                    return "a request outside its piece".into();
                }
                let piece = match piece {
                    Some(p) => Some(p),
                    None => sh.read_back(index).await,
                };
                match piece {
                    Some(p) => {
                        let data =
                            Bytes::copy_from_slice(&p[begin as usize..(begin + length) as usize]);
                        drop(p);
                        // A peer that does not read its answers while asking for more is
                        // dropped: nothing of ours waits on it.
                        if up.try_send(Message::Piece { index, begin, data }).is_err() {
                            release(&mut pending);
                            return "more requests than it reads answers".into();
                        }
                    }
                    // Neither in memory nor on the disk: a choke tells the peer its requests
                    // are gone, once per piece (its other requests for it are dropped).
                    None => {
                        if refused.insert(index) {
                            let _ = tx.try_send(Message::Choke);
                            let _ = tx.try_send(Message::Unchoke);
                        }
                    }
                }
            }
            Message::Piece { index, begin, data } => {
                let Some(p) = pending.as_mut().filter(|p| p.index == index) else {
                    continue;
                };
                let b = begin / BLOCK;
                let fits = begin % BLOCK == 0
                    && (b as usize) < p.received.len()
                    && data.len() == BLOCK.min(p.buf.len() as u32 - begin) as usize;
                if !fits {
                    release(&mut pending);
                    return "a block that was not asked for".into();
                }
                if !p.received[b as usize] {
                    p.received[b as usize] = true;
                    p.left -= 1;
                    p.buf[begin as usize..begin as usize + data.len()].copy_from_slice(&data);
                    p.last = Instant::now();
                }
                if p.left == 0 {
                    let Some(p) = pending.take() else { continue };
                    if sh.t.check_piece(p.index, &p.buf) {
                        sh.complete(p.index, Bytes::from(p.buf), Source::Peer);
                    } else {
                        sh.unclaim(p.index);
                        let mut st = sh.lock();
                        st.stats.bad_pieces += 1;
                        st.stats.banned += 1;
                        st.banned_ids.insert(id);
                        st.banned.insert(addr.ip());
                        drop(st);
                        tracing::warn!(
                            piece = p.index,
                            "peer sharing: a peer sent a corrupt piece; banned"
                        );
                        return format!("piece {} failed its hash: banned", p.index);
                    }
                }
            }
            Message::KeepAlive
            | Message::Interested
            | Message::NotInterested
            | Message::Cancel { .. }
            | Message::Other(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_agent_per_piece_goes_to_the_server() {
        let ids: Vec<[u8; 20]> = (0..8u8)
            .map(|k| {
                let mut id = *b"-RV0001-000000000000";
                rand::thread_rng().fill(&mut id[8..]);
                id[19] = k;
                id
            })
            .collect();
        let mut per = [0u32; 8];
        for i in 0..4000u32 {
            // Each agent decides alone, from its own id and the others'.
            let chosen: Vec<usize> = (0..8)
                .filter(|&a| {
                    let mine = rendezvous(&ids[a], i);
                    (0..8)
                        .filter(|&b| b != a)
                        .all(|b| rendezvous(&ids[b], i) < mine)
                })
                .collect();
            assert_eq!(chosen.len(), 1, "piece {i}: {chosen:?}");
            per[chosen[0]] += 1;
        }
        // About 500 each.
        assert!(per.iter().all(|n| (350..650).contains(n)), "{per:?}");
    }
}
