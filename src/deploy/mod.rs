//! Deploy logic the command handlers call: writing a whole-disk image and its config drive,
//! laying out and writing a partition image, making
//! the deployed disk bootable (firmware entries, the ESP, GRUB from the image), and putting
//! files into its file systems.

pub mod bootloader;
pub mod grub;
pub mod inject_files;
pub mod nvram;
pub mod partition_image;
pub mod raid;
pub mod raid_boot;
pub mod whole_disk;
