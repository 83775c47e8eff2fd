//! Burn-in steps (`burnin_cpu`, `burnin_memory`, `burnin_disk`, `burnin_network`), clean and
//! service steps of the `deploy` interface at priority 0, configured as IPA is: by the node's
//! `driver_info` keys `agent_burnin_*`. The values are checked here (an absurd number is a
//! clear error, not a week-long run by accident); the runs are `system::burnin`.

use std::time::Duration;

use serde_json::{Map, Value};

use super::Context;
use crate::error::{CommandError, ErrorKind};
use crate::system::burnin::{self, FioDisk, FioNetwork, Stress};

/// The longest burn-in a key may ask for: a week.
const MAX_SECONDS: u64 = 7 * 24 * 3600;

fn bad(msg: String) -> CommandError {
    CommandError::new(ErrorKind::InvalidParams, msg)
}

fn run_err(e: burnin::BurninError) -> CommandError {
    CommandError::new(ErrorKind::CommandExecution, e.to_string())
}

/// `driver_info[key]` as a whole number (JSON number or numeric string), within `max`.
fn number(info: &Value, key: &str, default: u64, max: u64) -> Result<u64, CommandError> {
    let n = match info.get(key) {
        None | Some(Value::Null) => return Ok(default),
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.trim().parse::<u64>().ok(),
        Some(_) => None,
    };
    match n {
        Some(n) if n <= max => Ok(n),
        _ => Err(bad(format!(
            "driver_info {key} must be a whole number from 0 to {max}, not {}",
            info[key]
        ))),
    }
}

fn text(info: &Value, key: &str) -> Result<Option<String>, CommandError> {
    match info.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 4096 && !s.contains('\0') => {
            Ok(Some(s.clone()))
        }
        Some(v) => Err(bad(format!("driver_info {key} must be a string, not {v}"))),
    }
}

/// The report file `driver_info[key]` asks for, inside `<state dir>/burnin` (see
/// `burnin::log_path`).
fn log_file(
    ctx: &Context,
    info: &Value,
    key: &str,
) -> Result<Option<std::path::PathBuf>, CommandError> {
    text(info, key)?
        .map(|v| {
            burnin::log_path(&ctx.config.state_dir.join("burnin"), &v)
                .map_err(|e| bad(format!("driver_info {key}: {e}")))
        })
        .transpose()
}

/// stress-ng's `--vm-bytes`: a percentage or a size with an optional unit.
fn vm_bytes(s: &str) -> bool {
    let digits = s.trim_end_matches(['%', 'b', 'B', 'k', 'K', 'm', 'M', 'g', 'G', 't', 'T']);
    !digits.is_empty() && digits.len() + 1 >= s.len() && digits.bytes().all(|b| b.is_ascii_digit())
}

fn stress(ctx: &Context, stressor: &'static str) -> Result<Option<Value>, CommandError> {
    let node = ctx.node_value();
    let info = &node["driver_info"];
    let workers_key = if stressor == "cpu" {
        "agent_burnin_cpu_cpu"
    } else {
        "agent_burnin_vm_vm"
    };
    let s = Stress {
        stressor,
        workers: number(info, workers_key, 0, 4096)?,
        seconds: number(
            info,
            &format!("agent_burnin_{stressor}_timeout"),
            86_400,
            MAX_SECONDS,
        )?
        .max(1),
        vm_bytes: if stressor == "vm" {
            let b = text(info, "agent_burnin_vm_vm-bytes")?.unwrap_or_else(|| "98%".into());
            if !vm_bytes(&b) {
                return Err(bad(format!(
                    "driver_info agent_burnin_vm_vm-bytes must be like 98% or 4G, not {b:?}"
                )));
            }
            Some(b)
        } else {
            None
        },
        log_file: log_file(ctx, info, &format!("agent_burnin_{stressor}_outputfile"))?,
    };
    burnin::stress(&s).map(Some).map_err(run_err)
}

pub fn burnin_cpu(
    ctx: &Context,
    _args: &Map<String, Value>,
) -> Result<Option<Value>, CommandError> {
    stress(ctx, "cpu")
}

pub fn burnin_memory(
    ctx: &Context,
    _args: &Map<String, Value>,
) -> Result<Option<Value>, CommandError> {
    stress(ctx, "vm")
}

/// fio over the disks cleaning may write (never skipped, removable, virtual or read-only
/// ones, never md members behind their arrays: the same list as the erase steps).
pub fn burnin_disk(
    ctx: &Context,
    _args: &Map<String, Value>,
) -> Result<Option<Value>, CommandError> {
    let node = ctx.node_value();
    let info = &node["driver_info"];
    let f = FioDisk {
        devices: super::erase_targets(ctx)?
            .into_iter()
            .map(|d| d.name)
            .collect(),
        loops: number(info, "agent_burnin_fio_disk_loops", 4, 1000)?.max(1),
        runtime: number(info, "agent_burnin_fio_disk_runtime", 0, MAX_SECONDS)?,
    };
    // fio opens the disks itself: each must be free (not mounted, no holder) first, as for any
    // write; the exclusive open says why not.
    for d in &f.devices {
        crate::disk::device::Device::open(std::path::Path::new(d)).map_err(|e| {
            CommandError::new(ErrorKind::CommandExecution, format!("burnin_disk: {e}"))
        })?;
    }
    let log = log_file(ctx, info, "agent_burnin_fio_disk_outputfile")?;
    burnin::fio_disk(&f, log.as_deref())
        .map(Some)
        .map_err(run_err)
}

/// Network burn-in with the partner named in `agent_burnin_fio_network_config`
/// (`{"role": "writer"|"reader", "partner": HOST}`). IPA's dynamic pairing goes through a
/// tooz coordination backend, which this agent does not speak: asked for, it is a clear error.
pub fn burnin_network(
    ctx: &Context,
    _args: &Map<String, Value>,
) -> Result<Option<Value>, CommandError> {
    let node = ctx.node_value();
    let info = &node["driver_info"];
    let runtime = number(
        info,
        "agent_burnin_fio_network_runtime",
        21_600,
        MAX_SECONDS,
    )?
    .max(1);
    let pairing = number(
        info,
        "agent_burnin_fio_network_pairing_timeout",
        900,
        MAX_SECONDS,
    )?;
    let Some(config) = info
        .get("agent_burnin_fio_network_config")
        .filter(|v| !v.is_null())
    else {
        return Err(CommandError::new(
            ErrorKind::Cleaning,
            "burnin_network needs driver_info agent_burnin_fio_network_config \
             ({\"role\": \"writer\" or \"reader\", \"partner\": HOST}); dynamic pairing through a \
             tooz backend is not supported by Rivet",
        ));
    };
    let role = config.get("role").and_then(Value::as_str);
    let partner = config.get("partner").and_then(Value::as_str).filter(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
    });
    let (writer_first, partner) = match (role, partner) {
        (Some("writer"), Some(p)) => (true, p),
        (Some("reader"), Some(p)) => (false, p),
        (Some("writer" | "reader"), None) => {
            return Err(CommandError::new(
                ErrorKind::Cleaning,
                "fio (network) failed to find partner: agent_burnin_fio_network_config has no valid partner",
            ))
        }
        (r, _) => {
            return Err(CommandError::new(
                ErrorKind::Cleaning,
                format!("fio (network) found an unknown role: {}", r.unwrap_or("none")),
            ))
        }
    };
    let n = FioNetwork {
        writer_first,
        partner: partner.to_string(),
        runtime,
    };
    burnin::fio_network(&n, Duration::from_secs(pairing))
        .map(Some)
        .map_err(run_err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn driver_info_values_are_checked() {
        let info = json!({"a": 5, "b": "7", "c": -1, "d": "lots", "e": 1e12, "f": [1]});
        assert_eq!(number(&info, "a", 0, 10).unwrap(), 5);
        assert_eq!(number(&info, "b", 0, 10).unwrap(), 7);
        assert_eq!(number(&info, "missing", 3, 10).unwrap(), 3);
        for k in ["c", "d", "e", "f"] {
            let e = number(&info, k, 0, 10).unwrap_err();
            assert!(e.details.contains(k), "{}", e.details);
        }
        assert_eq!(
            number(&json!({"a": 11}), "a", 0, 10).unwrap_err().kind,
            ErrorKind::InvalidParams
        );
        for ok in ["98%", "4G", "512m", "1024"] {
            assert!(vm_bytes(ok), "{ok}");
        }
        for no in ["", "%", "9 8%", "-1G", "1GG", "x"] {
            assert!(!vm_bytes(no), "{no}");
        }
        assert!(text(&json!({"k": 3}), "k").is_err());
        assert_eq!(text(&json!({}), "k").unwrap(), None);
    }
}
