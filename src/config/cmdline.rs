//! Kernel command line and `parameters.txt` parsing, with IPA's rules.
//!
//! Tokens are split on white space; each `key=value` token is kept (the first `=` separates key
//! from value, a later token wins), and tokens without `=` are ignored, as in IPA. Typed helpers
//! turn values into numbers, booleans and MAC addresses, naming the key on failure so that a
//! malformed value is a clear start-up error rather than a silent default.

use std::collections::HashMap;

use super::ConfigError;

/// Parse `key=value` tokens separated by white space.
pub fn parse_params(text: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for token in text.split_whitespace() {
        if let Some((k, v)) = token.split_once('=') {
            if !k.is_empty() {
                out.insert(k.to_string(), v.to_string());
            }
        }
    }
    out
}

/// oslo.utils `bool_from_string(strict=True)`: the accepted spellings, case-insensitive.
pub fn parse_bool(key: &str, value: &str) -> Result<bool, ConfigError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "t" | "true" | "on" | "y" | "yes" => Ok(true),
        "0" | "f" | "false" | "off" | "n" | "no" => Ok(false),
        _ => Err(ConfigError::invalid(
            key,
            value,
            "expected a boolean (true/false/1/0/yes/no/on/off)",
        )),
    }
}

pub fn parse_u64(key: &str, value: &str) -> Result<u64, ConfigError> {
    value
        .trim()
        .parse::<u64>()
        .map_err(|_| ConfigError::invalid(key, value, "expected a non-negative integer"))
}

pub fn parse_u16(key: &str, value: &str) -> Result<u16, ConfigError> {
    match value.trim().parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(ConfigError::invalid(
            key,
            value,
            "expected a port number 1-65535",
        )),
    }
}

/// Longest duration taken from outside (kernel command line, lookup config): ten years.
/// Beyond it `Duration::from_secs_f64` and `Instant + Duration` overflow and panic; nothing
/// an operator means is longer.
pub const MAX_SECS: f64 = 10.0 * 365.0 * 86_400.0;

/// Seconds as a float (IPA accepts fractional intervals); must be finite and not negative;
/// clamped to [`MAX_SECS`].
pub fn parse_secs(key: &str, value: &str) -> Result<f64, ConfigError> {
    match value.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v.min(MAX_SECS)),
        _ => Err(ConfigError::invalid(
            key,
            value,
            "expected a number of seconds",
        )),
    }
}

/// Normalise a PXE `BOOTIF`: iPXE passes a plain MAC, PXELINUX `01-aa-bb-cc-dd-ee-ff` (the
/// leading `01` is the ARP hardware type). Returns the lower-case colon form.
pub fn normalize_bootif(value: &str) -> Result<String, ConfigError> {
    let v = value.trim().to_ascii_lowercase();
    let v = match v.strip_prefix("01-") {
        Some(rest) if rest.len() == 17 => rest.to_string(),
        _ => v,
    };
    let v = v.replace('-', ":");
    let parts: Vec<&str> = v.split(':').collect();
    let ok = parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()));
    if ok {
        Ok(v)
    } else {
        Err(ConfigError::invalid(
            "BOOTIF",
            value,
            "expected a MAC address",
        ))
    }
}

/// `ipa-api-url`: a comma-separated list; each must be `http(s)://…` (IPA also accepts `mdns`,
/// which Rivet does not implement, and says so).
pub fn parse_api_urls(value: &str) -> Result<Vec<String>, ConfigError> {
    parse_urls("ipa-api-url", value)
}

/// A comma-separated list of `http(s)://` URLs for `key` (`ipa-api-url`,
/// `ipa-inspection-callback-url`), trailing slashes dropped.
pub fn parse_urls(key: &str, value: &str) -> Result<Vec<String>, ConfigError> {
    let mut urls = Vec::new();
    for raw in value.split(',') {
        let u = raw.trim();
        if u.is_empty() {
            continue;
        }
        if u == "mdns" {
            return Err(ConfigError::invalid(
                key,
                value,
                "mDNS discovery is not supported by Rivet; give the API URL",
            ));
        }
        let parsed = url::Url::parse(u)
            .map_err(|e| ConfigError::invalid(key, u, &format!("not a URL: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
            return Err(ConfigError::invalid(
                key,
                u,
                "expected an http:// or https:// URL with a host",
            ));
        }
        urls.push(u.trim_end_matches('/').to_string());
    }
    if urls.is_empty() {
        return Err(ConfigError::invalid(key, value, "empty URL list"));
    }
    Ok(urls)
}

/// An Ironic API microversion `1.N`.
pub fn parse_api_version(key: &str, value: &str) -> Result<(u32, u32), ConfigError> {
    let bad = || ConfigError::invalid(key, value, "expected an API version like 1.68");
    let (maj, min) = value.trim().split_once('.').ok_or_else(bad)?;
    Ok((
        maj.parse().map_err(|_| bad())?,
        min.parse().map_err(|_| bad())?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_split_on_first_equals_and_skip_bare_tokens() {
        let p = parse_params("nofb vga=normal ipa-api-url=http://a:6385/x?y=1 quiet BOOTIF=x\n");
        assert_eq!(p["vga"], "normal");
        assert_eq!(p["ipa-api-url"], "http://a:6385/x?y=1");
        assert!(!p.contains_key("nofb"));
        assert!(!p.contains_key("quiet"));
        assert_eq!(parse_params("a=1 a=2")["a"], "2");
    }

    #[test]
    fn bootif_both_forms() {
        assert_eq!(
            normalize_bootif("01-52-54-00-12-34-56").unwrap(),
            "52:54:00:12:34:56"
        );
        assert_eq!(
            normalize_bootif("52:54:00:AB:cd:EF").unwrap(),
            "52:54:00:ab:cd:ef"
        );
        assert!(normalize_bootif("01-52-54-00").is_err());
        assert!(normalize_bootif("zz:54:00:12:34:56").is_err());
        assert!(normalize_bootif("").is_err());
    }

    #[test]
    fn api_urls_comma_list() {
        let u = parse_api_urls("http://10.0.0.1:6385,https://[fd00::1]:6385/").unwrap();
        assert_eq!(u, vec!["http://10.0.0.1:6385", "https://[fd00::1]:6385"]);
        assert!(parse_api_urls("ftp://x").is_err());
        assert!(parse_api_urls("mdns").is_err());
        assert!(parse_api_urls(",").is_err());
        assert!(parse_api_urls("http://").is_err());
    }

    #[test]
    fn typed_values() {
        assert!(parse_bool("ipa-insecure", "YES").unwrap());
        assert!(!parse_bool("ipa-insecure", "0").unwrap());
        assert!(parse_bool("ipa-insecure", "maybe").is_err());
        assert_eq!(parse_secs("t", "2.5").unwrap(), 2.5);
        assert!(parse_secs("t", "-1").is_err());
        assert!(parse_secs("t", "NaN").is_err());
        assert_eq!(parse_secs("t", "1e30").unwrap(), MAX_SECS);
        assert!(parse_secs("t", "inf").is_err());
        assert!(parse_u16("p", "0").is_err());
        assert!(parse_u16("p", "70000").is_err());
        assert_eq!(parse_api_version("v", "1.68").unwrap(), (1, 68));
        assert!(parse_api_version("v", "168").is_err());
        let e = parse_u64("ipa-lookup-timeout", "soon")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("ipa-lookup-timeout") && e.contains("soon"),
            "{e}"
        );
    }
}
