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

/// The GPT partition holding the file system (or PARTUUID) `uuid`: (start, len).
fn partition_with_uuid(disk: &Path, uuid: &str) -> Result<(u64, u64), String> {
    let mut f = std::fs::File::open(disk).map_err(|e| e.to_string())?;
    let gpt = gptman::GPT::find_from(&mut f).map_err(|e| format!("reading the GPT: {e}"))?;
    for (_, p) in gpt.iter().filter(|(_, p)| p.is_used()) {
        let (start, len) = (
            p.starting_lba * gpt.sector_size,
            (p.ending_lba - p.starting_lba + 1) * gpt.sector_size,
        );
        if let Ok(pr) = crate::hardware::probe::probe_at(disk, start, len) {
            if pr
                .uuid
                .as_deref()
                .is_some_and(|u| u.eq_ignore_ascii_case(uuid))
            {
                return Ok((start, len));
            }
        }
        let part_uuid = uuid::Uuid::from_bytes_le(p.unique_partition_guid).to_string();
        if part_uuid.eq_ignore_ascii_case(uuid) {
            return Ok((start, len));
        }
    }
    Err(format!(
        "no partition of {} holds root_uuid {uuid}",
        disk.display()
    ))
}

/// A partition image brings its EFI boot files inside the root file system
/// (`/boot/efi/EFI/...`, where the distribution installed them); the new ESP is empty. Copy
/// them over, mounting the root file system read-only.
fn populate_esp(disk: &Path, e: &esp::Esp, root_uuid: &str) -> Result<usize, String> {
    let (start, len) = partition_with_uuid(disk, root_uuid)?;
    let dir = tempfile_dir()?;
    let t = Duration::from_secs(60);
    let (ok, out) = run_capture(
        "mount",
        &[
            "-o",
            &format!("ro,loop,offset={start},sizelimit={len}"),
            &disk.display().to_string(),
            &dir.display().to_string(),
        ],
        t,
        1 << 16,
    )
    .map_err(|e| e.to_string())?;
    if !ok {
        let _ = std::fs::remove_dir(&dir);
        return Err(format!(
            "mounting the root file system: {}",
            String::from_utf8_lossy(&out).trim()
        ));
    }
    let copied = copy_efi_tree(&dir.join("boot/efi/EFI"), disk, e);
    let _ = run_capture("umount", &["-d", &dir.display().to_string()], t, 1 << 16);
    let _ = std::fs::remove_dir(&dir);
    copied
}

fn tempfile_dir() -> Result<PathBuf, String> {
    let d = std::env::temp_dir().join(format!("rivet-root-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir(&d).map_err(|e| format!("{}: {e}", d.display()))?;
    Ok(d)
}

fn copy_efi_tree(src: &Path, disk: &Path, e: &esp::Esp) -> Result<usize, String> {
    if !src.is_dir() {
        return Err(
            "the EFI system partition is empty and the image has no /boot/efi/EFI files to put there              (grub-install inside the image is not supported by this Rivet build)"
                .into(),
        );
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(disk)
        .map_err(|e| e.to_string())?;
    let fs = fatfs::FileSystem::new(
        crate::disk::partitions::Slice::new(f, e.start, e.len),
        fatfs::FsOptions::new(),
    )
    .map_err(|e| format!("opening the ESP: {e}"))?;
    let n = copy_into(&fs, src)?;
    fs.unmount().map_err(|e| format!("ESP: {e}"))?;
    Ok(n)
}

fn copy_into<T: fatfs::ReadWriteSeek>(
    fs: &fatfs::FileSystem<T>,
    src: &Path,
) -> Result<usize, String> {
    let efi = fs
        .root_dir()
        .create_dir("EFI")
        .map_err(|e| format!("ESP: creating EFI: {e}"))?;
    let mut n = 0;
    let mut stack = vec![(src.to_path_buf(), efi)];
    while let Some((from, to)) = stack.pop() {
        let entries = std::fs::read_dir(&from).map_err(|e| format!("{}: {e}", from.display()))?;
        for ent in entries.flatten() {
            let name = ent.file_name().to_string_lossy().into_owned();
            let path = ent.path();
            if path.is_dir() {
                let sub = to
                    .create_dir(&name)
                    .map_err(|e| format!("ESP: {name}: {e}"))?;
                stack.push((path, sub));
            } else if path.is_file() {
                let data = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                let mut out = to
                    .create_file(&name)
                    .map_err(|e| format!("ESP: {name}: {e}"))?;
                out.truncate().map_err(|e| e.to_string())?;
                std::io::Write::write_all(&mut out, &data)
                    .map_err(|e| format!("ESP: {name}: {e}"))?;
                n += 1;
            }
        }
    }
    Ok(n)
}

/// UEFI for a partition image: fill the new ESP from the image, then as for whole disks.
fn uefi_partition(disk: &Path, root_uuid: &str) -> Result<String, String> {
    let e = esp::find(disk)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("{} has no EFI system partition", disk.display()))?;
    if esp::loaders(disk, &e)
        .map_err(|e| e.to_string())?
        .is_empty()
    {
        let n = populate_esp(disk, &e, root_uuid)?;
        tracing::info!(files = n, "EFI files copied from the image to the ESP");
    }
    uefi(disk)
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
        ("uefi", false) => uefi_partition(&disk, a.root_uuid.as_deref().unwrap_or_default()),
        (_, false) if !ctx.config.enable_bios_bootloader_install => Err(
            "BIOS boot loader installation for partition images is disabled \
             (enable_bios_bootloader_install is off, as in Ironic's default)"
                .into(),
        ),
        (_, false) => Err(
            "grub-install for BIOS partition images is not supported by this Rivet build".into(),
        ),
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
