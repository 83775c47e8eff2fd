//! Hardware discovery from sysfs/procfs: disks, NICs, the inventory.

pub mod disks;
pub mod inventory;
pub mod net;
