//! Finding and meeting peers: the listening socket, the given peers, Local Service Discovery
//! (BEP 14), and the handshake; a peer met becomes a session (session.rs).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use super::super::{lsd, wire};
use super::session::session;
use super::state::{Shared, State, MAX_PEERS};

/// Peers dialing in (a banned address is not even shaken hands with).
pub(super) async fn accept(sh: Arc<Shared>, l: TcpListener) {
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

pub(super) async fn discover(sh: Arc<Shared>) {
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
