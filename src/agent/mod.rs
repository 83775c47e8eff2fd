//! The agent's life: start-up (`startup`: configuration → clock → inspection (when asked
//! for) → lookup → (auto-)TLS → API server), then heartbeats, until a power action, a
//! lockdown or a signal ends it. This is the top
//! of the layering: it wires the protocol (conductor client, API server) to the executor and
//! acts on system events.
//!
//! Inspection runs before lookup, as in IPA: the conductor only knows the node by the MACs
//! and BMC addresses the inspection data carries. With fast-track the same process then looks
//! the node up (by the UUID inspection returned) and heartbeats through inspection, cleaning
//! and deployment; when the conductor wipes the token between flows, a heartbeat refused for
//! it makes the agent look the node up again for a new one.

mod clock;
mod startup;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{mpsc, watch};

use crate::commands::SystemEvent;
use crate::conductor::client::{ApiClient, ClientError};
use crate::conductor::heartbeat::{self, Heartbeat, StatusFn};
use crate::conductor::lookup::{self, LookupError};
use crate::config::{Config, ConfigError};
use crate::executor::{Executor, Status};
use crate::hardware::net;
use crate::state::{AgentToken, Session, StateDir, StateError};
use crate::system::power;
use crate::tls::TlsError;
use startup::{Ended, Started};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Lookup(#[from] LookupError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(
        "the conductor already issued this boot's agent token (lookup answered \"******\") and none is \
         saved in {0}; power-cycle the node through Ironic to get a new one"
    )]
    TokenLost(String),
    #[error("the clock: {0}")]
    Clock(String),
    #[error("cannot work out the address to advertise: {0}")]
    Advertise(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}
/// What the heartbeat reports as agent_status / agent_status_message.
fn status_fn(exec: Arc<Executor>) -> StatusFn {
    Arc::new(move || {
        let last = exec.last()?;
        Some(match last.command_status {
            Status::Running => match crate::panics::lock(&exec.context().progress).clone() {
                Some(p) => (
                    "start",
                    format!("{} running: {}", last.command_name, p.line()),
                ),
                None => ("start", format!("{} running", last.command_name)),
            },
            Status::Succeeded => ("end", format!("{} succeeded", last.command_name)),
            _ => {
                let detail = last
                    .command_error
                    .as_ref()
                    .and_then(|e| e.get("details"))
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .chars()
                    .take(200)
                    .collect::<String>();
                ("error", format!("{} failed: {detail}", last.command_name))
            }
        })
    })
}

/// Run the agent until it is told to stop. Returns when the process should exit 0.
pub async fn run(cfg: Config) -> Result<(), AgentError> {
    let started = match startup::start(cfg.clone()).await? {
        Ok(s) => s,
        Err(Ended::LockedDown) => return idle(&cfg).await,
        Err(Ended::InspectionOnly) => {
            shutdown_signal().await;
            return Ok(());
        }
    };
    let Started {
        cfg,
        client,
        state,
        macs,
        lookup: lk,
        token,
        exec,
        mut events,
        server: srv,
        callback,
        verify_ca,
        mut disks_ready,
    } = started;
    let hb = Heartbeat {
        node_uuid: lk.node_uuid.clone(),
        token: token.clone(),
        callback_url: callback,
        verify_ca,
        version: lk.version,
        timeout: cfg.heartbeat_timeout,
    };
    if !*disks_ready.borrow() {
        tracing::info!("waiting for the disks before the first heartbeat");
    }
    let _ = disks_ready.wait_for(|r| *r).await;
    let (stop_hb, stop_rx) = watch::channel(false);
    let (refused_tx, mut refused) = mpsc::unbounded_channel();
    let hb_task = {
        let (client, exec) = (client.clone(), exec.clone());
        tokio::spawn(supervised("heartbeat loop", move || {
            heartbeat::run(
                client.clone(),
                hb.clone(),
                status_fn(exec.clone()),
                exec.finished(),
                exec.polled(),
                stop_rx.clone(),
                refused_tx.clone(),
            )
        }))
    };

    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let mut last_relookup: Option<tokio::time::Instant> = None;
    let event = loop {
        tokio::select! {
            ev = events.recv() => break ev,
            _ = &mut shutdown => break None,
            Some(()) = refused.recv() => {
                while refused.try_recv().is_ok() {}
                // At most one lookup a minute: a conductor that keeps someone else's token
                // must not be hammered.
                if last_relookup.is_some_and(|t| t.elapsed() < RELOOKUP_GAP) {
                    continue;
                }
                last_relookup = Some(tokio::time::Instant::now());
                relookup(&cfg, &client, &macs, &lk, &token, &state).await;
            }
        }
    };
    let _ = stop_hb.send(true);
    let _ = hb_task.await;
    // Let the answer to the command that asked for this reach the conductor first.
    tokio::time::sleep(Duration::from_millis(500)).await;
    srv.shutdown().await;
    match event {
        None => tracing::info!("signal received, exiting"),
        Some(ev) => {
            if ev == SystemEvent::Lockdown {
                if let Err(e) = state.save_lockdown() {
                    tracing::error!(error = %e, "cannot record the lockdown");
                }
            }
            act(&cfg, ev).await
        }
    }
    Ok(())
}

/// Run the task `make` builds until it returns; if it panics (a bug), log it and start it
/// again a second later. Without its heartbeats the conductor would declare a working agent
/// dead and fail the deploy.
async fn supervised<F, Fut>(name: &'static str, make: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        match tokio::spawn(make()).await {
            Err(e) if e.is_panic() => {
                tracing::error!(task = name, "task panicked (a bug); starting it again");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            _ => return,
        }
    }
}

/// Stay up doing nothing: until a signal with `--simulate-power`, for good otherwise (a
/// supervisor would only start the agent again).
async fn idle(cfg: &Config) -> Result<(), AgentError> {
    if cfg.simulate_power {
        shutdown_signal().await;
        return Ok(());
    }
    loop {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}

/// Least time between two lookups made because heartbeats were refused for their token.
const RELOOKUP_GAP: Duration = Duration::from_secs(60);

/// The conductor refused our token (it wipes it between fast-track flows, or lost it): look
/// the node up again and take the new token it issues.
async fn relookup(
    cfg: &Config,
    client: &ApiClient,
    macs: &[String],
    lk: &lookup::Lookup,
    token: &AgentToken,
    state: &StateDir,
) {
    let found = lookup::run(
        client,
        Some(lk.version),
        macs,
        Some(&lk.node_uuid),
        cfg.lookup_interval,
        cfg.lookup_timeout.min(RELOOKUP_GAP),
        crate::hardware::net::local_addresses,
    )
    .await;
    match found {
        // Another node's answer (a conductor or API that mixed nodes up, or a MAC moved to
        // another node's port): its token and node are not ours to take.
        Ok(new) if new.node_uuid != lk.node_uuid => tracing::error!(
            node = %lk.node_uuid,
            answered = %new.node_uuid,
            "the lookup answered for another node: refused; this agent keeps its node and token"
        ),
        Ok(new) => match new.config.get("agent_token") {
            Some(Value::String(t)) if t.len() >= 32 => {
                token.set(Some(t.clone()));
                if let Err(e) = state.save_session(&Session {
                    node_uuid: new.node_uuid.clone(),
                    token: Some(t.clone()),
                }) {
                    tracing::warn!(error = %e, "cannot save the new agent token");
                }
                tracing::info!(node = %new.node_uuid, "the conductor issued a new agent token");
            }
            _ => tracing::error!(
                node = %new.node_uuid,
                "the conductor holds an agent token this agent does not have; power-cycle the node through Ironic"
            ),
        },
        Err(e) => tracing::warn!(error = %e, "looking the node up for a new token failed"),
    }
}

async fn act(cfg: &Config, ev: SystemEvent) {
    if ev == SystemEvent::Rescue {
        // The owner logs in to this ramdisk now; the agent has nothing more to do. Staying
        // alive keeps a supervisor from restarting it into a new lookup.
        tracing::info!("rescue mode: the agent is idle");
        if cfg.simulate_power {
            return;
        }
        loop {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
    }
    let real = power::decide(cfg) == power::Action::Machine;
    tracing::info!(?ev, real, "system event");
    if !real {
        return;
    }
    match ev {
        SystemEvent::PowerOff | SystemEvent::Reboot => {
            clock::before_power_action(cfg).await;
            let err = power::machine(ev == SystemEvent::Reboot);
            tracing::error!(error = %err, "power action failed");
        }
        SystemEvent::Rescue => {}
        SystemEvent::Lockdown => {
            // Take the NICs down so nothing can reach this machine, then idle for good.
            for i in net::interfaces(
                std::path::Path::new("/sys/class/net"),
                cfg.allow_virtual_nics,
            ) {
                let _ = crate::system::tools::run_capture(
                    "ip",
                    &["link", "set", &i.name, "down"],
                    Duration::from_secs(10),
                    4096,
                );
            }
            loop {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::select! {
                _ = t.recv() => {}
                _ = i.recv() => {}
            }
        }
        _ => std::future::pending::<()>().await,
    }
}
