//! SMBIOS (DMI) tables read from /sys/firmware/dmi/tables/DMI, parsed in-process: the BIOS,
//! the processors and the memory devices, labelled as `dmidecode` labels them. This feeds
//! the `dmi-decode` inspection collector (IPA runs the dmidecode tool) and gives the
//! inventory's `memory.physical_mb` as the sum of the installed DIMMs, which is what IPA
//! reads from lshw. The table comes from firmware: every offset is bounds-checked and a
//! malformed structure ends the walk instead of the agent.

use serde_json::{json, Map, Value};

pub const TABLE: &str = "/sys/firmware/dmi/tables/DMI";

/// One structure: its type, handle, formatted area (header included) and strings.
#[derive(Debug, Clone)]
pub struct Structure<'a> {
    pub kind: u8,
    pub handle: u16,
    data: &'a [u8],
    strings: Vec<&'a [u8]>,
}

impl Structure<'_> {
    fn byte(&self, off: usize) -> Option<u8> {
        self.data.get(off).copied()
    }
    fn word(&self, off: usize) -> Option<u16> {
        Some(u16::from_le_bytes([self.byte(off)?, self.byte(off + 1)?]))
    }
    fn dword(&self, off: usize) -> Option<u32> {
        Some(u32::from_le_bytes(
            self.data.get(off..off + 4)?.try_into().ok()?,
        ))
    }
    fn qword(&self, off: usize) -> Option<u64> {
        Some(u64::from_le_bytes(
            self.data.get(off..off + 8)?.try_into().ok()?,
        ))
    }
    /// The string a byte at `off` points to (1-based; 0 means none).
    fn string(&self, off: usize) -> Option<String> {
        let i = usize::from(self.byte(off)?);
        let s = self.strings.get(i.checked_sub(1)?)?;
        let t = String::from_utf8_lossy(s).trim().to_string();
        (!t.is_empty()).then_some(t)
    }
}

/// Walk the structure table until the end-of-table structure (type 127) or the end of data.
pub fn structures(table: &[u8]) -> Vec<Structure<'_>> {
    let mut out = Vec::new();
    let mut off = 0usize;
    while let (Some(&kind), Some(&len)) = (table.get(off), table.get(off + 1)) {
        let len = usize::from(len);
        let Some(data) = table.get(off..off + len).filter(|_| len >= 4) else {
            break;
        };
        let handle = u16::from_le_bytes([data[2], data[3]]);
        // The string set: NUL-terminated strings, ended by an empty one.
        let mut strings = Vec::new();
        let mut p = off + len;
        while let Some(rest) = table.get(p..) {
            let Some(end) = rest.iter().position(|&b| b == 0) else {
                p = table.len();
                break;
            };
            if end == 0 {
                p += 1;
                break;
            }
            strings.push(&rest[..end]);
            p += end + 1;
        }
        // With no strings, the set is two NULs.
        if strings.is_empty() && table.get(p) == Some(&0) {
            p += 1;
        }
        out.push(Structure {
            kind,
            handle,
            data,
            strings,
        });
        if kind == 127 {
            break;
        }
        off = p;
    }
    out
}

fn put(m: &mut Map<String, Value>, k: &str, v: Option<impl Into<Value>>) {
    if let Some(v) = v {
        m.insert(k.to_string(), v.into());
    }
}

fn handle_line(s: &Structure) -> String {
    format!(
        "Handle 0x{:04X}, DMI type {}, {} bytes",
        s.handle,
        s.kind,
        s.data.len()
    )
}

/// Sizes as dmidecode prints them: the largest unit that divides evenly.
fn size_text(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["bytes", "kB", "MB", "GB", "TB", "PB"];
    let (mut v, mut u) = (bytes, 0);
    while u < UNITS.len() - 1 && v >= 1024 && v % 1024 == 0 {
        v /= 1024;
        u += 1;
    }
    format!("{v} {}", UNITS[u])
}

fn mhz(v: Option<u16>) -> Option<String> {
    v.map(|m| {
        if m == 0 {
            "Unknown".into()
        } else {
            format!("{m} MHz")
        }
    })
}

fn bios(s: &Structure) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("Handle".into(), handle_line(s).into());
    put(&mut m, "Vendor", s.string(4));
    put(&mut m, "Version", s.string(5));
    put(&mut m, "Release Date", s.string(8));
    put(
        &mut m,
        "ROM Size",
        s.byte(9).map(|n| size_text((u64::from(n) + 1) * 64 * 1024)),
    );
    if let (Some(a), Some(b)) = (s.byte(0x14), s.byte(0x15)) {
        if a != 0xff {
            m.insert("BIOS Revision".into(), format!("{a}.{b}").into());
        }
    }
    if let (Some(a), Some(b)) = (s.byte(0x16), s.byte(0x17)) {
        if a != 0xff {
            m.insert("Firmware Revision".into(), format!("{a}.{b}").into());
        }
    }
    m
}

fn processor(s: &Structure) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("Handle".into(), handle_line(s).into());
    put(&mut m, "Socket Designation", s.string(4));
    put(&mut m, "Manufacturer", s.string(7));
    put(
        &mut m,
        "ID",
        s.data.get(8..16).map(|id| {
            id.iter()
                .map(|b| format!("{b:02X}"))
                .collect::<Vec<_>>()
                .join(" ")
        }),
    );
    put(&mut m, "Version", s.string(0x10));
    put(&mut m, "External Clock", mhz(s.word(0x12)));
    put(&mut m, "Max Speed", mhz(s.word(0x14)));
    put(&mut m, "Current Speed", mhz(s.word(0x16)));
    put(&mut m, "Serial Number", s.string(0x20));
    put(&mut m, "Asset Tag", s.string(0x21));
    put(&mut m, "Part Number", s.string(0x22));
    // Counts of 255 mean "see the 16-bit field" (SMBIOS 3.0). Text, as dmidecode prints them
    // and IPA passes them on.
    let count = |short: usize, long: usize| match s.byte(short) {
        Some(0xff) => s.word(long).map(|n| n.to_string()),
        Some(0) | None => None,
        Some(n) => Some(n.to_string()),
    };
    put(&mut m, "Core Count", count(0x23, 0x2a));
    put(&mut m, "Core Enabled", count(0x24, 0x2c));
    put(&mut m, "Thread Count", count(0x25, 0x2e));
    m
}

fn pick(table: &[&'static str], v: Option<u8>) -> Option<&'static str> {
    let v = usize::from(v?);
    Some(table.get(v).copied().unwrap_or("<OUT OF SPEC>"))
}

const USE: [&str; 8] = [
    "",
    "Other",
    "Unknown",
    "System Memory",
    "Video Memory",
    "Flash Memory",
    "Non-volatile RAM",
    "Cache Memory",
];
const ECC: [&str; 8] = [
    "",
    "Other",
    "Unknown",
    "None",
    "Parity",
    "Single-bit ECC",
    "Multi-bit ECC",
    "CRC",
];
const FORM: [&str; 17] = [
    "",
    "Other",
    "Unknown",
    "SIMM",
    "SIP",
    "Chip",
    "DIP",
    "ZIP",
    "Proprietary Card",
    "DIMM",
    "TSOP",
    "Row Of Chips",
    "RIMM",
    "SODIMM",
    "SRIMM",
    "FB-DIMM",
    "Die",
];
fn mem_type(v: Option<u8>) -> Option<&'static str> {
    Some(match v? {
        0x01 => "Other",
        0x02 => "Unknown",
        0x07 => "RAM",
        0x12 => "DDR",
        0x13 => "DDR2",
        0x18 => "DDR3",
        0x1a => "DDR4",
        0x1b => "LPDDR",
        0x1c => "LPDDR2",
        0x1d => "LPDDR3",
        0x1e => "LPDDR4",
        0x20 => "HBM",
        0x21 => "HBM2",
        0x22 => "DDR5",
        0x23 => "LPDDR5",
        _ => "<OUT OF SPEC>",
    })
}

fn memory_array(s: &Structure) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("Handle".into(), handle_line(s).into());
    put(&mut m, "Use", pick(&USE, s.byte(5)));
    put(&mut m, "Error Correction Type", pick(&ECC, s.byte(6)));
    let max = match s.dword(7) {
        Some(0x8000_0000) => s.qword(0x0f),
        Some(kb) => Some(u64::from(kb) * 1024),
        None => None,
    };
    put(&mut m, "Maximum Capacity", max.map(size_text));
    put(&mut m, "Number Of Devices", s.word(0x0d).map(u64::from));
    m
}

/// A memory device's size in bytes: `None` for an empty slot or an unknown size.
fn device_size(s: &Structure) -> Option<u64> {
    match s.word(0x0c)? {
        0 | 0xffff => None,
        0x7fff => s
            .dword(0x1c)
            .map(|mb| u64::from(mb & 0x7fff_ffff) << 20)
            .filter(|b| *b > 0),
        w if w & 0x8000 != 0 => Some(u64::from(w & 0x7fff) << 10),
        w => Some(u64::from(w) << 20),
    }
}

fn memory_device(s: &Structure) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("Handle".into(), handle_line(s).into());
    let size = match (s.word(0x0c), device_size(s)) {
        (Some(0), _) => Some("No Module Installed".to_string()),
        (_, Some(b)) => Some(size_text(b)),
        (Some(_), None) => Some("Unknown".to_string()),
        (None, None) => None,
    };
    put(&mut m, "Size", size);
    put(&mut m, "Form Factor", pick(&FORM, s.byte(0x0e)));
    put(&mut m, "Locator", s.string(0x10));
    put(&mut m, "Bank Locator", s.string(0x11));
    put(&mut m, "Type", mem_type(s.byte(0x12)));
    let speed = |v: Option<u16>| {
        v.map(|x| {
            if x == 0 {
                "Unknown".into()
            } else {
                format!("{x} MT/s")
            }
        })
    };
    put(&mut m, "Speed", speed(s.word(0x15)));
    put(&mut m, "Manufacturer", s.string(0x17));
    put(&mut m, "Serial Number", s.string(0x18));
    put(&mut m, "Asset Tag", s.string(0x19));
    put(&mut m, "Part Number", s.string(0x1a));
    put(&mut m, "Configured Memory Speed", speed(s.word(0x20)));
    m
}

/// IPA's `dmi` shape: `{"bios": {...}, "cpu": [...], "memory": {..., "devices": [...]}}`,
/// the memory arrays folded into one with their device counts summed, as IPA does.
pub fn dmi(table: &[u8]) -> Value {
    let all = structures(table);
    let bios_v = all
        .iter()
        .find(|s| s.kind == 0)
        .map(bios)
        .unwrap_or_default();
    let cpu: Vec<Value> = all
        .iter()
        .filter(|s| s.kind == 4)
        .map(|s| Value::Object(processor(s)))
        .collect();
    let arrays: Vec<Map<String, Value>> = all
        .iter()
        .filter(|s| s.kind == 16)
        .map(memory_array)
        .collect();
    let devices: Vec<Value> = all
        .iter()
        .filter(|s| s.kind == 17)
        .map(|s| Value::Object(memory_device(s)))
        .collect();
    let mut memory = arrays.first().cloned().unwrap_or_default();
    memory.remove("Handle");
    if !arrays.is_empty() {
        let n: u64 = arrays
            .iter()
            .filter_map(|a| a.get("Number Of Devices").and_then(Value::as_u64))
            .sum();
        memory.insert("Number Of Devices".into(), json!(n));
    }
    if !devices.is_empty() {
        memory.insert("devices".into(), Value::Array(devices));
    }
    json!({ "bios": bios_v, "cpu": cpu, "memory": memory })
}

/// Installed memory in MiB: the sum of the memory devices' sizes (`None` when the table has
/// no sized device).
pub fn physical_mb(table: &[u8]) -> Option<u64> {
    let total: u64 = structures(table)
        .iter()
        .filter(|s| s.kind == 17)
        .filter_map(device_size)
        .fold(0u64, u64::saturating_add);
    (total > 0).then_some(total >> 20)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// One structure: formatted area (the header is filled in) and its strings.
    fn structure(kind: u8, handle: u16, body: &[u8], strings: &[&str]) -> Vec<u8> {
        let mut v = vec![kind, (4 + body.len()) as u8];
        v.extend_from_slice(&handle.to_le_bytes());
        v.extend_from_slice(body);
        for s in strings {
            v.extend_from_slice(s.as_bytes());
            v.push(0);
        }
        if strings.is_empty() {
            v.push(0);
        }
        v.push(0);
        v
    }

    /// The fixture table (tests/fixtures/smbios.README says what it holds).
    pub(crate) fn table() -> Vec<u8> {
        include_bytes!("../../tests/fixtures/smbios.bin").to_vec()
    }

    #[test]
    fn labels_like_dmidecode() {
        let v = dmi(&table());
        assert_eq!(v["bios"]["Vendor"], "EDK II");
        assert_eq!(v["bios"]["Version"], "edk2-stable202302");
        assert_eq!(v["bios"]["Release Date"], "02/06/2023");
        assert_eq!(v["bios"]["ROM Size"], "64 kB");
        assert_eq!(v["bios"]["BIOS Revision"], "1.16");
        assert!(v["bios"].get("Firmware Revision").is_none());
        assert_eq!(v["bios"]["Handle"], "Handle 0x0000, DMI type 0, 24 bytes");
        let cpu = &v["cpu"][0];
        assert_eq!(cpu["Socket Designation"], "CPU 0");
        assert_eq!(cpu["Manufacturer"], "QEMU");
        assert_eq!(cpu["Version"], "pc-q35-7.2");
        assert_eq!(cpu["ID"], "A1 06 03 00 FF FB EB BF");
        assert_eq!(cpu["Max Speed"], "2000 MHz");
        assert_eq!(cpu["External Clock"], "100 MHz");
        assert_eq!(
            (cpu["Core Count"].as_str(), cpu["Thread Count"].as_str()),
            (Some("2"), Some("4"))
        );
        assert!(cpu.get("Serial Number").is_none());
        let mem = &v["memory"];
        assert_eq!(mem["Maximum Capacity"], "64 GB");
        assert_eq!(mem["Use"], "System Memory");
        assert_eq!(mem["Error Correction Type"], "Multi-bit ECC");
        assert_eq!(mem["Number Of Devices"], 2);
        let devs = mem["devices"].as_array().unwrap();
        assert_eq!(devs.len(), 3);
        assert_eq!(devs[0]["Size"], "16 GB");
        assert_eq!(devs[0]["Type"], "DDR4");
        assert_eq!(devs[0]["Form Factor"], "DIMM");
        assert_eq!(devs[0]["Speed"], "3200 MT/s");
        assert_eq!(devs[0]["Locator"], "DIMM A1");
        assert_eq!(devs[0]["Part Number"], "M393A2K43DB3");
        assert_eq!(devs[1]["Size"], "No Module Installed");
        assert_eq!(devs[2]["Size"], "16 MB");
        assert_eq!(physical_mb(&table()), Some(16 * 1024 + 16));
    }

    #[test]
    fn hostile_tables_end_the_walk() {
        assert!(structures(&[]).is_empty());
        // A length shorter than the header, a length past the end, strings without an end.
        assert!(structures(&[0, 2, 0, 0, 0, 0]).is_empty());
        assert!(structures(&[0, 200, 0, 0]).is_empty());
        let s = structures(&[1, 4, 0, 0, b'a', b'b']);
        assert_eq!(s.len(), 1);
        // A memory device (type 17) whose size says "see the extended size", which is
        // u32::MAX, and whose locator points at string 200 of 1.
        let mut d = vec![0u8; 0x22 - 4];
        d[0x0c - 4..0x0e - 4].copy_from_slice(&0x7fffu16.to_le_bytes());
        d[0x1c - 4..0x20 - 4].copy_from_slice(&u32::MAX.to_le_bytes());
        d[0x10 - 4] = 200;
        let t = structure(17, 1, &d, &["x"]);
        let v = dmi(&t);
        assert!(v["memory"]["devices"][0].get("Locator").is_none());
        assert_eq!(physical_mb(&t), Some(0x7fff_ffff));
        // Every prefix of a good table parses without panicking.
        let good = table();
        for n in 0..good.len() {
            let _ = dmi(&good[..n]);
        }
    }
}
