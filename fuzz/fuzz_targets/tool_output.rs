//! Tools' and conductors' text output: efibootmgr, ipmitool, mdadm, cpuinfo, fio, Ironic errors.
#![no_main]

#[path = "../bodies.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::tool_output(data));
