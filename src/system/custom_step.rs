//! Run a custom step's executable: its arguments as JSON on stdin, what it needs to know in
//! the environment, both output streams into the agent's log line by line as they come, its
//! standard output (JSON) as the step's result. Bounded everywhere: the time (the manifest's
//! timeout, then the whole process group is killed), the result (1 MiB), each logged line, and
//! the stderr tail kept for the error message.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

use super::tools::{kill_group, DRAIN};

/// The largest result a step may print.
const MAX_STDOUT: usize = 1 << 20;
/// How much of stderr's end an error quotes.
const STDERR_TAIL: usize = 2048;
/// Longest line copied into the log.
const MAX_LOG_LINE: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum StepRunError {
    #[error("cannot start {exec}: {source}")]
    Spawn {
        exec: String,
        source: std::io::Error,
    },
    #[error("timed out after {secs} s (killed){}", tail(.stderr))]
    Timeout { secs: u64, stderr: String },
    #[error("exited with {status}{}", tail(.stderr))]
    Failed { status: String, stderr: String },
    #[error("printed more than 1 MiB on stdout (the step's result)")]
    TooLarge,
    #[error("its stdout is not JSON ({detail}): {start:?}")]
    NotJson { detail: String, start: String },
}

fn tail(stderr: &str) -> String {
    if stderr.trim().is_empty() {
        String::new()
    } else {
        format!("; stderr ends with: {}", stderr.trim())
    }
}

/// Read `r` line by line into the log; hand each raw chunk to `keep`.
fn pump(r: impl Read, step: &str, stream: &'static str, mut keep: impl FnMut(&[u8])) {
    let mut r = BufReader::new(r);
    let mut line = Vec::new();
    loop {
        line.clear();
        // A line is read in pieces of at most MAX_LOG_LINE: an endless line cannot grow memory.
        match (&mut r)
            .take(MAX_LOG_LINE as u64)
            .read_until(b'\n', &mut line)
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                keep(&line);
                let text = String::from_utf8_lossy(&line);
                let text = text.trim_end();
                if !text.is_empty() {
                    tracing::info!(step, stream, "{text}");
                }
            }
        }
    }
}

/// Run `exec` for step `step` with `args` on stdin and `env` added to the environment; the
/// step's result is what it prints on stdout (`null` when nothing).
pub fn run(
    exec: &Path,
    step: &str,
    args: &Value,
    env: &[(&str, String)],
    timeout: Duration,
) -> Result<Value, StepRunError> {
    let mut cmd = Command::new(exec);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a timeout kills what it started too.
        .process_group(0);
    if let Some(dir) = exec.parent() {
        cmd.current_dir(dir);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().map_err(|source| StepRunError::Spawn {
        exec: exec.display().to_string(),
        source,
    })?;
    let pid = child.id();
    let input = serde_json::to_vec(args).unwrap_or_else(|_| b"{}".to_vec());
    let stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let writer = std::thread::spawn(move || {
        // A step that does not read its arguments closes the pipe: not an error.
        if let Some(mut s) = stdin {
            let _ = s.write_all(&input);
        }
    });
    // The readers hand over what they kept through channels: once the step has ended, what is
    // still unread is waited for only briefly (a process that left the group may hold a pipe).
    let (out_tx, out_rx) = mpsc::channel();
    let name = step.to_string();
    std::thread::spawn(move || {
        let mut out = Vec::new();
        let mut too_large = false;
        if let Some(s) = stdout {
            pump(s, &name, "stdout", |chunk| {
                if out.len() + chunk.len() > MAX_STDOUT {
                    too_large = true;
                } else {
                    out.extend_from_slice(chunk);
                }
            });
        }
        let _ = out_tx.send((out, too_large));
    });
    let (err_tx, err_rx) = mpsc::channel();
    let name = step.to_string();
    std::thread::spawn(move || {
        let mut tail: Vec<u8> = Vec::new();
        if let Some(s) = stderr {
            pump(s, &name, "stderr", |chunk| {
                tail.extend_from_slice(chunk);
                if tail.len() > STDERR_TAIL {
                    tail.drain(..tail.len() - STDERR_TAIL);
                }
            });
        }
        let _ = err_tx.send(String::from_utf8_lossy(&tail).into_owned());
    });
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    let waited = rx.recv_timeout(timeout);
    // Whatever the step started and left behind goes with it (a step is not a daemon), so no
    // background process keeps its pipes open, or the disk busy, after it has answered.
    kill_group(pid);
    let _ = writer.join();
    let stderr = err_rx.recv_timeout(DRAIN).unwrap_or_default();
    let (out, too_large) = out_rx.recv_timeout(DRAIN).unwrap_or_default();
    let status = match waited {
        Ok(s) => s.ok(),
        Err(_) => {
            let _ = rx.recv();
            return Err(StepRunError::Timeout {
                secs: timeout.as_secs(),
                stderr,
            });
        }
    };
    match status {
        Some(s) if s.success() => {}
        Some(s) => {
            return Err(StepRunError::Failed {
                status: s.to_string(),
                stderr,
            })
        }
        None => {
            return Err(StepRunError::Failed {
                status: "an unknown status".into(),
                stderr,
            })
        }
    }
    if too_large {
        return Err(StepRunError::TooLarge);
    }
    if out.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&out).map_err(|e| StepRunError::NotJson {
        detail: e.to_string(),
        start: String::from_utf8_lossy(&out[..out.len().min(200)]).into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::os::unix::fs::PermissionsExt;

    fn script(dir: &Path, body: &str) -> std::path::PathBuf {
        let p = dir.join("step.sh");
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[test]
    fn arguments_in_environment_in_result_out() {
        let d = tempfile::tempdir().unwrap();
        let p = script(
            d.path(),
            r#"read -r args; echo "working" >&2; printf '{"got": %s, "node": "%s"}\n' "$args" "$RIVET_NODE_UUID""#,
        );
        let v = run(
            &p,
            "s",
            &json!({"a": 1}),
            &[("RIVET_NODE_UUID", "n-1".into())],
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(v, json!({"got": {"a": 1}, "node": "n-1"}));
        // A step that leaves a process behind (holding its stdout) answers at once, and what
        // it left is gone.
        let p = script(d.path(), "sleep 30 & echo '{\"done\": true}'");
        let t = std::time::Instant::now();
        let v = run(&p, "s", &json!({}), &[], Duration::from_secs(20)).unwrap();
        assert_eq!(v, json!({"done": true}));
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        // Nothing printed: a null result.
        let p = script(d.path(), "exit 0");
        assert_eq!(
            run(&p, "s", &json!({}), &[], Duration::from_secs(10)).unwrap(),
            Value::Null
        );
    }

    #[test]
    fn failures_are_clear() {
        let d = tempfile::tempdir().unwrap();
        let p = script(d.path(), "echo 'firmware image not found' >&2; exit 3");
        let e = run(&p, "s", &json!({}), &[], Duration::from_secs(10)).unwrap_err();
        let m = e.to_string();
        assert!(
            m.contains("exit status: 3") && m.contains("firmware image not found"),
            "{m}"
        );
        let p = script(d.path(), "echo not json");
        let e = run(&p, "s", &json!({}), &[], Duration::from_secs(10)).unwrap_err();
        assert!(matches!(e, StepRunError::NotJson { .. }), "{e}");
        // A step that outlives its timeout is killed with what it started.
        let p = script(d.path(), "sleep 30 & sleep 30; echo '{}'");
        let t = std::time::Instant::now();
        let e = run(&p, "s", &json!({}), &[], Duration::from_secs(1)).unwrap_err();
        assert!(matches!(e, StepRunError::Timeout { secs: 1, .. }), "{e}");
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
        // Endless output: bounded, then refused.
        let p = script(d.path(), "head -c 3000000 /dev/zero | tr '\\0' 'a'");
        let e = run(&p, "s", &json!({}), &[], Duration::from_secs(20)).unwrap_err();
        assert!(matches!(e, StepRunError::TooLarge), "{e}");
        let e = run(
            Path::new("/nonexistent/x"),
            "s",
            &json!({}),
            &[],
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(matches!(e, StepRunError::Spawn { .. }), "{e}");
    }
}
