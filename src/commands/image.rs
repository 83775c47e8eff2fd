//! `image.install_bootloader`. For a whole-disk image in UEFI mode: find the image's EFI
//! system partition and register its boot loaders in the firmware with efibootmgr (IPA's
//! behaviour, stale entries of the same label removed first). When this ramdisk cannot write
//! EFI variables (no efibootmgr, or not booted through UEFI), the firmware's removable-media
//! fallback loader (`\EFI\BOOT\BOOTX64.EFI`) must be there, or the deploy would not boot: that
//! is then an error, unless `ignore_bootloader_failure`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{args, Context, Outcome, Params};
use crate::disk::esp;
use crate::error::{CommandError, ErrorKind};
use crate::system::tools::{run_capture, which};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Args {
    #[serde(default)]
    root_uuid: Option<String>,
    #[serde(default)]
    efi_system_part_uuid: Option<String>,
    #[serde(default)]
    prep_boot_part_uuid: Option<String>,
    #[serde(default)]
    target_boot_mode: Option<String>,
    #[serde(default)]
    ignore_bootloader_failure: Option<bool>,
}

const EFIVARS: &str = "/sys/firmware/efi/efivars";

fn device(ctx: &Context) -> Result<PathBuf, CommandError> {
    if let Some((dev, _)) = ctx.deployed.lock().ok().and_then(|d| d.clone()) {
        return Ok(dev);
    }
    ctx.root_disk(ctx.config.strict_root_device)
        .map(|d| PathBuf::from(d.name))
}

/// Register `loaders` (UEFI paths on ESP partition `part` of `disk`) as ironic1, ironic2, …
fn register(disk: &Path, part: u32, loaders: &[String]) -> Result<(), String> {
    let t = Duration::from_secs(30);
    let (_, listing) = run_capture("efibootmgr", &[], t, 1 << 16).map_err(|e| e.to_string())?;
    let listing = String::from_utf8_lossy(&listing).to_string();
    for (i, loader) in loaders.iter().enumerate() {
        let label = format!("ironic{}", i + 1);
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
        .map_err(|e| e.to_string())?;
        if !ok {
            return Err(format!(
                "efibootmgr failed: {}",
                String::from_utf8_lossy(&out)
            ));
        }
        tracing::info!(%label, %loader, "UEFI boot entry registered");
    }
    Ok(())
}

fn uefi(disk: &Path) -> Result<String, String> {
    let esp = esp::find(disk)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("{} has no EFI system partition", disk.display()))?;
    let loaders = esp::loaders(disk, &esp).map_err(|e| e.to_string())?;
    if loaders.is_empty() {
        return Err(format!(
            "the EFI system partition {} of {} holds no boot loader",
            esp.number,
            disk.display()
        ));
    }
    if Path::new(EFIVARS).is_dir() && which("efibootmgr").is_some() {
        register(disk, esp.number, &loaders)?;
        return Ok(format!(
            "registered {} with the firmware",
            loaders.join(", ")
        ));
    }
    let fallback = esp::fallback_loader();
    if loaders.iter().any(|l| l.eq_ignore_ascii_case(fallback)) {
        tracing::warn!(
            "this ramdisk cannot write EFI variables; the firmware will boot {fallback}"
        );
        Ok(format!(
            "no EFI variables here; the image's fallback loader {fallback} will boot"
        ))
    } else {
        Err(format!(
            "this ramdisk cannot write EFI variables (no efibootmgr or not booted through UEFI) and the image has no \
             fallback loader {fallback}; found {}",
            loaders.join(", ")
        ))
    }
}

pub fn install_bootloader(ctx: &Context, params: Params) -> Result<Outcome, CommandError> {
    let a: Args = args(params)?;
    let _ = (&a.efi_system_part_uuid, &a.prep_boot_part_uuid);
    let ignore = a.ignore_bootloader_failure.unwrap_or(false);
    let disk = device(ctx)?;
    let whole_disk = a.root_uuid.as_deref().is_none_or(|u| u.starts_with("0x"));
    let mode =
        a.target_boot_mode
            .as_deref()
            .unwrap_or(if Path::new("/sys/firmware/efi").exists() {
                "uefi"
            } else {
                "bios"
            });
    let outcome = match (mode, whole_disk) {
        ("uefi", true) => uefi(&disk),
        // A whole-disk image in BIOS mode carries its own boot code in the first MiB.
        (_, true) => Ok("whole-disk image: its own boot loader is used".into()),
        (_, false) => Err("boot loader installation for partition images is not supported by this Rivet build yet".into()),
    };
    match outcome {
        Ok(msg) => {
            tracing::info!(disk = %disk.display(), %mode, "{msg}");
            Ok(Outcome::Null)
        }
        Err(e) if ignore => {
            tracing::warn!(error = %e, "boot loader installation failed; ignored as asked");
            Ok(Outcome::Null)
        }
        Err(e) => Err(CommandError::new(
            ErrorKind::CommandExecution,
            format!(
                "Installing the boot loader on {} failed: {e}",
                disk.display()
            ),
        )),
    }
}
