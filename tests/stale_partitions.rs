//! Stale partition nodes are never trusted. On this kernel a loop device scans no partitions:
//! `partx`/`partprobe` register them with BLKPG, and they outlive the table they came from
//! (and the device). A deploy onto a disk whose kernel partitions describe an old layout, one
//! of them held open so the kernel cannot drop it, must reach every partition of the new
//! table at the new table's offsets; a node resized behind the agent's back is detected.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::imgserver::ImageServer;
use common::install_util::{ext4_image, sha256, skip, MIB};
use common::loopdev::Loop;
use common::*;
use rivet::disk::nodes::{partition_io, registered, PartitionIo};
use serde_json::{json, Value};

fn sgdisk(dev: &str, args: &[&str]) {
    let out = Command::new("sgdisk").args(args).arg(dev).output().unwrap();
    assert!(
        out.status.success(),
        "sgdisk {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// (number, start, size) in bytes, as `sfdisk -J` reads the table.
fn sfdisk_table(dev: &str) -> Vec<(u32, u64, u64)> {
    let out = Command::new("sfdisk").args(["-J", dev]).output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let sector = v["partitiontable"]["sectorsize"].as_u64().unwrap_or(512);
    v["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let node = p["node"].as_str().unwrap();
            let n: u32 = node
                .trim_start_matches(dev)
                .trim_start_matches('p')
                .parse()
                .unwrap();
            (
                n,
                p["start"].as_u64().unwrap() * sector,
                p["size"].as_u64().unwrap() * sector,
            )
        })
        .collect()
}

#[test]
fn a_stale_layout_held_open_is_not_trusted() {
    if skip() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let disk = Loop::new(d.path(), "t.img", 700 * MIB, 512);
    // The old tenant's layout: three partitions the kernel knows about, the second one busy.
    sgdisk(
        &disk.dev,
        &["-o", "-n", "1:2048:+100M", "-n", "2:0:+200M", "-n", "3:0:0"],
    );
    disk.register_partitions();
    let old = registered(std::path::Path::new(&disk.dev));
    assert_eq!(old.len(), 3, "{old:?}");
    let held = std::fs::File::open(format!("{}p2", disk.dev)).unwrap();

    let tree = d.path().join("root");
    std::fs::create_dir_all(tree.join("boot/efi/EFI/BOOT")).unwrap();
    std::fs::write(tree.join("boot/efi/EFI/BOOT/BOOTX64.EFI"), "MZ new loader").unwrap();
    let uuid = "1e2d3c4b-0000-4000-8000-00000000057a";
    let data = ext4_image(d.path(), &tree, uuid);
    let srv = ImageServer::start();
    let url = srv.add("part.raw", data.clone());
    let (_ironic, agent, api) = agent_with_disk(
        &disk.dev,
        &d.path().join("state"),
        "",
        &["--allow-loop-devices"],
    );
    let info = json!({"id": "part", "urls": [url], "disk_format": "raw", "os_hash_algo": "sha256",
        "os_hash_value": sha256(&data), "image_type": "partition", "root_mb": 32, "swap_mb": 0,
        "deploy_boot_mode": "uefi", "disk_label": "gpt"});
    let (s, v) = api.post(
        "deploy.execute_deploy_step",
        json!({"step": {"step": "write_image", "interface": "deploy", "priority": 80,
                        "args": {"image_info": info}},
               "node": {"uuid": NODE, "properties": {"root_device": {"name": disk.dev}}},
               "ports": [], "deploy_version": {"generic_hardware_manager": "1.4"}}),
        false,
    );
    assert_eq!(s, 200, "{v}");
    let done = wait_done(&api, v["id"].as_str().unwrap());
    assert_eq!(done["command_status"], "SUCCEEDED", "{done}");
    // The boot loader step mounts the new root (partition 2, at 551 MiB): the kernel's p2 is
    // still the old one (101 MiB, busy).
    let (_, bl) = api.post(
        "image.install_bootloader",
        json!({"root_uuid": uuid, "efi_system_part_uuid": null, "prep_boot_part_uuid": null,
               "target_boot_mode": "uefi"}),
        true,
    );
    assert_eq!(bl["command_status"], "SUCCEEDED", "{bl}");

    let table = sfdisk_table(&disk.dev);
    assert_eq!(table, vec![(1, MIB, 550 * MIB), (2, 551 * MIB, 32 * MIB)]);
    // The root file system is where the new table says, and the ESP got the image's loader.
    let bytes = std::fs::read(&disk.dev).unwrap();
    assert_eq!(
        &bytes[551 * MIB as usize..551 * MIB as usize + data.len()],
        &data[..]
    );
    let out = Command::new("mtype")
        .args([
            "-i",
            &format!("{}@@{}", disk.dev, MIB),
            "::/EFI/BOOT/BOOTX64.EFI",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "MZ new loader");
    // The stale partitions that could go went; the busy one stayed and was not used.
    let now = registered(std::path::Path::new(&disk.dev));
    assert_eq!(
        now.iter().map(|r| r.number).collect::<Vec<_>>(),
        vec![2],
        "{now:?}"
    );
    assert_eq!(now[0].start, old[1].start);
    let log = agent.log_text();
    assert!(
        log.contains("describes another partition than the table"),
        "{log}"
    );
    drop(held);
}

#[test]
fn a_node_resized_behind_the_agents_back_is_detected() {
    if skip() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let disk = Loop::new(d.path(), "t.img", 64 * MIB, 512);
    sgdisk(&disk.dev, &["-o", "-n", "1:2048:+10M", "-n", "2:0:+20M"]);
    disk.register_partitions();
    let dev = std::path::Path::new(&disk.dev);
    let p2 = (11 * MIB, 20 * MIB);
    assert_eq!(
        partition_io(dev, 2, p2.0, p2.1),
        PartitionIo::Node(format!("{}p2", disk.dev).into())
    );
    // BLKPG resize: the node now covers 12 MiB where the table says 20.
    let out = Command::new("resizepart")
        .args([&disk.dev, "2", &((12 * MIB) / 512).to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "resizepart: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        partition_io(dev, 2, p2.0, p2.1),
        PartitionIo::Window {
            start: p2.0,
            len: p2.1
        }
    );
    // The untouched one is still used through its node.
    assert_eq!(
        partition_io(dev, 1, MIB, 10 * MIB),
        PartitionIo::Node(format!("{}p1", disk.dev).into())
    );
}
