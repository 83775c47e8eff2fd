//! Burn-in with the tools operators use: stress-ng (CPU, memory) and fio (disks, network),
//! with IPA's command lines. A tool missing from the ramdisk is a clear error naming it (the
//! DIB ramdisk ships both; the minimal one does not). Every run is bounded: the tool's own
//! time limit, then a margin, then it is killed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use super::tools::{run_split_in, which};

/// What a tool may print that we keep (fio's JSON for many disks stays well below).
const MAX_OUTPUT: usize = 4 << 20;
/// Beyond the tool's own time limit before it is killed.
const MARGIN: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum BurninError {
    #[error(
        "{0} is not installed in this ramdisk (build the DIB ramdisk, which ships it, or add it)"
    )]
    Missing(&'static str),
    #[error("{tool} ({what}) failed: {detail}")]
    Failed {
        tool: &'static str,
        what: String,
        detail: String,
    },
    #[error(
        "output file {0:?}: a file name is needed (letters, digits, '.', '_', '-'; up to 128)"
    )]
    BadLogName(String),
    #[error("cannot write the burn-in report {path}: {source}")]
    Log {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot make a scratch directory for {tool}: {source}")]
    Scratch {
        tool: &'static str,
        source: std::io::Error,
    },
}

/// Where a burn-in report goes. driver_info names it (IPA writes it, as root, to whatever path
/// is given, following links); here only the name's last component is used, inside one
/// directory the agent owns, so a value can neither leave that directory nor reach the
/// agent's own files through a link.
pub fn log_path(dir: &Path, requested: &str) -> Result<PathBuf, BurninError> {
    let name = requested.rsplit('/').next().unwrap_or_default();
    let plain = !name.is_empty()
        && name.len() <= 128
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !plain {
        return Err(BurninError::BadLogName(requested.to_string()));
    }
    Ok(dir.join(name))
}

/// Write a report made by [`log_path`]: the directory is made private (0700) if missing and
/// must be a real directory; the file is opened without following a link and without blocking
/// on a FIFO, and must be a regular file.
pub fn write_log(path: &Path, data: &[u8]) -> Result<(), BurninError> {
    use std::io::Write as _;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let err = |source| BurninError::Log {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(err)?;
        if !std::fs::symlink_metadata(dir).map_err(err)?.is_dir() {
            return Err(err(std::io::Error::other("not a directory")));
        }
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(err)?;
    if !f.metadata().map_err(err)?.is_file() {
        return Err(err(std::io::Error::other("not a regular file")));
    }
    f.write_all(data).map_err(err)
}

/// A private working directory for one tool run, removed afterwards: fio saves its verify
/// state where it runs (and other tools may leave files too), which must be neither the
/// agent's working directory (the ramdisk's root, a test's checkout) nor shared.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tool: &'static str) -> Result<Scratch, BurninError> {
        use std::os::unix::fs::DirBuilderExt;
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("rivet-{tool}-{}-{n}", std::process::id()));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|source| BurninError::Scratch { tool, source })?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A stress-ng run: `--cpu N` or `--vm N --vm-bytes B` for `seconds`.
#[derive(Debug, Clone, PartialEq)]
pub struct Stress {
    /// "cpu" or "vm".
    pub stressor: &'static str,
    /// Workers; 0 is one per CPU (stress-ng's meaning).
    pub workers: u64,
    pub seconds: u64,
    /// For "vm": how much memory (`98%`, `2G`).
    pub vm_bytes: Option<String>,
    /// Where stress-ng's output is kept (made by [`log_path`]); the agent writes it, stress-ng
    /// never opens it.
    pub log_file: Option<PathBuf>,
}

impl Stress {
    pub fn args(&self) -> Vec<String> {
        let mut a = vec![
            format!("--{}", self.stressor),
            self.workers.to_string(),
            "--timeout".into(),
            self.seconds.to_string(),
        ];
        if let Some(b) = &self.vm_bytes {
            a.extend(["--vm-bytes".into(), b.clone()]);
        }
        a.push("--metrics-brief".into());
        a
    }
}

fn tail_lines(b: &[u8], n: usize) -> Vec<String> {
    let text = String::from_utf8_lossy(b);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| l.to_string())
        .collect()
}

fn run(
    tool: &'static str,
    what: &str,
    args: &[String],
    limit: Duration,
) -> Result<(Vec<u8>, Vec<u8>), BurninError> {
    if which(tool).is_none() {
        return Err(BurninError::Missing(tool));
    }
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    tracing::info!(tool, args = ?argv, "burn-in started");
    let scratch = Scratch::new(tool)?;
    let (ok, out, err) = run_split_in(
        tool,
        &argv,
        limit.saturating_add(MARGIN),
        MAX_OUTPUT,
        &scratch.0,
    )
    .map_err(|e| BurninError::Failed {
        tool,
        what: what.into(),
        detail: e.to_string(),
    })?;
    if !ok {
        let mut detail = tail_lines(&err, 5);
        if detail.is_empty() {
            detail = tail_lines(&out, 5);
        }
        return Err(BurninError::Failed {
            tool,
            what: what.into(),
            detail: detail.join(" | "),
        });
    }
    Ok((out, err))
}

/// Run stress-ng; the result carries its metrics lines (it reports on stderr).
pub fn stress(s: &Stress) -> Result<Value, BurninError> {
    let (out, err) = run(
        "stress-ng",
        s.stressor,
        &s.args(),
        Duration::from_secs(s.seconds),
    )?;
    let mut lines = tail_lines(&err, 12);
    lines.extend(tail_lines(&out, 4));
    for l in &lines {
        tracing::info!(stressor = s.stressor, "{l}");
    }
    let mut result = json!({"tool": "stress-ng", "stressor": s.stressor, "workers": s.workers,
                            "seconds": s.seconds, "metrics": lines});
    if let Some(p) = &s.log_file {
        // stress-ng reports on stderr: the file holds what it printed, both streams.
        write_log(p, &[err, out].concat())?;
        result["log_file"] = json!(p.display().to_string());
    }
    Ok(result)
}

/// A fio read-write-verify run over whole disks (IPA's job: 4 KiB, direct, libaio, queue
/// depth 32, crc32c verification).
#[derive(Debug, Clone, PartialEq)]
pub struct FioDisk {
    pub devices: Vec<String>,
    pub loops: u64,
    /// Seconds; 0: the loops decide.
    pub runtime: u64,
}

impl FioDisk {
    pub fn args(&self) -> Vec<String> {
        let mut a: Vec<String> = [
            "--rw",
            "readwrite",
            "--bs",
            "4k",
            "--direct",
            "1",
            "--ioengine",
            "libaio",
            "--iodepth",
            "32",
            "--verify",
            "crc32c",
            "--verify_dump",
            "1",
            "--continue_on_error",
            "verify",
            "--output-format",
            "json",
            // Nothing left behind: the verify state is only for resuming a verify run.
            "--verify_state_save",
            "0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(["--loops".into(), self.loops.to_string()]);
        if self.runtime > 0 {
            a.extend([
                "--runtime".into(),
                self.runtime.to_string(),
                "--time_based".into(),
            ]);
        }
        for d in &self.devices {
            a.extend(["--name".into(), d.clone(), "--filename".into(), d.clone()]);
        }
        a
    }
}

/// fio's JSON report, reduced to what an operator reads: per disk, bytes and bandwidth each
/// way and the error count. A job with an error fails the run.
pub fn fio_summary(report: &Value) -> Result<Value, String> {
    let jobs = report
        .get("jobs")
        .and_then(Value::as_array)
        .ok_or("fio printed no jobs")?;
    let mut out = Vec::new();
    let mut failed = Vec::new();
    for j in jobs {
        let name = j.get("jobname").and_then(Value::as_str).unwrap_or("?");
        let err = j.get("error").and_then(Value::as_i64).unwrap_or(0);
        let side = |k: &str| {
            json!({
                "bytes": j.pointer(&format!("/{k}/io_bytes")).cloned().unwrap_or(json!(0)),
                "bw_kib_s": j.pointer(&format!("/{k}/bw")).cloned().unwrap_or(json!(0)),
            })
        };
        if err != 0 {
            failed.push(format!("{name}: error {err}"));
        }
        out.push(
            json!({"device": name, "read": side("read"), "write": side("write"), "error": err}),
        );
    }
    if failed.is_empty() {
        Ok(json!({"tool": "fio", "disks": out}))
    } else {
        Err(failed.join("; "))
    }
}

/// Run fio over the disks; `log_file` (made by [`log_path`]) also receives fio's full JSON
/// report.
pub fn fio_disk(f: &FioDisk, log_file: Option<&Path>) -> Result<Value, BurninError> {
    if f.devices.is_empty() {
        return Err(BurninError::Failed {
            tool: "fio",
            what: "disk".into(),
            detail: "no disk to burn in".into(),
        });
    }
    // Without a runtime the loops decide; a day per loop is the most any disk needs.
    let limit = if f.runtime > 0 {
        Duration::from_secs(f.runtime)
    } else {
        Duration::from_secs(86_400u64.saturating_mul(f.loops.max(1)))
    };
    let (out, _) = run("fio", "disk", &f.args(), limit)?;
    if let Some(p) = log_file {
        write_log(p, &out)?;
    }
    let bad = |detail: String| BurninError::Failed {
        tool: "fio",
        what: "disk".into(),
        detail,
    };
    // fio may print notes before its JSON.
    let text = String::from_utf8_lossy(&out);
    let json_start = text.find('{').ok_or_else(|| bad("no JSON report".into()))?;
    let report: Value =
        serde_json::from_str(&text[json_start..]).map_err(|e| bad(e.to_string()))?;
    let mut summary = fio_summary(&report).map_err(bad)?;
    tracing::info!(%summary, "fio disk burn-in passed");
    if let Some(p) = log_file {
        summary["log_file"] = json!(p.display().to_string());
    }
    Ok(summary)
}

/// Network burn-in with a statically paired partner (IPA's `agent_burnin_fio_network_config`):
/// the writer listens, the reader connects, then the roles swap.
#[derive(Debug, Clone, PartialEq)]
pub struct FioNetwork {
    pub writer_first: bool,
    pub partner: String,
    pub runtime: u64,
}

impl FioNetwork {
    pub fn args(&self, writer: bool) -> Vec<String> {
        let mut a: Vec<String> = [
            "--ioengine",
            "net",
            "--port",
            "9000",
            "--fill_device",
            "1",
            "--group_reporting",
            "--gtod_reduce",
            "1",
            "--numjobs",
            "16",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if writer {
            a.extend(
                [
                    "--name",
                    "writer",
                    "--rw",
                    "write",
                    "--runtime",
                    &self.runtime.to_string(),
                    "--time_based",
                    "--listen",
                ]
                .map(String::from),
            );
        } else {
            a.extend(
                [
                    "--name",
                    "reader",
                    "--rw",
                    "read",
                    "--hostname",
                    &self.partner,
                ]
                .map(String::from),
            );
        }
        a
    }
}

pub fn fio_network(n: &FioNetwork, pairing_timeout: Duration) -> Result<Value, BurninError> {
    let limit = Duration::from_secs(n.runtime).saturating_add(pairing_timeout);
    let mut runs = Vec::new();
    for writer in [n.writer_first, !n.writer_first] {
        let role = if writer { "writer" } else { "reader" };
        let (out, _) = run("fio", role, &n.args(writer), limit)?;
        runs.push(json!({"role": role, "output": tail_lines(&out, 6)}));
    }
    Ok(json!({"tool": "fio", "partner": n.partner, "runs": runs}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_are_ipas() {
        let s = Stress {
            stressor: "vm",
            workers: 0,
            seconds: 5,
            vm_bytes: Some("10%".into()),
            log_file: None,
        };
        assert_eq!(
            s.args().join(" "),
            "--vm 0 --timeout 5 --vm-bytes 10% --metrics-brief"
        );
        let f = FioDisk {
            devices: vec!["/dev/sda".into()],
            loops: 4,
            runtime: 0,
        };
        let a = f.args().join(" ");
        assert!(
            a.contains(
                "--rw readwrite --bs 4k --direct 1 --ioengine libaio --iodepth 32 --verify crc32c"
            ),
            "{a}"
        );
        assert!(
            a.ends_with("--loops 4 --name /dev/sda --filename /dev/sda"),
            "{a}"
        );
        assert!(!a.contains("time_based"), "no runtime: the loops decide");
        let n = FioNetwork {
            writer_first: true,
            partner: "10.0.0.2".into(),
            runtime: 30,
        };
        assert!(n
            .args(true)
            .join(" ")
            .ends_with("--name writer --rw write --runtime 30 --time_based --listen"));
        assert!(n
            .args(false)
            .join(" ")
            .ends_with("--name reader --rw read --hostname 10.0.0.2"));
    }

    #[test]
    fn fio_reports_are_summarised_and_errors_fail() {
        let ok = json!({"jobs": [{"jobname": "/dev/loop0", "error": 0,
            "read": {"io_bytes": 4096, "bw": 100}, "write": {"io_bytes": 8192, "bw": 200}}]});
        let s = fio_summary(&ok).unwrap();
        assert_eq!(s["disks"][0]["write"]["bytes"], 8192);
        let bad = json!({"jobs": [{"jobname": "/dev/sdb", "error": 84}]});
        assert!(fio_summary(&bad)
            .unwrap_err()
            .contains("/dev/sdb: error 84"));
        assert!(fio_summary(&json!({})).is_err());
    }
}
