//! Every kernel parameter Ironic 39 puts on a deploy ramdisk's command line (iPXE, PXE, GRUB
//! and virtual media; read from its templates, `pxe_utils`, `image_utils`, `deploy_utils` and
//! the redfish boot interface), and every `ipa-*` parameter IPA 13 reads, with what Rivet does
//! with it. A parameter Rivet knowingly does not use is logged once at start-up, by name
//! (never its value: a token could be there); an `ipa-*` parameter this table does not know is
//! logged as unknown. The README's kernel-parameter table is this table (a test compares them).

use std::collections::HashMap;

/// What Rivet does with a parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// Read and acted on.
    Used,
    /// Knowingly not used; the text says why.
    Ignored(&'static str),
}

/// Parameter, who puts it there, what Rivet does.
pub const TABLE: &[(&str, &str, Use)] = &[
    ("ipa-api-url", "Ironic, every boot interface", Use::Used),
    (
        "BOOTIF",
        "iPXE (`${mac}`, colon form), PXELINUX (`01-…` form), virtual media when a port has a VIF",
        Use::Used,
    ),
    ("ipa-global-request-id", "Ironic, PXE/iPXE/GRUB", Use::Used),
    ("ipa-debug", "Ironic when it runs with debug", Use::Used),
    (
        "ipa-agent-token",
        "Ironic, virtual media (pregenerated token)",
        Use::Used,
    ),
    ("boot_method", "Ironic, virtual media (`vmedia`)", Use::Used),
    (
        "ipa-insecure",
        "operators (Bifrost's kernel_append_params)",
        Use::Used,
    ),
    (
        "ipa-inspection-callback-url",
        "Ironic, in-band inspection",
        Use::Used,
    ),
    (
        "ipa-inspection-collectors",
        "operators ([inspector]extra_kernel_params)",
        Use::Used,
    ),
    (
        "ipa-collect-lldp",
        "Ironic with [inspector]force_dhcp",
        Use::Used,
    ),
    ("ipa-lldp-timeout", "operators", Use::Used),
    ("ipa-inspection-dhcp-all-interfaces", "operators", Use::Used),
    ("ipa-inspection-dhcp-wait-timeout", "operators", Use::Used),
    ("ipa-inspection-benchmarks", "operators", Use::Used),
    ("ipa-listen-host", "operators", Use::Used),
    ("ipa-listen-port", "operators", Use::Used),
    ("ipa-advertise-host", "operators", Use::Used),
    ("ipa-advertise-port", "operators", Use::Used),
    ("ipa-advertise-protocol", "operators", Use::Used),
    ("ipa-lookup-timeout", "operators", Use::Used),
    ("ipa-lookup-interval", "operators", Use::Used),
    ("ipa-ironic-api-version", "operators", Use::Used),
    ("ipa-http-request-timeout", "operators", Use::Used),
    (
        "ipa-image-download-connection-timeout",
        "operators",
        Use::Used,
    ),
    (
        "ipa-image-download-connection-retries",
        "operators",
        Use::Used,
    ),
    (
        "ipa-image-download-connection-retry-interval",
        "operators",
        Use::Used,
    ),
    ("ipa-image-download-max-duration", "operators", Use::Used),
    ("ipa-tls-min-version", "operators", Use::Used),
    ("ipa-tls-certificate-curve", "operators", Use::Used),
    ("ipa-disk-wait-attempts", "operators", Use::Used),
    ("ipa-disk-wait-delay", "operators", Use::Used),
    ("ipa-hardware-initialization-delay", "operators", Use::Used),
    ("ipa-inject-files-priority", "operators", Use::Used),
    (
        "ipa-strict-root-device",
        "operators (Rivet's own)",
        Use::Used,
    ),
    ("rivet-steps-dir", "operators (Rivet's own)", Use::Used),
    ("rivet-peer-share", "operators (Rivet's own)", Use::Used),
    (
        "rivet-peer-share-port",
        "operators (Rivet's own)",
        Use::Used,
    ),
    (
        "rivet-peer-share-upload",
        "operators (Rivet's own)",
        Use::Used,
    ),
    (
        "selinux",
        "Ironic, PXE/iPXE/GRUB (`selinux=0`)",
        Use::Ignored("the ramdisk has no SELinux"),
    ),
    (
        "troubleshoot",
        "Ironic, PXE/iPXE/GRUB (`troubleshoot=0`)",
        Use::Ignored("a distribution installer's switch; nothing to turn off"),
    ),
    (
        "vga",
        "Ironic's default kernel_append_params (`nofb vga=normal`)",
        Use::Ignored("the kernel's (console mode)"),
    ),
    (
        "console",
        "operators (kernel_append_params)",
        Use::Ignored("the kernel's: where /init and the agent log"),
    ),
    (
        "initrd",
        "Ironic, iPXE and PXELINUX",
        Use::Ignored("the boot loader's (which initramfs it loaded)"),
    ),
    (
        "boot_server",
        "Ironic, GRUB (UEFI PXE, HTTP boot)",
        Use::Ignored("the TFTP server GRUB used; nothing left to fetch once booted"),
    ),
    (
        "ir_pub_id",
        "Ironic, virtual media (the ISO's publisher id)",
        Use::Ignored("the ISO is found by its label (config-2, vmedia_boot_iso)"),
    ),
    ("ipa-ntp-server", "operators", Use::Used),
    (
        "ipa-enable-vlan-interfaces",
        "operators (Metal3 sets it)",
        Use::Used,
    ),
    (
        "ipa-use-mdns",
        "operators",
        Use::Ignored("no mDNS discovery of the API: give ipa-api-url"),
    ),
    (
        "ipa-tls-cipher-suites",
        "operators",
        Use::Ignored("rustls offers only its own safe suites"),
    ),
    (
        "ipa-ip-lookup-attempts",
        "operators",
        Use::Ignored("the advertised address comes from the route to the API, at once"),
    ),
    (
        "ipa-ip-lookup-timeout",
        "operators",
        Use::Ignored("the advertised address comes from the route to the API, at once"),
    ),
    (
        "ipa-network-interface",
        "operators",
        Use::Ignored("every NIC is brought up; the route to the API picks the address"),
    ),
    (
        "ipa-ignore-bootloader-failure",
        "operators",
        Use::Ignored("a boot loader that cannot be installed always fails the step"),
    ),
    ("ipa-guard-special-filesystems", "operators", Use::Used),
    ("ipa-enable-discard-erase", "operators", Use::Used),
    (
        "sshkey",
        "operators (diskimage-builder's dynamic-login)",
        Use::Ignored("no login in the ramdisk"),
    ),
    (
        "rootpwd",
        "operators (diskimage-builder's dynamic-login)",
        Use::Ignored("no login in the ramdisk"),
    ),
];

/// Words without `=` that Ironic puts on the command line: the parser drops them (as IPA's
/// does); listed for the README.
pub const FLAGS: &[(&str, &str)] = &[
    ("text", "Ironic, PXE/iPXE/GRUB and the BIOS ISO"),
    ("nofb", "Ironic's default kernel_append_params"),
    ("nomodeset", "Bifrost's kernel_append_params"),
    (
        "--",
        "Ironic, virtual media (end of the boot loader's arguments)",
    ),
];

/// The parameters of `params` Rivet does not use: known ones with why, unknown `ipa-*` ones
/// with `None`. Sorted by name.
pub fn unused(params: &HashMap<String, String>) -> Vec<(String, Option<&'static str>)> {
    let mut out: Vec<(String, Option<&'static str>)> = params
        .keys()
        .filter_map(|k| match TABLE.iter().find(|(name, _, _)| name == k) {
            Some((_, _, Use::Ignored(why))) => Some((k.clone(), Some(*why))),
            Some((_, _, Use::Used)) => None,
            None if k.starts_with("ipa-") => Some((k.clone(), None)),
            None => None,
        })
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::cmdline::parse_params;

    #[test]
    fn what_ironic_passes_is_used_or_ignored_on_purpose() {
        // As Ironic 39 renders them (iPXE and virtual media), plus an operator's extras.
        let ipxe = parse_params(
            "selinux=0 troubleshoot=0 text nofb vga=normal ipa-debug=1 \
             ipa-api-url=https://192.168.150.1:6385 ipa-global-request-id=req-1 \
             BOOTIF=52:54:00:12:34:56 initrd=deploy_ramdisk console=ttyS0,115200 ipa-insecure=1",
        );
        assert_eq!(
            unused(&ipxe),
            vec![
                (
                    "console".into(),
                    Some("the kernel's: where /init and the agent log")
                ),
                (
                    "initrd".into(),
                    Some("the boot loader's (which initramfs it loaded)")
                ),
                ("selinux".into(), Some("the ramdisk has no SELinux")),
                (
                    "troubleshoot".into(),
                    Some("a distribution installer's switch; nothing to turn off")
                ),
                ("vga".into(), Some("the kernel's (console mode)")),
            ]
        );
        let vmedia = parse_params(
            "ir_pub_id=b2f4 ipa-api-url=https://h:6385 ipa-agent-token=t0k3n ipa-debug=1 \
             boot_method=vmedia nofb vga=normal -- ipa-frobnicate=1",
        );
        let names: Vec<String> = unused(&vmedia).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["ipa-frobnicate", "ir_pub_id", "vga"]);
        assert_eq!(
            unused(&vmedia)[0].1,
            None,
            "unknown ipa- parameters are named"
        );
        // Every name is listed once.
        let mut all: Vec<&str> = TABLE.iter().map(|(n, _, _)| *n).collect();
        all.sort_unstable();
        let before = all.len();
        all.dedup();
        assert_eq!(all.len(), before);
    }

    /// The README's table is this one, row for row.
    #[test]
    fn the_readme_table_is_this_table() {
        let readme = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"),
        )
        .unwrap();
        for (name, who, usage) in TABLE {
            let rivet = match usage {
                Use::Used => "used".to_string(),
                Use::Ignored(why) => format!("ignored: {why}"),
            };
            let row = format!("| `{name}` | {who} | {rivet} |");
            assert!(readme.contains(&row), "README lacks the row {row}");
        }
        for (flag, who) in FLAGS {
            assert!(
                readme.contains(&format!("| `{flag}` (no value) | {who} |")),
                "README lacks {flag}"
            );
        }
    }
}
