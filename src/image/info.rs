//! `image_info`, as the conductor sends it in `write_image` / `prepare_image`: parsed,
//! validated with IPA's rules, and turned into a pipeline request.

use base64::Engine;
use serde::Deserialize;
use serde_json::Value;

use super::fetch::{Auth, FetchOptions};
use super::pipeline::{self, ImageError, ImageRequest};
use crate::config::Config;
use crate::disk::table::Label;

#[derive(Debug, Clone, Deserialize)]
pub struct ImageInfo {
    pub id: String,
    pub urls: Vec<String>,
    #[serde(default)]
    pub disk_format: Option<String>,
    #[serde(default)]
    pub checksum: Option<String>,
    #[serde(default)]
    pub os_hash_algo: Option<String>,
    #[serde(default)]
    pub os_hash_value: Option<String>,
    #[serde(default)]
    pub image_type: Option<String>,
    #[serde(default)]
    pub image_server_auth_strategy: Option<String>,
    #[serde(default)]
    pub image_server_user: Option<String>,
    #[serde(default)]
    pub image_server_password: Option<String>,
    #[serde(default)]
    pub image_request_authorization: Option<String>,
    #[serde(default)]
    pub proxies: Option<Value>,
    #[serde(default)]
    pub no_proxy: Option<String>,
    #[serde(default)]
    pub configdrive: Option<Value>,
    #[serde(default)]
    pub node_uuid: Option<String>,
    /// Everything else (stream_raw_images, container_format, partition sizes, …).
    #[serde(flatten)]
    pub other: serde_json::Map<String, Value>,
    /// The layout options of a partition image, parsed with the rest (`None` for a whole disk).
    #[serde(skip)]
    pub partition: Option<PartitionOptions>,
}

/// What a partition image asks of the disk's layout: `deploy_boot_mode`, `disk_label`,
/// `root_mb`, `swap_mb`, `ephemeral_mb`, `ephemeral_format`, `preserve_ephemeral`. Sizes are
/// checked against the disk when the layout is planned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionOptions {
    pub uefi: bool,
    pub label: Label,
    pub root_mb: u64,
    pub swap_mb: u64,
    pub ephemeral_mb: u64,
    pub ephemeral_format: String,
    pub preserve_ephemeral: bool,
}

fn whole_mib(o: &serde_json::Map<String, Value>, key: &str) -> Result<u64, InfoError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(0),
        Some(Value::Number(n)) => n.as_u64().ok_or(()),
        Some(Value::String(s)) => s.trim().parse().map_err(|_| ()),
        Some(_) => Err(()),
    }
    .map_err(|_| InfoError::Invalid(format!("image_info {key} must be a whole number of MiB")))
}

fn text<'a>(o: &'a serde_json::Map<String, Value>, key: &str) -> Option<&'a str> {
    o.get(key)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

impl PartitionOptions {
    pub fn parse(o: &serde_json::Map<String, Value>) -> Result<PartitionOptions, InfoError> {
        let uefi = text(o, "deploy_boot_mode").unwrap_or("uefi") == "uefi";
        let label = match (uefi, text(o, "disk_label")) {
            (true, _) | (false, Some("gpt")) => Label::Gpt,
            (false, None | Some("msdos")) => Label::Msdos,
            (false, Some(other)) => {
                return Err(InfoError::Invalid(format!(
                    "unknown disk_label {other:?} (gpt or msdos)"
                )))
            }
        };
        let preserve_ephemeral = match o.get("preserve_ephemeral") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) => {
                matches!(s.to_ascii_lowercase().as_str(), "true" | "1" | "yes")
            }
            Some(other) => {
                return Err(InfoError::Invalid(format!(
                    "preserve_ephemeral must be true or false, got {other}"
                )))
            }
        };
        Ok(PartitionOptions {
            uefi,
            label,
            root_mb: whole_mib(o, "root_mb")?,
            swap_mb: whole_mib(o, "swap_mb")?,
            ephemeral_mb: whole_mib(o, "ephemeral_mb")?,
            ephemeral_format: text(o, "ephemeral_format").unwrap_or("ext4").to_string(),
            preserve_ephemeral,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InfoError {
    #[error("Invalid image_info: {0}")]
    Invalid(String),
}

impl ImageInfo {
    pub fn parse(v: &Value) -> Result<ImageInfo, InfoError> {
        let mut info: ImageInfo =
            serde_json::from_value(v.clone()).map_err(|e| InfoError::Invalid(e.to_string()))?;
        if info.id.trim().is_empty() {
            return Err(InfoError::Invalid("Image is missing 'id' field.".into()));
        }
        if info.urls.is_empty() || info.urls.iter().any(|u| !crate::image::verify::is_url(u)) {
            return Err(InfoError::Invalid(
                "Image 'urls' must be a non-empty list of http(s) URLs.".into(),
            ));
        }
        let has_hash = info.os_hash_algo.as_deref().is_some_and(|s| !s.is_empty())
            && info.os_hash_value.as_deref().is_some_and(|s| !s.is_empty());
        if !has_hash && info.checksum.as_deref().is_none_or(|c| c.trim().is_empty()) {
            return Err(InfoError::Invalid(
                "Image checksum is not available: give os_hash_algo/os_hash_value or checksum"
                    .into(),
            ));
        }
        if info.is_partition_image() {
            info.partition = Some(PartitionOptions::parse(&info.other)?);
        }
        Ok(info)
    }

    /// The id made safe for logs and any path use: IPA used it as a file name in /tmp.
    pub fn safe_id(&self) -> String {
        self.id
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "._-:".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect::<String>()
            .trim_start_matches('.')
            .chars()
            .take(128)
            .collect()
    }

    pub fn is_partition_image(&self) -> bool {
        self.image_type.as_deref() == Some("partition")
    }

    /// Download settings: the agent's, plus this image's auth and proxies.
    pub fn fetch_options(&self, cfg: &Config) -> Result<FetchOptions, InfoError> {
        let mut o = FetchOptions::from_config(cfg);
        if let Some(b64) = self
            .image_request_authorization
            .as_deref()
            .filter(|s| !s.is_empty())
        {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|e| {
                    InfoError::Invalid(format!("image_request_authorization is not base64: {e}"))
                })?;
            o.auth = Auth::Header(String::from_utf8(raw).map_err(|_| {
                InfoError::Invalid("image_request_authorization is not text".into())
            })?);
        } else if self.image_server_auth_strategy.as_deref() == Some("http_basic") {
            match (
                self.image_server_user.as_deref(),
                self.image_server_password.as_deref(),
            ) {
                (Some(u), Some(p)) if !u.is_empty() && !p.is_empty() => {
                    o.auth = Auth::Basic {
                        user: u.into(),
                        password: p.into(),
                    }
                }
                _ => {
                    return Err(InfoError::Invalid(
                        "http_basic image server auth needs a user and a password".into(),
                    ))
                }
            }
        }
        o.bind_auth(&self.urls);
        if let Some(p) = &self.proxies {
            o.http_proxy = p.get("http").and_then(Value::as_str).map(str::to_string);
            o.https_proxy = p.get("https").and_then(Value::as_str).map(str::to_string);
            o.no_proxy = self.no_proxy.clone();
        }
        Ok(o)
    }

    /// Resolve the checksum (may fetch a checksum file) and build the pipeline request.
    pub fn request(&self, cfg: &Config, o: &FetchOptions) -> Result<ImageRequest, ImageError> {
        let expected = match (self.os_hash_algo.as_deref(), self.os_hash_value.as_deref()) {
            (Some(a), Some(v)) if !a.is_empty() && !v.is_empty() => {
                pipeline::resolve_checksum(Some(a), v, &self.urls[0], cfg.md5_enabled, o)?
            }
            _ => pipeline::resolve_checksum(
                None,
                self.checksum.as_deref().unwrap_or(""),
                &self.urls[0],
                cfg.md5_enabled,
                o,
            )?,
        };
        Ok(ImageRequest {
            urls: self.urls.clone(),
            expected,
            disk_format: self.disk_format.clone(),
            permitted: cfg.permitted_image_formats.clone(),
            peer_share: crate::image::share::ShareOptions::from_config(cfg),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cfg() -> Config {
        Config::from_params(
            &crate::config::cmdline::parse_params("ipa-api-url=http://a:1"),
            &Default::default(),
        )
        .unwrap()
    }

    #[test]
    fn validation_like_ipa() {
        let ok = json!({"id": "disk.raw", "urls": ["http://x/disk.raw"], "disk_format": "raw",
                        "os_hash_algo": "sha256", "os_hash_value": "ab", "stream_raw_images": true});
        let i = ImageInfo::parse(&ok).unwrap();
        assert!(!i.is_partition_image());
        assert!(i.other.contains_key("stream_raw_images"));
        for bad in [
            json!({"urls": ["http://x"]}),
            json!({"id": "x", "urls": [], "checksum": "ab"}),
            json!({"id": "x", "urls": ["ftp://x"], "checksum": "ab"}),
            json!({"id": "x", "urls": ["http://x"]}),
            json!({"id": "x", "urls": ["http://x"], "os_hash_algo": "sha256", "os_hash_value": ""}),
        ] {
            assert!(ImageInfo::parse(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ids_are_sanitised() {
        let i = ImageInfo::parse(
            &json!({"id": "../../etc/passwd", "urls": ["http://x"], "checksum": "a"}),
        )
        .unwrap();
        assert_eq!(i.safe_id(), "_.._etc_passwd");
        assert!(!i.safe_id().contains('/'));
    }

    #[test]
    fn auth_and_proxies() {
        let c = cfg();
        let i = ImageInfo::parse(&json!({"id": "x", "urls": ["http://x"], "checksum": "a",
            "image_request_authorization": base64::engine::general_purpose::STANDARD.encode("Bearer tok"),
            "image_server_auth_strategy": "http_basic", "image_server_user": "u", "image_server_password": "p",
            "proxies": {"http": "http://proxy:3128"}, "no_proxy": "10.0.0.1"}))
        .unwrap();
        let o = i.fetch_options(&c).unwrap();
        assert_eq!(
            o.auth,
            Auth::Header("Bearer tok".into()),
            "the authorization header wins"
        );
        assert_eq!(o.http_proxy.as_deref(), Some("http://proxy:3128"));
        assert_eq!(o.no_proxy.as_deref(), Some("10.0.0.1"));
        let i = ImageInfo::parse(&json!({"id": "x", "urls": ["http://x"], "checksum": "a",
            "image_server_auth_strategy": "http_basic", "image_server_user": "u"}))
        .unwrap();
        assert!(i.fetch_options(&c).is_err());
    }
}
