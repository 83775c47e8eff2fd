//! pstore: crash records the firmware keeps across reboots (`/sys/fs/pstore`).

use std::path::Path;

/// Delete every record under `dir` (a mounted pstore); returns how many were removed. A
/// missing or empty directory is not an error: there is nothing to erase.
pub fn erase(dir: &Path) -> std::io::Result<usize> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut n = 0;
    for e in entries {
        let e = e?;
        if e.file_type()?.is_file() {
            std::fs::remove_file(e.path())?;
            n += 1;
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erases_records_and_tolerates_absence() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("dmesg-efi-1"), "oops").unwrap();
        std::fs::write(d.path().join("dmesg-efi-2"), "oops").unwrap();
        assert_eq!(erase(d.path()).unwrap(), 2);
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
        assert_eq!(erase(&d.path().join("missing")).unwrap(), 0);
    }
}
