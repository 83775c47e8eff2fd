//! Progress of an image transfer, shared between the pipeline stages and its readers (the
//! running command's result, heartbeat status messages, the install progress line).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde_json::{json, Value};

#[derive(Debug)]
pub struct Progress {
    pub downloaded: AtomicU64,
    /// Bytes to download; 0 while unknown.
    pub total: AtomicU64,
    pub written: AtomicU64,
    /// Bytes fetched again after a restart or resume (the cost of faults).
    pub refetched: AtomicU64,
    started: Instant,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            downloaded: AtomicU64::new(0),
            total: AtomicU64::new(0),
            written: AtomicU64::new(0),
            refetched: AtomicU64::new(0),
            started: Instant::now(),
        }
    }
}

impl Progress {
    fn snapshot(&self) -> (u64, u64, u64, f64) {
        (
            self.downloaded.load(Ordering::Relaxed),
            self.total.load(Ordering::Relaxed),
            self.written.load(Ordering::Relaxed),
            self.started.elapsed().as_secs_f64(),
        )
    }

    pub fn json(&self) -> Value {
        let (d, t, w, secs) = self.snapshot();
        let rate = if secs > 0.0 { d as f64 / secs } else { 0.0 };
        let eta = (t > d && rate > 0.0).then(|| ((t - d) as f64 / rate).round());
        json!({
            "bytes_downloaded": d,
            "bytes_total": (t > 0).then_some(t),
            "bytes_written": w,
            "rate_mib_s": (rate / 1048576.0 * 10.0).round() / 10.0,
            "eta_s": eta,
        })
    }

    /// One human line, e.g. `412.0/2048.0 MiB (20%) 180.3 MiB/s, ETA 9 s`.
    pub fn line(&self) -> String {
        let (d, t, w, secs) = self.snapshot();
        let mib = |b: u64| b as f64 / 1048576.0;
        let rate = if secs > 0.0 { mib(d) / secs } else { 0.0 };
        match t {
            0 => format!(
                "{:.1} MiB downloaded, {:.1} MiB written, {rate:.1} MiB/s",
                mib(d),
                mib(w)
            ),
            t => {
                let eta = if rate > 0.0 {
                    format!(", ETA {:.0} s", (mib(t) - mib(d)).max(0.0) / rate)
                } else {
                    String::new()
                };
                format!(
                    "{:.1}/{:.1} MiB ({}%), {rate:.1} MiB/s{eta}",
                    mib(d),
                    mib(t),
                    d * 100 / t.max(1)
                )
            }
        }
    }
}
