//! `ipa-ntp-server`: one SNTP exchange (RFC 4330) per server, each bounded, to set the clock
//! before anything verifies a certificate. A node whose clock is years off would otherwise
//! refuse Ironic's certificate ("not yet valid") and never look itself up.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds from the NTP era (1900) to the Unix epoch.
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SntpError {
    #[error("the answer is {0} bytes, an NTP packet has 48")]
    Short(usize),
    #[error("the answer is not a server's (mode {0})")]
    Mode(u8),
    #[error("the server is not synchronised (stratum {0}, or a kiss-o'-death)")]
    Stratum(u8),
    #[error("the answer does not echo our request (a stale or forged packet)")]
    NotOurs,
    #[error("the server's time is not a time (zero transmit timestamp)")]
    NoTime,
}

/// The 48-byte client request: version 4, mode 3, our transmit time as the cookie.
pub fn request(cookie: u64) -> [u8; 48] {
    let mut p = [0u8; 48];
    p[0] = (4 << 3) | 3;
    p[40..48].copy_from_slice(&cookie.to_be_bytes());
    p
}

/// The server's transmit time (Unix seconds as f64) from an answer to the request carrying
/// `cookie`.
pub fn parse_answer(buf: &[u8], cookie: u64) -> Result<f64, SntpError> {
    if buf.len() < 48 {
        return Err(SntpError::Short(buf.len()));
    }
    let mode = buf[0] & 0x7;
    if mode != 4 {
        return Err(SntpError::Mode(mode));
    }
    let stratum = buf[1];
    let leap = buf[0] >> 6;
    if stratum == 0 || stratum > 15 || leap == 3 {
        return Err(SntpError::Stratum(stratum));
    }
    let at = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&buf[i..i + 8]);
        u64::from_be_bytes(b)
    };
    if at(24) != cookie {
        return Err(SntpError::NotOurs);
    }
    let tx = at(40);
    if tx == 0 {
        return Err(SntpError::NoTime);
    }
    let secs = (tx >> 32) as f64 - NTP_UNIX_OFFSET as f64;
    let frac = (tx & 0xffff_ffff) as f64 / 4_294_967_296.0;
    Ok(secs + frac)
}

/// The error of a host that answered "port unreachable": no NTP server there, and asking
/// again will not change that.
pub const REFUSED: &str = "refused: no NTP server at that address";

/// What one server said: its time when the answer arrived here (half the round trip added).
#[derive(Debug, Clone, Copy)]
pub struct Answer {
    pub server: SocketAddr,
    pub unix: f64,
    pub round_trip: Duration,
}

/// Ask `server` once, waiting up to `wait` for the answer.
pub async fn query(server: SocketAddr, wait: Duration) -> Result<Answer, String> {
    let bind: SocketAddr = match server.ip() {
        IpAddr::V4(_) => SocketAddr::from(([0u8; 4], 0)),
        IpAddr::V6(_) => SocketAddr::from(([0u16; 8], 0)),
    };
    let sock = tokio::net::UdpSocket::bind(bind)
        .await
        .map_err(|e| format!("socket: {e}"))?;
    sock.connect(server)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    // A random cookie, not our (possibly absurd) clock: all that matters is the echo.
    let cookie: u64 = rand::random::<u64>() | 1;
    let sent = std::time::Instant::now();
    sock.send(&request(cookie))
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut buf = [0u8; 512];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let n = tokio::time::timeout_at(deadline, sock.recv(&mut buf))
            .await
            .map_err(|_| format!("no answer within {:.1} s", wait.as_secs_f64()))?
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::ConnectionRefused {
                    REFUSED.to_string()
                } else {
                    format!("receive: {e}")
                }
            })?;
        match parse_answer(&buf[..n], cookie) {
            Ok(t) => {
                let rtt = sent.elapsed();
                return Ok(Answer {
                    server,
                    unix: t + rtt.as_secs_f64() / 2.0,
                    round_trip: rtt,
                });
            }
            // A packet that is not our answer is ignored; a refusal ends this server.
            Err(SntpError::NotOurs) => continue,
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Resolve `ipa-ntp-server`'s comma-separated names or addresses (port 123).
pub async fn servers(list: &str) -> (Vec<SocketAddr>, Vec<String>) {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for s in list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .take(8)
    {
        let host = s.trim_matches(['[', ']']);
        if let Ok(ip) = host.parse::<IpAddr>() {
            out.push(SocketAddr::new(ip, 123));
            continue;
        }
        let valid = host.len() <= 253
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
        if !valid {
            errors.push(format!("{s:?} is not a host name or address"));
            continue;
        }
        match tokio::time::timeout(Duration::from_secs(5), tokio::net::lookup_host((host, 123)))
            .await
        {
            Ok(Ok(addrs)) => out.extend(addrs.take(2)),
            Ok(Err(e)) => errors.push(format!("{s}: {e}")),
            Err(_) => errors.push(format!("{s}: name resolution timed out")),
        }
    }
    (out, errors)
}

/// Set the system clock.
pub fn set_clock(unix: f64) -> Result<(), String> {
    if !unix.is_finite() || unix < 0.0 {
        return Err(format!("{unix} is not a time"));
    }
    let ts = nix::sys::time::TimeSpec::new(
        unix.trunc() as i64,
        ((unix.fract()) * 1e9) as nix::libc::c_long,
    );
    nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, ts)
        .map_err(|e| format!("clock_settime: {e}"))
}

/// Now, as Unix seconds.
pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(cookie: u64, tx_unix: u64) -> [u8; 48] {
        let mut p = [0u8; 48];
        p[0] = (4 << 3) | 4;
        p[1] = 2;
        p[24..32].copy_from_slice(&cookie.to_be_bytes());
        let tx = ((tx_unix + NTP_UNIX_OFFSET) << 32) | 0x8000_0000;
        p[40..48].copy_from_slice(&tx.to_be_bytes());
        p
    }

    #[test]
    fn request_and_answer() {
        let r = request(42);
        assert_eq!(r[0], 0x23);
        assert_eq!(&r[40..48], &42u64.to_be_bytes());
        let t = parse_answer(&answer(42, 1_796_000_000), 42).unwrap();
        assert!((t - 1_796_000_000.5).abs() < 1e-6);
    }

    #[test]
    fn bad_answers() {
        assert_eq!(parse_answer(&[0u8; 47], 1), Err(SntpError::Short(47)));
        let mut a = answer(7, 1_700_000_000);
        assert_eq!(parse_answer(&a, 8), Err(SntpError::NotOurs));
        a[1] = 0;
        assert_eq!(parse_answer(&a, 7), Err(SntpError::Stratum(0)));
        a[1] = 2;
        a[0] = (3 << 6) | (4 << 3) | 4;
        assert_eq!(parse_answer(&a, 7), Err(SntpError::Stratum(2)));
        a[0] = (4 << 3) | 3;
        assert_eq!(parse_answer(&a, 7), Err(SntpError::Mode(3)));
        let mut z = answer(7, 0);
        z[40..48].copy_from_slice(&[0; 8]);
        assert_eq!(parse_answer(&z, 7), Err(SntpError::NoTime));
    }

    #[tokio::test]
    async fn a_local_server_is_asked_and_a_silent_one_times_out() {
        let srv = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = srv.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let mut buf = [0u8; 48];
            let (n, from) = srv.recv_from(&mut buf).unwrap();
            assert_eq!(n, 48);
            let cookie = u64::from_be_bytes(buf[40..48].try_into().unwrap());
            // Noise first (not our cookie), then the answer.
            srv.send_to(&answer(cookie ^ 2, 1), from).unwrap();
            srv.send_to(&answer(cookie, 1_800_000_000), from).unwrap();
        });
        let a = query(addr, Duration::from_secs(5)).await.unwrap();
        assert!((a.unix - 1_800_000_000.5).abs() < 1.0, "{}", a.unix);
        t.join().unwrap();
        // A port nothing listens on: refused at once, not waited for.
        let closed = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        let e = query(addr, Duration::from_secs(5)).await.unwrap_err();
        assert_eq!(e, REFUSED);
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let started = std::time::Instant::now();
        let e = query(silent.local_addr().unwrap(), Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(e.contains("no answer"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn server_lists() {
        let (s, e) = servers("192.0.2.1, [fd00::1],bad name!,").await;
        assert_eq!(
            s,
            vec![
                "192.0.2.1:123".parse().unwrap(),
                "[fd00::1]:123".parse().unwrap()
            ]
        );
        assert_eq!(e.len(), 1);
    }
}
