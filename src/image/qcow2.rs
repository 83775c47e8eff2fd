//! qcow2 (v2 and v3) streamed onto a disk without staging the image anywhere.
//!
//! The mapping (header, L1 table, L2 tables) is read first, with Range requests when the server
//! has them (see `ranges`), into a compact host-ordered list of extents. The image is then
//! streamed once, in file order, through the same fetch → hash path as any other image, and
//! each data cluster is scattered to its guest offset as it passes by. Every metadata byte that
//! was read separately is checked against the same offsets of the hashed stream, so what lands
//! on the disk is exactly what the checksummed file describes.
//!
//! Refused with a clear error: backing files, external data files, encryption, unknown
//! incompatible features, the "corrupt" flag, tables or clusters outside the file, one host
//! cluster mapped twice, and mappings too large for the memory budget.

use std::io::Read;

use sha2::{Digest, Sha256};

use super::write::{Sink, WriteError};

/// Memory budget for the L1 table (8 MiB of entries: 512 TiB of 64 KiB clusters).
const MAX_L1_BYTES: u64 = 8 << 20;
/// Memory budget for the extent list (≈ 40 bytes each: ≈ 20 MiB).
const MAX_EXTENTS: usize = 500_000;
/// Bytes of the file's start the header and its extensions must fit in.
pub const HEADER_WINDOW: usize = 64 * 1024;

const INCOMPAT_DIRTY: u64 = 1;
const INCOMPAT_CORRUPT: u64 = 1 << 1;
const INCOMPAT_DATA_FILE: u64 = 1 << 2;
const INCOMPAT_COMPRESSION: u64 = 1 << 3;
const INCOMPAT_EXTL2: u64 = 1 << 4;
const L1_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const L2_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const COMPRESSED: u64 = 1 << 62;
const COPIED: u64 = 1 << 63;

#[derive(Debug, thiserror::Error)]
pub enum Qcow2Error {
    #[error("qcow2 image not supported: {0}")]
    Unsupported(String),
    #[error("qcow2 image is corrupt: {0}")]
    Corrupt(String),
    #[error("qcow2 image too fragmented to stream within Rivet's memory budget: {0}")]
    Budget(String),
    #[error("qcow2 metadata at byte {0} differs between the range read and the checksummed stream (the image changed on the server, or the server is lying)")]
    Changed(u64),
    #[error("reading the qcow2 image stream: {0}")]
    Read(std::io::Error),
    #[error(transparent)]
    Write(#[from] WriteError),
}

fn corrupt(s: impl Into<String>) -> Qcow2Error {
    Qcow2Error::Corrupt(s.into())
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

fn be32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(a)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterCompression {
    Deflate,
    Zstd,
}

#[derive(Debug, Clone)]
pub struct Header {
    pub version: u32,
    pub cluster_bits: u32,
    pub virtual_size: u64,
    pub l1_offset: u64,
    pub l1_entries: u64,
    pub extended_l2: bool,
    pub compression: ClusterCompression,
    /// Bytes at the start of the file that the header and its extensions occupy.
    pub header_bytes: usize,
    /// Size of the file, when the server said.
    pub file_size: Option<u64>,
}

impl Header {
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    fn l2_entries(&self) -> u64 {
        self.cluster_size() / if self.extended_l2 { 16 } else { 8 }
    }

    /// The host range `[off, off+len)` must lie inside the file.
    fn inside(&self, what: &str, off: u64, len: u64) -> Result<(), Qcow2Error> {
        let end = off
            .checked_add(len)
            .ok_or_else(|| corrupt(format!("{what} offset {off:#x} overflows")))?;
        match self.file_size {
            Some(fs) if end > fs => Err(corrupt(format!(
                "{what} at {off:#x}..{end:#x} points outside the file ({fs} bytes)"
            ))),
            _ => Ok(()),
        }
    }
}

/// Parse and vet the header from the first bytes of the file.
pub fn parse_header(head: &[u8], file_size: Option<u64>) -> Result<Header, Qcow2Error> {
    if head.len() < 72 || &head[..4] != b"QFI\xfb" {
        return Err(corrupt("no qcow2 header"));
    }
    let version = be32(head, 4);
    if version != 2 && version != 3 {
        return Err(Qcow2Error::Unsupported(format!("version {version}")));
    }
    let backing = be64(head, 8);
    if backing != 0 {
        return Err(Qcow2Error::Unsupported(
            "the image has a backing file; only self-contained images can be written (qemu-img convert it first)".into(),
        ));
    }
    let cluster_bits = be32(head, 20);
    if !(9..=21).contains(&cluster_bits) {
        return Err(corrupt(format!("cluster_bits {cluster_bits} out of range")));
    }
    let virtual_size = be64(head, 24);
    if be32(head, 32) != 0 {
        return Err(Qcow2Error::Unsupported(
            "the image is encrypted; Rivet has no key for it".into(),
        ));
    }
    let l1_entries = u64::from(be32(head, 36));
    let l1_offset = be64(head, 40);
    let (mut incompat, mut header_len, mut compression) =
        (0u64, 72usize, ClusterCompression::Deflate);
    if version == 3 {
        if head.len() < 104 {
            return Err(corrupt("truncated version 3 header"));
        }
        incompat = be64(head, 72);
        let refcount_order = be32(head, 96);
        if refcount_order > 6 {
            return Err(corrupt(format!("refcount_order {refcount_order}")));
        }
        header_len = be32(head, 100) as usize;
        if header_len < 104 || header_len > head.len() || header_len % 8 != 0 {
            return Err(corrupt(format!("header length {header_len}")));
        }
        if incompat & INCOMPAT_COMPRESSION != 0 {
            if header_len <= 104 {
                return Err(corrupt(
                    "compression type bit set without a compression type",
                ));
            }
            compression = match head[104] {
                0 => ClusterCompression::Deflate,
                1 => ClusterCompression::Zstd,
                t => return Err(Qcow2Error::Unsupported(format!("compression type {t}"))),
            };
        }
    }
    if incompat & INCOMPAT_CORRUPT != 0 {
        return Err(corrupt("the image is flagged corrupt by qemu"));
    }
    if incompat & INCOMPAT_DATA_FILE != 0 {
        return Err(Qcow2Error::Unsupported(
            "the image keeps its data in an external data file".into(),
        ));
    }
    let known = INCOMPAT_DIRTY | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2;
    if incompat & !known != 0 {
        return Err(Qcow2Error::Unsupported(format!(
            "unknown incompatible features {:#x}",
            incompat & !known
        )));
    }
    // Header extensions: walk to the end marker, refusing an encryption header.
    let cluster = 1usize << cluster_bits;
    let mut at = header_len;
    loop {
        if at + 8 > head.len() || at + 8 > cluster {
            return Err(corrupt("header extensions run past the first cluster"));
        }
        let (kind, len) = (be32(head, at), be32(head, at + 4) as usize);
        at += 8;
        if kind == 0 {
            break;
        }
        if kind == 0x0537_be77 {
            return Err(Qcow2Error::Unsupported(
                "the image is encrypted (LUKS)".into(),
            ));
        }
        at += len.div_ceil(8) * 8;
    }
    let h = Header {
        version,
        cluster_bits,
        virtual_size,
        l1_offset,
        l1_entries,
        extended_l2: incompat & INCOMPAT_EXTL2 != 0,
        compression,
        header_bytes: at,
        file_size,
    };
    let per_l1 = h.l2_entries() * h.cluster_size();
    if virtual_size.div_ceil(per_l1) > l1_entries {
        return Err(corrupt(format!(
            "L1 table of {l1_entries} entries cannot map {virtual_size} bytes"
        )));
    }
    if l1_entries * 8 > MAX_L1_BYTES {
        return Err(Qcow2Error::Budget(format!(
            "an L1 table of {} bytes (limit {MAX_L1_BYTES}); use larger clusters",
            l1_entries * 8
        )));
    }
    if l1_offset % 512 != 0 {
        return Err(corrupt(format!("L1 table offset {l1_offset:#x} unaligned")));
    }
    h.inside("the L1 table", l1_offset, l1_entries * 8)?;
    Ok(h)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Plain data, `len` bytes from `host` to `guest`.
    Data,
    /// One cluster whose subclusters are only partly allocated (bit set = data; clear = zero).
    Partial(u32),
    /// A compressed cluster: `len` bytes of compressed data (possibly running into the next).
    Compressed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub host: u64,
    pub guest: u64,
    pub len: u64,
    pub kind: Kind,
}

impl Extent {
    /// Bytes of the file this extent needs: a partly allocated cluster only up to its last
    /// allocated subcluster (qemu does not write the rest, so the file may end before it).
    pub fn host_len(&self, cluster: u64) -> u64 {
        match self.kind {
            Kind::Partial(alloc) => {
                let last = 32 - u64::from(alloc.leading_zeros());
                (last * cluster / 32).min(self.len)
            }
            _ => self.len,
        }
    }
}

/// What is verified in the stream: metadata read earlier, by its digest.
#[derive(Debug, Clone)]
struct Check {
    host: u64,
    len: u64,
    digest: [u8; 32],
}

/// The complete mapping of an image, ready for the write pass.
#[derive(Debug)]
pub struct Map {
    pub header: Header,
    /// Sorted by host offset.
    pub extents: Vec<Extent>,
    /// Guest ranges that read as zeros, sorted and merged.
    pub zeros: Vec<(u64, u64)>,
    checks: Vec<Check>,
}

/// Builds a [`Map`] as the metadata arrives.
pub struct MapBuilder {
    h: Header,
    extents: Vec<Extent>,
    zeros: Vec<(u64, u64)>,
    checks: Vec<Check>,
}

fn digest(b: &[u8]) -> [u8; 32] {
    Sha256::digest(b).into()
}

impl MapBuilder {
    /// `head` is the start of the file the header was parsed from.
    pub fn new(h: Header, head: &[u8]) -> MapBuilder {
        let checks = vec![Check {
            host: 0,
            len: h.header_bytes as u64,
            digest: digest(&head[..h.header_bytes]),
        }];
        MapBuilder {
            h,
            extents: Vec::new(),
            zeros: Vec::new(),
            checks,
        }
    }

    pub fn header(&self) -> &Header {
        &self.h
    }

    pub fn l1_region(&self) -> (u64, u64) {
        (self.h.l1_offset, self.h.l1_entries * 8)
    }

    /// Take the L1 table; returns the L2 tables to read as `(host offset, L1 index)`,
    /// sorted by offset.
    pub fn add_l1(&mut self, l1: &[u8]) -> Result<Vec<(u64, u64)>, Qcow2Error> {
        if (l1.len() as u64) < self.h.l1_entries * 8 {
            return Err(corrupt("the L1 table is cut short by the end of the file"));
        }
        self.checks.push(Check {
            host: self.h.l1_offset,
            len: l1.len() as u64,
            digest: digest(l1),
        });
        let cs = self.h.cluster_size();
        let per_l1 = self.h.l2_entries() * cs;
        let mut out = Vec::new();
        for i in 0..self.h.l1_entries {
            let guest = i * per_l1;
            if guest >= self.h.virtual_size {
                break;
            }
            let e = be64(l1, (i * 8) as usize);
            if e & !(L1_OFFSET_MASK | COPIED) != 0 {
                return Err(corrupt(format!(
                    "L1 entry {i} has reserved bits set ({e:#x})"
                )));
            }
            let off = e & L1_OFFSET_MASK;
            if off == 0 {
                self.zero(guest, per_l1);
                continue;
            }
            if off % cs != 0 {
                return Err(corrupt(format!(
                    "L2 table {i} at unaligned offset {off:#x}"
                )));
            }
            self.h.inside("an L2 table", off, cs)?;
            out.push((off, i));
        }
        out.sort_unstable();
        if out.windows(2).any(|w| w[0].0 == w[1].0) {
            return Err(corrupt("two L1 entries share an L2 table"));
        }
        Ok(out)
    }

    fn zero(&mut self, guest: u64, len: u64) {
        let len = len.min(self.h.virtual_size.saturating_sub(guest));
        if len == 0 {
            return;
        }
        // L2 tables arrive in host order, so runs only merge within a table; `finish` sorts.
        match self.zeros.last_mut() {
            Some((s, l)) if *s + *l == guest => *l += len,
            _ => self.zeros.push((guest, len)),
        }
    }

    fn push(&mut self, e: Extent) -> Result<(), Qcow2Error> {
        if let Some(last) = self.extents.last_mut() {
            if last.kind == Kind::Data
                && e.kind == Kind::Data
                && last.host + last.len == e.host
                && last.guest + last.len == e.guest
            {
                last.len += e.len;
                return Ok(());
            }
        }
        if self.extents.len() >= MAX_EXTENTS {
            return Err(Qcow2Error::Budget(format!(
                "more than {MAX_EXTENTS} discontiguous clusters"
            )));
        }
        self.extents.push(e);
        Ok(())
    }

    /// Take one L2 table (`index` into L1) read from `host`.
    pub fn add_l2(&mut self, host: u64, index: u64, t: &[u8]) -> Result<(), Qcow2Error> {
        let cs = self.h.cluster_size();
        if t.len() as u64 != cs {
            return Err(corrupt(format!("L2 table at {host:#x} is cut short")));
        }
        self.checks.push(Check {
            host,
            len: cs,
            digest: digest(t),
        });
        let n = self.h.l2_entries();
        let ext = self.h.extended_l2;
        for j in 0..n {
            let guest = (index * n + j) * cs;
            if guest >= self.h.virtual_size {
                break;
            }
            let len = cs.min(self.h.virtual_size - guest);
            let at = (j * if ext { 16 } else { 8 }) as usize;
            let e = be64(t, at);
            let bitmap = if ext { be64(t, at + 8) } else { 0 };
            if e & COMPRESSED != 0 {
                let x = 62 - (self.h.cluster_bits - 8);
                let off = e & ((1u64 << x) - 1);
                let sectors = ((e & !(COPIED | COMPRESSED)) >> x) + 1;
                let clen = sectors * 512 - (off % 512);
                self.h.inside("a compressed cluster", off, 1)?;
                let clen = self.h.file_size.map_or(clen, |fs| clen.min(fs - off));
                self.push(Extent {
                    host: off,
                    guest,
                    len: clen,
                    kind: Kind::Compressed,
                })?;
                continue;
            }
            let reserved = if ext {
                !(L2_OFFSET_MASK | COPIED)
            } else {
                !(L2_OFFSET_MASK | COPIED | 1)
            };
            if e & reserved != 0 {
                return Err(corrupt(format!(
                    "L2 entry for guest offset {guest:#x} has reserved bits set ({e:#x})"
                )));
            }
            let off = e & L2_OFFSET_MASK;
            let (alloc, zero) = ((bitmap & 0xffff_ffff) as u32, (bitmap >> 32) as u32);
            if alloc & zero != 0 {
                return Err(corrupt(format!(
                    "subclusters both allocated and zero at guest offset {guest:#x}"
                )));
            }
            let is_zero = if ext {
                if off == 0 && alloc != 0 {
                    return Err(corrupt(format!(
                        "allocated subclusters without a cluster at guest offset {guest:#x}"
                    )));
                }
                alloc == 0
            } else {
                e & 1 != 0 || off == 0
            };
            if is_zero {
                self.zero(guest, len);
                continue;
            }
            if off % cs != 0 {
                return Err(corrupt(format!(
                    "data cluster at unaligned offset {off:#x}"
                )));
            }
            let kind = if ext && alloc != u32::MAX {
                Kind::Partial(alloc)
            } else {
                Kind::Data
            };
            let e = Extent {
                host: off,
                guest,
                len,
                kind,
            };
            self.h.inside("a data cluster", off, e.host_len(cs))?;
            self.push(e)?;
        }
        Ok(())
    }

    pub fn finish(mut self) -> Result<Map, Qcow2Error> {
        let cs = self.h.cluster_size();
        self.extents.sort_unstable_by_key(|e| e.host);
        self.checks.sort_unstable_by_key(|c| c.host);
        self.zeros.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(self.zeros.len());
        for (s, l) in self.zeros {
            match merged.last_mut() {
                Some((ms, ml)) if *ms + *ml == s => *ml += l,
                _ => merged.push((s, l)),
            }
        }
        // Only compressed clusters may share bytes (their last sector); anything else
        // overlapping would need the stream twice.
        let mut items: Vec<(u64, u64, bool)> = self
            .extents
            .iter()
            .map(|e| (e.host, e.host_len(cs), e.kind == Kind::Compressed))
            .chain(self.checks.iter().map(|c| (c.host, c.len, false)))
            .collect();
        items.sort_unstable();
        for w in items.windows(2) {
            let ((a, al, ac), (b, _, bc)) = (w[0], w[1]);
            if a == b || (a + al > b && !(ac && bc)) {
                return Err(corrupt(format!(
                    "host ranges at {a:#x} and {b:#x} overlap (a cluster mapped twice, or data over metadata)"
                )));
            }
        }
        Ok(Map {
            header: self.h,
            extents: self.extents,
            zeros: merged,
            checks: self.checks,
        })
    }
}

/// A window onto the sequential stream: bytes from `start` are kept until a later request no
/// longer needs them, so overlapping compressed clusters can be served without seeking.
struct Window<R> {
    r: R,
    buf: Vec<u8>,
    head: usize,
    start: u64,
    eof: bool,
}

impl<R: Read> Window<R> {
    /// Bytes `[off, off+len)`, fewer at the end of the file.
    fn get(&mut self, off: u64, len: usize) -> Result<&[u8], Qcow2Error> {
        if off < self.start {
            return Err(corrupt(format!("data at {off:#x} is needed twice")));
        }
        // Drop what is before `off`, reading past it if it was never buffered.
        let have = (self.buf.len() - self.head) as u64;
        if off - self.start >= have {
            let mut skip = off - self.start - have;
            self.buf.clear();
            self.head = 0;
            let mut scratch = [0u8; 64 * 1024];
            while skip > 0 && !self.eof {
                let n = self
                    .r
                    .read(&mut scratch[..skip.min(64 * 1024) as usize])
                    .map_err(Qcow2Error::Read)?;
                if n == 0 {
                    self.eof = true;
                }
                skip -= n as u64;
            }
            self.start = off;
        } else {
            self.head += (off - self.start) as usize;
            self.start = off;
        }
        if self.head > (1 << 20) {
            self.buf.drain(..self.head);
            self.head = 0;
        }
        while self.buf.len() - self.head < len && !self.eof {
            let old = self.buf.len();
            let want = (len - (old - self.head)).max(256 * 1024);
            self.buf.resize(old + want, 0);
            let n = self
                .r
                .read(&mut self.buf[old..])
                .map_err(Qcow2Error::Read)?;
            self.buf.truncate(old + n);
            if n == 0 {
                self.eof = true;
            }
        }
        let end = (self.head + len).min(self.buf.len());
        Ok(&self.buf[self.head..end])
    }

    fn drain(&mut self) -> Result<(), Qcow2Error> {
        let mut scratch = vec![0u8; 1 << 20];
        while self.r.read(&mut scratch).map_err(Qcow2Error::Read)? > 0 {}
        Ok(())
    }
}

/// Why a compressed cluster did not decompress to exactly one cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("{0}")]
    Codec(String),
    #[error("{codec} gave {got} bytes, not {want}")]
    Length {
        codec: &'static str,
        got: u64,
        want: usize,
    },
}

/// Decompress one cluster into `out` (exactly one cluster long).
pub fn decompress(c: ClusterCompression, input: &[u8], out: &mut [u8]) -> Result<(), ClusterError> {
    let codec = |e: &dyn std::fmt::Display| ClusterError::Codec(e.to_string());
    match c {
        ClusterCompression::Deflate => {
            let mut d = flate2::Decompress::new(false);
            d.decompress(input, out, flate2::FlushDecompress::Finish)
                .map_err(|e| codec(&e))?;
            if d.total_out() as usize != out.len() {
                return Err(ClusterError::Length {
                    codec: "deflate",
                    got: d.total_out(),
                    want: out.len(),
                });
            }
        }
        ClusterCompression::Zstd => {
            use zstd::stream::raw::{Decoder, InBuffer, Operation, OutBuffer};
            let mut d = Decoder::new().map_err(|e| codec(&e))?;
            let mut inb = InBuffer::around(input);
            let mut outb = OutBuffer::around(out);
            loop {
                let before = (inb.pos(), outb.pos());
                let hint = d.run(&mut inb, &mut outb).map_err(|e| codec(&e))?;
                if hint == 0 || outb.pos() == outb.capacity() || before == (inb.pos(), outb.pos()) {
                    break;
                }
            }
            if outb.pos() != outb.capacity() {
                return Err(ClusterError::Length {
                    codec: "zstd",
                    got: outb.pos() as u64,
                    want: outb.capacity(),
                });
            }
        }
    }
    Ok(())
}

/// The write pass: read the whole file from `r` (its first byte is the file's first byte),
/// verify the metadata, zero what reads as zeros, scatter the data. `done` is told the guest
/// bytes written so far.
pub fn write_pass<R: Read>(
    map: &Map,
    r: R,
    sink: &mut dyn Sink,
    done: &dyn Fn(u64),
) -> Result<u64, Qcow2Error> {
    for (s, l) in &map.zeros {
        sink.zero(*s, *l)?;
    }
    enum Item<'a> {
        Check(&'a Check),
        Ext(&'a Extent),
    }
    let mut items: Vec<(u64, Item)> = map
        .checks
        .iter()
        .map(|c| (c.host, Item::Check(c)))
        .chain(map.extents.iter().map(|e| (e.host, Item::Ext(e))))
        .collect();
    items.sort_by_key(|(h, _)| *h);
    let mut w = Window {
        r,
        buf: Vec::new(),
        head: 0,
        start: 0,
        eof: false,
    };
    let cs = map.header.cluster_size() as usize;
    let mut cluster = vec![0u8; cs];
    let mut written = 0u64;
    let short = |at: u64| {
        corrupt(format!(
            "the file ends before byte {at:#x} that its tables point at"
        ))
    };
    for (_, item) in items {
        match item {
            Item::Check(c) => {
                let b = w.get(c.host, c.len as usize)?;
                if b.len() as u64 != c.len {
                    return Err(short(c.host + c.len));
                }
                if digest(b) != c.digest {
                    return Err(Qcow2Error::Changed(c.host));
                }
            }
            Item::Ext(e) => match e.kind {
                Kind::Data => {
                    const STEP: u64 = 1 << 20;
                    let mut k = 0;
                    while k < e.len {
                        let n = STEP.min(e.len - k);
                        let b = w.get(e.host + k, n as usize)?;
                        if b.len() as u64 != n {
                            return Err(short(e.host + k + n));
                        }
                        sink.write_at(e.guest + k, b)?;
                        k += n;
                        written += n;
                        done(written);
                    }
                }
                Kind::Partial(alloc) => {
                    let need = e.host_len(cs as u64);
                    let b = w.get(e.host, need as usize)?;
                    if b.len() as u64 != need {
                        return Err(short(e.host + need));
                    }
                    let sub = cs / 32;
                    let out = &mut cluster[..e.len as usize];
                    out[..b.len()].copy_from_slice(b);
                    for (i, s) in out.chunks_mut(sub).enumerate() {
                        if alloc & (1 << i) == 0 {
                            s.fill(0);
                        }
                    }
                    sink.write_at(e.guest, out)?;
                    written += e.len;
                    done(written);
                }
                Kind::Compressed => {
                    let b = w.get(e.host, e.len as usize)?;
                    if b.is_empty() {
                        return Err(short(e.host));
                    }
                    decompress(map.header.compression, b, &mut cluster).map_err(|why| {
                        corrupt(format!(
                            "compressed cluster at {:#x} (guest {:#x}): {why}",
                            e.host, e.guest
                        ))
                    })?;
                    let n = cs.min((map.header.virtual_size - e.guest) as usize);
                    sink.write_at(e.guest, &cluster[..n])?;
                    written += n as u64;
                    done(written);
                }
            },
        }
    }
    // The rest of the file (refcounts, free space) still goes through the hash.
    w.drain()?;
    Ok(written)
}

/// Guest bytes `[0, len)` assembled from already-read clusters: `read(host, len)` returns file
/// bytes. Used to check the image's partition table before anything is written.
pub fn guest_head(
    map: &Map,
    len: u64,
    read: &mut dyn FnMut(u64, u64) -> Result<Vec<u8>, Qcow2Error>,
) -> Result<Vec<u8>, Qcow2Error> {
    let len = len.min(map.header.virtual_size);
    let mut out = vec![0u8; len as usize];
    let cs = map.header.cluster_size() as usize;
    for e in &map.extents {
        if e.guest >= len {
            continue;
        }
        let want = match e.kind {
            Kind::Data => e.len.min(len - e.guest),
            _ => e.host_len(cs as u64),
        };
        let mut bytes = read(e.host, want)?;
        if let Kind::Partial(_) = e.kind {
            bytes.resize(e.len as usize, 0);
        }
        let plain = match e.kind {
            Kind::Compressed => {
                let mut c = vec![0u8; cs];
                decompress(map.header.compression, &bytes, &mut c)
                    .map_err(|e| corrupt(e.to_string()))?;
                c
            }
            Kind::Partial(alloc) => {
                let mut c = bytes;
                for (i, s) in c.chunks_mut(cs / 32).enumerate() {
                    if alloc & (1 << i) == 0 {
                        s.fill(0);
                    }
                }
                c
            }
            Kind::Data => bytes,
        };
        let n = (len - e.guest).min(plain.len() as u64) as usize;
        out[e.guest as usize..e.guest as usize + n].copy_from_slice(&plain[..n]);
    }
    Ok(out)
}

/// The extents that hold guest bytes `[0, len)`, as host ranges to read.
pub fn head_ranges(map: &Map, len: u64) -> Vec<(u64, u64)> {
    let cs = map.header.cluster_size();
    let mut v: Vec<(u64, u64)> = map
        .extents
        .iter()
        .filter(|e| e.guest < len)
        .map(|e| {
            let want = match e.kind {
                Kind::Data => e.len.min(len - e.guest),
                _ => e.host_len(cs),
            };
            (e.host, want)
        })
        .collect();
    v.sort_unstable();
    v
}
