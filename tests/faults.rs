//! The seeded fault suite: hundreds of `rivet install` runs against the fault-injecting image
//! server (connection cuts, stalls past the read timeout, 5xx bursts, 4xx, truncated bodies with
//! and without Content-Length, wrong Content-Length, objects rebuilt mid-download, checksum
//! mismatches, images larger than the disk, corrupt and malicious qcow2, damaged compressed
//! streams). Every run is judged on real outcomes:
//! * success ⇒ the disk equals the image (qemu-img compare; for qcow2 against qemu-img's own
//!   reading of the same file);
//! * failure ⇒ the error names the cause, and no partition table is left from a half-write;
//! * never a panic, never a run past its time limit; memory is bounded (peak RSS reported).
//!
//! It prints `faults_run N`, `silent_corruptions 0`, `panics 0`, `hangs 0`, `unexpected 0`.
//! `RIVET_FAULT_SEED` and `RIVET_FAULT_RUNS` replay or extend a run.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::imgserver::ImageServer;
use common::install_util::{compress, gpt_image, sha256, skip, MIB};
use common::loopdev::Loop;
use common::*;
use serde_json::json;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*: deterministic per seed, good enough to place faults.
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// What a run must end with.
#[derive(Debug, Clone)]
enum Expect {
    /// Success, and the disk equals this raw content.
    Ok,
    /// Failure whose message contains one of these (case-insensitive).
    Fail(&'static [&'static str]),
    /// Either, judged by the invariants only (success ⇒ disk equals the reference).
    Either,
}

struct Case {
    name: String,
    url: String,
    checksum: String,
    /// The raw content a success must leave on the disk (None: the run must not succeed).
    reference: Option<PathBuf>,
    expect: Expect,
    extra: Vec<String>,
}

#[derive(Default)]
struct Tally {
    runs: usize,
    ok: usize,
    failed: usize,
    silent_corruptions: Vec<String>,
    panics: Vec<String>,
    hangs: Vec<String>,
    unexpected: Vec<String>,
    half_written: Vec<String>,
    peak_rss_mib: u64,
    peak_rss_case: String,
}

const TARGET_MIB: u64 = 24;
const RUN_LIMIT: Duration = Duration::from_secs(45);

struct Fx {
    _d: tempfile::TempDir,
    dir: PathBuf,
    /// A 16 MiB GPT disk image, its raw file, and the same as qcow2 (compressed clusters).
    raw: Vec<u8>,
    raw_path: PathBuf,
    qcow2: Vec<u8>,
    qcow2_plain: Vec<u8>,
    /// A different image, as a rebuilt object would be.
    other: Vec<u8>,
    other_path: PathBuf,
    old_disk: Vec<u8>,
    target: PathBuf,
}

fn fixture() -> Fx {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().to_path_buf();
    let raw = gpt_image(&dir, "img.raw", 16, 512);
    let raw_path = dir.join("img.raw");
    let q = dir.join("img.qcow2");
    assert!(Command::new("qemu-img")
        .args([
            "convert",
            "-q",
            "-c",
            "-f",
            "raw",
            "-O",
            "qcow2",
            "-o",
            "cluster_size=65536"
        ])
        .arg(&raw_path)
        .arg(&q)
        .status()
        .unwrap()
        .success());
    let qcow2 = std::fs::read(&q).unwrap();
    let qp = dir.join("plain.qcow2");
    assert!(Command::new("qemu-img")
        .args([
            "convert",
            "-q",
            "-f",
            "raw",
            "-O",
            "qcow2",
            "-o",
            "cluster_size=4096"
        ])
        .arg(&raw_path)
        .arg(&qp)
        .status()
        .unwrap()
        .success());
    let qcow2_plain = std::fs::read(&qp).unwrap();
    let mut other = gpt_image(&dir, "other.raw", 16, 512);
    // Same size and table, different data: a splice of the two would still look plausible.
    for b in other[(3 * MIB) as usize..(4 * MIB) as usize].iter_mut() {
        *b = b.wrapping_add(1);
    }
    std::fs::write(dir.join("other.raw"), &other).unwrap();
    let old_disk = gpt_image(&dir, "old.raw", TARGET_MIB, 512);
    Fx {
        other_path: dir.join("other.raw"),
        target: dir.join("target.img"),
        _d: d,
        dir,
        raw,
        raw_path,
        qcow2,
        qcow2_plain,
        other,
        old_disk,
    }
}

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().unwrap())
}

/// The L2 entries of a qcow2 file: (file offset of the entry, its value).
fn l2_entries(q: &[u8]) -> Vec<(usize, u64)> {
    let cluster = 1usize << u32::from_be_bytes(q[20..24].try_into().unwrap());
    let l1_size = u32::from_be_bytes(q[36..40].try_into().unwrap()) as usize;
    let l1 = be64(q, 40) as usize;
    let mut out = Vec::new();
    for i in 0..l1_size {
        let l2 = (be64(q, l1 + 8 * i) & 0x00ff_ffff_ffff_fe00) as usize;
        if l2 == 0 {
            continue;
        }
        for j in 0..cluster / 8 {
            let at = l2 + 8 * j;
            let v = be64(q, at);
            if v != 0 {
                out.push((at, v));
            }
        }
    }
    out
}

/// qemu-img's own reading of a (possibly damaged) qcow2, as raw; None if it refuses it.
fn qemu_reading(q: &Path, out: &Path) -> Option<PathBuf> {
    let st = Command::new("qemu-img")
        .args(["convert", "-q", "-f", "qcow2", "-O", "raw"])
        .arg(q)
        .arg(out)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    st.success().then(|| out.to_path_buf())
}

/// The disk has no partition table or signature blkid knows (a failed run wipes both ends).
fn no_table(target: &Path) -> bool {
    let out = Command::new("blkid")
        .args(["-p", "-o", "export"])
        .arg(target)
        .output()
        .unwrap();
    out.status.code() == Some(2)
}

/// The disk holds the reference byte for byte over the reference's length (past it, the old
/// disk's data may remain, as with IPA; both ends of the disk were wiped first).
fn equals(reference: &Path, target: &Path) -> bool {
    let r = std::fs::read(reference).unwrap();
    let t = std::fs::read(target).unwrap();
    t.len() >= r.len() && t[..r.len()] == r[..]
}

fn run_one(fx: &Fx, c: &Case, t: &mut Tally) {
    // A reused machine: the previous deploy's partition table and data.
    std::fs::write(&fx.target, &fx.old_disk).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rivet"));
    cmd.args([
        "install",
        "--quiet",
        "--image-url",
        &c.url,
        "--checksum",
        &c.checksum,
    ])
    .arg("--device")
    .arg(&fx.target)
    .args([
        "--retry-interval",
        "0.05",
        "--retries",
        "4",
        "--timeout",
        "1",
    ])
    .args(["--max-duration", "30"])
    .args(&c.extra)
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let rivet_exe = std::fs::canonicalize(env!("CARGO_BIN_EXE_rivet")).unwrap();
    let start = Instant::now();
    let mut child = cmd.spawn().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let mut hwm_kib = 0u64;
    let status = loop {
        // The agent's own peak RSS, sampled while it runs (VmHWM only grows). Only once the
        // child runs rivet: between fork and exec it shares this test process's memory, whose
        // high-water mark (every image of the suite) it would report.
        let runs_rivet =
            std::fs::read_link(format!("/proc/{}/exe", child.id())).is_ok_and(|e| e == rivet_exe);
        if runs_rivet {
            if let Some(v) = crate::common::peak_rss_kib(child.id()) {
                hwm_kib = hwm_kib.max(v);
            }
        }
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if start.elapsed() > RUN_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let err = reader.join().unwrap_or_default();
    t.runs += 1;
    if hwm_kib / 1024 > t.peak_rss_mib {
        t.peak_rss_mib = hwm_kib / 1024;
        t.peak_rss_case = c.name.clone();
    }
    let Some(status) = status else {
        t.hangs.push(c.name.clone());
        return;
    };
    if status.code() == Some(101) || status.signal() == Some(6) || err.contains("panicked") {
        t.panics.push(format!("{}: {err}", c.name));
        return;
    }
    judge(c, &fx.target, status.success(), &err, t);
}

/// Judge a finished run: success ⇒ the disk equals the reference; failure ⇒ a message that
/// names the cause and no partition table left behind.
fn judge(c: &Case, target: &Path, ok: bool, err: &str, t: &mut Tally) {
    if ok {
        t.ok += 1;
        match &c.reference {
            Some(r) if equals(r, target) => {}
            _ => t.silent_corruptions.push(c.name.clone()),
        }
        if matches!(c.expect, Expect::Fail(_)) {
            t.unexpected.push(format!("{}: succeeded", c.name));
        }
    } else {
        t.failed += 1;
        if !no_table(target) {
            t.half_written.push(c.name.clone());
        }
        let lower = err.to_lowercase();
        match &c.expect {
            Expect::Ok => t
                .unexpected
                .push(format!("{}: failed: {}", c.name, err.trim())),
            Expect::Fail(needles) if !needles.iter().any(|n| lower.contains(n)) => {
                t.unexpected.push(format!(
                    "{}: error does not name the cause: {}",
                    c.name,
                    err.trim()
                ))
            }
            _ => {}
        }
        if err.trim().is_empty() {
            t.unexpected
                .push(format!("{}: failed without a message", c.name));
        }
    }
}

const CLASSES: &[&str] = &[
    "clean",
    "cuts",
    "cut_no_range",
    "stall",
    "burst_5xx",
    "too_many_5xx",
    "status_4xx",
    "truncated_for_good",
    "truncated_chunked",
    "content_length_more",
    "content_length_less",
    "rebuilt_object",
    "wrong_checksum",
    "too_large",
    "qcow2_cuts",
    "qcow2_malicious",
    "qcow2_flips",
    "compressed_damage",
];

fn env_or(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(s) => s
            .parse()
            .unwrap_or_else(|_| panic!("{name}={s:?} is not a whole number")),
        Err(_) => default,
    }
}

/// A run count from `name` (else `default`): fewer runs than fault classes would leave some
/// class untried, and zero would pass without testing anything.
fn runs_from(name: &str, default: u64) -> usize {
    let runs = env_or(name, default) as usize;
    assert!(
        runs >= CLASSES.len(),
        "{name}={runs}: the suite needs at least {} runs, one per fault class",
        CLASSES.len()
    );
    runs
}

/// The image too large for the disk, and the image compressed three ways.
fn inputs(fx: &Fx) -> (Vec<u8>, [(&'static str, Vec<u8>); 3]) {
    (
        vec![0x42u8; (TARGET_MIB + 8) as usize * MIB as usize],
        [
            ("gzip", compress("gzip", &fx.raw)),
            ("zstd", compress("zstd", &fx.raw)),
            ("xz", compress("xz", &fx.raw)),
        ],
    )
}

/// Print the figures and fail on any finding.
fn report(t: &Tally, seed: u64, runs: usize, t0: Instant) {
    let rss = t.peak_rss_mib;
    crate::figure!("faults_run {}", t.runs);
    crate::figure!("succeeded {} failed_cleanly {}", t.ok, t.failed);
    crate::figure!("silent_corruptions {}", t.silent_corruptions.len());
    crate::figure!("half_written_failures {}", t.half_written.len());
    crate::figure!("panics {}", t.panics.len());
    crate::figure!("hangs {}", t.hangs.len());
    crate::figure!("unexpected {}", t.unexpected.len());
    crate::figure!("peak_rss_mib {rss} ({})", t.peak_rss_case);
    crate::figure!("seed {seed} wall_s {}", t0.elapsed().as_secs());
    for (what, v) in [
        ("silent corruption", &t.silent_corruptions),
        ("half-written failure", &t.half_written),
        ("panic", &t.panics),
        ("hang", &t.hangs),
        ("unexpected", &t.unexpected),
    ] {
        for x in v {
            crate::figure!("{what}: {x}");
        }
    }
    assert!(t.runs == runs, "not every run was judged");
    assert!(
        t.silent_corruptions.is_empty()
            && t.half_written.is_empty()
            && t.panics.is_empty()
            && t.hangs.is_empty()
            && t.unexpected.is_empty(),
        "faults found (seed {seed}); see above"
    );
    assert!(rss > 0 && rss < 256, "peak RSS {rss} MiB");
}

/// Run `i` of the suite: the fault class `i` picks, its parameters drawn from `rng`.
fn make_case(
    i: usize,
    fx: &Fx,
    srv: &ImageServer,
    rng: &mut Rng,
    compressed: &[(&str, Vec<u8>)],
    big: &[u8],
) -> Case {
    let sum = |d: &[u8]| format!("sha256:{}", sha256(d));
    let len = fx.raw.len() as u64;
    let class = CLASSES[i % CLASSES.len()];
    let name = format!("{i:03}-{class}");
    srv.faults(|f| *f = Default::default());
    let mut data = fx.raw.clone();
    let mut reference = Some(fx.raw_path.clone());
    let mut checksum = None;
    let mut extra = Vec::new();
    let off = |rng: &mut Rng| 1 + rng.below(len - 2);
    let expect = match class {
        "clean" => Expect::Ok,
        "cuts" => {
            let n = 1 + rng.below(3);
            let mut cuts: Vec<u64> = (0..n).map(|_| off(rng)).collect();
            cuts.sort();
            srv.faults(|f| f.drop_at = cuts.into());
            Expect::Ok
        }
        "cut_no_range" => {
            let c = off(rng);
            srv.faults(|f| {
                f.no_range = true;
                f.drop_at = vec![c].into();
            });
            Expect::Ok
        }
        "stall" => {
            let c = off(rng);
            srv.faults(|f| f.stall = Some((c, Duration::from_millis(1600))));
            Expect::Ok
        }
        "burst_5xx" => {
            let codes = [500u16, 502, 503, 504];
            let n = 1 + rng.below(3);
            let s: Vec<u16> = (0..n).map(|_| codes[rng.below(4) as usize]).collect();
            srv.faults(|f| f.statuses = s.into());
            Expect::Ok
        }
        "too_many_5xx" => {
            srv.faults(|f| f.statuses = vec![503; 8].into());
            Expect::Fail(&["503", "attempts"])
        }
        "status_4xx" => {
            let code = [401u16, 403, 404, 410][rng.below(4) as usize];
            srv.faults(|f| f.statuses = vec![code].into());
            reference = None;
            Expect::Fail(&["http 4"])
        }
        "truncated_for_good" => {
            // The object ends short of its Content-Length on every request.
            let c = off(rng);
            srv.faults(|f| f.end_early_at = Some(c));
            Expect::Fail(&["attempts", "download", "incomplete", "short", "end"])
        }
        "truncated_chunked" => {
            // Without Content-Length a short body looks complete: the hash must catch it.
            let c = off(rng);
            srv.faults(|f| {
                f.chunked = true;
                f.end_early_at = Some(c);
            });
            Expect::Fail(&["checksum", "hash", "end"])
        }
        "content_length_more" => {
            let d = 1 + rng.below(65536) as i64;
            srv.faults(|f| f.content_length_delta = d);
            Expect::Either
        }
        "content_length_less" => {
            let d = -(1 + rng.below(65536) as i64);
            srv.faults(|f| f.content_length_delta = d);
            Expect::Either
        }
        "rebuilt_object" => {
            // Cut, then the object is rebuilt (new ETag, other content) before the resume:
            // the agent must start over on the new object, never splice the two. The
            // checksum is the new object's, so only a clean restart succeeds.
            let c = off(rng);
            let other = Arc::new(fx.other.clone());
            let next = srv.seen().len() + 1;
            srv.faults(|f| {
                f.drop_at = vec![c].into();
                f.swap_after = Some((next, other));
            });
            checksum = Some(sum(&fx.other));
            reference = Some(fx.other_path.clone());
            Expect::Ok
        }
        "wrong_checksum" => {
            let mut h = sha256(&data).into_bytes();
            let k = rng.below(h.len() as u64) as usize;
            h[k] = if h[k] == b'0' { b'1' } else { b'0' };
            checksum = Some(format!("sha256:{}", String::from_utf8(h).unwrap()));
            reference = None;
            Expect::Fail(&["checksum"])
        }
        "too_large" => {
            data = big.to_vec();
            reference = None;
            Expect::Fail(&["larger than"])
        }
        "qcow2_cuts" => {
            data = fx.qcow2.clone();
            let n = 1 + rng.below(2);
            let ql = data.len() as u64;
            let mut cuts: Vec<u64> = (0..n).map(|_| 1 + rng.below(ql - 2)).collect();
            cuts.sort();
            srv.faults(|f| f.drop_at = cuts.into());
            Expect::Ok
        }
        "qcow2_malicious" => {
            let (d, needles, kind) = malicious_qcow2(&fx.qcow2, &fx.qcow2_plain, rng);
            extra.push(format!("# {kind}"));
            data = d;
            reference = None;
            Expect::Fail(needles)
        }
        "qcow2_flips" => {
            // Random damage in the metadata (header, L1, refcounts, L2); the checksum is
            // the damaged file's, so only the decoder stands between it and the disk.
            let mut d = fx.qcow2.clone();
            let meta_end =
                (l2_entries(&d).iter().map(|(a, _)| *a).max().unwrap_or(4096) + 8).min(d.len());
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(meta_end as u64) as usize;
                d[at] ^= 1 << rng.below(8);
            }
            let p = fx.dir.join("flipped.qcow2");
            std::fs::write(&p, &d).unwrap();
            reference = qemu_reading(&p, &fx.dir.join("flipped.raw"));
            data = d;
            Expect::Either
        }
        "compressed_damage" => {
            let (kind, c) = &compressed[rng.below(3) as usize];
            let mut d = c.clone();
            if rng.below(2) == 0 {
                d.truncate(1 + rng.below(d.len() as u64 - 1) as usize);
            } else {
                let at = 64 + rng.below(d.len() as u64 - 128) as usize;
                d[at] ^= 0x5a;
            }
            extra.push(format!("# {kind}"));
            data = d;
            Expect::Either
        }
        _ => unreachable!(),
    };
    let name = match extra.iter().find(|e| e.starts_with('#')) {
        Some(k) => format!("{name}({})", &k[2..]),
        None => name,
    };
    extra.retain(|e| !e.starts_with('#'));
    let checksum = checksum.unwrap_or_else(|| sum(&data));
    let url = srv.add(&format!("img-{i}"), data);
    Case {
        name,
        url,
        checksum,
        reference,
        expect,
        extra,
    }
}

#[test]
fn seeded_faults_never_corrupt_panic_or_hang() {
    if skip() {
        return;
    }
    let seed = env_or("RIVET_FAULT_SEED", 0x5eed_2026);
    let runs = runs_from("RIVET_FAULT_RUNS", 216);
    let fx = fixture();
    let srv = ImageServer::start();
    let mut rng = Rng(seed | 1);
    let mut t = Tally::default();
    let (big, compressed) = inputs(&fx);
    let t0 = Instant::now();
    for i in 0..runs {
        let case = make_case(i, &fx, &srv, &mut rng, &compressed, &big);
        run_one(&fx, &case, &mut t);
    }
    report(&t, seed, runs, t0);
}

/// A qcow2 crafted to attack the parser (from a compressed and a plain one), and words its
/// refusal must use.
fn malicious_qcow2(
    comp: &[u8],
    plain: &[u8],
    rng: &mut Rng,
) -> (Vec<u8>, &'static [&'static str], &'static str) {
    let put = |d: &mut Vec<u8>, at: usize, v: u64| d[at..at + 8].copy_from_slice(&v.to_be_bytes());
    let cluster_bits = u32::from_be_bytes(plain[20..24].try_into().unwrap());
    let cluster = 1u64 << cluster_bits;
    match rng.below(8) {
        0 => {
            // L1 table beyond the end of the file.
            let mut d = plain.to_vec();
            let n = d.len() as u64;
            put(
                &mut d,
                40,
                (n + (rng.below(1 << 20) + 1) * cluster) & !(cluster - 1),
            );
            (d, &["outside", "beyond", "past"], "l1_outside")
        }
        1 => {
            // A huge L1 table (memory exhaustion attempt).
            let mut d = plain.to_vec();
            d[36..40].copy_from_slice(&(0x0400_0000u32 + rng.below(1 << 20) as u32).to_be_bytes());
            (d, &["l1", "too large", "memory", "outside"], "huge_l1")
        }
        2 => {
            // A backing file.
            let mut d = plain.to_vec();
            put(&mut d, 8, 512);
            d[16..20].copy_from_slice(&8u32.to_be_bytes());
            (d, &["backing"], "backing_file")
        }
        3 => {
            // An L2 entry pointing past the end of the file.
            let mut d = plain.to_vec();
            let n = d.len() as u64;
            let l2 = l2_entries(&d);
            let (at, _) = l2[rng.below(l2.len() as u64) as usize];
            let far = (n + (rng.below(1024) + 1) * cluster) & !(cluster - 1);
            put(&mut d, at, (1 << 63) | far);
            (d, &["outside", "beyond", "past"], "l2_entry_outside")
        }
        4 => {
            // Two guest clusters on the same host cluster.
            let mut d = plain.to_vec();
            let l2 = l2_entries(&d);
            let i = rng.below(l2.len() as u64 - 1) as usize;
            let (_, va) = l2[i];
            let (b, _) = l2[i + 1];
            put(&mut d, b, va);
            (d, &["twice", "overlap", "mapped"], "cluster_mapped_twice")
        }
        5 => {
            // Two L1 entries sharing one L2 table: every cluster it maps, mapped twice.
            let mut d = plain.to_vec();
            let l1 = be64(&d, 40) as usize;
            let first = be64(&d, l1);
            let l1_size = u32::from_be_bytes(d[36..40].try_into().unwrap());
            if l1_size < 2 {
                d[36..40].copy_from_slice(&2u32.to_be_bytes());
            }
            put(&mut d, l1 + 8, first);
            (
                d,
                &["share", "twice", "overlap", "mapped"],
                "l2_table_shared",
            )
        }
        6 => {
            // A compressed cluster whose descriptor runs past the end of the file.
            let mut d = comp.to_vec();
            let n = d.len() as u64;
            let l2: Vec<(usize, u64)> = l2_entries(&d)
                .into_iter()
                .filter(|(_, v)| v & (1 << 62) != 0)
                .collect();
            let (at, _) = l2[rng.below(l2.len() as u64) as usize];
            let x = 62 - (cluster_bits - 8);
            let sectors = (1u64 << (62 - x)) - 1;
            put(&mut d, at, (1 << 62) | (sectors << x) | (n - 512));
            (
                d,
                &["outside", "beyond", "past", "compressed"],
                "compressed_overrun",
            )
        }
        _ => {
            // The L1 table used as an L2 table: metadata read as guest data.
            let mut d = plain.to_vec();
            let l1 = be64(&d, 40);
            put(&mut d, l1 as usize, (1 << 63) | l1);
            (d, &["metadata", "twice", "overlap", "mapped"], "l1_as_l2")
        }
    }
}

/// The same faults through the agent API path, as the conductor drives it
/// (`standby.prepare_image` on a loop device named by the node's root device hint).
#[test]
fn seeded_faults_through_the_agent_api() {
    if skip() {
        return;
    }
    let seed = env_or("RIVET_FAULT_SEED", 0x0a9e_2026);
    let runs = runs_from("RIVET_FAULT_AGENT_RUNS", 2 * CLASSES.len() as u64);
    let fx = fixture();
    let srv = ImageServer::start();
    let disk = Loop::new(&fx.dir, "agent-disk.img", TARGET_MIB * MIB, 512);
    let (_ironic, agent, api) = agent_with_disk(
        &disk.dev,
        &fx.dir.join("state"),
        "ipa-image-download-connection-timeout=1 ipa-image-download-connection-retries=4 \
         ipa-image-download-connection-retry-interval=0.05 ipa-image-download-max-duration=30",
        &["--allow-loop-devices"],
    );
    let mut rng = Rng(seed | 1);
    let mut t = Tally::default();
    let (big, compressed) = inputs(&fx);
    let target = Path::new(&disk.dev).to_path_buf();
    let t0 = Instant::now();
    for i in 0..runs {
        let c = make_case(i, &fx, &srv, &mut rng, &compressed, &big);
        std::fs::write(&target, &fx.old_disk).unwrap();
        let hex = c.checksum.trim_start_matches("sha256:");
        let (s, v) = api.post(
            "standby.prepare_image",
            json!({"image_info": {"id": format!("f{i}"), "urls": [c.url],
                                  "os_hash_algo": "sha256", "os_hash_value": hex}}),
            false,
        );
        assert_eq!(s, 200, "{v}");
        let id = v["id"].as_str().unwrap().to_string();
        let start = Instant::now();
        let done = loop {
            let (_, v) = api.get(&api.url(&format!("/v1/commands/{id}"), ""));
            if v["command_status"] != "RUNNING" {
                break Some(v);
            }
            if start.elapsed() > RUN_LIMIT {
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        t.runs += 1;
        let Some(done) = done else {
            t.hangs.push(c.name.clone());
            break; // the agent is stuck on it: no later run can start
        };
        let err = done["command_error"]["details"]
            .as_str()
            .unwrap_or("")
            .to_string();
        if err.contains("panic") {
            t.panics.push(format!("{}: {err}", c.name));
            continue;
        }
        judge(
            &c,
            &target,
            done["command_status"] == "SUCCEEDED",
            &err,
            &mut t,
        );
    }
    // The agent's peak RSS over the whole suite.
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", agent.child.id())).unwrap_or_default();
    t.peak_rss_mib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        / 1024;
    t.peak_rss_case = "the agent, over all runs".into();
    let log = std::fs::read_to_string(&agent.log).unwrap_or_default();
    if log.contains("panicked") {
        t.panics.push("the agent's log shows a panic".into());
    }
    crate::figure!("agent API path:");
    report(&t, seed, runs, t0);
}
