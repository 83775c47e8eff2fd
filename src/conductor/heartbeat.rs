//! `POST /v1/heartbeat/{node}`: the conductor's only trigger to look at the agent.
//!
//! The first heartbeat goes out at once, then every U(0.3, 0.6) × heartbeat_timeout (at least
//! 5 s), or 5–10 s after a failure the conductor may get over (no answer, 5xx).
//!
//! When an async command ends, a heartbeat goes out at once, so the conductor moves on without
//! waiting a full interval (IPA waits 5 s first). The conductor handles a heartbeat under the
//! node's lock and silently drops one that arrives while it still holds it (the API answers
//! 202 all the same), so an early heartbeat is followed by others 1, 2 and 4 s later until the
//! conductor reads the command list, which is what it does when it acts on one. A 409 (node
//! locked) is retried after 1 then 2 s before the usual 5–10 s.
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

/// Gaps between the follow-ups of an early heartbeat, while the conductor has not polled.
const FOLLOW_UPS: [Duration; 3] = [
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
];

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
    mut polled: watch::Receiver<u64>,
    mut stop: watch::Receiver<bool>,
    token_refused: tokio::sync::mpsc::UnboundedSender<()>,
) {
    let mut rng = rand::rngs::StdRng::from_entropy();
    let mut next = Instant::now();
    // Follow-ups still due after an early heartbeat (index into FOLLOW_UPS), and when the
    // regular heartbeat after the last accepted one would have gone.
    let mut follow_up: Option<usize> = None;
    let mut regular = Instant::now();
    let mut conflicts = 0usize;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            r = finished.changed() => {
                if r.is_ok() {
                    tracing::debug!("early heartbeat: a command finished");
                    next = Instant::now();
                    follow_up = Some(0);
                    polled.borrow_and_update();
                }
                continue;
            }
            r = polled.changed(), if follow_up.is_some() => {
                if r.is_ok() {
                    // The conductor is reading our commands: it acted on the heartbeat.
                    tracing::debug!("the conductor polled after the early heartbeat");
                    follow_up = None;
                    next = regular.max(Instant::now());
                }
                continue;
            }
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            tracing::info!("heartbeats stopped");
            return;
        }
        crate::timeline::mark("heartbeat_sent");
        let sent = hb.send(&client, status()).await;
        let conflict = matches!(&sent, Err(e) if e.status() == Some(409));
        conflicts = if conflict { conflicts + 1 } else { 0 };
        let d = match (verdict(&sent), sent) {
            (Verdict::Accepted, _) => {
                crate::timeline::mark("heartbeat_accepted");
                let d = heartbeat_interval(hb.timeout, &mut rng);
                regular = Instant::now() + d;
                match follow_up.and_then(|i| FOLLOW_UPS.get(i).map(|g| (i, *g))) {
                    Some((i, gap)) => {
                        follow_up = Some(i + 1);
                        tracing::info!(next_in = ?gap, "heartbeat accepted; again soon unless the conductor polls");
                        gap
                    }
                    None => {
                        follow_up = None;
                        tracing::info!(next_in = ?d, "heartbeat accepted");
                        d
                    }
                }
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
            (_, Err(e)) if conflict && conflicts <= 2 => {
                let d = Duration::from_secs(conflicts as u64);
                tracing::info!(error = %e, retry_in = ?d, "node locked by the conductor; heartbeat again shortly");
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
