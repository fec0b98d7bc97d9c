//! The embedded TURN server's core (kibitz-turn) fed datagrams from clients it has never seen
//! and from peers: raw bytes (the parser and every refusal path) and requests signed with the
//! right long-term credentials and the nonce it last handed out (Allocate, Refresh,
//! CreatePermission, ChannelBind, Send, ChannelData past authentication). Relay sockets are
//! "bound" when asked; time moves when the input says.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::stun_util::{self, NONCE, REALM, USERNAME};
use kibitz_turn::core::{CoreConfig, Output, Server, TurnLimits};
use kibitz_turn::{Secret, TurnAuth};
use md5::{Digest, Md5};

/// Words libFuzzer and the stable runner splice in.
pub const DICT: &[&[u8]] = &[
    b"\x21\x12\xa4\x42",
    b"\x00\x03",
    b"\x00\x04",
    b"\x00\x08",
    b"\x00\x09",
    b"\x00\x16",
    b"\x00\x01",
    b"\x00\x19\x00\x04\x11\x00\x00\x00",
    b"\x00\x0d\x00\x04",
    b"\x00\x12\x00\x08",
    b"\x00\x0c\x00\x04\x40\x00\x00\x00",
    b"\x00\x13",
    b"\x00\x18\x00\x01\x80",
    b"\x00\x22",
    b"\x00\x1a",
    b"\x80\x00\x00\x04",
    b"\x40\x00",
];

const USER: &str = "wblan";
const PASS: &str = "Sp64SHsXMZOdzT6rgYcF";
const REALM_TEXT: &str = "kibitz";

fn addr(i: u8, port: u16) -> SocketAddr {
    let ips = ["192.168.1.20", "10.0.0.7", "fd00::1", "127.0.0.1"];
    let ip = ips[usize::from(i) % ips.len()];
    match ip.parse() {
        Ok(ip) => SocketAddr::new(ip, port),
        Err(_) => unreachable!("fixed addresses"),
    }
}

/// How far an input got: relay sockets bound and datagrams relayed (seeds must reach both).
#[derive(Debug, Default, Clone, Copy)]
pub struct Reach {
    pub relays: usize,
    pub relayed: usize,
}

/// Runs one input; panics on a broken invariant.
pub fn check(data: &[u8]) {
    let _ = run(data);
}

/// [`check`], telling how far the input got.
pub fn run(data: &[u8]) -> Reach {
    let mut reach = Reach::default();
    #[allow(clippy::disallowed_methods)] // a virtual clock's origin
    let t0 = Instant::now();
    let limits = TurnLimits {
        max_allocations: 8,
        max_allocations_per_ip: 4,
        max_permissions: 4,
        max_channels: 4,
        ..TurnLimits::default()
    };
    let cfg = CoreConfig {
        realm: REALM_TEXT.into(),
        auth: TurnAuth::Static {
            user: USER.into(),
            pass: Secret::new(PASS),
        },
        advertised_ip: "192.168.1.10"
            .parse()
            .unwrap_or(std::net::Ipv4Addr::LOCALHOST.into()),
        limits,
    };
    let key: [u8; 16] = Md5::digest(format!("{USER}:{REALM_TEXT}:{PASS}")).into();
    let mut s = Server::new(cfg, [9; 32], t0, 1_800_000_000);
    let mut now = t0;
    let mut nonce: Vec<u8> = Vec::new();
    let mut allocs: Vec<u64> = Vec::new();
    let mut next_port = 50_000u16;
    for (n, (op, bytes)) in stun_util::records(data).enumerate() {
        if n >= 512 {
            break;
        }
        let from = addr(op >> 4, 40_000 + u16::from(op >> 6));
        match op % 4 {
            0 => {
                if let Some(f) = s.handle_client(now, from, bytes) {
                    assert!(
                        f.range.end <= bytes.len(),
                        "forward range outside the datagram"
                    );
                    reach.relayed += 1;
                }
            }
            1 if bytes.len() >= 14 => {
                // A signed request: type and transaction id from the input, its attributes,
                // then the credentials and the current nonce.
                let ty = u16::from_be_bytes([bytes[0], bytes[1]]);
                let mut txid = [0u8; 12];
                txid.copy_from_slice(&bytes[2..14]);
                // Before the first nonce, unsigned (the 401 that answers it brings one).
                let mut attrs = stun_util::tlvs(&bytes[14..]);
                let key = (!nonce.is_empty()).then_some(&key[..]);
                if key.is_some() {
                    attrs.push((USERNAME, USER.as_bytes()));
                    attrs.push((REALM, REALM_TEXT.as_bytes()));
                    attrs.push((NONCE, &nonce));
                }
                let msg = stun_util::build(ty, &txid, &attrs, key, op & 0x08 != 0);
                if let Some(f) = s.handle_client(now, from, &msg) {
                    assert!(
                        f.range.end <= msg.len(),
                        "forward range outside the datagram"
                    );
                }
            }
            2 if !allocs.is_empty() => {
                let alloc = allocs[usize::from(op >> 3) % allocs.len()];
                let mut buf = vec![0u8; 4 + bytes.len()];
                buf[4..].copy_from_slice(bytes);
                let peer = addr(op >> 2, 3478);
                if let Some(t) = s.handle_peer(now, alloc, peer, &mut buf, bytes.len()) {
                    assert!(
                        t.range.end <= buf.len(),
                        "to-client range outside the buffer"
                    );
                    reach.relayed += 1;
                }
            }
            _ => {
                let step = bytes.first().map_or(1, |b| u64::from(*b));
                now += Duration::from_secs(step * 5);
                s.handle_timeout(now);
                if let Some(t) = s.poll_timeout() {
                    assert!(t > now, "an allocation outlived its expiry");
                }
            }
        }
        while let Some(out) = s.poll_output() {
            match out {
                Output::Transmit { data, .. } => {
                    // Everything sent to a client is one well-formed STUN message.
                    assert!(
                        data.len() >= 20 && data[4..8] == stun_util::MAGIC,
                        "not STUN"
                    );
                    let len = usize::from(u16::from_be_bytes([data[2], data[3]]));
                    assert_eq!(len + 20, data.len(), "length field");
                    if let Some((_, v)) = stun_util::attrs(&data).into_iter().find(|a| a.0 == NONCE)
                    {
                        nonce = v.to_vec();
                    }
                }
                Output::BindRelay { alloc, even } => {
                    if op & 0x80 != 0 && op & 0x40 != 0 {
                        s.relay_bound(now, alloc, Err(()));
                    } else {
                        next_port = next_port.wrapping_add(2).max(1024);
                        let port = if even { next_port & !1 } else { next_port | 1 };
                        s.relay_bound(now, alloc, Ok(port));
                        allocs.push(alloc);
                        reach.relays += 1;
                    }
                }
                Output::CloseRelay { alloc } => allocs.retain(|a| *a != alloc),
                #[allow(unreachable_patterns)]
                _ => {}
            }
        }
        assert!(s.stats().allocations <= 8, "over the allocation cap");
    }
    reach
}
