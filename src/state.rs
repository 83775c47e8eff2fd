//! What must survive an agent restart within one boot, kept under the state directory
//! (default `/run/rivet`, a tmpfs: gone at the next boot, as the conductor expects).
//!
//! The conductor hands out the agent token once per boot (later lookups answer `******`) and
//! rejects a heartbeat whose `agent_verify_ca` changed, so a restarted agent that lost either
//! could never talk to it again. Files are written atomically (temp file + rename), every one
//! with mode 0600 in a 0700 directory: the token, the TLS key, and the command history (whose
//! results are redacted, but say what was deployed where) are nobody else's business.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
#[error("state directory {path}: {source}")]
pub struct StateError {
    path: PathBuf,
    source: std::io::Error,
}

/// The agent token, shared by the API's gate and the heartbeats. It is replaced when the
/// conductor issues a new one (fast-track: the conductor wiped the old one between flows).
#[derive(Debug, Default)]
pub struct AgentToken(std::sync::RwLock<Option<String>>);

impl AgentToken {
    pub fn new(t: Option<String>) -> AgentToken {
        AgentToken(std::sync::RwLock::new(t))
    }

    pub fn get(&self) -> Option<String> {
        self.0.read().map(|t| t.clone()).unwrap_or(None)
    }

    pub fn set(&self, t: Option<String>) {
        if let Ok(mut cur) = self.0.write() {
            *cur = t;
        }
    }

    /// Constant-time comparison. Missing or empty tokens never match.
    pub fn matches(&self, given: Option<&str>) -> bool {
        use subtle::ConstantTimeEq;
        match (self.get(), given) {
            (Some(ours), Some(theirs)) if !theirs.is_empty() => {
                ours.len() == theirs.len() && bool::from(ours.as_bytes().ct_eq(theirs.as_bytes()))
            }
            _ => false,
        }
    }
}

/// Identity of this agent session with the conductor.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Session {
    pub node_uuid: String,
    pub token: Option<String>,
}

#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    pub fn open(dir: &Path) -> Result<StateDir, StateError> {
        let err = |source| StateError {
            path: dir.to_path_buf(),
            source,
        };
        fs::create_dir_all(dir).map_err(err)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(err)?;
        Ok(StateDir {
            dir: dir.to_path_buf(),
        })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Read a file, `None` when it does not exist or cannot be read.
    pub fn read(&self, name: &str) -> Option<Vec<u8>> {
        fs::read(self.path(name)).ok()
    }

    pub fn write(&self, name: &str, data: &[u8]) -> Result<(), StateError> {
        let path = self.path(name);
        let tmp = self.path(&format!(".{name}.tmp"));
        let err = |source| StateError {
            path: path.clone(),
            source,
        };
        let mut f = fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(err)?;
        f.write_all(data).map_err(err)?;
        f.sync_all().map_err(err)?;
        fs::rename(&tmp, &path).map_err(err)
    }

    pub fn load_session(&self) -> Option<Session> {
        serde_json::from_slice(&self.read("session.json")?).ok()
    }

    pub fn save_session(&self, s: &Session) -> Result<(), StateError> {
        let data = serde_json::to_vec(s).unwrap_or_default();
        self.write("session.json", &data)
    }

    /// Whether `system.lockdown` was asked for in this boot: a restarted agent must not
    /// serve or heartbeat again when the machine could not be taken off the network.
    pub fn locked_down(&self) -> bool {
        self.path("lockdown").exists()
    }

    pub fn save_lockdown(&self) -> Result<(), StateError> {
        self.write("lockdown", b"system.lockdown was run in this boot\n")
    }

    /// The node this boot's inspection was accepted for, if it already ran (an agent
    /// restarted later in the boot does not inspect again).
    pub fn inspected(&self) -> Option<String> {
        let v: serde_json::Value = serde_json::from_slice(&self.read("inspection.json")?).ok()?;
        v.get("node_uuid")?.as_str().map(str::to_string)
    }

    pub fn save_inspected(&self, node_uuid: &str) -> Result<(), StateError> {
        let data = serde_json::json!({ "node_uuid": node_uuid }).to_string();
        self.write("inspection.json", data.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_replacement_and_constant_time_match() {
        let t = AgentToken::new(Some("a".repeat(43)));
        assert!(t.matches(Some(&"a".repeat(43))));
        assert!(!t.matches(Some(&"a".repeat(42))) && !t.matches(Some("")) && !t.matches(None));
        t.set(Some("b".repeat(43)));
        assert!(!t.matches(Some(&"a".repeat(43))) && t.matches(Some(&"b".repeat(43))));
        t.set(None);
        assert!(!t.matches(Some("")) && !t.matches(None));
    }

    #[test]
    fn inspection_marker_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let s = StateDir::open(d.path()).unwrap();
        assert!(s.inspected().is_none());
        s.save_inspected("n1").unwrap();
        assert_eq!(s.inspected().as_deref(), Some("n1"));
    }

    #[test]
    fn session_round_trip_and_secret_mode() {
        let d = tempfile::tempdir().unwrap();
        let s = StateDir::open(&d.path().join("state")).unwrap();
        assert!(s.load_session().is_none());
        let sess = Session {
            node_uuid: "n1".into(),
            token: Some("t".repeat(43)),
        };
        s.save_session(&sess).unwrap();
        assert_eq!(s.load_session(), Some(sess));
        let mode = fs::metadata(s.path("session.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
