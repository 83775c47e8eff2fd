//! Virtual-media boot (`boot_method=vmedia`) on real loop devices: the parameters come from
//! `parameters.txt` on a vfat image labelled `ir-vfd-dev` (overriding the kernel command line),
//! and agent config files are copied from the `config-2` ISO.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::loopdev::{is_root, Loop};
use common::*;

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn vmedia_parameters_and_config_copy() {
    if !is_root() {
        crate::figure!("SKIPPED: needs root for loop devices");
        return;
    }
    let ironic = MockIronic::start(vec![], lookup_ok("******", 300));
    let d = tempfile::tempdir().unwrap();
    let pre = "vmediatokenvmediatokenvmediatoken-0123";
    let etc = d.path().join("etc");

    // The parameters floppy, as Ironic builds it: vfat, label ir-vfd-dev, one key=value a line.
    let params = d.path().join("parameters.txt");
    std::fs::write(
        &params,
        format!(
            "ipa-api-url={}\nipa-agent-token={pre}\nipa-lookup-interval=0.1\n",
            ironic.url
        ),
    )
    .unwrap();
    let vfd = d.path().join("vfd.img");
    run(Command::new("mkfs.vfat")
        .args(["-C", "-n", "IR-VFD-DEV"])
        .arg(&vfd)
        .arg("1440"));
    run(Command::new("mcopy")
        .arg("-i")
        .arg(&vfd)
        .arg(&params)
        .arg("::/parameters.txt"));

    // The boot ISO with agent config: an API CA and ironic-tls.conf pointing at it.
    let iso_root = d.path().join("iso");
    std::fs::create_dir_all(iso_root.join("etc/ironic-python-agent")).unwrap();
    std::fs::create_dir_all(iso_root.join("etc/ironic-python-agent.d")).unwrap();
    let (ca, _) = rivet::tls::generate(
        "127.0.0.1".parse().unwrap(),
        rivet::config::Curve::P256,
        Duration::ZERO,
        "ca",
    )
    .unwrap();
    std::fs::write(iso_root.join("etc/ironic-python-agent/ironic.crt"), &ca).unwrap();
    let cafile = etc.join("ironic-python-agent/ironic.crt");
    std::fs::write(
        iso_root.join("etc/ironic-python-agent.d/ironic-tls.conf"),
        format!("[DEFAULT]\ncafile = {}\n", cafile.display()),
    )
    .unwrap();
    let iso = d.path().join("boot.iso");
    run(Command::new("genisoimage")
        .args(["-quiet", "-R", "-J", "-V", "config-2", "-o"])
        .arg(&iso)
        .arg(&iso_root));

    let _vfd = Loop::attach(&vfd, 512);
    let _iso = Loop::attach(&iso, 512);
    let state = d.path().join("state");
    // No ipa-api-url on the "kernel command line": it must come from the floppy. The bogus
    // lookup timeout on the command line is overridden by nothing, so keep it valid.
    let agent = Agent::spawn_raw(
        "boot_method=vmedia ipa-lookup-timeout=30",
        &state,
        &["--allow-loop-devices", "--etc-dir", etc.to_str().unwrap()],
    );
    let hb = ironic.wait_heartbeats(1, Duration::from_secs(20));
    assert_eq!(
        hb[0].body["agent_token"], pre,
        "pregenerated token from parameters.txt"
    );
    assert_eq!(
        std::fs::read_to_string(&cafile).unwrap(),
        ca,
        "CA copied from the ISO"
    );
    assert!(etc.join("ironic-python-agent.d/ironic-tls.conf").exists());
    drop(agent);
}
