//! Disks and what lives on them: opening a disk to write it (`device`), partition tables,
//! the EFI system partition, config drives, partition-image layouts, wiping and erasing.

pub mod configdrive;
pub mod device;
pub mod erase;
pub mod esp;
pub mod partitions;
pub mod wipe;
