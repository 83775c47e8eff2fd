//! Block devices from sysfs (plus udev's database and `/dev/disk/by-path` when present), in
//! the inventory's shape, and the root-device candidates drawn from them. No lsblk.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::hints::HintTarget;

/// Where discovery looks; tests point these at fixture trees.
#[derive(Debug, Clone, PartialEq)]
pub struct Sources {
    pub sys_block: PathBuf,
    pub dev_disk: PathBuf,
    pub udev_data: PathBuf,
    pub dev: PathBuf,
}

impl Default for Sources {
    fn default() -> Self {
        Sources {
            sys_block: "/sys/block".into(),
            dev_disk: "/dev/disk".into(),
            udev_data: "/run/udev/data".into(),
            dev: "/dev".into(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Disk {
    pub name: String,
    pub model: Option<String>,
    pub size: u64,
    pub rotational: bool,
    pub wwn: Option<String>,
    pub serial: Option<String>,
    pub vendor: Option<String>,
    pub wwn_with_extension: Option<String>,
    pub wwn_vendor_extension: Option<String>,
    pub hctl: Option<String>,
    pub by_path: Option<String>,
    pub logical_sectors: u64,
    pub physical_sectors: u64,
    pub tran: Option<String>,
    // Beyond IPA's keys: what an operator needs to understand why a disk was or was not used.
    pub removable: bool,
    pub read_only: bool,
    /// "disk", "raid" (md) or "mpath" (a device-mapper multipath map of a SAN LUN).
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// For a multipath disk: the paths to it (`/dev/sdX`), which are not listed as disks.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// The SCSI/NVMe WWID sysfs reports (`naa.…`): paths to one LUN share it.
    #[serde(skip)]
    pub wwid: Option<String>,
    /// The partition table already on the disk (`gpt`, `dos`), as libblkid reads it.
    pub partition_table: Option<String>,
    /// Virtual media the BMC attached (the `ir-vfd-dev` parameters image, the boot or config
    /// ISO): never a deploy target or erased unless a hint names it.
    #[serde(skip)]
    pub virtual_media: bool,
    /// The md arrays this disk (or one of its partitions) is a member of, as device paths
    /// (`/sys/block/X/holders`); such a disk is never a deploy target or erased on its own.
    #[serde(rename = "holders", skip_serializing_if = "Vec::is_empty")]
    pub md_holders: Vec<String>,
    /// For an md array: the disks its members live on, so an operator (and inspection rules)
    /// can see which physical disks carry which array.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<String>,
    /// Every serial and WWN known for the disk (sysfs and udev); hints match any of them.
    #[serde(skip)]
    pub all_serials: Vec<String>,
    #[serde(skip)]
    pub all_wwns: Vec<String>,
}

impl Disk {
    pub fn hint_target(&self) -> HintTarget {
        HintTarget {
            name: self.name.clone(),
            size: self.size,
            model: self.model.clone(),
            vendor: self.vendor.clone(),
            serial: self.all_serials.clone(),
            wwn: self.all_wwns.clone(),
            wwn_with_extension: self.wwn_with_extension.clone(),
            wwn_vendor_extension: self.wwn_vendor_extension.clone(),
            rotational: self.rotational,
            hctl: self.hctl.clone(),
            by_path: self.by_path.clone(),
            tran: self.tran.clone(),
        }
    }
}

use super::read_trim;

fn read_u64(p: &Path) -> Option<u64> {
    read_trim(p).and_then(|s| s.parse().ok())
}

/// `E:KEY=VALUE` lines of udev's database entry for a block device.
fn udev_props(udev_data: &Path, devno: Option<&str>) -> HashMap<String, String> {
    let Some(devno) = devno else {
        return HashMap::new();
    };
    fs::read_to_string(udev_data.join(format!("b{devno}")))
        .map(|t| {
            t.lines()
                .filter_map(|l| l.strip_prefix("E:"))
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// The SCSI unit serial number from VPD page 0x80 (header of 4 bytes, then ASCII).
fn vpd_serial(dev: &Path) -> Option<String> {
    let b = fs::read(dev.join("vpd_pg80")).ok()?;
    let len = *b.get(3)? as usize;
    let s = String::from_utf8_lossy(b.get(4..4 + len)?)
        .trim()
        .to_string();
    (!s.is_empty()).then_some(s)
}

/// sysfs `wwid` (`naa.5000…`, `eui.…`, `t10.…`) to lsblk's `0x…` form where it is an NAA/EUI id.
fn wwn_from_wwid(wwid: &str) -> String {
    match wwid.split_once('.') {
        Some(("naa" | "eui", hex)) => format!("0x{}", hex.to_lowercase()),
        _ => wwid.to_string(),
    }
}

/// The transport, like lsblk's TRAN, from where the device sits in the sysfs device tree.
pub fn transport(device_path: &str) -> Option<String> {
    let t = if device_path.contains("/usb") {
        "usb"
    } else if device_path.contains("/nvme") {
        "nvme"
    } else if device_path.contains("/ata") {
        "sata"
    } else if device_path.contains("/end_device-") {
        "sas"
    } else if device_path.contains("/rport-") {
        "fc"
    } else if device_path.contains("/session") {
        "iscsi"
    } else if device_path.contains("/mmc") {
        "mmc"
    } else if device_path.contains("/virtio") {
        "virtio"
    } else {
        return None;
    };
    Some(t.to_string())
}

/// Map each `/dev/X` to its first `/dev/disk/by-path/…` link (stable, sorted).
fn by_path_links(src: &Sources) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for (target, link) in links(&src.dev_disk.join("by-path")) {
        out.entry(target).or_insert(link);
    }
    out
}

/// WWNs named by `/dev/disk/by-id/wwn-0x…` links, per `/dev/X` (udev makes these even where
/// its database is not readable).
fn by_id_wwns(src: &Sources) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for (target, link) in links(&src.dev_disk.join("by-id")) {
        let name = link.rsplit('/').next().unwrap_or_default();
        if let Some(w) = name.strip_prefix("wwn-").filter(|w| !w.contains("-part")) {
            out.entry(target).or_default().push(w.to_string());
        }
    }
    out
}

/// (canonical target, link path) of every symlink in `dir`, sorted by link name.
fn links(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return out;
    };
    let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    paths.sort();
    for l in paths {
        if let Ok(target) = fs::canonicalize(&l) {
            out.push((target.display().to_string(), l.display().to_string()));
        }
    }
    out
}

/// Why a block device is not in the list at all (never a disk for deploying).
fn excluded_kind(name: &str, allow_loop: bool) -> bool {
    ["ram", "zram", "fd", "sr", "dm-", "nbd", "mtdblock", "zd"]
        .iter()
        .any(|p| name.starts_with(p))
        || (name.starts_with("loop") && !allow_loop)
}

/// The md arrays built on disk `d` (`/sys/block/<name>`) or on its partitions: software RAID
/// puts its members in partitions, whose `holders` name the arrays.
fn md_holders(d: &Path, name: &str) -> Vec<String> {
    let holders = |dir: &Path| -> Vec<String> {
        fs::read_dir(dir.join("holders"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with("md"))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut out = holders(d);
    if let Ok(rd) = fs::read_dir(d) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with(name) {
                out.extend(holders(&e.path()));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Whether `/sys/block/<name>` is a device-mapper multipath map (multipathd's `mpath-<wwid>`).
fn is_multipath_map(d: &Path) -> bool {
    read_trim(&d.join("dm/uuid")).is_some_and(|u| u.starts_with("mpath-"))
}

/// The devices under a device-mapper map (`slaves`), sorted.
fn slaves(d: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(d.join("slaves"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// One disk per SAN LUN. A multipath map (multipathd running) stands for its paths, which
/// leave the list; paths that share a WWID with no map over them (no multipath-tools) are
/// folded into the first, the rest named in its `paths`, so neither the root device nor an
/// erase ever picks the same LUN twice or a passive path.
fn fold_multipath(mut disks: Vec<Disk>, src: &Sources) -> Vec<Disk> {
    let dev_of = |n: &str| src.dev.join(n).display().to_string();
    let mut taken: Vec<String> = Vec::new();
    for d in disks.iter_mut().filter(|d| d.kind == "mpath") {
        let base = d.name.rsplit('/').next().unwrap_or_default().to_string();
        d.paths = slaves(&src.sys_block.join(&base))
            .iter()
            .map(|s| dev_of(s))
            .collect();
        taken.extend(d.paths.iter().cloned());
    }
    disks.retain(|d| !taken.contains(&d.name));
    let mut out: Vec<Disk> = Vec::new();
    for d in disks {
        // Only globally unique ids (NAA, EUI-64) of disks of one size: a T10 vendor id may
        // repeat across different disks of one model.
        let unique = d
            .wwid
            .as_deref()
            .filter(|w| w.starts_with("naa.") || w.starts_with("eui."));
        let same = unique.and_then(|w| {
            out.iter_mut()
                .find(|o| o.kind == "disk" && o.size == d.size && o.wwid.as_deref() == Some(w))
        });
        match same {
            Some(first) => {
                tracing::warn!(disk = %first.name, path = %d.name, wwid = ?d.wwid, "another path to the same LUN (no multipath map over them: multipath-tools not running); listed once");
                if first.paths.is_empty() {
                    first.paths.push(first.name.clone());
                }
                first.paths.push(d.name);
            }
            None => out.push(d),
        }
    }
    out
}

/// Every whole disk (and md array, and multipath map) in the order the kernel names them.
pub fn discover(src: &Sources, allow_loop: bool) -> Vec<Disk> {
    let found = discover_once(src, allow_loop);
    // Paths of one LUN with no map over them while multipath-tools run: the maps were made
    // before the last path was scanned, and the minimal ramdisk has no udev to tell
    // multipathd of it. Make the maps now and look again (only on the machine's own sysfs).
    let unmapped = found.iter().any(|d| d.kind == "disk" && d.paths.len() > 1);
    if unmapped && *src == Sources::default() && crate::system::multipath::make_maps() {
        return discover_once(src, allow_loop);
    }
    found
}

fn discover_once(src: &Sources, allow_loop: bool) -> Vec<Disk> {
    let Ok(entries) = fs::read_dir(&src.sys_block) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let by_path = by_path_links(src);
    let by_id = by_id_wwns(src);
    let mut out = Vec::new();
    for name in names {
        let d = src.sys_block.join(&name);
        let mpath = is_multipath_map(&d);
        if excluded_kind(&name, allow_loop) && !mpath {
            continue;
        }
        let size = read_u64(&d.join("size")).unwrap_or(0) * 512;
        if size == 0 {
            continue;
        }
        // A multipath map has no device of its own: its first path tells the model, serial,
        // WWN, transport and by-path link.
        let path_dir = if mpath {
            slaves(&d)
                .first()
                .map_or_else(|| d.clone(), |s| src.sys_block.join(s))
        } else {
            d.clone()
        };
        let dev = path_dir.join("device");
        let devno = read_trim(&d.join("dev"));
        let udev = udev_props(&src.udev_data, devno.as_deref());
        let device_path = fs::canonicalize(&dev)
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let sys_wwid = read_trim(&dev.join("wwid")).or_else(|| read_trim(&path_dir.join("wwid")));
        let mut all_serials: Vec<String> = [
            read_trim(&dev.join("serial")),
            read_trim(&d.join("serial")),
            vpd_serial(&dev),
            udev.get("ID_SERIAL_SHORT").cloned(),
            udev.get("ID_SERIAL").cloned(),
        ]
        .into_iter()
        .flatten()
        .collect();
        all_serials.dedup();
        let wwn = udev
            .get("ID_WWN")
            .cloned()
            .or_else(|| sys_wwid.as_deref().map(wwn_from_wwid));
        let dev_name = src.dev.join(&name).display().to_string();
        let probed = super::probe::probe(Path::new(&dev_name)).ok();
        let link_name = path_dir
            .file_name()
            .map_or_else(|| name.clone(), |n| n.to_string_lossy().into_owned());
        let canonical_dev = fs::canonicalize(src.dev.join(&link_name))
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| src.dev.join(&link_name).display().to_string());
        let id_wwns = by_id.get(&canonical_dev).cloned().unwrap_or_default();
        let wwn = wwn.or_else(|| id_wwns.first().cloned());
        let mut all_wwns: Vec<String> = [
            wwn.clone(),
            udev.get("ID_WWN_WITH_EXTENSION").cloned(),
            sys_wwid.clone(),
        ]
        .into_iter()
        .flatten()
        .chain(id_wwns)
        .collect();
        all_wwns.sort();
        all_wwns.dedup();
        out.push(Disk {
            model: read_trim(&dev.join("model"))
                .or_else(|| udev.get("ID_MODEL").map(|m| m.replace('_', " "))),
            size,
            rotational: read_trim(&d.join("queue/rotational")).as_deref() == Some("1"),
            serial: all_serials.first().cloned(),
            vendor: read_trim(&dev.join("vendor")).or_else(|| udev.get("ID_VENDOR").cloned()),
            wwn_with_extension: udev
                .get("ID_WWN_WITH_EXTENSION")
                .cloned()
                .or_else(|| wwn.clone()),
            wwn_vendor_extension: udev.get("ID_WWN_VENDOR_EXTENSION").cloned(),
            wwn,
            hctl: fs::read_dir(dev.join("scsi_device"))
                .ok()
                .and_then(|mut e| e.next())
                .and_then(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned()),
            by_path: by_path.get(&canonical_dev).cloned(),
            logical_sectors: read_u64(&d.join("queue/logical_block_size")).unwrap_or(512),
            physical_sectors: read_u64(&d.join("queue/physical_block_size")).unwrap_or(512),
            tran: transport(&device_path),
            removable: read_trim(&d.join("removable")).as_deref() == Some("1"),
            read_only: read_trim(&d.join("ro")).as_deref() == Some("1"),
            kind: if mpath {
                "mpath"
            } else if d.join("md").exists() {
                "raid"
            } else {
                "disk"
            },
            paths: Vec::new(),
            wwid: sys_wwid.clone(),
            partition_table: probed.as_ref().and_then(|p| p.pt_type.clone()),
            virtual_media: probed.as_ref().is_some_and(|p| {
                p.pt_type.is_none()
                    && p.label.as_deref().is_some_and(|l| {
                        ["ir-vfd-dev", "config-2", "vmedia_boot_iso"]
                            .iter()
                            .any(|v| l.eq_ignore_ascii_case(v))
                    })
            }),
            md_holders: md_holders(&d, &name)
                .into_iter()
                .map(|h| src.dev.join(h).display().to_string())
                .collect(),
            all_serials,
            all_wwns,
            name: dev_name,
            members: Vec::new(),
        });
    }
    // An array's members are the disks that name it as a holder (members sit in partitions,
    // so the array's own `slaves` names partitions, not disks).
    let holders: Vec<(String, Vec<String>)> = out
        .iter()
        .map(|d| (d.name.clone(), d.md_holders.clone()))
        .collect();
    for array in out.iter_mut().filter(|d| d.kind == "raid") {
        array.members = holders
            .iter()
            .filter(|(_, hs)| hs.contains(&array.name))
            .map(|(n, _)| n.clone())
            .collect();
    }
    fold_multipath(out, src)
}

#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;

    /// Build a fake sysfs/dev tree: SATA SSD, NVMe, USB stick, md RAID, 4Kn disk, read-only
    /// disk, plus devices that are never disks (ram, loop, CD-ROM, empty).
    pub fn tree(root: &Path) -> Sources {
        let src = Sources {
            sys_block: root.join("sys/block"),
            dev_disk: root.join("dev/disk"),
            udev_data: root.join("run/udev/data"),
            dev: root.join("dev"),
        };
        let devices = root.join("sys/devices");
        let mk = |name: &str, gib: u64, lbs: u64, devpath: &str, files: &[(&str, &str)]| {
            let d = src.sys_block.join(name);
            fs::create_dir_all(d.join("queue")).unwrap();
            fs::write(d.join("size"), format!("{}\n", gib * (1 << 30) / 512)).unwrap();
            fs::write(d.join("queue/logical_block_size"), format!("{lbs}\n")).unwrap();
            fs::write(d.join("queue/physical_block_size"), format!("{lbs}\n")).unwrap();
            fs::write(d.join("queue/rotational"), "0\n").unwrap();
            fs::write(d.join("ro"), "0\n").unwrap();
            fs::write(d.join("removable"), "0\n").unwrap();
            if !devpath.is_empty() {
                let target = devices.join(devpath);
                fs::create_dir_all(&target).unwrap();
                std::os::unix::fs::symlink(&target, d.join("device")).unwrap();
            }
            for (f, v) in files {
                let p = d.join(f);
                fs::create_dir_all(p.parent().unwrap()).unwrap();
                fs::write(p, v).unwrap();
            }
            fs::create_dir_all(&src.dev).unwrap();
            fs::write(src.dev.join(name), "").unwrap();
        };
        mk(
            "sda",
            500,
            512,
            "pci0000:00/0000:00:1f.2/ata1/host0/target0:0:0/0:0:0:0",
            &[
                ("device/model", "Samsung SSD 860\n"),
                ("device/vendor", "ATA     \n"),
                ("device/wwid", "naa.5002538E40A1B2C3\n"),
                ("device/scsi_device/0:0:0:0/x", ""),
                ("dev", "8:0\n"),
            ],
        );
        mk(
            "nvme0n1",
            1000,
            512,
            "pci0000:00/0000:01:00.0/nvme/nvme0",
            &[
                ("device/model", "SAMSUNG MZQL21T9\n"),
                ("device/serial", "S64GNE0R123456\n"),
                ("wwid", "eui.36344730526012340025384500000001\n"),
            ],
        );
        mk(
            "sdb",
            16,
            512,
            "pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/host6/target6:0:0/6:0:0:0",
            &[
                ("device/model", "Cruzer Blade\n"),
                ("removable", "1\n"),
                ("device/scsi_device/6:0:0:0/x", ""),
            ],
        );
        mk("md0", 200, 512, "", &[("md/level", "raid1\n")]);
        mk(
            "sdc",
            2000,
            4096,
            "pci0000:00/0000:00:1f.2/ata2/host1/target1:0:0/1:0:0:0",
            &[
                ("device/model", "WDC WD20 4Kn\n"),
                ("queue/rotational", "1\n"),
                ("device/scsi_device/1:0:0:0/x", ""),
                // Its first partition is a member of md0 (software RAID uses partitions).
                ("sdc1/partition", "1\n"),
                ("sdc1/holders/md0", ""),
            ],
        );
        mk(
            "sdd",
            100,
            512,
            "pci0000:00/0000:00:1f.2/ata3/host2/target2:0:0/2:0:0:0",
            &[("ro", "1\n")],
        );
        mk("ram0", 1, 512, "", &[]);
        mk("loop0", 8, 512, "", &[]);
        mk("sr0", 1, 2048, "pci0000:00/0000:00:1f.2/ata4", &[]);
        mk("sde", 0, 512, "pci0000:00/0000:00:1f.2/ata5", &[]);
        // udev data for sda: a serial only udev knows and the WWN with extension.
        fs::create_dir_all(&src.udev_data).unwrap();
        fs::write(
            src.udev_data.join("b8:0"),
            "E:ID_SERIAL_SHORT=S3Z9NB0K123\nE:ID_WWN=0x5002538e40a1b2c3\nE:ID_WWN_WITH_EXTENSION=0x5002538e40a1b2c3\n",
        )
        .unwrap();
        fs::create_dir_all(src.dev_disk.join("by-path")).unwrap();
        std::os::unix::fs::symlink(
            src.dev.join("sda"),
            src.dev_disk.join("by-path/pci-0000:00:1f.2-ata-1"),
        )
        .unwrap();
        fs::create_dir_all(src.dev_disk.join("by-id")).unwrap();
        std::os::unix::fs::symlink(
            src.dev.join("sdc"),
            src.dev_disk.join("by-id/wwn-0x50014ee2b5a1c3d4"),
        )
        .unwrap();
        std::os::unix::fs::symlink(
            src.dev.join("sdc"),
            src.dev_disk.join("by-id/ata-WDC_WD20_4Kn_WX123"),
        )
        .unwrap();
        src
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two SAN LUNs with two paths each (virtio-scsi hosts 3 and 4): one under a multipath
    /// map (dm-0, multipathd running), one with no map over its paths.
    fn san(root: &Path) -> Sources {
        let src = fixtures::tree(root);
        let mk = |name: &str, host: u32, wwid: &str, serial: &str| {
            let d = src.sys_block.join(name);
            let target = root.join(format!(
                "sys/devices/pci0000:00/0000:00:0{host}.0/virtio{host}/host{host}/target{host}:0:0/{name}"
            ));
            fs::create_dir_all(target.join(format!("scsi_device/{host}:0:0:0"))).unwrap();
            fs::write(target.join("wwid"), format!("{wwid}\n")).unwrap();
            fs::write(target.join("model"), "SAN LUN\n").unwrap();
            fs::write(target.join("vendor"), "ACME\n").unwrap();
            fs::write(target.join("serial"), format!("{serial}\n")).unwrap();
            fs::create_dir_all(d.join("queue")).unwrap();
            fs::write(d.join("size"), format!("{}\n", 20u64 * (1 << 30) / 512)).unwrap();
            std::os::unix::fs::symlink(&target, d.join("device")).unwrap();
            fs::write(src.dev.join(name), "").unwrap();
        };
        mk("sdf", 3, "naa.600a098038303053453f463045727a41", "LUN-A");
        mk("sdg", 4, "naa.600a098038303053453f463045727a41", "LUN-A");
        mk("sdh", 3, "naa.600a098038303053453f463045727a42", "LUN-B");
        mk("sdi", 4, "naa.600a098038303053453f463045727a42", "LUN-B");
        let dm = src.sys_block.join("dm-0");
        fs::create_dir_all(dm.join("dm")).unwrap();
        fs::create_dir_all(dm.join("slaves/sdf")).unwrap();
        fs::create_dir_all(dm.join("slaves/sdg")).unwrap();
        fs::write(
            dm.join("dm/uuid"),
            "mpath-3600a098038303053453f463045727a41\n",
        )
        .unwrap();
        fs::write(dm.join("size"), format!("{}\n", 20u64 * (1 << 30) / 512)).unwrap();
        fs::write(src.dev.join("dm-0"), "").unwrap();
        // A device-mapper device that is not multipath (LVM) stays out.
        let lv = src.sys_block.join("dm-1");
        fs::create_dir_all(lv.join("dm")).unwrap();
        fs::write(lv.join("dm/uuid"), "LVM-abc\n").unwrap();
        fs::write(lv.join("size"), "2048\n").unwrap();
        src
    }

    #[test]
    fn one_disk_per_san_lun() {
        let d = tempfile::tempdir().unwrap();
        let src = san(d.path());
        let disks = discover(&src, false);
        let names: Vec<String> = disks
            .iter()
            .map(|d| d.name.rsplit('/').next().unwrap().to_string())
            .collect();
        assert_eq!(
            names,
            vec!["dm-0", "md0", "nvme0n1", "sda", "sdb", "sdc", "sdd", "sdh"]
        );
        let get = |n: &str| disks.iter().find(|d| d.name.ends_with(n)).unwrap();
        let m = get("/dm-0");
        assert_eq!(m.kind, "mpath");
        assert_eq!(m.serial.as_deref(), Some("LUN-A"));
        assert_eq!(m.wwn.as_deref(), Some("0x600a098038303053453f463045727a41"));
        assert_eq!(m.model.as_deref(), Some("SAN LUN"));
        assert_eq!(m.tran.as_deref(), Some("virtio"));
        assert_eq!(m.size, 20 << 30);
        let paths: Vec<&str> = m
            .paths
            .iter()
            .map(|p| p.rsplit('/').next().unwrap())
            .collect();
        assert_eq!(paths, vec!["sdf", "sdg"]);
        // No map over sdh and sdi: listed once, as the first path, the other named.
        let b = get("/sdh");
        assert_eq!(b.kind, "disk");
        let paths: Vec<&str> = b
            .paths
            .iter()
            .map(|p| p.rsplit('/').next().unwrap())
            .collect();
        assert_eq!(paths, vec!["sdh", "sdi"]);
        // The inventory shows the paths of a multipath disk, and only then.
        let v = serde_json::to_value(m).unwrap();
        assert_eq!(v["type"], "mpath");
        assert_eq!(v["paths"].as_array().unwrap().len(), 2);
        assert!(serde_json::to_value(get("/sda"))
            .unwrap()
            .get("paths")
            .is_none());
    }

    #[test]
    fn fake_sysfs_every_kind_of_disk() {
        let d = tempfile::tempdir().unwrap();
        let src = fixtures::tree(d.path());
        let disks = discover(&src, false);
        let names: Vec<String> = disks
            .iter()
            .map(|d| d.name.rsplit('/').next().unwrap().to_string())
            .collect();
        assert_eq!(names, vec!["md0", "nvme0n1", "sda", "sdb", "sdc", "sdd"]);
        let get = |n: &str| disks.iter().find(|d| d.name.ends_with(n)).unwrap();
        let sda = get("/sda");
        assert_eq!(sda.model.as_deref(), Some("Samsung SSD 860"));
        assert_eq!(sda.vendor.as_deref(), Some("ATA"));
        assert_eq!(sda.tran.as_deref(), Some("sata"));
        assert_eq!(sda.hctl.as_deref(), Some("0:0:0:0"));
        assert_eq!(sda.wwn.as_deref(), Some("0x5002538e40a1b2c3"));
        assert_eq!(sda.serial.as_deref(), Some("S3Z9NB0K123"));
        assert!(sda
            .by_path
            .as_deref()
            .unwrap()
            .ends_with("by-path/pci-0000:00:1f.2-ata-1"));
        assert_eq!(sda.size, 500 << 30);
        let nvme = get("/nvme0n1");
        assert_eq!(nvme.tran.as_deref(), Some("nvme"));
        assert_eq!(nvme.serial.as_deref(), Some("S64GNE0R123456"));
        assert_eq!(
            nvme.wwn.as_deref(),
            Some("0x36344730526012340025384500000001")
        );
        let usb = get("/sdb");
        assert_eq!((usb.tran.as_deref(), usb.removable), (Some("usb"), true));
        let md0 = get("/md0");
        assert_eq!(md0.kind, "raid");
        let sdc = get("/sdc");
        assert_eq!(
            sdc.md_holders,
            std::slice::from_ref(&md0.name),
            "a partition's array counts"
        );
        assert_eq!(md0.members, std::slice::from_ref(&sdc.name));
        assert!(get("/sda").md_holders.is_empty());
        // The inventory shows both sides; plain disks keep IPA's keys only.
        let md_json = serde_json::to_value(md0).unwrap();
        assert_eq!(md_json["type"], "raid");
        assert_eq!(md_json["members"], serde_json::json!([sdc.name]));
        let sdc_json = serde_json::to_value(sdc).unwrap();
        assert_eq!(sdc_json["holders"], serde_json::json!([md0.name]));
        let sda_json = serde_json::to_value(get("/sda")).unwrap();
        assert!(sda_json.get("holders").is_none() && sda_json.get("members").is_none());
        assert_eq!(
            (sdc.logical_sectors, sdc.physical_sectors, sdc.rotational),
            (4096, 4096, true)
        );
        assert_eq!(
            sdc.wwn.as_deref(),
            Some("0x50014ee2b5a1c3d4"),
            "WWN from /dev/disk/by-id"
        );
        assert!(get("/sdd").read_only);
        assert!(discover(&src, true)
            .iter()
            .any(|d| d.name.ends_with("/loop0")));
    }
}
