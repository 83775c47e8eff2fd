//! The BitTorrent peer wire protocol (BEP 3): the handshake and the length-prefixed messages,
//! read with a bound on every length (a peer cannot make the agent allocate more than one
//! block plus its header, or one bitfield).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::torrent::InfoHash;

pub const PROTOCOL: &[u8; 19] = b"BitTorrent protocol";
/// The block size every client requests: BEP 3 says all use 16 KiB and close connections that
/// ask for more, as this one does (so one message is at most a block, or one bitfield).
pub const BLOCK: u32 = 16 << 10;
pub const MAX_REQUEST: u32 = BLOCK;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("peer connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("peer protocol violation: {0}")]
    Protocol(String),
}

fn protocol(s: impl Into<String>) -> WireError {
    WireError::Protocol(s.into())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    KeepAlive,
    Choke,
    Unchoke,
    Interested,
    NotInterested,
    Have(u32),
    Bitfield(Bytes),
    Request {
        index: u32,
        begin: u32,
        length: u32,
    },
    Piece {
        index: u32,
        begin: u32,
        data: Bytes,
    },
    Cancel {
        index: u32,
        begin: u32,
        length: u32,
    },
    /// Anything else (DHT port, fast extension, extended messages): skipped.
    Other(u8),
}

/// Our handshake: no extension bits (no DHT, no extension protocol: the swarm is private).
pub fn handshake(info_hash: &InfoHash, peer_id: &[u8; 20]) -> [u8; 68] {
    let mut h = [0u8; 68];
    h[0] = 19;
    h[1..20].copy_from_slice(PROTOCOL);
    h[28..48].copy_from_slice(info_hash);
    h[48..68].copy_from_slice(peer_id);
    h
}

/// Read the other side's handshake: its info hash and peer id.
pub async fn read_handshake(
    r: &mut (impl AsyncRead + Unpin),
) -> Result<(InfoHash, [u8; 20]), WireError> {
    let mut h = [0u8; 68];
    r.read_exact(&mut h).await?;
    if h[0] != 19 || &h[1..20] != PROTOCOL {
        return Err(protocol("not a BitTorrent handshake"));
    }
    let mut ih = [0u8; 20];
    ih.copy_from_slice(&h[28..48]);
    let mut id = [0u8; 20];
    id.copy_from_slice(&h[48..68]);
    Ok((ih, id))
}

/// The largest message a peer may send for a torrent of `pieces` pieces.
pub fn max_message(pieces: u32) -> u32 {
    (MAX_REQUEST + 9).max(pieces.div_ceil(8) + 1)
}

pub async fn read_message(
    r: &mut (impl AsyncRead + Unpin),
    max: u32,
) -> Result<Message, WireError> {
    let len = r.read_u32().await?;
    if len == 0 {
        return Ok(Message::KeepAlive);
    }
    if len > max {
        return Err(protocol(format!("a {len}-byte message (at most {max})")));
    }
    let mut buf = BytesMut::zeroed(len as usize);
    r.read_exact(&mut buf).await?;
    decode(buf.freeze())
}

fn decode(mut b: Bytes) -> Result<Message, WireError> {
    let id = b.get_u8();
    let need = |b: &Bytes, n: usize| {
        if b.len() == n {
            Ok(())
        } else {
            Err(protocol(format!("message {id} of {} bytes", b.len() + 1)))
        }
    };
    Ok(match id {
        0..=3 => {
            need(&b, 0)?;
            [
                Message::Choke,
                Message::Unchoke,
                Message::Interested,
                Message::NotInterested,
            ][id as usize]
                .clone()
        }
        4 => {
            need(&b, 4)?;
            Message::Have(b.get_u32())
        }
        5 => Message::Bitfield(b),
        6 | 8 => {
            need(&b, 12)?;
            let (index, begin, length) = (b.get_u32(), b.get_u32(), b.get_u32());
            if id == 6 {
                Message::Request {
                    index,
                    begin,
                    length,
                }
            } else {
                Message::Cancel {
                    index,
                    begin,
                    length,
                }
            }
        }
        7 => {
            if b.len() < 8 {
                return Err(protocol("a piece message without its header"));
            }
            let (index, begin) = (b.get_u32(), b.get_u32());
            Message::Piece {
                index,
                begin,
                data: b,
            }
        }
        other => Message::Other(other),
    })
}

pub fn encode(m: &Message) -> Bytes {
    let mut b = BytesMut::new();
    let simple = |b: &mut BytesMut, id: u8| {
        b.put_u32(1);
        b.put_u8(id);
    };
    match m {
        Message::KeepAlive => b.put_u32(0),
        Message::Choke => simple(&mut b, 0),
        Message::Unchoke => simple(&mut b, 1),
        Message::Interested => simple(&mut b, 2),
        Message::NotInterested => simple(&mut b, 3),
        Message::Have(i) => {
            b.put_u32(5);
            b.put_u8(4);
            b.put_u32(*i);
        }
        Message::Bitfield(f) => {
            b.put_u32(1 + f.len() as u32);
            b.put_u8(5);
            b.put_slice(f);
        }
        Message::Request {
            index,
            begin,
            length,
        }
        | Message::Cancel {
            index,
            begin,
            length,
        } => {
            b.put_u32(13);
            b.put_u8(if matches!(m, Message::Request { .. }) {
                6
            } else {
                8
            });
            b.put_u32(*index);
            b.put_u32(*begin);
            b.put_u32(*length);
        }
        Message::Piece { index, begin, data } => {
            b.put_u32(9 + data.len() as u32);
            b.put_u8(7);
            b.put_u32(*index);
            b.put_u32(*begin);
            b.put_slice(data);
        }
        Message::Other(id) => simple(&mut b, *id),
    }
    b.freeze()
}

pub async fn send(w: &mut (impl AsyncWrite + Unpin), m: &Message) -> Result<(), WireError> {
    w.write_all(&encode(m)).await?;
    Ok(())
}

/// A bitfield of `count` pieces with the bits of `has` set.
pub fn bitfield(count: u32, has: impl Fn(u32) -> bool) -> Bytes {
    let mut f = vec![0u8; count.div_ceil(8) as usize];
    for i in 0..count {
        if has(i) {
            f[(i / 8) as usize] |= 0x80 >> (i % 8);
        }
    }
    Bytes::from(f)
}

/// Bit `i` of a peer's bitfield (false when the field is short).
pub fn bit(field: &[u8], i: u32) -> bool {
    field
        .get((i / 8) as usize)
        .is_some_and(|b| b & (0x80 >> (i % 8)) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn messages_round_trip() {
        let msgs = [
            Message::KeepAlive,
            Message::Choke,
            Message::Unchoke,
            Message::Interested,
            Message::NotInterested,
            Message::Have(7),
            Message::Bitfield(bitfield(10, |i| i % 3 == 0)),
            Message::Request {
                index: 1,
                begin: 16384,
                length: 16384,
            },
            Message::Piece {
                index: 2,
                begin: 0,
                data: Bytes::from_static(b"abc"),
            },
            Message::Cancel {
                index: 1,
                begin: 0,
                length: 5,
            },
        ];
        let mut wire = Vec::new();
        for m in &msgs {
            wire.extend_from_slice(&encode(m));
        }
        let mut r = &wire[..];
        for m in &msgs {
            assert_eq!(&read_message(&mut r, max_message(10)).await.unwrap(), m);
        }
        let f = bitfield(10, |i| i % 3 == 0);
        assert!(bit(&f, 0) && bit(&f, 9) && !bit(&f, 1) && !bit(&f, 200));
    }

    #[tokio::test]
    async fn hostile_messages() {
        // An absurd length is refused before anything is allocated.
        let mut r = &[0xff, 0xff, 0xff, 0xff, 7][..];
        assert!(matches!(
            read_message(&mut r, max_message(100)).await,
            Err(WireError::Protocol(_))
        ));
        let mut r = &[0, 0, 0, 2, 4, 0][..];
        assert!(read_message(&mut r, 1000).await.is_err());
        let mut r = &[0, 0, 0, 5, 7, 0, 0, 0, 0][..];
        assert!(read_message(&mut r, 1000).await.is_err());
        // A cut stream is an error, not a hang.
        let mut r = &[0, 0, 0, 13, 6, 0][..];
        assert!(read_message(&mut r, 1000).await.is_err());
        let hs = handshake(&[1; 20], &[2; 20]);
        assert_eq!(
            read_handshake(&mut &hs[..]).await.unwrap(),
            ([1; 20], [2; 20])
        );
        let mut bad = hs;
        bad[3] = b'x';
        assert!(read_handshake(&mut &bad[..]).await.is_err());
    }
}
