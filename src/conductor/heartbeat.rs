//! `POST /v1/heartbeat/{node}`: the conductor's only trigger to look at the agent.
//!
//! The first heartbeat goes out at once, then every U(0.3, 0.6) × heartbeat_timeout (at least
//! 5 s), or 5–10 s after a failure the conductor may get over (no answer, 5xx, 409 locked).
//! When an async command ends, an early heartbeat goes out as soon as 5 s have passed since
//! the previous one, so the conductor moves on without waiting a full interval.
//!
//! A refusal is not a failure to hurry after: a heartbeat refused for its token (the conductor
//! wiped it, as it does between fast-track flows) is reported to the agent, which looks the
//! node up again for a new one; any other 4xx (a node in a state that takes no heartbeat) is
//! logged and the next heartbeat waits its normal interval.

use std::sync::Arc;
use std::time::Duration;

use rand::SeedableRng;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::time::Instant;

use super::backoff::{heartbeat_interval, heartbeat_retry};
use super::client::{ironic_faultstring, ApiClient, ApiVersion, ClientError};
use crate::state::AgentToken;

/// Minimum gap before an early heartbeat.
pub const EARLY_GAP: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct Heartbeat {
    pub node_uuid: String,
    pub token: Arc<AgentToken>,
    pub callback_url: String,
    /// PEM of our auto-TLS certificate, sent as `agent_verify_ca`.
    pub verify_ca: Option<String>,
    pub version: ApiVersion,
    pub timeout: Duration,
}

/// (agent_status, agent_status_message), e.g. ("start", "execute_deploy_step: 40% …").
pub type StatusFn = Arc<dyn Fn() -> Option<(&'static str, String)> + Send + Sync>;

impl Heartbeat {
    /// The body, with each field only at the microversion that allows it (a field the API does
    /// not know at our version is a 400).
    pub fn body(&self, status: Option<(&'static str, String)>) -> (ApiVersion, Value) {
        let v = self.version.min(ApiVersion::AGENT_STATUS);
        let mut b = json!({ "callback_url": self.callback_url });
        if v >= ApiVersion(1, 36) {
            b["agent_version"] = json!(super::agent_version());
        }
        if v >= ApiVersion::AGENT_TOKEN {
            b["agent_token"] = json!(self.token.get());
        }
        if v >= ApiVersion::AGENT_VERIFY_CA {
            if let Some(ca) = &self.verify_ca {
                b["agent_verify_ca"] = json!(ca);
            }
        }
        if v >= ApiVersion::AGENT_STATUS {
            if let Some((s, msg)) = status {
                b["agent_status"] = json!(s);
                b["agent_status_message"] = json!(msg);
            }
        }
        (v, b)
    }

    pub async fn send(
        &self,
        client: &ApiClient,
        status: Option<(&'static str, String)>,
    ) -> Result<(), ClientError> {
        let (v, body) = self.body(status);
        let path = format!("/v1/heartbeat/{}", self.node_uuid);
        let (code, resp) = client.request("POST", &path, Some(v), Some(&body)).await?;
        if (200..300).contains(&code) {
            Ok(())
        } else {
            Err(ClientError::Status {
                method: "POST",
                path,
                status: code,
                faultstring: ironic_faultstring(&resp),
            })
        }
    }
}

/// How the conductor took a heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Accepted,
    /// Refused for its agent token: only a new lookup can help.
    TokenRefused,
    /// Refused for another reason the agent cannot change (4xx).
    Refused,
    /// Not answered, 5xx or 409: try again soon.
    Failed,
}

pub fn verdict(r: &Result<(), ClientError>) -> Verdict {
    match r {
        Ok(()) => Verdict::Accepted,
        Err(ClientError::Status {
            status,
            faultstring,
            ..
        }) if (400..500).contains(status) && *status != 409 => {
            if faultstring.to_ascii_lowercase().contains("token") {
                Verdict::TokenRefused
            } else {
                Verdict::Refused
            }
        }
        Err(_) => Verdict::Failed,
    }
}

/// Heartbeat until `stop` turns true. A token refusal is sent on `token_refused`.
pub async fn run(
    client: Arc<ApiClient>,
    hb: Heartbeat,
    status: StatusFn,
    mut finished: watch::Receiver<u64>,
    mut stop: watch::Receiver<bool>,
    token_refused: tokio::sync::mpsc::UnboundedSender<()>,
) {
    let mut rng = rand::rngs::StdRng::from_entropy();
    let mut next = Instant::now();
    let mut last_sent: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            r = finished.changed() => {
                if r.is_ok() {
                    let early = last_sent.map_or(Instant::now(), |t| t + EARLY_GAP).max(Instant::now());
                    if early < next {
                        tracing::debug!(in_ = ?early.saturating_duration_since(Instant::now()), "early heartbeat after a command finished");
                        next = early;
                    }
                }
                continue;
            }
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            tracing::info!("heartbeats stopped");
            return;
        }
        last_sent = Some(Instant::now());
        let sent = hb.send(&client, status()).await;
        let d = match (verdict(&sent), sent) {
            (Verdict::Accepted, _) => {
                let d = heartbeat_interval(hb.timeout, &mut rng);
                tracing::info!(next_in = ?d, "heartbeat accepted");
                d
            }
            (Verdict::TokenRefused, Err(e)) => {
                let d = heartbeat_retry(&mut rng);
                tracing::warn!(error = %e, retry_in = ?d, "heartbeat refused for its token; looking the node up again");
                let _ = token_refused.send(());
                d
            }
            (Verdict::Refused, Err(e)) => {
                let d = heartbeat_interval(hb.timeout, &mut rng);
                tracing::warn!(error = %e, next_in = ?d, "heartbeat refused");
                d
            }
            (_, Err(e)) => {
                let d = heartbeat_retry(&mut rng);
                tracing::warn!(error = %e, retry_in = ?d, "heartbeat failed");
                d
            }
            (_, Ok(())) => heartbeat_retry(&mut rng),
        };
        next = Instant::now() + d;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hb(version: ApiVersion) -> Heartbeat {
        Heartbeat {
            node_uuid: "n".into(),
            token: Arc::new(AgentToken::new(Some("t".repeat(43)))),
            callback_url: "https://10.0.0.5:9999".into(),
            verify_ca: Some("PEM".into()),
            version,
            timeout: Duration::from_secs(300),
        }
    }

    #[test]
    fn refusals_are_told_apart() {
        let status = |status, f: &str| {
            Err(ClientError::Status {
                method: "POST",
                path: "/v1/heartbeat/n".into(),
                status,
                faultstring: f.into(),
            })
        };
        assert_eq!(verdict(&Ok(())), Verdict::Accepted);
        assert_eq!(
            verdict(&status(400, "Invalid or missing agent token received.")),
            Verdict::TokenRefused
        );
        assert_eq!(
            verdict(&status(
                400,
                "Detected change in ramdisk provided \"callback_url\""
            )),
            Verdict::Refused
        );
        assert_eq!(verdict(&status(409, "Node n is locked")), Verdict::Failed);
        assert_eq!(verdict(&status(503, "down")), Verdict::Failed);
        assert_eq!(
            verdict(&Err(ClientError::Unreachable {
                urls: "x".into(),
                detail: "refused".into()
            })),
            Verdict::Failed
        );
    }

    #[test]
    fn body_fields_follow_microversions() {
        let (v, b) = hb(ApiVersion(1, 115)).body(Some(("start", "x".into())));
        assert_eq!(v, ApiVersion(1, 72));
        for k in [
            "callback_url",
            "agent_token",
            "agent_version",
            "agent_verify_ca",
            "agent_status",
            "agent_status_message",
        ] {
            assert!(b.get(k).is_some(), "{k} missing in {b}");
        }
        let (v, b) = hb(ApiVersion(1, 68)).body(Some(("start", "x".into())));
        assert_eq!(v, ApiVersion(1, 68));
        assert!(b.get("agent_status").is_none() && b.get("agent_verify_ca").is_some());
        let (_, b) = hb(ApiVersion(1, 62)).body(None);
        assert!(b.get("agent_verify_ca").is_none() && b.get("agent_token").is_some());
        let (_, b) = hb(ApiVersion(1, 31)).body(None);
        assert!(b.get("agent_token").is_none() && b.get("agent_version").is_none());
    }
}
