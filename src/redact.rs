//! Secrets never leave the agent: not in command results (which the conductor, and anyone
//! with the token, can list), not in the state directory, not in a log line.
//!
//! What counts as a secret: the values of JSON keys that name one (`image_server_password`,
//! `image_request_authorization`, `agent_token`, any `*password*`, `*secret*`, `*token*`,
//! and `configdrive`, whose user data often carries credentials); the password of a URL
//! (`https://user:pw@host/…`); query parameters that sign or authorise a URL (Swift temp-URL
//! and S3 pre-signed signatures, tokens); `key=value` pairs for those keys in free text (the
//! kernel command line's `ipa-agent-token=`, an API path's `agent_token=`).
//!
//! The three places everything passes through apply it: the executor (results and errors
//! before they are stored or served), the log writer (every line, console and ring), and the
//! state directory (files 0600 in a 0700 directory).

use std::borrow::Cow;

use serde_json::Value;

pub const MASK: &str = "***";

/// A JSON key whose value is a secret.
pub fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    k == "configdrive"
        || [
            "password",
            "passwd",
            "secret",
            "token",
            "authorization",
            "passphrase",
            "private_key",
        ]
        .iter()
        .any(|s| k.contains(s))
}

/// A query parameter that authorises the URL it is part of.
fn is_secret_param(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    matches!(
        k.as_str(),
        "sig" | "signature" | "x-amz-signature" | "x-amz-credential" | "api_key" | "apikey"
    ) || k.ends_with("_sig")
        || k.contains("token")
        || k.contains("password")
        || k.contains("secret")
}

/// `url` with its password and signing query parameters masked; anything that does not parse
/// as a URL comes back unchanged.
pub fn url(u: &str) -> Cow<'_, str> {
    let Ok(mut parsed) = url::Url::parse(u) else {
        return Cow::Borrowed(u);
    };
    let mut changed = false;
    if parsed.password().is_some() {
        let _ = parsed.set_password(Some(MASK));
        changed = true;
    }
    if parsed.query().is_some() {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        if pairs.iter().any(|(k, _)| is_secret_param(k)) {
            let mut q = parsed.query_pairs_mut();
            q.clear();
            for (k, v) in &pairs {
                q.append_pair(k, if is_secret_param(k) { MASK } else { v });
            }
            drop(q);
            changed = true;
        }
    }
    if changed {
        Cow::Owned(parsed.to_string())
    } else {
        Cow::Borrowed(u)
    }
}

/// Characters that end a URL or a `key=value` value inside free text.
fn ends_token(c: char) -> bool {
    c.is_whitespace() || "\"'<>()[]{},;`".contains(c)
}

/// The byte index just past the last char of `s` that matches `pred` (0 when none does): a
/// char boundary whatever the width of that char, so slicing there cannot panic.
fn after_last(s: &str, pred: impl Fn(char) -> bool) -> usize {
    s.char_indices()
        .rev()
        .find(|&(_, c)| pred(c))
        .map_or(0, |(i, c)| i + c.len_utf8())
}

/// Free text (an error message, a log line, a command line) with every URL passed through
/// [`url`] and secret `key=value` pairs masked.
pub fn text(s: &str) -> Cow<'_, str> {
    if !s.contains("://") && !s.contains('=') {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut changed = false;
    let mut rest = s;
    while !rest.is_empty() {
        // The next URL: a scheme before "://", up to the next delimiter.
        if let Some(pos) = rest.find("://") {
            let start = after_last(&rest[..pos], |c| {
                !(c.is_ascii_alphanumeric() || "+-.".contains(c))
            });
            let end = rest[pos..].find(ends_token).map_or(rest.len(), |i| pos + i);
            let before = &rest[..start];
            let masked = pairs(before);
            changed |= matches!(masked, Cow::Owned(_));
            out.push_str(&masked);
            let u = &rest[start..end];
            let m = url(u);
            changed |= matches!(m, Cow::Owned(_));
            out.push_str(&m);
            rest = &rest[end..];
        } else {
            let masked = pairs(rest);
            changed |= matches!(masked, Cow::Owned(_));
            out.push_str(&masked);
            break;
        }
    }
    if changed {
        Cow::Owned(out)
    } else {
        Cow::Borrowed(s)
    }
}

/// `key=value` pairs (delimited by spaces, `&`, `?` or quotes) whose key is a secret.
fn pairs(s: &str) -> Cow<'_, str> {
    if !s.contains('=') {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut changed = false;
    let mut i = 0;
    while i < s.len() {
        let Some(eq) = s[i..].find('=').map(|p| i + p) else {
            out.push_str(&s[i..]);
            break;
        };
        // The key runs back from '=' to a delimiter.
        let key_start = after_last(&s[..eq], |c| c.is_whitespace() || "&?\"';,".contains(c)).max(i);
        let key = &s[key_start..eq];
        let value_end = s[eq + 1..]
            .find(|c: char| ends_token(c) || c == '&' || c == '?')
            .map_or(s.len(), |p| eq + 1 + p);
        out.push_str(&s[i..=eq]);
        // A key is a short identifier; a long run of other characters before '=' is data
        // (base64 padding), not a parameter.
        let identifier = !key.is_empty()
            && key.len() <= 64
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
        let secret = identifier
            && (key.eq_ignore_ascii_case("ipa-agent-token") || is_secret_param(key))
            && value_end > eq + 1
            && &s[eq + 1..value_end] != MASK;
        if secret {
            out.push_str(MASK);
            changed = true;
        } else {
            out.push_str(&s[eq + 1..value_end]);
        }
        i = value_end;
    }
    if changed {
        Cow::Owned(out)
    } else {
        Cow::Borrowed(s)
    }
}

/// Mask every secret in a JSON document, in place.
pub fn value(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, item) in map.iter_mut() {
                if is_secret_key(k) && !item.is_null() && !item.is_boolean() {
                    *item = Value::String(MASK.into());
                } else {
                    value(item);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(value),
        Value::String(s) => {
            if let Cow::Owned(masked) = text(s) {
                *s = masked;
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn urls_lose_passwords_and_signatures() {
        assert_eq!(
            url("https://user:pw@img.example/disk.qcow2"),
            "https://user:***@img.example/disk.qcow2"
        );
        let swift = url(
            "https://swift.example/v1/AUTH_x/c/o?temp_url_sig=abcdef&temp_url_expires=1700000000",
        );
        assert!(
            swift.contains("temp_url_sig=***") && swift.contains("temp_url_expires=1700000000")
        );
        let s3 =
            url("https://s3.example/b/k?X-Amz-Credential=AK%2F1&X-Amz-Signature=ff00&X-Amz-Date=1");
        assert!(
            !s3.contains("ff00") && !s3.contains("AK") && s3.contains("X-Amz-Date=1"),
            "{s3}"
        );
        assert!(matches!(url("http://img.example/a?b=c"), Cow::Borrowed(_)));
        assert!(matches!(url("not a url"), Cow::Borrowed(_)));
    }

    #[test]
    fn free_text_is_masked_where_secrets_sit() {
        let t = text("GET https://u:secretpw@h/x?temp_url_sig=0123 failed: error sending request for url (https://u:secretpw@h/x)");
        assert!(!t.contains("secretpw") && !t.contains("0123"), "{t}");
        let c = text("BOOTIF=x ipa-agent-token=tok123 ipa-api-url=http://a:6385\n");
        assert_eq!(
            c,
            "BOOTIF=x ipa-agent-token=*** ipa-api-url=http://a:6385\n"
        );
        let q = text("path=/v1/commands/?agent_token=abc&wait=true status=401");
        assert_eq!(q, "path=/v1/commands/?agent_token=***&wait=true status=401");
        assert!(matches!(text("nothing to hide here: 42"), Cow::Borrowed(_)));
        assert!(matches!(text("a=1 b=2 root=/dev/sda"), Cow::Borrowed(_)));
        // base64 (the logs archive) carries no delimiters before '=': untouched.
        let b64 = "H4sIAAAAAAAAA+3BAQ0AAADCoPdPbQ8HFAAAAAAtokenAAAA==";
        assert!(matches!(text(b64), Cow::Borrowed(_)));
    }

    #[test]
    fn multibyte_chars_next_to_urls_and_keys() {
        // A step name from the conductor once aborted the agent here: '«' is two bytes, and
        // the scheme's start was taken one byte past it.
        let t = text("unknown step «http://user:pw@example.invalid/x");
        assert_eq!(t, "unknown step «http://user:***@example.invalid/x");
        // A non-breaking space (two bytes, whitespace) before a secret key.
        let t = text("args:\u{a0}token=abc other\u{a0}x=1");
        assert_eq!(t, "args:\u{a0}token=*** other\u{a0}x=1");
        // Wider characters on both sides of every delimiter.
        let t = text("€😀http://a:b@h/😀 ü😀 password=😀x😀 😀=😀");
        assert!(!t.contains(":b@"), "{t}");
        assert!(t.contains("password=***"), "{t}");
    }

    #[test]
    fn json_keys_and_nested_urls() {
        let mut v = json!({
            "step": {"interface": "deploy", "step": "write_image", "args": {"image_info": {
                "id": "img", "urls": ["https://u:pw@h/img?temp_url_sig=s"],
                "image_server_password": "pw", "image_server_user": "u",
                "image_request_authorization": "Bearer xyz",
                "configdrive": {"user_data": "#cloud-config\npassword: hunter2"}}}},
            "node": {"driver_info": {"ipmi_password": "******"}, "instance_info": {"configdrive": "H4sI..."}},
            "agent_token_required": true, "agent_token": null
        });
        value(&mut v);
        let s = v.to_string();
        for secret in ["pw@", "temp_url_sig=s", "Bearer", "hunter2", "H4sI"] {
            assert!(!s.contains(secret), "{secret} left in {s}");
        }
        assert_eq!(v["step"]["args"]["image_info"]["image_server_user"], "u");
        assert_eq!(v["step"]["args"]["image_info"]["id"], "img");
        assert_eq!(v["agent_token_required"], true);
        assert_eq!(v["agent_token"], Value::Null);
        assert_eq!(v["step"]["step"], "write_image");
    }
}
