//! The boot timeline: when each phase between power-on and the first accepted heartbeat
//! happened, in seconds since the kernel started (CLOCK_BOOTTIME, the clock behind the
//! `/proc/uptime` that the ramdisk's /init prints), so one table covers the kernel, /init and
//! the agent. Each phase is logged once, the first time it is reached; later repeats (a second
//! lookup, a restarted heartbeat loop) say nothing new about start-up.

use std::sync::{Mutex, OnceLock};

/// Seconds since the kernel started, suspend included; 0 if the clock cannot be read.
pub fn uptime() -> f64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| t.tv_sec() as f64 + t.tv_nsec() as f64 / 1e9)
        .unwrap_or(0.0)
}

fn start() -> f64 {
    static START: OnceLock<f64> = OnceLock::new();
    *START.get_or_init(uptime)
}

/// Record `phase` unless it was recorded already; returns whether it was new.
pub fn mark(phase: &'static str) -> bool {
    static SEEN: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());
    let start = start();
    {
        let Ok(mut seen) = SEEN.lock() else {
            return false;
        };
        if seen.contains(&phase) {
            return false;
        }
        seen.push(phase);
    }
    let now = uptime();
    tracing::info!(
        phase = %phase,
        uptime = %format_args!("{now:.3}"),
        since_agent_start_ms = ((now - start) * 1000.0).round() as i64,
        "boot timeline"
    );
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_are_marked_once_and_the_clock_moves_forward() {
        let a = uptime();
        assert!(a > 0.0);
        assert!(mark("test_phase_once"));
        assert!(!mark("test_phase_once"), "a phase is recorded once");
        assert!(uptime() >= a);
    }
}
