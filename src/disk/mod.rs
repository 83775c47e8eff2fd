//! Disks and what lives on them: the disk and its partitions as the kernel sees them
//! (`device`), partition tables, mounting partitions, the EFI system partition, config drives,
//! partition-image layouts, wiping and erasing.

pub mod configdrive;
pub mod device;
pub mod erase;
pub mod esp;
pub mod mount;
pub mod partitions;
pub mod wipe;
