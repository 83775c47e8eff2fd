//! Software RAID (Ironic's raid interface `agent`, logical disks with `controller: software`):
//! validate a `target_raid_config`, choose the member disks, lay them out, create the md
//! arrays with mdadm, and delete every array again.
//!
//! Rules (Ironic's and IPA's): one or two logical disks; the first RAID-1, the second RAID-0,
//! 1, 1+0, 5 or 6; at most one `size_gb: MAX` (made last); `physical_disks` a list of at least
//! two root-device-hint objects (all suitable disks when absent); unique volume names; at most
//! one root volume; members without partitions. Each member gets a partition table (GPT, or
//! msdos in BIOS mode when `disk_label` says so) with room before the arrays for what boots the
//! node: 550 MiB for an ESP in UEFI mode (made by install_bootloader), a BIOS boot partition
//! on GPT in BIOS mode. Unlike IPA, a logical disk of `size_gb` N gets N GiB exactly (IPA's
//! first array ends at N GiB from the disk's start, 551 MiB short).

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::disk::device::Device;
use crate::disk::md;
use crate::disk::partitions::{self, Label, Role};
use crate::hardware::disks::Disk;
use crate::hardware::hints;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
/// UEFI: the arrays start after room for IPA's 550 MiB ESP at 1 MiB.
const UEFI_START: u64 = 551 * MIB;
/// BIOS on GPT: a 1 MiB BIOS boot partition at 1 MiB, the arrays from 8 MiB (as IPA).
const BIOS_GPT_START: u64 = 8 * MIB;

#[derive(Debug, thiserror::Error)]
pub enum RaidError {
    #[error("Could not validate Software RAID config for {node}: {problems}")]
    Invalid { node: String, problems: String },
    #[error("software RAID: {0}")]
    Members(String),
    #[error("software RAID: {0}")]
    Layout(#[from] partitions::LayoutError),
    #[error("software RAID: {0}")]
    Device(#[from] crate::disk::device::DeviceError),
    #[error("software RAID: {0}")]
    Md(#[from] md::MdError),
    #[error("software RAID: {0}")]
    Wipe(#[from] crate::disk::wipe::WipeError),
    #[error("software RAID: arrays remain after two attempts to delete them: {0}")]
    Remaining(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Raid0,
    Raid1,
    Raid10,
    Raid5,
    Raid6,
}

impl Level {
    fn parse(v: &Value) -> Option<Level> {
        let s = match v {
            Value::String(s) => s.trim().to_string(),
            Value::Number(n) => n.to_string(),
            _ => return None,
        };
        Some(match s.as_str() {
            "0" => Level::Raid0,
            "1" => Level::Raid1,
            "1+0" | "10" => Level::Raid10,
            "5" => Level::Raid5,
            "6" => Level::Raid6,
            _ => return None,
        })
    }

    /// The level as mdadm takes it.
    pub fn mdadm(self) -> &'static str {
        match self {
            Level::Raid0 => "0",
            Level::Raid1 => "1",
            Level::Raid10 => "10",
            Level::Raid5 => "5",
            Level::Raid6 => "6",
        }
    }

    fn min_members(self) -> usize {
        match self {
            Level::Raid5 => 3,
            Level::Raid6 => 4,
            _ => 2,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    Gib(u64),
    Max,
}

/// One validated logical disk.
#[derive(Debug, Clone, PartialEq)]
pub struct LogicalDisk {
    pub size: Size,
    pub level: Level,
    pub volume_name: Option<String>,
    pub is_root_volume: bool,
    /// Root-device-hint objects choosing the members; `None`: every suitable disk.
    pub physical_disks: Option<Vec<Value>>,
}

/// The volume names `skip_block_devices` protects (`{"volume_name": …}` entries).
pub fn skipped_volumes(node: &Value) -> Vec<String> {
    node.pointer("/properties/skip_block_devices")
        .and_then(Value::as_array)
        .map(|l| {
            l.iter()
                .filter_map(|e| e.get("volume_name").and_then(Value::as_str))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

fn size_of(v: Option<&Value>) -> Result<Size, String> {
    match v {
        Some(Value::String(s)) if s.trim().eq_ignore_ascii_case("max") => Ok(Size::Max),
        Some(Value::String(s)) => s
            .trim()
            .parse::<u64>()
            .map(Size::Gib)
            .map_err(|_| format!("size_gb {s:?} is neither a whole number nor MAX")),
        Some(Value::Number(n)) => n
            .as_u64()
            .map(Size::Gib)
            .ok_or_else(|| format!("size_gb {n} is not a whole number of GiB")),
        None | Some(Value::Null) => Err("size_gb is required".into()),
        Some(other) => Err(format!("size_gb {other} is neither a whole number nor MAX")),
    }
    .and_then(|s| match s {
        Size::Gib(0) => Err("size_gb must be above 0".into()),
        // GiB from outside: refuse what cannot be a byte count.
        Size::Gib(n) if n.checked_mul(GIB).is_none() => Err(format!("size_gb {n} is too large")),
        s => Ok(s),
    })
}

/// Validate `config` (a `target_raid_config`) as IPA does, collecting every problem.
pub fn validate(
    config: &Value,
    node_uuid: &str,
    skip: &[String],
) -> Result<Vec<LogicalDisk>, RaidError> {
    let invalid = |problems: Vec<String>| RaidError::Invalid {
        node: node_uuid.to_string(),
        problems: problems.join("; "),
    };
    let Some(lds) = config
        .get("logical_disks")
        .and_then(Value::as_array)
        .filter(|l| !l.is_empty())
    else {
        return Err(invalid(
            vec!["RAID config contains no logical disks".into()],
        ));
    };
    let mut problems = Vec::new();
    if !(1..=2).contains(&lds.len()) {
        problems.push("Software RAID configuration requires one or two logical disks".into());
    }
    let mut out = Vec::new();
    let mut names: Vec<String> = Vec::new();
    let mut root = false;
    for (i, ld) in lds.iter().enumerate() {
        let Some(ld) = ld.as_object() else {
            problems.push(format!("logical disk {i} is not an object"));
            continue;
        };
        if ld.get("controller").and_then(Value::as_str) != Some("software") {
            problems.push(
                "Software RAID configuration requires all logical disks to have \
                 'controller'='software'"
                    .into(),
            );
        }
        let volume_name = match ld.get("volume_name") {
            None | Some(Value::Null) => {
                if !skip.is_empty() {
                    problems.push(
                        "All logical disks are required to have a volume name specified as a \
                         volume name is mentioned in the property skip block devices."
                            .into(),
                    );
                }
                None
            }
            Some(Value::String(n)) if md::valid_name(n) => {
                if names.contains(n) {
                    problems.push(format!("Duplicate software RAID device name {n} detected"));
                }
                names.push(n.clone());
                Some(n.clone())
            }
            Some(other) => {
                problems.push(format!(
                    "volume_name {other} must be 1 to 32 letters, digits, '-', '_' or '.'"
                ));
                None
            }
        };
        let is_root_volume = ld
            .get("is_root_volume")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if is_root_volume && root {
            problems.push(
                "Software RAID configuration allows only one logical disk to be marked as \
                 is_root_volume"
                    .into(),
            );
        }
        root |= is_root_volume;
        let physical_disks = match ld.get("physical_disks") {
            None | Some(Value::Null) => None,
            Some(Value::Array(l)) if l.len() >= 2 && l.iter().all(Value::is_object) => {
                for h in l {
                    if let Err(e) = hints::parse(h) {
                        problems.push(format!("physical_disks: {e}"));
                    }
                }
                Some(l.clone())
            }
            Some(_) => {
                problems.push(
                    "The physical_disks parameter for software RAID must be a list with at \
                     least 2 items, each specifying a disk in the device hints format"
                        .into(),
                );
                None
            }
        };
        let level = Level::parse(ld.get("raid_level").unwrap_or(&Value::Null));
        match (i, level) {
            (0, Some(Level::Raid1)) => {}
            (0, _) => problems.push(
                "Software RAID Configuration requires RAID-1 for the first logical disk".into(),
            ),
            (_, None) => problems.push(format!(
                "Software RAID configuration does not support RAID level {}",
                ld.get("raid_level").unwrap_or(&Value::Null)
            )),
            _ => {}
        }
        let size = size_of(ld.get("size_gb")).unwrap_or_else(|e| {
            problems.push(e);
            Size::Max
        });
        out.push(LogicalDisk {
            size,
            level: level.unwrap_or(Level::Raid1),
            volume_name,
            is_root_volume,
            physical_disks,
        });
    }
    if lds
        .iter()
        .filter(|l| size_of(l.get("size_gb")) == Ok(Size::Max))
        .count()
        > 1
    {
        problems.push("Software RAID can have only one RAID device with size 'MAX'".into());
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(invalid(problems))
    }
}

/// The member disks of each logical disk (in its order): for each hint object of
/// `physical_disks`, the first matching disk not already taken for it; without hints, every
/// disk of `candidates`.
pub fn members(lds: &[LogicalDisk], candidates: &[Disk]) -> Result<Vec<Vec<String>>, RaidError> {
    let mut out = Vec::new();
    for (i, ld) in lds.iter().enumerate() {
        let chosen: Vec<String> = match &ld.physical_disks {
            None => candidates.iter().map(|d| d.name.clone()).collect(),
            Some(list) => {
                let mut chosen: Vec<String> = Vec::new();
                for h in list {
                    let hs = hints::parse(h).map_err(|e| RaidError::Members(e.to_string()))?;
                    let pick = candidates.iter().find(|d| {
                        let t = d.hint_target();
                        !chosen.contains(&d.name) && hs.iter().all(|h| hints::check(h, &t).is_ok())
                    });
                    match pick {
                        Some(d) => chosen.push(d.name.clone()),
                        None => {
                            return Err(RaidError::Members(format!(
                                "no disk left for physical disk {h} of logical disk {i} \
                                 (candidates: {}; taken: {})",
                                candidates
                                    .iter()
                                    .map(|d| d.name.as_str())
                                    .collect::<Vec<_>>()
                                    .join(", "),
                                chosen.join(", ")
                            )))
                        }
                    }
                }
                chosen
            }
        };
        if chosen.len() < ld.level.min_members() {
            return Err(RaidError::Members(format!(
                "RAID-{} needs at least {} disks; logical disk {i} has {}",
                ld.level.mdadm(),
                ld.level.min_members(),
                chosen.len()
            )));
        }
        out.push(chosen);
    }
    Ok(out)
}

/// The boot mode and table label the conductor asks for: IPA's rules (secure boot or
/// `deploy_boot_mode`/`boot_mode` say UEFI; GPT in UEFI mode, else `disk_label` or msdos).
/// `ramdisk_uefi`: how this ramdisk was booted, the fallback.
pub fn boot_mode_and_label(node: &Value, ramdisk_uefi: bool) -> (bool, Label) {
    let caps = |root: &str| -> Map<String, Value> {
        match node.pointer(&format!("/{root}/capabilities")) {
            Some(Value::Object(o)) => o.clone(),
            Some(Value::String(s)) => {
                serde_json::from_str::<Map<String, Value>>(s).unwrap_or_else(|_| {
                    s.split(',')
                        .filter_map(|kv| kv.split_once(':'))
                        .map(|(k, v)| (k.trim().to_string(), Value::String(v.trim().into())))
                        .collect()
                })
            }
            _ => Map::new(),
        }
    };
    let (ii, props) = (caps("instance_info"), caps("properties"));
    let text = |m: &Map<String, Value>, k: &str| {
        m.get(k)
            .and_then(|v| v.as_str().map(str::to_lowercase).or(Some(v.to_string())))
    };
    let secure = [&ii, &props]
        .iter()
        .any(|m| text(m, "secure_boot").as_deref() == Some("true"));
    let mode = node
        .pointer("/instance_info/deploy_boot_mode")
        .and_then(Value::as_str)
        .map(str::to_lowercase)
        .or_else(|| text(&props, "boot_mode"))
        .or_else(|| {
            node.pointer("/driver_internal_info/deploy_boot_mode")
                .and_then(Value::as_str)
                .map(str::to_lowercase)
        });
    let uefi = secure
        || match mode.as_deref() {
            Some("uefi") => true,
            Some("bios") => false,
            _ => ramdisk_uefi,
        };
    let label = if uefi {
        Label::Gpt
    } else {
        match text(&ii, "disk_label").or_else(|| text(&props, "disk_label")) {
            Some(l) if l == "gpt" => Label::Gpt,
            _ => Label::Msdos,
        }
    };
    (uefi, label)
}

/// Partitions of a disk: role, start, length in bytes.
type Layout = Vec<(Role, u64, u64)>;

/// The plan for one member disk: its partitions (role, start, length) in table order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberLayout {
    pub disk: String,
    pub parts: Layout,
}

/// One array to create: `/dev/mdN`, its volume name, level, and its members as
/// (disk, partition number).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArrayPlan {
    pub device: String,
    pub name: String,
    pub level: Level,
    pub members: Vec<(String, u32)>,
}

/// Lay out the members: `lds` with `members` (from [`members`]), disk sizes in bytes. The
/// `MAX` logical disk is made last; each gets one partition per member disk, back to back
/// from the boot room, 1 MiB aligned; the last MiB stays free (GPT backup).
pub fn plan(
    lds: &[LogicalDisk],
    members: &[Vec<String>],
    sizes: &BTreeMap<String, u64>,
    uefi: bool,
    label: Label,
) -> Result<(Vec<MemberLayout>, Vec<ArrayPlan>), RaidError> {
    let start = if uefi {
        UEFI_START
    } else if label == Label::Gpt {
        BIOS_GPT_START
    } else {
        MIB
    };
    let mut order: Vec<usize> = (0..lds.len())
        .filter(|&i| lds[i].size != Size::Max)
        .collect();
    order.extend((0..lds.len()).filter(|&i| lds[i].size == Size::Max));
    // Per member disk: where its next partition starts, and its partitions so far.
    let mut layouts: BTreeMap<String, (u64, Layout)> = BTreeMap::new();
    let mut arrays = Vec::new();
    for (index, &i) in order.iter().enumerate() {
        let ld = &lds[i];
        let mut parts = Vec::new();
        for disk in &members[i] {
            let size = *sizes
                .get(disk)
                .ok_or_else(|| RaidError::Members(format!("{disk}: size unknown")))?;
            let end = (size / MIB).saturating_sub(1) * MIB;
            let entry = layouts.entry(disk.clone()).or_insert_with(|| {
                let mut p = Vec::new();
                if !uefi && label == Label::Gpt {
                    p.push((Role::BiosBoot, MIB, MIB));
                }
                (start, p)
            });
            let at = entry.0;
            let len = match ld.size {
                Size::Gib(n) => n * GIB,
                Size::Max => end.saturating_sub(at),
            };
            let fits = at.checked_add(len).is_some_and(|e| e <= end) && len >= MIB;
            if !fits {
                return Err(RaidError::Members(format!(
                    "{disk} ({} MiB) has no room for {} of logical disk {i} from {} MiB",
                    size / MIB,
                    match ld.size {
                        Size::Gib(n) => format!("{n} GiB"),
                        Size::Max => "the rest".into(),
                    },
                    at / MIB
                )));
            }
            entry.1.push((Role::RaidMember, at, len));
            entry.0 = at + len;
            parts.push((disk.clone(), entry.1.len() as u32));
        }
        if label == Label::Msdos && layouts.values().any(|(_, p)| p.len() > 4) {
            return Err(RaidError::Members(
                "more than 4 partitions on an msdos label".into(),
            ));
        }
        arrays.push(ArrayPlan {
            device: format!("/dev/md{index}"),
            name: ld.volume_name.clone().unwrap_or(format!("md{index}")),
            level: ld.level,
            members: parts,
        });
    }
    let layouts = layouts
        .into_iter()
        .map(|(disk, (_, parts))| MemberLayout { disk, parts })
        .collect();
    Ok((layouts, arrays))
}

/// Write the member tables and create the arrays of a validated plan. Members must carry no
/// partitions (an old layout is deleted first: `delete_configuration`, then
/// `erase_devices_metadata`).
pub fn build(
    layouts: &[MemberLayout],
    arrays: &[ArrayPlan],
    label: Label,
) -> Result<(), RaidError> {
    for m in layouts {
        let path = std::path::Path::new(&m.disk);
        let existing = crate::disk::table::read_disk(path)?;
        if !existing.is_empty() {
            return Err(RaidError::Members(format!(
                "Partitions detected on devices {} during RAID config",
                m.disk
            )));
        }
        let dev = Device::open(path)?;
        crate::image::write::Target::whole(dev.try_clone()?)
            .wipe_ends()
            .map_err(|e| RaidError::Members(e.to_string()))?;
        partitions::write_table(&dev, label, &m.parts)?;
        tracing::info!(disk = %m.disk, partitions = m.parts.len(), "RAID member partitioned");
    }
    for a in arrays {
        let members: Vec<String> = a
            .members
            .iter()
            .map(|(disk, n)| crate::disk::nodes::partition_name(std::path::Path::new(disk), *n))
            .collect();
        wait_for_nodes(&members);
        md::create(&a.device, a.level.mdadm(), &a.name, "1", &members)?;
        tracing::info!(device = %a.device, name = %a.name, level = a.level.mdadm(), members = ?members, "RAID array created");
    }
    Ok(())
}

/// Partition nodes appear when the kernel re-reads a table (devtmpfs, then udev): wait a
/// little for them, without a fixed sleep.
fn wait_for_nodes(nodes: &[String]) {
    let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !nodes
        .iter()
        .all(|n| crate::disk::device::is_block(std::path::Path::new(n)))
        && std::time::Instant::now() < end
    {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// What a delete, a create or an erase does to an array that exists, when
/// `skip_block_devices` names volumes (IPA's rules, so a node keeps behaving the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Named in `skip_block_devices`, or the `esp` mirror beside a kept array (the kept
    /// array's node must still boot): untouched.
    Keep,
    /// On a disk that also carries a kept array: deleting it would mean re-partitioning that
    /// disk, so the array stays and only its contents go; a create reuses it.
    Wipe,
    /// Stopped, its members' superblocks zeroed and its member disks wiped.
    Delete,
}

/// An array as it exists, the disks under it and what happens to it.
#[derive(Debug, Clone)]
pub struct Existing {
    pub array: md::Array,
    pub disks: Vec<String>,
    pub disposition: Disposition,
}

/// The dispositions of arrays given as (volume name, disks under it), in the same order.
fn classify(arrays: &[(Option<&str>, &[String])], skip: &[String]) -> Vec<Disposition> {
    let kept = |name: Option<&str>| name.is_some_and(|n| skip.iter().any(|s| s == n));
    let kept_disks: Vec<&String> = arrays
        .iter()
        .filter(|(n, _)| kept(*n))
        .flat_map(|(_, d)| d.iter())
        .collect();
    arrays
        .iter()
        .map(|(name, disks)| {
            if kept(*name) {
                Disposition::Keep
            } else if disks.iter().any(|d| kept_disks.contains(&d)) {
                if *name == Some("esp") {
                    Disposition::Keep
                } else {
                    Disposition::Wipe
                }
            } else {
                Disposition::Delete
            }
        })
        .collect()
}

/// Every array the kernel has (from `sys_block`), with its disks and disposition.
pub fn existing(sys_block: &std::path::Path, skip: &[String]) -> Vec<Existing> {
    let arrays = md::arrays(sys_block);
    let disks: Vec<Vec<String>> = arrays
        .iter()
        .map(|a| {
            let mut d: Vec<String> = a.members.iter().map(|m| md::holder_disk(m)).collect();
            d.sort();
            d.dedup();
            d
        })
        .collect();
    let keys: Vec<(Option<&str>, &[String])> = arrays
        .iter()
        .zip(&disks)
        .map(|(a, d)| (a.name.as_deref(), d.as_slice()))
        .collect();
    let dispositions = classify(&keys, skip);
    arrays
        .into_iter()
        .zip(disks)
        .zip(dispositions)
        .map(|((array, disks), disposition)| Existing {
            array,
            disks,
            disposition,
        })
        .collect()
}

/// Stop `a` and zero its members' superblocks; `false` when it could not be stopped (an array
/// without members, a partition of another array, goes with that one and is skipped).
fn stop_and_zero(a: &md::Array) -> bool {
    if a.members.is_empty() {
        return false;
    }
    if let Err(e) = md::stop(&a.device) {
        tracing::warn!(device = %a.device, error = %e, "cannot stop the array");
        return false;
    }
    for m in &a.members {
        if let Err(e) = md::zero_superblock(m) {
            tracing::warn!(member = %m, error = %e, "cannot zero the superblock");
        }
    }
    true
}

/// Before an erase: every array that `skip` does not keep, and that shares no disk with a kept
/// one, is stopped and its superblocks zeroed, so its member disks are erased whole like any
/// other disk (IPA erases the disks under an array too; only the member partitions
/// themselves are skipped). Without this a tenant's own array (`mdadm --create` on partitions
/// of two disks), assembled at start-up, would keep its disks' tables, ESPs and other
/// partitions from the erase and survive into the next deployment. Arrays sharing a disk with
/// a kept one stay and are erased through their md device. Returns the arrays stopped; an
/// array that cannot be stopped is an error (its disks would otherwise be skipped silently).
pub fn release_for_erase(
    sys_block: &std::path::Path,
    skip: &[String],
) -> Result<Vec<String>, RaidError> {
    let mut stopped = Vec::new();
    for e in existing(sys_block, skip)
        .iter()
        .filter(|e| e.disposition == Disposition::Delete)
    {
        if stop_and_zero(&e.array) {
            tracing::info!(device = %e.array.device, disks = ?e.disks, "array not kept: stopped and its superblocks zeroed before the erase");
            stopped.push(e.array.device.clone());
        }
    }
    let left: Vec<String> = existing(sys_block, skip)
        .into_iter()
        .filter(|e| e.disposition == Disposition::Delete && !e.array.members.is_empty())
        .map(|e| e.array.device)
        .collect();
    if left.is_empty() {
        Ok(stopped)
    } else {
        Err(RaidError::Remaining(left.join(", ")))
    }
}

/// Delete every array (assembled first from what the disks describe) except those whose
/// volume name `skip` lists: stop it, zero its members' superblocks, and wipe the tables of
/// the member disks (their partitions held the arrays). An array sharing a disk with a kept
/// one only loses its contents (see [`Disposition`]). Tried twice, as IPA does. Returns the
/// arrays deleted or wiped.
pub fn delete(sys_block: &std::path::Path, skip: &[String]) -> Result<Vec<String>, RaidError> {
    let mut deleted = Vec::new();
    for attempt in 0..2 {
        md::assemble_scan();
        let all = existing(sys_block, skip);
        if attempt == 0 {
            for e in all.iter().filter(|e| e.disposition == Disposition::Wipe) {
                tracing::info!(device = %e.array.device, "shares a disk with a kept array: contents wiped, array kept");
                crate::disk::wipe::erase_metadata(std::path::Path::new(&e.array.device))?;
                deleted.push(e.array.device.clone());
            }
        }
        let keep_disks: Vec<&String> = all
            .iter()
            .filter(|e| e.disposition != Disposition::Delete)
            .flat_map(|e| e.disks.iter())
            .collect();
        let to_delete: Vec<&Existing> = all
            .iter()
            .filter(|e| e.disposition == Disposition::Delete)
            .collect();
        if to_delete.is_empty() {
            return Ok(deleted);
        }
        if attempt == 1 {
            tracing::warn!(remaining = ?to_delete, "arrays still there; trying once more");
        }
        let mut disks = Vec::new();
        for e in &to_delete {
            if stop_and_zero(&e.array) {
                disks.extend(e.disks.iter().cloned());
                deleted.push(e.array.device.clone());
            }
        }
        disks.sort();
        disks.dedup();
        for d in disks.iter().filter(|d| !keep_disks.contains(d)) {
            // Whole-disk members were zeroed above; partitioned ones lose their table.
            if let Err(e) = crate::disk::wipe::erase_metadata(std::path::Path::new(d)) {
                tracing::warn!(disk = %d, error = %e, "cannot wipe the member disk");
            }
        }
    }
    let left: Vec<String> = existing(sys_block, skip)
        .into_iter()
        .filter(|e| e.disposition == Disposition::Delete)
        .map(|e| e.array.device)
        .collect();
    if left.is_empty() {
        Ok(deleted)
    } else {
        Err(RaidError::Remaining(left.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ld(level: &str, size: Value) -> Value {
        json!({"controller": "software", "raid_level": level, "size_gb": size})
    }

    fn problems(config: Value, skip: &[String]) -> String {
        match validate(&config, "n-1", skip) {
            Err(RaidError::Invalid { problems, node }) => {
                assert_eq!(node, "n-1");
                problems
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn valid_configurations() {
        let c = json!({"logical_disks": [
            {"controller": "software", "raid_level": "1", "size_gb": 3, "volume_name": "root",
             "is_root_volume": true,
             "physical_disks": [{"name": "/dev/nvme0n1"}, {"name": "/dev/nvme1n1"}]},
            {"controller": "software", "raid_level": "0", "size_gb": "MAX", "volume_name": "data"}
        ]});
        let lds = validate(&c, "n", &[]).unwrap();
        assert_eq!(lds.len(), 2);
        assert_eq!((lds[0].level, lds[0].size), (Level::Raid1, Size::Gib(3)));
        assert!(lds[0].is_root_volume);
        assert_eq!(lds[0].physical_disks.as_ref().map(Vec::len), Some(2));
        assert_eq!((lds[1].level, lds[1].size), (Level::Raid0, Size::Max));
        for level in ["0", "1", "1+0", "5", "6"] {
            let c = json!({"logical_disks": [ld("1", json!(10)), ld(level, json!("MAX"))]});
            assert!(validate(&c, "n", &[]).is_ok(), "{level}");
        }
        assert_eq!(Level::Raid10.mdadm(), "10");
        // A numeric level and a numeric string size are what some clients send.
        let c =
            json!({"logical_disks": [{"controller": "software", "raid_level": 1, "size_gb": "7"}]});
        assert_eq!(validate(&c, "n", &[]).unwrap()[0].size, Size::Gib(7));
    }

    #[test]
    fn every_rule_has_its_error() {
        for (config, want) in [
            (json!({}), "no logical disks"),
            (json!({"logical_disks": []}), "no logical disks"),
            (
                json!({"logical_disks": [ld("1", json!(1)), ld("0", json!(1)), ld("0", json!(1))]}),
                "one or two logical disks",
            ),
            (
                json!({"logical_disks": [{"controller": "hardware", "raid_level": "1", "size_gb": 1}]}),
                "'controller'='software'",
            ),
            (
                json!({"logical_disks": [ld("0", json!(1))]}),
                "RAID-1 for the first",
            ),
            (
                json!({"logical_disks": [ld("1", json!(1)), ld("4", json!(1))]}),
                "does not support RAID level \"4\"",
            ),
            (
                json!({"logical_disks": [ld("1", json!("MAX")), ld("0", json!("MAX"))]}),
                "only one RAID device with size 'MAX'",
            ),
            (json!({"logical_disks": [ld("1", json!(0))]}), "above 0"),
            (
                json!({"logical_disks": [ld("1", json!(-2))]}),
                "whole number",
            ),
            (
                json!({"logical_disks": [ld("1", json!("lots"))]}),
                "neither",
            ),
            (
                json!({"logical_disks": [ld("1", json!(u64::MAX))]}),
                "too large",
            ),
            (
                json!({"logical_disks": [ld("1", Value::Null)]}),
                "size_gb is required",
            ),
            (
                json!({"logical_disks": [{"controller": "software", "raid_level": "1", "size_gb": 1,
                    "physical_disks": [{"name": "/dev/sda"}]}]}),
                "at least 2 items",
            ),
            (
                json!({"logical_disks": [{"controller": "software", "raid_level": "1", "size_gb": 1,
                    "physical_disks": ["/dev/sda", "/dev/sdb"]}]}),
                "at least 2 items",
            ),
            (
                json!({"logical_disks": [
                    {"controller": "software", "raid_level": "1", "size_gb": 1, "volume_name": "a"},
                    {"controller": "software", "raid_level": "0", "size_gb": 1, "volume_name": "a"}]}),
                "Duplicate software RAID device name a",
            ),
            (
                json!({"logical_disks": [
                    {"controller": "software", "raid_level": "1", "size_gb": 1, "is_root_volume": true},
                    {"controller": "software", "raid_level": "0", "size_gb": 1, "is_root_volume": true}]}),
                "only one logical disk to be marked as is_root_volume",
            ),
            (
                json!({"logical_disks": [{"controller": "software", "raid_level": "1", "size_gb": 1,
                    "volume_name": "bad name;rm"}]}),
                "volume_name",
            ),
        ] {
            let p = problems(config.clone(), &[]);
            assert!(p.contains(want), "{config}: {p}");
        }
        // A skip list naming volumes needs every logical disk named.
        let p = problems(
            json!({"logical_disks": [ld("1", json!(1))]}),
            &["root".into()],
        );
        assert!(p.contains("volume name"), "{p}");
        // Every problem is reported at once.
        let p = problems(
            json!({"logical_disks": [ld("0", json!(0)), ld("7", json!("MAX"))]}),
            &[],
        );
        assert!(
            p.contains("RAID-1") && p.contains("above 0") && p.contains("level"),
            "{p}"
        );
    }

    fn disk(name: &str, serial: &str, gib: u64) -> Disk {
        Disk {
            name: name.into(),
            serial: Some(serial.into()),
            all_serials: vec![serial.into()],
            size: gib * GIB,
            ..Disk::default()
        }
    }

    #[test]
    fn members_follow_hints_and_levels() {
        let disks = [
            disk("/dev/nvme0n1", "A", 8),
            disk("/dev/nvme1n1", "B", 8),
            disk("/dev/vda", "C", 8),
        ];
        let c = json!({"logical_disks": [
            {"controller": "software", "raid_level": "1", "size_gb": 3,
             "physical_disks": [{"serial": "B"}, {"name": "s== /dev/nvme0n1"}]},
            {"controller": "software", "raid_level": "0", "size_gb": "MAX",
             "physical_disks": [{"serial": "A"}, {"serial": "B"}]}]});
        let lds = validate(&c, "n", &[]).unwrap();
        let m = members(&lds, &disks).unwrap();
        assert_eq!(m[0], ["/dev/nvme1n1", "/dev/nvme0n1"]);
        assert_eq!(m[1], ["/dev/nvme0n1", "/dev/nvme1n1"]);
        // Without hints: every candidate.
        let all = validate(&json!({"logical_disks": [ld("1", json!(1))]}), "n", &[]).unwrap();
        assert_eq!(members(&all, &disks).unwrap()[0].len(), 3);
        // The same disk cannot be two members; RAID-6 needs four disks.
        let twice = json!({"logical_disks": [{"controller": "software", "raid_level": "1",
            "size_gb": 1, "physical_disks": [{"serial": "A"}, {"serial": "A"}]}]});
        let e = members(&validate(&twice, "n", &[]).unwrap(), &disks).unwrap_err();
        assert!(e.to_string().contains("no disk left"), "{e}");
        let six = validate(
            &json!({"logical_disks": [ld("1", json!(1)), ld("6", json!(1))]}),
            "n",
            &[],
        )
        .unwrap();
        assert!(members(&six, &disks)
            .unwrap_err()
            .to_string()
            .contains("at least 4"));
    }

    #[test]
    fn plans_per_boot_mode_and_label() {
        let c = json!({"logical_disks": [
            {"controller": "software", "raid_level": "0", "size_gb": "MAX", "volume_name": "data"},
            {"controller": "software", "raid_level": "1", "size_gb": 3, "volume_name": "root"}]});
        // Validation wants RAID-1 first; the plan itself takes any order and puts MAX last.
        let lds = vec![
            LogicalDisk {
                size: Size::Gib(3),
                level: Level::Raid1,
                volume_name: Some("root".into()),
                is_root_volume: true,
                physical_disks: None,
            },
            LogicalDisk {
                size: Size::Max,
                level: Level::Raid0,
                volume_name: None,
                is_root_volume: false,
                physical_disks: None,
            },
        ];
        assert!(validate(&c, "n", &[]).is_err());
        let two = vec!["/dev/a".to_string(), "/dev/b".to_string()];
        let members = vec![two.clone(), two.clone()];
        let sizes: BTreeMap<String, u64> = two.iter().map(|d| (d.clone(), 8 * GIB)).collect();
        let (layouts, arrays) = plan(&lds, &members, &sizes, true, Label::Gpt).unwrap();
        assert_eq!(layouts.len(), 2);
        assert_eq!(
            layouts[0].parts,
            vec![
                (Role::RaidMember, 551 * MIB, 3 * GIB),
                (
                    Role::RaidMember,
                    551 * MIB + 3 * GIB,
                    8 * GIB - MIB - 551 * MIB - 3 * GIB
                )
            ]
        );
        assert_eq!(arrays[0].device, "/dev/md0");
        assert_eq!(arrays[0].name, "root");
        assert_eq!(
            arrays[0].members,
            [("/dev/a".into(), 1), ("/dev/b".into(), 1)]
        );
        assert_eq!(
            arrays[1].name, "md1",
            "unnamed arrays are named after their device"
        );
        assert_eq!(arrays[1].members[0].1, 2);
        // BIOS on GPT: a BIOS boot partition first, the arrays from 8 MiB.
        let (layouts, arrays) = plan(&lds, &members, &sizes, false, Label::Gpt).unwrap();
        assert_eq!(layouts[0].parts[0], (Role::BiosBoot, MIB, MIB));
        assert_eq!(layouts[0].parts[1], (Role::RaidMember, 8 * MIB, 3 * GIB));
        assert_eq!(arrays[0].members[0].1, 2);
        // BIOS on msdos: from 1 MiB.
        let (layouts, _) = plan(&lds, &members, &sizes, false, Label::Msdos).unwrap();
        assert_eq!(layouts[1].parts[0], (Role::RaidMember, MIB, 3 * GIB));
        // Too big for the disks: an error naming the disk.
        let big = vec![LogicalDisk {
            size: Size::Gib(8),
            ..lds[0].clone()
        }];
        let e = plan(&big, &members[..1], &sizes, true, Label::Gpt).unwrap_err();
        assert!(e.to_string().contains("/dev/a"), "{e}");
    }

    #[test]
    fn boot_mode_and_label_follow_ipa() {
        let n = |v: Value| boot_mode_and_label(&v, false);
        assert_eq!(n(json!({})), (false, Label::Msdos));
        assert_eq!(boot_mode_and_label(&json!({}), true), (true, Label::Gpt));
        assert_eq!(
            n(json!({"instance_info": {"deploy_boot_mode": "uefi"}})),
            (true, Label::Gpt)
        );
        assert_eq!(
            n(json!({"properties": {"capabilities": "boot_mode:bios,disk_label:gpt"}})),
            (false, Label::Gpt)
        );
        assert_eq!(
            n(json!({"instance_info": {"capabilities": {"secure_boot": "true"}}})),
            (true, Label::Gpt)
        );
        assert_eq!(
            n(json!({"properties": {"capabilities": "{\"boot_mode\": \"uefi\"}"}})),
            (true, Label::Gpt)
        );
        assert_eq!(
            skipped_volumes(&json!({"properties": {"skip_block_devices": [
                {"volume_name": "keep"}, {"name": "/dev/sda"}]}})),
            ["keep"]
        );
    }

    #[test]
    fn kept_arrays_and_their_neighbours() {
        use Disposition::*;
        let ab = ["/dev/sda".to_string(), "/dev/sdb".to_string()];
        let cd = ["/dev/sdc".to_string(), "/dev/sdd".to_string()];
        let arrays: [(Option<&str>, &[String]); 5] = [
            (Some("root"), &ab),
            (Some("data"), &ab),
            (Some("esp"), &ab),
            (Some("scratch"), &cd),
            (None, &cd),
        ];
        // Nothing named: everything goes.
        assert_eq!(classify(&arrays, &[]), [Delete; 5]);
        // "root" kept: its neighbours on sda/sdb only lose their contents, its ESP mirror
        // stays so the node still boots; the arrays on other disks go.
        assert_eq!(
            classify(&arrays, &["root".to_string()]),
            [Keep, Wipe, Keep, Delete, Delete]
        );
        // A kept array elsewhere does not protect an ESP that is not beside it.
        assert_eq!(
            classify(&arrays, &["scratch".to_string()]),
            [Delete, Delete, Delete, Keep, Wipe]
        );
    }
}
