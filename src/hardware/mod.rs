//! Hardware discovery from sysfs/procfs: disks, NICs, the inventory.

pub mod bmc;
pub mod disks;
pub mod hints;
pub mod inventory;
pub mod net;
pub mod probe;
pub mod root_device;

/// A sysfs attribute, trimmed; `None` when absent, unreadable or empty.
pub(crate) fn read_trim(p: &std::path::Path) -> Option<String> {
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}
