//! Step-based extensions (`deploy`, `clean`, `service`): list the steps this agent really
//! implements, and run one, the way the conductor expects (`agent_base.process_next_step`):
//! * the lists carry `hardware_manager_version`, which the conductor stores and sends back as
//!   `<kind>_version`; a different map answers `CLEAN_VERSION_MISMATCH` so it re-reads steps;
//! * the result echoes the step exactly as received (`<kind>_step`), which is how the
//!   conductor recognises that *its* current step finished;
//! * failures are reported with the kind's IPA error type (DeploymentError, CleaningError,
//!   ServicingError) and a message naming the step.
//!
//! Every list must be non-empty: the conductor caches the lists and takes an empty one for
//! "not fetched yet", asking again on every heartbeat, which appends `get_*_steps` after the
//! step it is waiting for so that it never sees the step finish. `write_image` is always listed
//! because Ironic's own out-of-band `write_image` step is proxied to it.

use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{args, Context, Outcome, Params};
use crate::config::steps_d::{CustomStep, StepKind};
use crate::error::{CommandError, ErrorKind};

/// The manager name and version the conductor stores and checks (opaque to it). Bump the
/// version when the step list or step semantics change.
pub use crate::hardware::{MANAGER_CLASS, MANAGER_NAME, MANAGER_VERSION};

pub fn manager_version() -> Value {
    json!({ MANAGER_NAME: MANAGER_VERSION })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Deploy,
    Clean,
    Service,
}

impl Kind {
    fn word(self) -> &'static str {
        match self {
            Kind::Deploy => "deploy",
            Kind::Clean => "clean",
            Kind::Service => "service",
        }
    }

    fn error_kind(self) -> ErrorKind {
        match self {
            Kind::Deploy => ErrorKind::Deployment,
            Kind::Clean => ErrorKind::Cleaning,
            Kind::Service => ErrorKind::Servicing,
        }
    }
}

pub type StepFn = fn(&Context, &Map<String, Value>) -> Result<Option<Value>, CommandError>;

/// A step's priority as listed: fixed, or from the agent's configuration.
#[derive(Clone, Copy)]
pub enum Priority {
    Fixed(i64),
    Configured(fn(&Context) -> i64),
}

/// One step this agent can run, as one kind of step (`erase_devices_metadata` is a clean step
/// at 99 and a deploy step at 0: two rows).
pub struct StepDef {
    pub kind: Kind,
    pub name: &'static str,
    pub interface: &'static str,
    pub priority: Priority,
    pub abortable: bool,
    pub argsinfo: Option<fn() -> Value>,
    pub run: StepFn,
}

fn inject_files_argsinfo() -> Value {
    json!({
        "files": {
            "description": "Files to put into the deployed disk's file systems: a list of \
                {path, partition, content (base64 or URL), deleted, mode, dirmode, owner, group}; \
                merged after node.properties[inject_files].",
            "required": false,
        },
        "verify_ca": {
            "description": "Verify TLS when content is a URL (false, or a CA bundle path); \
                the agent's settings by default.",
            "required": false,
        },
    })
}

/// A row of [`STEPS`]: a step of the `deploy` interface with no arguments described.
const fn step(
    kind: Kind,
    name: &'static str,
    priority: i64,
    abortable: bool,
    run: StepFn,
) -> StepDef {
    StepDef {
        kind,
        name,
        interface: "deploy",
        priority: Priority::Fixed(priority),
        abortable,
        argsinfo: None,
        run,
    }
}

/// The steps that change nothing on the disks (or, `write_image`, keep track of what they
/// write themselves): every other one ends IPA's cache rule (see `Context::forget_written`).
const LEAVE_THE_IMAGE: &[&str] = &[
    "write_image",
    "clean_uefi_nvram",
    "erase_pstore",
    "burnin_cpu",
    "burnin_memory",
    "burnin_network",
];

/// Every step, as the conductor sees them, in the order they are listed.
static STEPS: &[StepDef] = &[
    step(
        Kind::Deploy,
        "erase_devices_metadata",
        0,
        true,
        erase_devices_metadata,
    ),
    step(
        Kind::Deploy,
        "write_image",
        0,
        false,
        super::write_image::write_image_step,
    ),
    StepDef {
        kind: Kind::Deploy,
        name: "inject_files",
        interface: "deploy",
        priority: Priority::Configured(|ctx| ctx.config.inject_files_priority),
        abortable: false,
        argsinfo: Some(inject_files_argsinfo),
        run: super::inject_files::inject_files_step,
    },
    step(Kind::Clean, "erase_devices", 10, true, erase_devices),
    step(
        Kind::Clean,
        "erase_devices_metadata",
        99,
        true,
        erase_devices_metadata,
    ),
    step(
        Kind::Clean,
        "erase_devices_express",
        0,
        true,
        erase_devices_express,
    ),
    step(Kind::Clean, "erase_pstore", 0, true, erase_pstore),
    StepDef {
        argsinfo: Some(clean_uefi_nvram_argsinfo),
        ..step(Kind::Clean, "clean_uefi_nvram", 0, true, clean_uefi_nvram)
    },
    StepDef {
        argsinfo: Some(clean_uefi_nvram_argsinfo),
        ..step(Kind::Deploy, "clean_uefi_nvram", 0, true, clean_uefi_nvram)
    },
    on_request(Kind::Clean, "burnin_cpu", super::burnin::burnin_cpu),
    on_request(Kind::Clean, "burnin_disk", super::burnin::burnin_disk),
    on_request(Kind::Clean, "burnin_memory", super::burnin::burnin_memory),
    on_request(Kind::Clean, "burnin_network", super::burnin::burnin_network),
    raid_step(
        Kind::Deploy,
        "apply_configuration",
        super::raid::apply_configuration,
        Some(super::raid::apply_argsinfo),
    ),
    raid_step(
        Kind::Clean,
        "delete_configuration",
        super::raid::delete_configuration,
        None,
    ),
    raid_step(
        Kind::Clean,
        "create_configuration",
        super::raid::create_configuration,
        None,
    ),
    step(
        Kind::Service,
        "write_image",
        0,
        false,
        super::write_image::write_image_step,
    ),
    // IPA 13 lists it as a service step too (files into an active node's image), with the
    // same priority option.
    StepDef {
        kind: Kind::Service,
        name: "inject_files",
        interface: "deploy",
        priority: Priority::Configured(|ctx| ctx.config.inject_files_priority),
        abortable: false,
        argsinfo: Some(inject_files_argsinfo),
        run: super::inject_files::inject_files_step,
    },
    raid_step(
        Kind::Service,
        "apply_configuration",
        super::raid::apply_configuration,
        Some(super::raid::apply_argsinfo),
    ),
    raid_step(
        Kind::Service,
        "delete_configuration",
        super::raid::delete_configuration,
        None,
    ),
    raid_step(
        Kind::Service,
        "create_configuration",
        super::raid::create_configuration,
        None,
    ),
    // On an active node the tenant's disks stay: no burnin_disk among the service steps.
    on_request(Kind::Service, "burnin_cpu", super::burnin::burnin_cpu),
    on_request(Kind::Service, "burnin_memory", super::burnin::burnin_memory),
    on_request(
        Kind::Service,
        "burnin_network",
        super::burnin::burnin_network,
    ),
];

/// A row of [`STEPS`]: a step of the `deploy` interface run only when asked for (priority 0),
/// abortable (burn-in: stopping early loses nothing).
const fn on_request(kind: Kind, name: &'static str, run: StepFn) -> StepDef {
    step(kind, name, 0, true, run)
}

/// A row of [`STEPS`]: a step of the `raid` interface at priority 0 (the conductor sets the
/// priorities it wants), not abortable (an array half made is worse than one finished).
const fn raid_step(
    kind: Kind,
    name: &'static str,
    run: StepFn,
    argsinfo: Option<fn() -> Value>,
) -> StepDef {
    StepDef {
        kind,
        name,
        interface: "raid",
        priority: Priority::Fixed(0),
        abortable: false,
        argsinfo,
        run,
    }
}

fn table(kind: Kind) -> impl Iterator<Item = &'static StepDef> {
    STEPS.iter().filter(move |s| s.kind == kind)
}

fn custom_kind(kind: Kind) -> StepKind {
    match kind {
        Kind::Clean => StepKind::Clean,
        Kind::Deploy => StepKind::Deploy,
        Kind::Service => StepKind::Service,
    }
}

/// Whether a built-in step of this kind has the name: a custom step may not take it.
pub fn builtin_taken(kind: StepKind, name: &str) -> bool {
    STEPS
        .iter()
        .any(|s| custom_kind(s.kind) == kind && s.name == name)
}

/// The custom steps of this kind (loaded from the steps directory at start-up).
fn custom(ctx: &Context, kind: Kind) -> impl Iterator<Item = &CustomStep> {
    ctx.config
        .custom_steps
        .iter()
        .filter(move |c| c.kinds.contains(&custom_kind(kind)))
}

/// Run a custom step's executable for this node, with the root device (when one is chosen)
/// and the node in its environment.
fn run_custom(
    ctx: &Context,
    c: &CustomStep,
    kind: Kind,
    args: &Map<String, Value>,
) -> Result<Option<Value>, CommandError> {
    let fail = |msg: String| CommandError::new(kind.error_kind(), msg);
    let missing = c.missing_args(args);
    if !missing.is_empty() {
        return Err(CommandError::new(
            ErrorKind::InvalidParams,
            format!(
                "{} step {} needs the argument(s) {} (its manifest {} marks them required)",
                kind.word(),
                c.name,
                missing.join(", "),
                c.manifest.display()
            ),
        ));
    }
    let device = match ctx.root_disk(false) {
        Ok(d) => {
            ctx.check_test_disk(std::path::Path::new(&d.name))?;
            d.name
        }
        Err(e) => {
            tracing::info!(error = %e.details, "no root device for the custom step: RIVET_DEVICE is empty");
            String::new()
        }
    };
    let node_uuid = ctx.node_value()["uuid"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let env = [
        ("RIVET_DEVICE", device),
        ("RIVET_NODE_UUID", node_uuid),
        ("RIVET_STEP", c.name.clone()),
        ("RIVET_STEP_KIND", kind.word().to_string()),
    ];
    tracing::info!(step = %c.name, exec = %c.exec.display(), "custom step started");
    crate::system::custom_step::run(
        &c.exec,
        &c.name,
        &Value::Object(args.clone()),
        &env,
        c.timeout,
    )
    .map(Some)
    .map_err(|e| fail(format!("custom step {} failed: {e}", c.name)))
}

/// A node setting from `driver_info` (where an operator can set it) or `driver_internal_info`
/// (where the conductor puts IPA's erase settings), the latter winning.
fn node_setting(node: &Value, key: &str) -> Option<Value> {
    node["driver_internal_info"]
        .get(key)
        .or_else(|| node["driver_info"].get(key))
        .filter(|v| !v.is_null())
        .cloned()
}

/// A boolean node setting: JSON true/false or oslo's spellings in a string (IPA takes the
/// value as it comes, so a string "false" counted as true there; here it is false).
fn node_flag(node: &Value, key: &str) -> Result<Option<bool>, CommandError> {
    match node_setting(node, key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(b)),
        Some(Value::String(t)) => crate::config::cmdline::parse_bool(key, &t)
            .map(Some)
            .map_err(|e| CommandError::new(ErrorKind::InvalidParams, e.to_string())),
        Some(other) => Err(CommandError::new(
            ErrorKind::InvalidParams,
            format!("{key}: expected a boolean, got {other}"),
        )),
    }
}

/// Refuse the disks that hold a volume other hosts may share, unless the operator turned
/// the guard off (`ipa-guard-special-filesystems=false`, the node's
/// `wipe_special_filesystems: false`).
fn guard_shared_volumes(
    ctx: &Context,
    disks: &[crate::hardware::disks::Disk],
) -> Result<(), CommandError> {
    let node = ctx.node_value();
    if !ctx.config.guard_special_filesystems
        || node_flag(&node, "wipe_special_filesystems")? == Some(false)
    {
        return Ok(());
    }
    let refused: Vec<String> = disks
        .iter()
        .filter_map(|d| crate::disk::shared_fs::check(std::path::Path::new(&d.name)).err())
        .map(|e| e.to_string())
        .collect();
    if refused.is_empty() {
        Ok(())
    } else {
        Err(CommandError::new(
            ErrorKind::ProtectedDevice,
            refused.join("; "),
        ))
    }
}

/// Read-only disks in the metadata and express erases: skipped and said (IPA skips them).
fn skip_read_only(
    ro: &[crate::hardware::disks::Disk],
    report: &mut serde_json::Map<String, Value>,
) {
    for d in ro {
        tracing::info!(disk = %d.name, "read-only: not erased");
        report.insert(d.name.clone(), json!({"skipped": "read-only"}));
    }
}

/// Erase partition tables and file-system/RAID signatures on every disk cleaning erases.
fn erase_devices_metadata(
    ctx: &Context,
    _args: &Map<String, Value>,
) -> Result<Option<Value>, CommandError> {
    let (targets, ro) = super::erase_candidates(ctx)?;
    guard_shared_volumes(ctx, &targets)?;
    let mut report = serde_json::Map::new();
    skip_read_only(&ro, &mut report);
    let mut errors = Vec::new();
    for d in &targets {
        crate::disk::nodes::release_holders(std::path::Path::new(&d.name));
        match crate::disk::wipe::erase_metadata(std::path::Path::new(&d.name)) {
            Ok(found) => {
                tracing::info!(disk = %d.name, ?found, "metadata erased");
                report.insert(d.name.clone(), json!(found));
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    if !errors.is_empty() {
        return Err(CommandError::new(
            ErrorKind::Cleaning,
            format!("erase_devices_metadata failed: {}", errors.join("; ")),
        ));
    }
    Ok(Some(Value::Object(report)))
}

/// The erase policy the conductor set for this node (driver_internal_info, IPA's keys and
/// defaults), with `ipa-enable-discard-erase` from the command line.
fn erase_policy(ctx: &Context, express: bool) -> Result<crate::disk::erase::Policy, CommandError> {
    let node = ctx.node_value();
    let d = crate::disk::erase::Policy::default();
    let flag = |k: &str, def: bool| node_flag(&node, k).map(|v| v.unwrap_or(def));
    // IPA: agent_continue_if_secure_erase_failed, else the older ATA-only name.
    let cont = match node_flag(&node, "agent_continue_if_secure_erase_failed")? {
        Some(v) => v,
        None => flag("agent_continue_if_ata_erase_failed", false)?,
    };
    Ok(crate::disk::erase::Policy {
        random_passes: node_setting(&node, "agent_erase_devices_iterations")
            .and_then(|v| v.as_u64())
            .map_or(d.random_passes, |n| n.min(100) as u32),
        final_zeros: flag("agent_erase_devices_zeroize", d.final_zeros)?,
        nvme_secure_erase: flag("agent_enable_nvme_secure_erase", d.nvme_secure_erase)?,
        ata_secure_erase: flag("agent_enable_ata_secure_erase", d.ata_secure_erase)?,
        express,
        continue_if_secure_erase_failed: cont,
        discard_if_secure_erase_failed: flag(
            "agent_enable_discard_erase",
            ctx.config.enable_discard_erase,
        )?,
        keep: Vec::new(),
    })
}

/// `disk_erasure_concurrency` (IPA's default 1; Ironic sends its own, 4 unless configured):
/// a number or a numeric string, at least 1, at most 64.
fn erase_concurrency(ctx: &Context) -> Result<usize, CommandError> {
    let node = ctx.node_value();
    let bad = |v: &Value| {
        CommandError::new(
            ErrorKind::InvalidParams,
            format!("disk_erasure_concurrency: expected a positive integer, got {v}"),
        )
    };
    let n = match node_setting(&node, "disk_erasure_concurrency") {
        None => 1,
        Some(v) => match &v {
            Value::Number(n) => n.as_u64().ok_or_else(|| bad(&v))?,
            Value::String(t) => t.trim().parse::<u64>().map_err(|_| bad(&v))?,
            _ => return Err(bad(&v)),
        },
    };
    Ok(usize::try_from(n.clamp(1, 64)).unwrap_or(1))
}

fn erase_all(ctx: &Context, express: bool) -> Result<Option<Value>, CommandError> {
    let (targets, ro) = super::erase_candidates(ctx)?;
    let mut policy = erase_policy(ctx, express)?;
    let concurrency = erase_concurrency(ctx)?;
    let mut report = serde_json::Map::new();
    let mut errors = Vec::new();
    if express {
        skip_read_only(&ro, &mut report);
    } else if !ro.is_empty() {
        // A full erase that cannot write a disk must not look like one that did: the node
        // says when skipping is fine.
        if node_flag(&ctx.node_value(), "agent_erase_skip_read_only")?.unwrap_or(false) {
            skip_read_only(&ro, &mut report);
        } else {
            for d in &ro {
                errors.push(format!(
                    "{}: the disk is read-only and cannot be erased (set the node's \
                     agent_erase_skip_read_only to skip read-only disks)",
                    d.name
                ));
            }
        }
    }
    guard_shared_volumes(ctx, &targets)?;
    // Everything else is kept: an NVMe format must not reach a kept namespace.
    policy.keep = crate::hardware::disks::discover(
        &crate::hardware::disks::Sources::default(),
        ctx.config.allow_loop_devices,
    )
    .into_iter()
    .map(|d| d.name)
    .filter(|n| !targets.iter().any(|t| &t.name == n))
    .collect();
    let paths: Vec<std::path::PathBuf> = targets
        .iter()
        .map(|d| std::path::PathBuf::from(&d.name))
        .collect();
    for (disk, r) in crate::disk::erase::erase_many(&paths, &policy, concurrency) {
        let name = disk.display().to_string();
        match r {
            Ok(done) => {
                tracing::info!(
                    disk = %name,
                    method = done.method,
                    bytes = done.bytes,
                    samples = done.samples_checked,
                    seconds = done.finished - done.started,
                    "disk erased and verified"
                );
                report.insert(name, json!(done));
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    if !errors.is_empty() {
        return Err(CommandError::new(
            ErrorKind::BlockDeviceErase,
            format!("Error erasing block devices: {}", errors.join("; ")),
        ));
    }
    Ok(Some(Value::Object(report)))
}

fn erase_devices(ctx: &Context, _args: &Map<String, Value>) -> Result<Option<Value>, CommandError> {
    erase_all(ctx, false)
}

fn erase_devices_express(
    ctx: &Context,
    _args: &Map<String, Value>,
) -> Result<Option<Value>, CommandError> {
    erase_all(ctx, true)
}

/// Remove the kernel's saved crash records (pstore), which may hold a previous tenant's data.
/// Not with `--simulate-power`: the records are the test machine's own.
fn erase_pstore(ctx: &Context, _args: &Map<String, Value>) -> Result<Option<Value>, CommandError> {
    if ctx.config.simulate_power {
        tracing::info!("--simulate-power: pstore left alone");
        return Ok(Some(json!({ "removed": 0, "simulated": true })));
    }
    crate::system::pstore::erase(std::path::Path::new("/sys/fs/pstore"))
        .map(|n| Some(json!({ "removed": n })))
        .map_err(|e| CommandError::exec(format!("erasing pstore: {e}")))
}

/// IPA's default patterns: entries for disks (device paths starting `HD(`), shim and GRUB.
const NVRAM_DEFAULT_PATTERNS: [&str; 3] = [r"^HD\(", r"shim.*\.efi", r"grub.*\.efi"];

fn clean_uefi_nvram_argsinfo() -> Value {
    json!({"match_patterns": {
        "description": format!(
            "A list of regular expressions (case-insensitive); every UEFI boot entry whose \
             device path matches one is deleted. Default: {}",
            serde_json::to_string(&NVRAM_DEFAULT_PATTERNS).unwrap_or_default()
        ),
        "required": false,
    }})
}

/// `match_patterns` as a list of regular expressions (also accepted as a JSON string holding
/// the list, as operators pass it on the command line).
fn nvram_patterns(args: &Map<String, Value>) -> Result<Vec<regex::Regex>, CommandError> {
    let v = match args.get("match_patterns") {
        None | Some(Value::Null) => json!(NVRAM_DEFAULT_PATTERNS),
        Some(Value::String(s)) => serde_json::from_str(s).unwrap_or(Value::String(s.clone())),
        Some(v) => v.clone(),
    };
    let invalid = |why: String| {
        CommandError::new(
            ErrorKind::InvalidParams,
            format!("The match_patterns must be a list of strings: {v}: {why}"),
        )
    };
    let items = v.as_array().ok_or_else(|| invalid("not a list".into()))?;
    if items.len() > 64 {
        return Err(invalid("more than 64 patterns".into()));
    }
    items
        .iter()
        .map(|p| {
            let s = p
                .as_str()
                .ok_or_else(|| invalid(format!("{p} is not a string")))?;
            regex::RegexBuilder::new(s)
                .case_insensitive(true)
                .size_limit(1 << 20)
                .build()
                .map_err(|e| invalid(e.to_string()))
        })
        .collect()
}

/// Delete the firmware boot entries a previous tenant's OS (or an earlier deploy) left, by
/// pattern. Not with `--simulate-power`: the entries are the test machine's own.
fn clean_uefi_nvram(
    ctx: &Context,
    args: &Map<String, Value>,
) -> Result<Option<Value>, CommandError> {
    let patterns = nvram_patterns(args)?;
    if ctx.config.simulate_power {
        tracing::info!("--simulate-power: UEFI boot entries left alone");
        return Ok(Some(json!({ "deleted": [], "simulated": true })));
    }
    if !crate::deploy::nvram::writable(true) {
        return Err(CommandError::exec(
            "cannot clean UEFI boot entries: not booted through UEFI, or no efibootmgr in this ramdisk",
        ));
    }
    let gone = crate::deploy::nvram::clean("efibootmgr", &patterns)
        .map_err(|e| CommandError::exec(e.to_string()))?;
    Ok(Some(json!({
        "deleted": gone.iter().map(|r| json!({"entry": r.num, "label": r.label, "path": r.path})).collect::<Vec<_>>(),
    })))
}

fn step_list(ctx: &Context, kind: Kind) -> Value {
    let steps: Vec<Value> = table(kind)
        .map(|s| {
            let mut v = json!({
                "step": s.name,
                "priority": match s.priority {
                    Priority::Fixed(p) => p,
                    Priority::Configured(f) => f(ctx),
                },
                "interface": s.interface,
                "reboot_requested": false,
                "abortable": s.abortable,
            });
            if let Some(info) = s.argsinfo {
                v["argsinfo"] = info();
            }
            v
        })
        .chain(custom(ctx, kind).map(|c| {
            let mut v = json!({
                "step": c.name,
                "priority": c.priority,
                "interface": c.interface,
                "reboot_requested": c.reboot_requested,
                "abortable": c.abortable,
            });
            if let Some(info) = c.argsinfo_json() {
                v["argsinfo"] = info;
            }
            v
        }))
        .collect();
    json!({
        format!("{}_steps", kind.word()): { MANAGER_CLASS: steps },
        "hardware_manager_version": manager_version(),
    })
}

#[derive(Deserialize)]
struct GetSteps {
    #[serde(default)]
    node: Option<Value>,
    #[serde(default)]
    #[allow(dead_code)]
    ports: Option<Value>,
}

fn get_steps(ctx: &Context, params: Params, kind: Kind) -> Result<Outcome, CommandError> {
    let a: GetSteps = args(params)?;
    if let Some(node) = &a.node {
        ctx.set_node(node);
    }
    Ok(Outcome::Json(step_list(ctx, kind)))
}

pub fn get_deploy_steps(ctx: &Context, params: Params) -> Result<Outcome, CommandError> {
    get_steps(ctx, params, Kind::Deploy)
}
pub fn get_clean_steps(ctx: &Context, params: Params) -> Result<Outcome, CommandError> {
    get_steps(ctx, params, Kind::Clean)
}
pub fn get_service_steps(ctx: &Context, params: Params) -> Result<Outcome, CommandError> {
    get_steps(ctx, params, Kind::Service)
}

fn execute(ctx: &Context, mut params: Params, kind: Kind) -> Result<Outcome, CommandError> {
    let fail = |msg: String| CommandError::new(kind.error_kind(), msg);
    let step = params.remove("step").ok_or_else(|| {
        CommandError::new(ErrorKind::TypeError, "missing required argument: step")
    })?;
    if let Some(node) = params.remove("node") {
        ctx.set_node(&node);
    }
    if let Some(ports) = params.remove("ports") {
        ctx.set_ports(&ports);
    }
    let version = params.remove(&format!("{}_version", kind.word()));
    if let Some(v) = version.filter(|v| !v.is_null()) {
        if v != manager_version() {
            return Err(CommandError::new(
                ErrorKind::VersionMismatch,
                format!(
                    "Current versions: {}, versions used by ironic: {}",
                    manager_version(),
                    v
                ),
            ));
        }
    }
    let name = step.get("step").and_then(Value::as_str).ok_or_else(|| {
        fail(format!(
            "Malformed {} step, no step name: {step}",
            kind.word()
        ))
    })?;
    let interface = step
        .get("interface")
        .and_then(Value::as_str)
        .unwrap_or("deploy");
    let def = table(kind).find(|s| s.name == name && s.interface == interface);
    let custom_def = custom(ctx, kind).find(|c| c.name == name && c.interface == interface);
    if def.is_none() && custom_def.is_none() {
        return Err(fail(format!(
            "{} step {interface}.{name} is not supported by this agent (Rivet {})",
            kind.word(),
            env!("CARGO_PKG_VERSION")
        )));
    }
    // Step arguments, then any extra keyword arguments of the command, as IPA merges them.
    let mut step_args = step
        .get("args")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    step_args.extend(params);
    if !LEAVE_THE_IMAGE.contains(&name) || custom_def.is_some() && def.is_none() {
        // IPA's cache rule (the same image id again is already on the disk) holds only while
        // nothing else has changed the disk: any other step may have (an erase, a RAID
        // layout, a custom step with the disk in RIVET_DEVICE, files injected).
        ctx.forget_written(name);
    }
    let result = match (def, custom_def) {
        (Some(def), _) => (def.run)(ctx, &step_args),
        (None, Some(c)) => run_custom(ctx, c, kind, &step_args),
        (None, None) => Ok(None),
    }
    .map_err(|e| {
        if e.kind == ErrorKind::CommandExecution {
            fail(format!(
                "Error performing {} step {name}: {}",
                kind.word(),
                e.details
            ))
        } else {
            e
        }
    })?;
    Ok(Outcome::Json(json!({
        format!("{}_result", kind.word()): result,
        format!("{}_step", kind.word()): step,
    })))
}

pub fn execute_deploy_step(ctx: &Context, params: Params) -> Result<Outcome, CommandError> {
    execute(ctx, params, Kind::Deploy)
}
pub fn execute_clean_step(ctx: &Context, params: Params) -> Result<Outcome, CommandError> {
    execute(ctx, params, Kind::Clean)
}
pub fn execute_service_step(ctx: &Context, params: Params) -> Result<Outcome, CommandError> {
    execute(ctx, params, Kind::Service)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::tests_support::ctx;

    #[test]
    fn step_lists_have_ironic_shape() {
        let (c, _rx) = ctx();
        for (kind, key) in [
            (Kind::Deploy, "deploy_steps"),
            (Kind::Clean, "clean_steps"),
            (Kind::Service, "service_steps"),
        ] {
            let v = step_list(&c, kind);
            assert!(v[key][MANAGER_CLASS].is_array(), "{v}");
            assert_eq!(
                v["hardware_manager_version"],
                json!({"generic_hardware_manager": "1.4"})
            );
            for s in v[key][MANAGER_CLASS].as_array().unwrap() {
                assert!(
                    s["step"].is_string() && s["interface"].is_string() && s["priority"].is_i64()
                );
            }
        }
        // IPA 13's service steps: inject_files and write_image among them, never burnin_disk
        // (an active node's disks are the tenant's).
        let v = step_list(&c, Kind::Service);
        let names: Vec<&str> = v["service_steps"][MANAGER_CLASS]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|s| s["step"].as_str())
            .collect();
        for want in [
            "inject_files",
            "write_image",
            "burnin_cpu",
            "create_configuration",
        ] {
            assert!(names.contains(&want), "{want} missing from {names:?}");
        }
        assert!(!names.contains(&"burnin_disk"), "{names:?}");
    }

    #[test]
    fn version_mismatch_and_unknown_step() {
        let (c, _rx) = ctx();
        let p = |v: Value| v.as_object().unwrap().clone();
        let e = execute(
            &c,
            p(
                json!({"step": {"step": "x", "interface": "deploy"}, "node": {}, "ports": [],
                     "deploy_version": {"generic_hardware_manager": "0.9"}}),
            ),
            Kind::Deploy,
        )
        .unwrap_err();
        assert_eq!(e.kind, ErrorKind::VersionMismatch);
        let e = execute(
            &c,
            p(json!({"step": {"step": "frobnicate", "interface": "deploy"}, "clean_version": null})),
            Kind::Clean,
        )
        .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Cleaning);
        assert!(e.details.contains("deploy.frobnicate"), "{}", e.details);
        let e = execute(&c, p(json!({"node": {}})), Kind::Deploy).unwrap_err();
        assert_eq!(e.kind, ErrorKind::TypeError);
    }
}
