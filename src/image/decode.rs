//! Decode stage: recognise the image by its bytes (never by its name), unwrap compression
//! (gzip, zstd, xz), and check the format inside against `disk_format` and the conductor's
//! `permitted_image_formats`.

use std::io::{BufRead, Read};

/// Compression around the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
    Xz,
}

impl Compression {
    pub fn sniff(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
            Compression::Xz
        } else {
            Compression::None
        }
    }

    pub fn name(self) -> Option<&'static str> {
        match self {
            Compression::None => None,
            Compression::Gzip => Some("gzip"),
            Compression::Zstd => Some("zstd"),
            Compression::Xz => Some("xz"),
        }
    }

    /// Wrap `r` in the matching streaming decoder (bounded memory: no whole-image buffers).
    pub fn decoder<'a, R: BufRead + Send + 'a>(
        self,
        r: R,
    ) -> std::io::Result<Box<dyn Read + Send + 'a>> {
        Ok(match self {
            Compression::None => Box::new(r),
            Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(r)),
            Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(r)?),
            Compression::Xz => Box::new(liblzma::bufread::XzDecoder::new_multi_decoder(r)),
        })
    }
}

/// The image format inside any compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Raw,
    Gpt,
    Iso,
    Qcow2,
    Vmdk,
    Vhd,
    Vdi,
}

impl Format {
    /// Bytes needed to tell formats apart (ISO9660's descriptor is at 32 KiB).
    pub const SNIFF: usize = 64 * 1024;

    pub fn sniff(head: &[u8]) -> Format {
        if head.starts_with(b"QFI\xfb") {
            Format::Qcow2
        } else if head.starts_with(b"KDMV") || head.starts_with(b"# Disk DescriptorFile") {
            Format::Vmdk
        } else if head.starts_with(b"conectix") || head.starts_with(b"vhdxfile") {
            Format::Vhd
        } else if head.get(0x40..0x44) == Some(&[0x7f, 0x10, 0xda, 0xbe][..]) {
            Format::Vdi
        } else if head.get(32769..32774) == Some(b"CD001") {
            Format::Iso
        } else if super::write::gpt_sector_size(head).is_some() {
            Format::Gpt
        } else {
            Format::Raw
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Gpt => "gpt",
            Format::Iso => "iso",
            Format::Qcow2 => "qcow2",
            Format::Vmdk => "vmdk",
            Format::Vhd => "vhd",
            Format::Vdi => "vdi",
        }
    }

    /// Written byte for byte.
    pub fn is_raw_family(self) -> bool {
        matches!(self, Format::Raw | Format::Gpt | Format::Iso)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error(
        "Security: the image is {detected} but disk_format says {declared}; refusing to write it"
    )]
    Mismatch {
        detected: &'static str,
        declared: String,
    },
    #[error("the image format {0} is not in the conductor's permitted_image_formats {1:?}")]
    NotPermitted(&'static str, Vec<String>),
    #[error("{0} images cannot be written by Rivet (qcow2, and raw, gpt or iso optionally gzip/zstd/xz compressed, can)")]
    Unsupported(&'static str),
}

/// Check the detected format against the declared `disk_format` and the permitted list.
pub fn check(
    detected: Format,
    declared: Option<&str>,
    permitted: &[String],
) -> Result<(), FormatError> {
    let declared = declared
        .map(|d| d.trim().to_ascii_lowercase())
        .filter(|d| !d.is_empty() && d != "unknown");
    if let Some(d) = &declared {
        let ok = match d.as_str() {
            "raw" | "gpt" | "iso" => detected.is_raw_family(),
            other => other == detected.name(),
        };
        if !ok {
            return Err(FormatError::Mismatch {
                detected: detected.name(),
                declared: d.clone(),
            });
        }
    }
    let allowed = permitted
        .iter()
        .any(|p| p == detected.name() || (p == "raw" && detected.is_raw_family()));
    if !allowed {
        return Err(FormatError::NotPermitted(
            detected.name(),
            permitted.to_vec(),
        ));
    }
    if !detected.is_raw_family() && detected != Format::Qcow2 {
        return Err(FormatError::Unsupported(detected.name()));
    }
    Ok(())
}

/// Read up to `n` bytes (fewer only at the end of the stream).
pub fn read_up_to(r: &mut dyn Read, n: usize) -> std::io::Result<Vec<u8>> {
    let mut v = Vec::with_capacity(n);
    r.take(n as u64).read_to_end(&mut v)?;
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn perm() -> Vec<String> {
        ["raw", "gpt", "qcow2", "iso"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    #[test]
    fn every_compression_round_trips_streaming() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 256) as u8).collect();
        let gz = {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(&data).unwrap();
            e.finish().unwrap()
        };
        let zs = zstd::encode_all(&data[..], 3).unwrap();
        let xz = {
            let mut e = liblzma::write::XzEncoder::new(Vec::new(), 1);
            e.write_all(&data).unwrap();
            e.finish().unwrap()
        };
        for (bytes, c) in [
            (gz, Compression::Gzip),
            (zs, Compression::Zstd),
            (xz, Compression::Xz),
            (data.clone(), Compression::None),
        ] {
            assert_eq!(Compression::sniff(&bytes), c);
            let mut out = Vec::new();
            c.decoder(std::io::BufReader::new(&bytes[..]))
                .unwrap()
                .read_to_end(&mut out)
                .unwrap();
            assert_eq!(out, data, "{c:?}");
        }
    }

    #[test]
    fn corrupt_compressed_data_is_an_error() {
        let mut zs = zstd::encode_all(&[5u8; 100_000][..], 3).unwrap();
        let n = zs.len();
        zs[n / 2] ^= 0xff;
        zs.truncate(n - 3);
        let mut out = Vec::new();
        assert!(Compression::Zstd
            .decoder(std::io::BufReader::new(&zs[..]))
            .unwrap()
            .read_to_end(&mut out)
            .is_err());
    }

    #[test]
    fn formats_and_policy() {
        let mut gpt = vec![0u8; 8192];
        gpt[512..520].copy_from_slice(b"EFI PART");
        assert_eq!(Format::sniff(&gpt), Format::Gpt);
        assert_eq!(Format::sniff(b"QFI\xfb\0\0\0\x03"), Format::Qcow2);
        let mut iso = vec![0u8; 40000];
        iso[32769..32774].copy_from_slice(b"CD001");
        assert_eq!(Format::sniff(&iso), Format::Iso);
        assert_eq!(Format::sniff(&[0u8; 100]), Format::Raw);

        assert!(check(Format::Gpt, Some("raw"), &perm()).is_ok());
        assert!(check(Format::Raw, None, &perm()).is_ok());
        assert!(check(Format::Iso, Some("unknown"), &perm()).is_ok());
        assert!(matches!(
            check(Format::Qcow2, Some("raw"), &perm()),
            Err(FormatError::Mismatch { .. })
        ));
        assert!(matches!(
            check(Format::Raw, Some("qcow2"), &perm()),
            Err(FormatError::Mismatch { .. })
        ));
        assert!(matches!(
            check(Format::Vmdk, None, &perm()),
            Err(FormatError::NotPermitted(..))
        ));
        assert!(matches!(
            check(Format::Iso, None, &["qcow2".to_string()]),
            Err(FormatError::NotPermitted(..))
        ));
        assert!(check(Format::Qcow2, Some("qcow2"), &perm()).is_ok());
        assert!(matches!(
            check(Format::Vmdk, Some("vmdk"), &["vmdk".to_string()]),
            Err(FormatError::Unsupported("vmdk"))
        ));
    }
}
