//! Virtual-media boots (`boot_method=vmedia`), as Ironic's Redfish virtual-media boot sets them up:
//!
//! 1. agent config files on the boot ISO (labelled `config-2` or `vmedia_boot_iso`) are copied
//!    into `/etc/ironic-python-agent{,.d}/` (for example the API CA and `ironic-tls.conf`);
//! 2. `parameters.txt` on the small vfat image labelled `ir-vfd-dev` is read with the kernel
//!    command-line rules, and its values override the command line.
//!
//! Devices are found from sysfs, their labels read from the ISO9660 / FAT superblocks and
//! their files read in user space (cdfs, fatfs), so this works in a ramdisk with no udev, no
//! util-linux and no vfat/iso9660 in the kernel.

use std::collections::HashMap;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::cmdline::parse_params;
use super::ConfigError;
use crate::fsread::iso9660::Iso as Iso9660;

const FOUR_GIB: u64 = 4 << 30;

/// A block device that may be virtual media, with the label read from its superblock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub dev: PathBuf,
    pub label: String,
    pub fstype: &'static str,
}

/// What the virtual media gave: the parameters (empty when there is no parameters device, as
/// usual: Ironic puts them on the ISO's kernel command line) and what happened, for the log
/// (this runs before logging is set up).
#[derive(Debug, Default)]
pub struct Loaded {
    pub params: HashMap<String, String>,
    pub notes: Vec<String>,
}

fn is_boot_iso(c: &Candidate) -> bool {
    c.label.eq_ignore_ascii_case("config-2") || c.label.eq_ignore_ascii_case("vmedia_boot_iso")
}

/// Run both vmedia steps. The boot ISO is waited for up to `wait`: the CD's drivers may still
/// be loading when the agent starts, and without the CA on it the agent cannot verify Ironic.
pub fn load(
    etc_dir: &Path,
    allow_loop: bool,
    wait: std::time::Duration,
) -> Result<Loaded, ConfigError> {
    let start = std::time::Instant::now();
    let mut found = scan(Path::new("/sys/class/block"), allow_loop);
    while !found.iter().any(is_boot_iso) && start.elapsed() < wait {
        std::thread::sleep(std::time::Duration::from_millis(100));
        found = scan(Path::new("/sys/class/block"), allow_loop);
    }
    let mut out = Loaded::default();
    match found.iter().find(|c| is_boot_iso(c)) {
        Some(iso) => {
            let copied = copy_agent_config(open_medium(iso)?.as_ref(), etc_dir)?;
            out.notes.push(format!(
                "virtual media {} ({}) after {:.1} s: agent configuration copied: {}",
                iso.dev.display(),
                iso.label,
                start.elapsed().as_secs_f64(),
                if copied.is_empty() {
                    "none on it".to_string()
                } else {
                    copied.join(", ")
                }
            ));
        }
        None => out.notes.push(format!(
            "boot_method=vmedia but no ISO labelled config-2 or vmedia_boot_iso appeared within {:.0} s",
            wait.as_secs_f64()
        )),
    }
    if let Some(dev) = found
        .iter()
        .find(|c| c.label.eq_ignore_ascii_case("ir-vfd-dev"))
    {
        out.params = read_parameters(open_medium(dev)?.as_ref())?;
        out.notes.push(format!(
            "parameters read from {} (ir-vfd-dev): {}",
            dev.dev.display(),
            {
                let mut k: Vec<&str> = out.params.keys().map(String::as_str).collect();
                k.sort_unstable();
                k.join(", ")
            }
        ));
    }
    Ok(out)
}

/// `openstack/latest/network_data.json` from the boot ISO (Ironic writes the node's
/// `network_data` there), waiting up to `wait` for the ISO. Only virtual media is read: a
/// `config-2` partition on a disk may be a former tenant's config drive.
pub fn network_data(
    allow_loop: bool,
    wait: std::time::Duration,
) -> Result<Option<(String, Vec<u8>)>, ConfigError> {
    let start = std::time::Instant::now();
    let iso = loop {
        let found = scan(Path::new("/sys/class/block"), allow_loop);
        if let Some(iso) = found.into_iter().find(is_boot_iso) {
            break iso;
        }
        if start.elapsed() >= wait {
            return Ok(None);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let files = open_medium(&iso)?
        .files("openstack/latest")
        .map_err(ConfigError::Vmedia)?;
    Ok(files
        .into_iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("network_data.json"))
        .map(|(_, data)| {
            (
                format!("{}:openstack/latest/network_data.json", iso.dev.display()),
                data,
            )
        }))
}

/// List whole block devices that look like virtual media (a CD-ROM, or a USB disk under 4 GiB;
/// loop devices only when allowed) and carry a readable ISO9660 or FAT label.
pub fn scan(sys_class_block: &Path, allow_loop: bool) -> Vec<Candidate> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(sys_class_block) else {
        return out;
    };
    let mut names: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for name in names {
        let sys = sys_class_block.join(&name);
        if sys.join("partition").exists() {
            continue;
        }
        let size = fs::read_to_string(sys.join("size"))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0)
            * 512;
        let device_link = fs::read_link(sys.join("device"))
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let is_rom = name.starts_with("sr");
        let is_small_usb = device_link.contains("/usb") && size > 0 && size < FOUR_GIB;
        let is_loop = allow_loop && name.starts_with("loop") && size > 0;
        if !(is_rom || is_small_usb || is_loop) {
            continue;
        }
        let dev = PathBuf::from("/dev").join(&name);
        if let Some((label, fstype)) = probe_label(&dev) {
            out.push(Candidate { dev, label, fstype });
        }
    }
    out
}

/// Read an ISO9660 volume id or a FAT volume label from the device's first sectors.
pub fn probe_label(dev: &Path) -> Option<(String, &'static str)> {
    let mut f = fs::File::open(dev).ok()?;
    let mut boot = [0u8; 512];
    f.read_exact(&mut boot).ok()?;
    let mut pvd = [0u8; 2048];
    if f.seek(SeekFrom::Start(0x8000)).is_ok()
        && f.read_exact(&mut pvd).is_ok()
        && &pvd[1..6] == b"CD001"
    {
        return Some((trim_label(&pvd[40..72]), "iso9660"));
    }
    if boot[510] == 0x55 && boot[511] == 0xaa {
        if &boot[0x52..0x57] == b"FAT32" {
            return Some((trim_label(&boot[0x47..0x52]), "vfat"));
        }
        if &boot[0x36..0x39] == b"FAT" {
            return Some((trim_label(&boot[0x2b..0x36]), "vfat"));
        }
    }
    None
}

fn trim_label(b: &[u8]) -> String {
    String::from_utf8_lossy(b)
        .trim_end_matches([' ', '\0'])
        .to_string()
}

/// Read the files the agent needs straight from the medium, in user space: a deploy ramdisk's
/// kernel may lack vfat or iso9660, and nothing has to be mounted and cleaned up.
trait Medium {
    /// Files directly inside `dir` ("" = root): (name, contents). Missing dir: empty list.
    fn files(&self, dir: &str) -> Result<Vec<(String, Vec<u8>)>, String>;
}

/// Small files only: the agent config and parameters are a few KiB.
const MAX_FILE: u64 = 1 << 20;

struct Iso(std::cell::RefCell<Iso9660<fs::File>>);

impl Medium for Iso {
    fn files(&self, dir: &str) -> Result<Vec<(String, Vec<u8>)>, String> {
        let mut iso = self.0.borrow_mut();
        let Some(entries) = iso.list(dir).map_err(|e| e.to_string())? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for e in entries
            .iter()
            .filter(|e| !e.is_dir && u64::from(e.size) <= MAX_FILE)
        {
            out.push((
                e.name.clone(),
                iso.read_file(e, MAX_FILE as u32)
                    .map_err(|e| e.to_string())?,
            ));
        }
        Ok(out)
    }
}

/// Read-only access for fatfs: any write attempt fails instead of touching the medium.
struct ReadOnly(fs::File);

impl Read for ReadOnly {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}
impl Seek for ReadOnly {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        self.0.seek(pos)
    }
}
impl std::io::Write for ReadOnly {
    fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
        Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "virtual media is read only",
        ))
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct Fat(fatfs::FileSystem<ReadOnly>);

impl Medium for Fat {
    fn files(&self, dir: &str) -> Result<Vec<(String, Vec<u8>)>, String> {
        let root = self.0.root_dir();
        let d = if dir.is_empty() {
            root
        } else {
            match root.open_dir(dir) {
                Ok(d) => d,
                Err(_) => return Ok(Vec::new()),
            }
        };
        let mut out = Vec::new();
        for e in d.iter() {
            let e = e.map_err(|e| e.to_string())?;
            if e.is_file() && e.len() <= MAX_FILE {
                let mut data = Vec::new();
                e.to_file()
                    .read_to_end(&mut data)
                    .map_err(|e| e.to_string())?;
                out.push((e.file_name(), data));
            }
        }
        Ok(out)
    }
}

fn open_medium(c: &Candidate) -> Result<Box<dyn Medium>, ConfigError> {
    let err =
        |e: String| ConfigError::Vmedia(format!("reading {} ({}): {e}", c.dev.display(), c.fstype));
    let f = fs::File::open(&c.dev).map_err(|e| err(e.to_string()))?;
    Ok(match c.fstype {
        "iso9660" => Box::new(Iso(std::cell::RefCell::new(
            Iso9660::open(f).map_err(|e| err(e.to_string()))?,
        ))),
        _ => Box::new(Fat(fatfs::FileSystem::new(
            ReadOnly(f),
            fatfs::FsOptions::new().update_accessed_date(false),
        )
        .map_err(|e| err(e.to_string()))?)),
    })
}

fn read_parameters(m: &dyn Medium) -> Result<HashMap<String, String>, ConfigError> {
    let files = m.files("").map_err(ConfigError::Vmedia)?;
    let (_, data) = files
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("parameters.txt"))
        .ok_or_else(|| ConfigError::Vmedia("no parameters.txt on the ir-vfd-dev device".into()))?;
    Ok(parse_params(&String::from_utf8_lossy(data)))
}

/// Copy `etc/ironic-python-agent/*` and `etc/ironic-python-agent.d/*` from the medium.
/// Copy `etc/ironic-python-agent{,.d}/*` from the medium; returns the files copied.
fn copy_agent_config(m: &dyn Medium, etc_dir: &Path) -> Result<Vec<String>, ConfigError> {
    let mut copied = Vec::new();
    for sub in ["ironic-python-agent", "ironic-python-agent.d"] {
        let files = m
            .files(&format!("etc/{sub}"))
            .map_err(ConfigError::Vmedia)?;
        if files.is_empty() {
            continue;
        }
        let dst = etc_dir.join(sub);
        fs::create_dir_all(&dst)
            .map_err(|e| ConfigError::Vmedia(format!("mkdir {}: {e}", dst.display())))?;
        for (name, data) in files {
            // Names come from the medium: never let one escape the target directory.
            if name.contains('/') || name == ".." || name == "." {
                continue;
            }
            let to = dst.join(&name);
            fs::write(&to, data)
                .map_err(|e| ConfigError::Vmedia(format!("writing {}: {e}", to.display())))?;
            copied.push(format!("etc/{sub}/{name}"));
        }
    }
    Ok(copied)
}

/// The `cafile` of `[DEFAULT]` in `ironic-python-agent.d/*.conf` (Ironic writes
/// `ironic-tls.conf` pointing at the API CA it put on the ISO).
pub fn cafile_from_conf(etc_dir: &Path) -> Option<PathBuf> {
    default_option(etc_dir, "cafile").map(PathBuf::from)
}

/// An option of `[DEFAULT]` in `ironic-python-agent.d/*.conf` (IPA's oslo.config files; the
/// last file, in name order, that sets it wins).
pub fn default_option(etc_dir: &Path, key: &str) -> Option<String> {
    let dir = etc_dir.join("ironic-python-agent.d");
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "conf"))
        .collect();
    files.sort();
    let mut found = None;
    for f in files {
        let Ok(text) = fs::read_to_string(&f) else {
            continue;
        };
        let mut section = String::new();
        for line in text.lines().map(str::trim) {
            if line.starts_with('[') && line.ends_with(']') {
                section = line[1..line.len() - 1].trim().to_string();
            } else if section == "DEFAULT" {
                if let Some((k, v)) = line.split_once('=') {
                    if k.trim() == key && !v.trim().is_empty() {
                        found = Some(v.trim().to_string());
                    }
                }
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cafile_from_conf_fragments() {
        let d = tempfile::tempdir().unwrap();
        let conf = d.path().join("ironic-python-agent.d");
        fs::create_dir_all(&conf).unwrap();
        fs::write(
            conf.join("ironic-tls.conf"),
            "[DEFAULT]\ncafile = /etc/ironic-python-agent/ironic.crt\n[other]\ncafile=/nope\n",
        )
        .unwrap();
        assert_eq!(
            cafile_from_conf(d.path()),
            Some(PathBuf::from("/etc/ironic-python-agent/ironic.crt"))
        );
    }

    #[test]
    fn probes_fat_and_iso_labels() {
        let d = tempfile::tempdir().unwrap();
        let fat = d.path().join("fat.img");
        let mut b = vec![0u8; 64 * 1024];
        b[0x36..0x39].copy_from_slice(b"FAT");
        b[0x2b..0x36].copy_from_slice(b"IR-VFD-DEV ");
        b[510] = 0x55;
        b[511] = 0xaa;
        fs::write(&fat, &b).unwrap();
        assert_eq!(probe_label(&fat), Some(("IR-VFD-DEV".into(), "vfat")));

        let iso = d.path().join("cd.iso");
        let mut b = vec![0u8; 0x8000 + 2048];
        b[0x8001..0x8006].copy_from_slice(b"CD001");
        b[0x8028..0x8048].copy_from_slice(b"config-2                        ");
        fs::write(&iso, &b).unwrap();
        assert_eq!(probe_label(&iso), Some(("config-2".into(), "iso9660")));

        fs::write(d.path().join("none"), vec![0u8; 4096]).unwrap();
        assert_eq!(probe_label(&d.path().join("none")), None);
    }
}
