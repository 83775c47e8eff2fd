//! `POST /v1/continue_inspection`: hand the inspection data to the conductor, with IPA's
//! retry policy: every URL in order on connection errors, and up to five attempts in all
//! when nothing answered, or the answer was 5xx or 409 (node locked), waiting
//! 5, 5, 6 and 12 s between them (tenacity's exponential wait, ×1.5, from 5 to 30 s).
//!
//! Ironic answers `202 {"uuid": …}`; asked at API 1.84 or later it answers with the node and
//! its config (the agent token) like a lookup, which saves the agent a lookup and the race
//! for the token. The body can hold megabytes of logs: it is serialised once and sent as is.

use std::time::Duration;

use serde_json::Value;

use super::client::{ironic_faultstring, ApiClient, ApiVersion, ClientError};
use super::lookup::{self, Lookup};

pub const ATTEMPTS: u32 = 5;

/// Wait after the n-th failed attempt (1-based).
pub fn retry_wait(n: u32) -> Duration {
    let secs = 1.5 * 2f64.powi(n.saturating_sub(1).min(16) as i32);
    Duration::from_secs_f64(secs.clamp(5.0, 30.0))
}

#[derive(Debug, thiserror::Error)]
pub enum InspectionError {
    #[error("posting the inspection data failed after {attempts} attempts: {last}")]
    GaveUp { attempts: u32, last: String },
    #[error("the conductor refused the inspection data: {0}")]
    Refused(ClientError),
    #[error("the conductor's answer to the inspection data is not what Ironic sends: {0}")]
    BadAnswer(String),
}

impl InspectionError {
    /// The HTTP status the conductor refused with, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            InspectionError::Refused(e) => e.status(),
            _ => None,
        }
    }
}

/// What the conductor told us.
#[derive(Debug, Clone)]
pub enum Accepted {
    /// `{"uuid": …}`: look the node up with this UUID.
    Uuid(String),
    /// The node and its config, as a lookup would have answered.
    Node(Box<Lookup>),
}

impl Accepted {
    pub fn node_uuid(&self) -> &str {
        match self {
            Accepted::Uuid(u) => u,
            Accepted::Node(l) => &l.node_uuid,
        }
    }
}

fn parse_answer(body: &[u8], version: Option<ApiVersion>) -> Result<Accepted, InspectionError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| InspectionError::BadAnswer(format!("not JSON: {e}")))?;
    if let (Some(version), true) = (version, v.get("node").is_some()) {
        return lookup::from_answer(v, version)
            .map(|l| Accepted::Node(Box::new(l)))
            .map_err(|e| InspectionError::BadAnswer(e.to_string()));
    }
    match v.get("uuid").and_then(Value::as_str) {
        Some(u) if !u.is_empty() => Ok(Accepted::Uuid(u.to_string())),
        _ => Err(InspectionError::BadAnswer(format!(
            "no uuid in {}",
            v.to_string().chars().take(200).collect::<String>()
        ))),
    }
}

/// Post `body` (JSON) to the first of `urls` that answers; retry as IPA does.
pub async fn post(
    client: &ApiClient,
    urls: &[String],
    version: Option<ApiVersion>,
    body: &[u8],
    wait: impl Fn(u32) -> Duration,
) -> Result<Accepted, InspectionError> {
    let mut last = String::from("no callback URL");
    for attempt in 1..=ATTEMPTS {
        let mut answer = None;
        for url in urls {
            tracing::info!(%url, bytes = body.len(), attempt, "posting the inspection data");
            match client.post_to(url, version, body).await {
                Ok(a) => {
                    answer = Some((url, a));
                    break;
                }
                Err(e) => {
                    tracing::warn!(%url, error = %e, "inspection callback unreachable");
                    last = e.to_string();
                }
            }
        }
        if let Some((url, (status, resp))) = answer {
            if (200..300).contains(&status) {
                return parse_answer(&resp, version);
            }
            let err = ClientError::Status {
                method: "POST",
                path: url.clone(),
                status,
                faultstring: ironic_faultstring(&resp),
            };
            if status < 500 && status != 409 {
                return Err(InspectionError::Refused(err));
            }
            tracing::warn!(error = %err, "the conductor could not take the inspection data yet");
            last = err.to_string();
        }
        if attempt < ATTEMPTS {
            let w = wait(attempt);
            tracing::info!(retry_in = ?w, "retrying the inspection post");
            tokio::time::sleep(w).await;
        }
    }
    Err(InspectionError::GaveUp {
        attempts: ATTEMPTS,
        last,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_like_ipa() {
        let w: Vec<f64> = (1..=6).map(|n| retry_wait(n).as_secs_f64()).collect();
        assert_eq!(w, vec![5.0, 5.0, 6.0, 12.0, 24.0, 30.0]);
        assert_eq!(retry_wait(1000), Duration::from_secs(30));
    }

    #[test]
    fn answers_old_and_new() {
        let a = parse_answer(br#"{"uuid": "u1"}"#, None).unwrap();
        assert_eq!(a.node_uuid(), "u1");
        let node = br#"{"node": {"uuid": "u2", "properties": {}}, "config": {"agent_token": "t", "heartbeat_timeout": 30}}"#;
        match parse_answer(node, Some(ApiVersion(1, 84))).unwrap() {
            Accepted::Node(l) => {
                assert_eq!(l.node_uuid, "u2");
                assert_eq!(l.config["agent_token"], "t");
            }
            other => panic!("{other:?}"),
        }
        // Asked without a version, the answer must be the old `{"uuid": …}`.
        assert!(parse_answer(node, None).is_err());
        assert!(parse_answer(b"[]", None).is_err());
        assert!(parse_answer(b"<html>", None).is_err());
        assert!(parse_answer(br#"{"uuid": ""}"#, None).is_err());
    }
}
