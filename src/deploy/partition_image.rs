//! Partition images (`image_type: partition`): lay out the disk as IPA does, make the small
//! file systems, stream the image into the root partition through the image pipeline, and
//! answer get_partition_uuids in IPA's shape.

use std::path::Path;
use std::sync::Arc;

use serde_json::{json, Map, Value};

use crate::disk::device::Device;
use crate::disk::nodes::{partition_io, partition_name, PartitionIo};
use crate::disk::partitions::{self, Label, Partition, Placed, Request, Role};
use crate::error::{CommandError, ErrorKind};
use crate::image::fetch::FetchOptions;
use crate::image::info::{ImageInfo, PartitionOptions};
use crate::image::pipeline::{self, ImageError, ImageRequest};
use crate::image::progress::Progress;
use crate::image::write::{Target, WriteError};
use crate::system::tools::{run_capture, which};

const MIB: u64 = 1 << 20;

fn deploy_err(e: impl std::fmt::Display) -> CommandError {
    CommandError::new(ErrorKind::Deployment, e.to_string())
}

/// The ephemeral file system: `mkfs -t FMT -L ephemeral0` on the partition node, or, where the
/// kernel has no node that is exactly this partition (test sandboxes, a stale node of an old
/// table), through the disk with an offset (ext2/3/4).
fn make_ephemeral(dev: &Path, p: &Partition, fmt: &str) -> Result<(), CommandError> {
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
) -> Result<Vec<Placed>, CommandError> {
    let listed = crate::disk::table::read_disk(dev).map_err(deploy_err)?;
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
        if found.table != label || found.start != *start || found.len != *len {
            return Err(mismatch(format!(
                "partition {n} ({}) is at {} MiB, {} MiB long on a {:?} table; this deploy needs \
                 {} MiB, {} MiB long on a {label:?} table",
                role.key(),
                found.start / MIB,
                found.len / MIB,
                found.table,
                start / MIB,
                len / MIB
            )));
        }
        parts.push(Placed {
            role: *role,
            part: found.clone(),
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

/// What a failed deploy undoes: with `preserving`, the ephemeral data must survive, so the
/// table stays and only the half-written root file system is made unrecognisable; otherwise
/// no partition table is left behind.
struct Undo<'a> {
    path: &'a Path,
    preserving: bool,
    root_range: Option<(u64, u64)>,
}

impl Undo<'_> {
    /// Undo through `held` (the agent's claim on the disk), or a new open; returns `e`.
    fn run(&self, held: Option<&Device>, e: CommandError) -> CommandError {
        let d = match held {
            Some(d) => d.try_clone(),
            None => Device::open(self.path),
        };
        let Ok(d) = d else { return e };
        if self.preserving {
            if let Some((start, len)) = self.root_range {
                if let Ok(t) = Target::window(d, start, len) {
                    crate::image::write::abort(&t);
                }
            }
        } else {
            crate::image::write::abort(&Target::whole(d));
        }
        e
    }
}

pub struct Written {
    pub message: String,
    pub uuids: Value,
}

/// The layout request for `o`, with the config drive's size.
pub fn layout_request(o: &PartitionOptions, configdrive_bytes: Option<u64>) -> Request {
    Request {
        uefi: o.uefi,
        label: o.label,
        ephemeral_mb: o.ephemeral_mb,
        swap_mb: o.swap_mb,
        configdrive_bytes,
        root_mb: o.root_mb,
    }
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
    let o = info
        .partition
        .as_ref()
        .ok_or_else(|| deploy_err("not a partition image"))?;
    let r = layout_request(o, configdrive.as_ref().map(|c| c.len() as u64));
    let label = r.label;
    let name = dev.display().to_string();
    // What holds the old table (an old tenant's md array or LVM group) goes first.
    crate::disk::nodes::release_holders(dev);
    // The one open of the disk for this deploy: checks it is not in use, and claims it.
    let disk = Device::open(dev).map_err(deploy_err)?;
    let layout = partitions::plan(&r, &name, disk.size()).map_err(deploy_err)?;
    let preserving = o.preserve_ephemeral && r.ephemeral_mb > 0;
    let parts = if preserving {
        let parts = existing_layout(dev, label, &layout)?;
        tracing::info!(device = %name, "partition table kept to preserve the ephemeral partition");
        parts
    } else {
        // The wipe clears old tables and signatures at both ends.
        let whole = Target::whole(disk.try_clone().map_err(deploy_err)?);
        whole
            .wipe_ends()
            .map_err(|e| deploy_err(ImageError::from(e)))?;
        let parts = partitions::write_table(&disk, label, &layout).map_err(deploy_err)?;
        tracing::info!(device = %name, partitions = parts.len(), ?label, "partition table written");
        parts
    };
    let root_range = parts
        .iter()
        .find(|p| p.role == Role::Root)
        .map(|p| (p.part.start, p.part.len));
    let undo = Undo {
        path: dev,
        preserving,
        root_range,
    };
    let mut esp_uuid = None;
    let mut ephemeral = None;
    for Placed { role, part: p } in &parts {
        let fail = |e: CommandError| undo.run(Some(&disk), e);
        match role {
            Role::Esp => {
                esp_uuid = Some(partitions::make_esp(&disk, p).map_err(|e| fail(deploy_err(e)))?)
            }
            Role::Swap => {
                partitions::make_swap(&disk, p).map_err(|e| fail(deploy_err(e)))?;
            }
            Role::Ephemeral if preserving => {
                tracing::info!(partition = p.number, "ephemeral partition preserved");
            }
            Role::Ephemeral => ephemeral = Some(p),
            Role::ConfigDrive => {
                if let Some(iso) = &configdrive {
                    disk.write_buffered_at(iso, p.start)
                        .and_then(|()| disk.sync())
                        .map_err(|e| fail(deploy_err(format!("writing the config drive: {e}"))))?;
                }
            }
            Role::BiosBoot | Role::Root | Role::RaidMember => {}
        }
    }
    // mkfs claims the disk (or the partition) exclusively itself: the agent lets go for it,
    // then claims the disk again (refused, with the reason, if anything took it meanwhile).
    let disk = match ephemeral {
        Some(p) => {
            drop(disk);
            make_ephemeral(dev, p, &o.ephemeral_format).map_err(|e| undo.run(None, e))?;
            Device::open(dev).map_err(|e| undo.run(None, deploy_err(e)))?
        }
        None => disk,
    };
    let fail = |e: CommandError| undo.run(Some(&disk), e);
    let root = &parts
        .iter()
        .find(|p| p.role == Role::Root)
        .ok_or_else(|| deploy_err("no root partition in the layout"))?
        .part;
    let target = disk
        .try_clone()
        .map_err(WriteError::from)
        .and_then(|d| Target::window(d, root.start, root.len))
        .map_err(ImageError::from)
        .map_err(|e| fail(deploy_err(e)))?;
    let result = pipeline::run(req, fetch, &target, progress);
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
        names.insert(
            p.role.key().into(),
            json!(partition_name(dev, p.part.number)),
        );
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
