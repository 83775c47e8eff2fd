//! Config drives for whole-disk images, as IPA makes them:
//! * the value is a URL (fetched), or base64 of a gzip-compressed ISO9660 image labelled
//!   `config-2` (a raw ISO is accepted too); more than 64 MiB uncompressed is an error;
//! * an existing partition holding a `config-2` file system is reused; otherwise a new GPT
//!   partition takes the last 64 MiB of the disk (the image's backup GPT is first moved to the
//!   real end of the disk, which is usually larger than the image);
//! * the ISO is written as is, except on 4Kn disks, where ISO9660 cannot be read: there the
//!   partition becomes a vfat file system labelled `CONFIG-2` holding the ISO's files.
//! * on an msdos label, the same with a primary partition (below 2 TiB, at most four).

use std::fs::File;
use std::io::{Cursor, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;

use base64::Engine;

use super::device::{Device, DeviceError};
use crate::fsread::iso9660::Iso;

pub const MAX: u64 = 64 << 20;
/// Entries and directory depth an ISO config drive may have when it is made into a vfat one
/// (a config drive holds tens of files, two or three levels deep).
const MAX_ISO_ENTRIES: usize = 10_000;
const MAX_ISO_DEPTH: usize = 8;
const LINUX_DATA: [u8; 16] = [
    0xaf, 0x3d, 0xc6, 0x0f, 0x83, 0x84, 0x72, 0x47, 0x8e, 0x79, 0x3d, 0x69, 0xd8, 0x47, 0x7d, 0xe4,
];

#[derive(Debug, thiserror::Error)]
pub enum ConfigDriveError {
    #[error("config drive: {0}")]
    Invalid(String),
    #[error("config drive is {0} bytes, more than the 64 MiB allowed")]
    TooLarge(u64),
    #[error("config drive on {dev}: {what}: {source}")]
    Io {
        dev: String,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("config drive on {0}: {1}")]
    Disk(String, String),
    #[error("config drive: {0}")]
    Device(#[from] DeviceError),
}

/// Decode an inline config drive: base64, then gunzip when gzip-compressed.
pub fn decode(value: &[u8]) -> Result<Vec<u8>, ConfigDriveError> {
    let text: Vec<u8> = value
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    let raw = base64::engine::general_purpose::STANDARD
        .decode(&text)
        .map_err(|e| ConfigDriveError::Invalid(format!("not base64: {e}")))?;
    let data = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .take(MAX + 1)
            .read_to_end(&mut out)
            .map_err(|e| ConfigDriveError::Invalid(format!("not valid gzip: {e}")))?;
        out
    } else {
        raw
    };
    if data.len() as u64 > MAX {
        return Err(ConfigDriveError::TooLarge(data.len() as u64));
    }
    Ok(data)
}

/// Whether `buf` holds an ISO 9660 image's start (the primary volume descriptor at 32 KiB);
/// returns the size the image declares.
fn iso_declared_size(buf: &[u8]) -> Option<u64> {
    let pvd = buf.get(32768..32768 + 2048)?;
    if &pvd[1..6] != b"CD001" {
        return None;
    }
    let blocks = u32::from_le_bytes(pvd[80..84].try_into().ok()?);
    let block = u16::from_le_bytes(pvd[128..130].try_into().ok()?);
    Some(u64::from(blocks) * u64::from(block))
}

/// Up to `n` bytes of what the gzip stream `data` inflates to (a truncated stream gives
/// what it has).
fn inflate_prefix(data: &[u8], n: u64) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = flate2::read::GzDecoder::new(data)
        .take(n)
        .read_to_end(&mut out);
    out
}

/// Judge the first bytes of a config drive download (`image::fetch::fetch_sniffed`): an ISO
/// 9660 image, plain, gzip-compressed, or base64 of either. Anything else is refused at once,
/// so an endless or wrong body costs 128 KiB, not 64 MiB. Returns the most bytes the
/// download may have: a plain ISO's declared size (refused over 64 MiB), else the encoded
/// limit (the decoded one is checked when decoding).
pub fn sniff_download(prefix: &[u8]) -> Result<usize, ConfigDriveError> {
    const LOOK: u64 = 32768 + 2048;
    let encoded_max = (MAX * 2) as usize;
    let iso = |b: &[u8]| iso_declared_size(b).is_some();
    if let Some(size) = iso_declared_size(prefix) {
        if size > MAX {
            return Err(ConfigDriveError::Invalid(format!(
                "the ISO image declares {size} bytes, more than 64 MiB"
            )));
        }
        // Some ISO writers pad to a whole MiB.
        return Ok((size + (1 << 20)) as usize);
    }
    if prefix.starts_with(&[0x1f, 0x8b]) {
        return if iso(&inflate_prefix(prefix, LOOK)) {
            Ok(encoded_max)
        } else {
            Err(ConfigDriveError::Invalid(
                "gzip data that is not an ISO 9660 image".into(),
            ))
        };
    }
    let text: Vec<u8> = prefix
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    let whole = text.len() / 4 * 4;
    if let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(&text[..whole]) {
        let ok = if raw.starts_with(&[0x1f, 0x8b]) {
            iso(&inflate_prefix(&raw, LOOK))
        } else {
            iso(&raw)
        };
        if ok {
            return Ok(encoded_max);
        }
    }
    Err(ConfigDriveError::Invalid(
        "not a config drive: no ISO 9660 image (plain, gzip or base64)".into(),
    ))
}

/// Bytes downloaded from a config-drive URL: base64(+gzip) like inline, else a raw image.
pub fn decode_downloaded(body: &[u8]) -> Result<Vec<u8>, ConfigDriveError> {
    match decode(body) {
        Ok(d) => Ok(d),
        Err(ConfigDriveError::TooLarge(n)) => Err(ConfigDriveError::TooLarge(n)),
        Err(_) if body.len() as u64 <= MAX => Ok(body.to_vec()),
        Err(_) => Err(ConfigDriveError::TooLarge(body.len() as u64)),
    }
}

/// The ISO9660 volume label at `offset` of `f`, if there is one.
fn iso_label_at(f: &File, offset: u64) -> Option<String> {
    let mut pvd = [0u8; 2048];
    f.read_exact_at(&mut pvd, offset + 0x8000).ok()?;
    (&pvd[1..6] == b"CD001").then(|| String::from_utf8_lossy(&pvd[40..72]).trim_end().to_string())
}

/// A FAT label at `offset`, if any.
fn fat_label_at(f: &File, offset: u64) -> Option<String> {
    let mut b = [0u8; 512];
    f.read_exact_at(&mut b, offset).ok()?;
    if b[510..512] != [0x55, 0xaa] {
        return None;
    }
    let l = if &b[0x52..0x57] == b"FAT32" {
        &b[0x47..0x52]
    } else if &b[0x36..0x39] == b"FAT" {
        &b[0x2b..0x36]
    } else {
        return None;
    };
    Some(String::from_utf8_lossy(l).trim_end().to_string())
}

/// Where the config drive went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub partition: u32,
    pub start: u64,
    pub len: u64,
    pub reused: bool,
    pub vfat: bool,
}

/// Write `iso` as the config drive of the whole-disk image on `dev`.
pub fn write(dev: &Device, iso: &[u8]) -> Result<Placement, ConfigDriveError> {
    let name = dev.name();
    let io = |what: &'static str| {
        let dev = name.clone();
        move |source| ConfigDriveError::Io { dev, what, source }
    };
    if iso.len() as u64 > MAX {
        return Err(ConfigDriveError::TooLarge(iso.len() as u64));
    }
    let mut f = dev.file()?;
    let sector = u64::from(dev.logical_sector());
    let (number, start, len, reused) = match gptman::GPT::find_from(&mut f) {
        Ok(gpt) => place_gpt(&mut f, gpt, sector, &name)?,
        Err(gpt_err) => match mbrman::MBR::read_from(&mut f, sector as u32) {
            Ok(mbr) => place_mbr(&mut f, mbr, sector, &name)?,
            Err(_) => {
                return Err(ConfigDriveError::Disk(
                    name,
                    format!("the image has no partition table (GPT: {gpt_err}; no MBR either)"),
                ))
            }
        },
    };
    if (iso.len() as u64) > len {
        return Err(ConfigDriveError::Disk(
            name,
            format!(
                "the config drive ({} bytes) does not fit partition {number} ({len} bytes)",
                iso.len()
            ),
        ));
    }
    // ISO9660 cannot be read from a disk whose sectors are larger than its 2048-byte blocks.
    let vfat = sector > 2048;
    let data = if vfat {
        iso_to_vfat(iso, len, sector)?
    } else {
        iso.to_vec()
    };
    dev.write_buffered_at(&data, start)?;
    dev.sync()?;
    f.seek(SeekFrom::Start(0)).map_err(io("seek"))?;
    super::table::refresh(dev);
    tracing::info!(dev = %name, partition = number, reused, vfat, "config drive written");
    Ok(Placement {
        partition: number,
        start,
        len,
        reused,
        vfat,
    })
}

/// Where the config drive goes on a GPT disk: an existing config-2 partition, else a new one in
/// the last 64 MiB. Returns (number, start, len, reused).
fn place_gpt(
    f: &mut File,
    mut gpt: gptman::GPT,
    sector: u64,
    name: &str,
) -> Result<(u32, u64, u64, bool), ConfigDriveError> {
    let name = name.to_string();
    let disk_len = f
        .seek(SeekFrom::End(0))
        .map_err(|e| ConfigDriveError::Disk(name.clone(), format!("size: {e}")))?;
    if gpt.sector_size != sector {
        return Err(ConfigDriveError::Disk(
            name.clone(),
            format!(
                "GPT made for {}-byte sectors on a {sector}-byte disk",
                gpt.sector_size
            ),
        ));
    }
    // Reuse a partition that already holds a config-2 file system.
    let existing: Vec<(u32, u64, u64)> = gpt
        .iter()
        .filter(|(_, p)| p.is_used())
        .filter_map(|(n, p)| {
            let (start, len) = super::table::gpt_extent(p, sector)?;
            Some((n, start, len))
        })
        // The image's table is input: a "config-2" partition past the end of the disk is not
        // one to write into.
        .filter(|(_, start, len)| start.saturating_add(*len) <= disk_len)
        .filter(|(_, start, _)| {
            iso_label_at(f, *start)
                .or_else(|| fat_label_at(f, *start))
                .is_some_and(|l| l.eq_ignore_ascii_case("config-2"))
        })
        .collect();
    if existing.len() > 1 {
        return Err(ConfigDriveError::Disk(
            name,
            "more than one config-2 partition".into(),
        ));
    }
    Ok(match existing.first() {
        Some(&(n, s, l)) => (n, s, l, true),
        None => {
            // The image's backup GPT sits at the image's end: move it to the disk's end first.
            gpt.header
                .update_from(f, sector)
                .map_err(|e| ConfigDriveError::Disk(name.clone(), e.to_string()))?;
            let sectors = MAX / sector;
            let first = gpt.find_last_place(sectors).ok_or_else(|| {
                ConfigDriveError::Disk(
                    name.clone(),
                    "no free 64 MiB at the end of the disk for the config drive".into(),
                )
            })?;
            let slot = gpt
                .iter()
                .find(|(_, p)| p.is_unused())
                .map(|(n, _)| n)
                .ok_or_else(|| {
                    ConfigDriveError::Disk(name.clone(), "no free GPT partition entry".into())
                })?;
            gpt[slot] = gptman::GPTPartitionEntry {
                partition_type_guid: LINUX_DATA,
                unique_partition_guid: rand::random(),
                starting_lba: first,
                ending_lba: first + sectors - 1,
                attribute_bits: 0,
                partition_name: "config-2".into(),
            };
            gpt.write_into(f)
                .map_err(|e| ConfigDriveError::Disk(name.clone(), e.to_string()))?;
            gptman::GPT::write_protective_mbr_into(f, sector)
                .map_err(|e| ConfigDriveError::Disk(name.clone(), e.to_string()))?;
            (slot, first * sector, sectors * sector, false)
        }
    })
}

/// The same on an msdos label: reuse a config-2 partition, else a new primary partition in
/// the last 64 MiB (just below 2 TiB on larger disks, which MBR cannot address); at most
/// three primaries may exist already.
fn place_mbr(
    f: &mut File,
    mut mbr: mbrman::MBR,
    sector: u64,
    name: &str,
) -> Result<(u32, u64, u64, bool), ConfigDriveError> {
    let disk_err = |m: String| ConfigDriveError::Disk(name.to_string(), m);
    let disk = f
        .seek(SeekFrom::End(0))
        .map_err(|e| disk_err(format!("size: {e}")))?;
    let used: Vec<(usize, u64, u64)> = mbr
        .iter()
        .filter(|(_, p)| p.is_used())
        .map(|(n, p)| {
            (
                n,
                u64::from(p.starting_lba) * sector,
                u64::from(p.sectors) * sector,
            )
        })
        .collect();
    let existing: Vec<&(usize, u64, u64)> = used
        .iter()
        .filter(|(_, start, len)| start + len <= disk)
        .filter(|(_, start, _)| {
            iso_label_at(f, *start)
                .or_else(|| fat_label_at(f, *start))
                .is_some_and(|l| l.eq_ignore_ascii_case("config-2"))
        })
        .collect();
    match existing.as_slice() {
        [] => {}
        [&(n, s, l)] => return Ok((n as u32, s, l, true)),
        _ => return Err(disk_err("more than one config-2 partition".into())),
    }
    if used.len() > 3 {
        return Err(disk_err(
            "the msdos label already has 4 primary partitions: no room for a config drive".into(),
        ));
    }
    let limit = (u64::from(u32::MAX) * sector).min(disk);
    const MIB: u64 = 1 << 20;
    let start = limit
        .checked_sub(MAX)
        .ok_or_else(|| disk_err("the disk is smaller than a config drive".into()))?
        / MIB
        * MIB;
    let taken = used.iter().map(|(_, s, l)| s + l).max().unwrap_or(MIB);
    if start < taken {
        return Err(disk_err(
            "no free 64 MiB at the end of the disk for the config drive".into(),
        ));
    }
    let slot = (1..=4usize)
        .find(|n| !mbr[*n].is_used())
        .ok_or_else(|| disk_err("no free primary partition entry".into()))?;
    let lba =
        |b: u64| u32::try_from(b / sector).map_err(|_| disk_err("past the msdos limit".into()));
    mbr[slot] = mbrman::MBRPartitionEntry {
        boot: mbrman::BOOT_INACTIVE,
        first_chs: mbrman::CHS::empty(),
        sys: 0x83,
        last_chs: mbrman::CHS::empty(),
        starting_lba: lba(start)?,
        sectors: lba(MAX)?,
    };
    mbr.write_into(f).map_err(|e| disk_err(e.to_string()))?;
    Ok((slot as u32, start, MAX, false))
}

/// A vfat file system of `len` bytes (label CONFIG-2, `sector`-byte sectors) holding the ISO's
/// files, built in memory (at most 64 MiB).
pub fn iso_to_vfat(iso: &[u8], len: u64, sector: u64) -> Result<Vec<u8>, ConfigDriveError> {
    let bad = |e: String| ConfigDriveError::Invalid(e);
    let size = len.min(MAX) as usize;
    let mut img = Cursor::new(vec![0u8; size]);
    fatfs::format_volume(
        &mut img,
        fatfs::FormatVolumeOptions::new()
            .volume_label(*b"CONFIG-2   ")
            .bytes_per_sector(sector as u16),
    )
    .map_err(|e| bad(format!("formatting vfat: {e}")))?;
    {
        let fs = fatfs::FileSystem::new(&mut img, fatfs::FsOptions::new())
            .map_err(|e| bad(e.to_string()))?;
        let mut src =
            Iso::open(Cursor::new(iso)).map_err(|e| bad(format!("reading the ISO: {e}")))?;
        // The ISO is input: a directory record may point at an ancestor (a loop), names may
        // hold separators. Each directory is listed once (by its extent), the tree is
        // depth-limited and the entries counted.
        let mut listed = std::collections::HashSet::new();
        let mut entries_seen = 0usize;
        let mut stack = vec![(String::new(), 0usize)];
        while let Some((dir, depth)) = stack.pop() {
            let entries = src
                .list(&dir)
                .map_err(|e| bad(e.to_string()))?
                .unwrap_or_default();
            for e in entries {
                entries_seen += 1;
                if entries_seen > MAX_ISO_ENTRIES {
                    return Err(bad(format!(
                        "the config drive ISO has more than {MAX_ISO_ENTRIES} entries"
                    )));
                }
                if e.name.is_empty()
                    || e.name == "."
                    || e.name == ".."
                    || e.name.contains(['/', '\\', '\0'])
                {
                    return Err(bad(format!(
                        "the config drive ISO has a bad name {:?}",
                        e.name
                    )));
                }
                let path = if dir.is_empty() {
                    e.name.clone()
                } else {
                    format!("{dir}/{}", e.name)
                };
                if e.is_dir {
                    if !listed.insert(e.lba) {
                        return Err(bad(format!(
                            "{path}: a directory of the config drive ISO is its own ancestor or listed twice"
                        )));
                    }
                    if depth >= MAX_ISO_DEPTH {
                        return Err(bad(format!(
                            "{path}: directories nested deeper than {MAX_ISO_DEPTH} in the config drive ISO"
                        )));
                    }
                    fs.root_dir()
                        .create_dir(&path)
                        .map_err(|er| bad(format!("{path}: {er}")))?;
                    stack.push((path, depth + 1));
                } else {
                    let data = src
                        .read_file(&e, MAX as u32)
                        .map_err(|er| bad(er.to_string()))?;
                    let mut out = fs
                        .root_dir()
                        .create_file(&path)
                        .map_err(|er| bad(format!("{path}: {er}")))?;
                    out.truncate().map_err(|er| bad(er.to_string()))?;
                    out.write_all(&data).map_err(|er| bad(er.to_string()))?;
                }
            }
        }
    }
    Ok(img.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Run `f` on a thread; `None` if it has not ended within `secs` (a loop).
    fn bounded<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(std::time::Duration::from_secs(secs)).ok()
    }

    /// A config-drive ISO whose `openstack` directory record points back at the root: the
    /// conversion to vfat ends with an error instead of walking a/a/a/… until memory runs out.
    #[test]
    fn an_iso_directory_that_is_its_own_ancestor_ends_the_conversion() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("cd");
        std::fs::create_dir_all(root.join("openstack/latest")).unwrap();
        std::fs::write(root.join("openstack/latest/meta_data.json"), "{}").unwrap();
        let iso_path = d.path().join("cd.iso");
        let made = std::process::Command::new("genisoimage")
            .args(["-quiet", "-r", "-V", "config-2", "-o"])
            .arg(&iso_path)
            .arg(&root)
            .status();
        if !made.is_ok_and(|s| s.success())
            && crate::test_support::skipped("genisoimage not installed")
        {
            return;
        }
        let mut iso = std::fs::read(&iso_path).unwrap();
        assert!(
            iso_to_vfat(&iso, 4 << 20, 512).is_ok(),
            "the sound ISO converts"
        );
        // The root directory's extent, from the primary volume descriptor.
        let le = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
        let root_lba = le(&iso, 16 * 2048 + 156 + 2);
        let root_size = le(&iso, 16 * 2048 + 156 + 10) as usize;
        let at = root_lba as usize * 2048;
        let listing = iso[at..at + root_size].to_vec();
        let mut pos = 0;
        let mut patched = false;
        while pos < listing.len() && listing[pos] != 0 {
            let len = listing[pos] as usize;
            let rec = &listing[pos..pos + len];
            let name = &rec[33..33 + rec[32] as usize];
            // The first directory below the root (not "." or ".."): openstack.
            if !patched && rec[25] & 2 != 0 && name != [0] && name != [1] {
                let r = at + pos;
                iso[r + 2..r + 6].copy_from_slice(&root_lba.to_le_bytes());
                iso[r + 6..r + 10].copy_from_slice(&root_lba.to_be_bytes());
                iso[r + 10..r + 14].copy_from_slice(&(root_size as u32).to_le_bytes());
                iso[r + 14..r + 18].copy_from_slice(&(root_size as u32).to_be_bytes());
                patched = true;
            }
            pos += len;
        }
        assert!(patched, "no directory record in the root directory");
        let r = bounded(20, move || iso_to_vfat(&iso, 4 << 20, 512).map(|_| ()))
            .expect("the conversion looped");
        let e = r.unwrap_err().to_string();
        assert!(e.contains("own ancestor"), "{e}");
    }

    #[test]
    fn downloads_are_judged_by_their_first_bytes() {
        let mut iso = vec![0u8; 40 << 10];
        iso[32769..32774].copy_from_slice(b"CD001");
        iso[32768 + 80..32768 + 84].copy_from_slice(&20u32.to_le_bytes());
        iso[32768 + 128..32768 + 130].copy_from_slice(&2048u16.to_le_bytes());
        assert_eq!(sniff_download(&iso).unwrap(), 20 * 2048 + (1 << 20));
        let gz = {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            std::io::Write::write_all(&mut e, &iso).unwrap();
            e.finish().unwrap()
        };
        assert!(sniff_download(&gz).is_ok());
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(&gz);
        assert!(sniff_download(b64.as_bytes()).is_ok());
        assert!(sniff_download(
            base64::engine::general_purpose::STANDARD
                .encode(&iso)
                .as_bytes()
        )
        .is_ok());
        // Junk of every kind is refused from its first bytes.
        assert!(sniff_download(&vec![b'A'; 128 << 10]).is_err());
        assert!(sniff_download(&vec![0u8; 128 << 10]).is_err());
        assert!(sniff_download(b"").is_err());
        let mut huge = iso.clone();
        huge[32768 + 80..32768 + 84].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(sniff_download(&huge)
            .unwrap_err()
            .to_string()
            .contains("more than 64 MiB"));
    }

    #[test]
    fn decodes_gzip_raw_and_refuses_garbage_and_oversize() {
        let iso = vec![7u8; 5000];
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&iso).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(gz.finish().unwrap());
        assert_eq!(decode(b64.as_bytes()).unwrap(), iso);
        let raw64 = base64::engine::general_purpose::STANDARD.encode(&iso);
        assert_eq!(decode(raw64.as_bytes()).unwrap(), iso);
        assert!(matches!(
            decode(b"%%% not base64"),
            Err(ConfigDriveError::Invalid(_))
        ));
        assert_eq!(
            decode_downloaded(&iso).unwrap(),
            iso,
            "a downloaded raw ISO is accepted"
        );
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&vec![0u8; (MAX + 1) as usize]).unwrap();
        let big = base64::engine::general_purpose::STANDARD.encode(gz.finish().unwrap());
        assert!(matches!(
            decode(big.as_bytes()),
            Err(ConfigDriveError::TooLarge(_))
        ));
    }
}
