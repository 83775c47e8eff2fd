//! PCI devices from sysfs, in the shape of IPA's `pci-devices` inspection collector (Ironic's
//! `pci-devices` hook counts them by vendor and product id to set capabilities).

use std::fs;
use std::path::Path;

use serde::Serialize;

use super::read_trim;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PciDevice {
    /// Hex without `0x`, as IPA sends it: "8086".
    pub vendor_id: String,
    pub product_id: String,
    pub class: String,
    pub revision: Option<String>,
    /// The PCI address: "0000:00:1f.2".
    pub bus: String,
    /// As sysfs has it ("-1" on machines without NUMA), or null.
    pub numa_node_id: Option<String>,
}

/// "0x8086" → "8086"; `None` for anything that is not `0x` + hex digits.
fn hex_id(s: &str) -> Option<String> {
    let h = s.strip_prefix("0x")?;
    (!h.is_empty() && h.chars().all(|c| c.is_ascii_hexdigit())).then(|| h.to_ascii_lowercase())
}

/// Every device under `root` (normally /sys/bus/pci/devices), sorted by address. A device
/// whose ids cannot be read is skipped with a warning, as IPA does.
pub fn devices(root: &Path) -> std::io::Result<Vec<PciDevice>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(root)? {
        let entry = entry?;
        let dir = entry.path();
        let bus = entry.file_name().to_string_lossy().into_owned();
        let id = |f: &str| read_trim(&dir.join(f)).and_then(|v| hex_id(&v));
        let (Some(vendor_id), Some(product_id), Some(class)) =
            (id("vendor"), id("device"), id("class"))
        else {
            tracing::warn!(device = %bus, "PCI device without readable vendor, device or class; skipped");
            continue;
        };
        out.push(PciDevice {
            vendor_id,
            product_id,
            class,
            revision: id("revision"),
            numa_node_id: read_trim(&dir.join("numa_node")),
            bus,
        });
    }
    out.sort_by(|a, b| a.bus.cmp(&b.bus));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixture_tree() {
        let d = tempfile::tempdir().unwrap();
        let dev = |addr: &str, files: &[(&str, &str)]| {
            let p = d.path().join(addr);
            fs::create_dir_all(&p).unwrap();
            for (f, v) in files {
                fs::write(p.join(f), format!("{v}\n")).unwrap();
            }
        };
        dev(
            "0000:3b:00.0",
            &[
                ("vendor", "0x15B3"),
                ("device", "0x1017"),
                ("class", "0x020000"),
                ("revision", "0x00"),
                ("numa_node", "1"),
            ],
        );
        dev(
            "0000:00:1f.2",
            &[
                ("vendor", "0x8086"),
                ("device", "0xa352"),
                ("class", "0x010601"),
                ("numa_node", "-1"),
            ],
        );
        dev(
            "0000:00:02.0",
            &[
                ("vendor", "garbage"),
                ("device", "0x1234"),
                ("class", "0x030000"),
            ],
        );
        dev("0000:00:03.0", &[("vendor", "0x8086")]);
        let list = devices(d.path()).unwrap();
        assert_eq!(list.len(), 2, "{list:?}");
        assert_eq!(
            list[0],
            PciDevice {
                vendor_id: "8086".into(),
                product_id: "a352".into(),
                class: "010601".into(),
                revision: None,
                bus: "0000:00:1f.2".into(),
                numa_node_id: Some("-1".into()),
            }
        );
        assert_eq!(list[1].vendor_id, "15b3");
        assert_eq!(list[1].revision.as_deref(), Some("00"));
        assert_eq!(list[1].numa_node_id.as_deref(), Some("1"));
        assert!(devices(&d.path().join("missing")).is_err());
    }
}
