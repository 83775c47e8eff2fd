//! System actions: power, sync, external tools. The only place that can power the machine off.

pub mod blockdev;
pub mod inroot;
pub mod mount;
pub mod power;
pub mod priority;
pub mod pstore;
pub mod tools;
