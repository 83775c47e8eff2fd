//! Test helpers: a scriptable mock of Ironic's ramdisk API on 127.0.0.1, the real `rivet`
//! binary run as a child process (killed on drop), and an HTTPS client that trusts exactly the
//! certificate the agent advertised, as the conductor does.
#![allow(dead_code, clippy::unwrap_used)]

pub mod imgserver;
pub mod install_util;
pub mod loopdev;

/// Print a figure (or a skip notice) past the test harness's output capture: the test
/// command's log then shows it for passing tests too, not only for failing ones.
#[macro_export]
macro_rules! figure {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

/// A missing precondition (root, a tool, a namespace): in the test command
/// (`RIVET_REQUIRE_ALL=1`) and in CI (`CI=true`) the test fails, so a green run means the test
/// ran; anywhere else it is skipped with a line printed past the output capture. Returns
/// `true` when the caller should return.
pub fn skipped(reason: &str) -> bool {
    let required = std::env::var("RIVET_REQUIRE_ALL").is_ok_and(|v| v == "1")
        || std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
    assert!(
        !required,
        "precondition missing where every test must run: {reason}"
    );
    figure!("SKIPPED: {reason}");
    true
}

use std::collections::VecDeque;
use std::io::Read;
use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

pub const MAC: &str = "52:54:00:12:34:56";
pub const NODE: &str = "1be26c0b-03f2-4d2e-ae87-c02d7f33c123";

#[derive(Debug, Clone)]
pub struct Seen {
    pub at: Instant,
    pub path: String,
    pub version: Option<String>,
    pub request_id: Option<String>,
    pub body: Value,
}

#[derive(Default)]
pub struct MockState {
    pub lookup_script: VecDeque<(u16, Value)>,
    pub lookup_default: Option<(u16, Value)>,
    pub heartbeat_script: VecDeque<(u16, Value)>,
    /// Answers to `POST /v1/continue_inspection`, in order; then 202 `{"uuid": NODE}`.
    pub inspection_script: VecDeque<(u16, Value)>,
    pub lookups: Vec<Seen>,
    pub heartbeats: Vec<Seen>,
    pub inspections: Vec<Seen>,
}

pub struct MockIronic {
    pub url: String,
    pub state: Arc<Mutex<MockState>>,
    _rt: tokio::runtime::Runtime,
}

pub fn token() -> String {
    "tokentokentokentokentokentokentokentok-_123".to_string()
}

pub fn lookup_ok(token_value: &str, heartbeat_timeout: u64) -> (u16, Value) {
    (
        200,
        json!({
            "node": {"uuid": NODE, "properties": {"cpu_arch": "x86_64"}, "instance_info": {},
                     "driver_internal_info": {}, "links": []},
            "config": {"heartbeat_timeout": heartbeat_timeout, "agent_token": token_value,
                       "agent_token_required": true, "agent_md5_checksum_enable": true,
                       "permitted_image_formats": ["raw", "gpt", "qcow2", "iso"],
                       "tls_min_version": "1.3", "metrics": {"backend": "noop"}}
        }),
    )
}

pub fn ironic_error(status: u16, msg: &str) -> (u16, Value) {
    let inner = json!({"faultcode": "Client", "faultstring": msg, "debuginfo": null}).to_string();
    (status, json!({ "error_message": inner }))
}

impl MockIronic {
    pub fn start(lookups: Vec<(u16, Value)>, default: (u16, Value)) -> MockIronic {
        Self::start_with(lookups, default, None)
    }

    /// An HTTPS mock with a self-signed certificate for 127.0.0.1; returns it with its PEM.
    pub fn start_tls(lookups: Vec<(u16, Value)>, default: (u16, Value)) -> (MockIronic, String) {
        let (cert, key) = rivet::tls::generate(
            "127.0.0.1".parse().unwrap(),
            rivet::config::Curve::P256,
            Duration::from_secs(60),
            "mock-ironic",
        )
        .unwrap();
        let certs: Vec<_> = rustls_pki_types::CertificateDer::pem_slice_iter(cert.as_bytes())
            .map(|c| c.unwrap())
            .collect();
        let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
        let cfg = rustls::ServerConfig::builder_with_provider(rivet::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let mock = Self::start_with(
            lookups,
            default,
            Some(tokio_rustls::TlsAcceptor::from(Arc::new(cfg))),
        );
        (mock, cert)
    }

    fn start_with(
        lookups: Vec<(u16, Value)>,
        default: (u16, Value),
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> MockIronic {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let state = Arc::new(Mutex::new(MockState {
            lookup_script: lookups.into(),
            lookup_default: Some(default),
            ..Default::default()
        }));
        let listener = StdListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://{}", listener.local_addr().unwrap());
        let st = state.clone();
        rt.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let st = st.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let st = st.clone();
                        async move { Ok::<_, std::convert::Infallible>(answer(req, st).await) }
                    });
                    match tls {
                        Some(acc) => {
                            if let Ok(s) = acc.accept(stream).await {
                                let _ = http1::Builder::new()
                                    .serve_connection(TokioIo::new(s), svc)
                                    .await;
                            }
                        }
                        None => {
                            let _ = http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), svc)
                                .await;
                        }
                    }
                });
            }
        });
        MockIronic {
            url,
            state,
            _rt: rt,
        }
    }

    pub fn heartbeats(&self) -> Vec<Seen> {
        self.state.lock().unwrap().heartbeats.clone()
    }

    pub fn lookups(&self) -> Vec<Seen> {
        self.state.lock().unwrap().lookups.clone()
    }

    pub fn inspections(&self) -> Vec<Seen> {
        self.state.lock().unwrap().inspections.clone()
    }

    pub fn script_inspection(&self, answers: Vec<(u16, Value)>) {
        self.state.lock().unwrap().inspection_script = answers.into();
    }

    /// Wait until `n` inspection posts arrived.
    pub fn wait_inspections(&self, n: usize, timeout: Duration) -> Vec<Seen> {
        let end = Instant::now() + timeout;
        loop {
            let h = self.inspections();
            if h.len() >= n {
                return h;
            }
            assert!(
                Instant::now() < end,
                "only {} of {n} inspection posts within {timeout:?}",
                h.len()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn wait_heartbeats(&self, n: usize, timeout: Duration) -> Vec<Seen> {
        let end = Instant::now() + timeout;
        loop {
            let h = self.heartbeats();
            if h.len() >= n {
                return h;
            }
            assert!(
                Instant::now() < end,
                "only {} of {n} heartbeats within {timeout:?}",
                h.len()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

async fn answer(
    req: Request<hyper::body::Incoming>,
    st: Arc<Mutex<MockState>>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let pq = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let hdr = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let version = hdr("X-OpenStack-Ironic-API-Version");
    let request_id = hdr("X-OpenStack-Request-ID");
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let seen = Seen {
        at: Instant::now(),
        path: pq,
        version,
        request_id,
        body,
    };
    let (code, reply) = {
        let mut s = st.lock().unwrap();
        if path == "/" {
            (
                200,
                json!({"default_version": {"id": "v1", "version": "1.115", "min_version": "1.1"}}),
            )
        } else if path == "/v1/lookup" {
            s.lookups.push(seen);
            match s.lookup_script.pop_front() {
                Some(r) => r,
                None => s.lookup_default.clone().unwrap_or((404, json!({}))),
            }
        } else if path == "/v1/continue_inspection" {
            s.inspections.push(seen);
            s.inspection_script
                .pop_front()
                .unwrap_or((202, json!({ "uuid": NODE })))
        } else if path.starts_with("/v1/heartbeat/") {
            s.heartbeats.push(seen);
            s.heartbeat_script.pop_front().unwrap_or((202, Value::Null))
        } else {
            (404, json!({}))
        }
    };
    let bytes = if reply.is_null() {
        Vec::new()
    } else {
        serde_json::to_vec(&reply).unwrap()
    };
    Response::builder()
        .status(code)
        .header("Content-Type", "application/json")
        .body(Full::new(Bytes::from(bytes)))
        .unwrap()
}

/// A process's peak resident memory so far (`VmHWM`), in KiB; `None` once it is gone.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// A port free now, below the kernel's range for outgoing connections: a port picked by
/// binding port 0 is in that range, and an outgoing connection of anything running beside the
/// tests could take it before the agent binds it (seen once in CI: "Address already in use").
pub fn free_port() -> u16 {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    if low > 11000 {
        for _ in 0..200 {
            let p = 10000 + rand::random::<u16>() % (low - 10000);
            if StdListener::bind(("127.0.0.1", p)).is_ok() {
                return p;
            }
        }
    }
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// How to start the agent besides its command line.
#[derive(Default)]
pub struct Launch {
    /// Run inside this network namespace (`ip netns exec`).
    pub netns: Option<String>,
    pub env: Vec<(String, String)>,
    /// Run under `prlimit` with this descriptor limit (soft and hard).
    pub nofile: Option<u64>,
}

/// The agent binary the tests run: this build's, or `RIVET_AGENT_BIN` (the test command runs
/// the panic test again with the static release binary, whose panic strategy is the one a
/// node gets).
pub fn agent_binary() -> PathBuf {
    std::env::var_os("RIVET_AGENT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_rivet")))
}

/// The real binary, run as a child process.
pub struct Agent {
    pub child: Child,
    pub port: u16,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Agent {
    /// Start `rivet` with the given kernel command line (BOOTIF and listen/advertise settings
    /// for 127.0.0.1 are added) and state directory.
    pub fn spawn(cmdline: &str, state_dir: &Path, extra: &[&str]) -> Agent {
        Self::spawn_raw(
            &format!("ipa-lookup-interval=0.1 {cmdline}"),
            state_dir,
            extra,
        )
    }

    /// Like `spawn`, without the default lookup interval.
    pub fn spawn_raw(cmdline: &str, state_dir: &Path, extra: &[&str]) -> Agent {
        Self::spawn_logging(
            cmdline,
            state_dir,
            extra,
            "debug,hyper=info,rustls=info,reqwest=info,h2=info",
        )
    }

    /// Like `spawn_raw`, logging with the given `RUST_LOG` filter (tests that measure speed
    /// run the agent at the production level: debug logs a line for every API request).
    pub fn spawn_logging(cmdline: &str, state_dir: &Path, extra: &[&str], filter: &str) -> Agent {
        Self::spawn_full(cmdline, state_dir, extra, filter, &Launch::default())
    }

    /// Like `spawn_raw`, with a network namespace or extra environment.
    pub fn spawn_launch(cmdline: &str, state_dir: &Path, extra: &[&str], launch: &Launch) -> Agent {
        Self::spawn_full(
            cmdline,
            state_dir,
            extra,
            "debug,hyper=info,rustls=info,reqwest=info,h2=info",
            launch,
        )
    }

    fn spawn_full(
        cmdline: &str,
        state_dir: &Path,
        extra: &[&str],
        filter: &str,
        launch: &Launch,
    ) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let cmdline_file = dir.path().join("cmdline");
        std::fs::write(
            &cmdline_file,
            format!(
                "BOOTIF=01-{} ipa-listen-host=127.0.0.1 ipa-listen-port={port} ipa-advertise-host=127.0.0.1 \
                 ipa-advertise-port={port} {cmdline}\n",
                MAC.replace(':', "-")
            ),
        )
        .unwrap();
        let log = dir.path().join("agent.log");
        let bin = agent_binary();
        // `ip netns exec` and `prlimit` exec what follows: the child's pid is the agent's.
        let mut argv: Vec<std::ffi::OsString> = Vec::new();
        if let Some(ns) = &launch.netns {
            argv.extend(["ip", "netns", "exec", ns].map(Into::into));
        }
        if let Some(n) = launch.nofile {
            argv.extend([
                "prlimit".into(),
                format!("--nofile={n}:{n}").into(),
                "--".into(),
            ]);
        }
        argv.push(bin.into_os_string());
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]);
        for (k, v) in &launch.env {
            cmd.env(k, v);
        }
        let child = cmd
            .arg("--cmdline-file")
            .arg(&cmdline_file)
            .arg("--state-dir")
            .arg(state_dir)
            .arg("--simulate-power")
            .arg("--test-extension")
            .args(extra)
            .env("RUST_LOG", filter)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Agent {
            child,
            port,
            log,
            _dir: dir,
        }
    }

    pub fn log_text(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let end = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                Instant::now() < end,
                "agent still running after {timeout:?}; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("---- agent log ----\n{}", self.log_text());
        }
    }
}

/// An HTTPS client that trusts only `ca_pem` (the agent's advertised certificate), or plain
/// HTTP when `None`.
pub fn agent_client(ca_pem: Option<&str>) -> reqwest::blocking::Client {
    let b = reqwest::blocking::Client::builder().timeout(Duration::from_secs(60));
    let b = match ca_pem {
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()) {
                roots.add(c.unwrap()).unwrap();
            }
            let cfg = rustls::ClientConfig::builder_with_provider(rivet::tls::provider())
                .with_protocol_versions(&[&rustls::version::TLS13])
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
            b.use_preconfigured_tls(cfg)
        }
        // reqwest needs a TLS config even for plain HTTP when built without a default provider.
        None => b.use_preconfigured_tls(
            rustls::ClientConfig::builder_with_provider(rivet::tls::provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
        ),
    };
    b.build().unwrap()
}

use rustls_pki_types::pem::PemObject;

/// The agent's command API as the conductor calls it.
pub struct Api {
    pub client: reqwest::blocking::Client,
    pub base: String,
    pub token: String,
}

impl Api {
    /// The API of `agent` over verified TLS (its advertised certificate `ca`), with the token.
    pub fn over_tls(agent: &Agent, ca: &str) -> Api {
        Api {
            client: agent_client(Some(ca)),
            base: format!("https://127.0.0.1:{}", agent.port),
            token: token(),
        }
    }

    /// The API of `agent` over plain HTTP (`--no-auto-tls`), with the token.
    pub fn plain(agent: &Agent) -> Api {
        Api {
            client: agent_client(None),
            base: format!("http://127.0.0.1:{}", agent.port),
            token: token(),
        }
    }

    pub fn url(&self, path: &str, query: &str) -> String {
        let sep = if query.is_empty() { "" } else { "&" };
        format!("{}{path}?agent_token={}{sep}{query}", self.base, self.token)
    }
    pub fn post(&self, name: &str, params: Value, wait: bool) -> (u16, Value) {
        let r = self
            .client
            .post(self.url("/v1/commands/", &format!("wait={wait}")))
            .json(&json!({"name": name, "params": params}))
            .send()
            .unwrap();
        (r.status().as_u16(), r.json().unwrap())
    }
    pub fn get(&self, url: &str) -> (u16, Value) {
        let r = self.client.get(url).send().unwrap();
        (r.status().as_u16(), r.json().unwrap())
    }
}

/// A lookup answer whose node's root device hint names `dev`.
pub fn lookup_with_disk(dev: &str, token_value: &str) -> (u16, Value) {
    let (code, mut lookup) = lookup_ok(token_value, 300);
    lookup["node"]["properties"]["root_device"] = json!({ "name": dev });
    (code, lookup)
}

/// An agent (extra kernel parameters and flags as given) for a node whose root device hint
/// names `dev`, its first heartbeat seen, and a client for its API over verified TLS.
pub fn agent_with_disk(
    dev: &str,
    state: &Path,
    cmdline_extra: &str,
    args: &[&str],
) -> (MockIronic, Agent, Api) {
    let ironic = MockIronic::start(vec![], lookup_with_disk(dev, &token()));
    let agent = Agent::spawn(
        &format!("ipa-api-url={} {cmdline_extra}", ironic.url),
        state,
        args,
    );
    let hb = ironic.wait_heartbeats(1, Duration::from_secs(20));
    let ca = hb[0].body["agent_verify_ca"].as_str().unwrap().to_string();
    let api = Api::over_tls(&agent, &ca);
    (ironic, agent, api)
}

/// `image_info` for a raw image served at `url`.
pub fn raw_image_params(url: &str, data: &[u8], id: &str) -> Value {
    let sha = rivet::image::verify::digest_hex(rivet::image::verify::Algo::Sha256, data);
    json!({"image_info": {"id": id, "urls": [url], "disk_format": "raw",
                          "os_hash_algo": "sha256", "os_hash_value": sha}})
}

/// Wait for an async command's end, as the conductor polls.
pub fn wait_done(api: &Api, id: &str) -> Value {
    let (s, v) = api.get(&api.url(&format!("/v1/commands/{id}"), "wait=true"));
    assert_eq!(s, 200, "{v}");
    v
}
