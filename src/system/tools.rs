//! Running external tools with a time limit and a bound on what is kept of their output, so a
//! hung or chatty tool can neither hang a command nor exhaust the ramdisk's memory.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("{0} is not installed")]
    Missing(String),
    #[error("running {tool}: {source}")]
    Spawn {
        tool: String,
        source: std::io::Error,
    },
    #[error("{0} did not finish within {1:?} and was killed")]
    Timeout(String, Duration),
}

/// Find `tool` on PATH (plus the sbin directories a ramdisk keeps tools in).
pub fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .map(|d| PathBuf::from(d).join(tool))
        .find(|p| p.is_file());
    found
}

/// Run and return (exit success, stdout+stderr truncated to `max` bytes).
pub fn run_capture(
    tool: &str,
    args: &[&str],
    timeout: Duration,
    max: usize,
) -> Result<(bool, Vec<u8>), ToolError> {
    let (ok, mut data, err) = run_split(tool, args, timeout, max)?;
    data.extend(err);
    data.truncate(max);
    Ok((ok, data))
}

/// Run and return (exit success, stdout, stderr), each truncated to `max` bytes.
pub fn run_split(
    tool: &str,
    args: &[&str],
    timeout: Duration,
    max: usize,
) -> Result<(bool, Vec<u8>, Vec<u8>), ToolError> {
    let exe = which(tool).ok_or_else(|| ToolError::Missing(tool.to_string()))?;
    let mut child = Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| ToolError::Spawn {
            tool: tool.to_string(),
            source,
        })?;
    let reader = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut kept = Vec::new();
            if let Some(mut r) = r {
                let mut buf = [0u8; 65536];
                while let Ok(n) = r.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let room = max.saturating_sub(kept.len());
                    kept.extend_from_slice(&buf[..n.min(room)]);
                }
            }
            kept
        })
    };
    let out = reader(
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let err = reader(
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if start.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(ToolError::Timeout(tool.to_string(), timeout));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(source) => {
                return Err(ToolError::Spawn {
                    tool: tool.to_string(),
                    source,
                })
            }
        }
    };
    Ok((
        status.success(),
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_and_times_out() {
        let (ok, out) = run_capture(
            "sh",
            &["-c", "echo hi; echo err >&2"],
            Duration::from_secs(5),
            1024,
        )
        .unwrap();
        assert!(ok);
        assert_eq!(String::from_utf8_lossy(&out), "hi\nerr\n");
        let (_, out) = run_capture(
            "sh",
            &["-c", "yes | head -c 100000"],
            Duration::from_secs(5),
            10,
        )
        .unwrap();
        assert_eq!(out.len(), 10);
        assert!(matches!(
            run_capture("sleep", &["5"], Duration::from_millis(200), 10),
            Err(ToolError::Timeout(..))
        ));
        assert!(matches!(
            run_capture("no-such-tool-xyz", &[], Duration::from_secs(1), 1),
            Err(ToolError::Missing(_))
        ));
    }
}
