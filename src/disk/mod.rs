//! Partition tables and what lives in partitions: the EFI system partition, config drives,
//! partition-image layouts, wiping.

pub mod configdrive;
pub mod erase;
pub mod esp;
pub mod partitions;
pub mod wipe;
