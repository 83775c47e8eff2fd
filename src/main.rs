//! The `rivet` binary: the agent (default), plus operator subcommands.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use rivet::config::{AgentArgs, Config};
use rivet::hardware::{disks, inventory, root_device};

#[derive(Parser)]
#[command(
    name = "rivet",
    version,
    about = "An ironic-python-agent compatible deploy agent"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    agent: AgentArgs,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the agent: look the node up, serve the agent API, heartbeat (the default).
    Agent(AgentArgs),
    /// Print this machine's inventory (IPA's JSON shape).
    Inventory {
        /// Report loop devices as disks (tests only).
        #[arg(long)]
        allow_loop_devices: bool,
        /// BOOTIF value to report as boot.pxe_interface.
        #[arg(long)]
        bootif: Option<String>,
        /// Listen for LLDP on every NIC with carrier for up to this many seconds (all at once)
        /// and report what the switches said in interfaces[].lldp.
        #[arg(long, value_name = "SECONDS")]
        lldp_timeout: Option<f64>,
        /// Report virtual NICs (veth) too (tests in a network namespace only).
        #[arg(long, hide = true)]
        allow_virtual_nics: bool,
        #[command(flatten)]
        sources: SourceArgs,
    },
    /// Write an image to a disk without a conductor: fetch, verify, decode, write.
    Install(rivet::install::InstallArgs),
    /// Make the `.torrent` that lets agents share an image's pieces (`rivet-peer-share=1`):
    /// private, single-file, BitTorrent v1; put it beside the image as `<image>.torrent`.
    Torrent {
        /// The image file.
        image: std::path::PathBuf,
        /// Where to write it (default: IMAGE.torrent).
        #[arg(long, short)]
        output: Option<std::path::PathBuf>,
        /// Piece size in KiB, a power of two (default: from the image's size, 256 KiB–16 MiB).
        #[arg(long, value_name = "KIB")]
        piece_kib: Option<u32>,
        /// The image's URL, so any BitTorrent client can fetch from the server (BEP 19).
        #[arg(long = "web-seed", value_name = "URL")]
        web_seeds: Vec<String>,
    },
    /// Bring the ramdisk's network up (both ramdisks run this once at boot): network_data.json
    /// from the virtual media, else DHCP on every NIC; then ipa-enable-vlan-interfaces.
    Network(NetworkArgs),
    /// The DHCP client's hook (udhcpc runs it with the event): applies the lease by netlink.
    #[command(hide = true)]
    NetworkLease { event: String },
    /// The DHCPv6 client of one NIC (`rivet network` starts one per NIC): runs for as long as
    /// the machine does.
    #[command(hide = true)]
    NetworkDhcp6 {
        iface: String,
        /// Where the name servers it learns are added.
        #[arg(long, default_value = "/etc/resolv.conf")]
        resolv_conf: std::path::PathBuf,
    },
    /// Choose the root disk as a deploy would and print the decision table.
    RootDevice {
        /// Root device hints, as in the node's properties.root_device (JSON object).
        #[arg(long, value_name = "JSON")]
        hints: Option<String>,
        /// skip_block_devices, as in the node's properties (JSON list of hint objects).
        #[arg(long, value_name = "JSON")]
        skip: Option<String>,
        /// Refuse to guess when several disks qualify and no hints are given.
        #[arg(long)]
        strict: bool,
        /// Admit loop devices as disks (tests only).
        #[arg(long)]
        allow_loop_devices: bool,
        /// Print the decision as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        sources: SourceArgs,
    },
}

#[derive(clap::Args)]
struct NetworkArgs {
    /// Kernel command line to read (boot_method, ipa-enable-vlan-interfaces).
    #[arg(long, default_value = "/proc/cmdline")]
    cmdline_file: std::path::PathBuf,
    /// Apply this network_data.json instead of the one on the virtual media.
    #[arg(long, value_name = "FILE")]
    network_data: Option<std::path::PathBuf>,
    /// Seconds to wait for NICs (those network_data names, or any for DHCP).
    #[arg(long, default_value_t = 60.0)]
    nic_wait: f64,
    /// Seconds to listen for LLDP when VLANs come from it.
    #[arg(long, default_value_t = 30.0)]
    lldp_wait: f64,
    /// Where the DHCP hook is written.
    #[arg(long, default_value = "/run/rivet-network")]
    run_dir: std::path::PathBuf,
    /// resolv.conf to write.
    #[arg(long, default_value = "/etc/resolv.conf")]
    resolv_conf: std::path::PathBuf,
    /// Where the DHCP leases applied are logged (the ramdisk's console).
    #[arg(long, default_value = "/dev/console")]
    dhcp_log: std::path::PathBuf,
    /// Admit loop devices as virtual media (tests only).
    #[arg(long)]
    allow_loop_devices: bool,
    /// Count veth pairs as NICs (tests in a network namespace only).
    #[arg(long, hide = true)]
    allow_virtual_nics: bool,
}

fn secs(s: f64) -> std::time::Duration {
    std::time::Duration::from_secs_f64(if s.is_finite() {
        s.clamp(0.0, 3600.0)
    } else {
        0.0
    })
}

/// A one-thread runtime for the network subcommands (netlink, a few sockets).
fn small_runtime() -> Option<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| eprintln!("rivet: cannot start the runtime: {e}"))
        .ok()
}

fn network(a: NetworkArgs) -> ExitCode {
    rivet::logging::init(rivet::config::LogFormat::Human, false);
    let params = match std::fs::read_to_string(&a.cmdline_file) {
        Ok(t) => rivet::config::cmdline::parse_params(&t),
        Err(e) => {
            eprintln!("rivet: reading {}: {e}", a.cmdline_file.display());
            return ExitCode::from(2);
        }
    };
    let vmedia = params.get("boot_method").is_some_and(|m| m == "vmedia");
    let opts = rivet::network::Options {
        network_data: a.network_data,
        // The CD's driver may load after us; only a vmedia boot has one to wait for.
        vmedia_wait: secs(if vmedia { 30.0 } else { 0.0 }),
        allow_loop_devices: a.allow_loop_devices,
        allow_virtual_nics: a.allow_virtual_nics,
        nic_wait: secs(a.nic_wait),
        run_dir: a.run_dir,
        resolv_conf: a.resolv_conf,
        dhcp_log: a.dhcp_log,
        vlan_interfaces: params
            .get("ipa-enable-vlan-interfaces")
            .filter(|v| !v.trim().is_empty())
            .cloned(),
        lldp_wait: secs(a.lldp_wait),
    };
    let Some(rt) = small_runtime() else {
        return ExitCode::FAILURE;
    };
    match rt.block_on(rivet::network::bring_up(&opts)) {
        Ok(out) => {
            tracing::info!(source = %out.source, configured = ?out.applied, problems = out.problems.len(), "network brought up");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("rivet: network: {e}");
            ExitCode::FAILURE
        }
    }
}

fn network_dhcp6(iface: &str, resolv_conf: &std::path::Path) -> ExitCode {
    rivet::logging::init(rivet::config::LogFormat::Human, false);
    let Some(rt) = small_runtime() else {
        return ExitCode::FAILURE;
    };
    match rt.block_on(rivet::network::dhcp6::run(iface, Some(resolv_conf))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rivet: {e}");
            ExitCode::FAILURE
        }
    }
}

fn network_lease(event: &str) -> ExitCode {
    rivet::logging::init(rivet::config::LogFormat::Human, false);
    let Some(rt) = small_runtime() else {
        return ExitCode::FAILURE;
    };
    // A static network_data's name servers win over a lease's.
    let resolv = std::path::Path::new("/etc/resolv.conf");
    let static_dns = std::fs::read_to_string(resolv)
        .is_ok_and(|t| t.starts_with("# written by rivet from network_data.json"));
    let done = rt.block_on(rivet::network::dhcp::apply_event(
        event,
        |k| std::env::var(k).ok(),
        (!static_dns).then_some(resolv),
    ));
    match done {
        Ok(what) => {
            if event == "bound" {
                rivet::timeline::mark("address");
            }
            // A NIC with no server answers fails a lease every few seconds for as long as the
            // node runs (an untagged port on a VLAN-only network): not worth a console line.
            if matches!(event, "leasefail" | "nak") {
                tracing::debug!("DHCP {what}");
            } else {
                tracing::info!("DHCP {what}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("rivet: DHCP {event}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Where disks are discovered (the defaults are the real system).
#[derive(clap::Args)]
struct SourceArgs {
    /// udev's /dev/disk (by-path links); tests point this at their own tree.
    #[arg(long, hide = true, default_value = "/dev/disk")]
    dev_disk_dir: std::path::PathBuf,
}

impl SourceArgs {
    fn sources(&self) -> disks::Sources {
        disks::Sources {
            dev_disk: self.dev_disk_dir.clone(),
            ..Default::default()
        }
    }
}

fn parse_json(what: &str, s: Option<&str>) -> Result<Option<serde_json::Value>, String> {
    s.map(|s| serde_json::from_str(s).map_err(|e| format!("{what} is not valid JSON: {e}")))
        .transpose()
}

fn root_device(
    hints: Option<&str>,
    skip: Option<&str>,
    strict: bool,
    allow_loop: bool,
    json: bool,
    src: &disks::Sources,
) -> ExitCode {
    let (hints, skip) = match (parse_json("--hints", hints), parse_json("--skip", skip)) {
        (Ok(h), Ok(s)) => (h, s),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("rivet: {e}");
            return ExitCode::from(2);
        }
    };
    let found = disks::discover(src, allow_loop);
    match root_device::choose(&found, hints.as_ref(), skip.as_ref(), strict) {
        Ok(d) if json => {
            println!("{}", serde_json::to_string_pretty(&d).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Ok(d) => {
            println!("{}", d.device.name);
            println!("{}", root_device::render(&d.table));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("rivet: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Cmd::Install(a)) => {
            rivet::logging::init(rivet::config::LogFormat::Human, false);
            match rivet::install::run(&a) {
                Ok(r) => {
                    println!(
                        "installed {} bytes ({}{}), {} {} verified, in {:.1} s",
                        r.bytes_written,
                        r.format,
                        r.compression
                            .map(|c| format!(", {c}-compressed"))
                            .unwrap_or_default(),
                        a.checksum
                            .as_deref()
                            .and_then(|c| c.split_once(':'))
                            .map(|(x, _)| x)
                            .unwrap_or("checksum"),
                        r.checksum,
                        r.seconds
                    );
                    if let Some(st) = &r.shared {
                        println!(
                            "shared: {} bytes from the image server, {} from peers, {} sent to peers, {} peers, {} bad pieces, {} banned",
                            st.origin_bytes,
                            st.peer_bytes,
                            st.uploaded_bytes,
                            st.peers_seen,
                            st.bad_pieces,
                            st.banned
                        );
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("rivet: install failed: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Some(Cmd::Torrent {
            image,
            output,
            piece_kib,
            web_seeds,
        }) => make_torrent(&image, output, piece_kib, &web_seeds),
        Some(Cmd::RootDevice {
            hints,
            skip,
            strict,
            allow_loop_devices,
            json,
            sources,
        }) => root_device(
            hints.as_deref(),
            skip.as_deref(),
            strict,
            allow_loop_devices,
            json,
            &sources.sources(),
        ),
        Some(Cmd::Inventory {
            allow_loop_devices,
            bootif,
            lldp_timeout,
            allow_virtual_nics,
            sources,
        }) => {
            let lldp = lldp_timeout.map(|t| {
                let ifaces: Vec<String> = rivet::hardware::net::interfaces(
                    std::path::Path::new("/sys/class/net"),
                    allow_virtual_nics,
                )
                .into_iter()
                .filter(|i| i.has_carrier)
                .map(|i| i.name)
                .collect();
                let t = if t.is_finite() {
                    t.clamp(0.0, 3600.0)
                } else {
                    0.0
                };
                let timeout = std::time::Duration::from_secs_f64(t);
                let (heard, errors) = rivet::hardware::lldp::capture(&ifaces, timeout);
                for e in errors {
                    eprintln!("rivet: {e}");
                }
                heard
            });
            let inv = inventory::collect(&inventory::Options {
                bootif_raw: bootif,
                allow_loop_devices,
                sources: sources.sources(),
                skip_bmc_detect: false,
                allow_virtual_nics,
                lldp,
            });
            match serde_json::to_string_pretty(&inv) {
                Ok(s) => {
                    println!("{s}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("rivet: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Some(Cmd::Network(a)) => network(a),
        Some(Cmd::NetworkLease { event }) => network_lease(&event),
        Some(Cmd::NetworkDhcp6 { iface, resolv_conf }) => network_dhcp6(&iface, &resolv_conf),
        Some(Cmd::Agent(args)) => run_agent(args),
        None => run_agent(cli.agent),
    }
}

fn run_agent(args: AgentArgs) -> ExitCode {
    let cfg = match Config::load(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("rivet: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    rivet::logging::init(args.log_format, cfg.debug);
    rivet::timeline::mark("agent_start");
    let nofile = rivet::system::fdlimit::raise_nofile();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rivet: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        nofile,
        "rivet starting"
    );
    match rt.block_on(rivet::agent::run(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "agent failed");
            eprintln!("rivet: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `rivet torrent`: hash the image into a torrent beside it.
fn make_torrent(
    image: &std::path::Path,
    output: Option<std::path::PathBuf>,
    piece_kib: Option<u32>,
    web_seeds: &[String],
) -> ExitCode {
    use rivet::image::share::torrent;
    let run = || -> Result<(std::path::PathBuf, rivet::image::share::Torrent), String> {
        let f = std::fs::File::open(image).map_err(|e| format!("{}: {e}", image.display()))?;
        let len = f
            .metadata()
            .map_err(|e| format!("{}: {e}", image.display()))?
            .len();
        let piece = match piece_kib {
            Some(k) => k
                .checked_mul(1024)
                .ok_or_else(|| "--piece-kib is too large".to_string())?,
            None => torrent::default_piece_length(len),
        };
        let name = image
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "image".into());
        let doc = torrent::make(
            std::io::BufReader::with_capacity(1 << 20, f),
            &name,
            piece,
            web_seeds,
        )
        .map_err(|e| format!("{}: {e}", image.display()))?;
        let out = output.unwrap_or_else(|| {
            let mut p = image.as_os_str().to_owned();
            p.push(".torrent");
            p.into()
        });
        std::fs::write(&out, &doc).map_err(|e| format!("{}: {e}", out.display()))?;
        let t = rivet::image::share::Torrent::parse(&doc).map_err(|e| e.to_string())?;
        Ok((out, t))
    };
    match run() {
        Ok((out, t)) => {
            println!(
                "{}: {} bytes, {} pieces of {} KiB, info hash {}",
                out.display(),
                t.length,
                t.piece_count(),
                t.piece_length / 1024,
                t.info_hash_hex()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("rivet: torrent: {e}");
            ExitCode::FAILURE
        }
    }
}
