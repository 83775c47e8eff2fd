//! Disks and what lives on them: the disk being written (`device`, its one owner), partition
//! nodes as the kernel sees them (`nodes`), partition tables, mounting partitions, the EFI system partition, config drives,
//! partition-image layouts, wiping and erasing.

pub mod configdrive;
pub mod device;
pub mod erase;
pub mod esp;
pub mod md;
pub mod mount;
pub mod nodes;
pub mod partitions;
pub mod shared_fs;
pub mod slice;
pub mod table;
pub mod wipe;
