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
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("rivet: install failed: {e}");
                    ExitCode::FAILURE
                }
            }
        }
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
