//! Booting a whole-disk image written onto a software RAID (`install_bootloader` with
//! `software_raid`). The firmware cannot look inside an md array, so, as IPA does, every
//! member disk gets an EFI system partition in the room left before the arrays (1–551 MiB),
//! the partitions are mirrored by an md RAID-1 named `esp` with metadata 1.0 (its superblock at
//! the end: each member reads as a plain FAT file system to the firmware), and the image's own
//! ESP is copied onto it file by file, keeping its volume id and label. Then each member gets
//! a firmware boot entry, or, where this ramdisk cannot write EFI variables, the image's
//! removable-media loader must be there. Any member alone boots the node.

use std::path::Path;

use crate::disk::device::{open_read, Device};
use crate::disk::md;
use crate::disk::partitions::{self, Role};
use crate::disk::slice::Slice;
use crate::disk::{esp, table};

const MIB: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum RaidBootError {
    #[error("software RAID boot: {0}")]
    Failed(String),
    #[error("{0} has no EFI system partition")]
    NoEsp(String),
    #[error("the image's ESP on {0} holds no boot loader")]
    NoLoader(String),
    #[error(transparent)]
    NoFallback(#[from] super::nvram::NoFallback),
    #[error("the image on the array has no grub-install to boot it in BIOS mode")]
    NoGrubForBios,
    #[error(transparent)]
    Esp(#[from] esp::EspError),
    #[error(transparent)]
    Grub(#[from] super::grub::GrubError),
    #[error(transparent)]
    Nvram(#[from] super::nvram::NvramError),
}
/// IPA's ESP: 550 MiB from 1 MiB, the room `deploy::raid` leaves before the arrays.
const ESP_START: u64 = MIB;
const ESP_LEN: u64 = 550 * MIB;

fn fail(m: impl std::fmt::Display) -> RaidBootError {
    RaidBootError::Failed(m.to_string())
}

/// The member disks under the md array `root` (`/dev/md0`, or `/dev/md/root`).
fn member_disks(root: &Path) -> Result<Vec<String>, RaidBootError> {
    let canon = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    let arrays = md::arrays(Path::new("/sys/block"));
    let array = arrays
        .iter()
        .find(|a| Path::new(&a.device) == canon)
        .ok_or_else(|| fail(format!("{} is not an md array", root.display())))?;
    let mut disks: Vec<String> = array.members.iter().map(|m| md::holder_disk(m)).collect();
    disks.sort();
    disks.dedup();
    if disks.iter().any(|d| array.members.contains(d)) {
        return Err(fail(format!(
            "{} is built on whole disks: there is no room for an ESP on its members",
            root.display()
        )));
    }
    Ok(disks)
}

/// The first md device number no array uses.
fn free_md() -> Result<String, RaidBootError> {
    (0..128)
        .map(|n| format!("md{n}"))
        .find(|n| !Path::new("/sys/block").join(n).exists())
        .map(|n| format!("/dev/{n}"))
        .ok_or_else(|| fail("no free md device"))
}

/// The ESP partition of `disk` in the room before the arrays: an existing one there is
/// reused (a repeated install), else one is added.
fn member_esp(disk: &str) -> Result<table::Partition, RaidBootError> {
    let path = Path::new(disk);
    if let Some(p) = table::read_disk(path)
        .map_err(fail)?
        .into_iter()
        .find(|p| p.is_esp() && p.start == ESP_START)
    {
        return Ok(p);
    }
    let dev = Device::open_to_add_partition(path).map_err(fail)?;
    partitions::add_partition(&dev, Role::Esp, ESP_START, ESP_LEN).map_err(fail)
}

/// Wait (briefly, without a fixed sleep) for the partition nodes the kernel adds.
fn wait_for(nodes: &[String]) -> Result<(), RaidBootError> {
    let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let missing: Vec<&String> = nodes
            .iter()
            .filter(|n| !crate::disk::device::is_block(Path::new(n)))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        if std::time::Instant::now() >= end {
            return Err(fail(format!("partition nodes did not appear: {missing:?}")));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Make the whole-disk image on md array `md` bootable in BIOS mode from every member: the
/// image's own grub-install, run in a chroot of its root file system (the partition of the
/// array whose file-system UUID or PARTUUID is `root_uuid`, else the one that carries
/// grub-install), writes GRUB to each member disk's boot sector and BIOS boot partition.
pub fn install_bios(md: &Path, root_uuid: Option<&str>) -> Result<String, RaidBootError> {
    let disks = member_disks(md)?;
    let root = match root_uuid.filter(|u| !u.starts_with("0x")) {
        Some(u) => super::grub::partition_with_uuid(md, u)?,
        None => image_root_with_grub(md)?,
    };
    Ok(super::grub::install_bios_on_members(md, &root, &disks)?)
}

/// The partition of the image on `md` whose file system carries grub-install (looked at
/// read-only, one by one).
fn image_root_with_grub(md: &Path) -> Result<table::Partition, RaidBootError> {
    use crate::disk::mount::{Access, Mounted};
    for p in table::read_disk(md).map_err(fail)? {
        if p.is_esp() || p.type_id == table::TYPE_BIOS || p.len < 16 * MIB {
            continue;
        }
        let found = Mounted::partition(md, &p, Access::Inspect)
            .map(|m| super::grub::has_grub_install(m.path()))
            .unwrap_or(false);
        if found {
            return Ok(p);
        }
    }
    Err(RaidBootError::NoGrubForBios)
}

/// Make the whole-disk image on md array `root` bootable in UEFI mode from every member.
pub fn install_uefi(root: &Path, nvram: bool) -> Result<String, RaidBootError> {
    let disks = member_disks(root)?;
    let image_esp = table::find_esp(root)
        .map_err(fail)?
        .ok_or_else(|| RaidBootError::NoEsp(root.display().to_string()))?;
    let mut parts = Vec::new();
    for d in &disks {
        let p = member_esp(d)?;
        parts.push((d.clone(), p.number));
    }
    let nodes: Vec<String> = parts
        .iter()
        .map(|(d, n)| crate::disk::nodes::partition_name(Path::new(d), *n))
        .collect();
    wait_for(&nodes)?;
    let mirror = free_md()?;
    md::create(&mirror, "1", "esp", "1.0", &nodes).map_err(fail)?;
    tracing::info!(device = %mirror, members = ?nodes, "ESP mirror created");
    // The image's ESP onto the mirror, file by file.
    let dev = Device::open(Path::new(&mirror)).map_err(fail)?;
    let src = Slice::new(
        open_read(root).map_err(fail)?,
        image_esp.start,
        image_esp.len,
    );
    let dst = Slice::new(dev.file().map_err(fail)?, 0, dev.size());
    let sector = u16::try_from(dev.logical_sector()).unwrap_or(512);
    let copied = esp::mirror(src, dst, sector)
        .map_err(|e| fail(format!("copying the image's ESP onto {mirror}: {e}")))?;
    dev.sync().map_err(fail)?;
    tracing::info!(
        files = copied.files,
        bytes = copied.bytes,
        "image ESP copied to the mirror"
    );
    // Each member: a boot entry, or the firmware's fallback loader. Read back through the
    // mirror (what every member holds): the member disks' own page cache may still hold what
    // was there before the mirror was written.
    let loaders = esp::loaders_in(
        Slice::new(dev.file().map_err(fail)?, 0, dev.size()),
        &mirror,
    )?;
    drop(dev);
    if loaders.is_empty() {
        return Err(RaidBootError::NoLoader(mirror));
    }
    if super::nvram::writable(nvram) {
        for (d, n) in &parts {
            super::nvram::register(Path::new(d), *n, &loaders.entries, true)?;
        }
        return Ok(format!(
            "ESP mirrored on {} ({} files); registered {} on each member",
            disks.join(", "),
            copied.files,
            loaders.paths()
        ));
    }
    let fallback = super::nvram::require_fallback(&loaders.files)?;
    Ok(format!(
        "ESP mirrored on {} ({} files); no EFI variables here, the firmware boots {fallback} from any member",
        disks.join(", "),
        copied.files
    ))
}
