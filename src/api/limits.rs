//! How many connections the API holds, so that no client can lock the conductor out.
//!
//! The agent has one descriptor table for everything: API connections, heartbeats, image
//! downloads, disks, tools. A client that opens connections without end (idle ones cost it
//! nothing) would otherwise fill it: `accept` fails with EMFILE, the conductor's requests wait
//! in the listen backlog until idle connections time out, and the agent's own heartbeats and
//! downloads fail meanwhile. So:
//! * connections are counted per peer address and in all; past either limit a new connection
//!   is closed at once (the listener keeps accepting, so the backlog never fills);
//! * the total stays below the descriptor limit by a reserve kept for the agent's own work.
//!
//! The conductor needs a handful of connections; one address gets [`PER_PEER`] of them.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Connections one address may hold at once (a conductor uses a few; a monitoring system or
/// a second conductor behind the same address some more).
pub const PER_PEER: usize = 64;
/// Connections in all, at most (further bounded by the descriptor limit).
pub const MAX_TOTAL: usize = 512;
/// Descriptors kept for the agent's own work, whatever the clients do.
pub const RESERVED_FDS: u64 = 256;

// One address never takes more than a quarter of the table.
const _: () = assert!(PER_PEER * 4 <= MAX_TOTAL);

/// The connection total for a descriptor limit of `nofile`: at most [`MAX_TOTAL`], with
/// [`RESERVED_FDS`] left over, and never fewer than [`PER_PEER`] (a tiny limit still lets the
/// conductor in).
pub fn total_for(nofile: u64) -> usize {
    let room = usize::try_from(nofile.saturating_sub(RESERVED_FDS)).unwrap_or(MAX_TOTAL);
    room.clamp(PER_PEER, MAX_TOTAL)
}

#[derive(Default)]
struct Counts {
    total: usize,
    by_peer: HashMap<IpAddr, usize>,
}

/// The open connections, counted; a [`Slot`] is one of them, given back when dropped.
#[derive(Clone)]
pub struct Slots {
    counts: Arc<Mutex<Counts>>,
    total: usize,
    per_peer: usize,
}

impl Slots {
    pub fn new(total: usize, per_peer: usize) -> Slots {
        Slots {
            counts: Arc::default(),
            total,
            per_peer,
        }
    }

    /// A slot for a connection from `peer`, or why not.
    pub fn take(&self, peer: IpAddr) -> Result<Slot, Refused> {
        // An IPv4 client of a dual-stack listener shows as ::ffff:a.b.c.d: one address.
        let peer = peer.to_canonical();
        let mut c = crate::panics::lock(&self.counts);
        if c.total >= self.total {
            return Err(Refused::Total(self.total));
        }
        let n = c.by_peer.entry(peer).or_insert(0);
        if *n >= self.per_peer {
            return Err(Refused::PerPeer(self.per_peer));
        }
        *n += 1;
        c.total += 1;
        Ok(Slot {
            counts: self.counts.clone(),
            peer,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        crate::panics::lock(&self.counts).total
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("{0} connections from this address are open already")]
    PerPeer(usize),
    #[error("{0} connections are open already")]
    Total(usize),
}

/// One counted connection.
pub struct Slot {
    counts: Arc<Mutex<Counts>>,
    peer: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = crate::panics::lock(&self.counts);
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.by_peer.get_mut(&self.peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.by_peer.remove(&self.peer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_peer_and_total_limits_and_slots_come_back() {
        let s = Slots::new(5, 2);
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "::ffff:127.0.0.2".parse().unwrap();
        let c: IpAddr = "127.0.0.1".parse().unwrap();
        let a1 = s.take(a).unwrap();
        let _a2 = s.take(b).unwrap();
        assert_eq!(
            s.take(a).err(),
            Some(Refused::PerPeer(2)),
            "v4-mapped is the same peer"
        );
        let held: Vec<Slot> = (0..2).map(|_| s.take(c).unwrap()).collect();
        assert_eq!(s.take(c).err(), Some(Refused::PerPeer(2)));
        let d: IpAddr = "10.0.0.9".parse().unwrap();
        let _d1 = s.take(d).unwrap();
        assert_eq!(
            s.take("10.0.0.10".parse().unwrap()).err(),
            Some(Refused::Total(5))
        );
        drop(a1);
        drop(held);
        assert_eq!(s.open(), 2);
        assert!(s.take(a).is_ok() && s.take(c).is_ok());
    }

    #[test]
    fn the_total_leaves_a_reserve_of_descriptors() {
        assert_eq!(total_for(1024), 512);
        assert_eq!(total_for(600), 344);
        assert_eq!(total_for(320), 64);
        assert_eq!(total_for(100), PER_PEER);
        assert_eq!(total_for(300), PER_PEER);
        assert_eq!(total_for(u64::MAX), MAX_TOTAL);
    }
}
