//! Partition images (`image_type: partition`): lay out the disk as IPA does, make the small
//! file systems, stream the image into the root partition through the image pipeline, and
//! answer get_partition_uuids in IPA's shape.

use std::path::Path;
use std::sync::Arc;

use serde_json::{json, Map, Value};

use crate::disk::device::{partition_io, partition_name, PartitionIo};
use crate::disk::partitions::{self, Label, Part, Request, Role};
use crate::error::{CommandError, ErrorKind};
use crate::image::fetch::FetchOptions;
use crate::image::info::ImageInfo;
use crate::image::pipeline::{self, ImageError, ImageRequest};
use crate::image::progress::Progress;
use crate::image::write::Target;
use crate::system::tools::{run_capture, which};

const MIB: u64 = 1 << 20;

fn num(other: &Map<String, Value>, key: &str) -> Result<u64, CommandError> {
    match other.get(key) {
        None | Some(Value::Null) => Ok(0),
        Some(Value::Number(n)) => n.as_u64().ok_or(()),
        Some(Value::String(s)) => s.trim().parse().map_err(|_| ()),
        Some(_) => Err(()),
    }
    .map_err(|_| {
        CommandError::new(
            ErrorKind::InvalidParams,
            format!("image_info {key} must be a whole number of MiB"),
        )
    })
}

fn text<'a>(other: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    other
        .get(key)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

fn deploy_err(e: impl std::fmt::Display) -> CommandError {
    CommandError::new(ErrorKind::Deployment, e.to_string())
}

/// The ephemeral file system: `mkfs -t FMT -L ephemeral0` on the partition node, or, where the
/// kernel has no node that is exactly this partition (test sandboxes, a stale node of an old
/// table), through the disk with an offset (ext2/3/4).
fn make_ephemeral(dev: &Path, p: &Part, fmt: &str) -> Result<(), CommandError> {
    let node = partition_name(dev, p.number);
    let io = partition_io(dev, p.number, p.start, p.len);
    let t = std::time::Duration::from_secs(600);
    let tool = format!("mkfs.{fmt}");
    if which(&tool).is_none() {
        return Err(deploy_err(format!(
            "cannot make the ephemeral file system: {tool} is not in this ramdisk"
        )));
    }
    let (ok, out) = if let PartitionIo::Node(node) = &io {
        let force = if fmt.starts_with("ext") { "-F" } else { "-f" };
        let node = node.display().to_string();
        run_capture(&tool, &[force, "-L", "ephemeral0", &node], t, 1 << 16)
    } else if fmt.starts_with("ext") {
        let kib = format!("{}k", p.len / 1024);
        run_capture(
            &tool,
            &[
                "-q",
                "-F",
                "-L",
                "ephemeral0",
                "-E",
                &format!("offset={}", p.start),
                &dev.display().to_string(),
                &kib,
            ],
            t,
            1 << 16,
        )
    } else {
        return Err(deploy_err(format!(
            "no usable device node {node} for the ephemeral partition (bytes {}+{} of {}): \
             {fmt} can only be made through the node",
            p.start,
            p.len,
            dev.display()
        )));
    }
    .map_err(deploy_err)?;
    if !ok {
        return Err(deploy_err(format!(
            "{tool} failed: {}",
            String::from_utf8_lossy(&out)
        )));
    }
    Ok(())
}

/// With `preserve_ephemeral`, the disk's table must already be the one this deploy would
/// write (same label, same partitions at the same places, as the previous deploy with the same
/// flavor made it): it is kept as it is, and its partitions are reused.
fn existing_layout(
    dev: &Path,
    label: Label,
    layout: &[(Role, u64, u64)],
) -> Result<Vec<Part>, CommandError> {
    let listed = std::fs::File::open(dev)
        .map(|mut f| partitions::read_table(&mut f))
        .map_err(|e| deploy_err(format!("{}: {e}", dev.display())))?;
    let mismatch = |why: String| {
        deploy_err(format!(
            "cannot preserve the ephemeral partition of {}: {why}; redeploy without \
             preserve_ephemeral (its data will be lost) or with the flavor it was deployed with",
            dev.display()
        ))
    };
    if listed.is_empty() {
        return Err(mismatch("the disk has no partition table".into()));
    }
    let mut parts = Vec::new();
    for (i, (role, start, len)) in layout.iter().enumerate() {
        let n = i as u32 + 1;
        let found = listed
            .iter()
            .find(|l| l.number == n)
            .ok_or_else(|| mismatch(format!("partition {n} ({}) does not exist", role.key())))?;
        if found.label != label || found.start != *start || found.len != *len {
            return Err(mismatch(format!(
                "partition {n} ({}) is at {} MiB, {} MiB long on a {:?} table; this deploy needs \
                 {} MiB, {} MiB long on a {label:?} table",
                role.key(),
                found.start / MIB,
                found.len / MIB,
                found.label,
                start / MIB,
                len / MIB
            )));
        }
        parts.push(Part {
            role: *role,
            number: n,
            start: *start,
            len: *len,
            part_uuid: found.part_uuid.clone(),
        });
    }
    if let Some(extra) = listed.iter().find(|l| l.number as usize > layout.len()) {
        return Err(mismatch(format!(
            "the disk has a partition {} this layout does not have",
            extra.number
        )));
    }
    Ok(parts)
}

pub struct Written {
    pub message: String,
    pub uuids: Value,
}

/// The layout the conductor asks for (`image_info`'s `deploy_boot_mode`, `disk_label`,
/// `root_mb`, `swap_mb`, `ephemeral_mb`, `preserve_ephemeral`), and whether to preserve the
/// ephemeral partition. Sizes are checked when the layout is planned.
pub fn layout_request(
    o: &Map<String, Value>,
    configdrive_bytes: Option<u64>,
) -> Result<(Request, bool), CommandError> {
    let uefi = text(o, "deploy_boot_mode").unwrap_or("uefi") == "uefi";
    let label = match (uefi, text(o, "disk_label")) {
        (true, _) | (false, Some("gpt")) => Label::Gpt,
        (false, None | Some("msdos")) => Label::Msdos,
        (false, Some(other)) => {
            return Err(CommandError::new(
                ErrorKind::InvalidParams,
                format!("unknown disk_label {other:?} (gpt or msdos)"),
            ))
        }
    };
    let preserve = match o.get("preserve_ephemeral") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => matches!(s.to_ascii_lowercase().as_str(), "true" | "1" | "yes"),
        Some(other) => {
            return Err(CommandError::new(
                ErrorKind::InvalidParams,
                format!("preserve_ephemeral must be true or false, got {other}"),
            ))
        }
    };
    let r = Request {
        uefi,
        label,
        ephemeral_mb: num(o, "ephemeral_mb")?,
        swap_mb: num(o, "swap_mb")?,
        configdrive_bytes,
        root_mb: num(o, "root_mb")?,
    };
    Ok((r, preserve))
}

/// Lay out `dev` and write the partition image `req` into its root partition.
pub fn write(
    info: &ImageInfo,
    dev: &Path,
    req: &ImageRequest,
    fetch: &FetchOptions,
    configdrive: Option<Vec<u8>>,
    progress: &Arc<Progress>,
) -> Result<Written, CommandError> {
    let o = &info.other;
    let (r, preserve) = layout_request(o, configdrive.as_ref().map(|c| c.len() as u64))?;
    let label = r.label;
    let name = dev.display().to_string();
    // Opening checks the disk is not in use; the wipe clears old tables at both ends.
    let whole = Target::open(dev).map_err(|e| deploy_err(ImageError::from(e)))?;
    let size = whole.size.unwrap_or(0);
    let sector = u64::from(whole.sector);
    let layout = partitions::plan(&r, &name, size).map_err(deploy_err)?;
    let parts = if preserve && r.ephemeral_mb > 0 {
        drop(whole);
        let parts = existing_layout(dev, label, &layout)?;
        tracing::info!(device = %name, "partition table kept to preserve the ephemeral partition");
        parts
    } else {
        whole
            .wipe_ends()
            .map_err(|e| deploy_err(ImageError::from(e)))?;
        drop(whole);
        let parts = partitions::write_table(dev, sector, label, &layout).map_err(deploy_err)?;
        tracing::info!(device = %name, partitions = parts.len(), ?label, "partition table written");
        parts
    };
    let preserving = preserve && r.ephemeral_mb > 0;
    let root_range = parts
        .iter()
        .find(|p| p.role == Role::Root)
        .map(|p| (p.start, p.len));
    let fail = |e: CommandError| {
        if preserving {
            // The ephemeral data must survive a failed deploy: keep the table, and only make
            // the half-written root file system unrecognisable.
            if let Some((start, len)) = root_range {
                if let Ok(t) = Target::open_window(dev, start, len) {
                    crate::image::write::abort(&t);
                }
            }
        } else if let Ok(t) = Target::open(dev) {
            // A failed deploy leaves no partition table behind.
            crate::image::write::abort(&t);
        }
        e
    };
    let mut esp_uuid = None;
    for p in &parts {
        match p.role {
            Role::Esp => {
                esp_uuid =
                    Some(partitions::make_esp(dev, p, sector).map_err(|e| fail(deploy_err(e)))?)
            }
            Role::Swap => {
                partitions::make_swap(dev, p).map_err(|e| fail(deploy_err(e)))?;
            }
            Role::Ephemeral if preserving => {
                tracing::info!(partition = p.number, "ephemeral partition preserved");
            }
            Role::Ephemeral => {
                let fmt = text(o, "ephemeral_format").unwrap_or("ext4");
                make_ephemeral(dev, p, fmt).map_err(fail)?;
            }
            Role::ConfigDrive => {
                if let Some(iso) = &configdrive {
                    use std::os::unix::fs::FileExt;
                    crate::disk::device::open_write(dev)
                        .and_then(|f| {
                            f.write_all_at(iso, p.start)?;
                            f.sync_data()
                        })
                        .map_err(|e| fail(deploy_err(format!("writing the config drive: {e}"))))?;
                }
            }
            Role::BiosBoot | Role::Root => {}
        }
    }
    let root = parts
        .iter()
        .find(|p| p.role == Role::Root)
        .ok_or_else(|| deploy_err("no root partition in the layout"))?;
    let target = Target::open_window(dev, root.start, root.len)
        .map_err(|e| fail(deploy_err(ImageError::from(e))))?;
    let result = pipeline::run(req, fetch, &target, progress);
    // Closed first: the disk is opened exclusively, and a failure must be able to wipe it.
    drop(target);
    let report = result.map_err(|e| {
        let msg = match &e {
            ImageError::Write(crate::image::write::WriteError::TooLarge { .. }) => format!(
                "{e} (the partition image does not fit the root partition of root_mb={} MiB)",
                r.root_mb
            ),
            _ => e.to_string(),
        };
        fail(CommandError::new(e.kind(), msg))
    })?;
    // The root file system's UUID, falling back to the partition's.
    let root_fs = crate::hardware::probe::probe_at(dev, root.start, root.len)
        .ok()
        .and_then(|p| p.uuid);
    let root_uuid = root_fs.unwrap_or_else(|| root.part_uuid.clone());
    let mut names = Map::new();
    for p in &parts {
        names.insert(p.role.key().into(), json!(partition_name(dev, p.number)));
    }
    let uuids = json!({
        "partitions": names,
        "root uuid": root_uuid,
        "efi system partition uuid": esp_uuid,
    });
    tracing::info!(device = %name, root_uuid = %root_uuid, bytes = report.bytes_written,
        root_mb = root.len / MIB, "partition image written");
    Ok(Written {
        message: format!(
            "image ({}) written to partition {} of device {name} root_uuid={root_uuid}",
            info.safe_id(),
            partition_name(dev, root.number)
        ),
        uuids,
    })
}
