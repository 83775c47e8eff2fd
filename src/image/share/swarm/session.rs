//! One connected peer: its messages read, one piece at a time requested from it and
//! assembled, checked, and a peer sending a corrupt piece banned.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::super::wire::{self, Message, BLOCK, MAX_REQUEST};
use super::state::{PeerView, Shared, Source, MAX_PEERS};
use super::upload::{self, Ask, ASKED};

/// Why a peer was left when it did not deliver; it is not dialed again for [`COOLDOWN`].
const STALLED: &str = "stalled";
const COOLDOWN: Duration = Duration::from_secs(30);

/// Bytes read from a peer at once (two blocks).
const READ_BUFFER: usize = 32 << 10;

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

/// One peer, handshake done: its messages read and our downloads from it run here, what we
/// send it goes out from its serving task (upload.rs).
pub(super) async fn session(sh: Arc<Shared>, s: TcpStream, addr: SocketAddr, id: [u8; 20]) {
    let (rd, wr) = s.into_split();
    // Many messages are a few bytes (have, request): read many at once.
    let mut rd = tokio::io::BufReader::with_capacity(READ_BUFFER, rd);
    // Our block requests for one piece (at most MAX_PIECE / BLOCK = 1024) and announcements.
    let (tx, rx) = mpsc::channel::<Message>(2048);
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
    // The peer's requests wait there for its serving task; each answer is made when sent (a
    // copy of one block, not a slice pinning its whole piece).
    let (ask_tx, ask_rx) = mpsc::channel::<Ask>(ASKED);
    let writer = tokio::spawn(upload::serve(sh.clone(), wr, rx, ask_rx));
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
    let why = download_loop(&sh, &mut msg_rx, &tx, &ask_tx, id, addr).await;
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
    up: &mpsc::Sender<Ask>,
    id: [u8; 20],
    addr: SocketAddr,
) -> String {
    let count = sh.t.piece_count();
    let mut pending: Option<Pending> = None;
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
                let ok = length > 0
                    && length <= MAX_REQUEST
                    && index < count
                    && u64::from(begin) + u64::from(length) <= u64::from(sh.t.piece_len(index));
                if !ok {
                    release(&mut pending);
                    return "a request outside its piece".into();
                }
                // A peer that does not read its answers while asking for more is dropped:
                // nothing of ours waits on it.
                let ask = Ask {
                    index,
                    begin,
                    length,
                };
                if up.try_send(ask).is_err() {
                    release(&mut pending);
                    return "more requests than it reads answers".into();
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
