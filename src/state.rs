//! What must survive an agent restart within one boot, kept under the state directory
//! (default `/run/rivet`, a tmpfs: gone at the next boot, as the conductor expects).
//!
//! The conductor hands out the agent token once per boot (later lookups answer `******`) and
//! rejects a heartbeat whose `agent_verify_ca` changed, so a restarted agent that lost either
//! could never talk to it again. Files are written atomically (temp file + rename) and the
//! secrets with mode 0600.

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
        fs::create_dir_all(dir).map_err(|source| StateError {
            path: dir.to_path_buf(),
            source,
        })?;
        let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
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

    pub fn write(&self, name: &str, data: &[u8], secret: bool) -> Result<(), StateError> {
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
            .mode(if secret { 0o600 } else { 0o644 })
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
        self.write("session.json", &data, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
