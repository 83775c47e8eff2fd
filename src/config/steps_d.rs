//! Custom steps as drop-ins: `NAME.toml` manifests in a directory of the ramdisk
//! (`/etc/rivet/steps.d`, or `rivet-steps-dir=` on the kernel command line), each naming an
//! executable that Rivet lists and runs like a built-in step. Manifests are read once, at
//! start-up; one that does not parse or validate is logged and skipped, never fatal.
//!
//! ```toml
//! step = "update_firmware"        # the step's name (lower case, digits, _)
//! kinds = ["clean", "service"]    # the lists it is in: clean, deploy, service
//! interface = "deploy"            # Ironic interface (default deploy)
//! priority = 0                    # 0: run only when asked (manual cleaning, templates)
//! abortable = false
//! reboot_requested = false
//! timeout = 600                   # seconds; the executable is killed after it
//! exec = "update-firmware.sh"     # relative to the manifest's directory, or absolute
//!
//! [argsinfo.version]
//! description = "Firmware version to install"
//! required = true
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Map, Value};

/// The largest manifest read: a manifest is a few lines.
const MAX_MANIFEST: u64 = 64 * 1024;
/// The longest timeout a manifest may ask for: a week (burn-in runs last days).
const MAX_TIMEOUT_S: u64 = 7 * 24 * 3600;

/// Step kinds a custom step can be listed as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepKind {
    Clean,
    Deploy,
    Service,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArgInfo {
    pub description: String,
    #[serde(default)]
    pub required: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    step: String,
    kinds: Vec<StepKind>,
    #[serde(default = "default_interface")]
    interface: String,
    #[serde(default)]
    priority: i64,
    #[serde(default)]
    abortable: bool,
    #[serde(default)]
    reboot_requested: bool,
    timeout: u64,
    exec: String,
    #[serde(default)]
    argsinfo: std::collections::BTreeMap<String, ArgInfo>,
}

fn default_interface() -> String {
    "deploy".into()
}

/// A validated custom step.
#[derive(Debug, Clone, PartialEq)]
pub struct CustomStep {
    pub name: String,
    pub kinds: Vec<StepKind>,
    pub interface: String,
    pub priority: i64,
    pub abortable: bool,
    pub reboot_requested: bool,
    pub timeout: Duration,
    /// The executable, absolute.
    pub exec: PathBuf,
    pub argsinfo: std::collections::BTreeMap<String, ArgInfo>,
    /// The manifest it came from (for messages).
    pub manifest: PathBuf,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ManifestError {
    #[error("{0}")]
    Syntax(String),
    #[error("invalid {field}: {why}")]
    Invalid { field: &'static str, why: String },
}

fn invalid(field: &'static str, why: impl Into<String>) -> ManifestError {
    ManifestError::Invalid {
        field,
        why: why.into(),
    }
}

fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !s.starts_with(|c: char| c.is_ascii_digit())
}

/// Parse and validate one manifest's text; `dir` resolves a relative `exec`. The executable's
/// existence is checked by [`load`], not here (this is what the fuzz target runs).
pub fn parse(text: &str, dir: &Path, manifest: &Path) -> Result<CustomStep, ManifestError> {
    let raw: Raw = toml::from_str(text).map_err(|e| ManifestError::Syntax(e.message().into()))?;
    if !is_identifier(&raw.step) {
        return Err(invalid(
            "step",
            format!(
                "{:?}: lower-case letters, digits and _ only, 64 at most",
                raw.step
            ),
        ));
    }
    if !is_identifier(&raw.interface) {
        return Err(invalid("interface", format!("{:?}", raw.interface)));
    }
    if raw.kinds.is_empty() {
        return Err(invalid(
            "kinds",
            "name at least one of clean, deploy, service",
        ));
    }
    let mut kinds = raw.kinds;
    kinds.sort_by_key(|k| *k as u8);
    kinds.dedup();
    // Ironic's priorities: 0 (on request) up to what its own steps use; keep them sane.
    if !(0..=1000).contains(&raw.priority) {
        return Err(invalid(
            "priority",
            format!("{} is not in 0..=1000", raw.priority),
        ));
    }
    if raw.timeout == 0 || raw.timeout > MAX_TIMEOUT_S {
        return Err(invalid(
            "timeout",
            format!("{} s: between 1 s and {MAX_TIMEOUT_S} s", raw.timeout),
        ));
    }
    if raw.exec.is_empty() || raw.exec.contains('\0') {
        return Err(invalid("exec", "an executable's path"));
    }
    for (name, info) in &raw.argsinfo {
        if !is_identifier(name) {
            return Err(invalid("argsinfo", format!("argument name {name:?}")));
        }
        if info.description.len() > 4096 {
            return Err(invalid("argsinfo", format!("{name}: description too long")));
        }
    }
    let exec = Path::new(&raw.exec);
    Ok(CustomStep {
        name: raw.step,
        kinds,
        interface: raw.interface,
        priority: raw.priority,
        abortable: raw.abortable,
        reboot_requested: raw.reboot_requested,
        timeout: Duration::from_secs(raw.timeout),
        exec: if exec.is_absolute() {
            exec.to_path_buf()
        } else {
            dir.join(exec)
        },
        argsinfo: raw.argsinfo,
        manifest: manifest.to_path_buf(),
    })
}

impl CustomStep {
    /// `argsinfo` as Ironic lists it.
    pub fn argsinfo_json(&self) -> Option<Value> {
        (!self.argsinfo.is_empty()).then(|| {
            Value::Object(
                self.argsinfo
                    .iter()
                    .map(|(k, a)| {
                        (
                            k.clone(),
                            json!({"description": a.description, "required": a.required}),
                        )
                    })
                    .collect(),
            )
        })
    }

    /// Every required argument present, as the conductor would check before running a step
    /// with an `argsinfo`: the names of those missing.
    pub fn missing_args(&self, args: &Map<String, Value>) -> Vec<String> {
        self.argsinfo
            .iter()
            .filter(|(k, a)| a.required && args.get(*k).is_none_or(Value::is_null))
            .map(|(k, _)| k.clone())
            .collect()
    }
}

/// Every valid manifest in `dir` (`*.toml`, in name order). A manifest that cannot be read,
/// parsed or validated, whose executable is missing or not executable, or whose step name
/// (per kind) is taken by a built-in (`taken`) or an earlier manifest, is logged and skipped.
pub fn load(dir: &Path, taken: &dyn Fn(StepKind, &str) -> bool) -> Vec<CustomStep> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    paths.sort();
    let mut out: Vec<CustomStep> = Vec::new();
    for p in paths {
        let shown = p.display().to_string();
        let text = match std::fs::File::open(&p).and_then(|f| {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut std::io::Read::take(f, MAX_MANIFEST + 1), &mut s)
                .map(|_| s)
        }) {
            Ok(t) if t.len() as u64 > MAX_MANIFEST => {
                tracing::error!(manifest = %shown, "custom step skipped: manifest larger than 64 KiB");
                continue;
            }
            Ok(t) => t,
            Err(e) => {
                tracing::error!(manifest = %shown, error = %e, "custom step skipped: cannot read the manifest");
                continue;
            }
        };
        let step = match parse(&text, dir, &p) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(manifest = %shown, error = %e, "custom step skipped: invalid manifest");
                continue;
            }
        };
        let executable = std::fs::metadata(&step.exec).is_ok_and(|m| {
            use std::os::unix::fs::PermissionsExt;
            m.is_file() && m.permissions().mode() & 0o111 != 0
        });
        if !executable {
            tracing::error!(manifest = %shown, exec = %step.exec.display(), "custom step skipped: its executable is missing or not executable");
            continue;
        }
        if let Some(k) = step.kinds.iter().find(|k| {
            taken(**k, &step.name)
                || out
                    .iter()
                    .any(|o| o.name == step.name && o.kinds.contains(k))
        }) {
            tracing::error!(manifest = %shown, step = %step.name, kind = ?k, "custom step skipped: a step of that name exists already");
            continue;
        }
        tracing::info!(manifest = %shown, step = %step.name, kinds = ?step.kinds, "custom step loaded");
        out.push(step);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
step = "write_marker"
kinds = ["clean", "service", "clean"]
priority = 0
abortable = true
timeout = 60
exec = "marker.sh"

[argsinfo.text]
description = "What to write"
required = true

[argsinfo.offset]
description = "Where"
"#;

    #[test]
    fn a_complete_manifest() {
        let s = parse(GOOD, Path::new("/etc/rivet/steps.d"), Path::new("m.toml")).unwrap();
        assert_eq!(s.name, "write_marker");
        assert_eq!(s.kinds, [StepKind::Clean, StepKind::Service]);
        assert_eq!(s.interface, "deploy");
        assert!(s.abortable && !s.reboot_requested);
        assert_eq!(s.timeout, Duration::from_secs(60));
        assert_eq!(s.exec, Path::new("/etc/rivet/steps.d/marker.sh"));
        assert_eq!(
            s.argsinfo_json().unwrap()["text"],
            json!({"description": "What to write", "required": true})
        );
        let mut args = Map::new();
        assert_eq!(s.missing_args(&args), ["text"]);
        args.insert("text".into(), Value::Null);
        assert_eq!(s.missing_args(&args), ["text"], "null is missing");
        args.insert("text".into(), json!("hi"));
        assert!(s.missing_args(&args).is_empty());
    }

    #[test]
    fn every_rule_has_its_error() {
        let base =
            |extra: &str| format!("kinds = [\"clean\"]\ntimeout = 5\nexec = \"/bin/x\"\n{extra}");
        for (text, want) in [
            (base("step = \"Bad-Name\""), "invalid step"),
            (base("step = \"\""), "invalid step"),
            (base("step = \"9lives\""), "invalid step"),
            (
                base("step = \"ok\"\ninterface = \"a b\""),
                "invalid interface",
            ),
            (base("step = \"ok\"\npriority = -1"), "invalid priority"),
            (base("step = \"ok\"\npriority = 99999"), "invalid priority"),
            (base("step = \"ok\"\nunknown = 1"), "unknown field"),
            (
                base("step = \"ok\"\n[argsinfo.\"a b\"]\ndescription = \"x\""),
                "invalid argsinfo",
            ),
            (
                "step = \"ok\"\nkinds = []\ntimeout = 5\nexec = \"x\"".into(),
                "invalid kinds",
            ),
            (
                "step = \"ok\"\nkinds = [\"rescue\"]\ntimeout = 5\nexec = \"x\"".into(),
                "unknown variant",
            ),
            (
                "step = \"ok\"\nkinds = [\"clean\"]\ntimeout = 0\nexec = \"x\"".into(),
                "invalid timeout",
            ),
            (
                "step = \"ok\"\nkinds = [\"clean\"]\ntimeout = 99999999\nexec = \"x\"".into(),
                "invalid timeout",
            ),
            (
                "step = \"ok\"\nkinds = [\"clean\"]\ntimeout = 5\nexec = \"\"".into(),
                "invalid exec",
            ),
            (
                "step = \"ok\"\nkinds = [\"clean\"]\nexec = \"x\"".into(),
                "missing field `timeout`",
            ),
            ("step = [".into(), ""),
        ] {
            let e = parse(&text, Path::new("/d"), Path::new("m.toml")).unwrap_err();
            assert!(e.to_string().contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn a_directory_keeps_the_good_and_logs_the_bad() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let exe = d.path().join("run.sh");
        std::fs::write(&exe, "#!/bin/sh\necho '{}'\n").unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(d.path().join("noexec.sh"), "").unwrap();
        let m = |name: &str, step: &str, exec: &str| {
            std::fs::write(
                d.path().join(name),
                format!("step = \"{step}\"\nkinds = [\"clean\"]\ntimeout = 5\nexec = \"{exec}\"\n"),
            )
            .unwrap()
        };
        m("a.toml", "first", "run.sh");
        m("b.toml", "first", "run.sh"); // same name as a.toml
        m("c.toml", "erase_devices", "run.sh"); // a built-in's name
        m("d.toml", "no_exec", "noexec.sh");
        m("e.toml", "missing", "nothere.sh");
        std::fs::write(d.path().join("f.toml"), "not = [valid").unwrap();
        std::fs::write(d.path().join("g.toml"), "x".repeat(70_000)).unwrap();
        m("h.toml", "second", &exe.display().to_string());
        std::fs::write(d.path().join("README"), "ignored").unwrap();
        let taken = |_: StepKind, n: &str| n == "erase_devices";
        let got: Vec<String> = load(d.path(), &taken).into_iter().map(|s| s.name).collect();
        assert_eq!(got, ["first", "second"]);
        assert!(load(Path::new("/nonexistent"), &taken).is_empty());
    }
}
