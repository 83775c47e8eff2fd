//! What one node knows of the swarm (its pieces, its peers, what is being fetched from whom)
//! and the choices made from it: which piece to ask a peer for, which to ask the server for.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::Rng;
use tokio::sync::{mpsc, Notify};

use super::super::torrent::Torrent;
use super::super::wire::{self, Message};
use super::options::ShareOptions;
use crate::image::fetch::FetchError;
use crate::image::progress::Progress;

/// At most this many peers at once.
pub(super) const MAX_PEERS: usize = 32;

/// Where a piece came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Source {
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

/// A connected peer, as this node sees it.
pub(super) struct PeerView {
    pub(super) addr: SocketAddr,
    pub(super) field: Vec<u8>,
    /// The first piece it lacks: where its window starts, if it is an agent like this one.
    pub(super) first_missing: u32,
    pub(super) unchoked_us: bool,
    pub(super) tx: mpsc::Sender<Message>,
}

/// What changes as the swarm runs, under one lock.
pub(super) struct State {
    /// Verified pieces in memory.
    pub(super) cache: BTreeMap<u32, Bytes>,
    pub(super) cached_bytes: usize,
    /// Pieces ever verified here (announced to peers).
    pub(super) have: Vec<bool>,
    /// The next piece the pipeline wants, and since when.
    pub(super) next: u32,
    pub(super) next_since: Instant,
    /// Pieces being fetched: since when, and by whom.
    pub(super) claimed: HashMap<u32, (Instant, Source)>,
    /// When each piece of the window was first wanted (for [`UNANNOUNCED`]).
    pub(super) wanted_since: HashMap<u32, Instant>,
    pub(super) peers: HashMap<[u8; 20], PeerView>,
    /// Addresses connected to or tried.
    pub(super) known: HashSet<SocketAddr>,
    /// Hosts that sent a corrupt piece.
    pub(super) banned: HashSet<std::net::IpAddr>,
    pub(super) banned_ids: HashSet<[u8; 20]>,
    pub(super) fatal: Option<FetchError>,
    pub(super) stats: ShareStats,
    /// Connections not yet peers (dialing, handshake).
    pub(super) handshaking: usize,
    /// Peers that stalled, not dialed again before then.
    pub(super) cooldown: HashMap<SocketAddr, Instant>,
    /// Cached pieces in the order they came (the oldest delivered ones leave first).
    pub(super) order: VecDeque<u32>,
    /// A raw image: where its written bytes can be read back.
    pub(super) disk: Option<DiskCopy>,
    /// Pieces that did not read back whole, and how far the write was then.
    pub(super) unreadable: HashMap<u32, u64>,
}

/// Where a raw image's written bytes can be read back to serve peers.
#[derive(Clone)]
pub(super) struct DiskCopy {
    pub(super) file: Arc<std::fs::File>,
    pub(super) base: u64,
    pub(super) progress: Arc<Progress>,
}

/// The swarm as all its tasks see it: the torrent, the options, this node's identity and
/// the state.
pub(super) struct Shared {
    pub(super) t: Arc<Torrent>,
    pub(super) opts: ShareOptions,
    pub(super) window: u32,
    pub(super) peer_id: [u8; 20],
    pub(super) port: u16,
    pub(super) state: Mutex<State>,
    pub(super) changed: Notify,
    pub(super) upload: Mutex<(Instant, f64)>,
    pub(super) disk_reads: tokio::sync::Semaphore,
}

impl State {
    /// No peer to take pieces from: none connected, or only clients that are not agents
    /// deploying too and have no piece of the window this node lacks (downloaders it serves:
    /// it takes the image from the server as fast as when alone).
    pub(super) fn alone(&self, window: u32) -> bool {
        let end = self.next.saturating_add(window).min(self.have.len() as u32);
        !self.peers.iter().any(|(id, p)| {
            id.starts_with(AGENT_ID_PREFIX)
                || (self.next..end)
                    .any(|i| wire::bit(&p.field, i) && self.have.get(i as usize) == Some(&false))
        })
    }
}

impl Shared {
    pub(super) fn new(t: Arc<Torrent>, opts: ShareOptions, port: u16) -> Shared {
        let piece = t.piece_length as usize;
        let window = ((opts.cache_bytes / 2) / piece).clamp(2, 1024) as u32;
        let mut peer_id = *b"-RV0001-000000000000";
        debug_assert!(peer_id.starts_with(AGENT_ID_PREFIX));
        rand::thread_rng().fill(&mut peer_id[8..]);
        let count = t.piece_count() as usize;
        Shared {
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
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves consistent-enough state for a
        // failure report; the deploy fails on its own.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A piece to fetch from a peer whose bitfield is `field`.
    pub(super) fn pick_for_peer(&self, field: &[u8]) -> Option<u32> {
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
    pub(super) fn pick_for_origin(&self) -> Option<u32> {
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
        let starving = s.alone(self.window) || s.next_since.elapsed() > STARVING;
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
    pub(super) fn responsible(&self, s: &State, i: u32) -> bool {
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

    pub(super) fn unclaim(&self, i: u32) {
        self.lock().claimed.remove(&i);
        self.changed.notify_waiters();
    }

    /// A verified piece: keep it, tell the peers.
    pub(super) fn complete(&self, i: u32, data: Bytes, from: Source) {
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
    pub(super) fn evict(&self, s: &mut State) {
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
    pub(super) fn keep(&self, i: u32, data: Bytes) {
        let mut s = self.lock();
        if s.cache.contains_key(&i) {
            return;
        }
        s.cached_bytes += data.len();
        s.cache.insert(i, data);
        s.order.push_back(i);
        self.evict(&mut s);
    }

    pub(super) fn fail(&self, e: FetchError) {
        let mut s = self.lock();
        if s.fatal.is_none() {
            s.fatal = Some(e);
        }
        drop(s);
        self.changed.notify_waiters();
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(field: Vec<u8>) -> PeerView {
        PeerView {
            addr: SocketAddr::from(([127, 0, 0, 1], 6881)),
            field,
            first_missing: 0,
            unchoked_us: true,
            tx: mpsc::channel(1).0,
        }
    }

    #[test]
    fn a_node_serving_only_downloaders_is_alone_with_the_server() {
        // 16 pieces of 16 KiB; a window of 4 (the cache holds 8 pieces).
        let doc = super::super::super::torrent::make(&[5u8; 16 << 14][..], "i", 1 << 14, &[])
            .expect("torrent");
        let t = Arc::new(Torrent::parse(&doc).expect("parse"));
        let opts = ShareOptions {
            cache_bytes: 8 << 14,
            ..Default::default()
        };
        let sh = Shared::new(t, opts, 1);
        assert_eq!(sh.window, 4);
        let mut s = sh.lock();
        assert!(s.alone(sh.window), "no peer");
        // A client with nothing, then with only what this node gave it.
        s.peers.insert([7u8; 20], peer(vec![0, 0]));
        assert!(s.alone(sh.window));
        s.have[0] = true;
        s.have[1] = true;
        s.next = 2;
        s.peers.insert([7u8; 20], peer(vec![0b1100_0000, 0]));
        assert!(s.alone(sh.window), "holds only pieces this node has");
        // A piece beyond the window is of no use yet; one inside it is.
        s.peers
            .insert([7u8; 20], peer(vec![0b1100_0000, 0b1000_0000]));
        assert!(s.alone(sh.window), "piece 8 is beyond the window 2..6");
        s.peers.insert([7u8; 20], peer(vec![0b1110_0000, 0]));
        assert!(!s.alone(sh.window), "piece 2 is the next one");
        // Another agent deploying too: not alone, whatever it holds (it will hold pieces).
        s.peers.clear();
        let mut agent = *b"-RV0001-000000000000";
        agent[19] = 1;
        s.peers.insert(agent, peer(vec![0, 0]));
        assert!(!s.alone(sh.window));
    }

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
