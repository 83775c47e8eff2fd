//! The `rivet` binary: the agent (default), plus operator subcommands.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use rivet::config::{AgentArgs, Config};
use rivet::hardware::inventory;

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
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Cmd::Inventory {
            allow_loop_devices,
            bootif,
        }) => {
            let inv = inventory::collect(&inventory::Options {
                bootif_raw: bootif,
                allow_loop_devices,
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
    tracing::info!(version = env!("CARGO_PKG_VERSION"), "rivet starting");
    match rt.block_on(rivet::agent::run(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "agent failed");
            eprintln!("rivet: {e}");
            ExitCode::FAILURE
        }
    }
}
