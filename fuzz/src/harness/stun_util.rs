//! STUN building for the harnesses: messages signed with MESSAGE-INTEGRITY (and FINGERPRINT)
//! the way a client that knows the credentials would, so fuzzed requests get past the
//! authentication that guards the interesting code. Independent of the code under test.

use hmac::{Hmac, Mac};
use sha1::Sha1;

pub const MAGIC: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];
pub const USERNAME: u16 = 0x0006;
pub const INTEGRITY: u16 = 0x0008;
pub const REALM: u16 = 0x0014;
pub const NONCE: u16 = 0x0015;
pub const FINGERPRINT: u16 = 0x8028;

/// Attributes `(type, value)` of a TLV list, as far as it is well formed.
pub fn tlvs(mut b: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while b.len() >= 4 {
        let t = u16::from_be_bytes([b[0], b[1]]);
        let l = usize::from(u16::from_be_bytes([b[2], b[3]]));
        let Some(v) = b.get(4..4 + l) else { break };
        out.push((t, v));
        b = b.get((4 + l).div_ceil(4) * 4..).unwrap_or(&[]);
    }
    out
}

/// The attributes of a message (after its 20-byte header).
pub fn attrs(msg: &[u8]) -> Vec<(u16, &[u8])> {
    tlvs(msg.get(20..).unwrap_or(&[]))
}

fn crc32(b: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for &byte in b {
        c ^= u32::from(byte);
        for _ in 0..8 {
            c = (c >> 1) ^ (0xEDB8_8320 & (c & 1).wrapping_neg());
        }
    }
    !c
}

fn set_len(m: &mut [u8], len: usize) {
    let l = u16::try_from(len).unwrap_or(u16::MAX).to_be_bytes();
    m[2..4].copy_from_slice(&l);
}

fn push_attr(m: &mut Vec<u8>, t: u16, v: &[u8]) {
    m.extend_from_slice(&t.to_be_bytes());
    m.extend_from_slice(&u16::try_from(v.len()).unwrap_or(u16::MAX).to_be_bytes());
    m.extend_from_slice(v);
    while !m.len().is_multiple_of(4) {
        m.push(0);
    }
}

/// A message of type `ty` with `attrs`, then MESSAGE-INTEGRITY under `key` (if any), then
/// FINGERPRINT (if asked).
pub fn build(
    ty: u16,
    txid: &[u8; 12],
    attrs: &[(u16, &[u8])],
    key: Option<&[u8]>,
    fingerprint: bool,
) -> Vec<u8> {
    let mut m = Vec::with_capacity(256);
    m.extend_from_slice(&(ty & 0x3FFF).to_be_bytes());
    m.extend_from_slice(&[0, 0]);
    m.extend_from_slice(&MAGIC);
    m.extend_from_slice(txid);
    for (t, v) in attrs {
        push_attr(&mut m, *t, &v[..v.len().min(4096)]);
    }
    if let Some(key) = key {
        let len = m.len() - 20 + 24;
        set_len(&mut m, len);
        let tag = match Hmac::<Sha1>::new_from_slice(key) {
            Ok(mut mac) => {
                mac.update(&m);
                mac.finalize().into_bytes().to_vec()
            }
            Err(_) => vec![0; 20],
        };
        push_attr(&mut m, INTEGRITY, &tag);
    }
    if fingerprint {
        let len = m.len() - 20 + 8;
        set_len(&mut m, len);
        let crc = crc32(&m) ^ 0x5354_554E;
        push_attr(&mut m, FINGERPRINT, &crc.to_be_bytes());
    }
    let len = m.len() - 20;
    set_len(&mut m, len);
    m
}

/// Records `[op, len_hi, len_lo, bytes…]` (a short last record takes what is left).
pub fn records(mut data: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    std::iter::from_fn(move || {
        let (&op, tail) = data.split_first()?;
        let (len, tail) = match tail {
            [h, l, t @ ..] => (usize::from(u16::from_be_bytes([*h, *l])), t),
            _ => (tail.len(), &[][..]),
        };
        let (bytes, rest) = tail.split_at(len.min(tail.len()));
        data = rest;
        Some((op, bytes))
    })
}
