//! GRUB for partition images, as IPA installs it: the image's own `grub-install` run in a
//! chroot of the freshly written root file system (ramdisk /dev, /proc, /sys bound in), for
//! UEFI with the new ESP mounted at `/boot/efi` (installed twice: under the distribution's
//! name and at the firmware's removable-media path, so the disk boots even where no NVRAM
//! entry can be written), for BIOS onto the disk's boot sector. Then the image's
//! `grub-mkconfig` regenerates its menu for the new disk; an image without one keeps the
//! menu it ships.

use std::path::Path;
use std::time::Duration;

use crate::disk::mount::{Access, Mounted};
use crate::disk::table::{self, Partition};
use crate::system::inroot::Root;
use crate::system::tools::run_clean;

const GRUB_TIME: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum GrubError {
    #[error("no partition of {disk} holds root_uuid {uuid}")]
    NoRoot { disk: String, uuid: String },
    #[error(transparent)]
    Device(#[from] crate::disk::device::DeviceError),
    #[error("the image has no grub-install (or grub2-install)")]
    NoGrubInstall,
    #[error("{0} has no EFI system partition")]
    NoEsp(String),
    #[error("{command} failed: {output}")]
    Failed { command: String, output: String },
    #[error("running {command}: {source}")]
    Tool {
        command: String,
        source: crate::system::tools::ToolError,
    },
    #[error("the image has no grub-mkconfig and no {0}: GRUB would have no menu")]
    NoMenu(&'static str),
    #[error(transparent)]
    Mount(#[from] crate::disk::mount::MountError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    Uefi,
    Bios,
}

/// The partition of `disk` whose file system UUID (or PARTUUID) is `uuid`.
pub fn partition_with_uuid(disk: &Path, uuid: &str) -> Result<Partition, GrubError> {
    let parts = table::read_disk(disk)?;
    parts
        .iter()
        .find(|p| {
            crate::hardware::probe::probe_at(disk, p.start, p.len)
                .ok()
                .and_then(|pr| pr.uuid)
                .is_some_and(|u| u.eq_ignore_ascii_case(uuid))
        })
        .or_else(|| {
            parts
                .iter()
                .find(|p| p.part_uuid.eq_ignore_ascii_case(uuid))
        })
        .cloned()
        .ok_or_else(|| GrubError::NoRoot {
            disk: disk.display().to_string(),
            uuid: uuid.to_string(),
        })
}

/// The first of `names` that the image has in one of the usual directories (links resolved
/// inside the image, as the chroot will resolve them).
fn image_tool(root: &Path, names: &[&str]) -> Option<String> {
    let r = Root::open(root).ok()?;
    for dir in ["usr/sbin", "usr/bin", "sbin", "bin"] {
        for n in names {
            if r.is_file(&format!("{dir}/{n}")) {
                return Some(format!("/{dir}/{n}"));
            }
        }
    }
    None
}

/// Run the image's tool in a chroot: a clean environment (the agent's holds nothing the
/// image needs to see), its own process group, killed whole at the time limit.
fn chroot(root: &Path, args: &[&str]) -> Result<(), GrubError> {
    let mut all = vec![root.to_str().unwrap_or_default()];
    all.extend_from_slice(args);
    let command = args.join(" ");
    let (ok, out) =
        run_clean("chroot", &all, GRUB_TIME, 1 << 16).map_err(|source| GrubError::Tool {
            command: command.clone(),
            source,
        })?;
    if ok {
        Ok(())
    } else {
        let out = String::from_utf8_lossy(&out);
        let tail: Vec<&str> = out.lines().rev().take(6).collect();
        Err(GrubError::Failed {
            command,
            output: tail.into_iter().rev().collect::<Vec<_>>().join(" / "),
        })
    }
}

/// The name the distribution gives its EFI directory (`/etc/os-release` ID).
fn bootloader_id(root: &Path) -> String {
    Root::open(root)
        .ok()
        .and_then(|r| r.read_file("etc/os-release", 64 << 10))
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("ID="))
                .map(|v| v.trim_matches('"').to_string())
        })
        .filter(|v| {
            !v.is_empty()
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
        .unwrap_or_else(|| "linux".into())
}

const GRUB_INSTALL: &[&str] = &["grub-install", "grub2-install"];

/// Whether the image mounted at `root` carries grub-install (callers look on a read-only
/// mount, so that an image without GRUB is left byte for byte as written).
pub fn has_grub_install(root: &Path) -> bool {
    image_tool(root, GRUB_INSTALL).is_some()
}

/// Install GRUB from the image whose root file system is `root` on `disk`; says what was done.
pub fn install(
    disk: &Path,
    root: &Partition,
    esp: Option<&Partition>,
    fw: Firmware,
) -> Result<String, GrubError> {
    install_to(disk, root, esp, fw, &[disk.display().to_string()])
}

/// BIOS GRUB from the image whose root file system is `root` (a partition of the md array
/// `md`) onto the boot sector of every disk of `members`: any of them boots the node.
pub fn install_bios_on_members(
    md: &Path,
    root: &Partition,
    members: &[String],
) -> Result<String, GrubError> {
    install_to(md, root, None, Firmware::Bios, members)
}

/// [`install`], with BIOS GRUB written to each of `bios_targets`.
fn install_to(
    disk: &Path,
    root: &Partition,
    esp: Option<&Partition>,
    fw: Firmware,
    bios_targets: &[String],
) -> Result<String, GrubError> {
    let mut m = Mounted::partition(disk, root, Access::Chroot)?;
    let grub_install = image_tool(m.path(), GRUB_INSTALL).ok_or(GrubError::NoGrubInstall)?;
    let mkconfig = image_tool(m.path(), &["grub-mkconfig", "grub2-mkconfig"]);
    let grub2 = grub_install.ends_with("grub2-install");
    let id = bootloader_id(m.path());
    // Every mount point is checked before anything is mounted: the image decides what its
    // paths are, and a link must not carry a mount onto the ramdisk.
    let points: &[&str] = match fw {
        Firmware::Uefi => &["boot/efi", "dev", "proc", "sys"],
        Firmware::Bios => &["dev", "proc", "sys"],
    };
    m.check_mount_points(points)?;
    if fw == Firmware::Uefi {
        let esp = esp.ok_or_else(|| GrubError::NoEsp(disk.display().to_string()))?;
        m.mount_inside("boot/efi", disk, esp, Access::Chroot)?;
    }
    m.bind_system()?;
    let target = if cfg!(target_arch = "aarch64") {
        "--target=arm64-efi"
    } else {
        "--target=x86_64-efi"
    };
    let mut done = Vec::new();
    match fw {
        Firmware::Uefi => {
            let base = [
                grub_install.as_str(),
                target,
                "--efi-directory=/boot/efi",
                "--no-nvram",
            ];
            let named = format!("--bootloader-id={id}");
            chroot(m.path(), &[&base[..], &[named.as_str()]].concat())?;
            chroot(m.path(), &[&base[..], &["--removable"]].concat())?;
            done.push(format!(
                "{grub_install} for UEFI (EFI/{id} and the removable path)"
            ));
        }
        Firmware::Bios => {
            for t in bios_targets {
                chroot(m.path(), &[grub_install.as_str(), "--target=i386-pc", t])?;
                done.push(format!("{grub_install} for BIOS on {t}"));
            }
        }
    }
    let cfg = if grub2 {
        "/boot/grub2/grub.cfg"
    } else {
        "/boot/grub/grub.cfg"
    };
    match mkconfig {
        Some(tool) => {
            chroot(m.path(), &[tool.as_str(), "-o", cfg])?;
            done.push(format!("{tool} -o {cfg}"));
        }
        None if Root::open(m.path()).is_ok_and(|r| r.is_file(cfg.trim_start_matches('/'))) => {
            tracing::warn!(%cfg, "the image has no grub-mkconfig; its own menu is kept");
            done.push(format!("kept the image's {cfg}"));
        }
        None => return Err(GrubError::NoMenu(cfg)),
    }
    drop(m);
    Ok(done.join("; "))
}
