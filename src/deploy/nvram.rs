//! Firmware boot entries (EFI variables) through efibootmgr: one set per disk, stale entries
//! of the same label removed first.

use std::path::Path;
use std::time::Duration;

use crate::system::tools::{run_capture, which};

const EFIVARS: &str = "/sys/firmware/efi/efivars";

/// Whether boot entries can be written here: `allowed` (never with `--simulate-power`: a test
/// must not change the boot entries of the machine it runs on), EFI variables, efibootmgr.
pub fn writable(allowed: bool) -> bool {
    allowed && Path::new(EFIVARS).is_dir() && which("efibootmgr").is_some()
}

#[derive(Debug, thiserror::Error)]
#[error(
    "this ramdisk cannot write EFI variables (no efibootmgr or not booted through UEFI) and the \
     image has no fallback loader {fallback}; found {found}"
)]
pub struct NoFallback {
    pub fallback: &'static str,
    pub found: String,
}

/// Without boot entries the firmware boots the removable-media path: it must be among
/// `loaders`. Returns it.
pub fn require_fallback(loaders: &[String]) -> Result<&'static str, NoFallback> {
    let fallback = crate::disk::esp::fallback_loader();
    if loaders.iter().any(|l| l.eq_ignore_ascii_case(fallback)) {
        Ok(fallback)
    } else {
        Err(NoFallback {
            fallback,
            found: loaders.join(", "),
        })
    }
}

#[derive(Debug, thiserror::Error)]
#[error("registering the boot loader with the firmware: {0}")]
pub struct NvramError(pub String);

/// Register `entries` (UEFI paths on ESP partition `part` of `disk`) under their CSV's label
/// or as ironic1, ironic2, … (`member`: followed by the disk's name, one set of entries per
/// RAID member).
pub fn register(
    disk: &Path,
    part: u32,
    entries: &[crate::disk::esp::Entry],
    member: bool,
) -> Result<(), NvramError> {
    register_with("efibootmgr", disk, part, entries, member)
}

/// [`register`] through the efibootmgr at `tool`.
fn register_with(
    tool: &str,
    disk: &Path,
    part: u32,
    entries: &[crate::disk::esp::Entry],
    member: bool,
) -> Result<(), NvramError> {
    let t = Duration::from_secs(30);
    let nvram = NvramError;
    let (_, listing) = run_capture(tool, &[], t, 1 << 16).map_err(|e| nvram(e.to_string()))?;
    let listing = String::from_utf8_lossy(&listing).to_string();
    for (i, entry) in entries.iter().enumerate() {
        let loader = &entry.path;
        let base = entry
            .label
            .clone()
            .unwrap_or_else(|| format!("ironic{}", i + 1));
        let label = match disk.file_name().filter(|_| member) {
            Some(n) => format!("{base} ({})", n.to_string_lossy()),
            None => base,
        };
        // Remove entries with this label first, so repeated deploys do not pile them up.
        for l in listing.lines() {
            if let Some(rest) = l.strip_prefix("Boot") {
                let (num, name) = rest.split_at(
                    rest.find(|c: char| !c.is_ascii_hexdigit())
                        .unwrap_or(rest.len()),
                );
                // The label alone (newer efibootmgr prints the device path after a tab):
                // `ironic1` must not take `ironic10` with it, nor a CSV's `debian` another's
                // `debian-old`.
                let name = name
                    .trim_start_matches('*')
                    .split('\t')
                    .next()
                    .unwrap_or("");
                if num.len() == 4 && name.trim() == label {
                    let _ = run_capture(tool, &["-b", num, "-B"], t, 1 << 16);
                }
            }
        }
        let (ok, out) = run_capture(
            tool,
            &[
                "-v",
                "-c",
                "-d",
                &disk.display().to_string(),
                "-p",
                &part.to_string(),
                "-w",
                "-L",
                &label,
                "-l",
                loader,
            ],
            t,
            1 << 16,
        )
        .map_err(|e| nvram(e.to_string()))?;
        if !ok {
            return Err(nvram(format!(
                "efibootmgr failed: {}",
                String::from_utf8_lossy(&out)
            )));
        }
        tracing::info!(%label, %loader, "UEFI boot entry registered");
    }
    Ok(())
}

/// One firmware boot entry as `efibootmgr -v` lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// `0001`.
    pub num: String,
    pub label: String,
    /// The device path (`HD(1,GPT,…)/File(\EFI\…)`, `PciRoot(…)`, …).
    pub path: String,
}

/// The entries of an `efibootmgr -v` listing whose device path efibootmgr printed (as IPA
/// reads them: the label runs up to the first device-path node).
pub fn parse_records(listing: &str) -> Vec<Record> {
    const NODES: [&str; 8] = [
        "BBS(",
        "HD(",
        "FvFile(",
        "FvVol(",
        "PciRoot(",
        "VenMsg(",
        "VenHw(",
        "UsbClass(",
    ];
    listing
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("Boot")?;
            let hex = rest
                .find(|c: char| !c.is_ascii_hexdigit())
                .unwrap_or(rest.len());
            let (num, rest) = rest.split_at(hex);
            if num.is_empty() {
                return None;
            }
            let rest = rest.strip_prefix('*').unwrap_or(rest);
            if !rest.starts_with(char::is_whitespace) {
                return None;
            }
            let at = NODES.iter().filter_map(|n| rest.find(n)).min()?;
            Some(Record {
                num: num.to_string(),
                label: rest[..at].trim().to_string(),
                path: rest[at..].trim_end().to_string(),
            })
        })
        .collect()
}

/// Delete every boot entry whose device path matches one of `patterns` (`tool`: efibootmgr,
/// or a stand-in in tests). Returns the entries deleted.
pub fn clean(tool: &str, patterns: &[regex::Regex]) -> Result<Vec<Record>, NvramError> {
    let t = Duration::from_secs(30);
    let (ok, listing) =
        run_capture(tool, &["-v"], t, 1 << 20).map_err(|e| NvramError(e.to_string()))?;
    if !ok {
        return Err(NvramError(format!(
            "efibootmgr -v failed: {}",
            String::from_utf8_lossy(&listing)
        )));
    }
    let mut deleted = Vec::new();
    for r in parse_records(&String::from_utf8_lossy(&listing)) {
        if let Some(p) = patterns.iter().find(|p| p.is_match(&r.path)) {
            let (ok, out) = run_capture(tool, &["-b", &r.num, "-B"], t, 1 << 16)
                .map_err(|e| NvramError(e.to_string()))?;
            if !ok {
                return Err(NvramError(format!(
                    "deleting Boot{} ({}): {}",
                    r.num,
                    r.label,
                    String::from_utf8_lossy(&out).trim()
                )));
            }
            tracing::info!(entry = %r.num, label = %r.label, path = %r.path, pattern = %p, "UEFI boot entry deleted");
            deleted.push(r);
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTING: &str = "BootCurrent: 0001\nTimeout: 0 seconds\nBootOrder: 0001,0000,0002,0003\n\
Boot0000* UiApp\tFvVol(7cb8bdc9-f8eb-4f34-aaea-3ee4af6516a1)/FvFile(462caa21-7614-4503-836e-8ab6f4662331)\n\
Boot0001* debian\tHD(1,GPT,1a2b,0x800,0x100000)/File(\\EFI\\debian\\shimx64.efi)\n\
Boot0002* UEFI PXEv4 (MAC:525400123456)\tPciRoot(0x0)/Pci(0x3,0x0)/MAC(525400123456,1)/IPv4(0.0.0.0,0,DHCP)\n\
Boot0003  ironic1 (nvme0n1)\tHD(3,GPT,9f,0x800,0x44800)/File(\\EFI\\BOOT\\grubx64.efi)\n\
Boot0004* no device path\n";

    #[test]
    fn records_as_ipa_reads_them() {
        let r = parse_records(LISTING);
        let labels: Vec<&str> = r.iter().map(|r| r.label.as_str()).collect();
        assert_eq!(
            labels,
            [
                "UiApp",
                "debian",
                "UEFI PXEv4 (MAC:525400123456)",
                "ironic1 (nvme0n1)"
            ]
        );
        assert_eq!(r[1].num, "0001");
        assert!(r[1].path.starts_with("HD(1,GPT"));
        assert!(parse_records("garbage\nBootXYZ* x\tHD(1)\n").is_empty());
    }

    /// A stand-in efibootmgr in `dir`: prints `listing` when called as `list_test` (a shell
    /// test on its arguments) says, records every other call in `dir/calls`.
    fn fake_efibootmgr(dir: &Path, listing: &str, list_test: &str) -> (String, std::path::PathBuf) {
        use std::os::unix::fs::PermissionsExt;
        let (log, list) = (dir.join("calls"), dir.join("listing"));
        std::fs::write(&list, listing).unwrap();
        let fake = dir.join("efibootmgr");
        std::fs::write(
            &fake,
            format!(
                "#!/bin/sh\nif {list_test}; then cat '{}'; else echo \"$@\" >> '{}'; fi\n",
                list.display(),
                log.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        (fake.display().to_string(), log)
    }

    #[test]
    fn registers_a_csv_label_or_ironic_n_replacing_only_the_same_label() {
        use crate::disk::esp::Entry;
        let d = tempfile::tempdir().unwrap();
        // Old entries: one per label Rivet makes, and look-alikes that must stay.
        let (tool, log) = fake_efibootmgr(
            d.path(),
            "BootOrder: 0001,0002,0003,0004\nBoot0001* ubuntu\tHD(1,GPT,aa,0x800,0x100000)/File(\\EFI\\ubuntu\\shimx64.efi)\n\
             Boot0002* ubuntu-old\tHD(1,GPT,aa,0x800,0x100000)/File(\\EFI\\old\\shimx64.efi)\n\
             Boot0003* ironic1 (nvme0n1)\tHD(1,GPT,aa,0x800,0x100000)/File(\\EFI\\BOOT\\BOOTX64.EFI)\n\
             Boot0004* ironic10\tHD(1,GPT,aa,0x800,0x100000)/File(\\EFI\\BOOT\\BOOTX64.EFI)\n",
            "[ $# = 0 ]",
        );
        let disk = Path::new("/dev/nvme0n1");
        let shim = Entry {
            path: "\\EFI\\ubuntu\\shimx64.efi".into(),
            label: Some("ubuntu".into()),
        };
        register_with(&tool, disk, 1, &[shim], false).unwrap();
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            "-b 0001 -B\n-v -c -d /dev/nvme0n1 -p 1 -w -L ubuntu -l \\EFI\\ubuntu\\shimx64.efi\n"
        );
        std::fs::remove_file(&log).unwrap();
        let fallback = Entry {
            path: "\\EFI\\BOOT\\BOOTX64.EFI".into(),
            label: None,
        };
        register_with(&tool, disk, 1, &[fallback], true).unwrap();
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            "-b 0003 -B\n-v -c -d /dev/nvme0n1 -p 1 -w -L ironic1 (nvme0n1) -l \\EFI\\BOOT\\BOOTX64.EFI\n"
        );
    }

    #[test]
    fn clean_deletes_what_matches_through_efibootmgr() {
        let d = tempfile::tempdir().unwrap();
        // Lists the entries above when called with -v.
        let (fake, log) = fake_efibootmgr(d.path(), LISTING, "[ \"$1\" = -v ]");
        // IPA's default patterns: disk entries, shim and GRUB loaders; firmware and PXE stay.
        let patterns: Vec<regex::Regex> = [r"^HD\(", r"shim.*\.efi", r"grub.*\.efi"]
            .iter()
            .map(|p| {
                regex::RegexBuilder::new(p)
                    .case_insensitive(true)
                    .build()
                    .unwrap()
            })
            .collect();
        let gone = clean(&fake, &patterns).unwrap();
        let nums: Vec<&str> = gone.iter().map(|r| r.num.as_str()).collect();
        assert_eq!(nums, ["0001", "0003"]);
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            "-b 0001 -B\n-b 0003 -B\n"
        );
        // A pattern matching nothing deletes nothing.
        std::fs::remove_file(&log).unwrap();
        let none = [regex::Regex::new("^Nothing").unwrap()];
        assert!(clean(&fake, &none).unwrap().is_empty());
        assert!(!log.exists());
    }
}
