//! One typed configuration built from the kernel command line, the virtual-media parameters file
//! and command-line flags, in that order of precedence (flags win, as an operator expects of a
//! flag; vmedia parameters override the kernel command line, as in IPA).

pub mod cmdline;
pub mod params;
pub mod steps_d;
pub mod vmedia;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use cmdline::{
    normalize_bootif, parse_api_urls, parse_api_version, parse_bool, parse_secs, parse_u16,
    parse_u64, parse_urls,
};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid value {value:?} for {key}: {reason}")]
    Invalid {
        key: String,
        value: String,
        reason: String,
    },
    #[error(
        "nothing to report to: set ipa-api-url (deploy, clean, fast-track) and/or \
         ipa-inspection-callback-url (inspection) on the kernel command line, or --api-url"
    )]
    NoApiUrl,
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("virtual media: {0}")]
    Vmedia(String),
}

impl ConfigError {
    pub fn invalid(key: &str, value: &str, reason: &str) -> Self {
        ConfigError::Invalid {
            key: key.to_string(),
            value: value.to_string(),
            reason: reason.to_string(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    V1_2,
    V1_3,
}

impl TlsVersion {
    pub fn parse(key: &str, v: &str) -> Result<Self, ConfigError> {
        match v.trim() {
            "1.2" => Ok(TlsVersion::V1_2),
            "1.3" => Ok(TlsVersion::V1_3),
            _ => Err(ConfigError::invalid(key, v, "expected 1.2 or 1.3")),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Curve {
    P256,
    P384,
    P521,
}

impl Curve {
    pub fn parse(v: &str) -> Result<Self, ConfigError> {
        match v.trim().to_ascii_lowercase().as_str() {
            "p256" | "p-256" | "secp256r1" => Ok(Curve::P256),
            "p384" | "p-384" | "secp384r1" => Ok(Curve::P384),
            "p521" | "p-521" | "secp521r1" => Ok(Curve::P521),
            _ => Err(ConfigError::invalid(
                "ipa-tls-certificate-curve",
                v,
                "expected p256, p384 or p521",
            )),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

/// Flags of the agent mode. Every flag is optional and overrides the kernel command line.
#[derive(Debug, Clone, Default, Args)]
pub struct AgentArgs {
    /// Read kernel parameters from this file instead of /proc/cmdline (tests, debugging).
    #[arg(long, value_name = "FILE")]
    pub cmdline_file: Option<PathBuf>,
    /// Where the token, the TLS key/cert and the command history survive an agent restart.
    #[arg(long, value_name = "DIR", default_value = "/run/rivet")]
    pub state_dir: PathBuf,
    /// Never power the machine off or reboot it: power_off/run_image/lockdown end the agent
    /// process (exit 0) after answering. Tests always use this.
    #[arg(long)]
    pub simulate_power: bool,
    /// Admit loop devices as disks (tests only).
    #[arg(long)]
    pub allow_loop_devices: bool,
    /// Ironic API URL(s), comma-separated (ipa-api-url).
    #[arg(long)]
    pub api_url: Option<String>,
    #[arg(long)]
    pub advertise_host: Option<String>,
    #[arg(long)]
    pub advertise_port: Option<u16>,
    #[arg(long)]
    pub listen_host: Option<IpAddr>,
    #[arg(long)]
    pub listen_port: Option<u16>,
    /// Do not verify the TLS certificate of the Ironic API (ipa-insecure).
    #[arg(long)]
    pub insecure: bool,
    /// CA bundle for verifying the Ironic API and image servers.
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// Serve the agent API with this certificate instead of an auto-generated one.
    #[arg(long, value_name = "FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,
    #[arg(long, value_name = "FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,
    /// Never generate a TLS certificate; serve plain HTTP unless static files are given.
    #[arg(long)]
    pub no_auto_tls: bool,
    #[arg(long)]
    pub debug: bool,
    #[arg(long, value_enum, default_value = "human")]
    pub log_format: LogFormat,
    /// Enable the `test.*` extension (sleep/fail commands) for integration tests. Never set
    /// in a ramdisk.
    #[arg(long, hide = true)]
    pub test_extension: bool,
    /// How long a client of the agent API may take for its TLS handshake, its request
    /// headers and its body before the connection is dropped (slow clients cannot pin
    /// connections). Tests shorten it.
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0, hide = true)]
    pub api_client_timeout: f64,
    /// Where virtual-media agent config is copied to (IPA copies into /etc).
    #[arg(long, value_name = "DIR", default_value = "/etc")]
    pub etc_dir: PathBuf,
    /// Report virtual NICs (veth) as interfaces and listen for LLDP on them (tests in a
    /// network namespace only; a real machine's NICs have a device behind them).
    #[arg(long, hide = true)]
    pub allow_virtual_nics: bool,
}

/// Range of the conductor's `heartbeat_timeout` the agent follows (Ironic's default is 300).
pub const HEARTBEAT_TIMEOUT_MIN: f64 = 1.0;
pub const HEARTBEAT_TIMEOUT_MAX: f64 = 3600.0;

/// IPA's default inspection collectors (`INSPECTION_DEFAULT_COLLECTORS` in IPA 13).
pub const DEFAULT_COLLECTORS: &str = "default,logs";

/// In-band inspection settings: `ipa-inspection-*`, `ipa-collect-lldp`, `ipa-lldp-timeout`.
#[derive(Debug, Clone, PartialEq)]
pub struct Inspection {
    /// Where the data is posted, tried in order: `ipa-inspection-callback-url`, else
    /// `<api-url>/v1/continue_inspection` for each API URL when `ipa-inspection-collectors`
    /// is set (IPA's rule). Empty when inspection is off.
    pub urls: Vec<String>,
    /// True when the URLs are Ironic's own `continue_inspection` endpoint (derived from the
    /// API URL or ending in it), which answers with the node and its token at API 1.84+.
    pub ironic_endpoint: bool,
    pub collectors: Vec<String>,
    /// Wait for every NIC, not only the PXE one, to get an IPv4 address before posting.
    pub dhcp_all_interfaces: bool,
    pub dhcp_wait_timeout: Duration,
    /// Fill the inventory's `interfaces[].lldp` (the `lldp` collector fills `lldp_raw`).
    pub collect_lldp: bool,
    pub lldp_timeout: Duration,
    /// `ipa-inspection-benchmarks`, passed to `hardware-detect` (collector `extra-hardware`).
    pub benchmarks: Vec<String>,
}

impl Inspection {
    pub fn enabled(&self) -> bool {
        !self.urls.is_empty()
    }
}

/// Everything the agent needs to know, typed and validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub api_urls: Vec<String>,
    pub insecure: bool,
    pub ca_file: Option<PathBuf>,
    pub advertise_host: Option<String>,
    pub advertise_port: u16,
    pub advertise_https: bool,
    pub listen_host: Option<IpAddr>,
    pub listen_port: u16,
    pub agent_token: Option<String>,
    pub debug: bool,
    pub global_request_id: Option<String>,
    pub lookup_timeout: Duration,
    pub lookup_interval: Duration,
    pub ironic_api_version: Option<(u32, u32)>,
    pub http_request_timeout: Duration,
    pub image_download_connection_timeout: Duration,
    pub image_download_connection_retries: u32,
    pub image_download_connection_retry_interval: Duration,
    pub image_download_max_duration: Option<Duration>,
    pub tls_min_version: TlsVersion,
    pub tls_certificate_curve: Curve,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    pub enable_auto_tls: bool,
    pub auto_tls_allowed_clock_skew: Duration,
    pub bootif: Option<String>,
    /// BOOTIF exactly as given, reported as `boot.pxe_interface` like IPA does.
    pub bootif_raw: Option<String>,
    pub vmedia: bool,
    pub hardware_initialization_delay: Duration,
    pub disk_wait_attempts: u32,
    pub disk_wait_delay: Duration,
    pub inject_files_priority: i64,
    /// Where custom step manifests are read from (`rivet-steps-dir=`, else
    /// `<etc>/rivet/steps.d`).
    pub steps_dir: PathBuf,
    /// The custom steps found there at start-up (the agent loads them; empty otherwise).
    pub custom_steps: Vec<steps_d::CustomStep>,
    pub strict_root_device: bool,
    /// `ipa-guard-special-filesystems` (default on): the erase steps refuse a disk carrying a
    /// file system other hosts may share (VMFS, GPFS, GFS2, OCFS2).
    pub guard_special_filesystems: bool,
    /// `rivet-peer-share=1`: share image pieces with the other agents deploying the same image
    /// (BitTorrent, when the image has a `.torrent` beside it). Off: today's traffic exactly.
    pub peer_share: bool,
    /// `rivet-peer-share-port=` (0: any free port).
    pub peer_share_port: u16,
    /// `rivet-peer-share-upload=` in MiB/s (0: unlimited).
    pub peer_share_upload_mib: u64,
    /// `rivet-peer-share-lsd=0`: no Local Service Discovery (only the peers below).
    pub peer_share_lsd: bool,
    /// `rivet-peer-share-peers=ADDR:PORT,…`: peers to dial from the start (a fixed seed).
    pub peer_share_peers: Vec<std::net::SocketAddr>,
    /// `ipa-enable-discard-erase` (default off): a discard after a failed secure erase.
    pub enable_discard_erase: bool,
    pub ntp_server: Option<String>,
    /// IPA's `fail_if_clock_not_set` (`[DEFAULT]` of an ironic-python-agent.d file): no NTP
    /// answer fails the start instead of going on with the clock as it is.
    pub fail_if_clock_not_set: bool,
    pub state_dir: PathBuf,
    /// The ramdisk's /etc (rescue users, virtual-media config); tests point it elsewhere.
    pub etc_dir: PathBuf,
    pub simulate_power: bool,
    pub allow_loop_devices: bool,
    pub allow_virtual_nics: bool,
    pub inspection: Inspection,
    /// True when the parameters came from this machine's real /proc/cmdline; real power actions
    /// are only allowed then (see `system::power`).
    pub from_proc_cmdline: bool,
    pub api_client_timeout: Duration,
    pub test_extension: bool,
    // Settings the conductor sends in the lookup answer (they override local ones, as in IPA).
    pub heartbeat_timeout: Duration,
    pub md5_enabled: bool,
    pub permitted_image_formats: Vec<String>,
    pub enable_bios_bootloader_install: bool,
    pub disable_deep_image_inspection: bool,
    pub skip_bmc_detect: bool,
    /// Kernel parameters given that Rivet does not use (see `params`): logged at start-up.
    pub unused_params: Vec<(String, Option<&'static str>)>,
    /// What the virtual media gave (read before logging starts): logged at start-up.
    pub vmedia_notes: Vec<String>,
}

const PROC_CMDLINE: &str = "/proc/cmdline";

/// How long a virtual-media boot waits for its ISO to appear (IPA's disk wait budget).
const VMEDIA_WAIT: Duration = Duration::from_secs(30);

impl Config {
    /// Read the kernel command line (or `--cmdline-file`), merge virtual-media parameters when
    /// booted that way, then apply flags.
    pub fn load(args: &AgentArgs) -> Result<Config, ConfigError> {
        let path = args
            .cmdline_file
            .clone()
            .unwrap_or_else(|| PathBuf::from(PROC_CMDLINE));
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        let mut params = cmdline::parse_params(&text);
        let mut notes = Vec::new();
        if params.get("boot_method").map(String::as_str) == Some("vmedia") {
            let found = vmedia::load(&args.etc_dir, args.allow_loop_devices, VMEDIA_WAIT)?;
            // Values from the virtual-media parameters file override the kernel command line.
            params.extend(found.params);
            notes = found.notes;
        }
        let mut cfg = Config::from_params(&params, args)?;
        cfg.vmedia_notes = notes;
        cfg.from_proc_cmdline = args.cmdline_file.is_none();
        if cfg.ca_file.is_none() {
            cfg.ca_file = vmedia::cafile_from_conf(&args.etc_dir);
        }
        cfg.fail_if_clock_not_set = vmedia::default_option(&args.etc_dir, "fail_if_clock_not_set")
            .is_some_and(|v| {
                matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "yes" | "on")
            });
        Ok(cfg)
    }

    /// Build from already-parsed parameters plus flags (no file access).
    pub fn from_params(
        p: &HashMap<String, String>,
        args: &AgentArgs,
    ) -> Result<Config, ConfigError> {
        let get = |k: &str| p.get(k).map(|s| s.trim()).filter(|s| !s.is_empty());
        let secs = |k: &str, default: f64| -> Result<Duration, ConfigError> {
            Ok(Duration::from_secs_f64(match get(k) {
                Some(v) => parse_secs(k, v)?,
                None => default,
            }))
        };
        let boolean = |k: &str, default: bool| -> Result<bool, ConfigError> {
            get(k).map_or(Ok(default), |v| parse_bool(k, v))
        };

        let api_urls = match (&args.api_url, get("ipa-api-url")) {
            (Some(v), _) => parse_api_urls(v)?,
            (None, Some(v)) => parse_api_urls(v)?,
            (None, None) => Vec::new(),
        };
        let inspection = inspection(p, &api_urls)?;
        if api_urls.is_empty() && !inspection.enabled() {
            return Err(ConfigError::NoApiUrl);
        }
        let advertise_https = match get("ipa-advertise-protocol") {
            None => false,
            Some("http") => false,
            Some("https") => true,
            Some(v) => {
                return Err(ConfigError::invalid(
                    "ipa-advertise-protocol",
                    v,
                    "expected http or https",
                ))
            }
        };
        let listen_host = match (args.listen_host, get("ipa-listen-host")) {
            (Some(h), _) => Some(h),
            (None, Some(v)) => Some(v.trim_matches(['[', ']']).parse().map_err(|_| {
                ConfigError::invalid("ipa-listen-host", v, "expected an IP address")
            })?),
            (None, None) => None,
        };
        let port = |k: &str, flag: Option<u16>| -> Result<u16, ConfigError> {
            match (flag, get(k)) {
                (Some(f), _) => Ok(f),
                (None, Some(v)) => parse_u16(k, v),
                (None, None) => Ok(9999),
            }
        };
        let bootif_raw = get("BOOTIF").map(str::to_string);
        let bootif = bootif_raw.as_deref().map(normalize_bootif).transpose()?;
        let token = args_or(&None, get("ipa-agent-token"));
        if let Some(t) = &token {
            if t.len() < 32 {
                return Err(ConfigError::invalid(
                    "ipa-agent-token",
                    "******",
                    "a pregenerated token has at least 32 characters",
                ));
            }
        }
        let max_duration = secs("ipa-image-download-max-duration", 0.0)?;
        let curve = get("ipa-tls-certificate-curve").map_or(Ok(Curve::P384), Curve::parse)?;

        Ok(Config {
            api_urls,
            insecure: args.insecure || boolean("ipa-insecure", false)?,
            ca_file: args.ca_file.clone(),
            advertise_host: args
                .advertise_host
                .clone()
                .or_else(|| get("ipa-advertise-host").map(str::to_string)),
            advertise_port: port("ipa-advertise-port", args.advertise_port)?,
            advertise_https,
            listen_host,
            listen_port: port("ipa-listen-port", args.listen_port)?,
            agent_token: token,
            debug: args.debug || boolean("ipa-debug", false)?,
            global_request_id: get("ipa-global-request-id").map(str::to_string),
            lookup_timeout: secs("ipa-lookup-timeout", 600.0)?,
            lookup_interval: secs("ipa-lookup-interval", 1.0)?,
            ironic_api_version: get("ipa-ironic-api-version")
                .map(|v| parse_api_version("ipa-ironic-api-version", v))
                .transpose()?,
            http_request_timeout: secs("ipa-http-request-timeout", 30.0)?,
            image_download_connection_timeout: secs("ipa-image-download-connection-timeout", 60.0)?,
            image_download_connection_retries: get("ipa-image-download-connection-retries")
                .map(|v| {
                    parse_u64("ipa-image-download-connection-retries", v)
                        .map(|n| n.min(u32::MAX as u64) as u32)
                })
                .transpose()?
                .unwrap_or(9),
            image_download_connection_retry_interval: secs(
                "ipa-image-download-connection-retry-interval",
                10.0,
            )?,
            image_download_max_duration: (!max_duration.is_zero()).then_some(max_duration),
            tls_min_version: get("ipa-tls-min-version").map_or(Ok(TlsVersion::V1_2), |v| {
                TlsVersion::parse("ipa-tls-min-version", v)
            })?,
            tls_certificate_curve: curve,
            tls_cert_file: args.tls_cert_file.clone(),
            tls_key_file: args.tls_key_file.clone(),
            enable_auto_tls: !args.no_auto_tls,
            auto_tls_allowed_clock_skew: Duration::from_secs(3600),
            bootif,
            bootif_raw,
            vmedia: get("boot_method") == Some("vmedia"),
            hardware_initialization_delay: secs("ipa-hardware-initialization-delay", 0.0)?,
            disk_wait_attempts: get("ipa-disk-wait-attempts")
                .map(|v| parse_u64("ipa-disk-wait-attempts", v).map(|n| n.min(1000) as u32))
                .transpose()?
                .unwrap_or(10),
            disk_wait_delay: secs("ipa-disk-wait-delay", 3.0)?,
            inject_files_priority: get("ipa-inject-files-priority")
                .map(|v| {
                    v.parse::<i64>().map_err(|_| {
                        ConfigError::invalid("ipa-inject-files-priority", v, "expected an integer")
                    })
                })
                .transpose()?
                .unwrap_or(0),
            steps_dir: get("rivet-steps-dir")
                .map(PathBuf::from)
                .unwrap_or_else(|| args.etc_dir.join("rivet/steps.d")),
            custom_steps: Vec::new(),
            strict_root_device: boolean("ipa-strict-root-device", false)?,
            guard_special_filesystems: boolean("ipa-guard-special-filesystems", true)?,
            peer_share: boolean("rivet-peer-share", false)?,
            peer_share_port: get("rivet-peer-share-port")
                .map(|v| parse_u16("rivet-peer-share-port", v))
                .transpose()?
                .unwrap_or(0),
            peer_share_upload_mib: get("rivet-peer-share-upload")
                .map(|v| parse_u64("rivet-peer-share-upload", v).map(|n| n.min(1 << 20)))
                .transpose()?
                .unwrap_or(100),
            peer_share_lsd: boolean("rivet-peer-share-lsd", true)?,
            peer_share_peers: get("rivet-peer-share-peers")
                .map(|v| {
                    v.split(',')
                        .filter(|p| !p.trim().is_empty())
                        .map(|p| {
                            p.trim().parse().map_err(|_| {
                                ConfigError::invalid(
                                    "rivet-peer-share-peers",
                                    v,
                                    "expected ADDR:PORT[,ADDR:PORT…] ([v6]:port for IPv6)",
                                )
                            })
                        })
                        .collect::<Result<Vec<_>, _>>()
                })
                .transpose()?
                .unwrap_or_default(),
            enable_discard_erase: boolean("ipa-enable-discard-erase", false)?,
            ntp_server: get("ipa-ntp-server").map(str::to_string),
            fail_if_clock_not_set: false,
            state_dir: args.state_dir.clone(),
            etc_dir: args.etc_dir.clone(),
            simulate_power: args.simulate_power,
            allow_loop_devices: args.allow_loop_devices,
            allow_virtual_nics: args.allow_virtual_nics,
            inspection,
            from_proc_cmdline: false,
            test_extension: args.test_extension,
            api_client_timeout: Duration::from_secs_f64(if args.api_client_timeout.is_finite() {
                args.api_client_timeout.clamp(0.1, 3600.0)
            } else {
                30.0
            }),
            heartbeat_timeout: Duration::from_secs(300),
            md5_enabled: false,
            permitted_image_formats: vec!["raw".into(), "gpt".into(), "qcow2".into()],
            enable_bios_bootloader_install: false,
            disable_deep_image_inspection: false,
            skip_bmc_detect: false,
            unused_params: params::unused(p),
            vmedia_notes: Vec::new(),
        })
    }

    /// Apply the lookup answer's `config` object. Unknown keys are ignored; a present key of
    /// the wrong type is an error, since guessing would silently change deploy behaviour.
    pub fn apply_lookup(&mut self, c: &serde_json::Value) -> Result<(), ConfigError> {
        use serde_json::Value;
        let bad = |k: &str, v: &Value, why: &str| {
            ConfigError::invalid(&format!("lookup config.{k}"), &v.to_string(), why)
        };
        match c.get("heartbeat_timeout") {
            Some(v) => match v
                .as_f64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            {
                Some(t) if t.is_finite() && t > 0.0 => {
                    // Heartbeats go out every 0.3–0.6 × this: an absurd value from the
                    // conductor must neither panic nor silence the agent for years.
                    let clamped = t.clamp(HEARTBEAT_TIMEOUT_MIN, HEARTBEAT_TIMEOUT_MAX);
                    if clamped != t {
                        tracing::warn!(
                            given = t,
                            used = clamped,
                            "the conductor's heartbeat_timeout is out of range"
                        );
                    }
                    self.heartbeat_timeout = Duration::from_secs_f64(clamped)
                }
                _ => {
                    return Err(bad(
                        "heartbeat_timeout",
                        v,
                        "expected a positive number of seconds",
                    ))
                }
            },
            None => {
                return Err(ConfigError::invalid(
                    "lookup config.heartbeat_timeout",
                    "(missing)",
                    "the conductor must send it",
                ))
            }
        }
        let flag = |k: &str| -> Result<Option<bool>, ConfigError> {
            match c.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Bool(b)) => Ok(Some(*b)),
                Some(v) => Err(bad(k, v, "expected true or false")),
            }
        };
        if let Some(b) = flag("agent_md5_checksum_enable")? {
            self.md5_enabled = b;
        }
        if let Some(b) = flag("enable_bios_bootloader_install")? {
            self.enable_bios_bootloader_install = b;
        }
        if let Some(b) = flag("disable_deep_image_inspection")? {
            self.disable_deep_image_inspection = b;
        }
        if let Some(b) = flag("agent_skip_bmc_detect")? {
            self.skip_bmc_detect = b;
        }
        match c.get("permitted_image_formats") {
            None | Some(Value::Null) => {}
            Some(Value::Array(a)) => {
                self.permitted_image_formats = a
                    .iter()
                    .map(|f| {
                        f.as_str()
                            .map(str::to_string)
                            .ok_or_else(|| bad("permitted_image_formats", f, "expected strings"))
                    })
                    .collect::<Result<_, _>>()?;
            }
            Some(v) => return Err(bad("permitted_image_formats", v, "expected a list")),
        }
        match c.get("tls_min_version") {
            None | Some(Value::Null) => {}
            Some(Value::String(v)) => {
                self.tls_min_version = TlsVersion::parse("lookup config.tls_min_version", v)?
            }
            Some(v) => return Err(bad("tls_min_version", v, "expected \"1.2\" or \"1.3\"")),
        }
        Ok(())
    }
}

/// The inspection settings, with IPA's defaults and its rule for where to post.
fn inspection(p: &HashMap<String, String>, api_urls: &[String]) -> Result<Inspection, ConfigError> {
    const ENDPOINT: &str = "/v1/continue_inspection";
    let get = |k: &str| p.get(k).map(|s| s.trim()).filter(|s| !s.is_empty());
    let secs = |k: &str, default: f64| -> Result<Duration, ConfigError> {
        Ok(Duration::from_secs_f64(
            get(k)
                .map_or(Ok(default), |v| parse_secs(k, v))?
                .min(86_400.0),
        ))
    };
    let boolean = |k: &str| get(k).map_or(Ok(false), |v| parse_bool(k, v));
    let asked_collectors = get("ipa-inspection-collectors");
    let collectors: Vec<String> = asked_collectors
        .unwrap_or(DEFAULT_COLLECTORS)
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(str::to_string)
        .collect();
    let (urls, ironic_endpoint) = match get("ipa-inspection-callback-url") {
        Some(v) => {
            let urls = parse_urls("ipa-inspection-callback-url", v)?;
            let ironic = urls.iter().all(|u| u.ends_with(ENDPOINT));
            (urls, ironic)
        }
        None if asked_collectors.is_some() => (
            api_urls.iter().map(|u| format!("{u}{ENDPOINT}")).collect(),
            true,
        ),
        None => (Vec::new(), false),
    };
    Ok(Inspection {
        urls,
        ironic_endpoint,
        collectors,
        dhcp_all_interfaces: boolean("ipa-inspection-dhcp-all-interfaces")?,
        dhcp_wait_timeout: secs("ipa-inspection-dhcp-wait-timeout", 60.0)?,
        collect_lldp: boolean("ipa-collect-lldp")?,
        lldp_timeout: secs("ipa-lldp-timeout", 30.0)?,
        benchmarks: get("ipa-inspection-benchmarks")
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|b| !b.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default(),
    })
}

fn args_or(flag: &Option<String>, param: Option<&str>) -> Option<String> {
    flag.clone().or_else(|| param.map(str::to_string))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(cmdline: &str) -> Result<Config, ConfigError> {
        Config::from_params(&cmdline::parse_params(cmdline), &AgentArgs::default())
    }

    #[test]
    fn ipa_defaults() {
        let c = cfg("ipa-api-url=http://10.0.0.1:6385").unwrap();
        assert_eq!(c.listen_port, 9999);
        assert_eq!(c.advertise_port, 9999);
        assert_eq!(c.lookup_timeout, Duration::from_secs(600));
        assert_eq!(c.lookup_interval, Duration::from_secs(1));
        assert_eq!(c.http_request_timeout, Duration::from_secs(30));
        assert_eq!(c.image_download_connection_retries, 9);
        assert_eq!(c.tls_certificate_curve, Curve::P384);
        assert_eq!(c.tls_min_version, TlsVersion::V1_2);
        assert!(!c.insecure && !c.advertise_https && c.image_download_max_duration.is_none());
    }

    #[test]
    fn peer_sharing_parameters() {
        let off = cfg("ipa-api-url=http://10.0.0.1:6385").unwrap();
        assert!(!off.peer_share && off.peer_share_lsd && off.peer_share_peers.is_empty());
        assert_eq!((off.peer_share_port, off.peer_share_upload_mib), (0, 100));
        let c = cfg(
            "ipa-api-url=http://10.0.0.1:6385 rivet-peer-share=1 rivet-peer-share-port=6881 \
                     rivet-peer-share-upload=40 rivet-peer-share-lsd=0 \
                     rivet-peer-share-peers=10.0.0.9:6881,[fd00::9]:6881",
        )
        .unwrap();
        assert!(c.peer_share && !c.peer_share_lsd);
        assert_eq!((c.peer_share_port, c.peer_share_upload_mib), (6881, 40));
        assert_eq!(
            c.peer_share_peers,
            vec![
                "10.0.0.9:6881".parse().unwrap(),
                "[fd00::9]:6881".parse().unwrap()
            ]
        );
        for bad in [
            "rivet-peer-share=maybe",
            "rivet-peer-share-port=70000",
            "rivet-peer-share-upload=-1",
            "rivet-peer-share-peers=10.0.0.9",
            "rivet-peer-share-peers=host:6881",
        ] {
            let e = cfg(&format!("ipa-api-url=http://10.0.0.1:6385 {bad}")).unwrap_err();
            assert!(
                e.to_string().contains(bad.split('=').next().unwrap()),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn full_cmdline() {
        let c = cfg("nofb ipa-api-url=https://a:6385,https://b:6385 ipa-insecure=1 \
                     ipa-advertise-host=10.1.1.1 ipa-advertise-port=8443 ipa-advertise-protocol=https \
                     ipa-listen-host=[::1] ipa-listen-port=8443 ipa-debug=true \
                     ipa-global-request-id=req-1 ipa-lookup-timeout=30 ipa-lookup-interval=0.5 \
                     ipa-ironic-api-version=1.68 ipa-http-request-timeout=5 \
                     ipa-image-download-connection-timeout=7 ipa-image-download-connection-retries=2 \
                     ipa-image-download-connection-retry-interval=3 ipa-tls-min-version=1.3 \
                     ipa-tls-certificate-curve=p256 BOOTIF=01-52-54-00-12-34-56 \
                     ipa-agent-token=0123456789abcdef0123456789abcdef012")
        .unwrap();
        assert_eq!(c.api_urls, vec!["https://a:6385", "https://b:6385"]);
        assert!(c.insecure && c.debug && c.advertise_https);
        assert_eq!(c.advertise_host.as_deref(), Some("10.1.1.1"));
        assert_eq!((c.advertise_port, c.listen_port), (8443, 8443));
        assert_eq!(c.listen_host, Some("::1".parse().unwrap()));
        assert_eq!(c.global_request_id.as_deref(), Some("req-1"));
        assert_eq!(c.lookup_timeout, Duration::from_secs(30));
        assert_eq!(c.lookup_interval, Duration::from_millis(500));
        assert_eq!(c.ironic_api_version, Some((1, 68)));
        assert_eq!(c.image_download_connection_timeout, Duration::from_secs(7));
        assert_eq!(c.image_download_connection_retries, 2);
        assert_eq!(c.tls_min_version, TlsVersion::V1_3);
        assert_eq!(c.tls_certificate_curve, Curve::P256);
        assert_eq!(c.bootif.as_deref(), Some("52:54:00:12:34:56"));
        assert_eq!(c.bootif_raw.as_deref(), Some("01-52-54-00-12-34-56"));
        assert!(c.agent_token.is_some());
    }

    #[test]
    fn flags_override_cmdline() {
        let args = AgentArgs {
            api_url: Some("http://127.0.0.1:1".into()),
            listen_port: Some(1234),
            advertise_host: Some("127.0.0.1".into()),
            ..Default::default()
        };
        let p = cmdline::parse_params(
            "ipa-api-url=http://10.0.0.1:6385 ipa-listen-port=9 ipa-advertise-host=1.2.3.4",
        );
        let c = Config::from_params(&p, &args).unwrap();
        assert_eq!(c.api_urls, vec!["http://127.0.0.1:1"]);
        assert_eq!(c.listen_port, 1234);
        assert_eq!(c.advertise_host.as_deref(), Some("127.0.0.1"));
    }

    #[test]
    fn malformed_values_are_errors_naming_the_key() {
        for (line, key) in [
            (
                "ipa-api-url=http://a ipa-lookup-timeout=x",
                "ipa-lookup-timeout",
            ),
            ("ipa-api-url=http://a ipa-insecure=perhaps", "ipa-insecure"),
            (
                "ipa-api-url=http://a ipa-listen-port=99999",
                "ipa-listen-port",
            ),
            (
                "ipa-api-url=http://a ipa-tls-min-version=1.1",
                "ipa-tls-min-version",
            ),
            (
                "ipa-api-url=http://a ipa-tls-certificate-curve=ed25519",
                "ipa-tls-certificate-curve",
            ),
            (
                "ipa-api-url=http://a ipa-advertise-protocol=gopher",
                "ipa-advertise-protocol",
            ),
            (
                "ipa-api-url=http://a ipa-listen-host=nowhere",
                "ipa-listen-host",
            ),
            ("ipa-api-url=http://a BOOTIF=01-xx", "BOOTIF"),
            (
                "ipa-api-url=http://a ipa-agent-token=short",
                "ipa-agent-token",
            ),
            (
                "ipa-api-url=http://a ipa-ironic-api-version=latest",
                "ipa-ironic-api-version",
            ),
            ("ipa-api-url=gopher://a", "ipa-api-url"),
        ] {
            let e = cfg(line).unwrap_err().to_string();
            assert!(e.contains(key), "{line}: {e}");
        }
        assert!(matches!(cfg("quiet"), Err(ConfigError::NoApiUrl)));
        let e = cfg("quiet").unwrap_err().to_string();
        assert!(
            e.contains("ipa-api-url") && e.contains("ipa-inspection-callback-url"),
            "{e}"
        );
    }

    #[test]
    fn lookup_config_overrides() {
        let mut c = cfg("ipa-api-url=http://a:1").unwrap();
        c.apply_lookup(&serde_json::json!({
            "heartbeat_timeout": 30, "agent_md5_checksum_enable": true, "tls_min_version": "1.3",
            "permitted_image_formats": ["raw", "qcow2"], "enable_bios_bootloader_install": false,
            "metrics": {"backend": "noop"}}))
            .unwrap();
        assert_eq!(c.heartbeat_timeout, Duration::from_secs(30));
        assert!(c.md5_enabled);
        assert_eq!(c.tls_min_version, TlsVersion::V1_3);
        assert_eq!(c.permitted_image_formats, vec!["raw", "qcow2"]);
        assert!(c.apply_lookup(&serde_json::json!({})).is_err());
        assert!(c
            .apply_lookup(&serde_json::json!({"heartbeat_timeout": 30, "tls_min_version": "1.0"}))
            .is_err());
        assert!(c
            .apply_lookup(&serde_json::json!({"heartbeat_timeout": "x"}))
            .is_err());
        // Absurd numbers are clamped, not a panic.
        for (t, want) in [(1e30, 3600.0), (1e-9, 1.0), (f64::MAX, 3600.0)] {
            c.apply_lookup(&serde_json::json!({ "heartbeat_timeout": t }))
                .unwrap();
            assert_eq!(c.heartbeat_timeout, Duration::from_secs_f64(want));
        }
        assert!(c
            .apply_lookup(&serde_json::json!({"heartbeat_timeout": "1e999"}))
            .is_err());
    }

    #[test]
    fn inspection_urls_follow_ipa() {
        // Metal3 without fast-track: a callback URL only.
        let c = cfg("ipa-inspection-callback-url=http://i:6385/v1/continue_inspection,http://j:6385/v1/continue_inspection/")
            .unwrap();
        assert!(c.api_urls.is_empty() && c.inspection.enabled());
        assert_eq!(
            c.inspection.urls,
            vec![
                "http://i:6385/v1/continue_inspection",
                "http://j:6385/v1/continue_inspection"
            ]
        );
        assert!(c.inspection.ironic_endpoint);
        assert_eq!(c.inspection.collectors, vec!["default", "logs"]);
        assert_eq!(c.inspection.lldp_timeout, Duration::from_secs(30));
        assert_eq!(c.inspection.dhcp_wait_timeout, Duration::from_secs(60));
        assert!(!c.inspection.collect_lldp && !c.inspection.dhcp_all_interfaces);
        // Collectors + API URL and no callback: post to the API's own endpoint.
        let c = cfg("ipa-api-url=http://a:6385,http://b:6385 ipa-inspection-collectors=default,pci-devices                      ipa-collect-lldp=1 ipa-lldp-timeout=2.5 ipa-inspection-dhcp-all-interfaces=true                      ipa-inspection-dhcp-wait-timeout=0")
        .unwrap();
        assert_eq!(
            c.inspection.urls,
            vec![
                "http://a:6385/v1/continue_inspection",
                "http://b:6385/v1/continue_inspection"
            ]
        );
        assert_eq!(c.inspection.collectors, vec!["default", "pci-devices"]);
        assert!(c.inspection.collect_lldp && c.inspection.dhcp_all_interfaces);
        assert_eq!(c.inspection.lldp_timeout, Duration::from_millis(2500));
        assert!(c.inspection.dhcp_wait_timeout.is_zero());
        // An API URL alone: no inspection.
        assert!(!cfg("ipa-api-url=http://a:6385")
            .unwrap()
            .inspection
            .enabled());
        // A legacy ironic-inspector URL is posted to, but is not Ironic's endpoint.
        let c = cfg("ipa-inspection-callback-url=http://i:5050/v1/continue").unwrap();
        assert!(!c.inspection.ironic_endpoint);
        for (line, key) in [
            (
                "ipa-inspection-callback-url=mdns",
                "ipa-inspection-callback-url",
            ),
            (
                "ipa-inspection-callback-url=ftp://x",
                "ipa-inspection-callback-url",
            ),
            (
                "ipa-api-url=http://a ipa-lldp-timeout=never",
                "ipa-lldp-timeout",
            ),
            (
                "ipa-api-url=http://a ipa-collect-lldp=sometimes",
                "ipa-collect-lldp",
            ),
        ] {
            let e = cfg(line).unwrap_err().to_string();
            assert!(e.contains(key), "{line}: {e}");
        }
    }

    #[test]
    fn unknown_kernel_args_are_ignored() {
        let c =
            cfg("ipa-api-url=http://a:1 console=ttyS0 ipa-future-option=1 root=/dev/sda").unwrap();
        assert_eq!(c.api_urls.len(), 1);
    }
}
