//! How a node takes part in sharing: what the kernel command line or `rivet install` says.

use std::net::SocketAddr;
use std::time::Duration;

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
