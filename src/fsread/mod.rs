//! Read-only access to file systems in user space (no kernel driver, no mount).

pub mod iso9660;
