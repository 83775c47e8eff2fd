//! Partition tables and what lives in partitions (read side for now: the EFI system partition).

pub mod configdrive;
pub mod esp;
pub mod wipe;
