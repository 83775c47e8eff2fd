//! Start-up, as named phases, from the configuration to the first heartbeat:
//!
//! 1. `announce`: what the configuration left unused, said once;
//! 2. `guard`: a machine locked down in this boot stays silent;
//! 3. `custom_steps`: the operator's step manifests, read once;
//! 4. `disks_in_background`: disks (and arrays) waited for beside everything else;
//! 5. `nics`: a NIC with a MAC (the network itself is `rivet network`'s, run by the ramdisk);
//! 6. `clock`: `ipa-ntp-server`, before anything verifies a certificate;
//! 7. `inspect`: when asked for, before lookup (the conductor knows the node by its data);
//! 8. `identify`: lookup (or the inspection's answer), the token;
//! 9. `advertise` and `tls_identity`: the address the conductor calls back, the certificate;
//! 10. `serve`: the agent API.
//!
//! [`start`] runs them in order; the heartbeat loop (the caller's) begins after the last.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;

use super::{clock, AgentError};
use crate::api::routes::ApiState;
use crate::api::server::{self, Server};
use crate::commands::{Context, SystemEvent};
use crate::conductor::client::{ApiClient, ApiVersion};
use crate::conductor::inspection::{self, Accepted};
use crate::conductor::lookup;
use crate::config::Config;
use crate::executor::Executor;
use crate::hardware::lldp::RawTlv;
use crate::hardware::{disks, net, root_device};
use crate::inspect;
use crate::state::{AgentToken, Session, StateDir};
use crate::timeline;
use crate::tls;

/// What start-up hands the heartbeat loop.
pub(super) struct Started {
    pub cfg: Config,
    pub client: Arc<ApiClient>,
    pub state: StateDir,
    pub macs: Vec<String>,
    pub lookup: lookup::Lookup,
    pub token: Arc<AgentToken>,
    pub exec: Arc<Executor>,
    pub events: tokio::sync::mpsc::UnboundedReceiver<SystemEvent>,
    pub server: Server,
    pub callback: String,
    /// The auto-TLS certificate the conductor is to trust (sent with heartbeats).
    pub verify_ca: Option<String>,
    pub disks_ready: watch::Receiver<bool>,
}

/// Why start-up ended without an agent to run (not an error).
pub(super) enum Ended {
    /// Locked down in this boot: stay silent.
    LockedDown,
    /// Inspection only (no `ipa-api-url`): nothing to serve; wait to be powered off.
    InspectionOnly,
}

/// Phase 1: parameters that were not used, by name (never by value).
fn announce(cfg: &Config) {
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
}

/// Phase 4: disks are waited for beside the NIC wait and the lookup, not before them: only
/// the inventory and the commands need disks, and the conductor sends no command before the
/// first heartbeat, which waits for them.
fn disks_in_background(cfg: &Config) -> watch::Receiver<bool> {
    let (disks_tx, disks_ready) = watch::channel(false);
    let (allow, attempts, delay) = (
        cfg.allow_loop_devices,
        cfg.disk_wait_attempts,
        cfg.disk_wait_delay,
    );
    // Arrays a previous deploy built are assembled once the disks are there, so they are
    // root candidates (and their members are not). Never under --simulate-power: a test
    // must not assemble the arrays of the machine it runs on.
    let assemble = !cfg.simulate_power && crate::system::tools::which("mdadm").is_some();
    // Multipath maps, as IPA makes them at start-up; not under --simulate-power either.
    let multipath = !cfg.simulate_power;
    tokio::task::spawn_blocking(move || {
        root_device::wait_for_disks(&disks::Sources::default(), allow, attempts, delay);
        timeline::mark("disks_found");
        if multipath && crate::system::multipath::enable() {
            timeline::mark("multipath");
        }
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
    disks_ready
}

/// Phase 5: wait (up to 60 s, like IPA) for a NIC with a MAC address; BOOTIF alone is
/// enough. Polled every 100 ms: a NIC whose driver loads late is used the moment it appears.
async fn nics(cfg: &Config) -> Vec<String> {
    for _ in 0..600 {
        let macs = net::lookup_macs(
            cfg.bootif.as_deref(),
            &net::interfaces(
                std::path::Path::new("/sys/class/net"),
                cfg.allow_virtual_nics,
            ),
        );
        if !macs.is_empty() {
            timeline::mark("nic_found");
            return macs;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    timeline::mark("nic_found");
    Vec::new()
}

/// Phase 8: the node and its token: from the inspection's answer when it carried them,
/// else by lookup.
async fn identify(
    cfg: &mut Config,
    client: &ApiClient,
    state: &StateDir,
    inspected: Option<Accepted>,
    macs: &[String],
) -> Result<(lookup::Lookup, Arc<AgentToken>), AgentError> {
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
                client,
                pinned,
                macs,
                uuid.as_deref(),
                cfg.lookup_interval,
                cfg.lookup_timeout,
                crate::hardware::net::local_addresses,
            )
            .await?
        }
    };
    cfg.apply_lookup(&lk.config)?;
    let token = choose_token(cfg, &lk, state.load_session())?;
    if token.is_none() && lk.version >= ApiVersion::AGENT_TOKEN {
        tracing::warn!("no agent token: every command will be refused");
    }
    state.save_session(&Session {
        node_uuid: lk.node_uuid.clone(),
        token: token.clone(),
    })?;
    Ok((lk, Arc::new(AgentToken::new(token))))
}

/// Phase 9b: the certificate the API serves: the operator's, else one made for the
/// advertised address when the conductor can be told to trust it.
async fn tls_identity(
    cfg: &Config,
    state: &StateDir,
    lk: &lookup::Lookup,
    ip: IpAddr,
    keygen: Option<tokio::task::JoinHandle<Option<tls::KeyPair>>>,
) -> Result<Option<tls::Identity>, AgentError> {
    let identity = match (&cfg.tls_cert_file, &cfg.tls_key_file) {
        (Some(c), Some(k)) => Some(tls::static_identity(c, k)?),
        _ if cfg.enable_auto_tls && lk.version >= ApiVersion::AGENT_VERIFY_CA => {
            let pregenerated = match keygen {
                Some(k) => k.await.ok().flatten(),
                None => None,
            };
            Some(tls::auto_identity(
                state,
                ip,
                cfg.tls_certificate_curve,
                cfg.auto_tls_allowed_clock_skew,
                pregenerated,
            )?)
        }
        _ => None,
    };
    timeline::mark("tls_identity");
    Ok(identity)
}

/// Phase 10: the agent API, on `[::]` (IPv4 too) unless told where; IPv4 alone when the
/// kernel has no IPv6.
async fn serve(
    cfg: &Config,
    identity: Option<&tls::Identity>,
    api_state: Arc<ApiState>,
) -> Result<Server, AgentError> {
    let server_tls = identity
        .map(|id| tls::server_config(id, cfg.tls_min_version))
        .transpose()?;
    let listen = match cfg.listen_host {
        Some(h) => SocketAddr::new(h, cfg.listen_port),
        None => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), cfg.listen_port),
    };
    let srv = match server::start(listen, server_tls.clone(), api_state.clone()).await {
        Ok(s) => s,
        Err(e) if cfg.listen_host.is_none() => {
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
    timeline::mark("api_serving");
    Ok(srv)
}

/// Every phase, in order. `Ok(Err(ended))` when there is no agent to run.
pub(super) async fn start(mut cfg: Config) -> Result<Result<Started, Ended>, AgentError> {
    announce(&cfg);
    // Phase 2.
    let state = StateDir::open(&cfg.state_dir)?;
    if state.locked_down() {
        // system.lockdown ran in this boot: stay silent whatever restarted us.
        tracing::warn!("this machine was locked down in this boot: not serving, not heartbeating");
        return Ok(Err(Ended::LockedDown));
    }
    // Phase 3: a bad manifest is logged and skipped here, not at the first cleaning.
    cfg.custom_steps =
        crate::config::steps_d::load(&cfg.steps_dir, &crate::commands::steps::builtin_taken);
    if !cfg.hardware_initialization_delay.is_zero() {
        tokio::time::sleep(cfg.hardware_initialization_delay).await;
    }
    let mut disks_ready = disks_in_background(&cfg);
    // The auto-TLS key is made while the NIC, the network and the conductor are waited for.
    let keygen = (cfg.enable_auto_tls && cfg.tls_cert_file.is_none()).then(|| {
        let curve = cfg.tls_certificate_curve;
        tokio::task::spawn_blocking(move || tls::KeyPair::generate(curve).ok())
    });
    let client = Arc::new(ApiClient::new(&cfg)?);
    let macs = nics(&cfg).await;
    clock::set_at_start(&cfg).await?;
    // Phase 7.
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
        return Ok(Err(Ended::InspectionOnly));
    }
    let (lk, token) = identify(&mut cfg, &client, &state, inspected, &macs).await?;
    let ip = advertise_ip(&cfg, &client).await?;
    let identity = tls_identity(&cfg, &state, &lk, ip, keygen).await?;
    let https = identity.is_some() || cfg.advertise_https;
    let callback = callback_url(https, ip, cfg.advertise_port);

    let (mut ctx, events) = Context::new(cfg.clone());
    ctx.lldp = heard;
    ctx.set_node(&lk.node);
    let exec = Executor::new(Arc::new(ctx), Some(state.clone()));
    let api_state = Arc::new(ApiState {
        exec: exec.clone(),
        token: token.clone(),
        scheme: if identity.is_some() { "https" } else { "http" },
        client_timeout: cfg.api_client_timeout,
    });
    let srv = serve(&cfg, identity.as_ref(), api_state).await?;
    tracing::info!(listen = %srv.local_addr, %callback, node = %lk.node_uuid, api_version = %lk.version.header(), "agent API serving");
    Ok(Ok(Started {
        verify_ca: identity
            .as_ref()
            .filter(|i| i.auto)
            .map(|i| i.cert_pem.clone()),
        cfg,
        client,
        state,
        macs,
        lookup: lk,
        token,
        exec,
        events,
        server: srv,
        callback,
        disks_ready,
    }))
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
