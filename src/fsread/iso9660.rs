//! A small read-only ISO9660 reader: enough to list a directory and read its files, with the
//! names as the ISO's author wrote them (Joliet, else Rock Ridge `NM`, else the plain name
//! without its `;1` version). Used for virtual-media and config-drive ISOs, so the agent needs
//! neither the kernel's iso9660 driver nor a mount. Every offset read from the image is
//! bounds-checked: a malformed image is an error, never a panic or a runaway read.

use std::io::{Read, Seek, SeekFrom};

const SECTOR: u64 = 2048;
/// Directories larger than this are refused (a config ISO has a handful of entries).
const MAX_DIR: u32 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum IsoError {
    #[error("not an ISO9660 image (no primary volume descriptor)")]
    NotIso,
    #[error("malformed ISO9660 image: {0}")]
    Malformed(&'static str),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub is_dir: bool,
    pub lba: u32,
    pub size: u32,
}

pub struct Iso<R> {
    r: R,
    root: Entry,
    joliet: bool,
}

fn le32(b: &[u8], at: usize) -> Result<u32, IsoError> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or(IsoError::Malformed("truncated field"))
}

impl<R: Read + Seek> Iso<R> {
    pub fn open(mut r: R) -> Result<Iso<R>, IsoError> {
        let mut primary = None;
        let mut joliet = None;
        // Volume descriptors start at sector 16 and end with type 255.
        for i in 16..64u64 {
            let mut vd = [0u8; 2048];
            r.seek(SeekFrom::Start(i * SECTOR))?;
            if r.read_exact(&mut vd).is_err() {
                break;
            }
            if &vd[1..6] != b"CD001" {
                break;
            }
            match vd[0] {
                1 if primary.is_none() => primary = Some(vd),
                // Joliet: a supplementary descriptor with a UCS-2 escape sequence.
                2 if vd[88] == 0x25 && vd[89] == 0x2f && matches!(vd[90], 0x40 | 0x43 | 0x45) => {
                    joliet = Some(vd)
                }
                255 => break,
                _ => {}
            }
        }
        let vd = joliet.or(primary).ok_or(IsoError::NotIso)?;
        let root = parse_any(&vd[156..190], joliet.is_some())?;
        Ok(Iso {
            r,
            root: Entry {
                is_dir: true,
                ..root
            },
            joliet: joliet.is_some(),
        })
    }

    /// Entries of a directory, `""` or `"/"` for the root, `"etc/x"` below it (names compared
    /// case-insensitively). `Ok(None)` when the directory does not exist.
    pub fn list(&mut self, path: &str) -> Result<Option<Vec<Entry>>, IsoError> {
        let mut dir = self.root.clone();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            let entries = self.read_dir(&dir)?;
            match entries
                .into_iter()
                .find(|e| e.is_dir && e.name.eq_ignore_ascii_case(part))
            {
                Some(d) => dir = d,
                None => return Ok(None),
            }
        }
        self.read_dir(&dir).map(Some)
    }

    pub fn read_file(&mut self, e: &Entry, max: u32) -> Result<Vec<u8>, IsoError> {
        if e.size > max {
            return Err(IsoError::Malformed("file larger than allowed"));
        }
        let mut data = vec![0u8; e.size as usize];
        self.r.seek(SeekFrom::Start(u64::from(e.lba) * SECTOR))?;
        self.r.read_exact(&mut data)?;
        Ok(data)
    }

    fn read_dir(&mut self, d: &Entry) -> Result<Vec<Entry>, IsoError> {
        if d.size > MAX_DIR {
            return Err(IsoError::Malformed("directory too large"));
        }
        let mut buf = vec![0u8; d.size as usize];
        self.r.seek(SeekFrom::Start(u64::from(d.lba) * SECTOR))?;
        self.r.read_exact(&mut buf)?;
        let mut out = Vec::new();
        let mut pos = 0usize;
        while pos < buf.len() {
            let len = buf[pos] as usize;
            if len == 0 {
                // Records never cross a sector: padding until the next one.
                pos = (pos / SECTOR as usize + 1) * SECTOR as usize;
                continue;
            }
            let rec = buf
                .get(pos..pos + len)
                .ok_or(IsoError::Malformed("directory record overruns"))?;
            if let Some(e) = parse_record(rec, self.joliet)? {
                out.push(e);
            }
            pos += len;
        }
        Ok(out)
    }
}

/// One directory record; `None` for the `.` and `..` entries (name byte 0 or 1).
fn parse_record(rec: &[u8], joliet: bool) -> Result<Option<Entry>, IsoError> {
    let e = parse_any(rec, joliet)?;
    Ok((!e.name.is_empty()).then_some(e))
}

fn parse_any(rec: &[u8], joliet: bool) -> Result<Entry, IsoError> {
    if rec.len() < 34 {
        return Err(IsoError::Malformed("short directory record"));
    }
    let lba = le32(rec, 2)?;
    let size = le32(rec, 10)?;
    let is_dir = rec[25] & 2 != 0;
    let nlen = rec[32] as usize;
    let raw = rec
        .get(33..33 + nlen)
        .ok_or(IsoError::Malformed("name overruns record"))?;
    if raw == [0] || raw == [1] {
        return Ok(Entry {
            name: String::new(),
            is_dir,
            lba,
            size,
        });
    }
    let name = if joliet {
        let units: Vec<u16> = raw
            .chunks_exact(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .collect();
        String::from_utf16_lossy(&units)
    } else {
        // System use area (Rock Ridge) follows the name, padded to an even offset.
        let su = 33 + nlen + (1 - nlen % 2);
        rock_ridge_name(rec.get(su..).unwrap_or(&[]))
            .unwrap_or_else(|| String::from_utf8_lossy(raw).into_owned())
    };
    let name = match name.rsplit_once(';') {
        Some((base, ver)) if ver.chars().all(|c| c.is_ascii_digit()) => {
            base.trim_end_matches('.').to_string()
        }
        _ => name,
    };
    Ok(Entry {
        name,
        is_dir,
        lba,
        size,
    })
}

/// The Rock Ridge alternate name (`NM` entries, concatenated) in a SUSP area.
fn rock_ridge_name(mut su: &[u8]) -> Option<String> {
    let mut name = Vec::new();
    while su.len() >= 4 {
        let len = su[2] as usize;
        if len < 4 || len > su.len() {
            break;
        }
        if &su[0..2] == b"NM" && len >= 5 {
            name.extend_from_slice(&su[5..len]);
        }
        su = &su[len..];
    }
    (!name.is_empty()).then(|| String::from_utf8_lossy(&name).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// Build ISOs with genisoimage in each naming mode and read them back.
    #[test]
    fn reads_genisoimage_output_in_every_naming_mode() {
        if Command::new("genisoimage")
            .arg("-version")
            .output()
            .is_err()
            && crate::test_support::skipped("genisoimage not installed")
        {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        std::fs::create_dir_all(root.join("etc/ironic-python-agent.d")).unwrap();
        std::fs::create_dir_all(root.join("openstack/latest")).unwrap();
        std::fs::write(
            root.join("etc/ironic-python-agent.d/ironic-tls.conf"),
            "[DEFAULT]\ncafile = /x\n",
        )
        .unwrap();
        std::fs::write(
            root.join("openstack/latest/meta_data.json"),
            vec![b'{'; 5000],
        )
        .unwrap();
        for (flags, names_kept) in [
            (&["-J"][..], true),
            (&["-R"][..], true),
            (&["-J", "-R"][..], true),
            (&[][..], false),
        ] {
            let iso = d.path().join("t.iso");
            let st = Command::new("genisoimage")
                .args(["-quiet", "-V", "config-2", "-o"])
                .arg(&iso)
                .args(flags)
                .arg(&root)
                .status()
                .unwrap();
            assert!(st.success());
            let mut i = Iso::open(std::fs::File::open(&iso).unwrap()).unwrap();
            let dir = if names_kept {
                "openstack/latest"
            } else {
                "OPENSTAC/LATEST"
            };
            let files = i
                .list(dir)
                .unwrap()
                .unwrap_or_else(|| panic!("{flags:?}: no {dir}"));
            let want = if names_kept {
                "meta_data.json"
            } else {
                "META_DAT.JSO"
            };
            let f = files
                .iter()
                .find(|e| e.name.eq_ignore_ascii_case(want))
                .unwrap_or_else(|| panic!("{flags:?}: {files:?}"));
            assert_eq!(i.read_file(f, 1 << 20).unwrap(), vec![b'{'; 5000]);
            assert!(i.list("no/such/dir").unwrap().is_none());
        }
    }

    #[test]
    fn rejects_garbage() {
        assert!(matches!(
            Iso::open(std::io::Cursor::new(vec![0u8; 40000])),
            Err(IsoError::NotIso)
        ));
        // A valid descriptor whose root directory points far beyond the image.
        let mut img = vec![0u8; 17 * 2048];
        img[16 * 2048] = 1;
        img[16 * 2048 + 1..16 * 2048 + 6].copy_from_slice(b"CD001");
        let rec = 16 * 2048 + 156;
        img[rec] = 34;
        img[rec + 2..rec + 6].copy_from_slice(&1_000_000u32.to_le_bytes());
        img[rec + 10..rec + 14].copy_from_slice(&2048u32.to_le_bytes());
        img[rec + 25] = 2;
        img[rec + 32] = 1;
        let mut i = Iso::open(std::io::Cursor::new(img)).unwrap();
        assert!(i.list("").is_err());
    }
}
