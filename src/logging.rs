//! `tracing` set-up: human (or JSON) output on the console, and the same events kept in a
//! bounded in-memory ring so `log.collect_system_logs` can hand the conductor the agent's own
//! log even when the ramdisk has no journal.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::LogFormat;

/// Bytes of log text kept for collect_system_logs; older lines are dropped first.
const RING_BYTES: usize = 4 << 20;

#[derive(Clone, Default)]
pub struct LogRing {
    inner: Arc<Mutex<Ring>>,
}

#[derive(Default)]
struct Ring {
    lines: VecDeque<Vec<u8>>,
    bytes: usize,
}

impl LogRing {
    pub fn push(&self, line: &[u8]) {
        let mut r = crate::panics::lock(&self.inner);
        r.bytes += line.len();
        r.lines.push_back(line.to_vec());
        while r.bytes > RING_BYTES {
            match r.lines.pop_front() {
                Some(old) => r.bytes -= old.len(),
                None => break,
            }
        }
    }

    pub fn contents(&self) -> Vec<u8> {
        let r = crate::panics::lock(&self.inner);
        r.lines.iter().flat_map(|l| l.iter().copied()).collect()
    }
}

pub struct RingWriter(LogRing);

impl Write for RingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.push(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogRing {
    type Writer = RingWriter;
    fn make_writer(&'a self) -> RingWriter {
        RingWriter(self.clone())
    }
}

/// A writer that masks secrets (`redact::text`) in what passes through: the fmt layers
/// write each event with one call, so every line is checked whole.
pub struct Redacted<W: Write>(pub W);

impl<W: Write> Write for Redacted<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match std::str::from_utf8(buf) {
            Ok(s) => self.0.write_all(crate::redact::text(s).as_bytes())?,
            Err(_) => self.0.write_all(buf)?,
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

static RING: OnceLock<LogRing> = OnceLock::new();

/// The process-wide ring (empty if logging was never initialised, e.g. in unit tests).
pub fn ring() -> LogRing {
    RING.get_or_init(LogRing::default).clone()
}

/// Install the global subscriber. `RUST_LOG` refines the filter when set.
pub fn init(format: LogFormat, debug: bool) {
    let default = if debug { "debug" } else { "info" };
    let filter = || {
        EnvFilter::try_from_default_env().unwrap_or_else(|_| {
            EnvFilter::new(format!("{default},hyper=info,rustls=info,reqwest=info"))
        })
    };
    let console = match format {
        LogFormat::Human => tracing_subscriber::fmt::layer()
            .with_writer(|| Redacted(std::io::stderr()))
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_target(false)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(|| Redacted(std::io::stderr()))
            .boxed(),
    };
    let ring_layer = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .with_writer(|| Redacted(RingWriter(ring())))
        .with_filter(filter());
    let _ = tracing_subscriber::registry()
        .with(console.with_filter(filter()))
        .with(ring_layer)
        .try_init();
    crate::panics::install_hook();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_writer_masks_secrets() {
        let r = LogRing::default();
        let mut w = Redacted(RingWriter(r.clone()));
        w.write_all(b"fetching https://u:hunter2@h/x?temp_url_sig=abc\n")
            .unwrap();
        let c = String::from_utf8(r.contents()).unwrap();
        assert!(!c.contains("hunter2") && !c.contains("abc"), "{c}");
    }

    #[test]
    fn ring_is_bounded_and_keeps_newest() {
        let r = LogRing::default();
        let line = vec![b'x'; 1024];
        for _ in 0..(RING_BYTES / 1024 + 100) {
            r.push(&line);
        }
        r.push(b"last\n");
        let c = r.contents();
        assert!(c.len() <= RING_BYTES);
        assert!(c.ends_with(b"last\n"));
    }
}
