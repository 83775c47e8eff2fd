//! Making a deployed disk bootable (what `image.install_bootloader` asks for).
//!
//! For a whole-disk image in UEFI mode: find the image's EFI system partition and register
//! its boot loaders in the firmware with efibootmgr (IPA's behaviour, stale entries of the
//! same label removed first). When this ramdisk cannot write EFI variables (no efibootmgr,
//! not booted through UEFI, or `--simulate-power`), the firmware's removable-media fallback
//! loader (`\EFI\BOOT\BOOTX64.EFI`) must be there, or the deploy would not boot: that is
//! then an error. For a partition image: GRUB from the image (`grub`), or, for an image
//! without grub-install, the EFI files it brings, copied onto the new ESP.

use std::path::Path;

use super::grub;
use crate::disk::esp;
use crate::disk::mount::{Access, Mounted};
use crate::disk::table::Partition;
use crate::system::inroot::{Item, Root};

#[derive(Debug, thiserror::Error)]
pub enum BootloaderError {
    #[error("{0} has no EFI system partition")]
    NoEsp(String),
    #[error(transparent)]
    Esp(#[from] esp::EspError),
    #[error("the EFI system partition {number} of {disk} holds no boot loader")]
    NoLoader { disk: String, number: u32 },
    #[error(transparent)]
    Nvram(#[from] super::nvram::NvramError),
    #[error(transparent)]
    NoFallback(#[from] super::nvram::NoFallback),
    #[error("the image has no grub-install (or grub2-install) to boot it in BIOS mode")]
    NoGrubForBios,
    #[error(
        "BIOS boot loader installation is disabled (enable_bios_bootloader_install is off, \
         as in Ironic's default)"
    )]
    BiosDisabled,
    #[error(
        "BIOS boot exists only on x86; this machine is {arch}: set the node's boot_mode to \
         uefi (capabilities boot_mode:uefi)"
    )]
    BiosNeedsX86 { arch: &'static str },
    #[error("the image's boot files: {0}")]
    ImageFiles(String),
    #[error("the EFI system partition: {0}")]
    EspWrite(String),
    #[error("software RAID: {0}")]
    SoftwareRaid(String),
    #[error(transparent)]
    RaidBoot(#[from] super::raid_boot::RaidBootError),
    #[error(transparent)]
    Grub(#[from] grub::GrubError),
    #[error(transparent)]
    Mount(#[from] crate::disk::mount::MountError),
}

/// What the conductor asks for.
#[derive(Debug, Clone)]
pub struct Request {
    /// `root_uuid`: a partition image's root file system; `None` or `0x…` for a whole disk.
    pub root_uuid: Option<String>,
    pub uefi: bool,
    /// Whether EFI variables may be written (never with `--simulate-power`).
    pub nvram: bool,
    /// The conductor's `enable_bios_bootloader_install`.
    pub bios_allowed: bool,
    /// `software_raid`: the image was written onto an md array.
    pub software_raid: bool,
}

/// Make `disk` bootable as asked; says what was done.
pub fn install(disk: &Path, r: &Request) -> Result<String, BootloaderError> {
    install_on(disk, r, std::env::consts::ARCH)
}

/// `install` on the architecture `arch` (the agent's own; another in tests).
fn install_on(disk: &Path, r: &Request, arch: &'static str) -> Result<String, BootloaderError> {
    let whole_disk = r.root_uuid.as_deref().is_none_or(|u| u.starts_with("0x"));
    let root = r.root_uuid.as_deref().unwrap_or_default();
    // A conductor that asks for BIOS on an Arm server (a node enrolled without boot_mode, the
    // default taken from an x86 fleet) gets that said, before any disk is touched, instead of
    // grub-install's i386-pc error from the image's chroot.
    let needs_bios_code = !r.uefi && (r.software_raid || !whole_disk);
    if needs_bios_code && !matches!(arch, "x86_64" | "x86") {
        return Err(BootloaderError::BiosNeedsX86 { arch });
    }
    if r.software_raid {
        return match (r.uefi, whole_disk) {
            (true, true) => Ok(super::raid_boot::install_uefi(disk, r.nvram)?),
            (false, true) if !r.bios_allowed => Err(BootloaderError::BiosDisabled),
            (false, true) => Ok(super::raid_boot::install_bios(
                disk,
                r.root_uuid.as_deref(),
            )?),
            (_, false) => Err(BootloaderError::SoftwareRaid(
                "partition images cannot be deployed onto a software RAID (Ironic requires \
                 whole-disk images there)"
                    .into(),
            )),
        };
    }
    match (r.uefi, whole_disk) {
        (true, true) => uefi(disk, r.nvram),
        // A whole-disk image in BIOS mode carries its own boot code in the first MiB.
        (false, true) => Ok("whole-disk image: its own boot loader is used".into()),
        (true, false) => uefi_partition(disk, root, r.nvram),
        (false, false) if !r.bios_allowed => Err(BootloaderError::BiosDisabled),
        (false, false) => bios_partition(disk, root),
    }
}

/// `nvram`: whether EFI variables may be written (never with `--simulate-power`: a test must
/// not change the boot entries of the machine it runs on).
fn uefi(disk: &Path, nvram: bool) -> Result<String, BootloaderError> {
    let esp = esp::find(disk)?.ok_or_else(|| BootloaderError::NoEsp(disk.display().to_string()))?;
    let loaders = esp::loaders(disk, &esp)?;
    if loaders.is_empty() {
        return Err(BootloaderError::NoLoader {
            disk: disk.display().to_string(),
            number: esp.number,
        });
    }
    if super::nvram::writable(nvram) {
        super::nvram::register(disk, esp.number, &loaders.entries, false)?;
        return Ok(format!("registered {} with the firmware", loaders.paths()));
    }
    let fallback = super::nvram::require_fallback(&loaders.files)?;
    tracing::warn!("this ramdisk cannot write EFI variables; the firmware will boot {fallback}");
    Ok(format!(
        "no EFI variables here; the image's fallback loader {fallback} will boot"
    ))
}

/// Most of an image's EFI tree held in memory on its way to the ESP.
const EFI_TREE_MAX: u64 = 64 << 20;

/// A directory (`None`) or a file's content, by path under `EFI/`.
type Tree = Vec<(String, Option<Vec<u8>>)>;

/// The image's `/boot/efi/EFI` tree. It is the tenant's: it is read inside the image only
/// (a link to `/run/rivet/session.json` must not carry the agent's token onto the disk),
/// links and special files are skipped (FAT has neither), and at most 64 MiB is read.
fn read_efi_tree(image: &Path) -> Result<Tree, BootloaderError> {
    let files = |m: String| BootloaderError::ImageFiles(m);
    let root = Root::open(image).map_err(|e| files(format!("{}: {e}", image.display())))?;
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
        std::io::ErrorKind::NotFound => files(
            "the EFI system partition is empty, and the image has neither grub-install nor \
             /boot/efi/EFI files to put there"
                .to_string(),
        ),
        _ => files(e.to_string()),
    })?;
    Ok(tree)
}

/// Write `tree` under `EFI/` on the ESP; returns the number of files.
fn copy_efi_tree(tree: &Tree, disk: &Path, e: &Partition) -> Result<usize, BootloaderError> {
    let w = |m: String| BootloaderError::EspWrite(m);
    let dev = crate::disk::device::Device::open(disk).map_err(|e| w(e.to_string()))?;
    let f = dev.file().map_err(|e| w(e.to_string()))?;
    let fs = fatfs::FileSystem::new(
        crate::disk::slice::Slice::new(f, e.start, e.len),
        fatfs::FsOptions::new(),
    )
    .map_err(|e| w(format!("opening it: {e}")))?;
    let efi = fs
        .root_dir()
        .create_dir("EFI")
        .map_err(|e| w(format!("creating EFI: {e}")))?;
    let mut n = 0;
    for (name, data) in tree {
        let err = |e: std::io::Error| w(format!("{name}: {e}"));
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
    fs.unmount().map_err(|e| w(e.to_string()))?;
    Ok(n)
}

/// The root file system of a partition image, mounted read-only to look at it: an image
/// without GRUB is then left byte for byte as written.
fn image_root(disk: &Path, root_uuid: &str) -> Result<(Partition, Mounted), BootloaderError> {
    let root = grub::partition_with_uuid(disk, root_uuid)?;
    let m = Mounted::partition(disk, &root, Access::Inspect)?;
    Ok((root, m))
}

/// UEFI for a partition image: GRUB from the image onto the new ESP; for an image without
/// grub-install, the EFI files it brings in `/boot/efi/EFI` (where the distribution installed
/// them). Then registered as for whole disks.
fn uefi_partition(disk: &Path, root_uuid: &str, nvram: bool) -> Result<String, BootloaderError> {
    let e = esp::find(disk)?.ok_or_else(|| BootloaderError::NoEsp(disk.display().to_string()))?;
    let (root, ro) = image_root(disk, root_uuid)?;
    let installed = if grub::has_grub_install(ro.path()) {
        drop(ro);
        grub::install(disk, &root, Some(&e), grub::Firmware::Uefi)?
    } else {
        if esp::loaders(disk, &e)?.is_empty() {
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

fn bios_partition(disk: &Path, root_uuid: &str) -> Result<String, BootloaderError> {
    let (root, ro) = image_root(disk, root_uuid)?;
    if !grub::has_grub_install(ro.path()) {
        return Err(BootloaderError::NoGrubForBios);
    }
    drop(ro);
    Ok(grub::install(disk, &root, None, grub::Firmware::Bios)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(root_uuid: Option<&str>, uefi: bool, software_raid: bool) -> Request {
        Request {
            root_uuid: root_uuid.map(str::to_string),
            uefi,
            nvram: false,
            bios_allowed: true,
            software_raid,
        }
    }

    #[test]
    fn bios_is_refused_off_x86_before_the_disk_is_read() {
        // The disk does not exist: the refusal comes first, naming the architecture.
        let disk = Path::new("/nonexistent/rivet-test-disk");
        for r in [
            request(Some("0d3c5f3e-7b7d-4a52-9a62-0c6b2c1a6f11"), false, false),
            request(None, false, true),
        ] {
            let e = install_on(disk, &r, "aarch64").expect_err("BIOS on aarch64");
            assert!(
                matches!(e, BootloaderError::BiosNeedsX86 { arch: "aarch64" }),
                "{e}"
            );
            assert!(e.to_string().contains("boot_mode to uefi"), "{e}");
        }
        // On x86 the same request goes on to the disk (and fails there: it does not exist).
        let r = request(Some("0d3c5f3e-7b7d-4a52-9a62-0c6b2c1a6f11"), false, false);
        let e = install_on(disk, &r, "x86_64").expect_err("no such disk");
        assert!(!matches!(e, BootloaderError::BiosNeedsX86 { .. }), "{e}");
        // A whole-disk image in BIOS mode installs nothing: nothing to refuse either.
        let r = request(None, false, false);
        assert!(install_on(disk, &r, "aarch64").is_ok());
    }
}
