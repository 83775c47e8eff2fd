//! The EFI system partition of a disk: found by its GPT type, its files read in user space
//! (fatfs over the partition's byte range), so no mount and no vfat kernel driver are needed.

use std::path::Path;

use super::device::{open_read, DeviceError};
use super::slice::Slice;
use super::table::Partition;

/// Loader file names IPA looks for (case-insensitive).
pub const LOADERS: &[&str] = &[
    "bootx64.csv",
    "bootaa64.csv",
    "boot.csv",
    "bootia32.efi",
    "bootx64.efi",
    "bootia64.efi",
    "bootarm.efi",
    "bootaa64.efi",
    "bootriscv32.efi",
    "bootriscv64.efi",
    "bootriscv128.efi",
    "grubaa64.efi",
    "winload.efi",
];

#[derive(Debug, thiserror::Error)]
pub enum EspError {
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error("{0}: the EFI system partition is not a readable FAT file system: {1}")]
    NotFat(String, String),
}

/// Find the first EFI system partition on `disk` (a GPT partition of the ESP type).
pub fn find(disk: &Path) -> Result<Option<Partition>, EspError> {
    Ok(super::table::find_esp(disk)?)
}

/// The loader names IPA looks for that this machine's firmware can run: the other
/// architectures' loaders are never registered (a firmware entry for one would not boot).
pub fn native_loader(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    if !LOADERS.contains(&n.as_str()) {
        return false;
    }
    let foreign: &[&str] = if cfg!(target_arch = "x86_64") {
        &["aa64", "arm", "riscv", "ia32", "ia64"]
    } else if cfg!(target_arch = "aarch64") {
        &["x64", "ia32", "ia64", "bootarm", "riscv"]
    } else {
        &[]
    };
    !foreign.iter().any(|f| n.contains(f))
}

/// One firmware boot entry to make: a loader (UEFI path) and the label a shim CSV gives it
/// (`None`: Rivet's own `ironic1`, `ironic2`, …).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub path: String,
    pub label: Option<String>,
}

/// What an ESP offers the firmware.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Loaders {
    /// Every loader file of this architecture IPA's list names (UEFI paths), CSVs too.
    pub files: Vec<String>,
    /// The entries to register: as IPA, the loader and label a CSV (shim's `BOOTX64.CSV`:
    /// "shimx64.efi,ubuntu,,…", UTF-16) names, when there is one and its loader is there;
    /// else each loader file but the CSVs.
    pub entries: Vec<Entry>,
}

impl Loaders {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries' paths, for messages.
    pub fn paths(&self) -> String {
        self.entries
            .iter()
            .map(|e| match &e.label {
                Some(l) => format!("{} ({l})", e.path),
                None => e.path.clone(),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The boot loaders on the ESP.
pub fn loaders(disk: &Path, esp: &Partition) -> Result<Loaders, EspError> {
    let f = open_read(disk)?;
    loaders_in(
        Slice::new(f, esp.start, esp.len),
        &disk.display().to_string(),
    )
}

/// Largest CSV read: shim's are a line of some 100 bytes.
const MAX_CSV: u64 = 4096;

/// The boot loaders on the FAT file system `io` (named `name` in errors).
pub fn loaders_in<T>(io: T, name: &str) -> Result<Loaders, EspError>
where
    T: std::io::Read + std::io::Write + std::io::Seek,
{
    use std::io::Read;
    let fs = fatfs::FileSystem::new(io, fatfs::FsOptions::new().update_accessed_date(false))
        .map_err(|e| EspError::NotFat(name.to_string(), e.to_string()))?;
    let bad = |e: std::io::Error| EspError::NotFat(name.to_string(), e.to_string());
    let mut files = Vec::new();
    // Every file's path (lower case): a CSV's loader must be there.
    let mut all = std::collections::BTreeSet::new();
    let mut csvs: Vec<(String, Vec<u8>)> = Vec::new();
    let mut seen = 0usize;
    // Depth-limited walk: loaders live in \EFI\<vendor>\.
    let mut stack = vec![(fs.root_dir(), String::new(), 0)];
    while let Some((dir, path, depth)) = stack.pop() {
        for e in dir.iter().flatten() {
            count_entry(&mut seen).map_err(bad)?;
            let n = e.file_name();
            if n == "." || n == ".." {
                continue;
            }
            let p = format!("{path}\\{n}");
            if e.is_dir() && depth < 3 {
                stack.push((e.to_dir(), p, depth + 1));
            } else if e.is_file() {
                all.insert(p.to_ascii_lowercase());
                if native_loader(&n) {
                    if n.to_ascii_lowercase().ends_with(".csv") {
                        let mut buf = Vec::new();
                        e.to_file()
                            .take(MAX_CSV)
                            .read_to_end(&mut buf)
                            .map_err(bad)?;
                        csvs.push((p.clone(), buf));
                    }
                    files.push(p);
                }
            }
        }
    }
    files.sort();
    csvs.sort();
    let from_csv = csvs.iter().find_map(|(p, bytes)| {
        let (loader, label) = match parse_csv(bytes) {
            Some(v) => v,
            None => {
                tracing::warn!(csv = %p, "a boot CSV that names no loader and label: ignored");
                return None;
            }
        };
        let dir = &p[..p.rfind('\\').unwrap_or(0)];
        let path = format!("{dir}\\{loader}");
        if all.contains(&path.to_ascii_lowercase()) {
            Some(Entry {
                path,
                label: Some(label),
            })
        } else {
            tracing::warn!(csv = %p, loader = %path, "a boot CSV names a loader that is not on the ESP: ignored");
            None
        }
    });
    let entries = match from_csv {
        Some(e) => vec![e],
        None => files
            .iter()
            .filter(|f| !f.to_ascii_lowercase().ends_with(".csv"))
            .map(|f| Entry {
                path: f.clone(),
                label: None,
            })
            .collect(),
    };
    Ok(Loaders { files, entries })
}

/// A boot CSV's first line, "loader,label,options,description": UTF-16 (with or without its
/// byte-order mark, as shim writes them) or UTF-8. The loader must be a plain file name and
/// the label printable: both come from the image.
pub fn parse_csv(bytes: &[u8]) -> Option<(String, String)> {
    let utf16 = |b: &[u8], le: bool| -> Option<String> {
        let units: Vec<u16> = b
            .chunks_exact(2)
            .map(|c| {
                if le {
                    u16::from_le_bytes([c[0], c[1]])
                } else {
                    u16::from_be_bytes([c[0], c[1]])
                }
            })
            .collect();
        String::from_utf16(&units).ok()
    };
    let text = match bytes {
        [0xff, 0xfe, rest @ ..] => utf16(rest, true)?,
        [0xfe, 0xff, rest @ ..] => utf16(rest, false)?,
        [_, 0, ..] => utf16(bytes, true)?,
        _ => String::from_utf8(bytes.to_vec()).ok()?,
    };
    let line = text.lines().next()?.trim_start_matches('\u{feff}');
    let mut fields = line.splitn(4, ',');
    let loader = fields.next()?.trim().to_string();
    let label = fields.next()?.trim().to_string();
    let plain = |s: &str| !s.is_empty() && s.len() <= 64 && s.chars().all(|c| !c.is_control());
    let file_name = plain(&loader) && !loader.contains(['\\', '/']) && loader != "..";
    (file_name && plain(&label)).then_some((loader, label))
}

/// What [`mirror`] copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Copied {
    pub files: usize,
    pub bytes: u64,
}

/// Deepest directory [`mirror`] follows: a FAT tree from an image is input, and a loop of
/// directories (a damaged file system) must end.
const MAX_DEPTH: usize = 16;

/// Most directory entries one walk reads. fatfs follows a directory's cluster chain as the
/// FAT gives it, without noticing a cycle: a damaged or hostile ESP whose chain loops would
/// list the same entries for ever. Real ESPs hold a few hundred entries.
pub const MAX_ENTRIES: usize = 65_536;

fn count_entry(seen: &mut usize) -> Result<(), std::io::Error> {
    *seen += 1;
    if *seen > MAX_ENTRIES {
        return Err(std::io::Error::other(format!(
            "more than {MAX_ENTRIES} directory entries: a damaged FAT file system (a loop in its clusters?)"
        )));
    }
    Ok(())
}

/// Make a FAT file system on `dst` (the whole of it) that carries the volume id, the label and
/// every file and directory of the FAT file system on `src`: an image's ESP copied onto the
/// ESP mirror of a software RAID, where boot loaders may look for the file system by its UUID.
/// `sector`: the logical sector size of the device under `dst`.
pub fn mirror<S, D>(src: S, mut dst: D, sector: u16) -> Result<Copied, std::io::Error>
where
    S: std::io::Read + std::io::Write + std::io::Seek,
    D: std::io::Read + std::io::Write + std::io::Seek,
{
    let from = fatfs::FileSystem::new(src, fatfs::FsOptions::new().update_accessed_date(false))?;
    let mut label = [b' '; 11];
    let l = from.volume_label_as_bytes();
    label[..l.len().min(11)].copy_from_slice(&l[..l.len().min(11)]);
    fatfs::format_volume(
        &mut dst,
        fatfs::FormatVolumeOptions::new()
            .volume_id(from.volume_id())
            .volume_label(label)
            .bytes_per_sector(sector),
    )?;
    let to = fatfs::FileSystem::new(dst, fatfs::FsOptions::new())?;
    let mut done = Copied { files: 0, bytes: 0 };
    copy_dirs(from.root_dir(), to.root_dir(), &mut done)?;
    to.unmount()?;
    Ok(done)
}

/// Copy the tree under `src` into `dst` (depth-limited), counting into `done`.
fn copy_dirs<'a, S, D>(
    src: fatfs::Dir<'a, S>,
    dst: fatfs::Dir<'_, D>,
    done: &mut Copied,
) -> Result<(), std::io::Error>
where
    S: std::io::Read + std::io::Write + std::io::Seek,
    D: std::io::Read + std::io::Write + std::io::Seek,
{
    let mut stack = vec![(src, dst, 0usize)];
    let mut seen = 0usize;
    while let Some((src_dir, dst_dir, depth)) = stack.pop() {
        for e in src_dir.iter() {
            count_entry(&mut seen)?;
            let e = e?;
            let name = e.file_name();
            if name == "." || name == ".." {
                continue;
            }
            if e.is_dir() {
                if depth >= MAX_DEPTH {
                    return Err(std::io::Error::other(format!(
                        "directories nested deeper than {MAX_DEPTH} on the source ESP"
                    )));
                }
                let sub = dst_dir.create_dir(&name)?;
                stack.push((e.to_dir(), sub, depth + 1));
            } else if e.is_file() {
                let mut out = dst_dir.create_file(&name)?;
                out.truncate()?;
                done.bytes += std::io::copy(&mut e.to_file(), &mut out)?;
                done.files += 1;
            }
        }
    }
    Ok(())
}

/// The removable-media path the firmware boots without any NVRAM entry.
pub fn fallback_loader() -> &'static str {
    if cfg!(target_arch = "aarch64") {
        "\\EFI\\BOOT\\BOOTAA64.EFI"
    } else {
        "\\EFI\\BOOT\\BOOTX64.EFI"
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::fs::File;
    use std::io::Cursor;
    use std::process::{Command, Stdio};

    /// This machine's fallback loader's file name (`BOOTX64.EFI`, `BOOTAA64.EFI` on arm64):
    /// the ESPs the tests make hold the loader this machine boots.
    pub fn own_loader_name() -> &'static str {
        fallback_loader().rsplit('\\').next().unwrap_or_default()
    }

    /// A GPT disk image with a FAT ESP holding this machine's `\EFI\BOOT\BOOT*.EFI`
    /// (sgdisk, mkfs.fat, mtools). Returns false when the tools are missing.
    pub fn make_disk_with_esp(path: &Path, with_loader: bool) -> bool {
        let have = |t: &str| crate::system::tools::which(t).is_some();
        if !(have("sgdisk") && have("mkfs.fat") && have("mcopy")) {
            return false;
        }
        File::create(path).unwrap().set_len(48 << 20).unwrap();
        let ok = |c: &mut Command| {
            c.stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .unwrap()
                .success()
        };
        assert!(ok(Command::new("sgdisk")
            .args(["-o", "-n", "1:2048:+32M", "-t", "1:ef00", "-n", "2:0:0"])
            .arg(path)));
        assert!(ok(Command::new("mkfs.fat")
            .args(["-F", "16", "--offset", "2048", "-n", "EFI"])
            .arg(path)
            .arg("32768")));
        let img = format!("{}@@{}", path.display(), 2048 * 512);
        assert!(ok(Command::new("mmd").args([
            "-i",
            &img,
            "::/EFI",
            "::/EFI/BOOT",
            "::/EFI/debian"
        ])));
        let loader = path.with_extension("efi");
        std::fs::write(&loader, b"MZ fake loader").unwrap();
        assert!(ok(Command::new("mcopy")
            .args(["-i", &img])
            .arg(&loader)
            .arg("::/EFI/debian/grubx64.efi")));
        if with_loader {
            assert!(ok(Command::new("mcopy")
                .args(["-i", &img])
                .arg(&loader)
                .arg(format!("::/EFI/BOOT/{}", own_loader_name()))));
        }
        true
    }

    #[test]
    fn mirrors_a_tree_with_its_id_and_label() {
        use std::io::{Cursor, Read, Write};
        let mut src = Cursor::new(vec![0u8; 40 << 20]);
        fatfs::format_volume(
            &mut src,
            fatfs::FormatVolumeOptions::new()
                .volume_id(0x1234_abcd)
                .volume_label(*b"ESP        "),
        )
        .unwrap();
        {
            let fs = fatfs::FileSystem::new(&mut src, fatfs::FsOptions::new()).unwrap();
            let root = fs.root_dir();
            let boot = root.create_dir("EFI").unwrap().create_dir("BOOT").unwrap();
            boot.create_file("BOOTX64.EFI")
                .unwrap()
                .write_all(b"MZ loader")
                .unwrap();
            let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
            root.create_file("rivet-test-kernel")
                .unwrap()
                .write_all(&big)
                .unwrap();
        }
        src.set_position(0);
        let mut dst = Cursor::new(vec![0u8; 64 << 20]);
        let done = mirror(&mut src, &mut dst, 512).unwrap();
        assert_eq!(done.files, 2);
        assert_eq!(done.bytes, 3_000_000 + 9);
        dst.set_position(0);
        let fs = fatfs::FileSystem::new(&mut dst, fatfs::FsOptions::new()).unwrap();
        assert_eq!(fs.volume_id(), 0x1234_abcd);
        assert_eq!(fs.volume_label(), "ESP");
        let mut got = Vec::new();
        fs.root_dir()
            .open_file("EFI/BOOT/BOOTX64.EFI")
            .unwrap()
            .read_to_end(&mut got)
            .unwrap();
        assert_eq!(got, b"MZ loader");
        got.clear();
        fs.root_dir()
            .open_file("rivet-test-kernel")
            .unwrap()
            .read_to_end(&mut got)
            .unwrap();
        assert!(
            got.len() == 3_000_000 && got.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8)
        );
        // Not a FAT file system: an error, not a panic.
        let mut junk = Cursor::new(vec![0x5au8; 1 << 20]);
        assert!(mirror(&mut junk, Cursor::new(vec![0u8; 1 << 20]), 512).is_err());
    }

    /// An ESP whose directory's cluster chain loops back on itself (fatfs follows it for
    /// ever): the loader search and the mirror copy end with an error.
    #[test]
    fn a_fat_cluster_loop_ends_the_walks() {
        let have = |t: &str| crate::system::tools::which(t).is_some();
        if !(have("mkfs.fat") && have("mmd") && have("mcopy"))
            && crate::test_support::skipped("dosfstools/mtools missing")
        {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("esp.img");
        File::create(&p).unwrap().set_len(8 << 20).unwrap();
        let run = |c: &mut Command| {
            assert!(c
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .unwrap()
                .success())
        };
        run(Command::new("mkfs.fat")
            .args(["-F", "16", "-s", "1"])
            .arg(&p));
        let img = p.display().to_string();
        run(Command::new("mmd").args(["-i", &img, "::/EFI", "::/EFI/BOOT"]));
        let loader = d.path().join("BOOTX64.EFI");
        std::fs::write(&loader, b"MZ").unwrap();
        run(Command::new("mcopy")
            .args(["-i", &img])
            .arg(&loader)
            .arg(format!("::/EFI/BOOT/{}", own_loader_name())));
        // Enough entries that \EFI fills its first cluster (16 entries of 512 bytes): the
        // walk then follows the chain, which is where the loop will be.
        for i in 0..30 {
            run(Command::new("mcopy")
                .args(["-i", &img])
                .arg(&loader)
                .arg(format!("::/EFI/F{i:02}.BIN")));
        }
        let mut fs = std::fs::read(&p).unwrap();
        assert_eq!(
            loaders_in(Cursor::new(fs.clone()), "esp").unwrap().files,
            vec![fallback_loader().to_string()]
        );
        // FAT16: the EFI directory's first cluster from its root entry, then every FAT's
        // entry for that cluster pointed at itself.
        let u16at = |b: &[u8], at: usize| u16::from_le_bytes([b[at], b[at + 1]]) as usize;
        let (bps, reserved, fats, fat_size) = (
            u16at(&fs, 11),
            u16at(&fs, 14),
            fs[16] as usize,
            u16at(&fs, 22),
        );
        let root = (reserved + fats * fat_size) * bps;
        let entry = (0..512)
            .map(|i| root + i * 32)
            .find(|&e| &fs[e..e + 11] == b"EFI        ")
            .expect("no EFI entry in the root directory");
        let cluster = u16at(&fs, entry + 26);
        for f in 0..fats {
            let at = (reserved + f * fat_size) * bps + cluster * 2;
            fs[at..at + 2].copy_from_slice(&(cluster as u16).to_le_bytes());
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let fs2 = fs.clone();
        std::thread::spawn(move || {
            let a = loaders_in(Cursor::new(fs2.clone()), "esp")
                .map(|_| ())
                .map_err(|e| e.to_string());
            let b = mirror(Cursor::new(fs2), Cursor::new(vec![0u8; 8 << 20]), 512)
                .map(|_| ())
                .map_err(|e| e.to_string());
            let _ = tx.send((a, b));
        });
        let (a, b) = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("a walk of the looping ESP did not end");
        assert!(a.unwrap_err().contains("directory entries"));
        assert!(b.unwrap_err().contains("directory entries"));
    }

    /// An ESP as Ubuntu's shim leaves it: `\EFI\ubuntu` with shim, GRUB and the CSV naming
    /// shim; the removable path; another architecture's loader beside them.
    fn shim_esp(csv_text: &[u8]) -> Cursor<Vec<u8>> {
        use std::io::Write;
        let (csv, fb, foreign) = if cfg!(target_arch = "aarch64") {
            ("BOOTAA64.CSV", "BOOTAA64.EFI", "BOOTX64.EFI")
        } else {
            ("BOOTX64.CSV", "BOOTX64.EFI", "BOOTAA64.EFI")
        };
        let mut img = Cursor::new(vec![0u8; 8 << 20]);
        fatfs::format_volume(&mut img, fatfs::FormatVolumeOptions::new()).unwrap();
        {
            let fs = fatfs::FileSystem::new(&mut img, fatfs::FsOptions::new()).unwrap();
            let efi = fs.root_dir().create_dir("EFI").unwrap();
            let vendor = efi.create_dir("ubuntu").unwrap();
            for f in ["shimx64.efi", "shimaa64.efi", "grubx64.efi", "mmx64.efi"] {
                vendor.create_file(f).unwrap().write_all(b"MZ").unwrap();
            }
            vendor
                .create_file(csv)
                .unwrap()
                .write_all(csv_text)
                .unwrap();
            let boot = efi.create_dir("BOOT").unwrap();
            for f in [fb, foreign] {
                boot.create_file(f).unwrap().write_all(b"MZ").unwrap();
            }
        }
        img.set_position(0);
        img
    }

    fn utf16le_bom(s: &str) -> Vec<u8> {
        let mut b = vec![0xff, 0xfe];
        b.extend(s.encode_utf16().flat_map(u16::to_le_bytes));
        b
    }

    #[test]
    fn a_shim_csv_names_the_entry_and_foreign_loaders_are_left_out() {
        let shim = if cfg!(target_arch = "aarch64") {
            "shimaa64.efi"
        } else {
            "shimx64.efi"
        };
        let got = loaders_in(
            shim_esp(&utf16le_bom(&format!(
                "{shim},ubuntu,,This is the boot entry for ubuntu\n"
            ))),
            "esp",
        )
        .unwrap();
        let csv = if cfg!(target_arch = "aarch64") {
            "\\EFI\\ubuntu\\BOOTAA64.CSV"
        } else {
            "\\EFI\\ubuntu\\BOOTX64.CSV"
        };
        assert_eq!(
            got.files,
            vec![fallback_loader().to_string(), csv.to_string()]
        );
        assert_eq!(
            got.entries,
            vec![Entry {
                path: format!("\\EFI\\ubuntu\\{shim}"),
                label: Some("ubuntu".into())
            }]
        );
        // A CSV naming a loader the ESP lacks, or no loader at all: the loader files are
        // registered instead (never a path to nothing, never the CSV itself).
        for text in [
            utf16le_bom("missing.efi,ubuntu,,x\n"),
            b"\n".to_vec(),
            b"../../evil.efi,x,,\n".to_vec(),
        ] {
            let got = loaders_in(shim_esp(&text), "esp").unwrap();
            assert_eq!(
                got.entries,
                vec![Entry {
                    path: fallback_loader().to_string(),
                    label: None
                }],
                "{text:?}"
            );
        }
    }

    #[test]
    fn boot_csvs_in_their_encodings() {
        let want = Some(("shimx64.efi".to_string(), "debian".to_string()));
        assert_eq!(
            parse_csv(&utf16le_bom("shimx64.efi,debian,,Debian\r\n")),
            want
        );
        let le: Vec<u8> = "shimx64.efi,debian,,\n"
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect();
        assert_eq!(parse_csv(&le), want);
        let mut be = vec![0xfe, 0xff];
        be.extend(
            "shimx64.efi,debian,,\n"
                .encode_utf16()
                .flat_map(u16::to_be_bytes),
        );
        assert_eq!(parse_csv(&be), want);
        assert_eq!(parse_csv(b"shimx64.efi,debian"), want);
        // Paths, control characters, empty or absurd fields: refused.
        for bad in [
            &b"EFI/x.efi,debian,,"[..],
            b"x.efi,deb\x07ian,,",
            b",debian,,",
            b"x.efi,,,",
            b"x.efi",
            b"",
            &[0xff, 0xfe, 0x00, 0xd8][..],
        ] {
            assert_eq!(parse_csv(bad), None, "{bad:?}");
        }
        assert_eq!(
            parse_csv(format!("x.efi,{}", "l".repeat(65)).as_bytes()),
            None
        );
    }

    #[test]
    fn finds_the_esp_and_its_loaders() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("disk.img");
        if !make_disk_with_esp(&p, true)
            && crate::test_support::skipped("sgdisk/dosfstools/mtools missing")
        {
            return;
        }
        let esp = find(&p).unwrap().unwrap();
        assert_eq!((esp.number, esp.start, esp.len), (1, 2048 * 512, 32 << 20));
        assert_eq!(
            loaders(&p, &esp).unwrap().files,
            vec![fallback_loader().to_string()]
        );
        let q = d.path().join("noloader.img");
        make_disk_with_esp(&q, false);
        assert!(loaders(&q, &find(&q).unwrap().unwrap()).unwrap().is_empty());
        let blank = d.path().join("blank.img");
        File::create(&blank).unwrap().set_len(1 << 20).unwrap();
        assert_eq!(find(&blank).unwrap(), None, "no GPT, no ESP");
    }
}
