//! Every conductor flow against the mock conductor, quickly (the real conductor runs the same
//! flows in tests/ironic/): the agent looks up a node whose root device hint names a loop
//! device, and the test drives it as Ironic does, over verified TLS with the token:
//! whole-disk deploy (qcow2, with a config drive), partition deploy (UEFI, install_bootloader),
//! cleaning (erase_devices_metadata, erase_devices) and rescue (finalize_rescue). The disks are
//! read back with real tools.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::imgserver::ImageServer;
use common::install_util::{
    assert_blank, blkid_at, config_drive_iso, ext4_image, gpt_image, sha256, skip, MIB,
};
use common::loopdev::Loop;
use common::*;
use serde_json::{json, Value};

/// The node as the conductor sends it with every step: its root device hint included.
fn node(dev: &str, extra: Value) -> Value {
    let mut n = json!({"uuid": NODE, "properties": {"root_device": {"name": dev}},
                       "driver_internal_info": {}});
    if let Value::Object(m) = extra {
        for (k, v) in m {
            n[k] = v;
        }
    }
    n
}

/// Start an agent for a node whose root device is `dev`; returns it with its API.
fn agent_for(dev: &str, etc: &Path, state: &Path) -> (MockIronic, Agent, Api) {
    agent_with_disk(
        dev,
        state,
        "",
        &["--allow-loop-devices", "--etc-dir", etc.to_str().unwrap()],
    )
}

/// Run an async command and wait for its end, as the conductor polls.
fn run(api: &Api, name: &str, params: Value) -> Value {
    let (s, v) = api.post(name, params, false);
    assert_eq!(s, 200, "{name}: {v}");
    wait_done(api, v["id"].as_str().unwrap())
}

fn succeeded(v: &Value) {
    assert_eq!(v["command_status"], "SUCCEEDED", "{v}");
}

#[test]
fn whole_disk_qcow2_deploy_with_config_drive_then_cleaning() {
    if skip() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let img = gpt_image(d.path(), "disk.raw", 24, 512);
    let qcow2 = d.path().join("disk.qcow2");
    assert!(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(d.path().join("disk.raw"))
        .arg(&qcow2)
        .status()
        .unwrap()
        .success());
    let q = std::fs::read(&qcow2).unwrap();
    let srv = ImageServer::start();
    let url = srv.add("disk.qcow2", q.clone());
    let disk = Loop::new(d.path(), "t.img", 128 * MIB, 512);
    let (_ironic, _agent, api) = agent_for(&disk.dev, d.path(), &d.path().join("state"));

    let cd = config_drive_iso(d.path(), r#"{"uuid": "n1"}"#);
    let gz = {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&std::fs::read(&cd).unwrap()).unwrap();
        e.finish().unwrap()
    };
    let configdrive = base64_encode(&gz);
    let info = json!({
        "id": "../../img-1", "urls": [url], "disk_format": "qcow2", "container_format": "bare",
        "os_hash_algo": "sha256", "os_hash_value": sha256(&q), "stream_raw_images": true,
    });
    let done = run(
        &api,
        "deploy.execute_deploy_step",
        json!({"step": {"step": "write_image", "interface": "deploy", "priority": 80,
                        "args": {"image_info": info.clone(), "configdrive": configdrive}},
               "node": node(&disk.dev, json!({})), "ports": [],
               "clean_version": {"generic_hardware_manager": "1.4"}}),
    );
    succeeded(&done);
    assert_eq!(done["command_result"]["deploy_step"]["step"], "write_image");
    // The disk holds the image past its first MiB (the GPT gained the config-2 entry).
    let disk_bytes = std::fs::read(&disk.dev).unwrap();
    assert_eq!(&disk_bytes[MIB as usize..img.len()], &img[MIB as usize..]);
    // standby.cache_image of the same image id: already on the disk, not written again.
    let cached = run(&api, "standby.cache_image", json!({ "image_info": info }));
    succeeded(&cached);
    assert!(
        cached["command_result"]
            .to_string()
            .contains("already present"),
        "{cached}"
    );
    let (s, uuids) = api.post("standby.get_partition_uuids", json!({}), true);
    assert_eq!(s, 200);
    let sig = u32::from_le_bytes(img[440..444].try_into().unwrap());
    assert_eq!(uuids["command_result"]["root uuid"], format!("0x{sig:08x}"));
    let pt = Command::new("sgdisk")
        .arg("-p")
        .arg(&disk.dev)
        .output()
        .unwrap();
    let pt = String::from_utf8_lossy(&pt.stdout).to_string();
    let cd_start: u64 = pt
        .lines()
        .find(|l| l.contains("config-2"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no config-2 partition: {pt}"));
    assert!(blkid_at(&disk.dev, cd_start * 512).contains("LABEL=config-2"));
    let (s, bl) = api.post(
        "image.install_bootloader",
        json!({"root_uuid": format!("0x{sig:08x}"), "efi_system_part_uuid": null,
               "prep_boot_part_uuid": null, "target_boot_mode": "uefi"}),
        true,
    );
    assert_eq!(s, 200);
    // The test image's ESP holds no file system: a UEFI machine could not boot it.
    assert_eq!(bl["command_status"], "FAILED");
    assert!(
        bl["command_error"]["details"]
            .as_str()
            .unwrap_or("")
            .contains("not a readable FAT"),
        "{bl}"
    );

    // Another image whose id differs only where the logged form replaces characters
    // ("../../img-1" and ".._.._img-1" show alike): not taken for the one on the disk.
    let mut other = info.clone();
    other["id"] = json!(".._.._img-1");
    let again = run(&api, "standby.cache_image", json!({ "image_info": other }));
    succeeded(&again);
    assert!(
        !again["command_result"]
            .to_string()
            .contains("already present"),
        "{again}"
    );

    // Cleaning: metadata, then a verified overwrite.
    let done = run(
        &api,
        "clean.execute_clean_step",
        json!({"step": {"step": "erase_devices_metadata", "interface": "deploy", "priority": 99},
               "node": node(&disk.dev, json!({})), "ports": [],
               "clean_version": {"generic_hardware_manager": "1.4"}}),
    );
    succeeded(&done);
    let out = Command::new("blkid")
        .args(["-p", &disk.dev])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "blkid still finds something");
    let done = run(
        &api,
        "clean.execute_clean_step",
        json!({"step": {"step": "erase_devices", "interface": "deploy", "priority": 10},
               "node": node(&disk.dev, json!({"driver_internal_info": {"agent_erase_devices_iterations": 1}})),
               "ports": [], "clean_version": {"generic_hardware_manager": "1.4"}}),
    );
    succeeded(&done);
    assert_eq!(
        done["command_result"]["clean_result"][&disk.dev]["method"], "overwrite",
        "{done}"
    );
    assert!(std::fs::read(&disk.dev).unwrap().iter().all(|b| *b == 0));

    // The image written last (`other`) again, after the erase (fast-track: a step failed,
    // cleaning ran, the deploy is retried): written again, not "already present" on a blank
    // disk; then once more with a new config drive: the image stays, the config drive is
    // the new one.
    let meta_at = |cd_start: u64| {
        let iso = std::fs::read(&disk.dev).unwrap();
        let iso = &iso[(cd_start * 512) as usize..];
        String::from_utf8_lossy(&iso[..iso.len().min(1 << 20)]).into_owned()
    };
    let write_with = |meta: &str| {
        let cd = config_drive_iso(d.path(), meta);
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut e, &std::fs::read(&cd).unwrap()).unwrap();
        let done = run(
            &api,
            "deploy.execute_deploy_step",
            json!({"step": {"step": "write_image", "interface": "deploy", "priority": 80,
                            "args": {"image_info": other.clone(),
                                     "configdrive": base64_encode(&e.finish().unwrap())}},
                   "node": node(&disk.dev, json!({})), "ports": [],
                   "deploy_version": {"generic_hardware_manager": "1.4"}}),
        );
        succeeded(&done);
        done["command_result"]["deploy_result"]["result"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let msg = write_with(r#"{"uuid": "n1", "rebuild": "second"}"#);
    assert!(!msg.contains("already present"), "{msg}");
    let disk_bytes = std::fs::read(&disk.dev).unwrap();
    assert_eq!(&disk_bytes[MIB as usize..img.len()], &img[MIB as usize..]);
    assert!(meta_at(cd_start).contains(r#""rebuild": "second""#));
    let msg = write_with(r#"{"uuid": "n1", "rebuild": "third"}"#);
    assert!(msg.contains("already present"), "{msg}");
    let disk_bytes = std::fs::read(&disk.dev).unwrap();
    assert_eq!(&disk_bytes[MIB as usize..img.len()], &img[MIB as usize..]);
    let meta = meta_at(cd_start);
    assert!(
        meta.contains(r#""rebuild": "third""#) && !meta.contains("second"),
        "the config drive was not written again"
    );
}

#[test]
fn partition_image_uefi_deploy_and_bootloader() {
    if skip() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let tree = d.path().join("root");
    std::fs::create_dir_all(tree.join("boot/efi/EFI/BOOT")).unwrap();
    std::fs::write(tree.join("boot/efi/EFI/BOOT/BOOTX64.EFI"), "MZ loader").unwrap();
    std::fs::write(tree.join("hello"), "partition image").unwrap();
    let uuid = "1e2d3c4b-0000-4000-8000-00000000beef";
    let data = ext4_image(d.path(), &tree, uuid);
    let srv = ImageServer::start();
    let url = srv.add("part.raw", data.clone());
    // ESP 550 + swap 8 + root 32 MiB, plus margins.
    let disk = Loop::new(d.path(), "t.img", 600 * MIB, 512);
    let (_ironic, _agent, api) = agent_for(&disk.dev, d.path(), &d.path().join("state"));
    let info = json!({
        "id": "part", "urls": [url], "disk_format": "raw", "os_hash_algo": "sha256",
        "os_hash_value": sha256(&data), "image_type": "partition", "root_mb": 32,
        "swap_mb": 8, "ephemeral_mb": 0, "ephemeral_format": null, "preserve_ephemeral": false,
        "deploy_boot_mode": "uefi", "boot_option": "local", "disk_label": "gpt",
    });
    let done = run(
        &api,
        "deploy.execute_deploy_step",
        json!({"step": {"step": "write_image", "interface": "deploy", "priority": 80,
                        "args": {"image_info": info}},
               "node": node(&disk.dev, json!({})), "ports": [],
               "clean_version": {"generic_hardware_manager": "1.4"}}),
    );
    succeeded(&done);
    let (_, uuids) = api.post("standby.get_partition_uuids", json!({}), true);
    let r = &uuids["command_result"];
    assert_eq!(r["root uuid"], uuid, "{r}");
    let esp_uuid = r["efi system partition uuid"].as_str().unwrap().to_string();
    let parts = &r["partitions"];
    assert_eq!(parts["efi system partition"], format!("{}p1", disk.dev));
    assert_eq!(parts["swap"], format!("{}p2", disk.dev));
    assert_eq!(parts["root"], format!("{}p3", disk.dev));
    // Read back: ESP, swap, root at the right places with the right labels.
    assert!(blkid_at(&disk.dev, MIB).contains(&format!("UUID={esp_uuid}")));
    assert!(blkid_at(&disk.dev, 551 * MIB).contains("TYPE=swap"));
    assert!(blkid_at(&disk.dev, 559 * MIB).contains(&format!("UUID={uuid}")));
    let bytes = std::fs::read(&disk.dev).unwrap();
    assert_eq!(
        &bytes[559 * MIB as usize..559 * MIB as usize + data.len()],
        &data[..]
    );

    let (s, bl) = api.post(
        "image.install_bootloader",
        json!({"root_uuid": uuid, "efi_system_part_uuid": esp_uuid,
               "prep_boot_part_uuid": null, "target_boot_mode": "uefi"}),
        true,
    );
    assert_eq!(s, 200);
    succeeded(&bl);
    let out = Command::new("mtype")
        .args([
            "-i",
            &format!("{}@@{}", disk.dev, MIB),
            "::/EFI/BOOT/BOOTX64.EFI",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "MZ loader");

    // Too large for root_mb: refused, and the disk is left without a partition table.
    let big = json!({
        "id": "part2", "urls": [url], "disk_format": "raw", "os_hash_algo": "sha256",
        "os_hash_value": sha256(&data), "image_type": "partition", "root_mb": 8,
        "deploy_boot_mode": "uefi",
    });
    let done = run(
        &api,
        "deploy.execute_deploy_step",
        json!({"step": {"step": "write_image", "interface": "deploy", "priority": 80,
                        "args": {"image_info": big}},
               "node": node(&disk.dev, json!({})), "ports": [],
               "clean_version": {"generic_hardware_manager": "1.4"}}),
    );
    assert_eq!(done["command_status"], "FAILED");
    let msg = done["command_error"]["details"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(msg.contains("root_mb=8"), "{msg}");
    assert_blank(&disk.dev);
}

#[test]
fn rescue_sets_the_password_and_stops_serving() {
    let d = tempfile::tempdir().unwrap();
    let etc = d.path().join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(etc.join("passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
    let (ironic, mut agent, api) = agent_for("/dev/nonexistent", &etc, &d.path().join("state"));
    let (s, v) = api.post(
        "rescue.finalize_rescue",
        json!({"rescue_password": "$6$rounds=5000$salt$abc", "hashed": true}),
        true,
    );
    assert_eq!(s, 200);
    succeeded(&v);
    let shadow = std::fs::read_to_string(etc.join("shadow")).unwrap();
    assert!(
        shadow.contains("rescue:$6$rounds=5000$salt$abc:"),
        "{shadow}"
    );
    // The agent stops serving (and, under --simulate-power, exits) and heartbeats no more.
    let st = agent.wait_exit(Duration::from_secs(10));
    assert!(st.success());
    let n = ironic.heartbeats().len();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(ironic.heartbeats().len(), n);
    assert!(api
        .client
        .get(format!("{}/v1/status", api.base))
        .send()
        .is_err());

    // A plain password is hashed with SHA-512 crypt; a bad hash is refused.
    let (_i2, _a2, api2) = agent_for("/dev/nonexistent", &etc, &d.path().join("state2"));
    let (s, v) = api2.post(
        "rescue.finalize_rescue",
        json!({"rescue_password": "not-a-hash", "hashed": true}),
        true,
    );
    assert_eq!(s, 200);
    assert_eq!(
        v["command_error"]["type"], "InvalidCommandParamsError",
        "{v}"
    );
    let (_, v) = api2.post(
        "rescue.finalize_rescue",
        json!({"rescue_password": "s3cret"}),
        true,
    );
    succeeded(&v);
    let shadow = std::fs::read_to_string(etc.join("shadow")).unwrap();
    assert!(shadow.contains("rescue:$6$"), "{shadow}");
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// A read-only loop mount of a byte range of a disk, undone on drop (also when a test fails).
struct RangeMount {
    dir: tempfile::TempDir,
}

impl RangeMount {
    fn new(dev: &str, start: u64, len: u64) -> RangeMount {
        let dir = tempfile::tempdir().unwrap();
        let st = Command::new("mount")
            .args([
                "-o",
                &format!("ro,loop,offset={start},sizelimit={len}"),
                dev,
            ])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(st.success(), "mount {dev} at {start}");
        RangeMount { dir }
    }

    fn path(&self, rel: &str) -> std::path::PathBuf {
        self.dir.path().join(rel)
    }
}

impl Drop for RangeMount {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-d")
            .arg(self.dir.path())
            .status();
    }
}

fn deploy_step(api: &Api, dev: &str, step: &str, args: Value, node_extra: Value) -> Value {
    run(
        api,
        "deploy.execute_deploy_step",
        json!({"step": {"step": step, "interface": "deploy", "priority": 80, "args": args},
               "node": node(dev, node_extra), "ports": [{"address": "52:54:00:12:34:56"}],
               "deploy_version": {"generic_hardware_manager": "1.4"}}),
    )
}

fn error_details(v: &Value) -> String {
    assert_eq!(v["command_status"], "FAILED", "{v}");
    v["command_error"]["details"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

/// A partition image deployed with a 16 MiB ephemeral partition (the first of two ext4 root
/// images), by an agent that stays up for the steps that follow.
struct PartitionDeploy {
    _ironic: MockIronic,
    _agent: Agent,
    api: Api,
    disk: Loop,
    _srv: ImageServer,
    first: Vec<u8>,
    second: Vec<u8>,
    url1: String,
    url2: String,
    /// A per-node URL template (`{node[uuid]}`) served by the image server.
    template: String,
    uuid1: &'static str,
    _d: tempfile::TempDir,
}

/// Where the layout puts the ephemeral and root partitions (after the 550 MiB ESP).
const EPH_AT: u64 = 551 * MIB;
const ROOT_AT: u64 = 567 * MIB;

fn partition_image_info(id: &str, url: &str, data: &[u8], eph: u64, preserve: bool) -> Value {
    json!({"id": id, "urls": [url], "disk_format": "raw", "os_hash_algo": "sha256",
           "os_hash_value": sha256(data), "image_type": "partition", "root_mb": 32,
           "swap_mb": 0, "ephemeral_mb": eph, "ephemeral_format": "ext4",
           "preserve_ephemeral": preserve, "deploy_boot_mode": "uefi", "disk_label": "gpt"})
}

fn deploy_partition_image() -> PartitionDeploy {
    let d = tempfile::tempdir().unwrap();
    let mkroot = |name: &str, uuid: &str, marker: &str| {
        let tree = d.path().join(format!("{name}-tree"));
        std::fs::create_dir_all(tree.join("etc")).unwrap();
        std::fs::write(tree.join("etc/hosts"), "127.0.0.1 localhost\n").unwrap();
        std::fs::write(tree.join("marker"), marker).unwrap();
        // As in real images: an absolute link that, followed from the ramdisk, would leave it.
        std::os::unix::fs::symlink(
            format!("/run/rivet-test-{uuid}/resolv.conf"),
            tree.join("etc/resolv.conf"),
        )
        .unwrap();
        ext4_image(d.path(), &tree, uuid)
    };
    let uuid1 = "1e2d3c4b-0000-4000-8000-00000000c001";
    let uuid2 = "1e2d3c4b-0000-4000-8000-00000000c002";
    let first = mkroot("first", uuid1, "first image");
    let second = mkroot("second", uuid2, "second image");
    let srv = ImageServer::start();
    let url1 = srv.add("first.raw", first.clone());
    let url2 = srv.add("second.raw", second.clone());
    let per_node = srv.add(&format!("motd-{NODE}"), b"served for this node\n".to_vec());
    let template = per_node.replace(NODE, "{node[uuid]}");
    // ESP 550 + ephemeral 16 + root 32 MiB, plus margins.
    let disk = Loop::new(d.path(), "t.img", 620 * MIB, 512);
    let (ironic, agent, api) = agent_for(&disk.dev, d.path(), &d.path().join("state"));
    succeeded(&deploy_step(
        &api,
        &disk.dev,
        "write_image",
        json!({"image_info": partition_image_info("first", &url1, &first, 16, false)}),
        json!({}),
    ));
    assert!(blkid_at(&disk.dev, EPH_AT).contains("LABEL=ephemeral0"));

    PartitionDeploy {
        _ironic: ironic,
        _agent: agent,
        api,
        disk,
        _srv: srv,
        first,
        second,
        url1,
        url2,
        template,
        uuid1,
        _d: d,
    }
}

/// inject_files is listed with its arguments, and puts files (from the node and the step)
/// inside the image's file systems: modes and owners, deletion, a URL template, a partition
/// by label and by number, and a dangling absolute link replaced inside the image.
#[test]
fn inject_files_puts_files_inside_the_image() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if skip() {
        return;
    }
    let p = deploy_partition_image();
    let (api, disk, template, uuid1) = (&p.api, &p.disk, &p.template, p.uuid1);
    let (eph_at, root_at) = (EPH_AT, ROOT_AT);
    // The deploy step list offers inject_files with its arguments.
    let (_, steps) = api.post(
        "deploy.get_deploy_steps",
        json!({"node": node(&disk.dev, json!({})), "ports": []}),
        true,
    );
    let listed = steps["command_result"]["deploy_steps"]["GenericHardwareManager"].to_string();
    assert!(
        listed.contains("\"inject_files\"") && listed.contains("verify_ca"),
        "{listed}"
    );

    let b64 = base64_encode;
    let props = json!({"properties": {"root_device": {"name": disk.dev},
        "inject_files": [{"path": "/etc/motd", "content": template}]}});
    let files = json!([
        {"path": "/etc/rivet/agent.conf", "content": b64(b"secret=1\n"), "mode": 0o600,
         "dirmode": 0o700, "owner": 1000, "group": 1001},
        {"path": "/etc/hosts", "deleted": true},
        {"path": "/etc/resolv.conf", "content": b64(b"nameserver 192.0.2.53\n")},
        {"path": "/data.txt", "partition": "LABEL=ephemeral0", "content": b64(b"keep me")},
        {"path": "/by-number", "partition": 3, "content": b64(b"3")},
    ]);
    let done = deploy_step(
        api,
        &disk.dev,
        "inject_files",
        json!({"files": files}),
        props,
    );
    succeeded(&done);
    assert_eq!(
        done["command_result"]["deploy_step"]["step"],
        "inject_files"
    );
    {
        let root = RangeMount::new(&disk.dev, root_at, 32 * MIB);
        let conf = root.path("etc/rivet/agent.conf");
        assert_eq!(std::fs::read(&conf).unwrap(), b"secret=1\n");
        let md = std::fs::metadata(&conf).unwrap();
        assert_eq!(
            (md.permissions().mode() & 0o7777, md.uid(), md.gid()),
            (0o600, 1000, 1001)
        );
        let dir_mode = std::fs::metadata(root.path("etc/rivet"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o7777, 0o700);
        assert_eq!(
            std::fs::read(root.path("etc/motd")).unwrap(),
            b"served for this node\n"
        );
        assert!(!root.path("etc/hosts").exists());
        assert_eq!(std::fs::read(root.path("by-number")).unwrap(), b"3");
        // The dangling absolute link was replaced inside the image, never followed on the
        // machine running us.
        let resolv = root.path("etc/resolv.conf");
        assert!(!std::fs::symlink_metadata(&resolv).unwrap().is_symlink());
        assert_eq!(std::fs::read(resolv).unwrap(), b"nameserver 192.0.2.53\n");
        assert!(!Path::new(&format!("/run/rivet-test-{uuid1}")).exists());
        let eph = RangeMount::new(&disk.dev, eph_at, 16 * MIB);
        assert_eq!(std::fs::read(eph.path("data.txt")).unwrap(), b"keep me");
    }
}

/// Bad file lists fail the step with the reason, before touching the disk.
#[test]
fn inject_files_refuses_bad_lists() {
    if skip() {
        return;
    }
    let p = deploy_partition_image();
    let (api, disk) = (&p.api, &p.disk);
    let digest = |dev: &Path| {
        use sha2::Digest as _;
        let mut h = sha2::Sha256::new();
        std::io::copy(&mut std::fs::File::open(dev).unwrap(), &mut h).unwrap();
        hex::encode(h.finalize())
    };
    let before = digest(Path::new(&disk.dev));
    for (files, why) in [
        (json!([{"path": "/etc/../../x", "content": ""}]), "'..'"),
        (
            json!([{"path": "/etc/x", "content": "not base64!"}]),
            "not base64",
        ),
        (
            json!([{"path": "/x", "content": ""}]),
            "in the root directory",
        ),
        (
            json!([{"path": "/etc/x", "partition": 9, "content": ""}]),
            "no partition",
        ),
        (
            json!([{"path": "/nosuchdir/x", "content": ""}]),
            "has a /nosuchdir",
        ),
        // A good file before a bad one: nothing is written either.
        (
            json!([{"path": "/etc/ok", "content": "eA=="},
                   {"path": "/nosuchdir/x", "content": ""}]),
            "has a /nosuchdir",
        ),
    ] {
        let done = deploy_step(
            api,
            &disk.dev,
            "inject_files",
            json!({"files": files}),
            json!({}),
        );
        let msg = error_details(&done);
        assert!(msg.contains(why), "{why}: {msg}");
        assert_eq!(
            digest(Path::new(&disk.dev)),
            before,
            "{why}: the refused step changed the disk"
        );
    }
}

/// Redeploy with preserve_ephemeral: the root is replaced, the ephemeral data stays; a layout
/// that differs cannot preserve: refused, and the data is still there.
#[test]
fn preserve_ephemeral_keeps_the_data_or_refuses() {
    if skip() {
        return;
    }
    let p = deploy_partition_image();
    let (api, disk, first, second) = (&p.api, &p.disk, &p.first, &p.second);
    let (url1, url2) = (&p.url1, &p.url2);
    let (eph_at, root_at) = (EPH_AT, ROOT_AT);
    let b64 = base64_encode;
    succeeded(&deploy_step(
        api,
        &disk.dev,
        "inject_files",
        json!({"files": [{"path": "/data.txt", "partition": "LABEL=ephemeral0", "content": b64(b"keep me")}]}),
        json!({}),
    ));
    // Redeploy with preserve_ephemeral: the root is replaced, the ephemeral data stays.
    succeeded(&deploy_step(
        api,
        &disk.dev,
        "write_image",
        json!({"image_info": partition_image_info("second", url2, second, 16, true)}),
        json!({}),
    ));
    let bytes = std::fs::read(&disk.dev).unwrap();
    let r = root_at as usize;
    assert_eq!(&bytes[r..r + second.len()], &second[..]);
    {
        let eph = RangeMount::new(&disk.dev, eph_at, 16 * MIB);
        assert_eq!(std::fs::read(eph.path("data.txt")).unwrap(), b"keep me");
    }
    // A layout that differs cannot preserve: refused, and the data is still there.
    let done = deploy_step(
        api,
        &disk.dev,
        "write_image",
        json!({"image_info": partition_image_info("third", url1, first, 24, true)}),
        json!({}),
    );
    let msg = error_details(&done);
    assert!(
        msg.contains("cannot preserve the ephemeral partition"),
        "{msg}"
    );
    let eph = RangeMount::new(&disk.dev, eph_at, 16 * MIB);
    assert_eq!(std::fs::read(eph.path("data.txt")).unwrap(), b"keep me");
}

/// Burn-in through the agent API, as a manual cleaning runs it: fio read-write-verify on the
/// node's disk (a loop device) for two seconds, stress-ng on one CPU for one; the values come
/// from driver_info and are checked; network burn-in without a partner is a clear error.
#[test]
fn burn_in_steps_run_the_real_tools() {
    if skip() {
        return;
    }
    for tool in ["fio", "stress-ng"] {
        assert!(
            rivet::system::tools::which(tool).is_some(),
            "{tool} is missing: scripts/deps.sh installs it"
        );
    }
    let d = tempfile::tempdir().unwrap();
    let disk = Loop::new(d.path(), "t.img", 64 * MIB, 512);
    let (_ironic, _agent, api) = agent_for(&disk.dev, d.path(), &d.path().join("state"));
    let step = |name: &str, driver_info: Value| {
        run(
            &api,
            "clean.execute_clean_step",
            json!({"step": {"step": name, "interface": "deploy", "priority": 0},
                   "node": node(&disk.dev, json!({"driver_info": driver_info})), "ports": [],
                   "clean_version": {"generic_hardware_manager": "1.4"}}),
        )
    };
    let t = std::time::Instant::now();
    let leftovers = || -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(env!("CARGO_MANIFEST_DIR"))
            .unwrap()
            .chain(std::fs::read_dir(std::env::temp_dir()).unwrap())
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with("verify.state") || n.starts_with("rivet-fio-"))
            .collect();
        v.sort();
        v
    };
    let before = leftovers();
    let state = d.path().join("state");
    let done = step(
        "burnin_disk",
        // IPA's form of the key (a path anywhere): the report goes to the agent's own burn-in
        // directory under that name, never to /var/log.
        json!({"agent_burnin_fio_disk_runtime": 2, "agent_burnin_fio_disk_loops": "1",
               "agent_burnin_fio_disk_outputfile": "/var/log/rivet-test-fio-report.json"}),
    );
    succeeded(&done);
    let r = &done["command_result"]["clean_result"];
    assert_eq!(r["tool"], "fio", "{done}");
    let report = state.join("burnin/rivet-test-fio-report.json");
    assert_eq!(r["log_file"], report.display().to_string(), "{r}");
    let full: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert!(full["jobs"].is_array(), "fio's JSON report: {full}");
    assert!(!Path::new("/var/log/rivet-test-fio-report.json").exists());
    assert_eq!(
        leftovers(),
        before,
        "fio left files where it ran (the agent's working directory or a scratch directory)"
    );
    assert_eq!(
        r["disks"][0]["device"],
        disk.dev.as_str(),
        "only the node's disk: {r}"
    );
    assert_eq!(r["disks"].as_array().unwrap().len(), 1, "{r}");
    assert!(r["disks"][0]["write"]["bytes"].as_u64().unwrap() > 0, "{r}");
    assert!(r["disks"][0]["read"]["bytes"].as_u64().unwrap() > 0, "{r}");
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
    // fio wrote its verification pattern onto the disk.
    assert!(std::fs::read(&disk.dev).unwrap().iter().any(|b| *b != 0));

    let done = step(
        "burnin_cpu",
        json!({"agent_burnin_cpu_timeout": 1, "agent_burnin_cpu_cpu": 1}),
    );
    succeeded(&done);
    let r = &done["command_result"]["clean_result"];
    assert_eq!(
        (r["stressor"].as_str(), r["seconds"].as_u64()),
        (Some("cpu"), Some(1)),
        "{r}"
    );
    assert!(
        r["metrics"].to_string().contains("cpu"),
        "stress-ng's metrics: {r}"
    );
    // A report name that is a link (here to the agent's session file) is refused, not
    // followed; a name that is no file name is refused before anything runs.
    let victim = state.join("session.json");
    let victim_before = std::fs::read(&victim).ok();
    std::os::unix::fs::symlink(&victim, state.join("burnin/cpu.log")).unwrap();
    let done = step(
        "burnin_cpu",
        json!({"agent_burnin_cpu_timeout": 1, "agent_burnin_cpu_cpu": 1,
               "agent_burnin_cpu_outputfile": "cpu.log"}),
    );
    assert_eq!(done["command_status"], "FAILED", "{done}");
    assert!(error_details(&done).contains("cpu.log"), "{done}");
    assert_eq!(std::fs::read(&victim).ok(), victim_before);
    for bad in ["/var/log/", "..", "a b", "x/.."] {
        let done = step(
            "burnin_cpu",
            json!({"agent_burnin_cpu_timeout": 1, "agent_burnin_cpu_outputfile": bad}),
        );
        assert_eq!(
            done["command_error"]["type"], "InvalidCommandParamsError",
            "{bad}: {done}"
        );
    }

    let done = step(
        "burnin_disk",
        json!({"agent_burnin_fio_disk_loops": "lots"}),
    );
    assert_eq!(done["command_status"], "FAILED");
    assert_eq!(
        done["command_error"]["type"], "InvalidCommandParamsError",
        "{done}"
    );
    assert!(error_details(&done).contains("agent_burnin_fio_disk_loops"));
    let done = step("burnin_network", json!({}));
    assert_eq!(done["command_status"], "FAILED");
    assert!(
        error_details(&done).contains("agent_burnin_fio_network_config"),
        "{done}"
    );
}

/// The README's "Custom steps" example is the one the tests run (tests/fixtures/steps.d): the
/// same manifest once parsed, the same script but for its comments.
#[test]
fn the_readme_custom_step_example_is_the_tested_one() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let section = &readme[readme
        .find("### Custom steps")
        .expect("README has a Custom steps section")..];
    let block = |lang: &str| {
        let start = section.find(&format!("```{lang}\n")).unwrap() + lang.len() + 4;
        let len = section[start..].find("```").unwrap();
        section[start..start + len].to_string()
    };
    let fixtures = root.join("tests/fixtures/steps.d");
    let dir = Path::new("/etc/rivet/steps.d");
    let parse = |text: &str| {
        let mut s = rivet::config::steps_d::parse(text, dir, &dir.join("m.toml")).unwrap();
        s.manifest = std::path::PathBuf::new();
        s
    };
    assert_eq!(
        parse(&block("toml")),
        parse(&std::fs::read_to_string(fixtures.join("write_marker.toml")).unwrap())
    );
    let code = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(
        code(&block("sh")),
        code(&std::fs::read_to_string(fixtures.join("write-marker.sh")).unwrap())
    );
}

/// A 4Kn disk with an msdos table: the table counts 4096-byte sectors, so the file systems of
/// its partitions sit where those sectors say; erase_devices_metadata must wipe them there
/// (read as 512-byte sectors, the wipe hit the wrong ranges and the signatures survived).
#[test]
fn metadata_erase_on_a_4kn_disk_with_an_msdos_table() {
    if skip() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let disk = Loop::new(d.path(), "4k.img", 64 * MIB, 4096);
    let mut sfdisk = Command::new("sfdisk")
        .args(["--quiet", &disk.dev])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        sfdisk.stdin.as_mut().unwrap(),
        b"label: dos\nstart=256, size=4096, type=83\nstart=4352, size=4096, type=83\n",
    )
    .unwrap();
    drop(sfdisk.stdin.take());
    assert!(sfdisk.wait().unwrap().success());
    let starts = [256 * 4096u64, 4352 * 4096];
    for at in starts {
        assert!(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-E", &format!("offset={at}"), &disk.dev, "16M"])
            .status()
            .unwrap()
            .success());
        assert!(
            blkid_at(&disk.dev, at).contains("TYPE=ext4"),
            "no ext4 at {at}"
        );
    }
    let (_ironic, _agent, api) = agent_for(&disk.dev, d.path(), &d.path().join("state"));
    let done = run(
        &api,
        "clean.execute_clean_step",
        json!({"step": {"step": "erase_devices_metadata", "interface": "deploy", "priority": 99},
               "node": node(&disk.dev, json!({})), "ports": [],
               "clean_version": {"generic_hardware_manager": "1.4"}}),
    );
    succeeded(&done);
    for at in starts {
        let left = blkid_at(&disk.dev, at);
        assert!(
            left.trim().is_empty(),
            "a signature survived at {at}: {left}"
        );
    }
    let out = Command::new("blkid")
        .args(["-p", &disk.dev])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "blkid still finds a table");
}

/// The erase steps' rules as Ironic's node settings drive them: a disk holding a VMFS
/// partition is refused (ProtectedDeviceError) until the node says `wipe_special_filesystems:
/// false`; a read-only disk fails the full erase unless the node says
/// `agent_erase_skip_read_only`, and is skipped by the metadata erase.
#[test]
fn erase_rules_shared_volumes_and_read_only_disks() {
    if skip() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let disk = Loop::new(d.path(), "t.img", 64 * MIB, 512);
    let (_ironic, _agent, api) = agent_for(&disk.dev, d.path(), &d.path().join("state"));
    let step = |name: &str, prio: u32, node: Value| {
        run(
            &api,
            "clean.execute_clean_step",
            json!({"step": {"step": name, "interface": "deploy", "priority": prio},
                   "node": node, "ports": [],
                   "clean_version": {"generic_hardware_manager": "1.4"}}),
        )
    };
    assert!(Command::new("sgdisk")
        .args(["-n", "1:2048:+8M", "-t", "1:8300", "-n", "2:0:+8M"])
        .args(["-t", "2:AA31E02A-400F-11DB-9590-000C2911D1B8", &disk.dev])
        .output()
        .unwrap()
        .status
        .success());
    let done = step("erase_devices_metadata", 99, node(&disk.dev, json!({})));
    assert_eq!(done["command_status"], "FAILED", "{done}");
    assert_eq!(
        done["command_error"]["type"], "ProtectedDeviceError",
        "{done}"
    );
    let msg = done["command_error"]["details"].as_str().unwrap_or("");
    assert!(
        msg.contains(&format!(
            "{} holds a VMware VMFS partition (partition 2)",
            disk.dev
        )),
        "{msg}"
    );
    let left = blkid_at(&disk.dev, 0);
    assert!(
        left.contains("PTTYPE=gpt"),
        "the refused disk was touched: {left}"
    );
    let done = step("erase_devices", 10, node(&disk.dev, json!({})));
    assert_eq!(
        done["command_error"]["type"], "ProtectedDeviceError",
        "{done}"
    );
    // The operator's word (in driver_info, where the API lets them set it).
    let done = step(
        "erase_devices_metadata",
        99,
        node(
            &disk.dev,
            json!({"driver_info": {"wipe_special_filesystems": false}}),
        ),
    );
    succeeded(&done);
    assert_blank(&disk.dev);

    // Read-only.
    assert!(Command::new("blockdev")
        .args(["--setro", &disk.dev])
        .status()
        .unwrap()
        .success());
    let done = step("erase_devices", 10, node(&disk.dev, json!({})));
    let msg = done["command_error"]["details"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let skipping = step(
        "erase_devices",
        10,
        node(
            &disk.dev,
            json!({"driver_internal_info": {"agent_erase_skip_read_only": true}}),
        ),
    );
    let metadata = step("erase_devices_metadata", 99, node(&disk.dev, json!({})));
    assert!(Command::new("blockdev")
        .args(["--setrw", &disk.dev])
        .status()
        .unwrap()
        .success());
    assert_eq!(done["command_status"], "FAILED", "{done}");
    assert_eq!(
        done["command_error"]["type"], "BlockDeviceEraseError",
        "{done}"
    );
    assert!(
        msg.contains("is read-only") && msg.contains("agent_erase_skip_read_only"),
        "{msg}"
    );
    succeeded(&skipping);
    assert_eq!(
        skipping["command_result"]["clean_result"][&disk.dev]["skipped"], "read-only",
        "{skipping}"
    );
    succeeded(&metadata);
    assert_eq!(
        metadata["command_result"]["clean_result"][&disk.dev]["skipped"], "read-only",
        "{metadata}"
    );
}
