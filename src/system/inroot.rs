//! File operations confined to a directory tree as if it were the root (openat2 with
//! RESOLVE_IN_ROOT): absolute symlinks and `..` inside the tree resolve within it. Used to
//! change files of a mounted image without ever touching the ramdisk's own files through an
//! image's symlink.
#![allow(unsafe_code)]

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fchmod, mkdirat, Mode};
use nix::unistd::{unlinkat, UnlinkatFlags};

/// Mode and ownership for a written file; `None` leaves the default (0644, the agent's ids).
#[derive(Debug, Clone, Default)]
pub struct Attrs {
    pub mode: Option<u32>,
    /// Mode of the file's directory, applied only when this call created it.
    pub dirmode: Option<u32>,
    pub owner: Option<u32>,
    pub group: Option<u32>,
}

pub struct Root {
    fd: OwnedFd,
}

fn open_in(root: &OwnedFd, rel: &str, flags: OFlag, mode: Mode) -> nix::Result<OwnedFd> {
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .mode(mode)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let fd = openat2(root.as_raw_fd(), rel, how)?;
    // SAFETY: openat2 just returned this descriptor and nothing else holds it, so the
    // OwnedFd is its only owner and closes it exactly once.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn dir_flags() -> OFlag {
    OFlag::O_PATH | OFlag::O_DIRECTORY
}

impl Root {
    pub fn open(dir: &Path) -> std::io::Result<Root> {
        let f = File::open(dir)?;
        Ok(Root {
            fd: OwnedFd::from(f),
        })
    }

    /// Create the missing directories of `dir`; returns whether its last component was
    /// created by this call.
    fn make_dirs(&self, dir: &str) -> nix::Result<bool> {
        let mut created = false;
        let mut so_far = String::new();
        let mut parent = open_in(&self.fd, ".", dir_flags(), Mode::empty())?;
        for comp in dir.split('/').filter(|c| !c.is_empty()) {
            if !so_far.is_empty() {
                so_far.push('/');
            }
            so_far.push_str(comp);
            parent = match open_in(&self.fd, &so_far, dir_flags(), Mode::empty()) {
                Ok(fd) => {
                    created = false;
                    fd
                }
                Err(Errno::ENOENT) => {
                    match mkdirat(
                        Some(parent.as_raw_fd()),
                        comp,
                        Mode::from_bits_truncate(0o755),
                    ) {
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(e) => return Err(e),
                    }
                    created = true;
                    open_in(&self.fd, &so_far, dir_flags(), Mode::empty())?
                }
                Err(e) => return Err(e),
            };
        }
        Ok(created)
    }

    /// Write `data` to `rel` (created or truncated; directories made as needed), synced.
    pub fn write_file(&self, rel: &str, data: &[u8], a: &Attrs) -> std::io::Result<()> {
        let dir = rel.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
        if self.make_dirs(dir)? {
            if let Some(m) = a.dirmode {
                // An O_PATH descriptor cannot be chmod'ed: open the directory for it.
                let d = open_in(
                    &self.fd,
                    dir,
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY,
                    Mode::empty(),
                )?;
                fchmod(d.as_raw_fd(), Mode::from_bits_truncate(m))?;
            }
        }
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_TRUNC;
        let fd = match open_in(&self.fd, rel, flags, Mode::from_bits_truncate(0o644)) {
            // A link into a directory the image does not have (`/etc/resolv.conf ->
            // /run/systemd/...`, /run being empty in images): the file the operator asked
            // for replaces the dangling link.
            Err(Errno::ENOENT) if self.is_link(rel) => {
                tracing::warn!(
                    path = rel,
                    "replacing a dangling symbolic link with the file"
                );
                self.remove(rel)?;
                open_in(
                    &self.fd,
                    rel,
                    flags | OFlag::O_NOFOLLOW,
                    Mode::from_bits_truncate(0o644),
                )?
            }
            r => r?,
        };
        let mut file = File::from(fd);
        file.write_all(data)?;
        if let Some(m) = a.mode {
            fchmod(file.as_raw_fd(), Mode::from_bits_truncate(m))?;
        }
        if a.owner.is_some() || a.group.is_some() {
            std::os::unix::fs::fchown(&file, a.owner, a.group)?;
        }
        file.sync_all()
    }

    fn is_link(&self, rel: &str) -> bool {
        let (dir, name) = rel.rsplit_once('/').unwrap_or((".", rel));
        open_in(&self.fd, dir, dir_flags(), Mode::empty())
            .and_then(|d| {
                nix::sys::stat::fstatat(
                    Some(d.as_raw_fd()),
                    name,
                    nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
                )
            })
            .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFLNK)
    }

    /// Remove the file `rel`; a file that is not there is not an error.
    pub fn remove(&self, rel: &str) -> std::io::Result<()> {
        let (dir, name) = rel.rsplit_once('/').unwrap_or((".", rel));
        let parent = match open_in(&self.fd, dir, dir_flags(), Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        match unlinkat(Some(parent.as_raw_fd()), name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside_the_root() {
        let t = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        // An absolute symlink as images have them, and one pointing outside via "..".
        std::os::unix::fs::symlink(outside.path(), root.join("etc/abs")).unwrap();
        let inside = root.join(outside.path().strip_prefix("/").unwrap());
        std::fs::create_dir_all(&inside).unwrap();
        std::os::unix::fs::symlink("../../..", root.join("etc/up")).unwrap();
        let r = Root::open(&root).unwrap();
        let a = Attrs {
            mode: Some(0o600),
            dirmode: Some(0o700),
            ..Attrs::default()
        };
        r.write_file("etc/abs/x", b"1", &a).unwrap();
        r.write_file("etc/up/y", b"2", &a).unwrap();
        r.write_file("new/dir/z", b"3", &a).unwrap();
        // Nothing escaped: the absolute link's target is re-rooted inside the tree.
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
        assert_eq!(std::fs::read(inside.join("x")).unwrap(), b"1");
        // A link to a directory the image does not have is an error, not a mkdir elsewhere.
        std::os::unix::fs::symlink("/nowhere", root.join("etc/dangling")).unwrap();
        assert!(r.write_file("etc/dangling/x", b"4", &a).is_err());
        assert!(!Path::new("/nowhere").exists());
        // A dangling link as the file itself is replaced by the file.
        std::os::unix::fs::symlink("/nowhere/resolv.conf", root.join("etc/resolv.conf")).unwrap();
        r.write_file("etc/resolv.conf", b"5", &a).unwrap();
        assert!(!std::fs::symlink_metadata(root.join("etc/resolv.conf"))
            .unwrap()
            .is_symlink());
        assert_eq!(std::fs::read(root.join("etc/resolv.conf")).unwrap(), b"5");
        assert_eq!(std::fs::read(root.join("y")).unwrap(), b"2");
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&root.join("new/dir/z")), 0o600);
        assert_eq!(mode(&root.join("new/dir")), 0o700);
        assert_eq!(mode(&root.join("new")), 0o755);
        r.remove("new/dir/z").unwrap();
        r.remove("new/dir/z").unwrap();
        r.remove("missing/dir/z").unwrap();
        assert!(!root.join("new/dir/z").exists());
    }
}
