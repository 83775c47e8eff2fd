//! Bencoding (BEP 3), the encoding of `.torrent` files: a bounded reader that keeps each
//! dictionary's raw bytes (the info hash is the SHA-1 of the `info` dictionary exactly as
//! written, so it must not be re-encoded), and the few writers `rivet torrent` needs.
//!
//! Hand-written: the torrent is the one bencoded document Rivet reads, from the image's own
//! server, and the reader is 100 lines with its limits in plain sight (depth, lengths checked
//! against what is left, integers without overflow), fuzzed by `fuzz/fuzz_targets/torrent.rs`.

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value<'a> {
    Int(i64),
    Bytes(&'a [u8]),
    List(Vec<Value<'a>>),
    /// Entries in the order written, and the dictionary's own bytes (`d…e`).
    Dict(Vec<(&'a [u8], Value<'a>)>, &'a [u8]),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bencoding error at byte {at}: {why}")]
pub struct BencodeError {
    pub at: usize,
    pub why: &'static str,
}

/// Nesting deeper than this is refused (a torrent needs 4).
const MAX_DEPTH: usize = 32;

impl<'a> Value<'a> {
    pub fn get(&self, key: &str) -> Option<&Value<'a>> {
        match self {
            Value::Dict(entries, _) => entries
                .iter()
                .find(|(k, _)| *k == key.as_bytes())
                .map(|(_, v)| v),
            _ => None,
        }
    }
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }
    pub fn as_bytes(&self) -> Option<&'a [u8]> {
        match self {
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&'a str> {
        self.as_bytes().and_then(|b| std::str::from_utf8(b).ok())
    }
}

/// Decode one whole document: trailing bytes are an error.
pub fn decode(input: &[u8]) -> Result<Value<'_>, BencodeError> {
    let mut r = Reader { buf: input, pos: 0 };
    let v = r.value(0)?;
    if r.pos != input.len() {
        return Err(r.err("data after the end of the document"));
    }
    Ok(v)
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn err(&self, why: &'static str) -> BencodeError {
        BencodeError { at: self.pos, why }
    }

    fn peek(&self) -> Result<u8, BencodeError> {
        self.buf
            .get(self.pos)
            .copied()
            .ok_or_else(|| self.err("unexpected end"))
    }

    fn value(&mut self, depth: usize) -> Result<Value<'a>, BencodeError> {
        if depth > MAX_DEPTH {
            return Err(self.err("nested too deeply"));
        }
        match self.peek()? {
            b'i' => {
                self.pos += 1;
                let n = self.number(b'e')?;
                Ok(Value::Int(n))
            }
            b'l' => {
                self.pos += 1;
                let mut items = Vec::new();
                while self.peek()? != b'e' {
                    items.push(self.value(depth + 1)?);
                }
                self.pos += 1;
                Ok(Value::List(items))
            }
            b'd' => {
                let start = self.pos;
                self.pos += 1;
                let mut entries = Vec::new();
                while self.peek()? != b'e' {
                    let key = self.bytes()?;
                    let v = self.value(depth + 1)?;
                    entries.push((key, v));
                }
                self.pos += 1;
                Ok(Value::Dict(entries, &self.buf[start..self.pos]))
            }
            b'0'..=b'9' => Ok(Value::Bytes(self.bytes()?)),
            _ => Err(self.err("not a bencoded value")),
        }
    }

    fn bytes(&mut self) -> Result<&'a [u8], BencodeError> {
        if !self.peek()?.is_ascii_digit() {
            return Err(self.err("a string was expected"));
        }
        let len = self.number(b':')?;
        let len = usize::try_from(len).map_err(|_| self.err("negative string length"))?;
        let end = self
            .pos
            .checked_add(len)
            .filter(|e| *e <= self.buf.len())
            .ok_or_else(|| self.err("string longer than the document"))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    /// A decimal integer up to `end` (consumed): no leading zeros, no `-0`, no overflow.
    fn number(&mut self, end: u8) -> Result<i64, BencodeError> {
        let start = self.pos;
        let neg = self.peek()? == b'-';
        if neg {
            self.pos += 1;
        }
        let digits_at = self.pos;
        let mut n: i64 = 0;
        while self.peek()? != end {
            let d = self.peek()?;
            if !d.is_ascii_digit() {
                return Err(self.err("not a digit"));
            }
            n = n
                .checked_mul(10)
                .and_then(|n| n.checked_add(i64::from(d - b'0')))
                .ok_or_else(|| self.err("integer too large"))?;
            self.pos += 1;
        }
        let digits = &self.buf[digits_at..self.pos];
        if digits.is_empty() || (digits.len() > 1 && digits[0] == b'0') || (neg && digits == b"0") {
            self.pos = start;
            return Err(self.err("malformed integer"));
        }
        self.pos += 1;
        Ok(if neg { -n } else { n })
    }
}

/// Writers for building documents (keys must be given in sorted order by the caller).
pub fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(b.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(b);
}

pub fn put_int(out: &mut Vec<u8>, i: i64) {
    out.push(b'i');
    out.extend_from_slice(i.to_string().as_bytes());
    out.push(b'e');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_and_raw_dicts() {
        let doc = b"d3:agei42e4:infod1:xli1ei-2eee4:name5:rivete";
        let v = decode(doc).unwrap();
        assert_eq!(v.get("age").and_then(Value::as_int), Some(42));
        assert_eq!(v.get("name").and_then(Value::as_str), Some("rivet"));
        let Some(Value::Dict(_, raw)) = v.get("info") else {
            panic!("no info dict")
        };
        assert_eq!(*raw, b"d1:xli1ei-2eee");
        assert_eq!(
            v.get("info").and_then(|i| i.get("x")),
            Some(&Value::List(vec![Value::Int(1), Value::Int(-2)]))
        );
    }

    #[test]
    fn malformed_documents_are_errors() {
        for bad in [
            &b""[..],
            b"i",
            b"i-0e",
            b"i03e",
            b"ie",
            b"i99999999999999999999e",
            b"5:abc",
            b"99999999999999999999:a",
            b"l",
            b"d3:key",
            b"di1ei2ee",
            b"x",
            b"i1ei2e",
            b"-1:a",
        ] {
            assert!(decode(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let deep = format!("{}{}", "l".repeat(40), "e".repeat(40));
        assert_eq!(
            decode(deep.as_bytes()).unwrap_err().why,
            "nested too deeply"
        );
        let ok = format!("{}{}", "l".repeat(20), "e".repeat(20));
        assert!(decode(ok.as_bytes()).is_ok());
    }

    #[test]
    fn writers_round_trip() {
        let mut out = vec![b'd'];
        put_bytes(&mut out, b"n");
        put_int(&mut out, -7);
        out.push(b'e');
        assert_eq!(out, b"d1:ni-7ee");
        assert_eq!(decode(&out).unwrap().get("n"), Some(&Value::Int(-7)));
    }
}
