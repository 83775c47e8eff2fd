//! BMC addresses via `ipmitool`, as IPA reports them: the first non-zero IPv4 address of LAN
//! channels 1–11 (`0.0.0.0` when channels exist but none has one; `None` without ipmitool or
//! an IPMI device), the IPv6 one likewise (`::/0` when none), and the BMC MAC when found.

use std::time::Duration;

use crate::system::tools::run_capture;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bmc {
    pub v4: Option<String>,
    pub v6: Option<String>,
    pub mac: Option<String>,
}

const TIMEOUT: Duration = Duration::from_secs(10);

/// `Key : value` lines of `ipmitool lan print`.
fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == key).then(|| v.trim())
    })
}

/// Parse one channel's `lan print` output: (IPv4, MAC).
pub fn parse_lan_print(text: &str) -> (Option<String>, Option<String>) {
    let ip = field(text, "IP Address").map(str::to_string);
    let mac = field(text, "MAC Address").map(|m| m.to_ascii_lowercase());
    (ip, mac)
}

/// Parse `lan6 print`: the first global address that is not `::`.
pub fn parse_lan6_print(text: &str) -> Option<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("Address:"))
        .map(str::trim)
        .find(|a| !a.starts_with("::") && !a.is_empty())
        .map(str::to_string)
}

pub fn detect(skip: bool) -> Bmc {
    let present = ["/dev/ipmi0", "/dev/ipmi/0", "/dev/ipmidev/0"]
        .iter()
        .any(|p| std::path::Path::new(p).exists());
    detect_with(skip, present)
}

fn detect_with(skip: bool, device_present: bool) -> Bmc {
    if skip || !device_present || crate::system::tools::which("ipmitool").is_none() {
        return Bmc::default();
    }
    let mut bmc = Bmc {
        v4: Some("0.0.0.0".into()),
        v6: Some("::/0".into()),
        mac: None,
    };
    for ch in 1..=11 {
        let Ok((true, out)) = run_capture(
            "ipmitool",
            &["lan", "print", &ch.to_string()],
            TIMEOUT,
            1 << 16,
        ) else {
            continue;
        };
        let (ip, mac) = parse_lan_print(&String::from_utf8_lossy(&out));
        if let Some(ip) = ip.filter(|ip| ip != "0.0.0.0") {
            bmc.v4 = Some(ip);
            bmc.mac = mac.filter(|m| m != "00:00:00:00:00:00");
            break;
        }
    }
    for ch in 1..=11 {
        if let Ok((true, out)) = run_capture(
            "ipmitool",
            &["lan6", "print", &ch.to_string()],
            TIMEOUT,
            1 << 16,
        ) {
            if let Some(a) = parse_lan6_print(&String::from_utf8_lossy(&out)) {
                bmc.v6 = Some(a);
                break;
            }
        }
    }
    bmc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ipmitool_lan_print() {
        let out = "Set in Progress         : Set Complete\nIP Address Source       : DHCP Address\n\
                   IP Address              : 192.168.1.10\nSubnet Mask             : 255.255.255.0\n\
                   MAC Address             : D0:94:66:AA:BB:CC\n";
        assert_eq!(
            parse_lan_print(out),
            (
                Some("192.168.1.10".into()),
                Some("d0:94:66:aa:bb:cc".into())
            )
        );
        assert_eq!(parse_lan_print("nothing here"), (None, None));
        let v6 = "IPv6 Dynamic Address 0:\n    Source/Type:    SLAAC\n    Address:        2001:db8::5/64\n    Status:         active\n";
        assert_eq!(parse_lan6_print(v6).as_deref(), Some("2001:db8::5/64"));
        assert_eq!(parse_lan6_print("    Address:        ::/0\n"), None);
    }

    #[test]
    fn no_ipmi_device_means_unknown() {
        // Without an IPMI device IPA reports null, and so does a skipped detection, whatever
        // the machine the test runs on has.
        assert_eq!(detect_with(false, false), Bmc::default());
        assert_eq!(detect_with(true, true), Bmc::default());
        assert_eq!(detect(true), Bmc::default());
    }
}
