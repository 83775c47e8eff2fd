//! Multipath SAN disks: a LUN reached over two paths (two HBAs, two fabrics) is two SCSI
//! disks to the kernel. As IPA does at start-up, Rivet starts `multipathd` where the ramdisk
//! ships multipath-tools, so each such LUN becomes one device-mapper map (`/dev/dm-N`), the
//! disk the inventory reports, the root device hints match and cleaning erases once
//! (`hardware::disks` folds the paths into it). With `find_multipaths yes` (the ramdisks'
//! `/etc/multipath.conf`) a map is made only for a WWID seen on two paths: a local disk stays
//! a plain disk.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
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

/// Set once `enable` made the maps: later discoveries may ask for maps of late paths.
static ENABLED: AtomicBool = AtomicBool::new(false);

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
    // The maps of the paths there now (multipathd makes them as paths come and go later,
    // where udev tells it; `make_maps` where nothing does).
    let made = run_multipath();
    ENABLED.store(made, Ordering::Relaxed);
    made
}

/// Make the maps of paths that appeared since `enable` (a SCSI host scanned late, and no udev
/// to tell multipathd). `false` when multipath is not in use here or failed.
pub fn make_maps() -> bool {
    ENABLED.load(Ordering::Relaxed) && run_multipath()
}

/// `multipath -v2`: a map for each WWID seen on two paths (`find_multipaths yes`).
fn run_multipath() -> bool {
    mark_scsi_disks_initialised(Path::new("/run/udev"), Path::new("/sys/block"));
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

/// multipath lists only the devices udev has initialised (those with a udev database entry).
/// The minimal ramdisk runs no udev: there each SCSI disk gets the entry udev would have
/// written, with nothing in it but the initialisation time, and multipath reads the WWID from
/// sysfs (VPD page 0x83) as it does when udev gives none. Where udev runs (its control socket
/// is there), nothing is written.
fn mark_scsi_disks_initialised(run_udev: &Path, sys_block: &Path) {
    if run_udev.join("control").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(sys_block) else {
        return;
    };
    let data = run_udev.join("data");
    if let Err(e) = std::fs::create_dir_all(&data) {
        tracing::warn!("cannot make {}: {e}", data.display());
        return;
    }
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("sd") {
            continue;
        }
        let Ok(dev) = std::fs::read_to_string(e.path().join("dev")) else {
            continue;
        };
        let entry = data.join(format!("b{}", dev.trim()));
        if entry.exists() {
            continue;
        }
        if let Err(err) = std::fs::write(&entry, "I:1\n") {
            tracing::warn!(disk = %name, "cannot record the disk for multipath: {err}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scsi_disks_get_a_udev_entry_only_where_no_udev_runs() {
        let t = tempfile::tempdir().unwrap();
        let (run, sys) = (t.path().join("run/udev"), t.path().join("sys/block"));
        for (n, dev) in [("sda", "8:0"), ("sdb", "8:16"), ("nvme0n1", "259:0")] {
            std::fs::create_dir_all(sys.join(n)).unwrap();
            std::fs::write(sys.join(n).join("dev"), format!("{dev}\n")).unwrap();
        }
        mark_scsi_disks_initialised(&run, &sys);
        let mut made: Vec<String> = std::fs::read_dir(run.join("data"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        made.sort();
        assert_eq!(made, ["b8:0", "b8:16"]);
        assert_eq!(
            std::fs::read_to_string(run.join("data/b8:0")).unwrap(),
            "I:1\n"
        );
        // udev running: its database is its own.
        std::fs::remove_dir_all(run.join("data")).unwrap();
        std::fs::write(run.join("control"), "").unwrap();
        mark_scsi_disks_initialised(&run, &sys);
        assert!(!run.join("data").exists());
    }
}
