//! `rescue.finalize_rescue`: the node is to stay up in this ramdisk for its owner to log in.
//! The `rescue` user gets the password the conductor sends (a crypt hash since Ironic Ussuri;
//! a plain one is hashed here with SHA-512 crypt), written into the ramdisk's shadow file and,
//! for ramdisk scripts written for IPA, into `/etc/ipa-rescue-config/ipa-rescue-password`. Then
//! the agent stops heartbeating and serving its API, as IPA does, and idles.

use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use serde::Deserialize;

use super::{args, Context, Outcome, Params, SystemEvent};
use crate::error::{CommandError, ErrorKind};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Args {
    #[serde(default)]
    rescue_password: String,
    #[serde(default)]
    hashed: bool,
}

const USER: &str = "rescue";
const UID: u32 = 1999;

fn err(e: impl std::fmt::Display) -> CommandError {
    CommandError::new(ErrorKind::CommandExecution, format!("finalize_rescue: {e}"))
}

fn write_private(path: &Path, data: &str) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data.as_bytes())?;
    f.sync_all()
}

/// Give `rescue` the password hash in `etc` (passwd, group and shadow), creating the user
/// when the ramdisk has none.
pub fn set_rescue_password(etc: &Path, hash: &str) -> std::io::Result<()> {
    let read = |n: &str| std::fs::read_to_string(etc.join(n)).unwrap_or_default();
    let passwd = read("passwd");
    if !passwd.lines().any(|l| l.starts_with("rescue:")) {
        let mut p = passwd;
        if !p.is_empty() && !p.ends_with('\n') {
            p.push('\n');
        }
        p.push_str(&format!("{USER}:x:{UID}:{UID}:rescue:/:/bin/sh\n"));
        std::fs::write(etc.join("passwd"), p)?;
        let mut g = read("group");
        if !g.lines().any(|l| l.starts_with("rescue:")) {
            if !g.is_empty() && !g.ends_with('\n') {
                g.push('\n');
            }
            g.push_str(&format!("{USER}:x:{UID}:\n"));
            std::fs::write(etc.join("group"), g)?;
        }
    }
    let shadow = read("shadow");
    let mut found = false;
    let mut out = String::new();
    for l in shadow.lines() {
        match l.split_once(':') {
            Some((u, rest)) if u == USER => {
                found = true;
                let tail = rest.split_once(':').map_or("", |(_, t)| t);
                out.push_str(&format!("{USER}:{hash}:{tail}\n"));
            }
            _ => {
                out.push_str(l);
                out.push('\n');
            }
        }
    }
    if !found {
        out.push_str(&format!("{USER}:{hash}:19000:0:99999:7:::\n"));
    }
    write_private(&etc.join("shadow"), &out)?;
    write_private(&etc.join("ipa-rescue-config/ipa-rescue-password"), hash)
}

pub fn finalize_rescue(ctx: &Context, params: Params) -> Result<Outcome, CommandError> {
    let a: Args = args(params)?;
    if a.rescue_password.is_empty() {
        return Err(CommandError::new(
            ErrorKind::InvalidParams,
            "finalize_rescue needs a rescue_password",
        ));
    }
    let etc = ctx.config.etc_dir.clone();
    // Tests run on real machines: never touch the host's own /etc there.
    if ctx.config.simulate_power && etc == Path::new("/etc") {
        return Err(err(
            "refusing to change /etc/shadow with --simulate-power (tests): pass --etc-dir",
        ));
    }
    let hash = if a.hashed {
        if !a.rescue_password.starts_with('$') || a.rescue_password.contains([':', '\n']) {
            return Err(CommandError::new(
                ErrorKind::InvalidParams,
                "rescue_password is not a crypt hash",
            ));
        }
        a.rescue_password
    } else {
        sha_crypt::sha512_simple(&a.rescue_password, &sha_crypt::Sha512Params::default())
            .map_err(|e| err(format!("hashing the password: {e:?}")))?
    };
    set_rescue_password(&etc, &hash).map_err(err)?;
    tracing::info!(user = USER, "rescue password set; the agent stops serving");
    ctx.emit(SystemEvent::Rescue);
    Ok(Outcome::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_or_updates_the_rescue_user() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
        std::fs::write(d.path().join("shadow"), "root:*:19000:0:99999:7:::\n").unwrap();
        set_rescue_password(d.path(), "$6$salt$hash1").unwrap();
        let shadow = std::fs::read_to_string(d.path().join("shadow")).unwrap();
        assert!(shadow.contains("root:*:") && shadow.contains("rescue:$6$salt$hash1:19000"));
        assert!(std::fs::read_to_string(d.path().join("passwd"))
            .unwrap()
            .contains("rescue:x:1999"));
        set_rescue_password(d.path(), "$6$salt$hash2").unwrap();
        let shadow = std::fs::read_to_string(d.path().join("shadow")).unwrap();
        assert_eq!(shadow.matches("rescue:").count(), 1);
        assert!(shadow.contains("rescue:$6$salt$hash2:19000:0:99999:7:::"));
        assert_eq!(
            std::fs::read_to_string(d.path().join("ipa-rescue-config/ipa-rescue-password"))
                .unwrap(),
            "$6$salt$hash2"
        );
    }
}
