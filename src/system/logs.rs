//! The ramdisk's logs as one gzip tarball (base64 for JSON): the agent's own log ring (always
//! there, even in a ramdisk without a journal), the journal and kernel log when available,
//! and the system files an operator reads first. `log.collect_system_logs` answers with it
//! and the `logs` inspection collector posts it. Every entry is masked like a log line: the
//! kernel command line (and the kernel's and the journal's copies of it) can carry a
//! pregenerated agent token.

use std::path::Path;
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

/// Where an entry of the archive comes from.
enum Source<'a> {
    /// A tool's output (stdout and stderr).
    Tool(&'a str, &'a [&'a str]),
    /// A file's contents.
    File(&'a Path),
}

/// What the archive holds besides the agent's own log ring.
fn sources() -> Vec<(&'static str, Source<'static>)> {
    vec![
        (
            "journal",
            Source::Tool("journalctl", &["-b", "--no-pager", "-o", "short-precise"]),
        ),
        ("dmesg", Source::Tool("dmesg", &[])),
        ("ip_addr", Source::Tool("ip", &["addr"])),
        ("efibootmgr", Source::Tool("efibootmgr", &["-v"])),
        ("proc_cmdline", Source::File(Path::new("/proc/cmdline"))),
        ("proc_mounts", Source::File(Path::new("/proc/mounts"))),
        (
            "proc_partitions",
            Source::File(Path::new("/proc/partitions")),
        ),
        ("proc_mdstat", Source::File(Path::new("/proc/mdstat"))),
        ("proc_meminfo", Source::File(Path::new("/proc/meminfo"))),
    ]
}

pub fn build_archive() -> std::io::Result<Vec<u8>> {
    archive(&sources())
}

/// The archive of `sources`, every entry masked as a log line is (`redact::text`): the kernel
/// logs its command line at boot (`Kernel command line: … ipa-agent-token=…` when the token
/// came that way, as virtual media can bring it), and the journal repeats it; tools and files
/// may quote URLs with passwords.
fn archive(sources: &[(&str, Source<'_>)]) -> std::io::Result<Vec<u8>> {
    let mut tar = tar::Builder::new(GzEncoder::new(Vec::new(), flate2::Compression::default()));
    let mut add = |name: &str, data: &[u8]| -> std::io::Result<()> {
        let text = String::from_utf8_lossy(data);
        let data = crate::redact::text(&text);
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
        tar.append_data(&mut h, name, data.as_bytes())
    };
    add("rivet.log", &logging::ring().contents())?;
    for (name, source) in sources {
        let data = match source {
            Source::Tool(tool, args) => run_capture(tool, args, TOOL_TIMEOUT, TOOL_MAX)
                .ok()
                .map(|(_, out)| out),
            Source::File(path) => std::fs::read(path).ok(),
        };
        if let Some(data) = data {
            add(name, &data)?;
        }
    }
    tar.into_inner()?.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn the_token_never_reaches_the_archive_from_any_stream() {
        let d = tempfile::tempdir().unwrap();
        let kernel = d.path().join("dmesg");
        std::fs::write(
            &kernel,
            [
                &b"[    0.000000] Kernel command line: BOOT_IMAGE=/vmlinuz ipa-api-url=http://a \
                   ipa-agent-token=s3cr3tTOKEN BOOTIF=x\n"[..],
                &b"\xff\xfe binary too\n"[..],
            ]
            .concat(),
        )
        .unwrap();
        let cmdline = d.path().join("cmdline");
        std::fs::write(
            &cmdline,
            "ipa-agent-token=s3cr3tTOKEN ipa-api-url=https://u:pw@h/\n",
        )
        .unwrap();
        let tgz = archive(&[
            ("dmesg", Source::File(&kernel)),
            ("proc_cmdline", Source::File(&cmdline)),
            (
                "tool",
                Source::Tool("sh", &["-c", "echo token=s3cr3tTOKEN >&2"]),
            ),
        ])
        .unwrap();
        let mut a = tar::Archive::new(flate2::read::GzDecoder::new(&tgz[..]));
        let mut seen = Vec::new();
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            let name = e.path().unwrap().display().to_string();
            let mut text = String::new();
            e.read_to_string(&mut text).unwrap();
            assert!(
                !text.contains("s3cr3tTOKEN") && !text.contains(":pw@"),
                "{name}: {text}"
            );
            seen.push((name, text));
        }
        let dmesg = &seen.iter().find(|(n, _)| n == "dmesg").unwrap().1;
        assert!(dmesg.contains("ipa-agent-token=*** BOOTIF=x"), "{dmesg}");
        assert!(seen
            .iter()
            .any(|(n, t)| n == "tool" && t.contains("token=***")));
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
