//! Full erase (`erase_devices`, `erase_devices_express`), verified.
//!
//! Methods, best first: NVMe format with crypto erase then user-data erase (`nvme` tool), ATA
//! security erase when the drive supports it (`hdparm`), then overwrite: N passes of
//! pseudo-random data then zeros (write-zeroes when the device has it), as the node's
//! `agent_erase_devices_iterations` / `_zeroize` ask. A secure erase that was tried and failed
//! (a frozen drive, a format the controller refused) fails the disk unless the node allows
//! the fallback (`agent_continue_if_secure_erase_failed`, IPA's rule), after a discard when
//! `ipa-enable-discard-erase` asks for one. The express step never overwrites: a secure erase,
//! else a discard, else the metadata wipe (`wipe.rs`), as IPA's. Every method but the
//! metadata wipe is checked afterwards by reading samples spread over the whole disk: a disk
//! that does not read back as erased fails the step, and a disk no method applied to fails it
//! loudly. [`erase_many`] erases several disks side by side (`disk_erasure_concurrency`),
//! each disk's outcome kept apart.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::device::{AlignedBuf, Device, DeviceError};
use crate::system::tools::{run_capture, which};

const CHUNK: usize = 4 << 20;
const SAMPLES: u64 = 256;

#[derive(Debug, thiserror::Error)]
pub enum EraseError {
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error("{disk}: {method} did not erase the disk: {detail}")]
    NotErased {
        disk: String,
        method: &'static str,
        detail: String,
    },
    #[error("{disk}: no erase method applies: {why}")]
    NoMethod { disk: String, why: String },
    #[error(
        "{disk}: the secure erase failed ({why}) and the fallback to an overwrite is not \
         enabled (the node's agent_continue_if_secure_erase_failed)"
    )]
    SecureEraseFailed { disk: String, why: String },
    #[error(transparent)]
    Metadata(#[from] super::wipe::WipeError),
}

/// How to erase, from the node (driver_internal_info) and the step.
#[derive(Debug, Clone)]
pub struct Policy {
    pub random_passes: u32,
    pub final_zeros: bool,
    pub nvme_secure_erase: bool,
    pub ata_secure_erase: bool,
    /// erase_devices_express: secure erase, discard or the metadata wipe; no overwrite.
    pub express: bool,
    /// After a secure erase that failed: overwrite instead of failing the disk.
    pub continue_if_secure_erase_failed: bool,
    /// After a secure erase that failed: try a (verified) discard first.
    pub discard_if_secure_erase_failed: bool,
    /// Block devices (`/dev/…`) cleaning must not touch (skip_block_devices, removable and
    /// virtual media): an NVMe format that could reach one of them is not used.
    pub keep: Vec<String>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            random_passes: 1,
            final_zeros: true,
            nvme_secure_erase: true,
            ata_secure_erase: true,
            express: false,
            continue_if_secure_erase_failed: false,
            discard_if_secure_erase_failed: false,
            keep: Vec::new(),
        }
    }
}

/// What was done to a disk.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Done {
    pub method: &'static str,
    pub bytes: u64,
    pub samples_checked: u64,
    /// When the erase of this disk began and ended (Unix time, seconds): disks erased side by
    /// side overlap.
    pub started: f64,
    pub finished: f64,
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Deterministic pseudo-random bytes for `offset` (splitmix64 of the 8-byte word index), so
/// the verification can recompute what a random pass wrote.
fn fill_random(buf: &mut [u8], offset: u64, seed: u64) {
    for (i, w) in buf.chunks_mut(8).enumerate() {
        let mut z = seed ^ (offset / 8 + i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let b = z.to_le_bytes();
        w.copy_from_slice(&b[..w.len()]);
    }
}

/// One pass over the whole disk: `seed` Some = pseudo-random, None = zeros.
fn pass(d: &Device, seed: Option<u64>) -> Result<(), EraseError> {
    let size = d.size();
    let sector = u64::from(d.logical_sector().max(512));
    if seed.is_none() && d.zero_offloaded(0, size / sector * sector).is_ok() {
        return Ok(());
    }
    let mut aligned = AlignedBuf::new(CHUNK);
    let buf = aligned.get_mut();
    let mut at = 0u64;
    while at < size {
        let n = (size - at).min(CHUNK as u64) as usize;
        match seed {
            Some(s) => fill_random(&mut buf[..n], at, s),
            None => buf[..n].fill(0),
        }
        d.write_at(&buf[..n], at)?;
        at += n as u64;
    }
    Ok(d.sync()?)
}

/// Read samples spread over the disk (first and last sectors included) and compare each
/// with what it must hold.
fn verify(d: &Device, method: &'static str, seed: Option<u64>) -> Result<u64, EraseError> {
    let size = d.size();
    let blk = 4096u64.min(size);
    let mut got = vec![0u8; blk as usize];
    let mut want = vec![0u8; blk as usize];
    let last = size - blk;
    let mut n = 0;
    for i in 0..=SAMPLES {
        // Spread evenly, nudged off alignment so stripes of any size are hit.
        let at = if i == SAMPLES {
            last
        } else {
            ((last / SAMPLES) * i + i * 7 * 512).min(last) / 512 * 512
        };
        d.read_at(&mut got, at)?;
        match seed {
            Some(s) => fill_random(&mut want, at, s),
            None => want.fill(0),
        }
        if got != want {
            return Err(EraseError::NotErased {
                disk: d.name(),
                method,
                detail: format!("bytes at offset {at} are not what the erase left"),
            });
        }
        n += 1;
    }
    Ok(n)
}

fn is_nvme(name: &str) -> bool {
    name.rsplit('/')
        .next()
        .is_some_and(|b| b.starts_with("nvme"))
}

/// The controller of NVMe namespace `/dev/nvmeXnY`: `nvmeX`.
fn nvme_controller(name: &str) -> String {
    let base = name.rsplit('/').next().unwrap_or(name);
    let number = base
        .strip_prefix("nvme")
        .and_then(|r| r.split('n').next())
        .unwrap_or_default();
    format!("nvme{number}")
}

/// The controller of NVMe namespace `/dev/nvmeXnY` and its other namespaces (`/dev/…`).
fn nvme_siblings(name: &str) -> (String, Vec<String>) {
    let base = name.rsplit('/').next().unwrap_or(name);
    let ctrl = nvme_controller(name);
    let siblings = std::fs::read_dir(format!("/sys/class/nvme/{ctrl}"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&format!("{ctrl}n")) && n != base && !n.contains('p'))
                .map(|n| format!("/dev/{n}"))
                .collect()
        })
        .unwrap_or_default();
    (format!("/dev/{ctrl}"), siblings)
}

/// Whether a format of one namespace stays in it: the controller's FNA bits 0 (format) and
/// 2 (crypto erase) both clear. Unknown is "no".
fn nvme_format_is_per_namespace(ctrl: &str) -> bool {
    let Ok((true, out)) = run_capture(
        "nvme",
        &["id-ctrl", ctrl, "-o", "json"],
        Duration::from_secs(30),
        1 << 20,
    ) else {
        return false;
    };
    serde_json::from_slice::<serde_json::Value>(&out)
        .ok()
        .and_then(|v| v.get("fna").and_then(serde_json::Value::as_u64))
        .is_some_and(|fna| fna & 0b101 == 0)
}

/// Run a tool that must succeed; its failure as one short line: `what`, then its own words.
fn tool_ok(tool: &str, args: &[&str], limit: Duration, what: &str) -> Result<(), String> {
    match run_capture(tool, args, limit, 1 << 16) {
        Ok((true, _)) => Ok(()),
        Ok((false, out)) => Err(format!(
            "{what}: {}",
            String::from_utf8_lossy(&out)
                .trim()
                .chars()
                .take(200)
                .collect::<String>()
        )),
        Err(e) => Err(format!("{what}: {e}")),
    }
}

/// What a secure erase came to: done (the method), not applicable (`Ok(None)`: no tool, not
/// supported), or tried and failed (`Err`, why).
type Secure = Result<Option<&'static str>, String>;

/// NVMe format: crypto erase (-s 2), else user-data erase (-s 1). Not when another namespace
/// of the controller must be kept and the controller formats all namespaces at once.
fn nvme_format(name: &str, keep: &[String]) -> Secure {
    if which("nvme").is_none() {
        return Ok(None);
    }
    let (ctrl, siblings) = nvme_siblings(name);
    let kept: Vec<&String> = siblings.iter().filter(|s| keep.contains(s)).collect();
    if !kept.is_empty() && !nvme_format_is_per_namespace(&ctrl) {
        tracing::warn!(disk = %name, kept = ?kept, "not formatting the NVMe namespace: the controller may format every namespace, and another one must be kept; overwriting instead");
        return Ok(None);
    }
    let t = Duration::from_secs(3600);
    let mut why = Vec::new();
    for (ses, method) in [("2", "nvme crypto erase"), ("1", "nvme user data erase")] {
        match tool_ok("nvme", &["format", name, "-s", ses, "-f"], t, method) {
            Ok(()) => return Ok(Some(method)),
            Err(e) => why.push(e),
        }
    }
    Err(why.join("; "))
}

/// ATA security erase, when `hdparm -I` says the drive supports it. A drive the firmware
/// froze cannot be erased this way: that is a failure (IPA's rule), not "unsupported".
fn ata_secure_erase(name: &str) -> Secure {
    if which("hdparm").is_none() {
        return Ok(None);
    }
    let t = Duration::from_secs(60);
    let Ok((ok, out)) = run_capture("hdparm", &["-I", name], t, 1 << 20) else {
        return Ok(None);
    };
    let info = String::from_utf8_lossy(&out).to_lowercase();
    if !ok || !info.contains("supported: enhanced erase") && !info.contains("security erase unit") {
        return Ok(None);
    }
    // "not	frozen" when it may be erased; a line of just "frozen" when the BIOS locked it.
    if info.lines().any(|l| l.trim() == "frozen") {
        return Err("the drive's security is frozen (by the firmware at boot)".into());
    }
    let long = Duration::from_secs(6 * 3600);
    let step = |args: &[&str], limit: Duration, what: &str| tool_ok("hdparm", args, limit, what);
    step(
        &["--user-master", "u", "--security-set-pass", "NULL", name],
        t,
        "setting the security password",
    )?;
    step(
        &["--user-master", "u", "--security-erase", "NULL", name],
        long,
        "security erase",
    )?;
    Ok(Some("ata secure erase"))
}

fn discard(d: &Device) -> Option<&'static str> {
    let sector = u64::from(d.logical_sector().max(512));
    let len = d.size() / sector * sector;
    if d.discard(0, len, true).is_ok() {
        return Some("secure discard");
    }
    d.discard(0, len, false).ok().map(|_| "discard")
}

/// Erase `path` per `p` and verify it.
pub fn erase(path: &Path, p: &Policy) -> Result<Done, EraseError> {
    let started = unix_now();
    let d = Device::open(path)?;
    let name = d.name();
    let done = |method: &'static str, bytes: u64, samples_checked: u64| Done {
        method,
        bytes,
        samples_checked,
        started,
        finished: unix_now(),
    };
    // Hardware erase first: fast, and reaches remapped blocks an overwrite cannot. (Not ATA
    // in the express step: an enhanced erase of a spinning disk takes hours.)
    let hw = if is_nvme(&name) && p.nvme_secure_erase {
        nvme_format(&name, &p.keep)
    } else if !is_nvme(&name) && p.ata_secure_erase && !p.express {
        ata_secure_erase(&name)
    } else {
        Ok(None)
    };
    match hw {
        Ok(Some(method)) => {
            // After a secure erase the media reads as zeros (or as what the drive decides for
            // crypto erase: then the metadata erase that follows in cleaning still applies).
            let checked = verify(&d, method, None).or_else(|e| {
                if method == "nvme crypto erase" {
                    Ok(0)
                } else {
                    Err(e)
                }
            })?;
            return Ok(done(method, d.size(), checked));
        }
        Ok(None) => {}
        Err(why) if p.express => {
            tracing::warn!(disk = %name, "secure erase failed ({why}); express erase goes on with a discard or the metadata wipe");
        }
        Err(why) => {
            if p.discard_if_secure_erase_failed {
                if let Some(method) = discard(&d) {
                    if let Ok(checked) = verify(&d, method, None) {
                        return Ok(done(method, d.size(), checked));
                    }
                }
            }
            if !p.continue_if_secure_erase_failed {
                return Err(EraseError::SecureEraseFailed { disk: name, why });
            }
            tracing::warn!(disk = %name, "secure erase failed ({why}); overwriting instead (agent_continue_if_secure_erase_failed)");
        }
    }
    if p.express {
        if let Some(method) = discard(&d) {
            let checked = verify(&d, method, None)?;
            return Ok(done(method, d.size(), checked));
        }
        // Neither a secure erase nor a discard: the metadata wipe, checked by libblkid.
        drop(d);
        super::wipe::erase_metadata(path)?;
        return Ok(done("metadata wipe", 0, 0));
    }
    if p.random_passes == 0 && !p.final_zeros {
        return Err(EraseError::NoMethod {
            disk: name,
            why: "no secure erase, and the node asks for no overwrite pass (iterations 0, zeroize off)".into(),
        });
    }
    let mut last_seed = None;
    for i in 0..p.random_passes {
        let seed = rand::random::<u64>();
        tracing::info!(disk = %name, pass = i + 1, "random overwrite pass");
        pass(&d, Some(seed))?;
        last_seed = Some(seed);
    }
    if p.final_zeros {
        pass(&d, None)?;
        last_seed = None;
    }
    let method = if p.final_zeros && p.random_passes == 0 {
        "zero fill"
    } else {
        "overwrite"
    };
    let checked = verify(&d, method, last_seed)?;
    Ok(done(method, d.size(), checked))
}

/// Erase `disks` per `p`, `concurrency` at a time (at least one, at most one per disk): each
/// on a thread of its own with its own span, the outcomes in the order of `disks`.
pub fn erase_many(
    disks: &[PathBuf],
    p: &Policy,
    concurrency: usize,
) -> Vec<(PathBuf, Result<Done, EraseError>)> {
    let workers = concurrency.clamp(1, disks.len().max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: std::sync::Mutex<Vec<Option<Result<Done, EraseError>>>> =
        std::sync::Mutex::new(disks.iter().map(|_| None).collect());
    let parent = tracing::Span::current();
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let Some(disk) = disks.get(i) else { break };
                let span = tracing::info_span!(parent: &parent, "erase", disk = %disk.display());
                let r = span.in_scope(|| {
                    super::nodes::release_holders(disk);
                    erase(disk, p)
                });
                if let Ok(mut all) = results.lock() {
                    if let Some(slot) = all.get_mut(i) {
                        *slot = Some(r);
                    }
                }
            });
        }
    });
    let all = results
        .into_inner()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    disks
        .iter()
        .cloned()
        .zip(all)
        .map(|(d, r)| {
            let r = r.unwrap_or_else(|| {
                Err(EraseError::NoMethod {
                    disk: d.display().to_string(),
                    why: "its erase thread ended without a result".into(),
                })
            });
            (d, r)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(dir: &Path, size: u64) -> std::path::PathBuf {
        let p = dir.join("d.img");
        std::fs::write(&p, vec![0xA5u8; size as usize]).unwrap();
        p
    }

    #[test]
    fn overwrite_passes_are_verified() {
        let d = tempfile::tempdir().unwrap();
        let p = disk(d.path(), 9 << 20);
        let done = erase(&p, &Policy::default()).unwrap();
        assert_eq!(done.method, "overwrite");
        assert!(done.samples_checked > 200);
        assert!(std::fs::read(&p).unwrap().iter().all(|b| *b == 0));

        // Random only: the disk holds the pattern, checked by recomputing it.
        std::fs::write(&p, vec![0xA5u8; 9 << 20]).unwrap();
        let r = Policy {
            final_zeros: false,
            ..Policy::default()
        };
        erase(&p, &r).unwrap();
        let data = std::fs::read(&p).unwrap();
        assert!(data
            .windows(4096)
            .step_by(4096)
            .all(|w| w != [0xA5u8; 4096]));

        let none = Policy {
            random_passes: 0,
            final_zeros: false,
            ..Policy::default()
        };
        assert!(matches!(erase(&p, &none), Err(EraseError::NoMethod { .. })));
    }

    #[test]
    fn nvme_namespaces_name_their_controller() {
        assert_eq!(nvme_controller("/dev/nvme0n1"), "nvme0");
        assert_eq!(nvme_controller("/dev/nvme12n3"), "nvme12");
        assert_eq!(nvme_controller("nvme1n1"), "nvme1");
        // Without a namespace device in the sysfs tree there is nothing to keep.
        let (ctrl, siblings) = nvme_siblings("/dev/nvme97n1");
        assert_eq!(ctrl, "/dev/nvme97");
        assert!(siblings.is_empty());
    }

    #[test]
    fn pattern_is_reproducible() {
        let (mut a, mut b) = (vec![0u8; 4096], vec![0u8; 4096]);
        fill_random(&mut a, 8192, 7);
        fill_random(&mut b, 8192, 7);
        assert_eq!(a, b);
        fill_random(&mut b, 0, 7);
        assert_ne!(a, b);
    }
}
