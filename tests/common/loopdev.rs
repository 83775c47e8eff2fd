//! Loop devices for tests, always detached (even when the test fails), and the root check.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
}

/// A loop device over a file the test created.
pub struct Loop {
    pub dev: String,
    pub file: PathBuf,
}

impl Loop {
    /// Attach an existing file.
    pub fn attach(file: &Path, sector: u32) -> Loop {
        let out = Command::new("losetup")
            .args(["--find", "--show", "--sector-size", &sector.to_string()])
            .arg(file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Loop {
            dev: String::from_utf8(out.stdout).unwrap().trim().to_string(),
            file: file.to_path_buf(),
        }
    }

    /// A new sparse file of `bytes`, attached.
    pub fn new(dir: &Path, name: &str, bytes: u64, sector: u32) -> Loop {
        let file = dir.join(name);
        std::fs::File::create(&file)
            .unwrap()
            .set_len(bytes)
            .unwrap();
        Self::attach(&file, sector)
    }
}

impl Loop {
    /// Register the partitions of the table on the device with the kernel (BLKPG, as
    /// partprobe does on a loop device without partition scanning): the leftovers the agent
    /// must not trust. Dropped again when the loop device is.
    pub fn register_partitions(&self) {
        let out = Command::new("partx")
            .args(["-a", &self.dev])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "partx -a: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        // Partitions registered on a loop device outlive it: drop them first, so the next
        // user of the device does not inherit them.
        let _ = Command::new("partx")
            .args(["-d", &self.dev])
            .stderr(std::process::Stdio::null())
            .status();
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}
