//! HTTP(S) client for the Ironic API, with IPA's rules: every request carries JSON headers and
//! `X-OpenStack-Request-ID` when set; several API URLs are tried in order on connection
//! errors and the one that answered moves to the front.

use std::sync::Mutex;
use std::time::Duration;

use serde_json::Value;

use crate::config::Config;
use crate::tls;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the Ironic API ({urls}): {detail}")]
    Unreachable { urls: String, detail: String },
    #[error("{method} {path}: HTTP {status}: {faultstring}")]
    Status {
        method: &'static str,
        path: String,
        status: u16,
        faultstring: String,
    },
    #[error("{path}: the answer is not the expected JSON: {detail}")]
    BadBody { path: String, detail: String },
    #[error("building the HTTP client: {0}")]
    Build(String),
}

impl ClientError {
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// An Ironic API microversion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ApiVersion(pub u32, pub u32);

impl ApiVersion {
    pub const MIN: ApiVersion = ApiVersion(1, 31);
    pub const AGENT_TOKEN: ApiVersion = ApiVersion(1, 62);
    pub const AGENT_VERIFY_CA: ApiVersion = ApiVersion(1, 68);
    pub const AGENT_STATUS: ApiVersion = ApiVersion(1, 72);
    /// `continue_inspection` answers with the node and its config (the agent token), and
    /// lookup takes `node_uuid`.
    pub const CONTINUE_INSPECTION: ApiVersion = ApiVersion(1, 84);

    pub fn header(self) -> String {
        format!("{}.{}", self.0, self.1)
    }

    pub fn parse(s: &str) -> Option<ApiVersion> {
        let (a, b) = s.trim().split_once('.')?;
        Some(ApiVersion(a.parse().ok()?, b.parse().ok()?))
    }
}

pub struct ApiClient {
    urls: Mutex<Vec<String>>,
    http: reqwest::Client,
    request_id: Option<String>,
}

/// Pull `faultstring` out of Ironic's error body, which nests a JSON document in a string:
/// `{"error_message": "{\"faultcode\": …, \"faultstring\": \"…\"}"}`.
pub fn ironic_faultstring(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return text.chars().take(300).collect();
    };
    let inner = match v.get("error_message") {
        Some(Value::String(s)) => {
            serde_json::from_str::<Value>(s).unwrap_or(Value::String(s.clone()))
        }
        Some(other) => other.clone(),
        None => v.clone(),
    };
    match inner.get("faultstring").and_then(Value::as_str) {
        Some(f) => f.to_string(),
        None => inner
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| text.chars().take(300).collect()),
    }
}

impl ApiClient {
    pub fn new(cfg: &Config) -> Result<ApiClient, ClientError> {
        let tls = tls::client_config(cfg.insecure, cfg.ca_file.as_deref(), cfg.tls_min_version)
            .map_err(|e| ClientError::Build(e.to_string()))?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(cfg.http_request_timeout)
            .connect_timeout(cfg.http_request_timeout.min(Duration::from_secs(30)))
            .pool_max_idle_per_host(2)
            // In-process resolver: see image::fetch::client.
            .hickory_dns(true)
            .no_proxy()
            .build()
            .map_err(|e| ClientError::Build(e.to_string()))?;
        Ok(ApiClient {
            urls: Mutex::new(cfg.api_urls.clone()),
            http,
            request_id: cfg.global_request_id.clone(),
        })
    }

    pub fn urls(&self) -> Vec<String> {
        crate::panics::lock(&self.urls).clone()
    }

    /// Send to each API URL in turn until one answers at the HTTP level. Returns the status
    /// and body; HTTP errors are left to the caller.
    pub async fn request(
        &self,
        method: &'static str,
        path_and_query: &str,
        version: Option<ApiVersion>,
        body: Option<&Value>,
    ) -> Result<(u16, bytes::Bytes), ClientError> {
        let urls = self.urls();
        let mut errors = Vec::new();
        for (i, base) in urls.iter().enumerate() {
            let url = format!("{base}{path_and_query}");
            let mut req = match method {
                "POST" => self.http.post(&url),
                _ => self.http.get(&url),
            }
            .header("Accept", "application/json");
            if let Some(v) = version {
                req = req.header("X-OpenStack-Ironic-API-Version", v.header());
            }
            if let Some(id) = &self.request_id {
                req = req.header("X-OpenStack-Request-ID", id);
            }
            if let Some(b) = body {
                req = req.json(b);
            }
            match req.send().await {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    match resp.bytes().await {
                        Ok(bytes) => {
                            if i > 0 {
                                self.promote(base);
                            }
                            return Ok((status, bytes));
                        }
                        Err(e) => errors.push(format!("{base}: {e}")),
                    }
                }
                Err(e) => errors.push(format!("{base}: {}", error_chain(&e))),
            }
        }
        Err(ClientError::Unreachable {
            urls: urls.join(","),
            detail: errors.join("; "),
        })
    }

    /// POST JSON to an absolute URL (the inspection callback, which need not be an API URL).
    /// Returns the status and body; a failure to get any answer is `Unreachable`.
    pub async fn post_to(
        &self,
        url: &str,
        version: Option<ApiVersion>,
        body: &[u8],
    ) -> Result<(u16, bytes::Bytes), ClientError> {
        let mut req = self
            .http
            .post(url)
            .header("Content-Type", "application/json")
            .header("Accept", "application/json")
            .body(body.to_vec());
        if let Some(v) = version {
            req = req.header("X-OpenStack-Ironic-API-Version", v.header());
        }
        if let Some(id) = &self.request_id {
            req = req.header("X-OpenStack-Request-ID", id);
        }
        let unreachable = |e: &reqwest::Error| ClientError::Unreachable {
            urls: url.to_string(),
            detail: error_chain(e),
        };
        let resp = req.send().await.map_err(|e| unreachable(&e))?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(|e| unreachable(&e))?;
        Ok((status, bytes))
    }

    /// `GET {base}/`: the default (maximum) microversion of the API at `base`.
    pub async fn discover_version_at(&self, base: &str) -> Result<ApiVersion, ClientError> {
        let url = format!("{}/", base.trim_end_matches('/'));
        let unreachable = |e: &reqwest::Error| ClientError::Unreachable {
            urls: base.to_string(),
            detail: error_chain(e),
        };
        let resp = self
            .http
            .get(&url)
            .header("Accept", "application/json")
            .send()
            .await
            .map_err(|e| unreachable(&e))?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await.map_err(|e| unreachable(&e))?;
        parse_root(status, &body)
    }

    fn promote(&self, base: &str) {
        {
            let mut u = crate::panics::lock(&self.urls);
            if let Some(pos) = u.iter().position(|x| x == base) {
                let b = u.remove(pos);
                u.insert(0, b);
            }
        }
    }

    /// `GET /`: the API's default (maximum) microversion.
    pub async fn discover_version(&self) -> Result<ApiVersion, ClientError> {
        let (status, body) = self.request("GET", "/", None, None).await?;
        parse_root(status, &body)
    }
}

/// The API root document's default version.
fn parse_root(status: u16, body: &[u8]) -> Result<ApiVersion, ClientError> {
    if status != 200 {
        return Err(ClientError::Status {
            method: "GET",
            path: "/".into(),
            status,
            faultstring: ironic_faultstring(body),
        });
    }
    let v: Value = serde_json::from_slice(body).map_err(|e| ClientError::BadBody {
        path: "/".into(),
        detail: e.to_string(),
    })?;
    v.pointer("/default_version/version")
        .and_then(Value::as_str)
        .and_then(ApiVersion::parse)
        .ok_or_else(|| ClientError::BadBody {
            path: "/".into(),
            detail: "no default_version.version".into(),
        })
}

/// reqwest's Display hides the cause (e.g. "connection refused"); show the whole chain.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let cs = c.to_string();
        if !s.contains(&cs) {
            s.push_str(": ");
            s.push_str(&cs);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faultstring_from_ironic_nested_body() {
        let body = br#"{"error_message": "{\"faultcode\": \"Client\", \"faultstring\": \"Invalid or missing agent token received.\", \"debuginfo\": null}"}"#;
        assert_eq!(
            ironic_faultstring(body),
            "Invalid or missing agent token received."
        );
        assert_eq!(ironic_faultstring(b"<html>oops"), "<html>oops");
        assert_eq!(ironic_faultstring(br#"{"faultstring": "x"}"#), "x");
    }

    #[test]
    fn versions_order_and_parse() {
        assert_eq!(ApiVersion::parse("1.115"), Some(ApiVersion(1, 115)));
        assert!(ApiVersion(1, 115) > ApiVersion::AGENT_VERIFY_CA);
        assert!(ApiVersion(1, 9) < ApiVersion::MIN);
        assert_eq!(ApiVersion::AGENT_TOKEN.header(), "1.62");
        assert_eq!(ApiVersion::parse("x"), None);
    }
}
