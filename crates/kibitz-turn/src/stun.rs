//! STUN message codec (RFC 8489) with the TURN attributes (RFC 8656): parsing that never
//! panics on any input, and a builder that appends MESSAGE-INTEGRITY and FINGERPRINT.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use hmac::{Hmac, Mac};
use sha1::Sha1;

pub(crate) const MAGIC: u32 = 0x2112_A442;
const MAGIC_BYTES: [u8; 4] = MAGIC.to_be_bytes();
const FINGERPRINT_XOR: u32 = 0x5354_554e;

// Methods.
pub(crate) const BINDING: u16 = 0x001;
pub(crate) const ALLOCATE: u16 = 0x003;
pub(crate) const REFRESH: u16 = 0x004;
pub(crate) const SEND: u16 = 0x006;
pub(crate) const DATA: u16 = 0x007;
pub(crate) const CREATE_PERMISSION: u16 = 0x008;
pub(crate) const CHANNEL_BIND: u16 = 0x009;

/// The two class bits of a message type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    Request,
    Indication,
    Success,
    Error,
}

impl Class {
    fn bits(self) -> u16 {
        match self {
            Class::Request => 0x000,
            Class::Indication => 0x010,
            Class::Success => 0x100,
            Class::Error => 0x110,
        }
    }
}

// Attributes.
pub(crate) const A_MAPPED_ADDRESS: u16 = 0x0001;
pub(crate) const A_USERNAME: u16 = 0x0006;
pub(crate) const A_MESSAGE_INTEGRITY: u16 = 0x0008;
pub(crate) const A_ERROR_CODE: u16 = 0x0009;
pub(crate) const A_UNKNOWN_ATTRIBUTES: u16 = 0x000A;
pub(crate) const A_CHANNEL_NUMBER: u16 = 0x000C;
pub(crate) const A_LIFETIME: u16 = 0x000D;
pub(crate) const A_XOR_PEER_ADDRESS: u16 = 0x0012;
pub(crate) const A_DATA: u16 = 0x0013;
pub(crate) const A_REALM: u16 = 0x0014;
pub(crate) const A_NONCE: u16 = 0x0015;
pub(crate) const A_XOR_RELAYED_ADDRESS: u16 = 0x0016;
pub(crate) const A_REQUESTED_ADDRESS_FAMILY: u16 = 0x0017;
pub(crate) const A_EVEN_PORT: u16 = 0x0018;
pub(crate) const A_REQUESTED_TRANSPORT: u16 = 0x0019;
#[cfg(test)]
pub(crate) const A_DONT_FRAGMENT: u16 = 0x001A;
pub(crate) const A_XOR_MAPPED_ADDRESS: u16 = 0x0020;
pub(crate) const A_RESERVATION_TOKEN: u16 = 0x0022;
pub(crate) const A_PRIORITY: u16 = 0x0024;
pub(crate) const A_USE_CANDIDATE: u16 = 0x0025;
#[cfg(test)]
pub(crate) const A_SOFTWARE: u16 = 0x8022;
pub(crate) const A_FINGERPRINT: u16 = 0x8028;

/// Comprehension-required attributes (type < 0x8000) this server understands; any other one
/// in a request is answered with 420 (RFC 8489 §7.3.1). DONT-FRAGMENT is deliberately absent:
/// a server that cannot set DF must treat it as unknown (RFC 8656 §7.2).
const KNOWN_REQUIRED: &[u16] = &[
    A_MAPPED_ADDRESS,
    A_USERNAME,
    A_MESSAGE_INTEGRITY,
    A_ERROR_CODE,
    A_UNKNOWN_ATTRIBUTES,
    A_CHANNEL_NUMBER,
    A_LIFETIME,
    A_XOR_PEER_ADDRESS,
    A_DATA,
    A_REALM,
    A_NONCE,
    A_XOR_RELAYED_ADDRESS,
    A_REQUESTED_ADDRESS_FAMILY,
    A_EVEN_PORT,
    A_REQUESTED_TRANSPORT,
    A_XOR_MAPPED_ADDRESS,
    A_RESERVATION_TOKEN,
    A_PRIORITY,
    A_USE_CANDIDATE,
];

/// Most attributes a message may carry; more is treated as malformed (bounds the work per
/// datagram).
const MAX_ATTRS: usize = 64;

/// One parsed STUN message, borrowing the datagram.
#[derive(Debug)]
pub(crate) struct Message<'a> {
    pub method: u16,
    pub class: Class,
    pub txid: [u8; 12],
    raw: &'a [u8],
    /// `(type, value offset, value length)` in order of appearance, up to MESSAGE-INTEGRITY
    /// (later ones, except FINGERPRINT, must be ignored: RFC 8489 §14.5).
    attrs: Vec<(u16, usize, usize)>,
    /// Offset of the MESSAGE-INTEGRITY attribute header, if any.
    integrity_at: Option<usize>,
}

/// Why a datagram is not a STUN message we accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ParseError {
    #[error("not a STUN message")]
    NotStun,
    #[error("malformed attributes")]
    BadAttributes,
    #[error("bad FINGERPRINT")]
    BadFingerprint,
}

/// Is the first byte that of a STUN message (top two bits zero)?
pub(crate) fn looks_like_stun(b: &[u8]) -> bool {
    b.len() >= 20 && b[0] & 0xC0 == 0 && b[4..8] == MAGIC_BYTES
}

impl<'a> Message<'a> {
    pub(crate) fn parse(b: &'a [u8]) -> Result<Self, ParseError> {
        if !looks_like_stun(b) {
            return Err(ParseError::NotStun);
        }
        let ty = u16::from_be_bytes([b[0], b[1]]);
        let len = usize::from(u16::from_be_bytes([b[2], b[3]]));
        // Over UDP the datagram is exactly one message.
        if !len.is_multiple_of(4) || len + 20 != b.len() {
            return Err(ParseError::NotStun);
        }
        let class = match ty & 0x110 {
            0x000 => Class::Request,
            0x010 => Class::Indication,
            0x100 => Class::Success,
            _ => Class::Error,
        };
        let method = (ty & 0x000F) | ((ty & 0x00E0) >> 1) | ((ty & 0x3E00) >> 2);
        let mut txid = [0u8; 12];
        txid.copy_from_slice(&b[8..20]);
        let mut attrs = Vec::new();
        let mut integrity_at = None;
        let mut at = 20;
        while at < b.len() {
            if at + 4 > b.len() || attrs.len() >= MAX_ATTRS {
                return Err(ParseError::BadAttributes);
            }
            let t = u16::from_be_bytes([b[at], b[at + 1]]);
            let l = usize::from(u16::from_be_bytes([b[at + 2], b[at + 3]]));
            let value = at + 4;
            let padded = (l + 3) & !3;
            if value + padded > b.len() {
                return Err(ParseError::BadAttributes);
            }
            if t == A_FINGERPRINT {
                // FINGERPRINT is last (RFC 8489 §14.7).
                if l != 4 || value + 4 != b.len() {
                    return Err(ParseError::BadAttributes);
                }
                let want = u32::from_be_bytes([b[value], b[value + 1], b[value + 2], b[value + 3]]);
                if fingerprint(&b[..at], at + 8) != want {
                    return Err(ParseError::BadFingerprint);
                }
            } else if integrity_at.is_none() {
                if t == A_MESSAGE_INTEGRITY {
                    if l != 20 {
                        return Err(ParseError::BadAttributes);
                    }
                    integrity_at = Some(at);
                }
                attrs.push((t, value, l));
            }
            at = value + padded;
        }
        Ok(Message {
            method,
            class,
            txid,
            raw: b,
            attrs,
            integrity_at,
        })
    }

    pub(crate) fn get(&self, t: u16) -> Option<&'a [u8]> {
        self.attrs
            .iter()
            .find(|(ty, ..)| *ty == t)
            .map(|&(_, off, len)| &self.raw[off..off + len])
    }

    /// Every value of attribute `t` (CreatePermission may carry several XOR-PEER-ADDRESS).
    pub(crate) fn get_all(&self, t: u16) -> impl Iterator<Item = &'a [u8]> + '_ {
        let raw = self.raw;
        self.attrs
            .iter()
            .filter(move |(ty, ..)| *ty == t)
            .map(move |&(_, off, len)| &raw[off..off + len])
    }

    /// Where attribute `t`'s value sits in the datagram.
    pub(crate) fn range(&self, t: u16) -> Option<std::ops::Range<usize>> {
        self.attrs
            .iter()
            .find(|(ty, ..)| *ty == t)
            .map(|&(_, off, len)| off..off + len)
    }

    pub(crate) fn has(&self, t: u16) -> bool {
        self.attrs.iter().any(|(ty, ..)| *ty == t)
    }

    /// Comprehension-required attributes we do not understand.
    pub(crate) fn unknown_required(&self) -> Vec<u16> {
        let mut out: Vec<u16> = self
            .attrs
            .iter()
            .map(|(t, ..)| *t)
            .filter(|t| *t < 0x8000 && !KNOWN_REQUIRED.contains(t))
            .collect();
        out.dedup();
        out
    }

    pub(crate) fn text(&self, t: u16) -> Option<&'a str> {
        self.get(t).and_then(|v| std::str::from_utf8(v).ok())
    }

    pub(crate) fn u32(&self, t: u16) -> Option<u32> {
        let v = self.get(t)?;
        (v.len() == 4).then(|| u32::from_be_bytes([v[0], v[1], v[2], v[3]]))
    }

    pub(crate) fn xor_addr(&self, t: u16) -> Option<SocketAddr> {
        decode_xor_addr(self.get(t)?, &self.txid)
    }

    pub(crate) fn has_integrity(&self) -> bool {
        self.integrity_at.is_some()
    }

    /// Checks MESSAGE-INTEGRITY (HMAC-SHA1 over the message up to it, with the length field
    /// counting through it) against `key`. Constant time.
    pub(crate) fn check_integrity(&self, key: &[u8]) -> bool {
        let Some(at) = self.integrity_at else {
            return false;
        };
        let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(key) else {
            return false;
        };
        mac.update(&self.raw[..2]);
        mac.update(&len_field(at + 24));
        mac.update(&self.raw[4..at]);
        mac.verify_slice(&self.raw[at + 4..at + 24]).is_ok()
    }
}

/// The 2-byte length field of a message whose attributes end at `end`.
fn len_field(end: usize) -> [u8; 2] {
    // Messages here are below 64 KiB: the input was one UDP datagram.
    u16::try_from(end.saturating_sub(20))
        .unwrap_or(u16::MAX)
        .to_be_bytes()
}

/// FINGERPRINT over `head` (everything before the FINGERPRINT attribute), with the length
/// field patched to a message ending at `end`.
fn fingerprint(head: &[u8], end: usize) -> u32 {
    let mut c = Crc32::new();
    c.update(&head[..2]);
    c.update(&len_field(end));
    c.update(&head[4..]);
    c.finish() ^ FINGERPRINT_XOR
}

/// CRC-32 (ISO-HDLC, as FINGERPRINT uses), bitwise: only control messages pay for it.
struct Crc32(u32);

impl Crc32 {
    fn new() -> Self {
        Crc32(0xFFFF_FFFF)
    }
    fn update(&mut self, b: &[u8]) {
        for &byte in b {
            self.0 ^= u32::from(byte);
            for _ in 0..8 {
                let mask = (self.0 & 1).wrapping_neg();
                self.0 = (self.0 >> 1) ^ (0xEDB8_8320 & mask);
            }
        }
    }
    fn finish(&self) -> u32 {
        !self.0
    }
}

pub(crate) fn decode_xor_addr(v: &[u8], txid: &[u8; 12]) -> Option<SocketAddr> {
    if v.len() < 4 {
        return None;
    }
    let port = u16::from_be_bytes([v[2], v[3]]) ^ (MAGIC >> 16) as u16;
    match (v[1], v.len()) {
        (1, 8) => {
            let mut ip = [0u8; 4];
            for i in 0..4 {
                ip[i] = v[4 + i] ^ MAGIC_BYTES[i];
            }
            Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port))
        }
        (2, 20) => {
            let mut ip = [0u8; 16];
            for i in 0..16 {
                let k = if i < 4 { MAGIC_BYTES[i] } else { txid[i - 4] };
                ip[i] = v[4 + i] ^ k;
            }
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port))
        }
        _ => None,
    }
}

pub(crate) fn encode_xor_addr(a: SocketAddr, txid: &[u8; 12]) -> Vec<u8> {
    let port = a.port() ^ (MAGIC >> 16) as u16;
    let mut v = vec![0u8];
    match a.ip() {
        IpAddr::V4(ip) => {
            v.push(1);
            v.extend_from_slice(&port.to_be_bytes());
            for (i, b) in ip.octets().iter().enumerate() {
                v.push(b ^ MAGIC_BYTES[i]);
            }
        }
        IpAddr::V6(ip) => {
            v.push(2);
            v.extend_from_slice(&port.to_be_bytes());
            for (i, b) in ip.octets().iter().enumerate() {
                let k = if i < 4 { MAGIC_BYTES[i] } else { txid[i - 4] };
                v.push(b ^ k);
            }
        }
    }
    v
}

/// Builds one message; [`Builder::finish`] appends MESSAGE-INTEGRITY (with a key) and
/// FINGERPRINT.
#[derive(Debug)]
pub(crate) struct Builder {
    buf: Vec<u8>,
}

impl Builder {
    pub(crate) fn new(method: u16, class: Class, txid: &[u8; 12]) -> Self {
        let ty = (method & 0x000F) | ((method & 0x0070) << 1) | ((method & 0x0F80) << 2);
        let mut buf = Vec::with_capacity(128);
        buf.extend_from_slice(&(ty | class.bits()).to_be_bytes());
        buf.extend_from_slice(&[0, 0]);
        buf.extend_from_slice(&MAGIC_BYTES);
        buf.extend_from_slice(txid);
        Builder { buf }
    }

    pub(crate) fn attr(mut self, t: u16, v: &[u8]) -> Self {
        self.buf.extend_from_slice(&t.to_be_bytes());
        // Values here are short (codes, addresses, names) or one datagram: below 64 KiB.
        self.buf
            .extend_from_slice(&u16::try_from(v.len()).unwrap_or(u16::MAX).to_be_bytes());
        self.buf.extend_from_slice(v);
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
        self
    }

    pub(crate) fn u32(self, t: u16, v: u32) -> Self {
        self.attr(t, &v.to_be_bytes())
    }

    pub(crate) fn xor_addr(self, t: u16, a: SocketAddr) -> Self {
        let mut txid = [0u8; 12];
        txid.copy_from_slice(&self.buf[8..20]);
        let v = encode_xor_addr(a, &txid);
        self.attr(t, &v)
    }

    pub(crate) fn error(self, code: u16, reason: &str) -> Self {
        let mut v = vec![0, 0, (code / 100) as u8, (code % 100) as u8];
        v.extend_from_slice(reason.as_bytes());
        self.attr(A_ERROR_CODE, &v)
    }

    /// The message, with MESSAGE-INTEGRITY when `key` is given, then FINGERPRINT.
    pub(crate) fn finish(mut self, key: Option<&[u8]>) -> Vec<u8> {
        if let Some(key) = key {
            let at = self.buf.len();
            let field = len_field(at + 24);
            self.buf[2..4].copy_from_slice(&field);
            let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(key) else {
                unreachable!("HMAC accepts keys of any length")
            };
            mac.update(&self.buf);
            let tag = mac.finalize().into_bytes();
            self = self.attr(A_MESSAGE_INTEGRITY, &tag);
        }
        let at = self.buf.len();
        let crc = fingerprint(&self.buf, at + 8);
        self.buf[2..4].copy_from_slice(&len_field(at + 8));
        self.attr(A_FINGERPRINT, &crc.to_be_bytes()).buf
    }

    /// The message without MESSAGE-INTEGRITY or FINGERPRINT (Data indications: RFC 8656
    /// §11.6 needs neither, and relayed traffic is the hot path).
    pub(crate) fn finish_plain(mut self) -> Vec<u8> {
        let field = len_field(self.buf.len());
        self.buf[2..4].copy_from_slice(&field);
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn rfc5769_request_vector_integrity_and_fingerprint() {
        // RFC 5769 §2.1 (short-term password "VOkJxbRl1RmTxUk/WvJxBt").
        let b = hex("00 01 00 58 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
             80 22 00 10 53 54 55 4e 20 74 65 73 74 20 63 6c 69 65 6e 74
             00 24 00 04 6e 00 01 ff 80 29 00 08 93 2f f9 b1 51 26 3b 36
             00 06 00 09 65 76 74 6a 3a 68 36 76 59 20 20 20
             00 08 00 14 9a ea a7 0c bf d8 cb 56 78 1e f2 b5 b2 d3 f2 49 c1 b5 71 a2
             80 28 00 04 e5 7a 3b cf");
        let m = Message::parse(&b).unwrap();
        assert_eq!(m.method, BINDING);
        assert_eq!(m.class, Class::Request);
        assert_eq!(m.text(A_USERNAME), Some("evtj:h6vY"));
        assert!(m.check_integrity(b"VOkJxbRl1RmTxUk/WvJxBt"));
        assert!(!m.check_integrity(b"wrong"));
        // A flipped fingerprint is refused.
        let mut bad = b.clone();
        let n = bad.len();
        bad[n - 1] ^= 1;
        assert_eq!(
            Message::parse(&bad).unwrap_err(),
            ParseError::BadFingerprint
        );
    }

    #[test]
    fn rfc5769_ipv4_response_vector() {
        let b = hex("01 01 00 3c 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
             80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20
             00 20 00 08 00 01 a1 47 e1 12 a6 43
             00 08 00 14 2b 91 f5 99 fd 9e 90 c3 8c 74 89 f9 2a f9 ba 53 f0 6b e7 d7
             80 28 00 04 c0 7d 4c 96");
        let m = Message::parse(&b).unwrap();
        assert_eq!(m.class, Class::Success);
        assert_eq!(
            m.xor_addr(A_XOR_MAPPED_ADDRESS),
            Some("192.0.2.1:32853".parse().unwrap())
        );
        assert!(m.check_integrity(b"VOkJxbRl1RmTxUk/WvJxBt"));
    }

    #[test]
    fn rfc5769_ipv6_response_vector() {
        let b = hex("01 01 00 48 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
             80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20
             00 20 00 14 00 02 a1 47 01 13 a9 fa a5 d3 f1 79 bc 25 f4 b5 be d2 b9 d9
             00 08 00 14 a3 82 95 4e 4b e6 7b f1 17 84 c9 7c 82 92 c2 75 bf e3 ed 41
             80 28 00 04 c8 fb 0b 4c");
        let m = Message::parse(&b).unwrap();
        assert_eq!(
            m.xor_addr(A_XOR_MAPPED_ADDRESS),
            Some(
                "[2001:db8:1234:5678:11:2233:4455:6677]:32853"
                    .parse()
                    .unwrap()
            )
        );
        assert!(m.check_integrity(b"VOkJxbRl1RmTxUk/WvJxBt"));
    }

    #[test]
    fn rfc5769_long_term_vector() {
        // §2.4: long-term credentials, key = MD5("<U+30DE><U+30C8><U+30EA><U+30C3><U+30AF><U+30B9>:example.org:TheMatrIX").
        let b = hex(
            "00 01 00 60 21 12 a4 42 78 ad 34 33 c6 ad 72 c0 29 da 41 2e
             00 06 00 12 e3 83 9e e3 83 88 e3 83 aa e3 83 83 e3 82 af e3 82 b9 00 00
             00 15 00 1c 66 2f 2f 34 39 39 6b 39 35 34 64 36 4f 4c 33 34 6f 4c 39 46 53 54 76 79 36 34 73 41
             00 14 00 0b 65 78 61 6d 70 6c 65 2e 6f 72 67 00
             00 08 00 14 f6 70 24 65 6d d6 4a 3e 02 b8 e0 71 2e 85 c9 a2 8c a8 96 66",
        );
        let m = Message::parse(&b).unwrap();
        assert_eq!(m.text(A_REALM), Some("example.org"));
        let key =
            crate::auth::long_term_key(m.text(A_USERNAME).unwrap(), "example.org", "TheMatrIX");
        assert!(m.check_integrity(&key));
    }

    #[test]
    fn builder_round_trips_with_integrity_and_fingerprint() {
        let txid = [7u8; 12];
        let peer: SocketAddr = "10.1.2.3:4567".parse().unwrap();
        let b = Builder::new(ALLOCATE, Class::Success, &txid)
            .xor_addr(A_XOR_RELAYED_ADDRESS, peer)
            .u32(A_LIFETIME, 600)
            .finish(Some(b"key"));
        let m = Message::parse(&b).unwrap();
        assert_eq!(m.method, ALLOCATE);
        assert_eq!(m.class, Class::Success);
        assert_eq!(m.txid, txid);
        assert_eq!(m.xor_addr(A_XOR_RELAYED_ADDRESS), Some(peer));
        assert_eq!(m.u32(A_LIFETIME), Some(600));
        assert!(m.check_integrity(b"key"));
        // Every method/class maps back.
        for method in [
            BINDING,
            ALLOCATE,
            REFRESH,
            SEND,
            DATA,
            CREATE_PERMISSION,
            CHANNEL_BIND,
        ] {
            for class in [
                Class::Request,
                Class::Indication,
                Class::Success,
                Class::Error,
            ] {
                let b = Builder::new(method, class, &txid).finish(None);
                let m = Message::parse(&b).unwrap();
                assert_eq!((m.method, m.class), (method, class));
            }
        }
    }

    #[test]
    fn malformed_input_is_refused_never_panics() {
        let good = Builder::new(BINDING, Class::Request, &[1; 12])
            .attr(A_SOFTWARE, b"x")
            .finish(None);
        // Every truncation and every single-byte corruption.
        for n in 0..good.len() {
            let _ = Message::parse(&good[..n]);
        }
        for i in 0..good.len() {
            for v in [0u8, 0xFF, 0x80, 0x03] {
                let mut b = good.clone();
                b[i] = v;
                let _ = Message::parse(&b);
            }
        }
        // An attribute running past the end.
        let mut b = Builder::new(BINDING, Class::Request, &[1; 12]).finish_plain();
        b.extend_from_slice(&[0x00, 0x06, 0x00, 0x40]);
        b[2..4].copy_from_slice(&4u16.to_be_bytes());
        assert_eq!(Message::parse(&b).unwrap_err(), ParseError::BadAttributes);
        // Length not a multiple of 4 / not matching the datagram.
        let mut b = Builder::new(BINDING, Class::Request, &[1; 12]).finish_plain();
        b.push(0);
        assert_eq!(Message::parse(&b).unwrap_err(), ParseError::NotStun);
        // Too many attributes.
        let mut m = Builder::new(BINDING, Class::Request, &[1; 12]);
        for _ in 0..=MAX_ATTRS {
            m = m.attr(A_SOFTWARE, b"");
        }
        assert_eq!(
            Message::parse(&m.finish_plain()).unwrap_err(),
            ParseError::BadAttributes
        );
        // Bad address families and lengths decode to nothing.
        assert_eq!(decode_xor_addr(&[0, 3, 0, 0, 1, 2, 3, 4], &[0; 12]), None);
        assert_eq!(decode_xor_addr(&[0, 1, 0, 0, 1, 2, 3], &[0; 12]), None);
        assert_eq!(decode_xor_addr(&[], &[0; 12]), None);
    }

    #[test]
    fn attributes_after_integrity_are_ignored_and_unknown_ones_reported() {
        let txid = [2u8; 12];
        let b = Builder::new(ALLOCATE, Class::Request, &txid)
            .attr(0x7777, b"x")
            .attr(0x8888, b"y")
            .finish(Some(b"k"));
        let m = Message::parse(&b).unwrap();
        assert_eq!(m.unknown_required(), vec![0x7777]);
        let mut b = Builder::new(ALLOCATE, Class::Request, &txid).finish(Some(b"k"));
        // Append USERNAME after MESSAGE-INTEGRITY (drop the FINGERPRINT first).
        b.truncate(b.len() - 8);
        b.extend_from_slice(&[0x00, 0x06, 0x00, 0x01, b'u', 0, 0, 0]);
        let len = (b.len() - 20) as u16;
        b[2..4].copy_from_slice(&len.to_be_bytes());
        let m = Message::parse(&b).unwrap();
        assert!(m.get(A_USERNAME).is_none());
        assert!(m.has_integrity());
    }
}
