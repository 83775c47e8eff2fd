//! The partition layout for partition images, as IPA builds it: back to back from 1 MiB, in
//! the order ESP (UEFI, 550 MiB) or BIOS boot (BIOS on GPT, 1 MiB), ephemeral, swap, config
//! drive, and root last (so growroot can extend it). GPT through gptman, msdos through mbrman.
//! The small file systems (vfat ESP, swap signature) are made here, in user space, on byte
//! ranges of the disk: no partition device nodes are needed.

use super::device::{Device, DeviceError};
use super::slice::Slice;
pub use super::table::{Label, Partition};
use super::table::{TYPE_BIOS, TYPE_ESP, TYPE_LINUX, TYPE_RAID, TYPE_SWAP};

const MIB: u64 = 1 << 20;
const ESP_MB: u64 = 550;

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error("the partition layout needs {need} MiB but {disk} has only {have} MiB")]
    TooSmall { disk: String, need: u64, have: u64 },
    #[error("invalid partition layout request: {0}")]
    Invalid(String),
    #[error("writing the partition table of {0}: {1}")]
    Table(String, String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Esp,
    BiosBoot,
    Ephemeral,
    Swap,
    ConfigDrive,
    Root,
    /// A member of a software RAID array.
    RaidMember,
}

impl Role {
    /// The key IPA uses in `partitions` of get_partition_uuids.
    pub fn key(self) -> &'static str {
        match self {
            Role::Esp => "efi system partition",
            Role::BiosBoot => "BIOS Boot partition",
            Role::Ephemeral => "ephemeral",
            Role::Swap => "swap",
            Role::ConfigDrive => "configdrive",
            Role::Root => "root",
            Role::RaidMember => "raid member",
        }
    }
}

/// A partition of the layout: what it is for, and the partition itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    pub role: Role,
    pub part: Partition,
}

#[derive(Debug, Clone)]
pub struct Request {
    pub uefi: bool,
    pub label: Label,
    pub ephemeral_mb: u64,
    pub swap_mb: u64,
    pub configdrive_bytes: Option<u64>,
    pub root_mb: u64,
}

/// Where each partition goes on a disk of `disk_size` bytes.
pub fn plan(r: &Request, disk: &str, disk_size: u64) -> Result<Vec<(Role, u64, u64)>, LayoutError> {
    if r.uefi && r.label != Label::Gpt {
        return Err(LayoutError::Invalid("UEFI needs a GPT label".into()));
    }
    if r.root_mb == 0 {
        return Err(LayoutError::Invalid("root_mb must be above 0".into()));
    }
    let mut sizes: Vec<(Role, u64)> = Vec::new();
    if r.uefi {
        sizes.push((Role::Esp, ESP_MB));
    } else if r.label == Label::Gpt {
        sizes.push((Role::BiosBoot, 1));
    }
    if r.ephemeral_mb > 0 {
        sizes.push((Role::Ephemeral, r.ephemeral_mb));
    }
    if r.swap_mb > 0 {
        sizes.push((Role::Swap, r.swap_mb));
    }
    if let Some(b) = r.configdrive_bytes {
        sizes.push((Role::ConfigDrive, b.div_ceil(MIB).max(1)));
    }
    sizes.push((Role::Root, r.root_mb));
    if r.label == Label::Msdos && sizes.len() > 4 {
        return Err(LayoutError::Invalid(
            "more than 4 partitions on an msdos label".into(),
        ));
    }
    // Sizes come from the conductor: add them up without overflowing.
    let need = sizes
        .iter()
        .try_fold(1u64, |acc, (_, s)| acc.checked_add(*s))
        .filter(|n| n.checked_mul(MIB).is_some())
        .ok_or_else(|| LayoutError::Invalid(format!("partition sizes too large: {sizes:?} MiB")))?;
    // The GPT backup needs the disk's last 33 sectors: keep the last MiB free.
    let have = (disk_size / MIB).saturating_sub(u64::from(r.label == Label::Gpt));
    if need > have {
        return Err(LayoutError::TooSmall {
            disk: disk.into(),
            need,
            have,
        });
    }
    let mut at = MIB;
    Ok(sizes
        .into_iter()
        .map(|(role, mb)| {
            let p = (role, at, mb * MIB);
            at += mb * MIB;
            p
        })
        .collect())
}

fn guid_bytes(s: &str) -> [u8; 16] {
    // GPT stores the first three fields little-endian.
    let u = uuid::Uuid::parse_str(s).unwrap_or_default();
    u.to_bytes_le()
}

/// Write a fresh partition table for `layout` onto `dev`; returns the partitions.
pub fn write_table(
    dev: &Device,
    label: Label,
    layout: &[(Role, u64, u64)],
) -> Result<Vec<Placed>, LayoutError> {
    let name = dev.name();
    let sector = u64::from(dev.logical_sector());
    let table = |e: String| LayoutError::Table(name.clone(), e);
    let mut f = dev.file()?;
    let mut parts = Vec::new();
    match label {
        Label::Gpt => {
            let disk_guid: [u8; 16] = uuid::Uuid::new_v4().to_bytes_le();
            let mut gpt = gptman::GPT::new_from(&mut f, sector, disk_guid)
                .map_err(|e| table(e.to_string()))?;
            for (i, (role, start, len)) in layout.iter().enumerate() {
                let n = i as u32 + 1;
                let uuid = uuid::Uuid::new_v4();
                let ty = match role {
                    Role::Esp => TYPE_ESP,
                    Role::BiosBoot => TYPE_BIOS,
                    Role::Swap => TYPE_SWAP,
                    Role::RaidMember => TYPE_RAID,
                    _ => TYPE_LINUX,
                };
                let pname = match role {
                    Role::Esp => "efi-part",
                    Role::BiosBoot => "bios-boot",
                    Role::Ephemeral => "ephemeral0",
                    Role::Swap => "swap1",
                    Role::ConfigDrive => "config-2",
                    Role::Root => "root",
                    Role::RaidMember => "raid",
                };
                gpt[n] = gptman::GPTPartitionEntry {
                    partition_type_guid: guid_bytes(ty),
                    unique_partition_guid: uuid.to_bytes_le(),
                    starting_lba: start / sector,
                    ending_lba: (start + len) / sector - 1,
                    attribute_bits: 0,
                    partition_name: pname.into(),
                };
                parts.push(Placed {
                    role: *role,
                    part: Partition {
                        number: n,
                        start: *start,
                        len: *len,
                        type_id: ty.to_string(),
                        part_uuid: uuid.to_string(),
                        name: pname.to_string(),
                        table: Label::Gpt,
                    },
                });
            }
            gpt.write_into(&mut f).map_err(|e| table(e.to_string()))?;
            gptman::GPT::write_protective_mbr_into(&mut f, sector)
                .map_err(|e| table(e.to_string()))?;
        }
        Label::Msdos => {
            let sig: [u8; 4] = rand::random();
            let mut mbr = mbrman::MBR::new_from(&mut f, sector as u32, sig)
                .map_err(|e| table(e.to_string()))?;
            for (i, (role, start, len)) in layout.iter().enumerate() {
                let n = i + 1;
                let lba = |b: u64| {
                    u32::try_from(b / sector)
                        .map_err(|_| table("an msdos label cannot address past 2 TiB".into()))
                };
                mbr[n] = mbrman::MBRPartitionEntry {
                    boot: if *role == Role::Root {
                        mbrman::BOOT_ACTIVE
                    } else {
                        mbrman::BOOT_INACTIVE
                    },
                    first_chs: mbrman::CHS::empty(),
                    sys: match role {
                        Role::Swap => 0x82,
                        Role::RaidMember => 0xfd,
                        _ => 0x83,
                    },
                    last_chs: mbrman::CHS::empty(),
                    starting_lba: lba(*start)?,
                    sectors: lba(*len)?,
                };
                parts.push(Placed {
                    role: *role,
                    part: Partition {
                        number: n as u32,
                        start: *start,
                        len: *len,
                        type_id: format!("{:02X}", mbr[n].sys),
                        part_uuid: format!("{:08x}-{n:02x}", u32::from_le_bytes(sig)),
                        name: String::new(),
                        table: Label::Msdos,
                    },
                });
            }
            mbr.write_into(&mut f).map_err(|e| table(e.to_string()))?;
        }
    }
    dev.sync()?;
    let listed: Vec<(u32, u64, u64)> = parts
        .iter()
        .map(|p| (p.part.number, p.part.start, p.part.len))
        .collect();
    dev.refresh_partitions(&listed);
    Ok(parts)
}

/// Add one partition for `role` at `[start, start+len)` to the GPT already on `dev`, in
/// space no partition uses; the kernel learns of it partition by partition (the disk may be
/// busy: its other partitions held by md arrays). Returns the new partition.
pub fn add_partition(
    dev: &Device,
    role: Role,
    start: u64,
    len: u64,
) -> Result<Partition, LayoutError> {
    let name = dev.name();
    let table = |e: String| LayoutError::Table(name.clone(), e);
    let sector = u64::from(dev.logical_sector());
    let mut f = dev.file()?;
    let mut gpt = gptman::GPT::find_from(&mut f).map_err(|e| table(format!("no GPT: {e}")))?;
    let end = start
        .checked_add(len)
        .filter(|e| start % sector == 0 && e % sector == 0 && len > 0)
        .ok_or_else(|| LayoutError::Invalid(format!("bad range {start}+{len}")))?;
    let (first, last) = (gpt.header.first_usable_lba, gpt.header.last_usable_lba);
    if start / sector < first || (end / sector).saturating_sub(1) > last {
        return Err(LayoutError::Invalid(format!(
            "bytes {start}..{end} are outside the usable space of {name}"
        )));
    }
    let overlaps = gpt.iter().filter(|(_, p)| p.is_used()).any(|(_, p)| {
        super::table::gpt_extent(p, sector)
            .is_none_or(|(s, l)| s < end && start < s.saturating_add(l))
    });
    if overlaps {
        return Err(LayoutError::Invalid(format!(
            "bytes {start}..{end} of {name} are not free"
        )));
    }
    let n = gpt
        .iter()
        .find(|(_, p)| p.is_unused())
        .map(|(n, _)| n)
        .ok_or_else(|| table("no free partition entry".into()))?;
    let (ty, pname) = match role {
        Role::Esp => (TYPE_ESP, "efi-part"),
        Role::BiosBoot => (TYPE_BIOS, "bios-boot"),
        Role::RaidMember => (TYPE_RAID, "raid"),
        _ => (TYPE_LINUX, "data"),
    };
    let uuid = uuid::Uuid::new_v4();
    gpt[n] = gptman::GPTPartitionEntry {
        partition_type_guid: guid_bytes(ty),
        unique_partition_guid: uuid.to_bytes_le(),
        starting_lba: start / sector,
        ending_lba: end / sector - 1,
        attribute_bits: 0,
        partition_name: pname.into(),
    };
    gpt.write_into(&mut f).map_err(|e| table(e.to_string()))?;
    dev.sync()?;
    super::table::refresh(dev);
    Ok(Partition {
        number: n,
        start,
        len,
        type_id: ty.to_string(),
        part_uuid: uuid.to_string(),
        name: pname.to_string(),
        table: Label::Gpt,
    })
}

/// Format an ESP (vfat, label `efi-part`); returns its UUID as blkid shows it (`XXXX-XXXX`).
pub fn make_esp(dev: &Device, p: &Partition) -> Result<String, LayoutError> {
    let name = dev.name();
    let sector = dev.logical_sector();
    // Zero the start so no old signature confuses the FAT detection.
    dev.zero(p.start, MIB.min(p.len))?;
    let id: u32 = rand::random();
    let mut s = Slice::new(dev.file()?, p.start, p.len);
    fatfs::format_volume(
        &mut s,
        fatfs::FormatVolumeOptions::new()
            .volume_label(*b"efi-part   ")
            .volume_id(id)
            .fat_type(fatfs::FatType::Fat32)
            .bytes_per_sector(sector as u16),
    )
    .map_err(|e| LayoutError::Table(name, format!("formatting the ESP: {e}")))?;
    Ok(format!("{:04X}-{:04X}", id >> 16, id & 0xffff))
}

/// Write a Linux swap signature (version 1, label `swap1`); returns its UUID.
pub fn make_swap(dev: &Device, p: &Partition) -> Result<String, LayoutError> {
    const PAGE: u64 = 4096;
    let uuid = uuid::Uuid::new_v4();
    let mut h = vec![0u8; PAGE as usize];
    h[1024..1028].copy_from_slice(&1u32.to_le_bytes());
    let last_page = u32::try_from(p.len / PAGE - 1).unwrap_or(u32::MAX);
    h[1028..1032].copy_from_slice(&last_page.to_le_bytes());
    h[1036..1052].copy_from_slice(uuid.as_bytes());
    h[1052..1057].copy_from_slice(b"swap1");
    h[4086..4096].copy_from_slice(b"SWAPSPACE2");
    dev.write_buffered_at(&h, p.start)?;
    dev.sync()?;
    Ok(uuid.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_is_added_in_free_space_only() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("member.img");
        std::fs::File::create(&p).unwrap().set_len(1 << 30).unwrap();
        let dev = Device::open(&p).unwrap();
        let placed = write_table(
            &dev,
            Label::Gpt,
            &[(Role::RaidMember, 551 * MIB, 300 * MIB)],
        )
        .unwrap();
        assert_eq!(placed[0].part.type_id, super::super::table::TYPE_RAID);
        let esp = add_partition(&dev, Role::Esp, MIB, 550 * MIB).unwrap();
        assert_eq!((esp.number, esp.start, esp.len), (2, MIB, 550 * MIB));
        let listed = super::super::table::read(&mut dev.file().unwrap());
        assert_eq!(listed.len(), 2);
        assert!(listed
            .iter()
            .any(|l| l.is_esp() && l.start == MIB && l.part_uuid == esp.part_uuid));
        // Overlapping a partition, outside the disk, or unaligned: refused, table unchanged.
        for (start, len) in [
            (500 * MIB, 100 * MIB),
            (1020 * MIB, 8 * MIB),
            (MIB + 1, MIB),
            (0, MIB),
        ] {
            assert!(
                add_partition(&dev, Role::Esp, start, len).is_err(),
                "{start}+{len}"
            );
        }
        assert_eq!(super::super::table::read(&mut dev.file().unwrap()).len(), 2);
    }

    #[test]
    fn layout_order_sizes_and_limits() {
        let r = Request {
            uefi: true,
            label: Label::Gpt,
            ephemeral_mb: 10,
            swap_mb: 8,
            configdrive_bytes: Some(MIB + 1),
            root_mb: 100,
        };
        let l = plan(&r, "d", 1024 * MIB).unwrap();
        let roles: Vec<Role> = l.iter().map(|p| p.0).collect();
        assert_eq!(
            roles,
            [
                Role::Esp,
                Role::Ephemeral,
                Role::Swap,
                Role::ConfigDrive,
                Role::Root
            ]
        );
        assert_eq!(l[0], (Role::Esp, MIB, 550 * MIB));
        assert_eq!(l[3].2, 2 * MIB, "config drive rounded up");
        assert_eq!(l[4].1, (1 + 550 + 10 + 8 + 2) * MIB);
        assert!(matches!(
            plan(&r, "d", 600 * MIB),
            Err(LayoutError::TooSmall { .. })
        ));
        let bios = Request {
            uefi: false,
            ..r.clone()
        };
        assert_eq!(plan(&bios, "d", 1024 * MIB).unwrap()[0].0, Role::BiosBoot);
        // Absurd sizes from the conductor are an error, not an overflow.
        for (root, swap) in [
            (u64::MAX, 1),
            (u64::MAX / 2, u64::MAX / 2),
            (u64::MAX / MIB, 0),
        ] {
            let huge = Request {
                root_mb: root,
                swap_mb: swap,
                ..bios.clone()
            };
            assert!(plan(&huge, "d", 1024 * MIB).is_err());
        }
        assert!(plan(&bios, "d", 0).is_err());
        let msdos = Request {
            uefi: false,
            label: Label::Msdos,
            ..r
        };
        assert_eq!(plan(&msdos, "d", 1024 * MIB).unwrap().len(), 4);
    }
}
