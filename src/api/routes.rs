//! Routing and request parsing for the agent API. Requests become typed calls on the
//! executor; this layer owns no state besides the token gate. Every error answer is JSON with a
//! `faultstring` (the conductor crashes on an error body without one).

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::executor::Executor;
use crate::state::AgentToken;

/// Largest request body accepted. Step commands carry the whole node and possibly an inline
/// config drive (≤ 64 MiB uncompressed, gzip + base64 on the wire).
pub const BODY_LIMIT: usize = 128 << 20;

pub struct ApiState {
    pub exec: Arc<Executor>,
    /// Empty only if the agent has no token at all, in which case every command is refused.
    pub token: Arc<AgentToken>,
    pub scheme: &'static str,
    /// Limit for a client's TLS handshake, headers and body.
    pub client_timeout: std::time::Duration,
}

impl ApiState {
    /// Constant-time token check. Missing or empty tokens never pass.
    pub fn token_ok(&self, given: Option<&str>) -> bool {
        self.token.matches(given)
    }
}

pub(super) type Resp = Response<Full<Bytes>>;

fn json_response(status: u16, body: &Value) -> Resp {
    bytes_response(
        status,
        serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec()),
    )
}

/// An answer whose JSON is already encoded.
fn bytes_response(status: u16, bytes: Vec<u8>) -> Resp {
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("Content-Type", "application/json")
        .body(Full::new(Bytes::from(bytes)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

pub(super) fn error_response(e: &ApiError) -> Resp {
    json_response(e.status, &e.body())
}

fn query(req: &Request<Incoming>) -> HashMap<String, String> {
    req.uri()
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default()
}

fn wait_flag(q: &HashMap<String, String>) -> bool {
    q.get("wait")
        .is_some_and(|w| w.eq_ignore_ascii_case("true"))
}

enum Route<'a> {
    Root,
    V1,
    Status,
    Commands,
    Command(&'a str),
    NotFound,
}

fn route(path: &str) -> Route<'_> {
    // Accept IPA's paths with and without the trailing slash, with and without /v1.
    let p = path
        .strip_prefix("/v1")
        .map_or(path, |rest| if rest.is_empty() { "/" } else { rest });
    let v1 = path.starts_with("/v1");
    match p.trim_end_matches('/') {
        "" if v1 => Route::V1,
        "" => Route::Root,
        "/status" => Route::Status,
        "/commands" => Route::Commands,
        other => match other.strip_prefix("/commands/") {
            Some(id) if !id.is_empty() && !id.contains('/') => Route::Command(id),
            _ => Route::NotFound,
        },
    }
}

pub async fn handle(req: Request<Incoming>, st: Arc<ApiState>) -> Resp {
    let started = std::time::Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let resp = dispatch(req, &st).await;
    tracing::debug!(%method, %path, status = resp.status().as_u16(), took = ?started.elapsed(), "api request");
    resp
}

async fn dispatch(req: Request<Incoming>, st: &ApiState) -> Resp {
    let q = query(&req);
    let host = req
        .headers()
        .get(hyper::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost")
        .to_string();
    let base = format!("{}://{}", st.scheme, host);
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let method_not_allowed = || {
        error_response(&ApiError::new(
            405,
            "405 Method Not Allowed: The method is not allowed for the requested URL.",
        ))
    };
    match route(&path) {
        Route::Root if method == Method::GET => json_response(200, &root_doc(&base)),
        Route::V1 if method == Method::GET => json_response(200, &v1_doc(&base)),
        Route::Status if method == Method::GET => json_response(
            200,
            &json!({
                "started_at": st.exec.context().started_at,
                "version": crate::conductor::agent_version(),
            }),
        ),
        Route::Commands | Route::Command(_)
            if !st.token_ok(q.get("agent_token").map(String::as_str)) =>
        {
            tracing::warn!(%path, "refused a command request with a missing or wrong agent token");
            error_response(&ApiError::unauthorized())
        }
        Route::Commands if method == Method::GET => bytes_response(200, st.exec.list_json()),
        Route::Commands if method == Method::POST => {
            match run_command(req, st, wait_flag(&q)).await {
                Ok(r) => json_response(200, &serde_json::to_value(r).unwrap_or(Value::Null)),
                Err(e) => error_response(&e),
            }
        }
        Route::Command(id) if method == Method::GET => match st.exec.get(id, wait_flag(&q)).await {
            Ok(r) => json_response(200, &serde_json::to_value(r).unwrap_or(Value::Null)),
            Err(e) => error_response(&e),
        },
        Route::NotFound => error_response(&ApiError::new(
            404,
            "404 Not Found: The requested URL was not found on the server.",
        )),
        _ => method_not_allowed(),
    }
}

async fn run_command(
    req: Request<Incoming>,
    st: &ApiState,
    wait: bool,
) -> Result<crate::executor::CommandResult, ApiError> {
    // A declared length over the limit is refused before a byte of the body is read.
    let declared = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > BODY_LIMIT as u64) {
        return Err(ApiError::new(
            413,
            format!("413 Request Entity Too Large: the body exceeds {BODY_LIMIT} bytes"),
        ));
    }
    let collect = Limited::new(req.into_body(), BODY_LIMIT).collect();
    // A body trickled in byte by byte (slow-loris) must not hold the connection forever.
    let body = tokio::time::timeout(st.client_timeout, collect)
        .await
        .map_err(|_| {
            ApiError::new(
                408,
                format!(
                    "408 Request Timeout: the body did not arrive within {:?}",
                    st.client_timeout
                ),
            )
        })?
        .map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                ApiError::new(
                    413,
                    format!("413 Request Entity Too Large: the body exceeds {BODY_LIMIT} bytes"),
                )
            } else {
                ApiError::new(
                    400,
                    format!("400 Bad Request: reading the body failed: {e}"),
                )
            }
        })?
        .to_bytes();
    let doc: Value = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            400,
            format!("400 Bad Request: Failed to decode JSON object: {e}"),
        )
    })?;
    let (Some(name), Some(params)) = (
        doc.get("name").and_then(Value::as_str),
        doc.get("params").and_then(Value::as_object),
    ) else {
        return Err(ApiError::new(
            400,
            "400 Bad Request: Missing or invalid name or params",
        ));
    };
    st.exec.submit(name, params.clone(), wait).await
}

fn links(base: &str, path: &str) -> Value {
    json!([
        {"href": format!("{base}/v1{path}"), "rel": "self"},
        {"href": format!("{base}{path}"), "rel": "bookmark"},
    ])
}

fn root_doc(base: &str) -> Value {
    let version = json!({
        "id": "v1",
        "links": [
            {"href": format!("{base}/v1"), "rel": "self"},
            {"href": "https://docs.openstack.org/ironic-python-agent/", "rel": "describedby", "type": "text/html"},
        ],
    });
    json!({
        "name": "OpenStack Ironic Python Agent API",
        "description": "Rivet, an Ironic Python Agent compatible deploy agent",
        "versions": [version.clone()],
        "default_version": version,
    })
}

fn v1_doc(base: &str) -> Value {
    json!({
        "id": "v1",
        "links": links(base, ""),
        "commands": links(base, "/commands"),
        "status": links(base, "/status"),
        "media_types": [{"base": "application/json",
                         "type": "application/vnd.openstack.ironic-python-agent.v1+json"}],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_accept_both_slash_forms() {
        assert!(matches!(route("/"), Route::Root));
        assert!(matches!(route("/v1"), Route::V1));
        assert!(matches!(route("/v1/"), Route::V1));
        assert!(matches!(route("/v1/status"), Route::Status));
        assert!(matches!(route("/status"), Route::Status));
        assert!(matches!(route("/v1/commands/"), Route::Commands));
        assert!(matches!(route("/commands"), Route::Commands));
        assert!(matches!(route("/v1/commands/abc"), Route::Command("abc")));
        assert!(matches!(route("/v1/commands/abc/"), Route::Command("abc")));
        assert!(matches!(route("/v1/commands/a/b"), Route::NotFound));
        assert!(matches!(route("/v2/x"), Route::NotFound));
        assert!(matches!(route("/v1x"), Route::NotFound));
    }
}
