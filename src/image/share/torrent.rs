//! The `.torrent` beside an image: its piece hashes are the manifest every piece from a peer
//! or the web seed is checked against before it goes anywhere (BitTorrent v1, BEP 3, or the
//! v1 half of a hybrid torrent; single-file torrents only: an image is one file).

use std::io::Read;

use sha1::{Digest, Sha1};

use super::bencode::{self, put_bytes, put_int, BencodeError, Value};

pub type InfoHash = [u8; 20];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Torrent {
    pub info_hash: InfoHash,
    pub name: String,
    pub length: u64,
    pub piece_length: u32,
    pub pieces: Vec<[u8; 20]>,
    /// BEP 27: peers only from the swarm's own means (no DHT, no peer exchange).
    pub private: bool,
    /// BEP 19 `url-list`.
    pub web_seeds: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TorrentError {
    #[error("the torrent is not valid bencoding: {0}")]
    Bencode(#[from] BencodeError),
    #[error("the torrent is invalid: {0}")]
    Invalid(String),
    #[error("the torrent is not for a single image: {0}")]
    Unsupported(&'static str),
}

/// Pieces smaller than a block or larger than this are refused: a piece is held in memory
/// while it is checked.
pub const MIN_PIECE: u32 = 16 << 10;
pub const MAX_PIECE: u32 = 16 << 20;
/// 1 PiB: anything above is an absurd number, not an image.
const MAX_LENGTH: u64 = 1 << 50;

fn invalid(s: impl Into<String>) -> TorrentError {
    TorrentError::Invalid(s.into())
}

impl Torrent {
    pub fn parse(doc: &[u8]) -> Result<Torrent, TorrentError> {
        let root = bencode::decode(doc)?;
        let info = root
            .get("info")
            .ok_or_else(|| invalid("no `info` dictionary"))?;
        let Value::Dict(_, raw_info) = info else {
            return Err(invalid("`info` is not a dictionary"));
        };
        if info.get("files").is_some() {
            return Err(TorrentError::Unsupported(
                "it lists several files (an image is one file)",
            ));
        }
        let pieces = match info.get("pieces") {
            Some(p) => p
                .as_bytes()
                .ok_or_else(|| invalid("`pieces` is not a string"))?,
            None if info.get("file tree").is_some() => {
                return Err(TorrentError::Unsupported(
                    "BitTorrent v2 only (make a v1 or hybrid torrent)",
                ))
            }
            None => return Err(invalid("no `pieces`")),
        };
        let length = info
            .get("length")
            .and_then(Value::as_int)
            .ok_or_else(|| invalid("no integer `length`"))?;
        let length = u64::try_from(length)
            .ok()
            .filter(|l| (1..=MAX_LENGTH).contains(l))
            .ok_or_else(|| invalid(format!("absurd length {length}")))?;
        let pl = info
            .get("piece length")
            .and_then(Value::as_int)
            .ok_or_else(|| invalid("no integer `piece length`"))?;
        let piece_length = u32::try_from(pl)
            .ok()
            .filter(|p| (MIN_PIECE..=MAX_PIECE).contains(p))
            .ok_or_else(|| {
                invalid(format!(
                    "piece length {pl} is outside {MIN_PIECE}..={MAX_PIECE}"
                ))
            })?;
        if pieces.len() % 20 != 0 {
            return Err(invalid("`pieces` is not a whole number of SHA-1 hashes"));
        }
        let count = length.div_ceil(u64::from(piece_length));
        if count != (pieces.len() / 20) as u64 || count > u64::from(u32::MAX) {
            return Err(invalid(format!(
                "{} piece hashes for {count} pieces",
                pieces.len() / 20
            )));
        }
        let name = info
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let web_seeds = match root.get("url-list") {
            Some(Value::Bytes(b)) => std::str::from_utf8(b).ok().into_iter().collect(),
            Some(Value::List(l)) => l.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        }
        .into_iter()
        .filter(|u| u.starts_with("http://") || u.starts_with("https://"))
        .map(str::to_string)
        .collect();
        Ok(Torrent {
            info_hash: Sha1::digest(raw_info).into(),
            name,
            length,
            piece_length,
            pieces: pieces
                .chunks_exact(20)
                .map(|c| {
                    let mut h = [0u8; 20];
                    h.copy_from_slice(c);
                    h
                })
                .collect(),
            private: info.get("private").and_then(Value::as_int) == Some(1),
            web_seeds,
        })
    }

    pub fn piece_count(&self) -> u32 {
        // Checked at parse time to fit.
        u32::try_from(self.pieces.len()).unwrap_or(u32::MAX)
    }

    /// Byte range `[start, end)` of piece `i` in the image.
    pub fn piece_range(&self, i: u32) -> (u64, u64) {
        let start = u64::from(i) * u64::from(self.piece_length);
        (
            start.min(self.length),
            (start + u64::from(self.piece_length)).min(self.length),
        )
    }

    pub fn piece_len(&self, i: u32) -> u32 {
        let (s, e) = self.piece_range(i);
        // At most piece_length.
        (e - s) as u32
    }

    /// Whether `data` is piece `i`, whole and unaltered.
    pub fn check_piece(&self, i: u32, data: &[u8]) -> bool {
        match self.pieces.get(i as usize) {
            Some(h) => data.len() == self.piece_len(i) as usize && Sha1::digest(data)[..] == h[..],
            None => false,
        }
    }

    pub fn info_hash_hex(&self) -> String {
        hex::encode(self.info_hash)
    }
}

/// A piece size for an image of `len` bytes: about 1500–3000 pieces, within 256 KiB..16 MiB.
pub fn default_piece_length(len: u64) -> u32 {
    let mut p: u32 = 256 << 10;
    while p < MAX_PIECE && len / u64::from(p) > 3000 {
        p *= 2;
    }
    p
}

/// Make a private single-file v1 torrent of `len` bytes read from `r`.
pub fn make(
    mut r: impl Read,
    name: &str,
    piece_length: u32,
    web_seeds: &[String],
) -> std::io::Result<Vec<u8>> {
    if !(MIN_PIECE..=MAX_PIECE).contains(&piece_length) || !piece_length.is_power_of_two() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("piece length must be a power of two in {MIN_PIECE}..={MAX_PIECE}"),
        ));
    }
    let mut hashes = Vec::new();
    let mut length: u64 = 0;
    let mut buf = vec![0u8; piece_length as usize];
    loop {
        let mut n = 0;
        while n < buf.len() {
            match r.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if n == 0 {
            break;
        }
        hashes.extend_from_slice(&Sha1::digest(&buf[..n]));
        length += n as u64;
        if n < buf.len() {
            break;
        }
    }
    if length == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the image is empty",
        ));
    }
    let mut out = Vec::with_capacity(hashes.len() + 256);
    out.push(b'd');
    put_bytes(&mut out, b"created by");
    put_bytes(
        &mut out,
        concat!("rivet ", env!("CARGO_PKG_VERSION")).as_bytes(),
    );
    put_bytes(&mut out, b"info");
    out.push(b'd');
    put_bytes(&mut out, b"length");
    put_int(&mut out, i64::try_from(length).unwrap_or(i64::MAX));
    put_bytes(&mut out, b"name");
    put_bytes(&mut out, name.as_bytes());
    put_bytes(&mut out, b"piece length");
    put_int(&mut out, i64::from(piece_length));
    put_bytes(&mut out, b"pieces");
    put_bytes(&mut out, &hashes);
    put_bytes(&mut out, b"private");
    put_int(&mut out, 1);
    out.push(b'e');
    if !web_seeds.is_empty() {
        put_bytes(&mut out, b"url-list");
        out.push(b'l');
        for u in web_seeds {
            put_bytes(&mut out, u.as_bytes());
        }
        out.push(b'e');
    }
    out.push(b'e');
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn made_torrents_parse_back() {
        let img = image(100_000);
        let doc = make(
            &img[..],
            "disk.raw",
            16 << 10,
            &["http://h/disk.raw".into()],
        )
        .unwrap();
        let t = Torrent::parse(&doc).unwrap();
        assert_eq!(t.length, 100_000);
        assert_eq!(t.piece_count(), 7);
        assert_eq!(t.piece_len(6), 100_000 - 6 * 16384);
        assert!(t.private);
        assert_eq!(t.web_seeds, vec!["http://h/disk.raw".to_string()]);
        for i in 0..7 {
            let (s, e) = t.piece_range(i);
            assert!(t.check_piece(i, &img[s as usize..e as usize]));
        }
        let mut bad = img[..16384].to_vec();
        bad[5] ^= 1;
        assert!(!t.check_piece(0, &bad));
        assert!(!t.check_piece(0, &img[..16383]));
        assert!(!t.check_piece(7, &img[..10]));
        // The info hash is the SHA-1 of the info dictionary as written.
        let start = doc.windows(6).position(|w| w == b"4:info").unwrap() + 6;
        let end = doc.windows(10).position(|w| w == b"8:url-list").unwrap();
        assert_eq!(
            t.info_hash,
            <[u8; 20]>::from(Sha1::digest(&doc[start..end]))
        );
    }

    #[test]
    fn exact_multiple_of_the_piece_length() {
        let img = image(32768);
        let t = Torrent::parse(&make(&img[..], "x", 16384, &[]).unwrap()).unwrap();
        assert_eq!(t.piece_count(), 2);
        assert_eq!(t.piece_len(1), 16384);
        assert!(make(&b""[..], "x", 16384, &[]).is_err());
        assert!(make(&img[..], "x", 1000, &[]).is_err());
    }

    #[test]
    fn hostile_torrents_are_refused() {
        let h20 = "a".repeat(20);
        let cases = [
            ("de", "no `info`"),
            ("d4:infoi1ee", "not a dictionary"),
            (
                "d4:infod5:filesle6:lengthi1e12:piece lengthi16384e6:pieces0:ee",
                "several files",
            ),
            ("d4:infod9:file treedeee", "v2 only"),
            (
                "d4:infod6:lengthi-1e12:piece lengthi16384e6:pieces20:AAAAAAAAAAAAAAAAAAAAee",
                "absurd length",
            ),
            (
                "d4:infod6:lengthi99999999999999999e12:piece lengthi16384e6:pieces0:ee",
                "absurd length",
            ),
            (
                "d4:infod6:lengthi1e12:piece lengthi1e6:pieces20:AAAAAAAAAAAAAAAAAAAAee",
                "piece length",
            ),
            (
                "d4:infod6:lengthi40000e12:piece lengthi16384e6:pieces20:AAAAAAAAAAAAAAAAAAAAee",
                "1 piece hashes for 3 pieces",
            ),
            (
                "d4:infod6:lengthi1e12:piece lengthi16384e6:pieces3:abcee",
                "whole number",
            ),
        ];
        for (doc, want) in cases {
            let e = Torrent::parse(doc.as_bytes()).unwrap_err().to_string();
            assert!(e.contains(want), "{doc}: {e}");
        }
        let ok = format!("d4:infod6:lengthi1e12:piece lengthi16384e6:pieces20:{h20}ee");
        assert!(Torrent::parse(ok.as_bytes()).is_ok());
    }

    #[test]
    fn piece_lengths_for_sizes() {
        assert_eq!(default_piece_length(100 << 20), 256 << 10);
        assert_eq!(default_piece_length(10 << 30), 4 << 20);
        assert_eq!(default_piece_length(1 << 45), MAX_PIECE);
    }
}
