//! Hardware discovery from sysfs/procfs: disks, NICs, the inventory, and what inspection
//! collects besides it (PCI, NUMA, USB, SMBIOS, LLDP).

pub mod bmc;
pub mod disks;
pub mod hints;
pub mod inventory;
pub mod lldp;
pub mod net;
pub mod numa;
pub mod pci;
pub mod probe;
pub mod root_device;
pub mod smbios;
pub mod usb;

/// The hardware manager Rivet presents itself as (IPA's generic one: the conductor compares
/// the version between step listing and execution, and inspection reports it).
pub const MANAGER_CLASS: &str = "GenericHardwareManager";
pub const MANAGER_NAME: &str = "generic_hardware_manager";
pub const MANAGER_VERSION: &str = "1.4";

/// A sysfs attribute, trimmed; `None` when absent, unreadable or empty.
pub(crate) fn read_trim(p: &std::path::Path) -> Option<String> {
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}
