//! File operations confined to a directory tree as if it were the root (openat2 with
//! RESOLVE_IN_ROOT): absolute symlinks and `..` inside the tree resolve within it. Used to
//! read and change files of a mounted image, and to find the directories mounts go on,
//! without ever reaching the ramdisk's own files through an image's symlink: the image is a
//! tenant's, and the agent is root.
#![allow(unsafe_code)]

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fchmod, mkdirat, Mode};
use nix::unistd::{unlinkat, UnlinkatFlags};

/// What a walk of an image tree meets.
pub enum Item<'a> {
    /// A directory (visited before its content); the path is relative to the walk's start.
    Dir(&'a str),
    /// A regular file, opened without following links.
    File(&'a str, File),
}

/// Deepest directory nesting a walk follows, and most entries it visits: an image's tree is
/// input, and a walk must end.
const WALK_DEPTH: usize = 32;
const WALK_ENTRIES: usize = 100_000;

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

fn no_follow(flags: OFlag) -> OFlag {
    flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

/// `openat` relative to a directory descriptor, never following a link in `name`.
fn open_at(dir: &OwnedFd, name: &std::ffi::CStr, flags: OFlag) -> nix::Result<OwnedFd> {
    let fd = nix::fcntl::openat(Some(dir.as_raw_fd()), name, no_follow(flags), Mode::empty())?;
    // SAFETY: openat just returned this descriptor; the OwnedFd is its only owner.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl Root {
    pub fn open(dir: &Path) -> std::io::Result<Root> {
        let f = File::open(dir)?;
        Ok(Root {
            fd: OwnedFd::from(f),
        })
    }

    /// Open directory `rel` of the tree (`O_PATH`), resolved inside it; with `no_links`, no
    /// component may be a symbolic link (ELOOP otherwise).
    fn open_dir(&self, rel: &str, no_links: bool) -> nix::Result<OwnedFd> {
        let mut resolve = ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS;
        if no_links {
            resolve |= ResolveFlag::RESOLVE_NO_SYMLINKS;
        }
        let how = OpenHow::new()
            .flags(dir_flags() | OFlag::O_CLOEXEC)
            .resolve(resolve);
        let fd = openat2(self.fd.as_raw_fd(), rel, how)?;
        // SAFETY: openat2 just returned this descriptor; the OwnedFd is its only owner.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// Create the missing directories of `dir` (0755), component by component; returns the
    /// last one and whether this call created it. `no_links` as for [`Root::open_dir`];
    /// `..` is refused. On failure, the path reached so far comes with the error.
    fn make_dirs(&self, dir: &str, no_links: bool) -> Result<(OwnedFd, bool), (String, Errno)> {
        let mut created = false;
        let mut so_far = String::new();
        let mut parent = self
            .open_dir(".", no_links)
            .map_err(|e| (".".to_string(), e))?;
        for comp in dir.split('/').filter(|c| !c.is_empty() && *c != ".") {
            if comp == ".." {
                return Err((dir.to_string(), Errno::EINVAL));
            }
            if !so_far.is_empty() {
                so_far.push('/');
            }
            so_far.push_str(comp);
            let at = |e| (so_far.clone(), e);
            parent = match self.open_dir(&so_far, no_links) {
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
                        Err(e) => return Err(at(e)),
                    }
                    created = true;
                    self.open_dir(&so_far, no_links).map_err(at)?
                }
                Err(e) => return Err(at(e)),
            };
        }
        Ok((parent, created))
    }

    /// Write `data` to `rel` (created or truncated; directories made as needed), synced.
    pub fn write_file(&self, rel: &str, data: &[u8], a: &Attrs) -> std::io::Result<()> {
        let dir = rel.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
        let (_, created) = self.make_dirs(dir, false).map_err(|(_, e)| e)?;
        if created {
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
        // Non-blocking: a FIFO the image put at this path would otherwise block the open until
        // a reader came, which never happens (the command would stay RUNNING for good).
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_TRUNC | OFlag::O_NONBLOCK;
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
            Err(Errno::ENXIO) => {
                // What O_NONBLOCK gives for a FIFO without a reader.
                return Err(std::io::Error::other(format!(
                    "/{rel} is not a regular file"
                )));
            }
            r => r?,
        };
        let mut file = File::from(fd);
        if !file.metadata()?.is_file() {
            return Err(std::io::Error::other(format!(
                "/{rel} is not a regular file"
            )));
        }
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

    /// The directory `rel` as an `O_PATH` descriptor to mount on, created (0755) where
    /// missing. Every component must be a real directory of the tree: a symbolic link
    /// anywhere in the path is refused (ELOOP), so a mount can never land on a directory of
    /// the ramdisk through the image's links. Mount on `/proc/self/fd/N` of the result.
    pub fn mount_point(&self, rel: &str) -> std::io::Result<OwnedFd> {
        self.make_dirs(rel, true)
            .map(|(fd, _)| fd)
            .map_err(|(p, e)| {
                let why = match e {
                Errno::ELOOP | Errno::ENOTDIR => {
                    "is a symbolic link or not a directory in the image: refused as a mount point"
                        .to_string()
                }
                Errno::EINVAL => "has '..': refused as a mount point".to_string(),
                e => e.to_string(),
            };
                std::io::Error::other(format!("/{p} {why}"))
            })
    }

    /// Read the regular file `rel` (links resolved inside the tree), at most `max` bytes;
    /// `None` when it is missing, not a regular file, or larger.
    pub fn read_file(&self, rel: &str, max: u64) -> Option<Vec<u8>> {
        use std::io::Read;
        // Non-blocking, so a FIFO opens at once (and is then refused as no regular file).
        let fd = open_in(
            &self.fd,
            rel,
            OFlag::O_RDONLY | OFlag::O_NONBLOCK,
            Mode::empty(),
        )
        .ok()?;
        let f = File::from(fd);
        let meta = f.metadata().ok()?;
        if !meta.is_file() || meta.len() > max {
            return None;
        }
        let mut data = Vec::new();
        f.take(max).read_to_end(&mut data).ok()?;
        Some(data)
    }

    /// Whether `rel` is a regular file (links resolved inside the tree).
    pub fn is_file(&self, rel: &str) -> bool {
        open_in(&self.fd, rel, OFlag::O_PATH, Mode::empty())
            .ok()
            .and_then(|fd| nix::sys::stat::fstat(fd.as_raw_fd()).ok())
            .is_some_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFREG)
    }

    /// Walk the tree under `rel` (reached by links resolved inside the tree) without following
    /// any link below it: `visit` gets each directory, then each regular file opened with
    /// O_NOFOLLOW. Links, FIFOs, sockets and device nodes are skipped (and logged): their
    /// content is not the image's. Nesting past 32 levels or more than 100,000 entries is an
    /// error.
    pub fn walk(
        &self,
        rel: &str,
        visit: &mut dyn FnMut(Item) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let start = open_in(
            &self.fd,
            rel,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY,
            Mode::empty(),
        )?;
        let mut seen = 0usize;
        walk_dir(start, String::new(), 0, &mut seen, visit)
    }
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

fn walk_dir(
    dir: OwnedFd,
    path: String,
    depth: usize,
    seen: &mut usize,
    visit: &mut dyn FnMut(Item) -> std::io::Result<()>,
) -> std::io::Result<()> {
    use nix::sys::stat::{fstatat, SFlag};
    if depth > WALK_DEPTH {
        return Err(std::io::Error::other(format!("{path}: nested too deep")));
    }
    // The listing needs its own descriptor (Dir takes ownership and closes it).
    let listing = open_at(&dir, c".", OFlag::O_RDONLY | OFlag::O_DIRECTORY)?;
    let mut names = Vec::new();
    let mut listing = nix::dir::Dir::from_fd(std::os::fd::IntoRawFd::into_raw_fd(listing))?;
    for entry in listing.iter() {
        let entry = entry?;
        let name = entry.file_name().to_owned();
        if name.as_bytes() != b"." && name.as_bytes() != b".." {
            names.push(name);
        }
    }
    names.sort();
    for name in names {
        *seen += 1;
        if *seen > WALK_ENTRIES {
            return Err(std::io::Error::other("more than 100000 entries"));
        }
        let shown = name.to_string_lossy();
        let child = if path.is_empty() {
            shown.to_string()
        } else {
            format!("{path}/{shown}")
        };
        let st = fstatat(
            Some(dir.as_raw_fd()),
            name.as_c_str(),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )?;
        match SFlag::from_bits_truncate(st.st_mode & libc::S_IFMT) {
            SFlag::S_IFDIR => {
                let sub = open_at(&dir, &name, OFlag::O_RDONLY | OFlag::O_DIRECTORY)?;
                visit(Item::Dir(&child))?;
                walk_dir(sub, child, depth + 1, seen, visit)?;
            }
            SFlag::S_IFREG => {
                // Checked again on the descriptor: what was stat'ed is what is read, and a
                // FIFO put there meanwhile cannot block the open.
                let f = File::from(open_at(&dir, &name, OFlag::O_RDONLY | OFlag::O_NONBLOCK)?);
                if f.metadata()?.is_file() {
                    visit(Item::File(&child, f))?;
                }
            }
            kind => {
                tracing::warn!(path = %child, ?kind, "skipped: not a regular file or directory")
            }
        }
    }
    Ok(())
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

    /// A FIFO in an image, where a file is to be written or read: refused at once, never a
    /// command that blocks for good.
    #[test]
    fn fifos_are_refused_without_blocking() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        nix::unistd::mkfifo(&root.join("etc/motd"), Mode::from_bits_truncate(0o644)).unwrap();
        let r = Root::open(&root).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let r2 = Root::open(&root).unwrap();
        std::thread::spawn(move || {
            let w = r2.write_file("etc/motd", b"x", &Attrs::default());
            let _ = tx.send(w.map_err(|e| e.to_string()));
        });
        let w = rx
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("writing onto a FIFO blocked");
        assert!(w.unwrap_err().contains("not a regular file"));
        let t0 = std::time::Instant::now();
        assert_eq!(r.read_file("etc/motd", 1 << 20), None);
        assert!(t0.elapsed() < std::time::Duration::from_secs(2));
    }

    #[test]
    fn walks_and_reads_never_leave_the_tree() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        let canary = t.path().join("canary");
        std::fs::write(&canary, "HOST-SECRET").unwrap();
        let efi = root.join("boot/efi/EFI/debian");
        std::fs::create_dir_all(&efi).unwrap();
        std::fs::write(efi.join("grubx64.efi"), "loader").unwrap();
        std::os::unix::fs::symlink(&canary, efi.join("abs-link")).unwrap();
        std::os::unix::fs::symlink("../../../../../canary", efi.join("rel-link")).unwrap();
        std::os::unix::fs::symlink(t.path(), root.join("boot/efi/EFI/dirlink")).unwrap();
        nix::unistd::mkfifo(&efi.join("fifo"), Mode::from_bits_truncate(0o644)).unwrap();
        let r = Root::open(&root).unwrap();
        let mut got = Vec::new();
        r.walk("boot/efi/EFI", &mut |item| {
            match item {
                Item::Dir(d) => got.push(format!("dir {d}")),
                Item::File(f, mut file) => {
                    let mut s = String::new();
                    std::io::Read::read_to_string(&mut file, &mut s)?;
                    got.push(format!("file {f} {s}"));
                }
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(got, vec!["dir debian", "file debian/grubx64.efi loader"]);
        // Reads resolve links inside the tree: the absolute link points at a file the image
        // does not have.
        assert_eq!(r.read_file("boot/efi/EFI/debian/abs-link", 1 << 20), None);
        assert_eq!(
            r.read_file("boot/efi/EFI/debian/grubx64.efi", 1 << 20)
                .as_deref(),
            Some(&b"loader"[..])
        );
        assert_eq!(r.read_file("boot/efi/EFI/debian/grubx64.efi", 3), None);
        assert!(
            r.is_file("boot/efi/EFI/debian/grubx64.efi")
                && !r.is_file("boot/efi/EFI/debian/abs-link")
        );
        // Mount points: created inside, symlinked ones refused.
        let fd = r.mount_point("run/new/point").unwrap();
        assert!(root.join("run/new/point").is_dir());
        drop(fd);
        std::os::unix::fs::symlink("/etc", root.join("boot/efi2")).unwrap();
        let e = r.mount_point("boot/efi2").unwrap_err().to_string();
        assert!(e.contains("refused"), "{e}");
        std::os::unix::fs::symlink("/", root.join("sys")).unwrap();
        assert!(r.mount_point("sys/firmware").is_err());
        assert!(r.mount_point("../x").is_err());
    }
}
