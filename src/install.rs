//! `rivet install`: write an image to a disk without a conductor (like coreos-installer), with
//! the same pipeline, checks and safety as a deploy, and a progress line on the console.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use crate::config::TlsVersion;
use crate::hardware::{disks, root_device};
use crate::image::fetch::{Auth, FetchOptions, Refusal};
use crate::image::pipeline::{self, ImageError, ImageRequest};
use crate::image::progress::Progress;
use crate::image::share::ShareOptions;
use crate::image::write::Target;

#[derive(Debug, Args)]
pub struct InstallArgs {
    /// Image URL (http or https); repeat to give fallbacks, tried in order.
    #[arg(long = "image-url", required = true, value_name = "URL")]
    pub image_urls: Vec<String>,
    /// Expected checksum: `ALGO:HEX` (sha256, sha512, sha3_256, …) or bare hex (algorithm from
    /// its length).
    #[arg(long, value_name = "ALGO:HEX", conflicts_with = "checksum_url")]
    pub checksum: Option<String>,
    /// URL of a checksum file (GNU or BSD format, or a single hash) naming the image.
    #[arg(long, value_name = "URL")]
    pub checksum_url: Option<String>,
    /// Expected format (raw, gpt, iso, qcow2); checked against the image's bytes.
    #[arg(long)]
    pub disk_format: Option<String>,
    /// Target disk (or an existing file).
    #[arg(long, value_name = "DEV", conflicts_with = "hints")]
    pub device: Option<PathBuf>,
    /// Choose the disk with root device hints (JSON), as a deploy would.
    #[arg(long, value_name = "JSON")]
    pub hints: Option<String>,
    /// Admit loop devices as disks (tests only).
    #[arg(long)]
    pub allow_loop_devices: bool,
    /// Do not verify the image server's TLS certificate.
    #[arg(long)]
    pub insecure: bool,
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// HTTP basic auth as USER:PASSWORD.
    #[arg(long, value_name = "USER:PASSWORD")]
    pub basic_auth: Option<String>,
    #[arg(long, default_value_t = 9)]
    pub retries: u32,
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
    pub retry_interval: f64,
    #[arg(long, default_value_t = 60.0, value_name = "SECONDS")]
    pub timeout: f64,
    /// No progress line.
    #[arg(long)]
    pub quiet: bool,
    /// Config drive to add after the image: an ISO9660 file (raw, or base64 of gzip as Ironic
    /// sends it) or a URL to one. Reuses a `config-2` partition, else creates one at the end.
    #[arg(long, value_name = "FILE|URL")]
    pub configdrive: Option<String>,
    /// Give up on the download after this long (ipa-image-download-max-duration).
    #[arg(long, value_name = "SECONDS")]
    pub max_duration: Option<f64>,
    /// Proxy for http:// URLs (default: $http_proxy).
    #[arg(long, value_name = "URL", env = "http_proxy")]
    pub http_proxy: Option<String>,
    /// Proxy for https:// URLs (default: $https_proxy).
    #[arg(long, value_name = "URL", env = "https_proxy")]
    pub https_proxy: Option<String>,
    /// Hosts reached without the proxy (default: $no_proxy).
    #[arg(long, value_name = "LIST", env = "no_proxy")]
    pub no_proxy: Option<String>,
    /// Share image pieces with the other agents writing the same image (BitTorrent), when the
    /// image has a `.torrent` beside it (`<URL>.torrent`); peers are found by Local Service
    /// Discovery (and --peer).
    #[arg(long)]
    pub peer_share: bool,
    /// Port to accept peers on (0: any free port).
    #[arg(
        long,
        default_value_t = 0,
        value_name = "PORT",
        requires = "peer_share"
    )]
    pub peer_share_port: u16,
    /// A peer to connect to from the start (repeat).
    #[arg(long = "peer", value_name = "ADDR:PORT", requires = "peer_share")]
    pub peers: Vec<std::net::SocketAddr>,
    /// No Local Service Discovery (only the --peer peers).
    #[arg(long, requires = "peer_share")]
    pub no_lsd: bool,
    /// Upload ceiling to peers in MiB/s (0: none).
    #[arg(long, default_value_t = 100, value_name = "MIB_PER_S")]
    pub peer_share_upload: u64,
    /// Seconds a peer may stay silent on a requested piece before losing it.
    #[arg(long, default_value_t = 5.0, value_name = "SECONDS", hide = true)]
    pub peer_stall: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("give --checksum or --checksum-url: an unverified image is never written")]
    NoChecksum,
    #[error("give --device or --hints")]
    NoTarget,
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    RootDevice(#[from] root_device::RootDeviceError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("config drive: {0}")]
    ConfigDrive(String),
}

fn secs(v: f64, what: &str) -> Result<Duration, InstallError> {
    Duration::try_from_secs_f64(v)
        .map_err(|_| InstallError::Usage(format!("{what} must be a number of seconds")))
}

pub fn run(a: &InstallArgs) -> Result<pipeline::Report, InstallError> {
    let auth = match &a.basic_auth {
        Some(s) => {
            let (user, password) = s
                .split_once(':')
                .ok_or_else(|| InstallError::Usage("--basic-auth wants USER:PASSWORD".into()))?;
            Auth::Basic {
                user: user.into(),
                password: password.into(),
            }
        }
        None => Auth::None,
    };
    let mut opts = FetchOptions {
        connect_timeout: secs(a.timeout, "--timeout")?,
        read_timeout: secs(a.timeout, "--timeout")?,
        retries: a.retries,
        retry_interval: secs(a.retry_interval, "--retry-interval")?,
        max_duration: a
            .max_duration
            .map(|m| secs(m, "--max-duration"))
            .transpose()?,
        auth,
        auth_origins: Vec::new(),
        http_proxy: a.http_proxy.clone().filter(|s| !s.is_empty()),
        https_proxy: a.https_proxy.clone().filter(|s| !s.is_empty()),
        no_proxy: a.no_proxy.clone().filter(|s| !s.is_empty()),
        insecure: a.insecure,
        ca_file: a.ca_file.clone(),
        tls_min: TlsVersion::V1_2,
    };
    let mut peer_share = None;
    if a.peer_share {
        peer_share = Some(ShareOptions {
            listen: std::net::SocketAddr::from(([0u8; 16], a.peer_share_port)),
            lsd: !a.no_lsd,
            peers: a.peers.clone(),
            upload_rate: a.peer_share_upload.saturating_mul(1 << 20),
            stall: secs(a.peer_stall, "--peer-stall")?,
            ..Default::default()
        });
    }
    opts.bind_auth(&a.image_urls);
    let first_url = &a.image_urls[0];
    let expected = match (&a.checksum, &a.checksum_url) {
        (Some(c), _) => match c.split_once(':') {
            Some((algo, hex)) => {
                pipeline::resolve_checksum(Some(algo), hex, first_url, true, &opts)?
            }
            None => pipeline::resolve_checksum(None, c, first_url, true, &opts)?,
        },
        (None, Some(u)) => pipeline::resolve_checksum(None, u, first_url, true, &opts)?,
        (None, None) => return Err(InstallError::NoChecksum),
    };
    let device = match (&a.device, &a.hints) {
        (Some(d), _) => d.clone(),
        (None, Some(h)) => {
            let hints: serde_json::Value = serde_json::from_str(h)
                .map_err(|e| InstallError::Usage(format!("--hints is not valid JSON: {e}")))?;
            let found = disks::discover(&disks::Sources::default(), a.allow_loop_devices);
            let d = root_device::choose(&found, Some(&hints), None, false)?;
            eprintln!(
                "rivet: installing to {}\n{}",
                d.device.name,
                root_device::render(&d.table)
            );
            PathBuf::from(d.device.name)
        }
        (None, None) => return Err(InstallError::NoTarget),
    };
    // Fetched and decoded before the disk is touched: a bad config drive refuses the install.
    let configdrive = a
        .configdrive
        .as_deref()
        .map(|c| configdrive_bytes(c, &opts))
        .transpose()?;
    let target = Target::open(&device).map_err(|e| InstallError::Image(e.into()))?;
    let req = ImageRequest {
        urls: a.image_urls.clone(),
        expected,
        disk_format: a.disk_format.clone(),
        permitted: ["raw", "gpt", "iso", "qcow2"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        peer_share,
    };
    let progress = Arc::new(Progress::default());
    let bar = (!a.quiet).then(|| {
        let p = progress.clone();
        let style = indicatif::ProgressStyle::with_template("{line}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner())
            .with_key(
                "line",
                move |_: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = w.write_str(&p.line());
                },
            );
        let bar = indicatif::ProgressBar::new_spinner().with_style(style);
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    });
    let result = pipeline::run(&req, &opts, &target, &progress);
    if let Some(bar) = bar {
        // The final figures stay on the console, terminal or not.
        bar.finish_and_clear();
        eprintln!("{}", progress.line());
    }
    let report = result?;
    // The disk stays open (and claimed) for the config drive.
    let disk = target.into_device();
    if let Some(iso) = configdrive {
        let p = crate::disk::configdrive::write(&disk, &iso)
            .map_err(|e| InstallError::ConfigDrive(e.to_string()))?;
        if !a.quiet {
            eprintln!(
                "rivet: config drive in partition {} ({} bytes{})",
                p.partition,
                iso.len(),
                if p.vfat { ", vfat copy" } else { "" }
            );
        }
    }
    Ok(report)
}

/// A config drive named on the command line, as ISO bytes.
fn configdrive_bytes(spec: &str, o: &FetchOptions) -> Result<Vec<u8>, InstallError> {
    use crate::disk::configdrive;
    let err = |e: String| InstallError::ConfigDrive(e);
    let body = if crate::image::verify::is_url(spec) {
        crate::image::fetch::fetch_sniffed(
            spec,
            o,
            (configdrive::MAX * 2) as usize,
            Some(&|b: &[u8]| configdrive::sniff_download(b).map_err(Refusal::from_error)),
        )
        .map_err(|e| err(e.to_string()))?
    } else {
        std::fs::read(spec).map_err(|e| err(format!("{spec}: {e}")))?
    };
    configdrive::decode_downloaded(&body).map_err(|e| err(e.to_string()))
}
