//! Temporary mounts of file systems on the target disk, undone when the guard drops (also on
//! errors and panics), so a failed step never leaves the disk busy for the next one.
//!
//! A partition is mounted through its device node when the kernel's node is exactly that
//! partition; otherwise (no node, as in test sandboxes, or a stale one describing an old
//! table) through a loop device over the byte range of the disk. System directories for a
//! chroot are bound in-process.
//!
//! The file systems are a tenant's: always `nosuid,nodev`, and `noexec` unless a chroot runs
//! the image's own tools. A mount inside one (the ESP at `boot/efi`, `/dev` for a chroot)
//! lands on a directory found with `inroot::Root::mount_point`, which refuses symbolic links,
//! and is made through the descriptor of that directory, never through a path the image
//! could redirect onto the ramdisk's own directories.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use super::nodes::{partition_io, PartitionIo};
use super::table::Partition;
use crate::system::tools::run_capture;

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("creating the mount point {0}: {1}")]
    Dir(String, std::io::Error),
    #[error("mounting {what}: {detail}")]
    Mount { what: String, detail: String },
}

fn describe(disk: &Path, p: &Partition) -> String {
    format!("partition {} of {}", p.number, disk.display())
}

/// What a mount is for, which decides its options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Look at the image: `ro,nosuid,nodev,noexec`.
    Inspect,
    /// Change files (inject_files): `rw,nosuid,nodev,noexec`.
    Change,
    /// Run the image's own tools in a chroot (grub-install): `rw,nosuid,nodev`.
    Chroot,
}

impl Access {
    fn options(self) -> &'static str {
        match self {
            Access::Inspect => "ro,nosuid,nodev,noexec",
            Access::Change => "rw,nosuid,nodev,noexec",
            Access::Chroot => "rw,nosuid,nodev",
        }
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

/// `mount` a partition at `at`: through its node when the kernel's node is exactly this
/// partition, else through a loop device over the byte range (`nodes::partition_io`).
fn mount_partition(
    disk: &Path,
    p: &Partition,
    at: &Path,
    access: Access,
) -> Result<bool, MountError> {
    let mode = access.options();
    let (opts, src, looped) = match partition_io(disk, p.number, p.start, p.len) {
        PartitionIo::Node(node) => (mode.to_string(), node.display().to_string(), false),
        PartitionIo::Window { start, len } => (
            format!("{mode},loop,offset={start},sizelimit={len}"),
            disk.display().to_string(),
            true,
        ),
    };
    let at_s = at.display().to_string();
    let (ok, out) =
        run_capture("mount", &["-o", &opts, &src, &at_s], TOOL_TIME, 1 << 14).map_err(|e| {
            MountError::Mount {
                what: describe(disk, p),
                detail: e.to_string(),
            }
        })?;
    if !ok {
        return Err(MountError::Mount {
            what: describe(disk, p),
            detail: String::from_utf8_lossy(&out).trim().to_string(),
        });
    }
    Ok(looped)
}

impl Mounted {
    /// Mount partition `p` of `disk` on a fresh temporary directory.
    pub fn partition(disk: &Path, p: &Partition, access: Access) -> Result<Mounted, MountError> {
        let dir = fresh_dir()?;
        match mount_partition(disk, p, &dir, access) {
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

    /// The directory `sub` of this file system to mount on, refusing symbolic links; the
    /// result is the path of its descriptor (`/proc/self/fd/N`) while `fd` lives.
    fn target(&self, sub: &str) -> Result<std::os::fd::OwnedFd, MountError> {
        let root = crate::system::inroot::Root::open(&self.dir)
            .map_err(|e| MountError::Dir(self.dir.display().to_string(), e))?;
        root.mount_point(sub)
            .map_err(|e| MountError::Dir(format!("/{sub} in the image"), e))
    }

    /// Check (and create) the directories mounts will go on, before anything is mounted: a
    /// link among them fails the whole operation up front.
    pub fn check_mount_points(&self, subs: &[&str]) -> Result<(), MountError> {
        for sub in subs {
            self.target(sub)?;
        }
        Ok(())
    }

    /// Mount partition `p` of `disk` at `sub` inside this file system (e.g. the ESP at
    /// `boot/efi`), with this mount's access. The partition is mounted on a private directory
    /// first, then bound onto the checked directory's descriptor.
    pub fn mount_inside(
        &mut self,
        sub: &str,
        disk: &Path,
        p: &Partition,
        access: Access,
    ) -> Result<(), MountError> {
        let target = self.target(sub)?;
        let staging = Mounted::partition(disk, p, access)?;
        bind(
            staging.path(),
            &target,
            &format!("{} at /{sub}", describe(disk, p)),
        )?;
        // The bind keeps the file system (and its loop device) alive; the staging mount goes.
        drop(staging);
        self.stack.push((self.dir.join(sub), false));
        Ok(())
    }

    /// Bind the ramdisk's /dev, /proc and /sys (read-only) into this file system, for tools
    /// run in a chroot (grub-install probes devices through them). Nothing else of the
    /// ramdisk is visible there: not /run (the agent's state), not the EFI variables.
    pub fn bind_system(&mut self) -> Result<(), MountError> {
        for (d, read_only) in [("dev", false), ("proc", false), ("sys", true)] {
            let target = self.target(d)?;
            let what = format!("/{d} into the image");
            bind(&Path::new("/").join(d), &target, &what)?;
            self.stack.push((self.dir.join(d), false));
            if read_only {
                // A bind takes MS_RDONLY only on a remount, of the new mount itself: the
                // descriptor taken before the bind names the directory underneath, so the
                // mount point is looked up again (still refusing links).
                let top = self.target(d)?;
                let at = proc_fd(&top);
                let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
                mount(None::<&str>, &at, None::<&str>, flags, None::<&str>).map_err(|e| {
                    MountError::Mount {
                        what: format!("{what} (read-only)"),
                        detail: e.to_string(),
                    }
                })?;
            }
        }
        Ok(())
    }
}

/// The path of a descriptor, for mount(2) to act on the very directory it names.
fn proc_fd(fd: &std::os::fd::OwnedFd) -> PathBuf {
    use std::os::fd::AsRawFd;
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Bind `src` onto the directory held by `target`.
fn bind(src: &Path, target: &std::os::fd::OwnedFd, what: &str) -> Result<(), MountError> {
    mount(
        Some(src),
        &proc_fd(target),
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| MountError::Mount {
        what: what.to_string(),
        detail: e.to_string(),
    })
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
