//! Temporary mounts of file systems on the target disk, undone when the guard drops (also on
//! errors and panics), so a failed step never leaves the disk busy for the next one.
//!
//! A partition is mounted through its device node when the kernel made one; otherwise (test
//! sandboxes whose kernel creates no partition nodes) through a loop device over the byte
//! range of the disk. System directories for a chroot are bound in-process.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::system::tools::run_capture;

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("creating the mount point {0}: {1}")]
    Dir(String, std::io::Error),
    #[error("mounting {what}: {detail}")]
    Mount { what: String, detail: String },
}

/// Where a file system lives: a partition of `disk` (1-based `number`, byte range).
#[derive(Debug, Clone)]
pub struct Partition<'a> {
    pub disk: &'a Path,
    pub number: u32,
    pub start: u64,
    pub len: u64,
}

impl Partition<'_> {
    fn describe(&self) -> String {
        format!("partition {} of {}", self.number, self.disk.display())
    }
}

/// A mounted file system and what was stacked on it; unmounted in reverse order on drop.
pub struct Mounted {
    dir: PathBuf,
    /// Mount points in the order they were made (the base first).
    stack: Vec<(PathBuf, bool)>,
}

const TOOL_TIME: Duration = Duration::from_secs(120);

fn fresh_dir() -> Result<PathBuf, MountError> {
    let d = std::env::temp_dir().join(format!("rivet-mnt-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir(&d).map_err(|e| MountError::Dir(d.display().to_string(), e))?;
    Ok(d)
}

/// `mount` a partition at `at` (the node if it exists, else a loop over the byte range).
fn mount_partition(p: &Partition, at: &Path, read_only: bool) -> Result<bool, MountError> {
    let node = crate::disk::partitions::node(p.disk, p.number);
    let is_block = std::fs::metadata(&node).is_ok_and(|m| {
        use std::os::unix::fs::FileTypeExt;
        m.file_type().is_block_device()
    });
    let mode = if read_only { "ro" } else { "rw" };
    let (opts, src, looped) = if is_block {
        (mode.to_string(), node, false)
    } else {
        (
            format!("{mode},loop,offset={},sizelimit={}", p.start, p.len),
            p.disk.display().to_string(),
            true,
        )
    };
    let at_s = at.display().to_string();
    let (ok, out) =
        run_capture("mount", &["-o", &opts, &src, &at_s], TOOL_TIME, 1 << 14).map_err(|e| {
            MountError::Mount {
                what: p.describe(),
                detail: e.to_string(),
            }
        })?;
    if !ok {
        return Err(MountError::Mount {
            what: p.describe(),
            detail: String::from_utf8_lossy(&out).trim().to_string(),
        });
    }
    Ok(looped)
}

impl Mounted {
    /// Mount partition `p` on a fresh temporary directory.
    pub fn partition(p: &Partition, read_only: bool) -> Result<Mounted, MountError> {
        let dir = fresh_dir()?;
        match mount_partition(p, &dir, read_only) {
            Ok(looped) => Ok(Mounted {
                stack: vec![(dir.clone(), looped)],
                dir,
            }),
            Err(e) => {
                let _ = std::fs::remove_dir(&dir);
                Err(e)
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Mount partition `p` at `sub` inside this file system (e.g. the ESP at `boot/efi`).
    pub fn mount_inside(&mut self, sub: &str, p: &Partition) -> Result<(), MountError> {
        let at = self.dir.join(sub);
        std::fs::create_dir_all(&at).map_err(|e| MountError::Dir(at.display().to_string(), e))?;
        let looped = mount_partition(p, &at, false)?;
        self.stack.push((at, looped));
        Ok(())
    }

    /// Bind the ramdisk's /dev, /proc and /sys into this file system, for tools run in a
    /// chroot (grub-install probes devices through them).
    pub fn bind_system(&mut self) -> Result<(), MountError> {
        for d in ["dev", "proc", "sys"] {
            let at = self.dir.join(d);
            std::fs::create_dir_all(&at)
                .map_err(|e| MountError::Dir(at.display().to_string(), e))?;
            mount(
                Some(Path::new("/").join(d).as_path()),
                &at,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| MountError::Mount {
                what: format!("/{d} into the image"),
                detail: e.to_string(),
            })?;
            self.stack.push((at, false));
        }
        Ok(())
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        while let Some((at, looped)) = self.stack.pop() {
            let at_s = at.display().to_string();
            // `umount -d` also frees the loop device; binds need no tool.
            let done = if looped {
                run_capture("umount", &["-d", &at_s], TOOL_TIME, 1 << 14)
                    .map(|(ok, _)| ok)
                    .unwrap_or(false)
            } else {
                umount2(&at, MntFlags::empty()).is_ok()
            };
            if !done {
                // Lazily, rather than leave the disk busy for the next command.
                let _ = umount2(&at, MntFlags::MNT_DETACH);
                tracing::warn!(mount = %at_s, "unmounted lazily");
            }
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}
