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

/// Every boot loader file on the ESP, as UEFI paths (`\EFI\BOOT\BOOTX64.EFI`).
pub fn loaders(disk: &Path, esp: &Partition) -> Result<Vec<String>, EspError> {
    let name = disk.display().to_string();
    let f = open_read(disk)?;
    let fs = fatfs::FileSystem::new(
        Slice::new(f, esp.start, esp.len),
        fatfs::FsOptions::new().update_accessed_date(false),
    )
    .map_err(|e| EspError::NotFat(name.clone(), e.to_string()))?;
    let mut out = Vec::new();
    // Depth-limited walk: loaders live in \EFI\<vendor>\.
    let mut stack = vec![(fs.root_dir(), String::new(), 0)];
    while let Some((dir, path, depth)) = stack.pop() {
        for e in dir.iter().flatten() {
            let n = e.file_name();
            if n == "." || n == ".." {
                continue;
            }
            let p = format!("{path}\\{n}");
            if e.is_dir() && depth < 3 {
                stack.push((e.to_dir(), p, depth + 1));
            } else if e.is_file() && LOADERS.iter().any(|l| l.eq_ignore_ascii_case(&n)) {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
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
    use std::process::{Command, Stdio};

    /// A GPT disk image with a FAT ESP holding `\EFI\BOOT\BOOTX64.EFI` (sgdisk, mkfs.fat,
    /// mtools). Returns false when the tools are missing.
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
                .arg("::/EFI/BOOT/BOOTX64.EFI")));
        }
        true
    }

    #[test]
    fn finds_the_esp_and_its_loaders() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("disk.img");
        if !make_disk_with_esp(&p, true) {
            eprintln!("SKIPPED: sgdisk/dosfstools/mtools missing");
            return;
        }
        let esp = find(&p).unwrap().unwrap();
        assert_eq!((esp.number, esp.start, esp.len), (1, 2048 * 512, 32 << 20));
        assert_eq!(
            loaders(&p, &esp).unwrap(),
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
