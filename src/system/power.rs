//! Power actions, guarded so that no test and no developer machine is ever powered off.
//!
//! A real power-off or reboot happens only when all of these hold: `--simulate-power` was not
//! given, the configuration was read from this machine's own `/proc/cmdline` (not from
//! `--cmdline-file`), and that command line carries `ipa-api-url` or `boot_method=vmedia`,
//! i.e. the machine really booted a deploy ramdisk. Otherwise the agent only ends its own
//! process (exit 0) after answering, which is what the simulated flows expect.

use crate::config::Config;

/// What the agent should do for a power request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Really power off / reboot the machine.
    Machine,
    /// Only end the agent process.
    ExitProcess,
}

pub fn decide(cfg: &Config) -> Action {
    if cfg.simulate_power || !cfg.from_proc_cmdline {
        return Action::ExitProcess;
    }
    let booted_as_ramdisk = std::fs::read_to_string("/proc/cmdline")
        .map(|c| {
            c.split_whitespace()
                .any(|t| t.starts_with("ipa-api-url=") || t == "boot_method=vmedia")
        })
        .unwrap_or(false);
    if booted_as_ramdisk {
        Action::Machine
    } else {
        tracing::warn!("not booted as a deploy ramdisk (no ipa-api-url on /proc/cmdline): power actions only end the agent");
        Action::ExitProcess
    }
}

/// Flush file systems and block-device caches (IPA's `full_sync`).
pub fn full_sync() {
    nix::unistd::sync();
}

/// Power the machine off or reboot it. Only called after `decide` said `Machine`.
pub fn machine(reboot: bool) -> std::io::Error {
    use nix::sys::reboot::{reboot as sys_reboot, RebootMode};
    full_sync();
    let mode = if reboot {
        RebootMode::RB_AUTOBOOT
    } else {
        RebootMode::RB_POWER_OFF
    };
    match sys_reboot(mode) {
        Ok(never) => match never {},
        Err(e) => std::io::Error::from(e),
    }
}
