//! `rivet root-device` and `rivet inventory` on real loop devices (512-byte and 4 KiB
//! logical sectors): hints by name, size and by-path, sector sizes reported right, failures
//! explained. Sparse backing files: nothing is written to any disk.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::loopdev::{is_root, Loop};
use serde_json::Value;

fn rivet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rivet"))
        .args(args)
        .output()
        .unwrap()
}

fn choose(hints: &str, dev_disk: &Path) -> (bool, Value, String) {
    let out = rivet(&[
        "root-device",
        "--allow-loop-devices",
        "--json",
        "--hints",
        hints,
        "--dev-disk-dir",
        dev_disk.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let v = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    (
        out.status.success(),
        v,
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn root_device_on_loop_devices() {
    if !is_root() && common::skipped("needs root for loop devices") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let small = Loop::new(d.path(), "small.img", 5 << 30, 512);
    let big4k = Loop::new(d.path(), "big4k.img", 7 << 30, 4096);
    let tiny = Loop::new(d.path(), "tiny.img", 1 << 30, 512);
    // A by-path tree like udev's, pointing at the 4Kn disk.
    let dev_disk = d.path().join("disk");
    std::fs::create_dir_all(dev_disk.join("by-path")).unwrap();
    let by_path = dev_disk.join("by-path/pci-0000:00:1f.2-ata-9");
    std::os::unix::fs::symlink(&big4k.dev, &by_path).unwrap();

    // By name.
    let (ok, v, err) = choose(&format!(r#"{{"name": "{}"}}"#, big4k.dev), &dev_disk);
    assert!(ok, "{err}");
    assert_eq!(v["device"]["name"], big4k.dev);
    assert_eq!(v["device"]["logical_sectors"], 4096);
    // By size (whole GiB, exact), and by a size range.
    let (ok, v, err) = choose(r#"{"size": 5}"#, &dev_disk);
    assert!(ok, "{err}");
    assert_eq!(v["device"]["name"], small.dev);
    assert_eq!(v["device"]["logical_sectors"], 512);
    let (ok, v, _) = choose(r#"{"size": "<range-in> [6 8]"}"#, &dev_disk);
    assert!(ok);
    assert_eq!(v["device"]["name"], big4k.dev);
    // By path, both as by_path and as a name.
    let bp = by_path.to_str().unwrap();
    let (ok, v, err) = choose(&format!(r#"{{"by_path": "{bp}"}}"#), &dev_disk);
    assert!(ok, "{err}");
    assert_eq!(v["device"]["name"], big4k.dev);
    let (ok, v, _) = choose(&format!(r#"{{"name": "{bp}"}}"#), &dev_disk);
    assert!(ok);
    assert_eq!(v["device"]["name"], big4k.dev);
    // The decision table names every disk.
    let table = v["table"].as_array().unwrap();
    for l in [&small.dev, &big4k.dev, &tiny.dev] {
        assert!(
            table.iter().any(|r| &r["name"] == l),
            "{l} missing from {table:?}"
        );
    }

    // Failures: a hint matching nothing, with every candidate and its reason; bad JSON; an
    // unknown hint. Never a fallback.
    let (ok, _, err) = choose(r#"{"size": 3}"#, &dev_disk);
    assert!(!ok);
    assert!(
        err.contains("no disk matches")
            && err.contains(&small.dev)
            && err.contains("does not match"),
        "{err}"
    );
    let (ok, _, err) = choose("{not json", &dev_disk);
    assert!(!ok && err.contains("not valid JSON"), "{err}");
    let (ok, _, err) = choose(r#"{"colour": "red"}"#, &dev_disk);
    assert!(!ok && err.contains("unknown hint"), "{err}");

    // Human output: the chosen device on the first line, then the table.
    let out = rivet(&[
        "root-device",
        "--allow-loop-devices",
        "--hints",
        &format!(r#"{{"name": "{}"}}"#, tiny.dev),
    ]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().next(), Some(tiny.dev.as_str()));
    assert!(text.contains("chosen"));

    // A GPT written on our own loop device is reported (read back by libblkid).
    let st = Command::new("sgdisk")
        .args(["-o"])
        .arg(&small.dev)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    // Inventory reports the loop disks with their sector sizes, and none without the flag.
    let inv: Value =
        serde_json::from_slice(&rivet(&["inventory", "--allow-loop-devices"]).stdout).unwrap();
    let disk = |n: &str| {
        inv["disks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == n)
            .cloned()
            .unwrap()
    };
    assert_eq!(disk(&big4k.dev)["logical_sectors"], 4096);
    assert_eq!(disk(&small.dev)["size"], 5u64 << 30);
    assert_eq!(disk(&small.dev)["partition_table"], "gpt");
    assert_eq!(disk(&tiny.dev)["partition_table"], Value::Null);
    let inv: Value = serde_json::from_slice(&rivet(&["inventory"]).stdout).unwrap();
    assert!(inv["disks"]
        .as_array()
        .unwrap()
        .iter()
        .all(|x| !x["name"].as_str().unwrap().contains("loop")));
}
