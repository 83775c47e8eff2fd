//! `image.install_bootloader`. For a whole-disk image in UEFI mode: find the image's EFI
//! system partition and register its boot loaders in the firmware with efibootmgr (IPA's
//! behaviour, stale entries of the same label removed first). When this ramdisk cannot write
//! EFI variables (no efibootmgr, or not booted through UEFI), the firmware's removable-media
//! fallback loader (`\EFI\BOOT\BOOTX64.EFI`) must be there, or the deploy would not boot: that
//! is then an error, unless `ignore_bootloader_failure`.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::grub;
use super::{args, Context, Outcome, Params};
use crate::disk::esp;
use crate::disk::mount::{Access, Mounted};
use crate::disk::partitions::Listed;
use crate::error::{CommandError, ErrorKind};
use crate::system::inroot::{Item, Root};
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

/// `nvram`: whether EFI variables may be written (never with `--simulate-power`: a test must
/// not change the boot entries of the machine it runs on).
fn uefi(disk: &Path, nvram: bool) -> Result<String, String> {
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
    if nvram && Path::new(EFIVARS).is_dir() && which("efibootmgr").is_some() {
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

/// Most of an image's EFI tree held in memory on its way to the ESP.
const EFI_TREE_MAX: u64 = 64 << 20;

/// A directory (`None`) or a file's content, by path under `EFI/`.
type Tree = Vec<(String, Option<Vec<u8>>)>;

/// The image's `/boot/efi/EFI` tree. It is the tenant's: it is read inside the image only
/// (a link to `/run/rivet/session.json` must not carry the agent's token onto the disk),
/// links and special files are skipped (FAT has neither), and at most 64 MiB is read.
fn read_efi_tree(image: &Path) -> Result<Tree, String> {
    let root = Root::open(image).map_err(|e| format!("{}: {e}", image.display()))?;
    let mut tree = Vec::new();
    let mut total = 0u64;
    root.walk("boot/efi/EFI", &mut |item| {
        match item {
            Item::Dir(d) => tree.push((d.to_string(), None)),
            Item::File(name, file) => {
                let size = file.metadata()?.len();
                total = total.saturating_add(size);
                if total > EFI_TREE_MAX {
                    return Err(std::io::Error::other(format!(
                        "the image's EFI files pass {EFI_TREE_MAX} bytes"
                    )));
                }
                let mut data = Vec::new();
                std::io::Read::read_to_end(&mut std::io::Read::take(file, size), &mut data)?;
                tree.push((name.to_string(), Some(data)));
            }
        }
        Ok(())
    })
    .map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            "the EFI system partition is empty, and the image has neither \
            grub-install nor /boot/efi/EFI files to put there"
                .to_string()
        }
        _ => e.to_string(),
    })?;
    Ok(tree)
}

/// Write `tree` under `EFI/` on the ESP; returns the number of files.
fn copy_efi_tree(tree: &Tree, disk: &Path, e: &esp::Esp) -> Result<usize, String> {
    let f = crate::disk::device::open_write(disk).map_err(|e| e.to_string())?;
    let fs = fatfs::FileSystem::new(
        crate::disk::partitions::Slice::new(f, e.start, e.len),
        fatfs::FsOptions::new(),
    )
    .map_err(|e| format!("opening the ESP: {e}"))?;
    let efi = fs
        .root_dir()
        .create_dir("EFI")
        .map_err(|e| format!("ESP: creating EFI: {e}"))?;
    let mut n = 0;
    for (name, data) in tree {
        let err = |e: std::io::Error| format!("ESP: {name}: {e}");
        match data {
            None => {
                efi.create_dir(name).map_err(err)?;
            }
            Some(data) => {
                let mut out = efi.create_file(name).map_err(err)?;
                out.truncate().map_err(err)?;
                std::io::Write::write_all(&mut out, data).map_err(err)?;
                n += 1;
            }
        }
    }
    drop(efi);
    fs.unmount().map_err(|e| format!("ESP: {e}"))?;
    Ok(n)
}

/// The root file system of a partition image, mounted read-only to look at it: an image
/// without GRUB is then left byte for byte as written.
fn image_root(disk: &Path, root_uuid: &str) -> Result<(Listed, Mounted), String> {
    let root = grub::partition_with_uuid(disk, root_uuid)?;
    let m = Mounted::partition(&grub::as_mountable(disk, &root), Access::Inspect)
        .map_err(|e| e.to_string())?;
    Ok((root, m))
}

/// UEFI for a partition image: GRUB from the image onto the new ESP; for an image without
/// grub-install, the EFI files it brings in `/boot/efi/EFI` (where the distribution installed
/// them). Then registered as for whole disks.
fn uefi_partition(disk: &Path, root_uuid: &str, nvram: bool) -> Result<String, String> {
    let e = esp::find(disk)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("{} has no EFI system partition", disk.display()))?;
    let (root, ro) = image_root(disk, root_uuid)?;
    let installed = if grub::has_grub_install(ro.path()) {
        drop(ro);
        grub::install(disk, &root, Some(&e), grub::Firmware::Uefi)?
    } else {
        if esp::loaders(disk, &e)
            .map_err(|e| e.to_string())?
            .is_empty()
        {
            let tree = read_efi_tree(ro.path())?;
            // Unmounted first: the disk is then written under the exclusive open.
            drop(ro);
            let n = copy_efi_tree(&tree, disk, &e)?;
            tracing::info!(files = n, "EFI files copied from the image to the ESP");
        }
        "the image has no grub-install; its EFI files were copied".into()
    };
    Ok(format!("{installed}; {}", uefi(disk, nvram)?))
}

fn bios_partition(disk: &Path, root_uuid: &str) -> Result<String, String> {
    let (root, ro) = image_root(disk, root_uuid)?;
    if !grub::has_grub_install(ro.path()) {
        return Err(
            "the image has no grub-install (or grub2-install) to boot it in BIOS mode".into(),
        );
    }
    drop(ro);
    grub::install(disk, &root, None, grub::Firmware::Bios)
}

pub fn install_bootloader(ctx: &Context, params: Params) -> Result<Outcome, CommandError> {
    let a: Args = args(params)?;
    let _ = (&a.efi_system_part_uuid, &a.prep_boot_part_uuid);
    let ignore = a.ignore_bootloader_failure.unwrap_or(false);
    let disk = ctx.target_disk()?;
    let whole_disk = a.root_uuid.as_deref().is_none_or(|u| u.starts_with("0x"));
    let mode =
        a.target_boot_mode
            .as_deref()
            .unwrap_or(if Path::new("/sys/firmware/efi").exists() {
                "uefi"
            } else {
                "bios"
            });
    let nvram = !ctx.config.simulate_power;
    let outcome = match (mode, whole_disk) {
        ("uefi", true) => uefi(&disk, nvram),
        // A whole-disk image in BIOS mode carries its own boot code in the first MiB.
        (_, true) => Ok("whole-disk image: its own boot loader is used".into()),
        ("uefi", false) => uefi_partition(&disk, a.root_uuid.as_deref().unwrap_or_default(), nvram),
        (_, false) if !ctx.config.enable_bios_bootloader_install => Err(
            "BIOS boot loader installation for partition images is disabled \
             (enable_bios_bootloader_install is off, as in Ironic's default)"
                .into(),
        ),
        (_, false) => bios_partition(&disk, a.root_uuid.as_deref().unwrap_or_default()),
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
