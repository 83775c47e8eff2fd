//! Running external tools with a time limit and a bound on what is kept of their output, so a
//! hung or chatty tool can neither hang a command nor exhaust the ramdisk's memory. Each tool
//! runs in its own process group, killed whole at the time limit (a chroot's grub-install and
//! whatever it started); a child it left behind holding the output pipe does not hold the
//! agent: the output is taken as it is a moment after the tool exits.

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

/// Like [`run_capture`], with an empty environment but for `PATH` and `LC_ALL=C`: for tools
/// that run the image's code (a chroot), which has no business seeing the agent's.
pub fn run_clean(
    tool: &str,
    args: &[&str],
    timeout: Duration,
    max: usize,
) -> Result<(bool, Vec<u8>), ToolError> {
    let (ok, mut data, err) = run_with(tool, args, timeout, max, true, None)?;
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
    run_with(tool, args, timeout, max, false, None)
}

/// Like [`run_split`], in the working directory `cwd` (tools that leave files where they run).
pub fn run_split_in(
    tool: &str,
    args: &[&str],
    timeout: Duration,
    max: usize,
    cwd: &std::path::Path,
) -> Result<(bool, Vec<u8>, Vec<u8>), ToolError> {
    run_with(tool, args, timeout, max, false, Some(cwd))
}

/// How long the output may take to arrive once the tool has exited.
pub(crate) const DRAIN: Duration = Duration::from_secs(2);

/// Kill a process group started with `process_group(0)` (the leader's pid), and everything in it.
pub(crate) fn kill_group(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

fn run_with(
    tool: &str,
    args: &[&str],
    timeout: Duration,
    max: usize,
    clean_env: bool,
    cwd: Option<&std::path::Path>,
) -> Result<(bool, Vec<u8>, Vec<u8>), ToolError> {
    use std::os::unix::process::CommandExt;
    let exe = which(tool).ok_or_else(|| ToolError::Missing(tool.to_string()))?;
    let mut cmd = Command::new(exe);
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    if clean_env {
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("LC_ALL", "C");
    }
    let mut child = cmd
        .args(args)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| ToolError::Spawn {
            tool: tool.to_string(),
            source,
        })?;
    let reader = |r: Option<Box<dyn Read + Send>>| {
        let (tx, rx) = std::sync::mpsc::channel();
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
            let _ = tx.send(kept);
        });
        rx
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
                kill_group(child.id());
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
    let collect = |rx: &std::sync::mpsc::Receiver<Vec<u8>>| rx.recv_timeout(DRAIN).ok();
    let (mut o, mut e) = (collect(&out), None);
    if o.is_some() {
        e = collect(&err);
    }
    if o.is_none() || e.is_none() {
        // Something the tool started still holds its output: it does not outlive the tool.
        tracing::warn!(%tool, "a process the tool left behind held its output; killed");
        kill_group(child.id());
        o = o.or_else(|| collect(&out));
        e = e.or_else(|| collect(&err));
    }
    Ok((
        status.success(),
        o.take().unwrap_or_default(),
        e.take().unwrap_or_default(),
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

    #[test]
    fn a_timeout_kills_the_whole_group_and_leftovers_do_not_hold_us() {
        let marker = tempfile::tempdir().unwrap();
        let pidfile = marker.path().join("pid");
        // The tool starts a grandchild that would outlive it, then hangs.
        let script = format!("sleep 30 & echo $! > {}; sleep 30", pidfile.display());
        let t = Instant::now();
        assert!(matches!(
            run_capture("sh", &["-c", &script], Duration::from_millis(300), 64),
            Err(ToolError::Timeout(..))
        ));
        assert!(t.elapsed() < Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(200));
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // Gone, or a zombie waiting for init to reap it.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let alive = stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'));
        assert!(!alive, "the grandchild survived the timeout: {stat}");
        // A tool that exits but leaves a child holding stdout returns at once.
        let t = Instant::now();
        let (ok, out) = run_capture(
            "sh",
            &["-c", "echo done; sleep 30 &"],
            Duration::from_secs(10),
            64,
        )
        .unwrap();
        assert!(ok && String::from_utf8_lossy(&out).starts_with("done"));
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        // A clean environment.
        std::env::set_var("RIVET_TOOLS_TEST_SECRET", "x");
        let (_, env) = run_clean("env", &[], Duration::from_secs(5), 4096).unwrap();
        let env = String::from_utf8_lossy(&env);
        assert!(
            !env.contains("RIVET_TOOLS_TEST_SECRET") && env.contains("LC_ALL=C"),
            "{env}"
        );
    }
}
