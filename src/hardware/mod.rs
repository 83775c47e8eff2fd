//! Hardware discovery from sysfs/procfs: disks, NICs, the inventory.

pub mod bmc;
pub mod disks;
pub mod hints;
pub mod inventory;
pub mod net;
pub mod probe;
pub mod root_device;
