//! Fetch stage: stream the image over HTTP(S) to the downstream stages, resuming where it broke.
//!
//! * URLs are tried in order; connection errors, timeouts, truncated bodies, 5xx, 408 and 429
//!   are retried (`ipa-image-download-connection-retries`, `-retry-interval`); any other 4xx
//!   fails at once: retrying cannot fix it.
//! * A broken transfer resumes from the exact byte reached with `Range` + `If-Range` (the strong
//!   ETag, else Last-Modified), so the downstream hash simply continues. When the server cannot
//!   resume (no validator, 200 instead of 206, or the object changed so `If-Range` fails) the
//!   fetch asks the pipeline to restart from byte 0: two objects are never spliced.
//! * `image_request_authorization` is sent verbatim as `Authorization`, else HTTP basic auth;
//!   reqwest drops the header on redirects to another host.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{HeaderValue, CONTENT_RANGE, ETAG, IF_RANGE, LAST_MODIFIED, RANGE};
use tokio::sync::mpsc;

use super::progress::Progress;
use crate::conductor::client::error_chain;
use crate::config::{Config, TlsVersion};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Auth {
    #[default]
    None,
    Basic {
        user: String,
        password: String,
    },
    /// A ready `Authorization` header value (OCI registries: `Bearer …`).
    Header(String),
}

#[derive(Debug, Clone)]
pub struct FetchOptions {
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub retries: u32,
    pub retry_interval: Duration,
    pub max_duration: Option<Duration>,
    pub auth: Auth,
    /// Where `auth` may be sent: the image's own URLs' origins. A checksum file or config
    /// drive on another host never sees the image's credentials.
    pub auth_origins: Vec<url::Origin>,
    pub http_proxy: Option<String>,
    pub https_proxy: Option<String>,
    pub no_proxy: Option<String>,
    pub insecure: bool,
    pub ca_file: Option<PathBuf>,
    pub tls_min: TlsVersion,
}

impl FetchOptions {
    pub fn from_config(c: &Config) -> FetchOptions {
        FetchOptions {
            connect_timeout: c.image_download_connection_timeout,
            read_timeout: c.image_download_connection_timeout,
            retries: c.image_download_connection_retries,
            retry_interval: c.image_download_connection_retry_interval,
            max_duration: c.image_download_max_duration,
            auth: Auth::None,
            auth_origins: Vec::new(),
            http_proxy: None,
            https_proxy: None,
            no_proxy: None,
            insecure: c.insecure,
            ca_file: c.ca_file.clone(),
            tls_min: c.tls_min_version,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("image download failed: GET {url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("image download failed after {attempts} attempts; last error: {last}")]
    Exhausted { attempts: u32, last: String },
    #[error("image download exceeded its time limit of {0:?} (ipa-image-download-max-duration)")]
    Timeout(Duration),
    #[error("the download has to start again from the beginning: {0}")]
    Restart(String),
    #[error("building the HTTP client: {0}")]
    Client(String),
    #[error("{url} is larger than the {max} bytes allowed for it")]
    TooLarge { url: String, max: usize },
    #[error("{url}: {why}")]
    Refused { url: String, why: String },
    #[error("the image was abandoned by the writer")]
    Stopped,
}

/// What the fetch hands downstream.
#[derive(Debug)]
pub enum Msg {
    /// The full size of the object (Content-Length of the first answer).
    Total(u64),
    Data(Bytes),
}

pub fn client(o: &FetchOptions) -> Result<reqwest::Client, FetchError> {
    let tls = crate::tls::client_config(o.insecure, o.ca_file.as_deref(), o.tls_min)
        .map_err(|e| FetchError::Client(e.to_string()))?;
    let mut b = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .connect_timeout(o.connect_timeout)
        .read_timeout(o.read_timeout)
        .redirect(reqwest::redirect::Policy::limited(10))
        // Names resolve in-process (hickory: /etc/hosts, then the servers in
        // /etc/resolv.conf): a static binary cannot load glibc's NSS modules in a ramdisk.
        .hickory_dns(true);
    let no_proxy = o
        .no_proxy
        .as_deref()
        .and_then(reqwest::NoProxy::from_string);
    if o.http_proxy.is_none() && o.https_proxy.is_none() {
        b = b.no_proxy();
    }
    for (url, https) in [(&o.http_proxy, false), (&o.https_proxy, true)] {
        if let Some(u) = url {
            let p = if https {
                reqwest::Proxy::https(u)
            } else {
                reqwest::Proxy::http(u)
            }
            .map_err(|e| FetchError::Client(format!("proxy {u}: {e}")))?
            .no_proxy(no_proxy.clone());
            b = b.proxy(p);
        }
    }
    b.build().map_err(|e| FetchError::Client(e.to_string()))
}

impl FetchOptions {
    /// Send `auth` to the origins of `urls` (the image's) and nowhere else.
    pub fn bind_auth(&mut self, urls: &[String]) {
        self.auth_origins = urls
            .iter()
            .filter_map(|u| url::Url::parse(u).ok())
            .map(|u| u.origin())
            .collect();
    }

    fn auth_for(&self, url: &str) -> &Auth {
        let same = url::Url::parse(url)
            .map(|u| self.auth_origins.contains(&u.origin()))
            .unwrap_or(false);
        if same {
            &self.auth
        } else {
            &Auth::None
        }
    }
}

fn request(c: &reqwest::Client, url: &str, o: &FetchOptions) -> reqwest::RequestBuilder {
    let r = c.get(url);
    match o.auth_for(url) {
        Auth::None => r,
        Auth::Basic { user, password } => r.basic_auth(user, Some(password)),
        Auth::Header(h) => r.header(reqwest::header::AUTHORIZATION, h),
    }
}

/// A small document (checksum file, config drive) of at most `max` bytes, for callers outside
/// any async runtime: its own client, same auth, proxies and retries as the image.
pub fn fetch_small(url: &str, o: &FetchOptions, max: usize) -> Result<Vec<u8>, FetchError> {
    fetch_sniffed(url, o, max, None)
}

/// How much of a body [`fetch_sniffed`] looks at before deciding.
pub const SNIFF_AT: usize = 128 << 10;

/// Why a sniffer refused a body (not what was expected).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);

impl Refusal {
    /// Any error as a refusal (a sniffer written for another purpose).
    pub fn from_error(e: impl std::fmt::Display) -> Refusal {
        Refusal(e.to_string())
    }
}

/// Judges the first bytes of a body: refuses it, or gives the size it may have at most.
pub type Sniff<'a> = &'a (dyn Fn(&[u8]) -> Result<usize, Refusal> + Sync);

/// Like [`fetch_small`], with `sniff` shown the first [`SNIFF_AT`] bytes (or the whole body,
/// if shorter): an endless stream of something else is refused after 128 KiB, not at `max`.
pub fn fetch_sniffed(
    url: &str,
    o: &FetchOptions,
    max: usize,
    sniff: Option<Sniff>,
) -> Result<Vec<u8>, FetchError> {
    let c = client(o)?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| FetchError::Client(e.to_string()))?
        .block_on(fetch_bytes(&c, url, o, max, sniff))
}

/// A small document of at most `max` bytes (checksum file, config drive).
async fn fetch_bytes(
    c: &reqwest::Client,
    url: &str,
    o: &FetchOptions,
    max: usize,
    sniff: Option<Sniff<'_>>,
) -> Result<Vec<u8>, FetchError> {
    let mut last = String::new();
    for attempt in 0..=o.retries {
        if attempt > 0 {
            tokio::time::sleep(o.retry_interval).await;
        }
        match request(c, url, o).send().await {
            Ok(r) if r.status().is_success() => match read_capped(r, url, max, sniff).await {
                Ok(b) => return Ok(b),
                Err(Some(e)) => return Err(e),
                Err(None) => last = "the transfer broke off".into(),
            },
            Ok(r) if retryable_status(r.status().as_u16()) => {
                last = format!("HTTP {}", r.status().as_u16())
            }
            Ok(r) => {
                return Err(FetchError::Status {
                    url: crate::redact::url(url).into_owned(),
                    status: r.status().as_u16(),
                })
            }
            Err(e) => last = error_chain(&e),
        }
    }
    Err(FetchError::Exhausted {
        attempts: o.retries + 1,
        last: format!("{url}: {last}"),
    })
}

/// The body, refused as soon as it passes `max` bytes (a declared length over it is refused
/// before reading): an endless or huge answer costs `max` bytes of memory at most. A body
/// cut short is `Err(None)` (try again); too large is final.
async fn read_capped(
    mut r: reqwest::Response,
    url: &str,
    mut max: usize,
    sniff: Option<Sniff<'_>>,
) -> Result<Vec<u8>, Option<FetchError>> {
    let shown = || crate::redact::url(url).into_owned();
    let too_large = |max| Some(FetchError::TooLarge { url: shown(), max });
    if r.content_length().is_some_and(|n| n > max as u64) {
        return Err(too_large(max));
    }
    let mut body = Vec::new();
    let mut sniffed = sniff.is_none();
    let judge = |body: &[u8], max: &mut usize| -> Result<(), Option<FetchError>> {
        if let Some(s) = sniff {
            let allowed = s(body).map_err(|why| {
                Some(FetchError::Refused {
                    url: shown(),
                    why: why.0,
                })
            })?;
            *max = allowed.min(*max);
        }
        Ok(())
    };
    loop {
        match r.chunk().await {
            Ok(Some(c)) => {
                if body.len().saturating_add(c.len()) > max {
                    return Err(too_large(max));
                }
                body.extend_from_slice(&c);
                if !sniffed && body.len() >= SNIFF_AT {
                    sniffed = true;
                    judge(&body, &mut max)?;
                    if body.len() > max {
                        return Err(too_large(max));
                    }
                }
            }
            Ok(None) => {
                if !sniffed {
                    judge(&body, &mut max)?;
                }
                return Ok(body);
            }
            Err(_) => return Err(None),
        }
    }
}

fn retryable_status(s: u16) -> bool {
    s >= 500 || s == 408 || s == 429
}

/// The start offset of a `Content-Range: bytes a-b/total` answer.
fn range_start(v: Option<&HeaderValue>) -> Option<u64> {
    let s = v?.to_str().ok()?;
    let rest = s.trim().strip_prefix("bytes ")?;
    rest.split('-').next()?.trim().parse().ok()
}

/// A validator usable in `If-Range`: a strong ETag, else Last-Modified.
fn validator(h: &reqwest::header::HeaderMap) -> Option<HeaderValue> {
    if let Some(e) = h.get(ETAG) {
        if !e.as_bytes().starts_with(b"W/") {
            return Some(e.clone());
        }
    }
    h.get(LAST_MODIFIED).cloned()
}

/// An answer to a range request: `start` is the offset of its first byte (0 when the server
/// ignored `Range` and sent the whole object), `total` the object's size when known.
pub struct RangeBody {
    pub resp: reqwest::Response,
    pub start: u64,
    pub total: Option<u64>,
}

/// The total size in `Content-Range: bytes a-b/total`.
fn range_total(v: Option<&HeaderValue>) -> Option<u64> {
    v?.to_str().ok()?.rsplit('/').next()?.trim().parse().ok()
}

/// GET bytes `[start, end)` of the first URL that answers, with the usual retries.
pub async fn open_range(
    c: &reqwest::Client,
    urls: &[String],
    o: &FetchOptions,
    start: u64,
    end: u64,
) -> Result<RangeBody, FetchError> {
    let mut last = String::from("no image URL");
    for attempt in 0..=o.retries {
        if attempt > 0 {
            tokio::time::sleep(o.retry_interval).await;
        }
        let Some(url) = urls.get(attempt as usize % urls.len().max(1)) else {
            break;
        };
        let req =
            request(c, url, o).header(RANGE, format!("bytes={start}-{}", end.saturating_sub(1)));
        match req.send().await {
            Ok(r) if r.status().as_u16() == 206 => {
                let h = r.headers().get(CONTENT_RANGE);
                let (s, total) = (range_start(h), range_total(h));
                if s != Some(start) {
                    return Err(FetchError::Restart(format!(
                        "{url} answered a range that does not start at byte {start}"
                    )));
                }
                return Ok(RangeBody {
                    resp: r,
                    start,
                    total,
                });
            }
            Ok(r) if r.status().as_u16() == 200 => {
                let total = r.content_length();
                return Ok(RangeBody {
                    resp: r,
                    start: 0,
                    total,
                });
            }
            Ok(r) if retryable_status(r.status().as_u16()) => {
                last = format!("{url}: HTTP {}", r.status().as_u16())
            }
            Ok(r) => {
                return Err(FetchError::Status {
                    url: crate::redact::url(url).into_owned(),
                    status: r.status().as_u16(),
                })
            }
            Err(e) => last = format!("{url}: {}", error_chain(&e)),
        }
    }
    Err(FetchError::Exhausted {
        attempts: o.retries + 1,
        last,
    })
}

/// Hand the image's next bytes to the pipeline: counted, then to the hash and the decoder
/// (the plain download and the swarm both feed it so).
pub(crate) async fn hand_on(
    b: Bytes,
    progress: &Progress,
    to_decode: &mpsc::Sender<Msg>,
    to_hash: &mpsc::Sender<Bytes>,
) -> Result<(), FetchError> {
    progress
        .downloaded
        .fetch_add(b.len() as u64, Ordering::Relaxed);
    to_hash
        .send(b.clone())
        .await
        .map_err(|_| FetchError::Stopped)?;
    to_decode
        .send(Msg::Data(b))
        .await
        .map_err(|_| FetchError::Stopped)
}

/// Stream `urls` (first that works) to both senders until the object is complete.
pub async fn stream(
    c: &reqwest::Client,
    urls: &[String],
    o: &FetchOptions,
    to_decode: mpsc::Sender<Msg>,
    to_hash: mpsc::Sender<Bytes>,
    progress: &Arc<Progress>,
) -> Result<u64, FetchError> {
    let work = stream_inner(c, urls, o, &to_decode, &to_hash, progress);
    match o.max_duration {
        Some(max) => tokio::time::timeout(max, work)
            .await
            .unwrap_or(Err(FetchError::Timeout(max))),
        None => work.await,
    }
}

async fn stream_inner(
    c: &reqwest::Client,
    urls: &[String],
    o: &FetchOptions,
    to_decode: &mpsc::Sender<Msg>,
    to_hash: &mpsc::Sender<Bytes>,
    progress: &Arc<Progress>,
) -> Result<u64, FetchError> {
    if urls.is_empty() {
        return Err(FetchError::Client("no image URL".into()));
    }
    let mut offset: u64 = 0;
    let mut total: Option<u64> = None;
    let mut valid: Option<HeaderValue> = None;
    let mut failures: u32 = 0;
    let mut url_idx = 0usize;
    loop {
        let url = &urls[url_idx % urls.len()];
        let mut req = request(c, url, o);
        if offset > 0 {
            let Some(v) = &valid else {
                return Err(FetchError::Restart(format!(
                    "{url} sent no ETag or Last-Modified, so the transfer cannot be resumed safely"
                )));
            };
            req = req
                .header(RANGE, format!("bytes={offset}-"))
                .header(IF_RANGE, v.clone());
        }
        // Either the body streamed to the end, or why this attempt failed.
        let failed: String = match req.send().await {
            Err(e) => format!("{url}: {}", error_chain(&e)),
            Ok(mut resp) => {
                let status = resp.status().as_u16();
                match status {
                    200 if offset > 0 => {
                        return Err(FetchError::Restart(format!(
                            "{url} did not resume at byte {offset} (HTTP 200: no range support, or the object changed)"
                        )))
                    }
                    200 => {
                        valid = validator(resp.headers());
                        total = resp.content_length();
                        if let Some(t) = total {
                            progress.total.store(t, Ordering::Relaxed);
                            to_decode.send(Msg::Total(t)).await.map_err(|_| FetchError::Stopped)?;
                        }
                    }
                    206 if offset > 0 && range_start(resp.headers().get(CONTENT_RANGE)) == Some(offset) => {
                        tracing::info!(%url, offset, "download resumed");
                    }
                    206 => {
                        return Err(FetchError::Restart(format!(
                            "{url} answered a range that does not start at byte {offset}"
                        )))
                    }
                    s if retryable_status(s) => {
                        failures += 1;
                        url_idx += 1;
                        if failures > o.retries {
                            return Err(FetchError::Exhausted {
                                attempts: failures,
                                last: format!("{url}: HTTP {s}"),
                            });
                        }
                        tracing::warn!(%url, status = s, retry_in = ?o.retry_interval, "image server error, retrying");
                        tokio::time::sleep(o.retry_interval).await;
                        continue;
                    }
                    s => return Err(FetchError::Status { url: url.clone(), status: s }),
                }
                let mut broke = None;
                loop {
                    match resp.chunk().await {
                        Ok(Some(b)) => {
                            offset += b.len() as u64;
                            hand_on(b, progress, to_decode, to_hash).await?;
                        }
                        Ok(None) => break,
                        Err(e) => {
                            broke = Some(error_chain(&e));
                            break;
                        }
                    }
                }
                match (broke, total) {
                    (Some(e), _) => format!("{url}: transfer broke at byte {offset}: {e}"),
                    (None, Some(t)) if offset < t => {
                        format!("{url}: body ended at byte {offset} of {t}")
                    }
                    (None, Some(t)) if offset > t => {
                        return Err(FetchError::Restart(format!(
                            "{url} sent {offset} bytes, more than its Content-Length {t}"
                        )))
                    }
                    (None, _) => return Ok(offset),
                }
            }
        };
        failures += 1;
        if failures > o.retries {
            return Err(FetchError::Exhausted {
                attempts: failures,
                last: failed,
            });
        }
        if offset == 0 {
            url_idx += 1;
        }
        tracing::warn!(error = %failed, offset, retry_in = ?o.retry_interval, "image download interrupted, retrying");
        tokio::time::sleep(o.retry_interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_and_validators() {
        assert_eq!(
            range_start(Some(&HeaderValue::from_static("bytes 100-199/200"))),
            Some(100)
        );
        assert_eq!(
            range_start(Some(&HeaderValue::from_static("bytes */200"))),
            None
        );
        assert_eq!(range_start(None), None);
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(ETAG, HeaderValue::from_static("W/\"weak\""));
        h.insert(
            LAST_MODIFIED,
            HeaderValue::from_static("Mon, 23 Nov 2026 10:00:00 GMT"),
        );
        assert_eq!(
            validator(&h),
            Some(HeaderValue::from_static("Mon, 23 Nov 2026 10:00:00 GMT"))
        );
        h.insert(ETAG, HeaderValue::from_static("\"strong\""));
        assert_eq!(validator(&h), Some(HeaderValue::from_static("\"strong\"")));
        assert!(retryable_status(503) && retryable_status(429) && retryable_status(408));
        assert!(!retryable_status(404) && !retryable_status(403));
    }
}
