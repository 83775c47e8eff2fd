//! Injecting files (the `inject_files` deploy step): put files into (or delete them from) the
//! file systems of the freshly written disk. Files come from `node.properties.inject_files` and the step's `files`
//! argument, with IPA's keys: `path`, `partition`, `content` (base64, or a URL that may name
//! node and port fields as `{node[uuid]}`), `deleted`, `mode`, `dirmode`, `owner`, `group`.
//!
//! Unlike a plain path join, every path is resolved *inside* the mounted file system
//! (system::inroot): an image's absolute symlink such as `/etc/resolv.conf -> /run/...` then
//! points into the image, never at the ramdisk. Paths with `..` components are refused.

use std::path::Path;

use base64::Engine;
use serde_json::{Map, Value};

use crate::disk::mount::{Access, Mounted};
use crate::disk::table::{self, Partition};
use crate::error::{CommandError, ErrorKind};
use crate::image::fetch::{fetch_small, FetchOptions};
use crate::system::inroot::{Attrs, Root};

/// Largest file fetched from a URL: injected files are configuration (keys, certificates,
/// network settings), and the ramdisk holds the body in memory before writing it; a larger
/// or endless body is cut off there.
const MAX_URL_FILE: usize = 16 << 20;
/// Every file's bytes together: they are all held before the first is written.
const MAX_TOTAL: usize = 64 << 20;

const KEYS: &[&str] = &[
    "path",
    "partition",
    "content",
    "deleted",
    "mode",
    "dirmode",
    "owner",
    "group",
];

fn invalid(msg: impl Into<String>) -> CommandError {
    CommandError::new(ErrorKind::InvalidParams, msg)
}

fn failed(msg: impl Into<String>) -> CommandError {
    CommandError::new(ErrorKind::CommandExecution, msg)
}

/// One file to inject, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct FileSpec {
    /// Relative to the file system root, normalised, without `..`.
    pub rel: String,
    pub partition: Option<String>,
    pub content: Option<String>,
    pub deleted: bool,
    pub mode: Option<u32>,
    pub dirmode: Option<u32>,
    pub owner: Option<u32>,
    pub group: Option<u32>,
}

fn int_field(f: &Map<String, Value>, key: &str, problems: &mut Vec<String>) -> Option<u32> {
    match f.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) if n.is_i64() => match n.as_i64() {
            // -1 means "leave unchanged" for owner and group, as for chown(2).
            Some(-1) if key == "owner" || key == "group" => None,
            Some(v) => u32::try_from(v).ok().or_else(|| {
                problems.push(format!("{key} {v} is out of range"));
                None
            }),
            None => None,
        },
        Some(other) => {
            problems.push(format!("{key} must be a number, got {other}"));
            None
        }
    }
}

/// Check and normalise the node's and the step's file lists (node's first, as IPA merges).
pub fn validate(from_node: &Value, from_args: &Value) -> Result<Vec<FileSpec>, CommandError> {
    let list = |v: &Value, what: &str| -> Result<Vec<Value>, CommandError> {
        match v {
            Value::Null => Ok(Vec::new()),
            Value::Array(a) => Ok(a.clone()),
            other => Err(invalid(format!("{what} must be a list, got {other}"))),
        }
    };
    let all = [
        list(from_node, "the inject_files node property")?,
        list(from_args, "the files argument")?,
    ]
    .concat();
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for (i, v) in all.iter().enumerate() {
        let before = problems.len();
        let Some(f) = v.as_object() else {
            problems.push(format!("file {i}: expected an object, got {v}"));
            continue;
        };
        let unknown: Vec<&str> = f
            .keys()
            .map(String::as_str)
            .filter(|k| !KEYS.contains(k))
            .collect();
        if !unknown.is_empty() {
            problems.push(format!(
                "file {i}: unexpected fields {}",
                unknown.join(", ")
            ));
        }
        let path = f.get("path").and_then(Value::as_str).unwrap_or("");
        let partition = match f.get("partition") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_string()),
            Some(Value::Number(n)) if n.is_u64() => Some(n.to_string()),
            Some(other) => {
                problems.push(format!(
                    "file {i}: partition must be a number or a string, got {other}"
                ));
                None
            }
        };
        let content = match f.get("content") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => {
                problems.push(format!("file {i}: content must be a string, got {other}"));
                None
            }
        };
        let deleted = match f.get("deleted") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                problems.push(format!(
                    "file {i}: deleted must be true or false, got {other}"
                ));
                false
            }
        };
        let comps: Vec<&str> = path
            .split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .collect();
        if path.is_empty() {
            problems.push(format!("file {i}: expected a path"));
        } else if !path.starts_with('/') {
            problems.push(format!("file {i}: path {path:?} must be absolute"));
        } else if path.ends_with('/') || comps.is_empty() {
            problems.push(format!(
                "file {i}: {path:?} is a directory; only files are injected"
            ));
        } else if comps.contains(&"..") || path.contains('\0') {
            problems.push(format!("file {i}: path {path:?} must not contain '..'"));
        } else if comps.len() == 1 && partition.is_none() {
            problems.push(format!(
                "file {i}: {path:?} is in the root directory and needs \"partition\""
            ));
        }
        if content.as_deref().is_some_and(|c| !c.is_empty()) && deleted {
            problems.push(format!("file {i}: content cannot be used with deleted"));
        }
        if content.is_none() && !deleted {
            problems.push(format!("file {i}: expected content (or deleted: true)"));
        }
        let mode = int_field(f, "mode", &mut problems);
        let dirmode = int_field(f, "dirmode", &mut problems);
        let owner = int_field(f, "owner", &mut problems);
        let group = int_field(f, "group", &mut problems);
        if problems.len() == before {
            out.push(FileSpec {
                rel: comps.join("/"),
                partition,
                content,
                deleted,
                mode,
                dirmode,
                owner,
                group,
            });
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(invalid(format!(
            "Validation of files failed: {}",
            problems.join("; ")
        )))
    }
}

/// Why a content URL template cannot be filled in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("unmatched '{0}' in {1:?}")]
    Unmatched(char, String),
    #[error("unknown field {{{0}}}: only node and ports")]
    UnknownField(String),
    #[error("malformed field {{{0}}}")]
    Malformed(String),
    #[error("{{{field}}}: no {key:?} there")]
    Missing { field: String, key: String },
    #[error("the expanded URL would be over {MAX_EXPANDED} bytes")]
    TooLong,
}

/// Longest URL a template may expand to: `{node}` repeated in a template would otherwise copy
/// the whole node (megabytes) once per reference.
pub const MAX_EXPANDED: usize = 64 << 10;

/// Python-style `{node[a][b]}` / `{ports[0][address]}` references in a URL (IPA formats
/// URLs with `str.format(node=…, ports=…)`, so deploy templates can be node-specific).
///
/// Every slice index below sits on an ASCII `{`, `}`, `[` or `]` that `find` returned, or one
/// byte past one: char boundaries by construction, whatever the template's other characters.
pub fn expand(template: &str, node: &Value, ports: &Value) -> Result<String, TemplateError> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(i) = rest.find(['{', '}']) {
        out.push_str(&rest[..i]);
        let c = rest.as_bytes()[i];
        if rest[i + 1..].starts_with(c as char) {
            out.push(c as char);
            rest = &rest[i + 2..];
            continue;
        }
        if c == b'}' {
            return Err(TemplateError::Unmatched('}', template.into()));
        }
        let end = rest[i..]
            .find('}')
            .ok_or_else(|| TemplateError::Unmatched('{', template.into()))?;
        let field = &rest[i + 1..i + end];
        let (base, mut keys) = field.split_at(field.find('[').unwrap_or(field.len()));
        let mut v = match base {
            "node" => node,
            "ports" => ports,
            _ => return Err(TemplateError::UnknownField(field.into())),
        };
        while !keys.is_empty() {
            let close = keys
                .find(']')
                .filter(|_| keys.starts_with('['))
                .ok_or_else(|| TemplateError::Malformed(field.into()))?;
            let k = &keys[1..close];
            v = match v {
                Value::Array(a) => k.parse::<usize>().ok().and_then(|n| a.get(n)),
                Value::Object(o) => o.get(k),
                _ => None,
            }
            .ok_or_else(|| TemplateError::Missing {
                field: field.into(),
                key: k.into(),
            })?;
            keys = &keys[close + 1..];
        }
        match v {
            Value::String(s) => out.push_str(s),
            Value::Null => out.push_str("None"),
            other => out.push_str(&other.to_string()),
        }
        if out.len() > MAX_EXPANDED {
            return Err(TemplateError::TooLong);
        }
        rest = &rest[i + end + 1..];
    }
    out.push_str(rest);
    if out.len() > MAX_EXPANDED {
        return Err(TemplateError::TooLong);
    }
    Ok(out)
}

fn probe_partition(disk: &Path, p: &Partition) -> crate::hardware::probe::Probe {
    crate::hardware::probe::probe_at(disk, p.start, p.len).unwrap_or_default()
}

/// The partition a `partition` value names: its number, its node name, a file-system UUID or
/// label, a PARTUUID (bare or as `UUID=`/`LABEL=`/`PARTUUID=`).
fn named_partition<'a>(disk: &Path, parts: &'a [Partition], spec: &str) -> Option<&'a Partition> {
    if let Ok(n) = spec.parse::<u32>() {
        return parts.iter().find(|p| p.number == n);
    }
    if spec.starts_with("/dev/") {
        let canon = std::fs::canonicalize(spec)
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| spec.to_string());
        return parts
            .iter()
            .find(|p| crate::disk::nodes::partition_name(disk, p.number) == canon);
    }
    let (kind, want) = spec.split_once('=').unwrap_or(("", spec));
    parts.iter().find(|p| {
        let pr = probe_partition(disk, p);
        let eq = |v: Option<&str>| v.is_some_and(|v| v.eq_ignore_ascii_case(want));
        match kind.to_ascii_uppercase().as_str() {
            "UUID" => eq(pr.uuid.as_deref()),
            "LABEL" => pr.label.as_deref() == Some(want),
            "PARTUUID" => p.part_uuid.eq_ignore_ascii_case(want),
            _ => {
                eq(pr.uuid.as_deref())
                    || p.part_uuid.eq_ignore_ascii_case(want)
                    || pr.label.as_deref() == Some(want)
            }
        }
    })
}

/// The partition `f` goes to and its path relative to that file system's root. Looking is
/// read-only: a file system is mounted for writing only once every file has its place.
fn locate<'p>(
    disk: &Path,
    parts: &'p [Partition],
    f: &FileSpec,
) -> Result<(&'p Partition, String), CommandError> {
    let mount = |p: &Partition| Mounted::partition(disk, p, Access::Inspect);
    if let Some(spec) = &f.partition {
        let p = named_partition(disk, parts, spec).ok_or_else(|| {
            CommandError::new(
                ErrorKind::DeviceNotFound,
                format!(
                    "no partition of {} matches {spec:?} (for {})",
                    disk.display(),
                    f.rel
                ),
            )
        })?;
        return Ok((p, f.rel.clone()));
    }
    // No partition given: the first file system holding the path's top directory (IPA's
    // rule: `/etc/x` goes to the partition that has an `etc` directory).
    let (top, rest) = f.rel.split_once('/').unwrap_or((&f.rel, ""));
    let mut scanned = Vec::new();
    for p in parts {
        let pr = probe_partition(disk, p);
        let Some(fs) = pr.fs_type.clone() else {
            continue;
        };
        if fs == "swap" || fs.ends_with("_member") || fs == "iso9660" {
            continue;
        }
        scanned.push(format!("{}({fs})", p.number));
        match mount(p) {
            Ok(m) if m.path().join(top).is_dir() => {
                tracing::info!(partition = p.number, dir = top, "path found");
                return Ok((p, format!("{top}/{rest}")));
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(partition = p.number, error = %e, "cannot inspect partition"),
        }
    }
    Err(CommandError::new(
        ErrorKind::DeviceNotFound,
        format!(
            "no partition of {} has a /{top} directory for {}; scanned: {}",
            disk.display(),
            f.rel,
            if scanned.is_empty() {
                "no file systems".into()
            } else {
                scanned.join(", ")
            }
        ),
    ))
}

/// Apply `f` inside the file system mounted at `mnt`; `rel` is the path inside it.
fn apply(mnt: &Path, rel: &str, f: &FileSpec, body: Option<&[u8]>) -> Result<(), ApplyError> {
    let err = |what: &'static str, path: String| move |source| ApplyError { what, path, source };
    let root = Root::open(mnt).map_err(err("opening", mnt.display().to_string()))?;
    if f.deleted {
        return root.remove(rel).map_err(err("deleting", format!("/{rel}")));
    }
    root.write_file(
        rel,
        body.unwrap_or_default(),
        &Attrs {
            mode: f.mode,
            dirmode: f.dirmode,
            owner: f.owner,
            group: f.group,
        },
    )
    .map_err(err("writing", format!("/{rel}")))
}

/// A file that could not be put into (or deleted from) the file system.
#[derive(Debug, thiserror::Error)]
#[error("{what} {path}: {source}")]
pub struct ApplyError {
    what: &'static str,
    path: String,
    source: std::io::Error,
}

/// The bytes of `f`: base64 content, or a URL's body.
fn body(
    f: &FileSpec,
    node: &Value,
    ports: &Value,
    fetch: &FetchOptions,
) -> Result<Option<Vec<u8>>, CommandError> {
    let Some(c) = f.content.as_deref() else {
        return Ok(None);
    };
    if c.contains("://") {
        let url = expand(c, node, ports)
            .map_err(|e| invalid(format!("content URL of /{}: {e}", f.rel)))?;
        return fetch_small(&url, fetch, MAX_URL_FILE)
            .map(Some)
            .map_err(|e| failed(format!("fetching /{} from {url}: {e}", f.rel)));
    }
    let compact: String = c.split_whitespace().collect();
    base64::engine::general_purpose::STANDARD
        .decode(compact.as_bytes())
        .map(Some)
        .map_err(|e| invalid(format!("content of /{} is not base64: {e}", f.rel)))
}

/// Put `files` into the file systems of the table on `disk`. `node` and `ports` fill URL
/// templates; `fetch` downloads URL contents. Every file's bytes and place are found first
/// (read-only), so a bad list (a template that does not expand, a URL that does not answer, a
/// directory no partition has) fails before anything is written; then one mount per file,
/// undone before the next.
pub fn inject(
    disk: &Path,
    files: &[FileSpec],
    node: &Value,
    ports: &Value,
    fetch: &FetchOptions,
) -> Result<(), CommandError> {
    let parts = table::read_disk(disk).map_err(|e| failed(e.to_string()))?;
    let mut plan = Vec::with_capacity(files.len());
    let mut total = 0usize;
    for f in files {
        let data = body(f, node, ports, fetch)?;
        total = total.saturating_add(data.as_ref().map_or(0, Vec::len));
        if total > MAX_TOTAL {
            return Err(invalid(format!(
                "the files to inject come to more than {} MiB",
                MAX_TOTAL >> 20
            )));
        }
        let (p, rel) = locate(disk, &parts, f)?;
        plan.push((f, p, rel, data));
    }
    for (f, p, rel, data) in plan {
        let m = Mounted::partition(disk, p, Access::Change).map_err(|e| failed(e.to_string()))?;
        apply(m.path(), &rel, f, data.as_deref())
            .map_err(|e| failed(format!("Failed to process file /{}: {e}", f.rel)))?;
        tracing::info!(path = %f.rel, deleted = f.deleted, "file injected");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn validation_follows_ipa_and_refuses_escapes() {
        let ok = validate(
            &json!([{"path": "/etc/a.conf", "content": "aGk="}]),
            &json!([{"path": "/x", "partition": 2, "deleted": true},
                    {"path": "//etc/./b", "content": "", "mode": 384, "owner": -1}]),
        )
        .unwrap();
        assert_eq!(ok.len(), 3);
        assert_eq!(ok[0].rel, "etc/a.conf");
        assert_eq!(ok[1].partition.as_deref(), Some("2"));
        assert_eq!(ok[2].rel, "etc/b");
        assert_eq!((ok[2].mode, ok[2].owner), (Some(0o600), None));
        for (bad, why) in [
            (json!({"path": "/etc/../../x", "content": ""}), "'..'"),
            (json!({"path": "etc/x", "content": ""}), "absolute"),
            (json!({"path": "/x", "content": ""}), "needs \"partition\""),
            (json!({"path": "/etc/", "content": ""}), "directory"),
            (
                json!({"path": "/etc/x", "content": "YQ==", "deleted": true}),
                "deleted",
            ),
            (json!({"path": "/etc/x"}), "expected content"),
            (
                json!({"path": "/etc/x", "content": "", "mode": "0644"}),
                "mode must be a number",
            ),
            (
                json!({"path": "/etc/x", "content": "", "colour": 1}),
                "unexpected fields colour",
            ),
        ] {
            let e = validate(&Value::Null, &json!([bad])).unwrap_err();
            assert!(e.details.contains(why), "{bad}: {}", e.details);
        }
        let e = validate(&json!({"a": 1}), &Value::Null).unwrap_err();
        assert!(e.details.contains("must be a list"));
    }

    #[test]
    fn url_templates_take_node_and_port_fields() {
        let node = json!({"uuid": "u-1", "properties": {"rack": 7}});
        let ports = json!([{"address": "52:54:00:00:00:01"}]);
        assert_eq!(
            expand(
                "http://h/{node[uuid]}/{node[properties][rack]}/{ports[0][address]}?a={{b}}",
                &node,
                &ports
            )
            .unwrap(),
            "http://h/u-1/7/52:54:00:00:00:01?a={b}"
        );
        assert!(expand("http://h/{node[nope]}", &node, &ports).is_err());
        assert!(expand("http://h/{env[HOME]}", &node, &ports).is_err());
        assert!(expand("http://h/{node[uuid]", &node, &ports).is_err());
    }
}
