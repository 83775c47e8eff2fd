//! Opening a disk to write it: one rule for every writer (image, partition table, ESP, swap,
//! config drive, wipe, erase). A block device that is mounted, swapped on, or held by md, dm
//! or LVM is refused with the reason, and the open itself is exclusive (`O_EXCL`), so the
//! kernel refuses it too if anything else holds the disk. A regular file (tests, images on
//! disk) is opened plainly.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use crate::system::blockdev;

/// Whether `path` is a block device; `false` for anything else (or what cannot be read).
pub fn is_block(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_block_device())
}

/// Why the block device `path` may not be written now, if anything holds it.
pub fn in_use(path: &Path) -> Option<String> {
    let canon = std::fs::canonicalize(path).ok()?;
    let name = canon.file_name()?.to_string_lossy().into_owned();
    blockdev::in_use(&name)
}

/// Open `path` read-write under the rule above. A disk in use is an error of kind
/// `ResourceBusy` whose message says what holds it.
pub fn open_write(path: &Path) -> io::Result<File> {
    let block = is_block(path);
    if block {
        if let Some(why) = in_use(path) {
            return Err(io::Error::new(
                io::ErrorKind::ResourceBusy,
                format!("{} is in use: {why}", path.display()),
            ));
        }
    }
    let mut opts = OpenOptions::new();
    opts.read(true).write(true);
    if block {
        // O_EXCL on a block device: the kernel refuses if anything else holds it.
        opts.custom_flags(libc::O_EXCL);
    }
    opts.open(path).map_err(|e| match e.raw_os_error() {
        Some(libc::EBUSY) => io::Error::new(
            io::ErrorKind::ResourceBusy,
            format!(
                "{} is in use: the kernel reports it busy (mounted, or held by another program)",
                path.display()
            ),
        ),
        _ => e,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_open_and_missing_paths_fail() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("disk");
        std::fs::write(&f, [0u8; 4096]).unwrap();
        assert!(!is_block(&f));
        assert!(open_write(&f).is_ok());
        assert!(open_write(&d.path().join("missing")).is_err());
    }
}
