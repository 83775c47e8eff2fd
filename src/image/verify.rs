//! Verify stage: which digest to compute and what it must equal.
//!
//! IPA's rules: `os_hash_algo` + `os_hash_value` win; else `checksum`, whose algorithm is
//! inferred from its length (128 hex = sha512, 64 = sha256, 32 = md5 only when the conductor
//! enabled md5). A value that is an http(s) URL names a checksum file, parsed below. Any other
//! algorithm name is an error, never a silent skip. Hex compares case-insensitively.

use digest::DynDigest;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algo {
    Md5,
    Sha1,
    Sha224,
    Sha256,
    Sha384,
    Sha512,
    Sha3_256,
    Sha3_384,
    Sha3_512,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("unsupported checksum algorithm {0:?} (supported: md5, sha1, sha224, sha256, sha384, sha512, sha3_256, sha3_384, sha3_512)")]
    UnknownAlgo(String),
    #[error("md5 checksums are disabled by the conductor (agent_md5_checksum_enable); give a sha256 or sha512 checksum")]
    Md5Disabled,
    #[error("cannot infer the checksum algorithm from a {0}-character value (expected 64 or 128 hex characters, or 32 for md5)")]
    BadLength(usize),
    #[error("checksum {0:?} is not hexadecimal")]
    NotHex(String),
    #[error("Image checksum is not available: image_info has neither os_hash_algo/os_hash_value nor checksum")]
    Missing,
    #[error("checksum file has no entry for {0:?}")]
    NotInFile(String),
    #[error("checksum file is empty")]
    EmptyFile,
    #[error("Image checksum mismatch: expected {algo} {expected}, computed {actual}")]
    Mismatch {
        algo: &'static str,
        expected: String,
        actual: String,
    },
}

impl Algo {
    pub fn parse(name: &str) -> Result<Algo, VerifyError> {
        Ok(
            match name.trim().to_ascii_lowercase().replace('-', "_").as_str() {
                "md5" => Algo::Md5,
                "sha1" => Algo::Sha1,
                "sha224" => Algo::Sha224,
                "sha256" => Algo::Sha256,
                "sha384" => Algo::Sha384,
                "sha512" => Algo::Sha512,
                "sha3_256" => Algo::Sha3_256,
                "sha3_384" => Algo::Sha3_384,
                "sha3_512" => Algo::Sha3_512,
                _ => return Err(VerifyError::UnknownAlgo(name.to_string())),
            },
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            Algo::Md5 => "md5",
            Algo::Sha1 => "sha1",
            Algo::Sha224 => "sha224",
            Algo::Sha256 => "sha256",
            Algo::Sha384 => "sha384",
            Algo::Sha512 => "sha512",
            Algo::Sha3_256 => "sha3_256",
            Algo::Sha3_384 => "sha3_384",
            Algo::Sha3_512 => "sha3_512",
        }
    }

    pub fn hex_len(self) -> usize {
        match self {
            Algo::Md5 => 32,
            Algo::Sha1 => 40,
            Algo::Sha224 => 56,
            Algo::Sha256 | Algo::Sha3_256 => 64,
            Algo::Sha384 | Algo::Sha3_384 => 96,
            Algo::Sha512 | Algo::Sha3_512 => 128,
        }
    }

    /// IPA infers only these lengths.
    pub fn from_len(len: usize, md5_enabled: bool) -> Result<Algo, VerifyError> {
        match len {
            128 => Ok(Algo::Sha512),
            64 => Ok(Algo::Sha256),
            32 if md5_enabled => Ok(Algo::Md5),
            32 => Err(VerifyError::Md5Disabled),
            n => Err(VerifyError::BadLength(n)),
        }
    }

    pub fn hasher(self) -> Box<dyn DynDigest + Send> {
        match self {
            Algo::Md5 => Box::new(md5::Md5::default()),
            Algo::Sha1 => Box::new(sha1::Sha1::default()),
            Algo::Sha224 => Box::new(sha2::Sha224::default()),
            Algo::Sha256 => Box::new(sha2::Sha256::default()),
            Algo::Sha384 => Box::new(sha2::Sha384::default()),
            Algo::Sha512 => Box::new(sha2::Sha512::default()),
            Algo::Sha3_256 => Box::new(sha3::Sha3_256::default()),
            Algo::Sha3_384 => Box::new(sha3::Sha3_384::default()),
            Algo::Sha3_512 => Box::new(sha3::Sha3_512::default()),
        }
    }
}

/// What the downloaded bytes must hash to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub algo: Algo,
    pub hex: String,
}

impl Expected {
    pub fn new(algo: Algo, value: &str, md5_enabled: bool) -> Result<Expected, VerifyError> {
        if algo == Algo::Md5 && !md5_enabled {
            return Err(VerifyError::Md5Disabled);
        }
        let hex = value.trim().to_ascii_lowercase();
        if hex.len() != algo.hex_len() || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(VerifyError::NotHex(value.to_string()));
        }
        Ok(Expected { algo, hex })
    }

    /// From a bare hex value, algorithm by length.
    pub fn infer(value: &str, md5_enabled: bool) -> Result<Expected, VerifyError> {
        let v = value.trim();
        if !v.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(VerifyError::NotHex(v.to_string()));
        }
        Expected::new(Algo::from_len(v.len(), md5_enabled)?, v, md5_enabled)
    }

    pub fn check(&self, actual_hex: &str) -> Result<(), VerifyError> {
        if actual_hex.eq_ignore_ascii_case(&self.hex) {
            Ok(())
        } else {
            Err(VerifyError::Mismatch {
                algo: self.algo.name(),
                expected: self.hex.clone(),
                actual: actual_hex.to_string(),
            })
        }
    }
}

pub fn is_url(s: &str) -> bool {
    let l = s.trim().to_ascii_lowercase();
    l.starts_with("http://") || l.starts_with("https://")
}

/// Find the hash for `image_name` in a checksum file: a single bare hash; GNU `hash  name` /
/// `hash *name`; BSD `ALGO (name) = hash`. `#` comments and blank lines are skipped.
pub fn parse_checksum_file(text: &str, image_name: &str) -> Result<String, VerifyError> {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if lines.is_empty() {
        return Err(VerifyError::EmptyFile);
    }
    let is_hex = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_hexdigit());
    if lines.len() == 1 && !lines[0].contains(char::is_whitespace) {
        return if is_hex(lines[0]) {
            Ok(lines[0].to_ascii_lowercase())
        } else {
            Err(VerifyError::NotHex(lines[0].to_string()))
        };
    }
    for l in lines.iter().filter(|l| !l.starts_with('#')) {
        // BSD: SHA256 (name) = hash
        if let (Some(open), Some(close)) = (l.find('('), l.rfind(')')) {
            if open < close && l[open + 1..close].trim() == image_name {
                if let Some((_, h)) = l[close..].split_once('=') {
                    let h = h.trim();
                    if is_hex(h) {
                        return Ok(h.to_ascii_lowercase());
                    }
                }
            }
        }
        // GNU: hash  name   or   hash *name
        let mut parts = l.splitn(2, char::is_whitespace);
        if let (Some(h), Some(rest)) = (parts.next(), parts.next()) {
            let name = rest.trim().trim_start_matches('*');
            let base = name.rsplit('/').next().unwrap_or(name);
            if (name == image_name || base == image_name) && is_hex(h) {
                return Ok(h.to_ascii_lowercase());
            }
        }
    }
    Err(VerifyError::NotInFile(image_name.to_string()))
}

/// Hash a whole byte slice (for tests and small files).
pub fn digest_hex(algo: Algo, data: &[u8]) -> String {
    let mut h = algo.hasher();
    h.update(data);
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_algorithm_matches_known_vectors() {
        // Digests of "abc".
        for (algo, want) in [
            (Algo::Md5, "900150983cd24fb0d6963f7d28e17f72"),
            (Algo::Sha1, "a9993e364706816aba3e25717850c26c9cd0d89d"),
            (Algo::Sha224, "23097d223405d8228642a477bda255b32aadbce4bda0b3f7e36c9da7"),
            (Algo::Sha256, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
            (Algo::Sha384, "cb00753f45a35e8bb5a03d699ac65007272c32ab0eded1631a8b605a43ff5bed8086072ba1e7cc2358baeca134c825a7"),
            (Algo::Sha512, "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f"),
            (Algo::Sha3_256, "3a985da74fe225b2045c172d6bd390bd855f086e3e9d525b46bfe24511431532"),
            (Algo::Sha3_384, "ec01498288516fc926459f58e2c6ad8df9b473cb0fc08c2596da7cf0e49be4b298d88cea927ac7f539f1edf228376d25"),
            (Algo::Sha3_512, "b751850b1a57168a5693cd924b6b096e08f621827444f70d884f5d0240d2712e10e116e9192af3c91a7ec57647e3934057340b4cf408d5a56592f8274eec53f0"),
        ] {
            assert_eq!(digest_hex(algo, b"abc"), want, "{algo:?}");
            assert_eq!(want.len(), algo.hex_len(), "{algo:?}");
            assert_eq!(Algo::parse(algo.name()).unwrap(), algo);
            Expected::new(algo, &want.to_uppercase(), true).unwrap().check(want).unwrap();
        }
        assert_eq!(Algo::parse("SHA3-256").unwrap(), Algo::Sha3_256);
        assert!(matches!(
            Algo::parse("crc32"),
            Err(VerifyError::UnknownAlgo(_))
        ));
    }

    #[test]
    fn inference_and_md5_policy() {
        assert_eq!(
            Expected::infer(&"a".repeat(64), false).unwrap().algo,
            Algo::Sha256
        );
        assert_eq!(
            Expected::infer(&"A".repeat(128), false).unwrap().algo,
            Algo::Sha512
        );
        assert_eq!(
            Expected::infer(&"a".repeat(32), true).unwrap().algo,
            Algo::Md5
        );
        assert_eq!(
            Expected::infer(&"a".repeat(32), false),
            Err(VerifyError::Md5Disabled)
        );
        assert_eq!(
            Expected::infer(&"a".repeat(40), true),
            Err(VerifyError::BadLength(40))
        );
        assert!(matches!(
            Expected::infer("xyz", true),
            Err(VerifyError::NotHex(_))
        ));
        assert_eq!(
            Expected::new(Algo::Md5, &"a".repeat(32), false),
            Err(VerifyError::Md5Disabled)
        );
        assert!(Expected::new(Algo::Sha256, &"a".repeat(63), false).is_err());
        let e = Expected::infer(&"a".repeat(64), false).unwrap();
        assert!(matches!(
            e.check(&"b".repeat(64)),
            Err(VerifyError::Mismatch { .. })
        ));
    }

    #[test]
    fn checksum_file_formats() {
        let h = "ab".repeat(32);
        let other = "cd".repeat(32);
        assert_eq!(parse_checksum_file(&format!("{h}\n"), "x.img").unwrap(), h);
        assert_eq!(
            parse_checksum_file(
                &format!("{other}  other.img\n{}  x.img\n", h.to_uppercase()),
                "x.img"
            )
            .unwrap(),
            h
        );
        assert_eq!(
            parse_checksum_file(&format!("{h} *x.img\n{other} y\n"), "x.img").unwrap(),
            h
        );
        assert_eq!(
            parse_checksum_file(
                &format!("# comment\nSHA256 (y.img) = {other}\nSHA256 (x.img) = {h}\n"),
                "x.img"
            )
            .unwrap(),
            h
        );
        assert_eq!(
            parse_checksum_file(&format!("{h}  images/x.img\n"), "x.img").unwrap(),
            h
        );
        assert_eq!(
            parse_checksum_file(&format!("{h}  y.img\n{other} z\n"), "x.img"),
            Err(VerifyError::NotInFile("x.img".into()))
        );
        assert_eq!(
            parse_checksum_file("\n\n", "x"),
            Err(VerifyError::EmptyFile)
        );
        assert!(parse_checksum_file("not-a-hash", "x").is_err());
    }
}
