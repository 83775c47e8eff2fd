//! USB devices from sysfs, in the shape of IPA's `usb-devices` collector (`product`, `vendor`,
//! and lshw's `handle`, "USB:bus:device"). Hubs are left out: they are plumbing, not devices
//! an operator asks about.

use std::fs;
use std::path::Path;

use serde::Serialize;

use super::read_trim;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UsbDevice {
    pub product: String,
    pub vendor: String,
    pub handle: String,
}

/// `root` is /sys/bus/usb/devices. Interfaces ("1-1:1.0") have no idVendor and are skipped.
pub fn devices(root: &Path) -> std::io::Result<Vec<UsbDevice>> {
    let mut out: Vec<(u32, u32, UsbDevice)> = Vec::new();
    for entry in fs::read_dir(root)? {
        let dir = entry?.path();
        let Some(vendor_id) = read_trim(&dir.join("idVendor")) else {
            continue;
        };
        if read_trim(&dir.join("bDeviceClass")).as_deref() == Some("09") {
            continue;
        }
        let num = |f: &str| read_trim(&dir.join(f)).and_then(|v| v.parse::<u32>().ok());
        let (Some(bus), Some(dev)) = (num("busnum"), num("devnum")) else {
            continue;
        };
        let product_id = read_trim(&dir.join("idProduct")).unwrap_or_default();
        out.push((
            bus,
            dev,
            UsbDevice {
                product: read_trim(&dir.join("product")).unwrap_or(product_id),
                vendor: read_trim(&dir.join("manufacturer")).unwrap_or(vendor_id),
                handle: format!("USB:{bus}:{dev}"),
            },
        ));
    }
    out.sort_by_key(|(b, d, _)| (*b, *d));
    Ok(out.into_iter().map(|(_, _, d)| d).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixture_tree() {
        let d = tempfile::tempdir().unwrap();
        let dev = |name: &str, files: &[(&str, &str)]| {
            let p = d.path().join(name);
            fs::create_dir_all(&p).unwrap();
            for (f, v) in files {
                fs::write(p.join(f), format!("{v}\n")).unwrap();
            }
        };
        dev(
            "usb1",
            &[
                ("idVendor", "1d6b"),
                ("idProduct", "0002"),
                ("bDeviceClass", "09"),
                ("busnum", "1"),
                ("devnum", "1"),
                ("product", "EHCI Host Controller"),
            ],
        );
        dev(
            "1-1",
            &[
                ("idVendor", "0624"),
                ("idProduct", "0249"),
                ("bDeviceClass", "00"),
                ("busnum", "1"),
                ("devnum", "3"),
                ("product", "Virtual Keyboard"),
                ("manufacturer", "Avocent"),
            ],
        );
        dev(
            "1-2",
            &[
                ("idVendor", "abcd"),
                ("idProduct", "1234"),
                ("bDeviceClass", "00"),
                ("busnum", "1"),
                ("devnum", "2"),
            ],
        );
        dev("1-1:1.0", &[("bInterfaceClass", "03")]);
        let list = devices(d.path()).unwrap();
        assert_eq!(
            list,
            vec![
                UsbDevice {
                    product: "1234".into(),
                    vendor: "abcd".into(),
                    handle: "USB:1:2".into()
                },
                UsbDevice {
                    product: "Virtual Keyboard".into(),
                    vendor: "Avocent".into(),
                    handle: "USB:1:3".into()
                },
            ]
        );
    }
}
