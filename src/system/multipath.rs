//! Multipath SAN disks: a LUN reached over two paths (two HBAs, two fabrics) is two SCSI
//! disks to the kernel. As IPA does at start-up, Rivet starts `multipathd` where the ramdisk
//! ships multipath-tools, so each such LUN becomes one device-mapper map (`/dev/dm-N`), the
//! disk the inventory reports, the root device hints match and cleaning erases once
//! (`hardware::disks` folds the paths into it). With `find_multipaths yes` (the ramdisks'
//! `/etc/multipath.conf`) a map is made only for a WWID seen on two paths: a local disk stays
//! a plain disk.

use std::process::{Command, Stdio};
use std::time::Duration;

use super::tools::{run_capture, which};

/// Whether a process named `name` runs (its `/proc/<pid>/comm`).
fn running(name: &str) -> bool {
    std::fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten().any(|e| {
                std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == name)
            })
        })
        .unwrap_or(false)
}

/// Start multipath where the ramdisk has it; `false` when it has not (or it failed: the
/// paths then stay separate disks, which discovery still lists once per WWID).
pub fn enable() -> bool {
    if which("multipath").is_none() {
        return false;
    }
    // Built in or a module: either way the maps need it.
    let _ = run_capture(
        "modprobe",
        &["dm_multipath"],
        Duration::from_secs(10),
        1 << 16,
    );
    if which("multipathd").is_some() && !running("multipathd") {
        // It daemonises; nothing of it is kept on our side (a pipe it inherited would hold a
        // reader until it closed it).
        let started = Command::new("multipathd")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if let Err(e) = started {
            tracing::warn!("multipathd did not start: {e}");
        }
    }
    // The maps of the paths there now (multipathd makes them as paths come and go later).
    match run_capture("multipath", &["-v2"], Duration::from_secs(60), 1 << 20) {
        Ok((true, out)) => {
            let made = String::from_utf8_lossy(&out).trim().to_string();
            if !made.is_empty() {
                tracing::info!(maps = %made, "multipath maps made");
            }
            true
        }
        Ok((false, out)) => {
            tracing::warn!(output = %String::from_utf8_lossy(&out).trim(), "multipath failed; paths stay separate disks");
            false
        }
        Err(e) => {
            tracing::warn!("multipath: {e}");
            false
        }
    }
}
