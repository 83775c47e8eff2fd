//! `image.install_bootloader`: the conductor's arguments to a `deploy::bootloader` request,
//! and its failure to IPA's error (ignored when `ignore_bootloader_failure`).

use std::path::Path;

use serde::Deserialize;

use super::{args, Context, Outcome, Params};
use crate::deploy::bootloader::{self, Request};
use crate::error::{CommandError, ErrorKind};

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
    #[serde(default)]
    software_raid: Option<bool>,
}

/// Whether `disk` is an md array (`/sys/block/<name>/md` exists).
fn is_md(disk: &Path) -> bool {
    std::fs::canonicalize(disk)
        .ok()
        .and_then(|c| c.file_name().map(|n| n.to_owned()))
        .is_some_and(|n| Path::new("/sys/block").join(n).join("md").is_dir())
}

pub fn install_bootloader(ctx: &Context, params: Params) -> Result<Outcome, CommandError> {
    let a: Args = args(params)?;
    let _ = (&a.efi_system_part_uuid, &a.prep_boot_part_uuid);
    let disk = ctx.target_disk()?;
    let uefi = match a.target_boot_mode.as_deref() {
        Some(m) => m == "uefi",
        None => Path::new("/sys/firmware/efi").exists(),
    };
    let request = Request {
        root_uuid: a.root_uuid,
        uefi,
        nvram: !ctx.config.simulate_power,
        bios_allowed: ctx.config.enable_bios_bootloader_install,
        // Ironic 39 no longer sends software_raid; as IPA does, the target being an md array
        // says it.
        software_raid: a.software_raid.unwrap_or(false) || is_md(&disk),
    };
    match bootloader::install(&disk, &request) {
        Ok(msg) => {
            tracing::info!(disk = %disk.display(), uefi, "{msg}");
            Ok(Outcome::Null)
        }
        Err(e) if a.ignore_bootloader_failure.unwrap_or(false) => {
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
