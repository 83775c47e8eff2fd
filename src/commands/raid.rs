//! The `raid` interface's steps: `create_configuration` and `delete_configuration` (clean and
//! service), `apply_configuration` (deploy and service). The work is `deploy::raid`; the
//! results are what the conductor stores as the node's `raid_config`.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{json, Map, Value};

use super::Context;
use crate::deploy::raid::{self, LogicalDisk};
use crate::error::{CommandError, ErrorKind};
use crate::hardware::{disks, root_device};

fn err(e: impl std::fmt::Display) -> CommandError {
    CommandError::new(ErrorKind::SoftwareRaid, e.to_string())
}

/// The disks an array may be built on: writable whole disks (not arrays), not skipped by
/// `skip_block_devices`, not removable or virtual media, not already members of an array.
/// With --simulate-power (tests), only the test disks.
fn candidates(ctx: &Context, node: &Value) -> Result<Vec<disks::Disk>, CommandError> {
    let (_, skip) = root_device::node_hints(node);
    let mut out = Vec::new();
    for d in disks::discover(&disks::Sources::default(), ctx.config.allow_loop_devices) {
        if d.read_only || d.kind != "disk" {
            continue;
        }
        if ctx.config.simulate_power && ctx.check_test_disk(Path::new(&d.name)).is_err() {
            continue;
        }
        let why = match root_device::skipped(skip.as_ref(), &d).map_err(err)? {
            Some(w) => Some(w),
            None => root_device::protected(&d, None).map_err(err)?,
        };
        match why {
            Some(w) => tracing::info!(disk = %d.name, reason = %w, "not a RAID member"),
            None => out.push(d),
        }
    }
    Ok(out)
}

/// Create `config` on this node; returns the configuration as created.
fn create(ctx: &Context, node: &Value, config: &Value) -> Result<Value, CommandError> {
    let uuid = node["uuid"].as_str().unwrap_or_default();
    let skip = raid::skipped_volumes(node);
    let mut lds: Vec<LogicalDisk> = raid::validate(config, uuid, &skip).map_err(err)?;
    // Arrays kept through skip_block_devices stay, and their logical disks are not made again;
    // so do the arrays beside them (wiped by delete_configuration, reused here) and the ESP
    // mirror beside them. Any other array must be deleted first.
    let mut others = Vec::new();
    for e in raid::existing(Path::new("/sys/block"), &skip) {
        let name = e.array.name.as_deref();
        let wanted = lds
            .iter()
            .any(|l| l.volume_name.is_some() && l.volume_name.as_deref() == name);
        match e.disposition {
            raid::Disposition::Keep | raid::Disposition::Wipe if wanted || name == Some("esp") => {
                lds.retain(|l| l.volume_name.is_none() || l.volume_name.as_deref() != name);
                tracing::info!(device = %e.array.device, ?name, "kept (skip_block_devices)");
            }
            raid::Disposition::Keep => {
                tracing::info!(device = %e.array.device, ?name, "kept (skip_block_devices)")
            }
            _ => others.push(e.array.device.clone()),
        }
    }
    if !others.is_empty() {
        return Err(err(format!(
            "existing software RAID devices {} must be deleted first (raid.delete_configuration)",
            others.join(", ")
        )));
    }
    if lds.is_empty() {
        tracing::info!("every logical disk exists already");
        return Ok(config.clone());
    }
    let cands = candidates(ctx, node)?;
    let members = raid::members(&lds, &cands).map_err(err)?;
    let sizes: BTreeMap<String, u64> = cands.iter().map(|d| (d.name.clone(), d.size)).collect();
    let (uefi, label) = raid::boot_mode_and_label(node, Path::new("/sys/firmware/efi").is_dir());
    let (layouts, arrays) = raid::plan(&lds, &members, &sizes, uefi, label).map_err(err)?;
    tracing::info!(
        uefi,
        ?label,
        arrays = arrays.len(),
        "creating software RAID"
    );
    raid::build(&layouts, &arrays, label).map_err(err)?;
    Ok(config.clone())
}

/// The configuration create_configuration builds: what the conductor filtered into
/// `driver_internal_info` (create_root_volume / create_nonroot_volumes), else the node's
/// `target_raid_config`.
fn target_config(node: &Value) -> Option<Value> {
    [
        "/driver_internal_info/target_raid_config",
        "/target_raid_config",
    ]
    .iter()
    .filter_map(|p| node.pointer(p))
    .find(|v| v.get("logical_disks").is_some())
    .cloned()
}

/// `raid.create_configuration`.
pub fn create_configuration(
    ctx: &Context,
    _args: &Map<String, Value>,
) -> Result<Option<Value>, CommandError> {
    let node = ctx.node_value();
    let config = target_config(&node).ok_or_else(|| {
        err("the node has no target_raid_config with logical disks: nothing to create")
    })?;
    create(ctx, &node, &config).map(Some)
}

/// `raid.delete_configuration`: every array except those `skip_block_devices` names.
pub fn delete_configuration(
    ctx: &Context,
    _args: &Map<String, Value>,
) -> Result<Option<Value>, CommandError> {
    let node = ctx.node_value();
    if ctx.config.simulate_power {
        // A test must never stop the arrays of the machine it runs on.
        return Err(err(
            "delete_configuration is not run with --simulate-power (it would reach every md array of this machine)",
        ));
    }
    let deleted =
        raid::delete(Path::new("/sys/block"), &raid::skipped_volumes(&node)).map_err(err)?;
    Ok(Some(json!({"deleted": deleted})))
}

/// `raid.apply_configuration` (`raid_config` required, `delete_existing` true by default).
pub fn apply_configuration(
    ctx: &Context,
    args: &Map<String, Value>,
) -> Result<Option<Value>, CommandError> {
    let node = ctx.node_value();
    let config = args
        .get("raid_config")
        .filter(|v| v.is_object())
        .ok_or_else(|| {
            CommandError::new(
                ErrorKind::InvalidParams,
                "apply_configuration needs raid_config (a RAID configuration object)",
            )
        })?;
    // Validated before anything is deleted.
    raid::validate(
        config,
        node["uuid"].as_str().unwrap_or_default(),
        &raid::skipped_volumes(&node),
    )
    .map_err(err)?;
    if args
        .get("delete_existing")
        .and_then(Value::as_bool)
        .unwrap_or(true)
    {
        delete_configuration(ctx, args)?;
    }
    create(ctx, &node, config).map(Some)
}

/// What apply_configuration takes, as the step list shows it.
pub fn apply_argsinfo() -> Value {
    json!({
        "raid_config": {
            "description": "The RAID configuration to apply (logical_disks with controller \
                software).",
            "required": true,
        },
        "delete_existing": {
            "description": "Delete the existing software RAID configuration first (default \
                true).",
            "required": false,
        },
    })
}
