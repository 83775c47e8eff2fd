//! The extension registry: IPA's wire names (`standby.sync`, `deploy.get_deploy_steps`, …)
//! mapped to handlers. Handlers are plain blocking functions taking the shared [`Context`] and
//! the request's `params`; they parse those into their own typed structs and return an
//! [`Outcome`] or a [`CommandError`]. They never see HTTP or the command table.

pub mod burnin;
pub mod image;
pub mod inject_files;
pub mod log;
pub mod poll;
pub mod raid;
pub mod rescue;
pub mod standby;
pub mod steps;
pub mod system;
pub mod testing;
pub mod write_image;

use std::sync::Mutex;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use tokio::sync::mpsc;

use crate::config::Config;
use crate::error::{ApiError, CommandError, ErrorKind};

pub type Params = Map<String, Value>;
pub type Handler = fn(&Context, Params) -> Result<Outcome, CommandError>;
pub type Validator = fn(&Params) -> Result<(), CommandError>;

/// What a command returns, before IPA's result encoding is applied by the executor.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Null,
    Text(String),
    Json(Value),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Sync,
    Async,
}

/// One command of the API: `<extension>.<name>`, how it runs, and its argument check.
#[derive(Debug)]
pub struct Spec {
    pub extension: &'static str,
    pub name: &'static str,
    pub mode: Mode,
    pub handler: Handler,
    /// Checked before the command is recorded; a failure is an HTTP 400.
    pub validate: Option<Validator>,
}

/// Actions only the agent's main loop may take (power, stopping the API). Commands ask for
/// them through this one-way channel rather than reaching back into the protocol layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SystemEvent {
    PowerOff,
    Reboot,
    Lockdown,
    /// Rescue is set up: stop heartbeating and serving, stay up.
    Rescue,
}

/// Where the last image went.
#[derive(Debug, Clone)]
pub struct Written {
    pub device: std::path::PathBuf,
    /// The image's id, as long as the disk holds exactly what was written (cleared by anything
    /// else that may change it, and before every write).
    pub image: Option<String>,
}

/// State shared by all commands of this agent process.
pub struct Context {
    pub config: Config,
    /// The node as last seen (lookup, then every step command's `node` param).
    pub node: Mutex<Option<Value>>,
    /// The node's ports as last sent with a step command (`inject_files` URL templates).
    pub ports: Mutex<Value>,
    /// What `standby.get_partition_uuids` answers; `{}` until an image is written.
    pub partition_uuids: Mutex<Value>,
    pub events: mpsc::UnboundedSender<SystemEvent>,
    pub started_at: f64,
    /// The disk the last image was written to, and that image's id while nothing else has
    /// changed the disk (IPA's cache-by-id rule).
    pub deployed: Mutex<Option<Written>>,
    /// Progress of the image transfer in flight, for the running command and heartbeats.
    pub progress: Mutex<Option<std::sync::Arc<crate::image::progress::Progress>>>,
    /// LLDP heard at inspection (`ipa-collect-lldp`): later inventories report it instead of
    /// listening again for up to `ipa-lldp-timeout`.
    pub lldp: Option<std::collections::BTreeMap<String, Vec<crate::hardware::lldp::RawTlv>>>,
}

impl Context {
    pub fn new(config: Config) -> (Context, mpsc::UnboundedReceiver<SystemEvent>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let started_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        (
            Context {
                config,
                node: Mutex::new(None),
                ports: Mutex::new(Value::Array(Vec::new())),
                partition_uuids: Mutex::new(Value::Object(Map::new())),
                events: tx,
                started_at,
                deployed: Mutex::new(None),
                progress: Mutex::new(None),
                lldp: None,
            },
            rx,
        )
    }

    pub fn set_node(&self, node: &Value) {
        if node.is_object() {
            *crate::panics::lock(&self.node) = Some(node.clone());
        }
    }

    pub fn set_ports(&self, ports: &Value) {
        if ports.is_array() {
            *crate::panics::lock(&self.ports) = ports.clone();
        }
    }

    pub fn ports_value(&self) -> Value {
        crate::panics::lock(&self.ports).clone()
    }

    /// Forget which image is on the disk (IPA's cache rule: the same image id again is
    /// already there): `why` changed, or may have changed, the disk. Which disk the image went
    /// to is kept (install_bootloader, inject_files work on it).
    pub fn forget_written(&self, why: &str) {
        let mut d = crate::panics::lock(&self.deployed);
        if let Some(w) = d.as_mut() {
            if let Some(id) = w.image.take() {
                tracing::info!(device = %w.device.display(), image = %id, by = why, "the disk may have changed: the image written before no longer counts as present");
            }
        }
    }

    /// The disk the last image went to, else the one the root device hints choose.
    pub fn target_disk(&self) -> Result<std::path::PathBuf, CommandError> {
        if let Some(w) = crate::panics::lock(&self.deployed).clone() {
            return Ok(w.device);
        }
        self.root_disk(self.config.strict_root_device)
            .map(|d| std::path::PathBuf::from(d.name))
    }

    /// The node as last seen, or `null`.
    pub fn node_value(&self) -> Value {
        crate::panics::lock(&self.node)
            .clone()
            .unwrap_or(Value::Null)
    }

    /// The disk the node's root device hints choose (the decision table is logged). A disk
    /// may still be appearing (its driver probing late on a loaded machine): while the hints
    /// match nothing, or nothing is large enough, the disks are looked at again for up to the
    /// disk wait budget (`ipa-disk-wait-attempts` × `-delay`, IPA's: it waits at start-up for
    /// a disk its hints match).
    pub fn root_disk(&self, strict: bool) -> Result<crate::hardware::disks::Disk, CommandError> {
        use crate::hardware::disks;
        use crate::hardware::root_device::{self, RootDeviceError};
        let budget = self
            .config
            .disk_wait_delay
            .saturating_mul(self.config.disk_wait_attempts.max(1).saturating_sub(1));
        let start = std::time::Instant::now();
        let node = self.node_value();
        loop {
            let found = disks::discover(&disks::Sources::default(), self.config.allow_loop_devices);
            if let Some(md) = raid_root(&node, &found)? {
                tracing::info!(device = %md.name, "root device: the software RAID root volume");
                return Ok(md);
            }
            let last_try = start.elapsed() >= budget;
            match root_device::select(&found, &node, strict, last_try) {
                Ok(d) => return Ok(d.device),
                Err(
                    RootDeviceError::NoMatch { .. }
                    | RootDeviceError::TooSmall { .. }
                    | RootDeviceError::NoDisks,
                ) if !last_try => std::thread::sleep(std::time::Duration::from_millis(200)),
                Err(e) => return Err(CommandError::new(ErrorKind::DeviceNotFound, e.to_string())),
            }
        }
    }

    /// With `--simulate-power` (tests) only a loop device or an image file may be changed: a
    /// test never writes a disk it did not create.
    pub fn check_test_disk(&self, disk: &std::path::Path) -> Result<(), CommandError> {
        if !self.config.simulate_power {
            return Ok(());
        }
        let name = disk
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with("loop") || std::fs::metadata(disk).is_ok_and(|m| m.is_file()) {
            Ok(())
        } else {
            Err(CommandError::new(
                ErrorKind::DeviceNotFound,
                format!(
                    "refusing to change {}: with --simulate-power (tests) only loop devices are written",
                    disk.display()
                ),
            ))
        }
    }

    pub fn emit(&self, ev: SystemEvent) {
        let _ = self.events.send(ev);
    }
}

/// Parse params into a command's argument struct. Unknown or ill-typed arguments are a
/// `TypeError`, which Ironic treats as a hard failure instead of retrying.
pub fn args<T: DeserializeOwned>(params: Params) -> Result<T, CommandError> {
    serde_json::from_value(Value::Object(params))
        .map_err(|e| CommandError::new(ErrorKind::TypeError, e.to_string()))
}

/// For commands that take no arguments: refuse any, naming them.
pub fn no_args(params: &Params) -> Result<(), CommandError> {
    if params.is_empty() {
        Ok(())
    } else {
        let keys: Vec<&str> = params.keys().map(String::as_str).collect();
        Err(CommandError::new(
            ErrorKind::TypeError,
            format!("unexpected keyword arguments: {}", keys.join(", ")),
        ))
    }
}

const fn spec(
    extension: &'static str,
    name: &'static str,
    mode: Mode,
    handler: Handler,
    validate: Option<Validator>,
) -> Spec {
    Spec {
        extension,
        name,
        mode,
        handler,
        validate,
    }
}

const fn sync(extension: &'static str, name: &'static str, handler: Handler) -> Spec {
    spec(extension, name, Mode::Sync, handler, None)
}

const fn asynchronous(extension: &'static str, name: &'static str, handler: Handler) -> Spec {
    spec(extension, name, Mode::Async, handler, None)
}

/// The extension only `--enable-test-extension` (tests) serves.
const TEST_EXTENSION: &str = "test";

/// Every command, one row each (the step kinds have their own rows in `steps`).
static COMMANDS: &[Spec] = &[
    spec(
        "standby",
        "prepare_image",
        Mode::Async,
        write_image::prepare_image,
        Some(write_image::validate),
    ),
    spec(
        "standby",
        "cache_image",
        Mode::Async,
        write_image::cache_image,
        Some(write_image::validate),
    ),
    sync(
        "standby",
        "get_partition_uuids",
        standby::get_partition_uuids,
    ),
    sync("standby", "sync", standby::sync),
    asynchronous("standby", "power_off", standby::power_off),
    asynchronous("standby", "run_image", standby::run_image),
    sync("deploy", "get_deploy_steps", steps::get_deploy_steps),
    asynchronous("deploy", "execute_deploy_step", steps::execute_deploy_step),
    sync("clean", "get_clean_steps", steps::get_clean_steps),
    asynchronous("clean", "execute_clean_step", steps::execute_clean_step),
    sync("service", "get_service_steps", steps::get_service_steps),
    asynchronous(
        "service",
        "execute_service_step",
        steps::execute_service_step,
    ),
    // install_bootloader is async in IPA, and Ironic polls it every 6 s until it is no longer
    // RUNNING. Rivet's work here takes milliseconds, so it runs to completion before
    // answering: same result shape, and the conductor's first poll already finds it done.
    sync("image", "install_bootloader", image::install_bootloader),
    sync("poll", "get_hardware_info", poll::get_hardware_info),
    sync("log", "collect_system_logs", log::collect_system_logs),
    sync("system", "lockdown", system::lockdown),
    sync("rescue", "finalize_rescue", rescue::finalize_rescue),
    asynchronous(TEST_EXTENSION, "sleep", testing::sleep),
    asynchronous(TEST_EXTENSION, "fail", testing::fail),
    asynchronous(TEST_EXTENSION, "panic", testing::panic),
    sync(TEST_EXTENSION, "panic_sync", testing::panic),
    sync(TEST_EXTENSION, "echo", testing::echo),
];

/// With software RAID, the deploy goes onto an md array: the one the node's RAID
/// configuration marks `is_root_volume` (found by its volume name), else, when no root device
/// hints are given, the smallest array. Only for a node with a software RAID configuration:
/// any other array is a previous tenant's (assembled at start-up from what the disks carry)
/// and is never a root. The array chosen must be writable and not in `skip_block_devices`; the
/// smallest array, chosen without a root volume, must also have the minimum size any disk
/// needs without hints (the root volume the operator sized is taken as it is, as IPA does).
/// Refused, it is an error, not a fall-back to a plain disk. `None` without a RAID
/// configuration or arrays (or with hints and no root volume): the ordinary choice applies.
fn raid_root(
    node: &Value,
    found: &[crate::hardware::disks::Disk],
) -> Result<Option<crate::hardware::disks::Disk>, CommandError> {
    use crate::hardware::root_device;
    if !root_device::has_software_raid(node) {
        return Ok(None);
    }
    let arrays: Vec<&crate::hardware::disks::Disk> =
        found.iter().filter(|d| d.kind == "raid").collect();
    if arrays.is_empty() {
        return Ok(None);
    }
    let named = crate::disk::md::arrays(std::path::Path::new("/sys/block"));
    let name_of = |d: &crate::hardware::disks::Disk| {
        named
            .iter()
            .find(|a| a.device == d.name)
            .and_then(|a| a.name.clone())
    };
    let root_name = [
        "/raid_config/logical_disks",
        "/target_raid_config/logical_disks",
    ]
    .iter()
    .filter_map(|p| node.pointer(p).and_then(Value::as_array))
    .flatten()
    .find(|l| l.get("is_root_volume").and_then(Value::as_bool) == Some(true))
    .and_then(|l| {
        l.get("volume_name")
            .and_then(Value::as_str)
            .map(str::to_string)
    });
    let (hints, skip) = root_device::node_hints(node);
    let refused = |md: &crate::hardware::disks::Disk, why: String| {
        CommandError::new(
            ErrorKind::DeviceNotFound,
            format!(
                "the software RAID root volume {} cannot be used: {why}",
                md.name
            ),
        )
    };
    if let Some(name) = root_name {
        let Some(md) = arrays
            .into_iter()
            .find(|d| name_of(d).as_deref() == Some(name.as_str()))
            .cloned()
        else {
            return Ok(None);
        };
        if md.read_only {
            return Err(refused(&md, "read-only".into()));
        }
        if let Some(why) =
            root_device::skipped(skip.as_ref(), &md).map_err(|e| refused(&md, e.to_string()))?
        {
            return Err(refused(&md, why));
        }
        return Ok(Some(md));
    }
    if hints.is_some() {
        return Ok(None);
    }
    // The ESP mirror is never a root.
    let Some(md) = arrays
        .into_iter()
        .filter(|d| name_of(d).as_deref() != Some("esp"))
        .min_by_key(|d| d.size)
        .cloned()
    else {
        return Ok(None);
    };
    root_device::choose(std::slice::from_ref(&md), None, skip.as_ref(), false)
        .map(|d| Some(d.device))
        .map_err(|e| refused(&md, e.to_string()))
}

/// Find a command; the errors are IPA's (404 unknown extension, 400 unknown command).
pub fn lookup(ext: &str, cmd: &str, test_extension: bool) -> Result<&'static Spec, ApiError> {
    let mut rows = COMMANDS
        .iter()
        .filter(|s| s.extension == ext && (test_extension || s.extension != TEST_EXTENSION))
        .peekable();
    if rows.peek().is_none() {
        return Err(ApiError::new(
            404,
            format!("Not found: Extension with id {ext} not found."),
        ));
    }
    rows.find(|s| s.name == cmd)
        .ok_or_else(|| ApiError::new(400, format!("Invalid command: Unknown command: {cmd}")))
}

/// The disks cleaning erases and burns in (IPA's list: writable disks not in
/// skip_block_devices), less what must survive a cleaning: removable media and virtual media
/// (unless the root device hints name them), and the arrays `skip_block_devices` keeps by
/// volume name with the ESP mirror beside them (see `deploy::raid::Disposition`). Every other
/// array is stopped first (`deploy::raid::release_for_erase`) so its member disks are erased
/// whole; an array that shares a disk with a kept one stays and is erased through its md
/// device, its members left to it. With --simulate-power (tests) only the node's root device,
/// and it must be a loop device.
pub(crate) fn erase_targets(
    ctx: &Context,
) -> Result<Vec<crate::hardware::disks::Disk>, CommandError> {
    Ok(erase_candidates(ctx)?.0)
}

/// The disks cleaning would erase, split into the writable ones and the read-only ones (the
/// erase steps decide what a read-only disk means: IPA skips it in the metadata and express
/// erases, and fails the full erase unless the node says `agent_erase_skip_read_only`).
pub(crate) fn erase_candidates(
    ctx: &Context,
) -> Result<
    (
        Vec<crate::hardware::disks::Disk>,
        Vec<crate::hardware::disks::Disk>,
    ),
    CommandError,
> {
    use crate::hardware::{disks, root_device};
    let all = if ctx.config.simulate_power {
        // A read-only disk is never a root device (root_disk would wait for a writable
        // one), but the erase steps must see the one the node names.
        let (hints, _) = root_device::node_hints(&ctx.node_value());
        let named = hints
            .as_ref()
            .and_then(|h| h.get("name"))
            .and_then(serde_json::Value::as_str)
            .map(str::to_string);
        let read_only = named.and_then(|n| {
            disks::discover(&disks::Sources::default(), ctx.config.allow_loop_devices)
                .into_iter()
                .find(|d| d.read_only && d.name == n)
        });
        let d = match read_only {
            Some(d) => d,
            None => ctx.root_disk(false)?,
        };
        ctx.check_test_disk(std::path::Path::new(&d.name))
            .map_err(|e| CommandError::new(ErrorKind::Cleaning, e.details))?;
        vec![d]
    } else {
        let node = ctx.node_value();
        let (hints, skip) = root_device::node_hints(&node);
        let volumes = crate::deploy::raid::skipped_volumes(&node);
        crate::deploy::raid::release_for_erase(std::path::Path::new("/sys/block"), &volumes)
            .map_err(|e| CommandError::new(ErrorKind::Cleaning, e.to_string()))?;
        let kept_arrays: Vec<String> = if volumes.is_empty() {
            Vec::new()
        } else {
            crate::deploy::raid::existing(std::path::Path::new("/sys/block"), &volumes)
                .into_iter()
                .filter(|e| e.disposition == crate::deploy::raid::Disposition::Keep)
                .map(|e| e.array.device)
                .collect()
        };
        let mut out = Vec::new();
        for d in disks::discover(&disks::Sources::default(), ctx.config.allow_loop_devices) {
            if kept_arrays.contains(&d.name) {
                tracing::info!(disk = %d.name, reason = "kept by volume name (skip_block_devices)", "not erased");
                continue;
            }
            let bad = |e: root_device::RootDeviceError| {
                CommandError::new(ErrorKind::Cleaning, e.to_string())
            };
            let why = match root_device::skipped(skip.as_ref(), &d).map_err(bad)? {
                Some(w) => Some(w),
                None => root_device::protected(&d, hints.as_ref()).map_err(bad)?,
            };
            match why {
                Some(w) => tracing::info!(disk = %d.name, reason = %w, "not erased"),
                None => out.push(d),
            }
        }
        out
    };
    Ok(all.into_iter().partition(|d| !d.read_only))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_errors_match_ipa() {
        assert!(lookup("standby", "sync", false).is_ok());
        assert_eq!(lookup("test", "echo", true).unwrap().name, "echo");
        assert_eq!(lookup("test", "echo", false).unwrap_err().status, 404);
        let e = lookup("nope", "sync", false).unwrap_err();
        assert_eq!(
            (e.status, e.faultstring.as_str()),
            (404, "Not found: Extension with id nope not found.")
        );
        let e = lookup("standby", "nope", false).unwrap_err();
        assert_eq!(
            (e.status, e.faultstring.as_str()),
            (400, "Invalid command: Unknown command: nope")
        );
    }
}

#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;
    use crate::config::{cmdline::parse_params, AgentArgs};

    /// A context with a harmless configuration (power actions only end the process).
    pub fn ctx() -> (Context, mpsc::UnboundedReceiver<SystemEvent>) {
        let args = AgentArgs {
            simulate_power: true,
            ..Default::default()
        };
        let cfg = Config::from_params(&parse_params("ipa-api-url=http://127.0.0.1:9"), &args)
            .expect("test config");
        Context::new(cfg)
    }
}
