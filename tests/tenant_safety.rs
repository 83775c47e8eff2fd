//! What tenants and the network send cannot reach the ramdisk: a partition image whose EFI
//! tree links to the ramdisk's files, whose mount points are links, or that carries FIFOs and
//! device nodes; endless small downloads; credentials sent to a host that is not the image's;
//! secrets echoed in results, state and logs; absurd numbers from the conductor; a lockdown
//! forgotten by a restarted agent.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::imgserver::ImageServer;
use common::install_util::{ext4_image, sha256, skip, MIB};
use common::loopdev::Loop;
use common::*;
use serde_json::{json, Value};

/// A bare HTTP server: records every request head, answers each with an endless body of
/// `chunk` repeated (or `chunk` once, when `endless` is false).
struct Raw {
    url: String,
    heads: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl Raw {
    fn start(host: &str, chunk: Vec<u8>, endless: bool) -> Raw {
        Raw::trickle(host, chunk, endless, Duration::ZERO)
    }

    /// Like `start`, pausing `pause` between chunks.
    fn trickle(host: &str, chunk: Vec<u8>, endless: bool, pause: Duration) -> Raw {
        let l = TcpListener::bind((host, 0)).unwrap();
        l.set_nonblocking(true).unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let heads = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (h, s) = (heads.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let Ok((mut c, _)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                let (h, s, chunk) = (h.clone(), s.clone(), chunk.clone());
                std::thread::spawn(move || {
                    c.set_nonblocking(false).unwrap();
                    let mut head = Vec::new();
                    let mut b = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") && c.read(&mut b).unwrap_or(0) == 1 {
                        head.push(b[0]);
                    }
                    h.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&head).into_owned());
                    let len = if endless {
                        String::new()
                    } else {
                        format!("Content-Length: {}\r\n", chunk.len())
                    };
                    if c.write_all(
                        format!("HTTP/1.1 200 OK\r\n{len}Connection: close\r\n\r\n").as_bytes(),
                    )
                    .is_err()
                    {
                        return;
                    }
                    loop {
                        if c.write_all(&chunk).is_err() || !endless || s.load(Ordering::Relaxed) {
                            return;
                        }
                        std::thread::sleep(pause);
                    }
                });
            }
        });
        Raw { url, heads, stop }
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Run `cmd` to its end, sampling its peak RSS (VmHWM); returns the output, MiB and seconds.
fn measured(mut cmd: Command) -> (Output, u64, f64) {
    let t = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut hwm = 0u64;
    while child.try_wait().unwrap().is_none() {
        if let Some(v) = peak_rss_kib(child.id()) {
            hwm = hwm.max(v);
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "not bounded in time"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        hwm > 0,
        "the process ended before its memory could be sampled"
    );
    (out, hwm / 1024, t.elapsed().as_secs_f64())
}

#[test]
fn endless_checksum_files_and_config_drives_are_cut_off() {
    let d = tempfile::tempdir().unwrap();
    let image = vec![7u8; 1 << 20];
    let srv = ImageServer::start();
    let url = srv.add("img.raw", image.clone());
    let target = d.path().join("disk");
    std::fs::write(&target, vec![0u8; 4 << 20]).unwrap();
    // The checksum file sits on another host than the image: the image's credentials must
    // not go there. It never ends.
    let line = format!("{}  img.raw\n", sha256(&image)).into_bytes();
    let sums = Raw::trickle(
        "127.0.0.2",
        line.repeat(200),
        true,
        Duration::from_millis(1),
    );
    let mut c = Command::new(env!("CARGO_BIN_EXE_rivet"));
    c.args([
        "install",
        "--quiet",
        "--timeout",
        "5",
        "--retries",
        "0",
        "--image-url",
        &url,
    ])
    .args(["--checksum-url", &format!("{}/SHA256SUMS", sums.url)])
    .args(["--basic-auth", "deployer:hunter2-image-secret", "--device"])
    .arg(&target);
    let (out, rss, secs) = measured(c);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("larger than"),
        "{err}"
    );
    assert!(rss < 64, "peak RSS {rss} MiB");
    let heads = sums.heads();
    assert!(!heads.is_empty());
    assert!(
        heads
            .iter()
            .all(|h| !h.to_ascii_lowercase().contains("authorization")),
        "the checksum host got the image's credentials: {heads:?}"
    );
    figure!("tenant_safety: endless checksum file refused in {secs:.1} s, peak RSS {rss} MiB");

    // An endless config drive: refused from its first bytes, not at 128 MiB.
    let cd = Raw::start(
        "127.0.0.1",
        b"#!/bin/sh\necho not an ISO\n".repeat(1000),
        true,
    );
    let mut c = Command::new(env!("CARGO_BIN_EXE_rivet"));
    c.args([
        "install",
        "--quiet",
        "--timeout",
        "5",
        "--retries",
        "0",
        "--image-url",
        &url,
    ])
    .args(["--checksum", &format!("sha256:{}", sha256(&image))])
    .args(["--configdrive", &format!("{}/cd.iso", cd.url), "--device"])
    .arg(&target);
    let (out, rss, secs) = measured(c);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("not a config drive"),
        "{err}"
    );
    assert!(rss < 64, "peak RSS {rss} MiB");
    figure!("tenant_safety: endless config drive refused in {secs:.1} s, peak RSS {rss} MiB");
}

#[test]
fn an_endless_injected_file_is_cut_off_and_the_agent_stays_small() {
    if skip() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let disk = Loop::new(d.path(), "t.img", 64 * MIB, 512);
    // A GPT disk with one ext4 partition to inject into.
    assert!(Command::new("sgdisk")
        .args(["-o", "-n", "1:2048:0"])
        .arg(&disk.dev)
        .output()
        .unwrap()
        .status
        .success());
    let part = d.path().join("p.ext4");
    assert!(Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&part)
        .arg("60M")
        .status()
        .unwrap()
        .success());
    let data = std::fs::read(&part).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&disk.dev)
        .and_then(|f| std::os::unix::fs::FileExt::write_all_at(&f, &data, MIB))
        .unwrap();
    let endless = Raw::start("127.0.0.1", vec![b'x'; 65536], true);
    let (_ironic, agent, api) = agent_with_disk(
        &disk.dev,
        &d.path().join("state"),
        "",
        &["--allow-loop-devices"],
    );
    let t = Instant::now();
    let (s, v) = api.post(
        "deploy.execute_deploy_step",
        json!({"step": {"interface": "deploy", "step": "inject_files", "priority": 0,
                        "args": {"files": [{"path": "/etc/big", "partition": 1,
                                            "content": format!("{}/big", endless.url)}]}},
               "node": {"uuid": NODE, "properties": {"root_device": {"name": disk.dev}}},
               "ports": [], "deploy_version": {"generic_hardware_manager": "1.4"}}),
        false,
    );
    assert_eq!(s, 200, "{v}");
    let done = wait_done(&api, v["id"].as_str().unwrap());
    assert_eq!(done["command_status"], "FAILED", "{done}");
    let details = done["command_error"]["details"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(details.contains("larger than"), "{details}");
    let hwm = peak_rss_kib(agent.child.id()).unwrap();
    assert!(hwm / 1024 < 64, "agent peak RSS {} MiB", hwm / 1024);
    figure!(
        "tenant_safety: endless injected file refused in {:.1} s, agent peak RSS {} MiB",
        t.elapsed().as_secs_f64(),
        hwm / 1024
    );
}

/// Deploy `data` as a UEFI partition image onto `dev`, then install the boot loader; returns
/// the install_bootloader result.
fn deploy_partition(
    api: &Api,
    srv: &ImageServer,
    dev: &str,
    name: &str,
    data: &[u8],
    uuid: &str,
) -> Value {
    let url = srv.add(name, data.to_vec());
    let info = json!({"id": name, "urls": [url], "disk_format": "raw", "os_hash_algo": "sha256",
        "os_hash_value": sha256(data), "image_type": "partition", "root_mb": 32, "swap_mb": 0,
        "deploy_boot_mode": "uefi", "disk_label": "gpt"});
    let (s, v) = api.post(
        "deploy.execute_deploy_step",
        json!({"step": {"step": "write_image", "interface": "deploy", "priority": 80,
                        "args": {"image_info": info}},
               "node": {"uuid": NODE, "properties": {"root_device": {"name": dev}}},
               "ports": [], "deploy_version": {"generic_hardware_manager": "1.4"}}),
        false,
    );
    assert_eq!(s, 200, "{v}");
    let done = wait_done(api, v["id"].as_str().unwrap());
    assert_eq!(done["command_status"], "SUCCEEDED", "{done}");
    let (_, bl) = api.post(
        "image.install_bootloader",
        json!({"root_uuid": uuid, "efi_system_part_uuid": null, "prep_boot_part_uuid": null,
               "target_boot_mode": "uefi"}),
        true,
    );
    bl
}

fn mountinfo() -> String {
    std::fs::read_to_string("/proc/self/mountinfo").unwrap()
}

#[test]
fn hostile_partition_images_never_reach_the_ramdisk() {
    if skip() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let canary_secret = format!("RIVET-CANARY-{}", uuid::Uuid::new_v4());
    let canary = d.path().join("canary");
    std::fs::write(&canary, &canary_secret).unwrap();
    let before = mountinfo();
    let srv = ImageServer::start();
    let disk = Loop::new(d.path(), "t.img", 600 * MIB, 512);
    let (_ironic, _agent, api) = agent_with_disk(
        &disk.dev,
        &d.path().join("state"),
        "",
        &["--allow-loop-devices"],
    );

    // A: no grub-install; the EFI tree carries links to the ramdisk's files, a FIFO and a
    // device node besides its loader. Only the loader reaches the ESP.
    let a = d.path().join("a");
    let efi = a.join("boot/efi/EFI/BOOT");
    std::fs::create_dir_all(&efi).unwrap();
    std::fs::write(efi.join("BOOTX64.EFI"), "MZ tenant loader").unwrap();
    std::os::unix::fs::symlink(&canary, efi.join("leak.efi")).unwrap();
    std::os::unix::fs::symlink(d.path(), a.join("boot/efi/EFI/leakdir")).unwrap();
    std::os::unix::fs::symlink("/proc/self/cmdline", efi.join("cmdline")).unwrap();
    assert!(Command::new("mkfifo")
        .arg(efi.join("fifo"))
        .status()
        .unwrap()
        .success());
    assert!(Command::new("mknod")
        .arg(efi.join("null"))
        .args(["c", "1", "3"])
        .status()
        .unwrap()
        .success());
    let uuid_a = "1e2d3c4b-0000-4000-8000-0000000000a1";
    let bl = deploy_partition(
        &api,
        &srv,
        &disk.dev,
        "a.raw",
        &ext4_image(d.path(), &a, uuid_a),
        uuid_a,
    );
    assert_eq!(bl["command_status"], "SUCCEEDED", "{bl}");
    let listing = Command::new("mdir")
        .args([
            "-/",
            "-b",
            "-i",
            &format!("{}@@{}", disk.dev, MIB),
            "::/EFI",
        ])
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout).to_lowercase();
    assert!(listing.contains("bootx64.efi"), "{listing}");
    for name in ["leak", "cmdline", "fifo", "null"] {
        assert!(!listing.contains(name), "{name} reached the ESP: {listing}");
    }
    let raw = std::fs::read(&disk.dev).unwrap();
    assert!(
        !raw.windows(canary_secret.len())
            .any(|w| w == canary_secret.as_bytes()),
        "the host's canary file is on the tenant's disk"
    );

    // B: grub-install present, but boot/efi is a link to the ramdisk's /etc: the ESP must not
    // be mounted there (and the image's tool never runs). C: boot/efi is a directory, but
    // /dev in the image is a link to /etc: nothing of the ramdisk is bound over /etc.
    let marker = d.path().join("grub-ran");
    for (name, link, uuid) in [
        ("b", "boot/efi", "1e2d3c4b-0000-4000-8000-0000000000b2"),
        ("c", "dev", "1e2d3c4b-0000-4000-8000-0000000000c3"),
    ] {
        let tree = d.path().join(name);
        std::fs::create_dir_all(tree.join("usr/sbin")).unwrap();
        std::fs::create_dir_all(tree.join("boot/efi")).unwrap();
        let tool = tree.join("usr/sbin/grub-install");
        std::fs::write(&tool, format!("#!/bin/sh\ntouch {}\n", marker.display())).unwrap();
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        let _ = std::fs::remove_dir(tree.join(link));
        std::os::unix::fs::symlink("/etc", tree.join(link)).unwrap();
        let image = ext4_image(d.path(), &tree, uuid);
        let bl = deploy_partition(&api, &srv, &disk.dev, &format!("{name}.raw"), &image, uuid);
        assert_eq!(bl["command_status"], "FAILED", "{name}: {bl}");
        let why = bl["command_error"]["details"].as_str().unwrap_or_default();
        assert!(
            why.contains(&format!("/{link}")) && why.contains("refused as a mount point"),
            "{name}: {why}"
        );
    }

    assert!(!marker.exists(), "the image's grub-install ran");
    // Every mount made for these images is gone; nothing was mounted on the ramdisk's paths.
    let after = mountinfo();
    assert!(!after.contains("rivet-mnt"), "{after}");
    let on = |m: &str, p: &str| {
        m.lines()
            .filter(|l| l.split_whitespace().nth(4) == Some(p))
            .count()
    };
    for p in ["/etc", "/", "/run", "/dev", "/proc", "/sys"] {
        assert_eq!(on(&before, p), on(&after, p), "mounts on {p} changed");
    }
}

#[test]
fn secrets_never_leave_the_agent() {
    if skip() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let disk = Loop::new(d.path(), "t.img", 128 * MIB, 512);
    let state = d.path().join("state");
    let (_ironic, agent, api) = agent_with_disk(&disk.dev, &state, "", &["--allow-loop-devices"]);
    let srv = ImageServer::start();
    let image = common::install_util::gpt_image(d.path(), "img.raw", 16, 512);
    let url = srv.add("img.raw", image.clone());
    // A real config drive (gzip + base64, as the conductor sends it): its text is the secret.
    let iso = common::install_util::config_drive_iso(
        d.path(),
        r#"{"uuid": "x", "admin_pass": "s3cr3t"}"#,
    );
    let gz = {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(&std::fs::read(&iso).unwrap()).unwrap();
        e.finish().unwrap()
    };
    let configdrive = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &gz);
    let secrets = [
        "urlpass-SECRET-1",
        "SIG-SECRET-2",
        "PW-SECRET-3",
        "QmVhcmVyIFRPSy1TRUNSRVQtNA==",
        configdrive.as_str(),
    ];
    let with_creds = url.replacen("http://", "http://deployer:urlpass-SECRET-1@", 1);
    let info = json!({"id": "img", "urls": [format!("{with_creds}?temp_url_sig=SIG-SECRET-2&temp_url_expires=1")],
        "disk_format": "raw", "os_hash_algo": "sha256", "os_hash_value": sha256(&image),
        "image_server_auth_strategy": "http_basic", "image_server_user": "deployer",
        "image_server_password": "PW-SECRET-3", "image_request_authorization": secrets[3]});
    let (s, v) = api.post(
        "deploy.execute_deploy_step",
        json!({"step": {"step": "write_image", "interface": "deploy", "priority": 80,
                        "args": {"image_info": info, "configdrive": secrets[4]}},
               "node": {"uuid": NODE, "properties": {"root_device": {"name": disk.dev}},
                        "instance_info": {"image_server_password": "PW-SECRET-3", "configdrive": secrets[4]}},
               "ports": [], "deploy_version": {"generic_hardware_manager": "1.4"}}),
        false,
    );
    assert_eq!(s, 200, "{v}");
    let done = wait_done(&api, v["id"].as_str().unwrap());
    assert_eq!(done["command_status"], "SUCCEEDED", "{done}");
    assert_eq!(
        done["command_result"]["deploy_step"]["step"], "write_image",
        "{done}"
    );
    let listing = api
        .client
        .get(api.url("/v1/commands/", ""))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        listing.contains("deploy_step") && listing.contains("***"),
        "{listing}"
    );
    let mut places = vec![("GET /v1/commands".to_string(), listing)];
    for e in std::fs::read_dir(&state).unwrap() {
        let e = e.unwrap();
        let mode = e.metadata().unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} is {mode:o}", e.path().display());
        places.push((
            e.path().display().to_string(),
            String::from_utf8_lossy(&std::fs::read(e.path()).unwrap()).into_owned(),
        ));
    }
    assert_eq!(
        std::fs::metadata(&state).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let (_, logs) = api.post("log.collect_system_logs", json!({}), true);
    let tgz = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        logs["command_result"]["system_logs"].as_str().unwrap(),
    )
    .unwrap();
    let mut ring = String::new();
    for e in tar::Archive::new(flate2::read::GzDecoder::new(&tgz[..]))
        .entries()
        .unwrap()
    {
        let mut e = e.unwrap();
        if e.path().unwrap().to_string_lossy() == "rivet.log" {
            e.read_to_string(&mut ring).unwrap();
        }
    }
    assert!(ring.contains("write_image"), "the archived log is empty");
    places.push(("collect_system_logs".into(), ring));
    places.push(("the agent's log".into(), agent.log_text()));
    for (place, text) in &places {
        for s in secrets {
            assert!(!text.contains(s), "{s} found in {place}");
        }
    }
    // The token is kept in one place only: session.json (0600), for a restarted agent.
    for (place, text) in &places {
        if !place.ends_with("session.json") {
            assert!(!text.contains(&token()), "the agent token is in {place}");
        }
    }
}

#[test]
fn absurd_numbers_from_the_conductor_do_not_stop_heartbeats() {
    let (code, mut answer) = lookup_ok(&token(), 300);
    answer["config"]["heartbeat_timeout"] = json!(1e300);
    let ironic = MockIronic::start(vec![], (code, answer));
    let state = tempfile::tempdir().unwrap();
    let mut agent = Agent::spawn(
        &format!(
            "ipa-api-url={} ipa-lookup-timeout=1e300 ipa-image-download-max-duration=1e30",
            ironic.url
        ),
        state.path(),
        &[],
    );
    ironic.wait_heartbeats(1, Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        agent.child.try_wait().unwrap().is_none(),
        "{}",
        agent.log_text()
    );
    assert!(agent
        .log_text()
        .contains("heartbeat_timeout is out of range"));
}

#[test]
fn lockdown_sticks_across_a_restart() {
    let state = tempfile::tempdir().unwrap();
    let (ironic, mut agent, api) = agent_with_disk("/dev/null", state.path(), "", &[]);
    let (s, _) = api.post("system.lockdown", json!({}), true);
    assert_eq!(s, 200);
    assert!(agent.wait_exit(Duration::from_secs(20)).success());
    let (lookups, beats) = (ironic.lookups().len(), ironic.heartbeats().len());
    // Restarted in the same boot (same state directory): silent.
    let again = Agent::spawn(&format!("ipa-api-url={}", ironic.url), state.path(), &[]);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        (ironic.lookups().len(), ironic.heartbeats().len()),
        (lookups, beats)
    );
    assert!(std::net::TcpStream::connect(("127.0.0.1", again.port)).is_err());
    assert!(
        again.log_text().contains("locked down"),
        "{}",
        again.log_text()
    );
}
