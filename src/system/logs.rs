//! The ramdisk's logs as one gzip tarball (base64 for JSON): the agent's own log ring (always
//! there, even in a ramdisk without a journal), the journal and kernel log when available,
//! and the system files an operator reads first. `log.collect_system_logs` answers with it
//! and the `logs` inspection collector posts it. The kernel command line can carry a
//! pregenerated agent token: its value is blanked in the copy.

use std::time::Duration;

use base64::Engine;
use flate2::write::GzEncoder;

use crate::logging;
use crate::system::tools::run_capture;

/// Keep the whole answer well under the conductor's 60 s command timeout and its memory.
const TOOL_TIMEOUT: Duration = Duration::from_secs(15);
const TOOL_MAX: usize = 16 << 20;

pub fn archive_base64() -> std::io::Result<String> {
    Ok(base64::engine::general_purpose::STANDARD.encode(build_archive()?))
}

/// `key=value` tokens whose value is a secret, blanked in the archive's copy of the command line.
fn redact_cmdline(line: &str) -> String {
    line.split(' ')
        .map(|t| match t.split_once('=') {
            Some((k, _)) if k == "ipa-agent-token" => format!("{k}=***"),
            _ => t.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
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
        if let Ok(mut data) = std::fs::read(f) {
            if f == "/proc/cmdline" {
                data = redact_cmdline(&String::from_utf8_lossy(&data)).into_bytes();
            }
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
    fn the_token_never_reaches_the_archive() {
        assert_eq!(
            redact_cmdline("ipa-api-url=http://a ipa-agent-token=s3cr3t BOOTIF=x\n"),
            "ipa-api-url=http://a ipa-agent-token=*** BOOTIF=x\n"
        );
    }

    #[test]
    fn archive_is_a_valid_tarball_with_the_agent_log() {
        crate::logging::ring().push(b"marker-line-for-test\n");
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
