//! In-band inspection: what the agent tells the conductor about the machine before the
//! conductor knows which node this is. The collectors are IPA's (`default`, `logs`,
//! `pci-devices`, `numa-topology`, `dmi-decode`, `usb-devices`, `lldp`, `extra-hardware`),
//! each filling its keys of the body exactly as Ironic's hooks read them. A collector that
//! fails adds a line to `error` and the others still run: the post always goes out, since an
//! unknown machine's data is the only way to debug it.
//!
//! LLDP listening (up to `ipa-lldp-timeout`) starts first and runs beside the DHCP wait and
//! the inventory, so a network without LLDP costs one timeout at most, in parallel.

pub mod dhcp;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::config::Config;
use crate::hardware::lldp::{self, RawTlv};
use crate::hardware::{
    inventory, net, numa, pci, root_device, smbios, usb, MANAGER_NAME, MANAGER_VERSION,
};
use crate::system::{logs, tools};

/// Where the collectors read from; tests point them at fixture trees.
#[derive(Debug, Clone)]
pub struct Paths {
    pub pci: PathBuf,
    pub numa_nodes: PathBuf,
    pub net: PathBuf,
    pub usb: PathBuf,
    pub smbios: PathBuf,
}

impl Default for Paths {
    fn default() -> Paths {
        Paths {
            pci: "/sys/bus/pci/devices".into(),
            numa_nodes: "/sys/devices/system/node".into(),
            net: "/sys/class/net".into(),
            usb: "/sys/bus/usb/devices".into(),
            smbios: smbios::TABLE.into(),
        }
    }
}

/// Collector failures, reported in the body's `error` as IPA words it.
#[derive(Debug, Default)]
pub struct Failures(Vec<String>);

impl Failures {
    pub fn add(&mut self, msg: impl Into<String>) {
        let msg = msg.into();
        tracing::error!(error = %msg, "inspection collector failed");
        self.0.push(msg);
    }

    pub fn error(&self) -> Option<String> {
        (!self.0.is_empty()).then(|| {
            let items: Vec<String> = self.0.iter().map(|f| format!("* {f}")).collect();
            format!(
                "The following errors were encountered:\n{}",
                items.join("\n")
            )
        })
    }
}

/// The collected data, ready to post, and the LLDP heard (kept for later inventories).
#[derive(Debug)]
pub struct Report {
    pub body: Map<String, Value>,
    pub lldp: Option<BTreeMap<String, Vec<RawTlv>>>,
}

const TOOL_TIMEOUT: Duration = Duration::from_secs(600);

/// Run the configured collectors.
pub fn collect(cfg: &Config, paths: &Paths) -> Report {
    let names = &cfg.inspection.collectors;
    let mut failures = Failures::default();
    let mut body = Map::new();
    let wants_lldp = cfg.inspection.collect_lldp || names.iter().any(|n| n == "lldp");
    let mut listener = Listener::start(wants_lldp, cfg, paths);
    for name in names {
        match name.as_str() {
            "default" => {
                dhcp::wait(cfg, &paths.net);
                let mut opts = inventory::Options::from_config(cfg);
                if cfg.inspection.collect_lldp {
                    opts.lldp = Some(listener.heard());
                }
                default(&mut body, &opts, names);
            }
            "logs" => match logs::archive_base64() {
                Ok(b64) => {
                    body.insert("logs".into(), b64.into());
                }
                // As IPA: missing logs are not an inspection failure.
                Err(e) => tracing::warn!(error = %e, "no logs for the inspection data"),
            },
            "pci-devices" => match pci::devices(&paths.pci) {
                Ok(list) => {
                    body.insert("pci_devices".into(), json!(list));
                }
                Err(e) => failures.add(format!(
                    "failed to get list of PCI devices from {}: {e}",
                    paths.pci.display()
                )),
            },
            "numa-topology" => match numa::topology(&paths.numa_nodes, &paths.net) {
                Ok(t) => {
                    body.insert("numa_topology".into(), json!(t));
                }
                Err(e) => failures.add(format!("failed to get NUMA topology: {e}")),
            },
            "usb-devices" => match usb::devices(&paths.usb) {
                Ok(list) => {
                    body.insert("usb_devices".into(), json!(list));
                }
                // No USB subsystem at all: no USB devices.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    body.insert("usb_devices".into(), json!([]));
                }
                Err(e) => failures.add(format!("failed to list USB devices: {e}")),
            },
            "dmi-decode" => match std::fs::read(&paths.smbios) {
                Ok(table) => {
                    body.insert("dmi".into(), smbios::dmi(&table));
                }
                Err(e) => failures.add(format!(
                    "failed to read the SMBIOS table {}: {e}",
                    paths.smbios.display()
                )),
            },
            "lldp" => {
                body.insert("lldp_raw".into(), json!(listener.heard()));
            }
            "extra-hardware" => {
                extra_hardware(&mut body, &mut failures, &cfg.inspection.benchmarks)
            }
            other => failures.add(format!("unknown inspection collector {other:?}")),
        }
    }
    let lldp = wants_lldp.then(|| listener.heard());
    body.insert(
        "error".into(),
        failures.error().map(Value::String).unwrap_or(Value::Null),
    );
    Report { body, lldp }
}

type Heard = BTreeMap<String, Vec<RawTlv>>;

/// The LLDP capture, running on its own thread from the start of inspection.
struct Listener {
    running: Option<std::thread::JoinHandle<(Heard, Vec<String>)>>,
    heard: Heard,
}

impl Listener {
    fn start(wanted: bool, cfg: &Config, paths: &Paths) -> Listener {
        let running = wanted.then(|| {
            let ifaces: Vec<String> = net::interfaces(&paths.net, cfg.allow_virtual_nics)
                .into_iter()
                .filter(|i| i.has_carrier)
                .map(|i| i.name)
                .collect();
            let timeout = cfg.inspection.lldp_timeout;
            std::thread::spawn(move || lldp::capture(&ifaces, timeout))
        });
        Listener {
            running,
            heard: Heard::new(),
        }
    }

    /// What was heard: waits for the capture to end the first time.
    fn heard(&mut self) -> Heard {
        if let Some(h) = self.running.take() {
            match h.join() {
                Ok((heard, errors)) => {
                    for e in errors {
                        // As IPA: LLDP trouble is logged, never an inspection failure.
                        tracing::warn!(error = %e, "LLDP");
                    }
                    self.heard = heard;
                }
                Err(_) => tracing::error!("the LLDP listener panicked"),
            }
        }
        self.heard.clone()
    }
}

/// IPA's `default` collector: the inventory, the disk a deploy would choose, the PXE NIC and
/// what collected it.
fn default(body: &mut Map<String, Value>, opts: &inventory::Options, names: &[String]) {
    let inv = inventory::collect(opts);
    match root_device::choose(&inv.disks, None, None, false) {
        Ok(d) => {
            body.insert("root_disk".into(), json!(d.device));
        }
        Err(e) => tracing::warn!(error = %e, "no suitable root device for the inspection data"),
    }
    body.insert("boot_interface".into(), json!(inv.boot.pxe_interface));
    body.insert(
        "configuration".into(),
        json!({
            "collectors": names,
            "managers": [{ "name": MANAGER_NAME, "version": MANAGER_VERSION }],
        }),
    );
    body.insert("inventory".into(), json!(inv));
}

/// `hardware-detect` (the python-hardware tool) when the ramdisk has it, as IPA runs it.
fn extra_hardware(body: &mut Map<String, Value>, failures: &mut Failures, benchmarks: &[String]) {
    let mut args: Vec<&str> = Vec::new();
    if !benchmarks.is_empty() {
        args.push("--benchmark");
        args.extend(benchmarks.iter().map(String::as_str));
    }
    match tools::run_split("hardware-detect", &args, TOOL_TIMEOUT, 64 << 20) {
        Ok((true, out, _)) => match serde_json::from_slice::<Value>(&out) {
            Ok(v) => {
                body.insert("data".into(), v);
            }
            Err(e) => failures.add(format!(
                "JSON returned from hardware-detect cannot be decoded: {e}"
            )),
        },
        Ok((false, _, err)) => failures.add(format!(
            "failed to run hardware-detect utility: {}",
            String::from_utf8_lossy(&err).trim()
        )),
        Err(e) => failures.add(format!("failed to run hardware-detect utility: {e}")),
    }
}
