//! The descriptor limit. A ramdisk's processes start with a soft limit of 1024 (the kernel's
//! default), however high the hard one: the agent raises its soft limit to the hard one at
//! start, and the API server sizes its connection limits from what it got.

use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// Raise the soft limit on open descriptors to the hard one; returns the soft limit now in
/// force (1024 when it cannot be read).
pub fn raise_nofile() -> u64 {
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => {
                tracing::debug!(from = soft, to = hard, "descriptor limit raised");
                hard
            }
            Err(e) => {
                tracing::warn!(soft, hard, error = %e, "cannot raise the descriptor limit");
                soft
            }
        },
        Ok((soft, _)) => soft,
        Err(_) => 1024,
    }
}

/// The soft limit on open descriptors (1024 when it cannot be read).
pub fn nofile() -> u64 {
    getrlimit(Resource::RLIMIT_NOFILE).map_or(1024, |(soft, _)| soft)
}
