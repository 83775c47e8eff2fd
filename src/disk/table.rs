//! The one reader of a disk's partition table: GPT first, else the MBR's primary entries.
//! A table left by a previous tenant, or shipped in an image, is input: inconsistent entries
//! are skipped, never trusted.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use super::device::{Device, DeviceError};

pub const TYPE_ESP: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
pub const TYPE_BIOS: &str = "21686148-6449-6E6F-744E-656564454649";
pub const TYPE_LINUX: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";
pub const TYPE_SWAP: &str = "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F";
pub const TYPE_RAID: &str = "A19D880F-05FC-4D3B-A006-743F0F84911E";

/// The kind of partition table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Label {
    Gpt,
    Msdos,
}

/// A partition: where it is, what it is, and how it is named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// 1-based partition number.
    pub number: u32,
    /// Byte offset on the disk.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
    /// GPT type GUID (upper case) or the MBR type byte as two hex digits.
    pub type_id: String,
    /// PARTUUID: the GPT entry's GUID, or `<mbr signature>-<nn>`.
    pub part_uuid: String,
    /// The GPT partition name (empty on an msdos table).
    pub name: String,
    /// The table it belongs to.
    pub table: Label,
}

impl Partition {
    pub fn is_esp(&self) -> bool {
        self.table == Label::Gpt && self.type_id == TYPE_ESP
    }
}

/// A GPT entry's byte range, `None` when the entry is inconsistent (its end before its start,
/// or its range overflowing).
pub fn gpt_extent(p: &gptman::GPTPartitionEntry, sector: u64) -> Option<(u64, u64)> {
    let start = p.starting_lba.checked_mul(sector)?;
    let len = p
        .ending_lba
        .checked_sub(p.starting_lba)?
        .checked_add(1)?
        .checked_mul(sector)?;
    start.checked_add(len)?;
    Some((start, len))
}

/// The partitions of the table on `f` (GPT first, else the MBR's primary entries; logical
/// partitions live inside the extended one's range anyway). Empty when there is no table.
pub fn read(f: &mut File) -> Vec<Partition> {
    if let Ok(gpt) = gptman::GPT::find_from(f) {
        return gpt
            .iter()
            .filter(|(_, p)| p.is_used())
            .filter_map(|(n, p)| {
                let (start, len) = gpt_extent(p, gpt.sector_size)?;
                Some(Partition {
                    number: n,
                    start,
                    len,
                    type_id: uuid::Uuid::from_bytes_le(p.partition_type_guid)
                        .to_string()
                        .to_uppercase(),
                    part_uuid: uuid::Uuid::from_bytes_le(p.unique_partition_guid).to_string(),
                    name: p.partition_name.as_str().to_string(),
                    table: Label::Gpt,
                })
            })
            .collect();
    }
    let mut mbr = [0u8; 512];
    if f.seek(SeekFrom::Start(0)).is_err()
        || f.read_exact(&mut mbr).is_err()
        || mbr[510..512] != [0x55, 0xaa]
    {
        return Vec::new();
    }
    let sig = u32::from_le_bytes([mbr[440], mbr[441], mbr[442], mbr[443]]);
    // MBR addresses count the disk's logical sectors: 4096 bytes on a 4Kn disk. An image file
    // has no sector size of its own; 512 is what MBR images use.
    let sector = match f.metadata() {
        Ok(m) if std::os::unix::fs::FileTypeExt::is_block_device(&m.file_type()) => {
            crate::system::blockdev::logical_sector_size(f).map_or(512, u64::from)
        }
        _ => 512,
    };
    (0..4)
        .filter_map(|i| {
            let e = &mbr[446 + i * 16..446 + (i + 1) * 16];
            let start = u64::from(u32::from_le_bytes([e[8], e[9], e[10], e[11]])) * sector;
            let len = u64::from(u32::from_le_bytes([e[12], e[13], e[14], e[15]])) * sector;
            (e[4] != 0 && len > 0).then(|| Partition {
                number: i as u32 + 1,
                start,
                len,
                type_id: format!("{:02X}", e[4]),
                part_uuid: format!("{sig:08x}-{:02x}", i + 1),
                name: String::new(),
                table: Label::Msdos,
            })
        })
        .collect()
}

/// The partitions of the table on the disk (or image file) at `disk`.
pub fn read_disk(disk: &Path) -> Result<Vec<Partition>, DeviceError> {
    let mut f = super::device::open_read(disk)?;
    Ok(read(&mut f))
}

/// The first EFI system partition on `disk` (GPT only), if any.
pub fn find_esp(disk: &Path) -> Result<Option<Partition>, DeviceError> {
    Ok(read_disk(disk)?.into_iter().find(Partition::is_esp))
}

/// After a table was written or wiped through `dev`: bring the kernel's partitions in line
/// with whatever table is now on it (none after a wipe).
pub fn refresh(dev: &Device) {
    if !dev.is_block() {
        return;
    }
    let listed: Vec<(u32, u64, u64)> = dev
        .file()
        .map(|mut f| read(&mut f))
        .unwrap_or_default()
        .iter()
        .map(|p| (p.number, p.start, p.len))
        .collect();
    dev.refresh_partitions(&listed);
}
