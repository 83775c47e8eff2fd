//! Choosing the disk to deploy onto, IPA's way, but never silently:
//! * candidates are whole disks and md arrays that are writable, not in `skip_block_devices`;
//! * with hints, the first candidate (kernel order) matching all of them; a hint that matches
//!   nothing is an error listing every candidate and why it failed;
//! * without hints, the smallest candidate of at least 4 GiB; in strict mode (our own
//!   `ipa-strict-root-device=1`) more than one such candidate is an error instead of a guess.
//!
//! The whole decision table is returned (and logged) for operators.

use serde::Serialize;
use serde_json::Value;

use super::disks::Disk;
use super::hints::{self, HintError};

pub const MIN_SIZE: u64 = 4 << 30;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Row {
    pub name: String,
    pub size: u64,
    /// The partition table a deploy would replace, if any.
    pub partition_table: Option<String>,
    /// "chosen", "candidate" (qualified but not chosen), or "rejected".
    pub verdict: &'static str,
    pub reasons: Vec<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Decision {
    pub device: Disk,
    pub table: Vec<Row>,
}

#[derive(Debug, thiserror::Error)]
pub enum RootDeviceError {
    #[error(transparent)]
    BadHint(#[from] HintError),
    #[error("invalid skip_block_devices: {0}")]
    BadSkipList(String),
    #[error("no disk matches the root device hints {hints}:\n{}", render(.table))]
    NoMatch { hints: String, table: Vec<Row> },
    #[error(
        "No suitable device was found for deployment - root device hints were not provided and all found \
         block devices are smaller than {MIN_SIZE}B:\n{}", render(.table)
    )]
    TooSmall { table: Vec<Row> },
    #[error("no disks found")]
    NoDisks,
    #[error("strict root device mode: {count} disks qualify and no root device hints were given:\n{}", render(.table))]
    Ambiguous { count: usize, table: Vec<Row> },
}

/// The decision table as text, one disk a line.
pub fn render(table: &[Row]) -> String {
    table
        .iter()
        .map(|r| {
            format!(
                "  {:<24} {:>10.2} GiB  {:<5} {:<9} {}",
                r.name,
                r.size as f64 / (1u64 << 30) as f64,
                r.partition_table.as_deref().unwrap_or("-"),
                r.verdict,
                r.reasons.join("; ")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Remove the devices matched by any entry of `skip_block_devices` (a list of hint objects;
/// entries naming a software RAID `volume_name` are not disk filters).
pub fn skipped(skip: Option<&Value>, d: &Disk) -> Result<Option<String>, RootDeviceError> {
    let Some(list) = skip.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let list = list
        .as_array()
        .ok_or_else(|| RootDeviceError::BadSkipList(format!("{list} is not a list")))?;
    for entry in list {
        if entry.get("volume_name").is_some() {
            continue;
        }
        let hs = hints::parse(entry)?;
        let t = d.hint_target();
        if !hs.is_empty() && hs.iter().all(|h| hints::check(h, &t).is_ok()) {
            return Ok(Some(format!("listed in skip_block_devices ({entry})")));
        }
    }
    Ok(None)
}

/// Why `d` is off limits to a deploy or a cleaning that its hints do not name: removable
/// media (a forgotten USB stick: IPA's documentation warns about it), virtual media the BMC
/// attached, a member of an md array. `None` when it may be used.
pub fn protected(d: &Disk, root_hints: Option<&Value>) -> Result<Option<String>, RootDeviceError> {
    let named =
        match root_hints.filter(|h| !h.is_null() && h.as_object().is_none_or(|o| !o.is_empty())) {
            Some(h) => {
                let hs = hints::parse(h)?;
                let t = d.hint_target();
                hs.iter().all(|h| hints::check(h, &t).is_ok())
            }
            None => false,
        };
    if !d.md_holders.is_empty() {
        return Ok(Some(format!("member of {}", d.md_holders.join(", "))));
    }
    if named {
        return Ok(None);
    }
    Ok(if d.virtual_media {
        Some("virtual media (name it in a root device hint to use it)".into())
    } else if d.removable {
        Some("removable media (name it in a root device hint to use it)".into())
    } else {
        None
    })
}

/// Whether the node has a software RAID configuration (a logical disk with `controller:
/// software` in `target_raid_config` or `raid_config`): only then is an md array a root
/// candidate. An array the node did not ask for is a previous tenant's, and deploying onto it
/// would hand one tenant's disks to the next.
pub fn has_software_raid(node: &Value) -> bool {
    [
        "/target_raid_config/logical_disks",
        "/raid_config/logical_disks",
    ]
    .iter()
    .filter_map(|p| node.pointer(p).and_then(Value::as_array))
    .flatten()
    .any(|l| l.get("controller").and_then(Value::as_str) == Some("software"))
}

/// Choose among `disks` (already discovered, kernel order).
pub fn choose(
    disks: &[Disk],
    root_hints: Option<&Value>,
    skip: Option<&Value>,
    strict: bool,
) -> Result<Decision, RootDeviceError> {
    choose_among(disks, root_hints, skip, strict, true)
}

/// [`choose`], with md arrays admitted or rejected (`arrays`).
fn choose_among(
    disks: &[Disk],
    root_hints: Option<&Value>,
    skip: Option<&Value>,
    strict: bool,
    arrays: bool,
) -> Result<Decision, RootDeviceError> {
    if disks.is_empty() {
        return Err(RootDeviceError::NoDisks);
    }
    let parsed =
        match root_hints.filter(|h| !h.is_null() && h.as_object().is_none_or(|o| !o.is_empty())) {
            Some(h) => Some(hints::parse(h)?),
            None => None,
        };
    let mut table = Vec::new();
    let mut qualified: Vec<usize> = Vec::new();
    for (i, d) in disks.iter().enumerate() {
        let mut reasons = Vec::new();
        if d.read_only {
            reasons.push("read-only".to_string());
        }
        if d.kind == "raid" && !arrays {
            reasons.push(
                "software RAID array, and the node has no software RAID configuration".into(),
            );
        }
        if let Some(why) = skipped(skip, d)? {
            reasons.push(why);
        }
        if parsed.is_none() {
            if let Some(why) = protected(d, None)? {
                reasons.push(why);
            }
        } else if !d.md_holders.is_empty() {
            reasons.push(format!("member of {}", d.md_holders.join(", ")));
        }
        match &parsed {
            Some(hs) => {
                let t = d.hint_target();
                reasons.extend(
                    hs.iter()
                        .filter_map(|h| hints::check(h, &t).err().map(|m| m.0)),
                );
            }
            None if d.size < MIN_SIZE => {
                reasons.push(format!("smaller than {} GiB", MIN_SIZE >> 30))
            }
            None => {}
        }
        if reasons.is_empty() {
            qualified.push(i);
        }
        table.push(Row {
            name: d.name.clone(),
            size: d.size,
            partition_table: d.partition_table.clone(),
            verdict: if reasons.is_empty() {
                "candidate"
            } else {
                "rejected"
            },
            reasons,
        });
    }
    let pick = match &parsed {
        Some(_) => qualified.first().copied(),
        None => {
            if strict && qualified.len() > 1 {
                return Err(RootDeviceError::Ambiguous {
                    count: qualified.len(),
                    table,
                });
            }
            // Smallest first, the name breaking ties, like IPA.
            qualified.iter().copied().min_by(|&a, &b| {
                (disks[a].size, &disks[a].name).cmp(&(disks[b].size, &disks[b].name))
            })
        }
    };
    match pick {
        Some(i) => {
            table[i].verdict = "chosen";
            Ok(Decision {
                device: disks[i].clone(),
                table,
            })
        }
        None => match root_hints.filter(|_| parsed.is_some()) {
            Some(h) => Err(RootDeviceError::NoMatch {
                hints: h.to_string(),
                table,
            }),
            None => Err(RootDeviceError::TooSmall { table }),
        },
    }
}

/// Hints and skip list as the conductor gives them in the node: `instance_info.root_device`
/// wins over `properties.root_device`; `properties.skip_block_devices`.
pub fn node_hints(node: &Value) -> (Option<Value>, Option<Value>) {
    let non_empty = |v: Option<&Value>| {
        v.filter(|v| !v.is_null() && v.as_object().is_none_or(|o| !o.is_empty()))
            .cloned()
    };
    let hints = non_empty(node.pointer("/instance_info/root_device"))
        .or_else(|| non_empty(node.pointer("/properties/root_device")));
    let skip = node
        .pointer("/properties/skip_block_devices")
        .filter(|v| !v.is_null())
        .cloned();
    (hints, skip)
}

/// Choose the deploy target for `node` and log the decision table. md arrays qualify only for
/// a node with a software RAID configuration ([`has_software_raid`]).
pub fn select_for_node(
    disks: &[Disk],
    node: &Value,
    strict: bool,
) -> Result<Decision, RootDeviceError> {
    select(disks, node, strict, true)
}

/// [`select_for_node`], logging a failure only with `log_failure` (a caller that looks again
/// while disks appear logs its last try only).
pub fn select(
    disks: &[Disk],
    node: &Value,
    strict: bool,
    log_failure: bool,
) -> Result<Decision, RootDeviceError> {
    let (hints, skip) = node_hints(node);
    let r = choose_among(
        disks,
        hints.as_ref(),
        skip.as_ref(),
        strict,
        has_software_raid(node),
    );
    match &r {
        Ok(d) => {
            tracing::info!(device = %d.device.name, hints = ?hints, "root device chosen:\n{}", render(&d.table))
        }
        Err(e) if log_failure => tracing::error!("root device selection failed: {e}"),
        Err(_) => {}
    }
    r
}

/// Wait for disks to appear (drivers may still be probing when the agent starts), up to
/// `attempts` tries `delay` apart, like IPA's `ipa-disk-wait-attempts/-delay`. Logs the
/// default choice's decision table; an empty machine is logged, not fatal, since the
/// conductor may not need a disk (cleaning of other devices, inspection).
pub fn wait_for_disks(
    src: &super::disks::Sources,
    allow_loop: bool,
    attempts: u32,
    delay: std::time::Duration,
) -> Vec<Disk> {
    // IPA's budget (attempts × delay), but polled often: a disk that appears is used at once,
    // not at the end of a 3 s sleep.
    let budget = delay.saturating_mul(attempts.max(1).saturating_sub(1));
    let poll = delay.min(std::time::Duration::from_millis(100));
    let start = std::time::Instant::now();
    loop {
        let found = super::disks::discover(src, allow_loop);
        match choose(&found, None, None, false) {
            Ok(d) => {
                tracing::info!(device = %d.device.name, "root device candidate found (without hints)");
                tracing::debug!("decision table:\n{}", render(&d.table));
                return found;
            }
            Err(e) if start.elapsed() >= budget => {
                tracing::warn!(error = %e, "no root device candidate yet; continuing");
                return found;
            }
            Err(_) => std::thread::sleep(poll),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hardware::disks::{discover, fixtures};
    use serde_json::json;

    fn disks() -> (tempfile::TempDir, Vec<Disk>) {
        let d = tempfile::tempdir().unwrap();
        let src = fixtures::tree(d.path());
        let list = discover(&src, false);
        (d, list)
    }

    fn base(d: &Disk) -> &str {
        d.name.rsplit('/').next().unwrap()
    }

    #[test]
    fn no_hints_smallest_of_at_least_4_gib() {
        let (_t, l) = disks();
        let dec = choose(&l, None, None, false).unwrap();
        // The USB stick (16 GiB) is smaller, but removable media is never guessed; sdd
        // (100 GiB) is read-only; md0 (200 GiB) is the smallest that qualifies.
        assert_eq!(base(&dec.device), "md0");
        let row = |n: &str| {
            dec.table
                .iter()
                .find(|r| r.name.ends_with(n))
                .unwrap()
                .clone()
        };
        assert_eq!(row("sdd").verdict, "rejected");
        assert_eq!(row("sdd").reasons, vec!["read-only"]);
        assert_eq!(row("sdb").verdict, "rejected");
        assert!(
            row("sdb").reasons[0].starts_with("removable media"),
            "{:?}",
            row("sdb")
        );
        // Named by a hint, the stick may be used.
        let named = choose(&l, Some(&json!({"tran": "usb"})), None, false).unwrap();
        assert_eq!(base(&named.device), "sdb");
    }

    #[test]
    fn strict_mode_refuses_to_guess() {
        let (_t, l) = disks();
        let e = choose(&l, None, None, true).unwrap_err();
        // md0, nvme0n1, sda; sdc is a member of md0 (through its partition).
        assert!(
            matches!(e, RootDeviceError::Ambiguous { count: 3, .. }),
            "{e}"
        );
        // With hints strict mode is satisfied.
        assert!(choose(&l, Some(&json!({"tran": "nvme"})), None, true).is_ok());
    }

    #[test]
    fn hints_pick_first_match_and_skip_list_applies() {
        let (_t, l) = disks();
        let dec = choose(&l, Some(&json!({"size": ">= 400"})), None, false).unwrap();
        assert_eq!(base(&dec.device), "nvme0n1");
        let skip = json!([{"name": dec.device.name}]);
        let dec2 = choose(&l, Some(&json!({"size": ">= 400"})), Some(&skip), false).unwrap();
        assert_eq!(base(&dec2.device), "sda");
        let dec3 = choose(&l, Some(&json!({"serial": "s3z9nb0k123"})), None, false).unwrap();
        assert_eq!(base(&dec3.device), "sda");
        // A volume_name entry is not a disk filter.
        assert!(choose(&l, None, Some(&json!([{"volume_name": "root"}])), false).is_ok());
    }

    #[test]
    fn no_match_lists_every_candidate_and_why() {
        let (_t, l) = disks();
        let e = choose(
            &l,
            Some(&json!({"model": "nonexistent", "rotational": true})),
            None,
            false,
        )
        .unwrap_err();
        let msg = e.to_string();
        for n in ["md0", "nvme0n1", "sda", "sdb", "sdc", "sdd"] {
            assert!(msg.contains(n), "{msg}");
        }
        assert!(msg.contains("does not match"), "{msg}");
        // sdc is rotational but a member of md0 and its model fails: exactly those reasons.
        if let RootDeviceError::NoMatch { table, .. } = e {
            let sdc = table.iter().find(|r| r.name.ends_with("sdc")).unwrap();
            assert_eq!(sdc.reasons.len(), 2, "{:?}", sdc.reasons);
            assert!(
                sdc.reasons[0].starts_with("member of ") && sdc.reasons[0].ends_with("/md0"),
                "{:?}",
                sdc.reasons
            );
        } else {
            panic!("wrong error");
        }
    }

    #[test]
    fn hints_come_from_the_node() {
        let (_t, l) = disks();
        let node = json!({"properties": {"root_device": {"tran": "usb"}, "skip_block_devices": [{"tran": "nvme"}]},
                          "instance_info": {"root_device": {"size": ">= 400"}}});
        // instance_info wins; the skip list removes the NVMe disk, so sda is the first >= 400 GiB.
        assert_eq!(
            base(&select_for_node(&l, &node, false).unwrap().device),
            "sda"
        );
        let node = json!({"properties": {"root_device": {"tran": "usb"}}, "instance_info": {"root_device": {}}});
        assert_eq!(
            base(&select_for_node(&l, &node, false).unwrap().device),
            "sdb"
        );
        assert!(
            select_for_node(&l, &json!({}), true).is_err(),
            "strict without hints"
        );
    }

    #[test]
    fn an_array_is_a_root_only_for_a_node_with_software_raid() {
        let (_t, l) = disks();
        let md_row = |node: &Value| {
            let d = select_for_node(&l, node, false).unwrap();
            let row = d
                .table
                .iter()
                .find(|r| r.name.ends_with("md0"))
                .unwrap()
                .clone();
            (base(&d.device).to_string(), row)
        };
        // No RAID configuration: a tenant's array is never a candidate.
        let (chosen, row) = md_row(&json!({}));
        assert_ne!(chosen, "md0");
        assert!(
            row.reasons
                .iter()
                .any(|r| r.contains("no software RAID configuration")),
            "{row:?}"
        );
        // A hardware RAID configuration does not make md arrays candidates either.
        let hw = json!({"target_raid_config": {"logical_disks": [{"controller": "RAID.Integrated.1-1", "raid_level": "1", "size_gb": 100}]}});
        assert!(!has_software_raid(&hw));
        assert!(md_row(&hw)
            .1
            .reasons
            .iter()
            .any(|r| r.contains("no software RAID")));
        // With a software RAID configuration the array is a candidate like any disk.
        let sw = json!({"raid_config": {"logical_disks": [{"controller": "software", "raid_level": "1", "size_gb": 10}]}});
        assert!(has_software_raid(&sw));
        assert!(md_row(&sw)
            .1
            .reasons
            .iter()
            .all(|r| !r.contains("software RAID")));
    }

    #[test]
    fn waiting_for_disks_is_bounded() {
        let d = tempfile::tempdir().unwrap();
        let empty = crate::hardware::disks::Sources {
            sys_block: d.path().join("none"),
            ..Default::default()
        };
        let t = std::time::Instant::now();
        assert!(wait_for_disks(&empty, false, 3, std::time::Duration::from_millis(50)).is_empty());
        assert!(t.elapsed() >= std::time::Duration::from_millis(100));
        let src = fixtures::tree(d.path());
        assert_eq!(
            wait_for_disks(&src, false, 3, std::time::Duration::from_secs(5)).len(),
            6
        );
    }

    #[test]
    fn too_small_and_bad_hints() {
        let (_t, l) = disks();
        let small: Vec<Disk> = l
            .iter()
            .cloned()
            .map(|mut d| {
                d.size = 1 << 30;
                d
            })
            .collect();
        assert!(matches!(
            choose(&small, None, None, false),
            Err(RootDeviceError::TooSmall { .. })
        ));
        assert!(matches!(
            choose(&l, Some(&json!({"colour": "red"})), None, false),
            Err(RootDeviceError::BadHint(_))
        ));
        assert!(matches!(
            choose(&l, None, Some(&json!({"name": "x"})), false),
            Err(RootDeviceError::BadSkipList(_))
        ));
        assert!(matches!(
            choose(&[], None, None, false),
            Err(RootDeviceError::NoDisks)
        ));
    }
}
