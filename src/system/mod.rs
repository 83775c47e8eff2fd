//! System actions: power, sync, external tools, logs, raw sockets. The only place that can
//! power the machine off.

pub mod blockdev;
pub mod burnin;
pub mod custom_step;
pub mod ethtool;
pub mod fdlimit;
pub mod inroot;
pub mod logs;
pub mod multipath;
pub mod packet;
pub mod power;
pub mod priority;
pub mod pstore;
pub mod tools;
