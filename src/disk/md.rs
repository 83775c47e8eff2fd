//! Linux software RAID (md) through `mdadm`, the tool operators use: create, assemble, stop,
//! zero superblocks, and what the kernel shows of the arrays (`/sys/block/mdN`).
//!
//! Volume names come from the conductor (`target_raid_config`): they reach mdadm as separate
//! arguments (never a shell), and only names mdadm stores as they are are accepted
//! ([`valid_name`]).

use std::path::Path;
use std::time::Duration;

use crate::system::tools::{run_capture, ToolError};

/// mdadm's own work is quick; assembling a scan can wait on slow disks.
const MDADM_TIME: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum MdError {
    #[error("running mdadm {args}: {source}")]
    Run { args: String, source: ToolError },
    #[error("mdadm {args} failed: {output}")]
    Failed { args: String, output: String },
}

/// An md array as the kernel shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Array {
    /// `/dev/mdN`.
    pub device: String,
    /// The volume name (`--name`), without mdadm's `host:` prefix; `None` when unknown.
    pub name: Option<String>,
    /// Member block devices (`/dev/nvme0n1p1`), from sysfs.
    pub members: Vec<String>,
}

/// Whether `name` is a volume name Rivet hands to mdadm: 1–32 characters of letters, digits,
/// `-`, `_` and `.` (the v1 superblock keeps 32 bytes; anything else would be changed or cut).
pub fn valid_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn mdadm(args: &[&str]) -> Result<String, MdError> {
    let shown = args.join(" ");
    let (ok, out) =
        run_capture("mdadm", args, MDADM_TIME, 1 << 16).map_err(|source| MdError::Run {
            args: shown.clone(),
            source,
        })?;
    let out = String::from_utf8_lossy(&out).trim().to_string();
    if ok {
        Ok(out)
    } else {
        Err(MdError::Failed {
            args: shown,
            output: out,
        })
    }
}

/// Load the md driver and its personalities (a minimal ramdisk loads modules for the devices
/// it finds; md has no device until mdadm makes one). Built-in ones make this a no-op.
fn load_modules() {
    let _ = run_capture(
        "modprobe",
        &["-a", "md_mod", "raid0", "raid1", "raid10", "raid456"],
        MDADM_TIME,
        1 << 12,
    );
}

/// `mdadm --create DEVICE --force --run --metadata=META --level LEVEL --name NAME
/// --raid-devices N MEMBERS…`.
pub fn create(
    device: &str,
    level: &str,
    name: &str,
    metadata: &str,
    members: &[String],
) -> Result<(), MdError> {
    load_modules();
    let n = members.len().to_string();
    let meta = format!("--metadata={metadata}");
    let mut args = vec![
        "--create",
        device,
        "--force",
        "--run",
        meta.as_str(),
        "--level",
        level,
        "--name",
        name,
        "--raid-devices",
        n.as_str(),
    ];
    args.extend(members.iter().map(String::as_str));
    mdadm(&args).map(|_| ())
}

/// Assemble every array the disks describe (`--assemble --scan`); arrays that cannot be
/// assembled are not an error here (what is found is what [`arrays`] lists).
pub fn assemble_scan() {
    load_modules();
    if let Err(e) = mdadm(&["--assemble", "--scan"]) {
        tracing::debug!(error = %e, "mdadm --assemble --scan");
    }
}

pub fn stop(device: &str) -> Result<(), MdError> {
    mdadm(&["--stop", device]).map(|_| ())
}

pub fn zero_superblock(member: &str) -> Result<(), MdError> {
    mdadm(&["--zero-superblock", member]).map(|_| ())
}

/// The volume name in `mdadm --detail --export` output (`MD_NAME=host:name`).
pub fn name_from_export(export: &str) -> Option<String> {
    let v = export
        .lines()
        .find_map(|l| l.trim().strip_prefix("MD_NAME="))?;
    let name = v.rsplit_once(':').map_or(v, |(_, n)| n).trim();
    (!name.is_empty()).then(|| name.to_string())
}

/// The arrays the kernel has, from `sys_block` (`/sys/block`): `mdN` entries with an `md`
/// directory, their members from `slaves`, their names from mdadm.
pub fn arrays(sys_block: &Path) -> Vec<Array> {
    let Ok(rd) = std::fs::read_dir(sys_block) else {
        return Vec::new();
    };
    let mut out: Vec<Array> = rd
        .flatten()
        .filter(|e| e.path().join("md").is_dir())
        .map(|e| {
            let base = e.file_name().to_string_lossy().into_owned();
            let device = format!("/dev/{base}");
            let mut members: Vec<String> = std::fs::read_dir(e.path().join("slaves"))
                .map(|s| {
                    s.flatten()
                        .map(|m| format!("/dev/{}", m.file_name().to_string_lossy()))
                        .collect()
                })
                .unwrap_or_default();
            members.sort();
            let name = mdadm(&["--detail", "--export", &device])
                .ok()
                .and_then(|o| name_from_export(&o));
            Array {
                device,
                name,
                members,
            }
        })
        .collect();
    out.sort_by(|a, b| a.device.cmp(&b.device));
    out
}

/// Whether any block device the kernel lists in `sys_block` (whole disks and their
/// partitions, opened under `dev`) carries an md superblock, as libblkid sees it. Assembling
/// (`mdadm --assemble --scan`) costs about a second under emulation and delays the first
/// heartbeat, so it is skipped when there is nothing to assemble.
pub fn any_member(sys_block: &Path, dev: &Path) -> bool {
    let Ok(rd) = std::fs::read_dir(sys_block) else {
        return false;
    };
    let is_member = |name: &str| {
        crate::hardware::probe::probe(&dev.join(name))
            .ok()
            .and_then(|p| p.fs_type)
            .is_some_and(|t| t == "linux_raid_member")
    };
    for disk in rd.flatten() {
        let name = disk.file_name().to_string_lossy().into_owned();
        // Arrays themselves, RAM disks and optical drives hold no members to assemble.
        if ["md", "ram", "zram", "sr"]
            .iter()
            .any(|p| name.starts_with(p))
        {
            continue;
        }
        if is_member(&name) {
            return true;
        }
        let parts = std::fs::read_dir(disk.path())
            .into_iter()
            .flatten()
            .flatten();
        for part in parts.filter(|p| p.path().join("partition").exists()) {
            if is_member(&part.file_name().to_string_lossy()) {
                return true;
            }
        }
    }
    false
}

/// A whole disk of a member partition (`/dev/nvme0n1p2` → `/dev/nvme0n1`, `/dev/sda1` →
/// `/dev/sda`), from sysfs; the member itself when it is a whole disk.
pub fn holder_disk(member: &str) -> String {
    let base = member.rsplit('/').next().unwrap_or(member);
    let part = Path::new("/sys/class/block").join(base);
    if part.join("partition").exists() {
        if let Some(parent) = std::fs::canonicalize(&part)
            .ok()
            .and_then(|p| p.parent().and_then(|d| d.file_name()).map(|n| n.to_owned()))
        {
            return format!("/dev/{}", parent.to_string_lossy());
        }
    }
    member.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_exports() {
        for ok in ["root", "md0", "data-1", "a.b_c", &"x".repeat(32)] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "with space", "a/b", "host:name", &"x".repeat(33), "é"] {
            assert!(!valid_name(bad), "{bad}");
        }
        let export = "MD_LEVEL=raid1\nMD_DEVICES=2\nMD_METADATA=1.2\nMD_UUID=a:b:c:d\nMD_NAME=rivet-host:root\n";
        assert_eq!(name_from_export(export).as_deref(), Some("root"));
        assert_eq!(name_from_export("MD_NAME=esp\n").as_deref(), Some("esp"));
        assert_eq!(name_from_export("MD_LEVEL=raid0\n"), None);
        // No sysfs tree, no arrays (and no panic).
        assert!(arrays(Path::new("/nonexistent")).is_empty());
        assert!(!any_member(Path::new("/nonexistent"), Path::new("/dev")));
    }
}
