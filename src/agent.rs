//! The agent's life: configuration → inspection (when asked for) → lookup → (auto-)TLS → API
//! server → heartbeats, until a power action, a lockdown or a signal ends it. This is the top
//! of the layering: it wires the protocol (conductor client, API server) to the executor and
//! acts on system events.
//!
//! Inspection runs before lookup, as in IPA: the conductor only knows the node by the MACs
//! and BMC addresses the inspection data carries. With fast-track the same process then looks
//! the node up (by the UUID inspection returned) and heartbeats through inspection, cleaning
//! and deployment; when the conductor wipes the token between flows, a heartbeat refused for
//! it makes the agent look the node up again for a new one.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{mpsc, watch};

use crate::api::routes::ApiState;
use crate::api::server;
use crate::commands::{Context, SystemEvent};
use crate::conductor::client::{ApiClient, ApiVersion, ClientError};
use crate::conductor::heartbeat::{self, Heartbeat, StatusFn};
use crate::conductor::inspection::{self, Accepted};
use crate::conductor::lookup::{self, LookupError};
use crate::config::{Config, ConfigError};
use crate::executor::{Executor, Status};
use crate::hardware::lldp::RawTlv;
use crate::hardware::{disks, net, root_device};
use crate::inspect;
use crate::state::{AgentToken, Session, StateDir, StateError};
use crate::system::power;
use crate::timeline;
use crate::tls::{self, TlsError};

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
    #[error("cannot work out the address to advertise: {0}")]
    Advertise(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Wait (up to 60 s, like IPA) for a NIC with a MAC address; BOOTIF alone is enough. Polled
/// every 100 ms: a NIC whose driver loads late is used the moment it appears.
async fn lookup_macs(cfg: &Config) -> Vec<String> {
    for _ in 0..600 {
        let macs = net::lookup_macs(
            cfg.bootif.as_deref(),
            &net::interfaces(
                std::path::Path::new("/sys/class/net"),
                cfg.allow_virtual_nics,
            ),
        );
        if !macs.is_empty() {
            return macs;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Vec::new()
}

/// Decide the token: a fresh one from the lookup, else the pregenerated one, else the one this
/// boot's earlier agent process saved.
fn choose_token(
    cfg: &Config,
    lk: &lookup::Lookup,
    saved: Option<Session>,
) -> Result<Option<String>, AgentError> {
    let saved_token = saved
        .filter(|s| s.node_uuid == lk.node_uuid)
        .and_then(|s| s.token);
    match lk.config.get("agent_token") {
        Some(Value::String(t)) if t.len() >= 32 => Ok(Some(t.clone())),
        Some(Value::String(t)) if t == "******" => match cfg.agent_token.clone().or(saved_token) {
            Some(t) => {
                tracing::info!(
                    "the conductor masked the token; using the one this boot already has"
                );
                Ok(Some(t))
            }
            None => Err(AgentError::TokenLost(cfg.state_dir.display().to_string())),
        },
        Some(Value::Null) | None => Ok(cfg.agent_token.clone().or(saved_token)),
        Some(other) => {
            tracing::warn!(value = %other, "the lookup returned an invalid agent token; ignoring it");
            Ok(cfg.agent_token.clone().or(saved_token))
        }
    }
}

/// The IP the conductor can reach us on: `ipa-advertise-host`, else the source address the
/// kernel picks for the route to the API (a connected UDP socket sends nothing).
async fn advertise_ip(cfg: &Config, client: &ApiClient) -> Result<IpAddr, AgentError> {
    if let Some(h) = &cfg.advertise_host {
        if let Ok(ip) = h.trim_matches(['[', ']']).parse::<IpAddr>() {
            return Ok(ip);
        }
        return tokio::net::lookup_host((h.as_str(), 0))
            .await
            .ok()
            .and_then(|mut a| a.next())
            .map(|a| a.ip())
            .ok_or_else(|| {
                AgentError::Advertise(format!("cannot resolve ipa-advertise-host {h}"))
            });
    }
    let mut last = String::from("no API URL");
    // A minute, as before, but retried every second: the route appears when DHCP completes,
    // and nothing is gained by sleeping past that moment.
    for attempt in 0..60 {
        for u in client.urls() {
            let Ok(url) = url::Url::parse(&u) else {
                continue;
            };
            let Some(host) = url.host_str() else { continue };
            let port = url.port_or_known_default().unwrap_or(80);
            let host = host.trim_matches(['[', ']']).to_string();
            let resolved = tokio::net::lookup_host((host.as_str(), port)).await;
            match resolved {
                Ok(addrs) => {
                    for a in addrs {
                        let bind: SocketAddr = if a.is_ipv4() {
                            "0.0.0.0:0".parse().unwrap_or(a)
                        } else {
                            "[::]:0".parse().unwrap_or(a)
                        };
                        let Ok(sock) = std::net::UdpSocket::bind(bind) else {
                            continue;
                        };
                        if sock.connect(a).is_ok() {
                            if let Ok(local) = sock.local_addr() {
                                let ip = local.ip();
                                let link_local = match ip {
                                    IpAddr::V4(v4) => v4.is_link_local(),
                                    IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
                                };
                                if !ip.is_unspecified() && !link_local {
                                    return Ok(ip);
                                }
                            }
                        }
                    }
                    last = format!("no usable route to {host}");
                }
                Err(e) => last = format!("resolving {host}: {e}"),
            }
        }
        if attempt < 59 {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    Err(AgentError::Advertise(last))
}

fn callback_url(https: bool, ip: IpAddr, port: u16) -> String {
    let proto = if https { "https" } else { "http" };
    match ip {
        IpAddr::V6(v6) => format!("{proto}://[{v6}]:{port}"),
        IpAddr::V4(v4) => format!("{proto}://{v4}:{port}"),
    }
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
pub async fn run(mut cfg: Config) -> Result<(), AgentError> {
    for note in &cfg.vmedia_notes {
        tracing::info!("{note}");
    }
    for (name, why) in &cfg.unused_params {
        match why {
            Some(why) => {
                tracing::info!(parameter = %name, reason = why, "kernel parameter not used")
            }
            None => tracing::warn!(parameter = %name, "unknown ipa- kernel parameter; ignored"),
        }
    }
    let state = StateDir::open(&cfg.state_dir)?;
    if state.locked_down() {
        // system.lockdown ran in this boot: stay silent whatever restarted us.
        tracing::warn!("this machine was locked down in this boot: not serving, not heartbeating");
        return idle(&cfg).await;
    }
    // Custom steps are read once: a bad manifest is logged and skipped here, not at the first
    // cleaning.
    cfg.custom_steps =
        crate::config::steps_d::load(&cfg.steps_dir, &crate::commands::steps::builtin_taken);
    if !cfg.hardware_initialization_delay.is_zero() {
        tokio::time::sleep(cfg.hardware_initialization_delay).await;
    }
    // Disks are waited for beside the NIC wait and the lookup, not before them: only the
    // inventory and the commands need disks, and the conductor sends no command before the
    // first heartbeat, which waits for them.
    let (disks_tx, mut disks_ready) = watch::channel(false);
    {
        let (allow, attempts, delay) = (
            cfg.allow_loop_devices,
            cfg.disk_wait_attempts,
            cfg.disk_wait_delay,
        );
        // Arrays a previous deploy built are assembled once the disks are there, so they are
        // root candidates (and their members are not). Never under --simulate-power: a test
        // must not assemble the arrays of the machine it runs on.
        let assemble = !cfg.simulate_power && crate::system::tools::which("mdadm").is_some();
        tokio::task::spawn_blocking(move || {
            root_device::wait_for_disks(&disks::Sources::default(), allow, attempts, delay);
            timeline::mark("disks_found");
            if assemble
                && crate::disk::md::any_member(
                    std::path::Path::new("/sys/block"),
                    std::path::Path::new("/dev"),
                )
            {
                crate::disk::md::assemble_scan();
                timeline::mark("arrays_assembled");
            }
            let _ = disks_tx.send(true);
        });
    }
    // The auto-TLS key is made while the NIC, the network and the conductor are waited for.
    let keygen = (cfg.enable_auto_tls && cfg.tls_cert_file.is_none()).then(|| {
        let curve = cfg.tls_certificate_curve;
        tokio::task::spawn_blocking(move || tls::KeyPair::generate(curve).ok())
    });
    let client = Arc::new(ApiClient::new(&cfg)?);
    let macs = lookup_macs(&cfg).await;
    timeline::mark("nic_found");
    let (inspected, heard) = if cfg.inspection.enabled() {
        // The inventory describes the disks: they must be there first.
        let _ = disks_ready.wait_for(|r| *r).await;
        inspect_once(&cfg, &client, &state).await
    } else {
        (None, None)
    };
    if cfg.api_urls.is_empty() {
        // IPA's inspection-only mode (no fast-track): the conductor powers the node off once
        // it has processed the data. There is no token, so no command could be accepted:
        // nothing is served.
        tracing::info!("no ipa-api-url: no lookup and no heartbeats; waiting to be powered off");
        shutdown_signal().await;
        return Ok(());
    }
    let pinned = cfg.ironic_api_version.map(|(a, b)| ApiVersion(a, b));
    let lk = match inspected {
        Some(Accepted::Node(lk)) => {
            tracing::info!(node = %lk.node_uuid, "the inspection answer carries the node and its token: no lookup needed");
            *lk
        }
        other => {
            let uuid = other.as_ref().map(|a| a.node_uuid().to_string());
            tracing::info!(?macs, node = ?uuid, urls = ?client.urls(), "looking up the node");
            lookup::run(
                &client,
                pinned,
                &macs,
                uuid.as_deref(),
                cfg.lookup_interval,
                cfg.lookup_timeout,
                crate::hardware::net::local_addresses,
            )
            .await?
        }
    };
    cfg.apply_lookup(&lk.config)?;
    let token = choose_token(&cfg, &lk, state.load_session())?;
    if token.is_none() && lk.version >= ApiVersion::AGENT_TOKEN {
        tracing::warn!("no agent token: every command will be refused");
    }
    state.save_session(&Session {
        node_uuid: lk.node_uuid.clone(),
        token: token.clone(),
    })?;
    let token = Arc::new(AgentToken::new(token));

    let ip = advertise_ip(&cfg, &client).await?;
    let identity = match (&cfg.tls_cert_file, &cfg.tls_key_file) {
        (Some(c), Some(k)) => Some(tls::static_identity(c, k)?),
        _ if cfg.enable_auto_tls && lk.version >= ApiVersion::AGENT_VERIFY_CA => {
            let pregenerated = match keygen {
                Some(k) => k.await.ok().flatten(),
                None => None,
            };
            Some(tls::auto_identity(
                &state,
                ip,
                cfg.tls_certificate_curve,
                cfg.auto_tls_allowed_clock_skew,
                pregenerated,
            )?)
        }
        _ => None,
    };
    timeline::mark("tls_identity");
    let server_tls = identity
        .as_ref()
        .map(|id| tls::server_config(id, cfg.tls_min_version))
        .transpose()?;
    let https = identity.is_some() || cfg.advertise_https;
    let callback = callback_url(https, ip, cfg.advertise_port);

    let (mut ctx, mut events) = Context::new(cfg.clone());
    ctx.lldp = heard;
    ctx.set_node(&lk.node);
    let exec = Executor::new(Arc::new(ctx), Some(state.clone()));
    let api_state = Arc::new(ApiState {
        exec: exec.clone(),
        token: token.clone(),
        scheme: if identity.is_some() { "https" } else { "http" },
        client_timeout: cfg.api_client_timeout,
    });
    let listen = match cfg.listen_host {
        Some(h) => SocketAddr::new(h, cfg.listen_port),
        None => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), cfg.listen_port),
    };
    let srv = match server::start(listen, server_tls.clone(), api_state.clone()).await {
        Ok(s) => s,
        Err(e) if cfg.listen_host.is_none() => {
            // No IPv6 in this kernel: fall back to IPv4 like IPA's default.
            tracing::debug!(error = %e, "cannot listen on [::], trying 0.0.0.0");
            let v4 = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), cfg.listen_port);
            server::start(v4, server_tls, api_state)
                .await
                .map_err(|source| AgentError::Listen { addr: v4, source })?
        }
        Err(source) => {
            return Err(AgentError::Listen {
                addr: listen,
                source,
            })
        }
    };
    tracing::info!(listen = %srv.local_addr, %callback, node = %lk.node_uuid, api_version = %lk.version.header(), "agent API serving");
    timeline::mark("api_serving");

    let hb = Heartbeat {
        node_uuid: lk.node_uuid.clone(),
        token: token.clone(),
        callback_url: callback,
        verify_ca: identity
            .as_ref()
            .filter(|i| i.auto)
            .map(|i| i.cert_pem.clone()),
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

/// Inspect once per boot: a restarted agent finds the node this boot's inspection was
/// accepted for in the state directory and goes on to lookup with it.
async fn inspect_once(
    cfg: &Config,
    client: &ApiClient,
    state: &StateDir,
) -> (
    Option<Accepted>,
    Option<std::collections::BTreeMap<String, Vec<RawTlv>>>,
) {
    if let Some(uuid) = state.inspected() {
        tracing::info!(node = %uuid, "this boot was inspected already; not inspecting again");
        return (Some(Accepted::Uuid(uuid)), None);
    }
    let c = cfg.clone();
    let started = std::time::Instant::now();
    let report =
        match tokio::task::spawn_blocking(move || inspect::collect(&c, &inspect::Paths::default()))
            .await
        {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "the inspection collectors crashed");
                return (None, None);
            }
        };
    let body = match serde_json::to_vec(&report.body) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "cannot serialise the inspection data");
            return (None, report.lldp);
        }
    };
    let failed = report.body.get("error").and_then(|e| e.as_str());
    timeline::mark("inventory_collected");
    tracing::info!(collected_in = ?started.elapsed(), bytes = body.len(), error = ?failed,
        "inspection data collected");
    let version = inspection_version(cfg, client).await;
    match inspection::post(
        client,
        &cfg.inspection.urls,
        version,
        &body,
        inspection::retry_wait,
    )
    .await
    {
        Ok(acc) => {
            tracing::info!(node = %acc.node_uuid(), "the conductor accepted the inspection data");
            if let Err(e) = state.save_inspected(acc.node_uuid()) {
                tracing::warn!(error = %e, "cannot record the inspection in the state directory");
            }
            (Some(acc), report.lldp)
        }
        Err(e) => {
            if cfg.api_urls.is_empty() {
                tracing::error!(error = %e, "inspection failed");
            } else {
                tracing::error!(error = %e, "inspection failed; going on with lookup");
            }
            (None, report.lldp)
        }
    }
}

/// Ask Ironic's own endpoint at API 1.84 when it has it and the agent goes on to heartbeat:
/// the answer then carries the node and its token, so no lookup races for the token. A
/// legacy inspector, or an inspection-only boot, gets IPA's plain request.
async fn inspection_version(cfg: &Config, client: &ApiClient) -> Option<ApiVersion> {
    if !cfg.inspection.ironic_endpoint || cfg.api_urls.is_empty() {
        return None;
    }
    if let Some((a, b)) = cfg.ironic_api_version {
        return (ApiVersion(a, b) >= ApiVersion::CONTINUE_INSPECTION)
            .then_some(ApiVersion::CONTINUE_INSPECTION);
    }
    let base = cfg
        .inspection
        .urls
        .first()?
        .trim_end_matches("/v1/continue_inspection");
    match client.discover_version_at(base).await {
        Ok(v) if v >= ApiVersion::CONTINUE_INSPECTION => Some(ApiVersion::CONTINUE_INSPECTION),
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(error = %e, "API version discovery before inspection failed; posting without a version");
            None
        }
    }
}

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
        Ok(new) => match new.config.get("agent_token") {
            Some(Value::String(t)) if t.len() >= 32 && new.node_uuid == lk.node_uuid => {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callback_urls() {
        assert_eq!(
            callback_url(true, "10.0.0.5".parse().unwrap(), 9999),
            "https://10.0.0.5:9999"
        );
        assert_eq!(
            callback_url(false, "fd00::5".parse().unwrap(), 9999),
            "http://[fd00::5]:9999"
        );
    }
}
