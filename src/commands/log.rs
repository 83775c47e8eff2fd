//! `log.collect_system_logs`: a base64 gzip tarball the conductor stores when a flow fails.
//! It holds the agent's own log ring (always there, even in a ramdisk without a journal), the
//! journal and kernel log when available, and the system files an operator reads first.

use std::time::Duration;

use base64::Engine;
use flate2::write::GzEncoder;
use serde_json::json;

use super::{no_args, Context, Outcome, Params};
use crate::error::CommandError;
use crate::logging;
use crate::system::tools::run_capture;

/// Keep the whole answer well under the conductor's 60 s command timeout and its memory.
const TOOL_TIMEOUT: Duration = Duration::from_secs(15);
const TOOL_MAX: usize = 16 << 20;

pub fn collect_system_logs(_ctx: &Context, params: Params) -> Result<Outcome, CommandError> {
    no_args(&params)?;
    let tgz = build_archive()
        .map_err(|e| CommandError::exec(format!("building the log archive: {e}")))?;
    Ok(Outcome::Json(json!({
        "system_logs": base64::engine::general_purpose::STANDARD.encode(tgz)
    })))
}

pub fn build_archive() -> std::io::Result<Vec<u8>> {
    let mut tar = tar::Builder::new(GzEncoder::new(Vec::new(), flate2::Compression::default()));
    let mut add = |name: &str, data: &[u8]| -> std::io::Result<()> {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        );
        h.set_cksum();
        tar.append_data(&mut h, name, data)
    };
    add("rivet.log", &logging::ring().contents())?;
    for (name, tool, args) in [
        (
            "journal",
            "journalctl",
            &["-b", "--no-pager", "-o", "short-precise"][..],
        ),
        ("dmesg", "dmesg", &[][..]),
        ("ip_addr", "ip", &["addr"][..]),
        ("efibootmgr", "efibootmgr", &["-v"][..]),
    ] {
        if let Ok((_, out)) = run_capture(tool, args, TOOL_TIMEOUT, TOOL_MAX) {
            add(name, &out)?;
        }
    }
    for f in [
        "/proc/cmdline",
        "/proc/mounts",
        "/proc/partitions",
        "/proc/mdstat",
        "/proc/meminfo",
    ] {
        if let Ok(data) = std::fs::read(f) {
            add(&f[1..].replace('/', "_"), &data)?;
        }
    }
    tar.into_inner()?.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn archive_is_a_valid_tarball_with_the_agent_log() {
        logging::ring().push(b"marker-line-for-test\n");
        let tgz = build_archive().unwrap();
        let mut names = Vec::new();
        let mut log = String::new();
        let mut a = tar::Archive::new(flate2::read::GzDecoder::new(&tgz[..]));
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            let name = e.path().unwrap().display().to_string();
            if name == "rivet.log" {
                e.read_to_string(&mut log).unwrap();
            }
            names.push(name);
        }
        assert!(names.contains(&"rivet.log".to_string()), "{names:?}");
        assert!(names.contains(&"proc_cmdline".to_string()), "{names:?}");
        assert!(log.contains("marker-line-for-test"));
    }
}
