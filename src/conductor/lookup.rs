//! `GET /v1/lookup`: find our node by MAC address, with IPA's retry policy (random exponential
//! backoff from `ipa-lookup-interval` up to 60 s, extra pauses after 409, give up after
//! `ipa-lookup-timeout`).

use std::time::{Duration, Instant};

use serde_json::Value;

use super::backoff::{conflict_pause, lookup_delay};
use super::client::{ironic_faultstring, ApiClient, ApiVersion, ClientError};

#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("lookup of {macs} gave no node within {timeout:?}; last error: {last}")]
    Timeout {
        macs: String,
        timeout: Duration,
        last: String,
    },
    #[error("no network interface with a MAC address to look the node up with")]
    NoMacs,
}

#[derive(Debug, Clone)]
pub struct Lookup {
    pub node: Value,
    pub node_uuid: String,
    pub config: Value,
    pub version: ApiVersion,
}

/// One attempt; `Ok(None)` is "try again" with the reason logged.
async fn attempt(
    client: &ApiClient,
    version: ApiVersion,
    macs: &str,
    node_uuid: Option<&str>,
) -> Result<Lookup, ClientError> {
    crate::timeline::mark("lookup_sent");
    let mut path = format!("/v1/lookup?addresses={macs}");
    if let Some(u) = node_uuid {
        // The UUID inspection returned: the conductor then finds the node even if its ports
        // are not (yet) the MACs we send. Only UUID characters go into the query.
        if u.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            path.push_str(&format!("&node_uuid={u}"));
        }
    }
    let v = version.min(ApiVersion::AGENT_TOKEN);
    let (status, body) = client.request("GET", &path, Some(v), None).await?;
    if status != 200 {
        return Err(ClientError::Status {
            method: "GET",
            path,
            status,
            faultstring: ironic_faultstring(&body),
        });
    }
    let bad = |d: &str| ClientError::BadBody {
        path: path.clone(),
        detail: d.to_string(),
    };
    let doc: Value = serde_json::from_slice(&body).map_err(|e| bad(&e.to_string()))?;
    from_answer(doc, version).map_err(|d| bad(&d.to_string()))
}

/// What is wrong with a lookup answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    #[error("no node.uuid")]
    NoNodeUuid,
}

/// A lookup answer (also what `continue_inspection` answers at API 1.84+): the node, its
/// UUID and the agent's config.
pub fn from_answer(doc: Value, version: ApiVersion) -> Result<Lookup, AnswerError> {
    let uuid = doc
        .pointer("/node/uuid")
        .and_then(Value::as_str)
        .ok_or(AnswerError::NoNodeUuid)?
        .to_string();
    // Old APIs put heartbeat_timeout at the top level; fold it into config.
    let mut config = doc
        .get("config")
        .cloned()
        .unwrap_or(Value::Object(Default::default()));
    if config.get("heartbeat_timeout").is_none() {
        if let (Some(t), Some(obj)) = (doc.get("heartbeat_timeout"), config.as_object_mut()) {
            obj.insert("heartbeat_timeout".into(), t.clone());
        }
    }
    Ok(Lookup {
        node: doc.get("node").cloned().unwrap_or(Value::Null),
        node_uuid: uuid,
        config,
        version,
    })
}

/// Sleep up to `max`, ending early when the machine's addresses differ from `before` (DHCP
/// completed on some NIC: the conductor may be reachable now).
async fn wait_for_address_change(
    addresses: fn() -> Vec<std::net::IpAddr>,
    before: &[std::net::IpAddr],
    max: Duration,
) {
    let end = Instant::now() + max;
    while Instant::now() < end {
        tokio::time::sleep(
            Duration::from_millis(100).min(end.saturating_duration_since(Instant::now())),
        )
        .await;
        if addresses() != before {
            tracing::info!("an address changed: trying the conductor again now");
            return;
        }
    }
}

/// Retry discovery and lookup until a node is found or the time is up.
pub async fn run(
    client: &ApiClient,
    pinned: Option<ApiVersion>,
    macs: &[String],
    node_uuid: Option<&str>,
    interval: Duration,
    timeout: Duration,
    addresses: fn() -> Vec<std::net::IpAddr>,
) -> Result<Lookup, LookupError> {
    if macs.is_empty() {
        return Err(LookupError::NoMacs);
    }
    let joined = macs.join(",");
    let start = Instant::now();
    let mut version = pinned;
    let mut attempts = 0u32;
    let mut conflicts = 0u32;
    let mut rng = rand::thread_rng();
    loop {
        attempts += 1;
        let mut extra = Duration::ZERO;
        let before = addresses();
        // Set when the conductor could not be reached at all: the network may still be coming
        // up, so the next try comes at the shortest interval or when an address changes,
        // never after a growing back-off.
        let unreachable;
        let err: String = match version {
            None => match client.discover_version().await {
                Ok(v) => {
                    tracing::info!(version = %v.header(), "Ironic API version discovered");
                    version = Some(v);
                    // Discovery is not a lookup attempt; do not grow the backoff for it.
                    attempts -= 1;
                    continue;
                }
                Err(e) => {
                    unreachable = matches!(e, ClientError::Unreachable { .. });
                    format!("API version discovery: {e}")
                }
            },
            Some(v) => match attempt(client, v, &joined, node_uuid).await {
                Ok(found) => {
                    crate::timeline::mark("lookup_answered");
                    tracing::info!(node = %found.node_uuid, attempts, "lookup succeeded");
                    return Ok(found);
                }
                Err(e) => {
                    unreachable = matches!(e, ClientError::Unreachable { .. });
                    if e.status() == Some(409) {
                        conflicts += 1;
                        extra = conflict_pause(conflicts);
                    }
                    e.to_string()
                }
            },
        };
        let delay = if unreachable {
            attempts -= 1;
            interval
        } else {
            lookup_delay(attempts, interval, &mut rng) + extra
        };
        if start.elapsed() + delay > timeout {
            return Err(LookupError::Timeout {
                macs: joined,
                timeout,
                last: err,
            });
        }
        tracing::warn!(error = %err, retry_in = ?delay, "lookup failed, retrying");
        if unreachable {
            wait_for_address_change(addresses, &before, delay).await;
        } else {
            tokio::time::sleep(delay).await;
        }
    }
}
