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

/// Register `loaders` (UEFI paths on ESP partition `part` of `disk`) as ironic1, ironic2, …
/// (`member`: followed by the disk's name, one set of entries per RAID member).
pub fn register(
    disk: &Path,
    part: u32,
    loaders: &[String],
    member: bool,
) -> Result<(), NvramError> {
    let t = Duration::from_secs(30);
    let nvram = NvramError;
    let (_, listing) =
        run_capture("efibootmgr", &[], t, 1 << 16).map_err(|e| nvram(e.to_string()))?;
    let listing = String::from_utf8_lossy(&listing).to_string();
    for (i, loader) in loaders.iter().enumerate() {
        let label = match disk.file_name().filter(|_| member) {
            Some(n) => format!("ironic{} ({})", i + 1, n.to_string_lossy()),
            None => format!("ironic{}", i + 1),
        };
        // Remove entries with this label first, so repeated deploys do not pile them up.
        for l in listing.lines() {
            if let Some(rest) = l.strip_prefix("Boot") {
                let (num, name) = rest.split_at(
                    rest.find(|c: char| !c.is_ascii_hexdigit())
                        .unwrap_or(rest.len()),
                );
                if num.len() == 4 && name.trim_start_matches('*').trim().starts_with(&label) {
                    let _ = run_capture("efibootmgr", &["-b", num, "-B"], t, 1 << 16);
                }
            }
        }
        let (ok, out) = run_capture(
            "efibootmgr",
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
