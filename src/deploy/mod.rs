//! Deploy logic the command handlers call: laying out and writing a partition image, and
//! making the deployed disk bootable (firmware entries, the ESP, GRUB from the image).

pub mod bootloader;
pub mod grub;
pub mod partition_image;
