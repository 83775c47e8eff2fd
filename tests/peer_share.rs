//! Peer image sharing (`rivet install --peer-share`, the same code as `rivet-peer-share=1`):
//! agents writing the same image at once take verified pieces from each other and the image
//! server is the web seed behind a slow link. Every disk is compared with the image; the
//! server's bytes are counted; hostile peers (corrupt pieces, silence) change nothing on disk.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::free_port;
use common::imgserver::ImageServer;
use common::install_util::{install_command, sha256};
use rivet::image::share::{wire, Torrent};

const MIB: usize = 1 << 20;

fn image(len: usize, seed: u8) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9 ^ u32::from(seed);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// `rivet torrent` on `img` written in `dir`; returns the torrent's bytes.
fn make_torrent(dir: &Path, img: &[u8], piece_kib: u32) -> Vec<u8> {
    let p = dir.join("image.raw");
    std::fs::write(&p, img).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_rivet"))
        .args(["torrent", "--piece-kib", &piece_kib.to_string()])
        .arg(&p)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("info hash"), "{stdout}");
    std::fs::read(dir.join("image.raw.torrent")).unwrap()
}

/// An image with its torrent beside it on a fresh image server.
struct Served {
    d: tempfile::TempDir,
    img: Vec<u8>,
    sum: String,
    t: Torrent,
    srv: ImageServer,
    url: String,
}

/// `len` bytes of image `seed`, its torrent in pieces of `piece_kib`, both served.
fn served(len: usize, seed: u8, piece_kib: u32) -> Served {
    let d = tempfile::tempdir().unwrap();
    let img = image(len, seed);
    let sum = sha256(&img);
    let doc = make_torrent(d.path(), &img, piece_kib);
    let t = Torrent::parse(&doc).unwrap();
    let srv = ImageServer::start();
    let url = srv.add("disk.raw", img.clone());
    srv.add("disk.raw.torrent", doc);
    Served {
        d,
        img,
        sum,
        t,
        srv,
        url,
    }
}

/// `rivet install` arguments: sharing on, no discovery, `more`, and the peer at `peer`.
fn sharing(more: &[&str], peer: Option<u16>) -> Vec<String> {
    let mut a: Vec<String> = ["--peer-share", "--no-lsd"].map(String::from).to_vec();
    a.extend(more.iter().map(|s| s.to_string()));
    if let Some(p) = peer {
        a.extend(["--peer".into(), format!("127.0.0.1:{p}")]);
    }
    a
}

fn target(dir: &Path, name: &str, len: usize) -> String {
    let p = dir.join(name);
    std::fs::write(&p, vec![0u8; len]).unwrap();
    p.to_string_lossy().into_owned()
}

fn install(url: &str, sum: &str, dev: &str, extra: &[String]) -> Command {
    let checksum = format!("sha256:{sum}");
    let mut c = install_command(
        url,
        &checksum,
        dev,
        &[
            "--retry-interval",
            "0.2",
            "--max-duration",
            "120",
            "--disk-format",
            "raw",
        ],
    );
    c.args(extra);
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    c
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "install failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The figures of the `shared:` line: origin, peers, sent, peers seen, bad, banned.
fn shared(stdout: &str) -> [u64; 6] {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("shared:"))
        .unwrap_or_else(|| panic!("no shared line in {stdout}"));
    let n: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    [n[0], n[1], n[2], n[3], n[4], n[5]]
}

fn same(dev: &str, img: &[u8]) {
    let d = std::fs::read(dev).unwrap();
    assert!(d[..img.len()] == *img, "{dev} differs from the image");
}

#[test]
fn agents_deploying_together_take_one_copy_from_the_server() {
    let Served {
        d,
        img,
        sum,
        srv,
        url,
        ..
    } = served(8 * MIB, 1, 64);
    // 4 MiB/s: one node takes 2 s; four from the server alone would take 8.
    srv.faults(|f| f.link_rate = Some(4 * MIB as u64));
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let started = Instant::now();
    let children: Vec<_> = (0..4)
        .map(|k| {
            let dev = target(d.path(), &format!("disk{k}"), 9 * MIB);
            let mut extra = vec![
                "--peer-share".to_string(),
                "--no-lsd".into(),
                "--peer-share-port".into(),
                ports[k].to_string(),
            ];
            for p in &ports[..k] {
                extra.push("--peer".into());
                extra.push(format!("127.0.0.1:{p}"));
            }
            (
                dev.clone(),
                install(&url, &sum, &dev, &extra).spawn().unwrap(),
            )
        })
        .collect();
    let mut from_peers = 0;
    for (dev, c) in children {
        let out = ok(&c.wait_with_output().unwrap());
        same(&dev, &img);
        let [origin, peers, _sent, _seen, bad, banned] = shared(&out);
        assert_eq!((bad, banned), (0, 0), "{out}");
        assert!(origin + peers >= img.len() as u64, "{out}");
        from_peers += peers;
    }
    let elapsed = started.elapsed();
    let sent = srv.sent_bytes();
    eprintln!(
        "4 agents: {:.1} s, the server sent {:.2} copies of the image, {:.2} copies went between peers",
        elapsed.as_secs_f64(),
        sent as f64 / img.len() as f64,
        from_peers as f64 / img.len() as f64
    );
    assert!(
        sent <= 2 * img.len() as u64,
        "the server sent {sent} bytes for four agents"
    );
    assert!(
        from_peers >= img.len() as u64,
        "peers gave {from_peers} bytes"
    );
}

#[derive(Clone, Copy, PartialEq)]
enum Hostile {
    /// Every block asked for, answered with wrong bytes.
    Corrupt,
    /// Requests never answered.
    Silent,
    /// The first block of the first piece asked for, sent again and again (a peer keeping a
    /// piece "in progress" for ever).
    Trickle,
}

/// One length-prefixed peer message (its id and payload), None when the connection ends.
fn read_message(s: &mut impl Read) -> Option<Vec<u8>> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).ok()?;
    let mut m = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut m).ok()?;
    Some(m)
}

/// A peer speaking the protocol: every piece offered; answers as `how` says.
fn hostile_peer(t: &Torrent, how: Hostile) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let t = t.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            let t = t.clone();
            std::thread::spawn(move || {
                let mut hs = [0u8; 68];
                if s.read_exact(&mut hs).is_err() {
                    return;
                }
                let _ = s.write_all(&wire::handshake(&t.info_hash, &[7u8; 20]));
                let all = wire::bitfield(t.piece_count(), |_| true);
                let _ = s.write_all(&wire::encode(&wire::Message::Bitfield(all)));
                let _ = s.write_all(&wire::encode(&wire::Message::Unchoke));
                while let Some(m) = read_message(&mut s) {
                    if m.first() == Some(&6) && how == Hostile::Trickle {
                        let idx = u32::from_be_bytes(m[1..5].try_into().unwrap());
                        let mut w = s.try_clone().unwrap();
                        std::thread::spawn(move || loop {
                            let piece = wire::Message::Piece {
                                index: idx,
                                begin: 0,
                                data: bytes::Bytes::from(vec![0u8; wire::BLOCK as usize]),
                            };
                            if w.write_all(&wire::encode(&piece)).is_err() {
                                return;
                            }
                            std::thread::sleep(Duration::from_millis(300));
                        });
                        // The rest of the requests go unanswered.
                        while read_message(&mut s).is_some() {}
                        return;
                    }
                    if m.first() == Some(&6) && how == Hostile::Corrupt {
                        let idx = u32::from_be_bytes(m[1..5].try_into().unwrap());
                        let begin = u32::from_be_bytes(m[5..9].try_into().unwrap());
                        let n = u32::from_be_bytes(m[9..13].try_into().unwrap());
                        let data = bytes::Bytes::from(vec![0xA5u8; n as usize]);
                        let piece = wire::Message::Piece {
                            index: idx,
                            begin,
                            data,
                        };
                        if s.write_all(&wire::encode(&piece)).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    port
}

#[test]
fn a_peer_sending_corrupt_pieces_is_banned_and_nothing_wrong_is_written() {
    let Served {
        d,
        img,
        sum,
        t,
        url,
        // Bound, not dropped: it serves until the test ends.
        srv: _srv,
        ..
    } = served(2 * MIB, 2, 64);
    let rogue = hostile_peer(&t, Hostile::Corrupt);
    let dev = target(d.path(), "disk", 3 * MIB);
    let extra = sharing(&[], Some(rogue));
    let out = ok(&install(&url, &sum, &dev, &extra).output().unwrap());
    same(&dev, &img);
    let [origin, peers, _, seen, bad, banned] = shared(&out);
    assert_eq!((seen, bad, banned, peers), (1, 1, 1, 0), "{out}");
    assert_eq!(origin, img.len() as u64, "{out}");
}

#[test]
fn a_peer_that_stalls_loses_its_pieces_to_the_server() {
    for how in [Hostile::Silent, Hostile::Trickle] {
        stalling_peer(how);
    }
}

fn stalling_peer(how: Hostile) {
    let Served {
        d,
        img,
        sum,
        t,
        url,
        // Bound, not dropped: it serves until the test ends.
        srv: _srv,
        ..
    } = served(MIB, 3, 64);
    let silent = hostile_peer(&t, how);
    let dev = target(d.path(), "disk", 2 * MIB);
    let extra = sharing(&["--peer-stall", "1"], Some(silent));
    let started = Instant::now();
    let out = ok(&install(&url, &sum, &dev, &extra).output().unwrap());
    same(&dev, &img);
    let [origin, peers, ..] = shared(&out);
    assert_eq!((origin, peers), (img.len() as u64, 0), "{out}");
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[test]
fn a_torrent_for_another_image_fails_before_anything_is_written() {
    let d = tempfile::tempdir().unwrap();
    let img = image(MIB, 4);
    let sum = sha256(&img);
    let srv = ImageServer::start();
    let url = srv.add("disk.raw", img.clone());
    // Same size, other bytes.
    srv.add(
        "disk.raw.torrent",
        make_torrent(d.path(), &image(MIB, 5), 64),
    );
    let dev = target(d.path(), "disk", 2 * MIB);
    let extra = sharing(&[], None);
    let out = install(&url, &sum, &dev, &extra).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not match the torrent"), "{err}");
    assert!(std::fs::read(&dev).unwrap().iter().all(|b| *b == 0));
    // Another size.
    let url2 = srv.add("other.raw", img.clone());
    srv.add(
        "other.raw.torrent",
        make_torrent(d.path(), &image(MIB / 2, 4), 64),
    );
    let out = install(&url2, &sum, &dev, &extra).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("is for another image"),
        "{err}"
    );
    assert!(std::fs::read(&dev).unwrap().iter().all(|b| *b == 0));
    // Not a torrent at all.
    let url3 = srv.add("junk.raw", img.clone());
    srv.add("junk.raw.torrent", b"<html>not found</html>".to_vec());
    let out = install(&url3, &sum, &dev, &extra).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("bencoding"), "{err}");
}

#[test]
fn without_a_torrent_the_image_comes_from_its_server_as_before() {
    let d = tempfile::tempdir().unwrap();
    let img = image(MIB, 6);
    let sum = sha256(&img);
    let srv = ImageServer::start();
    let url = srv.add("disk.raw", img.clone());
    let dev = target(d.path(), "disk", 2 * MIB);
    let extra = sharing(&[], None);
    let out = ok(&install(&url, &sum, &dev, &extra).output().unwrap());
    same(&dev, &img);
    assert!(!out.contains("shared:"), "{out}");
    let seen = srv.seen();
    let paths: Vec<(&str, Option<&str>, u16)> = seen
        .iter()
        .map(|s| (s.path.as_str(), s.range.as_deref(), s.status))
        .collect();
    assert_eq!(
        paths,
        vec![("/disk.raw.torrent", None, 404), ("/disk.raw", None, 200)]
    );
    // Sharing off: not even the torrent is asked for.
    let srv2 = ImageServer::start();
    let url = srv2.add("disk.raw", img.clone());
    ok(&install(&url, &sum, &dev, &[]).output().unwrap());
    let seen: Vec<String> = srv2.seen().iter().map(|s| s.path.clone()).collect();
    assert_eq!(seen, vec!["/disk.raw".to_string()]);
}

#[test]
fn a_node_ahead_serves_a_raw_image_from_its_disk() {
    // The second agent starts when the first holds only the last 16 MiB of pieces in memory:
    // what it gets from the first beyond that was read back from the first's disk.
    let Served {
        d,
        img,
        sum,
        srv,
        url,
        ..
    } = served(32 * MIB, 7, 256);
    srv.faults(|f| f.link_rate = Some(4 * MIB as u64));
    let port = free_port();
    let first = target(d.path(), "first", 33 * MIB);
    let extra = sharing(&["--peer-share-port", &port.to_string()], None);
    let a = install(&url, &sum, &first, &extra).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(5500));
    let second = target(d.path(), "second", 33 * MIB);
    let extra = sharing(&[], Some(port));
    let b = ok(&install(&url, &sum, &second, &extra).output().unwrap());
    let a = ok(&a.wait_with_output().unwrap());
    same(&first, &img);
    same(&second, &img);
    let [_, from_peers, ..] = shared(&b);
    let sent = shared(&a)[2];
    eprintln!("the second agent took {from_peers} bytes from the first, which sent {sent}");
    assert!(
        from_peers > 17 * MIB as u64,
        "the second agent took {from_peers} bytes from the first (its memory holds 16 MiB)\n{a}\n{b}"
    );
    assert!(sent >= from_peers, "{a}");
}

/// A BitTorrent client downloading from the agent, as aria2c does: requests in bursts of many
/// blocks (8 pieces' worth, 128 requests outstanding). Returns the blocks it received, each
/// checked against the image, and whether one differed.
fn greedy_downloader(t: &Torrent, img: Vec<u8>) -> (u16, std::thread::JoinHandle<(usize, bool)>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let t = t.clone();
    let h = std::thread::spawn(move || {
        let Ok((mut s, _)) = l.accept() else {
            return (0, false);
        };
        let mut hs = [0u8; 68];
        if s.read_exact(&mut hs).is_err() {
            return (0, false);
        }
        // Not an agent's id: a plain client.
        let _ = s.write_all(&wire::handshake(&t.info_hash, &[9u8; 20]));
        let _ = s.write_all(&wire::encode(&wire::Message::Interested));
        let plen = t.piece_length as usize;
        let (mut announced, mut asked) = (Vec::new(), 0usize);
        let (mut got, mut wrong) = (0usize, false);
        let mut w = s.try_clone().unwrap();
        while let Some(m) = read_message(&mut s) {
            match m.first() {
                Some(4) => announced.push(u32::from_be_bytes(m[1..5].try_into().unwrap())),
                Some(7) => {
                    let idx = u32::from_be_bytes(m[1..5].try_into().unwrap()) as usize;
                    let begin = u32::from_be_bytes(m[5..9].try_into().unwrap()) as usize;
                    let at = idx * plen + begin;
                    wrong |= img.get(at..at + m.len() - 9) != Some(&m[9..]);
                    got += 1;
                }
                _ => {}
            }
            if announced.len() - asked >= 8 {
                for &i in &announced[asked..] {
                    for b in 0..t.piece_len(i).div_ceil(wire::BLOCK) {
                        let r = wire::Message::Request {
                            index: i,
                            begin: b * wire::BLOCK,
                            length: wire::BLOCK.min(t.piece_len(i) - b * wire::BLOCK),
                        };
                        let _ = w.write_all(&wire::encode(&r));
                    }
                }
                asked = announced.len();
            }
        }
        (got, wrong)
    });
    (port, h)
}

#[test]
fn a_client_keeping_many_requests_outstanding_is_served_at_the_upload_limit() {
    // The client asks faster than the 1 MiB/s upload limit lets the agent answer: its
    // requests wait (it is not dropped for them), and the limit holds.
    let Served {
        d,
        img,
        sum,
        t,
        srv,
        url,
    } = served(8 * MIB, 9, 256);
    srv.faults(|f| f.link_rate = Some(2 * MIB as u64));
    let (port, client) = greedy_downloader(&t, img.clone());
    let dev = target(d.path(), "disk", 9 * MIB);
    let extra = sharing(&["--peer-share-upload", "1"], Some(port));
    let started = Instant::now();
    let out = ok(&install(&url, &sum, &dev, &extra).output().unwrap());
    let secs = started.elapsed().as_secs_f64();
    same(&dev, &img);
    let (got, wrong) = client.join().unwrap();
    eprintln!("the client got {got} blocks in {secs:.1} s");
    assert!(!wrong, "a block differed from the image");
    // About 4 s of deploy, requests from its second second on: some 200 blocks at 1 MiB/s.
    // An agent dropping the client for its outstanding requests serves a few dozen.
    assert!(
        got >= 100,
        "the client got {got} blocks in {secs:.1} s\n{out}"
    );
    // What the agent counts as sent is what the client read (and at most the block being
    // sent when the deploy ended); the limit's bucket holds a quarter second.
    let sent = shared(&out)[2];
    let read = (got * wire::BLOCK as usize) as u64;
    assert!(
        (read..=read + u64::from(wire::BLOCK)).contains(&sent),
        "sent {sent}, read {read}\n{out}"
    );
    let allowed = (secs + 0.25) * MIB as f64;
    assert!(
        (sent as f64) <= allowed,
        "{sent} bytes sent in {secs:.1} s at 1 MiB/s"
    );
}
