//! The inventory, in IPA's shape (`poll.get_hardware_info`, inspection), read from sysfs and
//! procfs only: no lshw, lscpu or lsblk in the ramdisk.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

use serde::Serialize;

use super::disks::{self, Disk};
use super::net::{self, Interface};
use crate::config::Config;

#[derive(Debug, Clone, Default)]
pub struct Options {
    pub bootif_raw: Option<String>,
    pub allow_loop_devices: bool,
    pub sources: disks::Sources,
    /// The conductor's `agent_skip_bmc_detect` (Redfish-managed nodes).
    pub skip_bmc_detect: bool,
    pub allow_virtual_nics: bool,
    /// LLDP heard per interface (`ipa-collect-lldp`), reported as `interfaces[].lldp`.
    pub lldp: Option<BTreeMap<String, Vec<super::lldp::RawTlv>>>,
}

impl Options {
    pub fn from_config(c: &Config) -> Options {
        Options {
            bootif_raw: c.bootif_raw.clone(),
            allow_loop_devices: c.allow_loop_devices,
            sources: disks::Sources::default(),
            skip_bmc_detect: c.skip_bmc_detect,
            allow_virtual_nics: c.allow_virtual_nics,
            lldp: None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Inventory {
    pub interfaces: Vec<Interface>,
    pub cpu: Cpu,
    pub disks: Vec<Disk>,
    pub memory: Memory,
    pub bmc_address: Option<String>,
    pub bmc_v6address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bmc_mac: Option<String>,
    pub system_vendor: SystemVendor,
    pub boot: Boot,
    pub hostname: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Cpu {
    pub model_name: Option<String>,
    /// A string, as IPA reports it (MHz).
    pub frequency: Option<String>,
    pub count: usize,
    pub architecture: String,
    pub flags: Vec<String>,
    pub socket_count: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Memory {
    pub total: Option<u64>,
    pub physical_mb: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
/// Unknown values are `""`, as IPA reports them: Ironic's inspection rules read a `null` here
/// as the text "None".
pub struct Firmware {
    pub vendor: String,
    pub version: String,
    pub build_date: String,
}

#[derive(Debug, Clone, Serialize)]
/// Unknown values are `""`, as for [`Firmware`].
pub struct SystemVendor {
    pub product_name: String,
    pub serial_number: String,
    pub manufacturer: String,
    pub firmware: Firmware,
}

#[derive(Debug, Clone, Serialize)]
pub struct Boot {
    pub current_boot_mode: &'static str,
    pub pxe_interface: Option<String>,
}

pub fn collect(opts: &Options) -> Inventory {
    let bmc = super::bmc::detect(opts.skip_bmc_detect);
    let mut interfaces = net::interfaces(Path::new("/sys/class/net"), opts.allow_virtual_nics);
    if let Some(heard) = &opts.lldp {
        for i in &mut interfaces {
            i.lldp = heard.get(&i.name).cloned();
        }
    }
    Inventory {
        interfaces,
        cpu: cpu(&fs::read_to_string("/proc/cpuinfo").unwrap_or_default()),
        disks: disks::discover(&opts.sources, opts.allow_loop_devices),
        memory: memory(fs::read(super::smbios::TABLE).ok().as_deref()),
        bmc_address: bmc.v4,
        bmc_v6address: bmc.v6,
        bmc_mac: bmc.mac,
        system_vendor: system_vendor(
            Path::new("/sys/class/dmi/id"),
            Path::new("/sys/firmware/devicetree/base"),
        ),
        boot: Boot {
            current_boot_mode: if Path::new("/sys/firmware/efi").exists() {
                "uefi"
            } else {
                "bios"
            },
            pxe_interface: opts.bootif_raw.clone(),
        },
        hostname: nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default(),
    }
}

/// Parse /proc/cpuinfo: x86's layout, or arm64's (no model name there: the core is named
/// from its implementer and part numbers, as lscpu names it; flags from `Features`).
pub fn cpu(cpuinfo: &str) -> Cpu {
    let mut count = 0;
    let mut model = None;
    let (mut implementer, mut part) = (None, None);
    let mut mhz = None;
    let mut flags = Vec::new();
    let mut sockets = BTreeSet::new();
    for line in cpuinfo.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        match k {
            "processor" => count += 1,
            "model name" if model.is_none() => model = Some(v.to_string()),
            "cpu MHz" if mhz.is_none() => mhz = Some(v.to_string()),
            "CPU implementer" if implementer.is_none() => implementer = Some(v.to_string()),
            "CPU part" if part.is_none() => part = Some(v.to_string()),
            "flags" | "Features" if flags.is_empty() => {
                flags = v.split_whitespace().map(str::to_string).collect()
            }
            "physical id" => {
                sockets.insert(v.to_string());
            }
            _ => {}
        }
    }
    // Like lscpu's "CPU max MHz" when cpufreq knows it; else the current clock.
    let max = fs::read_to_string("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map(|khz| format!("{:.4}", khz as f64 / 1000.0));
    if model.is_none() {
        if let (Some(i), Some(p)) = (&implementer, &part) {
            model = Some(arm_core_name(i, p));
        }
    }
    Cpu {
        model_name: model,
        frequency: max.or(mhz),
        count,
        architecture: nix::sys::utsname::uname()
            .map(|u| u.machine().to_string_lossy().into_owned())
            .unwrap_or_default(),
        flags,
        socket_count: sockets.len().max(usize::from(count > 0)),
    }
}

/// An arm64 core's name from /proc/cpuinfo's `CPU implementer` and `CPU part` (hex), as
/// lscpu names the common server and board cores; any other pair is named by its numbers.
pub fn arm_core_name(implementer: &str, part: &str) -> String {
    let hex = |v: &str| u32::from_str_radix(v.trim().trim_start_matches("0x"), 16).ok();
    let known = match (hex(implementer), hex(part)) {
        (Some(0x41), Some(p)) => match p {
            0xd03 => Some("Cortex-A53"),
            0xd04 => Some("Cortex-A35"),
            0xd05 => Some("Cortex-A55"),
            0xd07 => Some("Cortex-A57"),
            0xd08 => Some("Cortex-A72"),
            0xd09 => Some("Cortex-A73"),
            0xd0a => Some("Cortex-A75"),
            0xd0b => Some("Cortex-A76"),
            0xd0c => Some("Neoverse-N1"),
            0xd0d => Some("Cortex-A77"),
            0xd40 => Some("Neoverse-V1"),
            0xd41 => Some("Cortex-A78"),
            0xd49 => Some("Neoverse-N2"),
            0xd4a => Some("Neoverse-E1"),
            0xd4f => Some("Neoverse-V2"),
            0xd84 => Some("Neoverse-V3"),
            0xd8e => Some("Neoverse-N3"),
            _ => None,
        },
        (Some(0x43), Some(0x0a1)) => Some("ThunderX 88XX"),
        (Some(0x43), Some(0x0af)) => Some("ThunderX2 99xx"),
        (Some(0x46), Some(0x001)) => Some("A64FX"),
        (Some(0x48), Some(0xd01)) => Some("Kunpeng-920"),
        (Some(0x4e), Some(0x004)) => Some("Carmel"),
        (Some(0x50), Some(0x000)) => Some("X-Gene"),
        (Some(0xc0), Some(0xac3)) => Some("Ampere-1"),
        (Some(0xc0), Some(0xac4)) => Some("Ampere-1a"),
        _ => None,
    };
    match known {
        Some(n) => n.to_string(),
        None => format!("implementer {} part {}", implementer.trim(), part.trim()),
    }
}

/// Total memory as the kernel sees it, and the installed memory: the DIMMs' sizes from SMBIOS
/// (what IPA reads from lshw), else the online memory blocks, else the total rounded up to
/// the 128 MiB the kernel's memory map loses to firmware.
fn memory(smbios: Option<&[u8]>) -> Memory {
    let total = fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
    });
    // Physical RAM as the sum of online memory blocks (what lshw's DIMM sum approximates).
    let physical_mb = (|| {
        let base = Path::new("/sys/devices/system/memory");
        let block = u64::from_str_radix(
            fs::read_to_string(base.join("block_size_bytes"))
                .ok()?
                .trim(),
            16,
        )
        .ok()?;
        let online = fs::read_dir(base)
            .ok()?
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("memory"))
            .filter(|e| {
                fs::read_to_string(e.path().join("online"))
                    .map(|s| s.trim() == "1")
                    .unwrap_or(false)
            })
            .count() as u64;
        (online > 0).then(|| online * block / (1 << 20))
    })();
    let physical_mb = smbios
        .and_then(super::smbios::physical_mb)
        .or(physical_mb)
        .or_else(|| total.map(|t| (t >> 20).div_ceil(128) * 128));
    Memory { total, physical_mb }
}

use super::read_trim;

/// The machine from SMBIOS (DMI); an arm64 board without it (booted with a device tree)
/// names itself in the tree: `model`, and its maker as the vendor prefix of the first
/// `compatible` entry ("raspberrypi,4-model-b" → "raspberrypi").
fn system_vendor(dmi: &Path, devicetree: &Path) -> SystemVendor {
    let mut v = dmi_vendor(dmi);
    if v.product_name.is_empty() && v.manufacturer.is_empty() {
        // Device tree strings end with NUL; `compatible` is a NUL-separated list.
        let dt = |name: &str| -> Option<String> {
            let raw = fs::read(devicetree.join(name)).ok()?;
            let first = raw.split(|b| *b == 0).next()?;
            let s = String::from_utf8_lossy(first).trim().to_string();
            (!s.is_empty()).then_some(s)
        };
        if let Some(model) = dt("model") {
            v.product_name = model;
        }
        if let Some(c) = dt("compatible") {
            v.manufacturer = c.split(',').next().unwrap_or_default().to_string();
        }
    }
    v
}

fn dmi_vendor(dmi: &Path) -> SystemVendor {
    SystemVendor {
        product_name: read_trim(&dmi.join("product_name")).unwrap_or_default(),
        serial_number: read_trim(&dmi.join("product_serial")).unwrap_or_default(),
        manufacturer: read_trim(&dmi.join("sys_vendor")).unwrap_or_default(),
        firmware: Firmware {
            vendor: read_trim(&dmi.join("bios_vendor")).unwrap_or_default(),
            version: read_trim(&dmi.join("bios_version")).unwrap_or_default(),
            build_date: read_trim(&dmi.join("bios_date")).unwrap_or_default(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpuinfo() {
        let info = "processor\t: 0\nmodel name\t: Xeon X\ncpu MHz\t\t: 2100.000\nphysical id\t: 0\nflags\t\t: fpu vme sse\n\n\
                    processor\t: 1\nmodel name\t: Xeon X\ncpu MHz\t\t: 2200.000\nphysical id\t: 1\nflags\t\t: fpu vme sse\n";
        let c = cpu(info);
        assert_eq!(c.count, 2);
        assert_eq!(c.model_name.as_deref(), Some("Xeon X"));
        assert_eq!(c.flags, vec!["fpu", "vme", "sse"]);
        assert_eq!(c.socket_count, 2);
        assert!(c.frequency.is_some());
    }

    #[test]
    fn parses_arm64_cpuinfo() {
        // An Ampere Altra (Neoverse-N1 cores), as its kernel prints it: no model name, no
        // MHz, no physical id.
        let core = |n: u32| {
            format!(
                "processor\t: {n}\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics\n\
                 CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x3\nCPU part\t: 0xd0c\nCPU revision\t: 1\n\n"
            )
        };
        let c = cpu(&(0..4).map(core).collect::<String>());
        assert_eq!(c.count, 4);
        assert_eq!(c.model_name.as_deref(), Some("Neoverse-N1"));
        assert_eq!(c.flags[..3], ["fp", "asimd", "evtstrm"]);
        assert!(c.flags.iter().any(|f| f == "atomics"));
        assert_eq!(c.socket_count, 1);
        assert_eq!(arm_core_name("0xc0", "0xac3"), "Ampere-1");
        assert_eq!(arm_core_name("0x41", "0xd08"), "Cortex-A72");
        assert_eq!(
            arm_core_name("0x61", "0x022"),
            "implementer 0x61 part 0x022"
        );
    }

    #[test]
    fn physical_memory_prefers_the_dimms() {
        let t = super::super::smbios::tests::table();
        assert_eq!(memory(Some(&t)).physical_mb, Some(16 * 1024 + 16));
        assert!(memory(None).physical_mb.is_some());
        assert!(memory(Some(&[])).physical_mb.is_some());
    }

    #[test]
    fn this_machine_inventory_has_ipa_keys() {
        let v = serde_json::to_value(collect(&Options::default())).unwrap();
        for k in [
            "interfaces",
            "cpu",
            "disks",
            "memory",
            "bmc_address",
            "system_vendor",
            "boot",
            "hostname",
        ] {
            assert!(v.get(k).is_some(), "missing {k}");
        }
        assert!(v["cpu"]["count"].as_u64().unwrap() >= 1);
        assert!(v["memory"]["total"].as_u64().unwrap() > 0);
        // Ironic's memory hook needs physical_mb.
        assert!(v["memory"]["physical_mb"].as_u64().unwrap() > 0);
        assert!(matches!(
            v["boot"]["current_boot_mode"].as_str(),
            Some("uefi" | "bios")
        ));
    }

    #[test]
    fn unknown_vendor_fields_are_empty_strings_as_ipa_reports_them() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("sys_vendor"), "QEMU\n").unwrap();
        let v = serde_json::to_value(system_vendor(d.path(), &d.path().join("no-tree"))).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"product_name": "", "serial_number": "", "manufacturer": "QEMU",
                               "firmware": {"vendor": "", "version": "", "build_date": ""}})
        );
    }

    #[test]
    fn a_board_without_smbios_is_named_by_its_device_tree() {
        let d = tempfile::tempdir().unwrap();
        let (dmi, dt) = (d.path().join("dmi"), d.path().join("dt"));
        std::fs::create_dir_all(&dmi).unwrap();
        std::fs::create_dir_all(&dt).unwrap();
        std::fs::write(dt.join("model"), b"Raspberry Pi 4 Model B Rev 1.4\0").unwrap();
        std::fs::write(
            dt.join("compatible"),
            b"raspberrypi,4-model-b\0brcm,bcm2711\0",
        )
        .unwrap();
        let v = system_vendor(&dmi, &dt);
        assert_eq!(v.product_name, "Raspberry Pi 4 Model B Rev 1.4");
        assert_eq!(v.manufacturer, "raspberrypi");
        // SMBIOS, where there is one, wins.
        std::fs::write(dmi.join("sys_vendor"), "Ampere Computing\n").unwrap();
        std::fs::write(dmi.join("product_name"), "Mt.Jade\n").unwrap();
        let v = system_vendor(&dmi, &dt);
        assert_eq!(
            (v.product_name.as_str(), v.manufacturer.as_str()),
            ("Mt.Jade", "Ampere Computing")
        );
    }
}
