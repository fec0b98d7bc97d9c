//! Fuzzing for the broker's WebSocket side (kibitz-signal): the RFC 6455 frame decoder
//! (`ws.rs`) and what it parses from an upgrade request before switching protocols
//! (`read_handshake`, the origin check, the `id`/`token`/`key` query). Shared by the stable
//! runners (`src/bin/mutate_ws.rs`), the libFuzzer targets (`fuzz_targets/ws_decode.rs`,
//! `fuzz_targets/ws_handshake.rs`) and the CI smoke test (`tests/tests/ws_fuzz_smoke.rs`).
//!
//! Decoder invariants ([`check_decode`]): no panic; the same events and the same verdict
//! whether the bytes arrive in one read or split anywhere; the bytes it holds between reads
//! stay bounded by the message limit; and ([`check_roundtrip`]) messages encoded with the
//! broker's own encoders (masked as a client would) or fragmented around pings decode back
//! to themselves. Handshake invariants ([`check_handshake`]): no panic, an accept value only
//! for a complete handshake and always 28 base64 characters, and query values written by a
//! form encoder read back as written.

use kibitz_signal::fuzzing::http::{HeaderMap, HeaderName, HeaderValue, Uri};
use kibitz_signal::fuzzing::{
    Decoder, Event, Handshake, accept_key, encode_binary, encode_close, encode_pong, encode_text,
    open_params, origin_allowed, read_handshake,
};

// Each harness uses part of the shared runner.
#[allow(dead_code)]
#[path = "stable.rs"]
pub mod stable;

use stable::{Harness, Keep, delete_run, flip_bit, random_bytes, run_loop, set_byte, splice_tail};
pub use stable::{Outcome, Rng, Stats};

/// A decoded event, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ev {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Close(Option<u16>),
}

fn own(e: Event<'_>) -> Ev {
    match e {
        Event::Text(t) => Ev::Text(t.to_owned()),
        Event::Binary(b) => Ev::Binary(b.to_vec()),
        Event::Ping(p) => Ev::Ping(p.to_vec()),
        Event::Close(c) => Ev::Close(c),
    }
}

/// Message limits tried: control-frame and length-encoding edges, and a realistic one.
const LIMITS: [usize; 6] = [0, 125, 126, 1024, 65_536, 1 << 20];
/// Largest frame header: 2 + 8 (length) + 4 (mask).
const MAX_HEADER: usize = 14;

/// Feeds `wire` in reads of the given sizes (cycled); returns the events and the close code
/// of a violation, checking the held bytes after every read.
fn decode_in(wire: &[u8], max: usize, reads: &[usize]) -> (Vec<Ev>, Option<u16>) {
    let mut d = Decoder::new(max);
    let mut events = Vec::new();
    let mut pos = 0;
    let mut i = 0;
    let largest_read = reads.iter().copied().max().unwrap_or(wire.len()).max(1);
    while pos < wire.len() {
        let n = reads
            .get(i % reads.len().max(1))
            .copied()
            .unwrap_or(wire.len())
            .max(1);
        i += 1;
        let end = (pos + n).min(wire.len());
        let mut chunk = wire[pos..end].to_vec();
        pos = end;
        if let Err(v) = d.feed(&mut chunk, |e| events.push(own(e))) {
            assert!(
                matches!(v.code, 1002 | 1007 | 1009),
                "unexpected close code {}",
                v.code
            );
            return (events, Some(v.code));
        }
        // An incomplete frame (under the limit) plus the read it came with, a fragmented
        // message under the limit; Vec growth may double either.
        let bound = 2 * (MAX_HEADER + max + largest_read) + 2 * max + 64;
        assert!(
            d.buffered() <= bound,
            "decoder holds {} bytes, over {bound} (limit {max})",
            d.buffered()
        );
    }
    (events, None)
}

/// Arbitrary bytes as client frames: the first byte picks the message limit, the next two
/// the read sizes; the rest is the wire. One read and split reads must agree. `Ok` when every
/// byte decoded (maybe with an incomplete tail), `Rejected` when a violation closed the
/// connection.
pub fn check_decode(data: &[u8]) -> Outcome {
    let (ctl, wire) = data.split_at(data.len().min(3));
    let [a, b, c] = [0, 1, 2].map(|i| ctl.get(i).copied().unwrap_or(0) as usize);
    let max = LIMITS[a % LIMITS.len()];
    let whole = decode_in(wire, max, &[]);
    let mut rng = Rng(((b << 8 | c) as u64) << 1 | 1);
    let reads: Vec<usize> = (0..8).map(|_| 1 + rng.below(1 + (b % 32) * 8)).collect();
    let split = decode_in(wire, max, &reads);
    assert_eq!(whole, split, "one read and reads of {reads:?} disagree");
    match whole.1 {
        None => Outcome::Ok,
        Some(_) => Outcome::Rejected,
    }
}

/// A client frame: masked with `mask`.
fn client_frame(out: &mut Vec<u8>, fin: bool, opcode: u8, payload: &[u8], mask: [u8; 4]) {
    let mut server = Vec::new();
    push_plain_header(&mut server, fin, opcode, payload.len());
    mask_server_frame(out, &server, payload, mask);
}

fn push_plain_header(out: &mut Vec<u8>, fin: bool, opcode: u8, len: usize) {
    out.push(if fin { 0x80 } else { 0 } | opcode);
    if len < 126 {
        out.push(len as u8);
    } else if let Ok(l) = u16::try_from(len) {
        out.push(126);
        out.extend_from_slice(&l.to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

/// Turns a server frame header (as the broker's encoders write it) plus payload into the
/// client's masked frame.
fn mask_server_frame(out: &mut Vec<u8>, header: &[u8], payload: &[u8], mask: [u8; 4]) {
    out.push(header[0]);
    out.push(header[1] | 0x80);
    out.extend_from_slice(&header[2..]);
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
}

/// A frame from one of the broker's encoders, masked as a client would send it.
fn via_encoder(out: &mut Vec<u8>, encode: impl FnOnce(&mut Vec<u8>), mask: [u8; 4]) {
    let mut frame = Vec::new();
    encode(&mut frame);
    let hlen = match frame[1] & 0x7f {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    let (h, p) = frame.split_at(hlen);
    mask_server_frame(out, h, p, mask);
}

/// The next up-to-`cap` bytes of `rest` as material for one message.
fn take(rng: &mut Rng, rest: &mut &[u8], cap: usize) -> Vec<u8> {
    let n = rng.below(rest.len().min(cap) + 1);
    let (h, t) = rest.split_at(n);
    *rest = t;
    let mut v = h.to_vec();
    // Lengths around the 125/126 and 65535/65536 encodings too.
    if rng.below(64) == 0 && cap > 126 {
        v.resize([125, 126, 127, 65_535, 65_536][rng.below(5)].min(cap), b'x');
    }
    v
}

/// Close codes a client may send.
const CODES: [u16; 8] = [1000, 1001, 1003, 1007, 1011, 1014, 3000, 4999];

/// Builds messages from `data`, encodes them as client frames (the broker's encoders, or
/// fragments with pings between), and checks they decode back, in one read and split.
pub fn check_roundtrip(data: &[u8]) {
    let mut rng = Rng(data.iter().fold(0x9e37_79b9_7f4a_7c15u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    }) | 1);
    let mut wire = Vec::new();
    let mut expect = Vec::new();
    let mut rest = data;
    while !rest.is_empty() && expect.len() < 64 {
        let mask = (rng.next() as u32).to_be_bytes();
        match rng.below(6) {
            0 => {
                let t = String::from_utf8_lossy(&take(&mut rng, &mut rest, 70_000)).into_owned();
                via_encoder(&mut wire, |o| encode_text(o, &t), mask);
                expect.push(Ev::Text(t));
            }
            1 => {
                let b = take(&mut rng, &mut rest, 70_000);
                via_encoder(&mut wire, |o| encode_binary(o, &b), mask);
                expect.push(Ev::Binary(b));
            }
            2 => {
                let p = take(&mut rng, &mut rest, 125);
                via_encoder(&mut wire, |o| encode_pong(o, &p), mask);
                // A pong from the client is read and ignored.
            }
            3 => {
                let p = take(&mut rng, &mut rest, 125);
                client_frame(&mut wire, true, 0x9, &p, mask);
                expect.push(Ev::Ping(p));
            }
            4 => {
                // A fragmented message with pings between its fragments.
                let text = rng.below(2) == 0;
                let whole = take(&mut rng, &mut rest, 5000);
                let whole = if text {
                    String::from_utf8_lossy(&whole).into_owned().into_bytes()
                } else {
                    whole
                };
                let mut cuts: Vec<usize> = (0..rng.below(5))
                    .map(|_| rng.below(whole.len() + 1))
                    .collect();
                cuts.sort_unstable();
                cuts.push(whole.len());
                let mut start = 0;
                let mut pings = Vec::new();
                for (i, &end) in cuts.iter().enumerate() {
                    let op = if i == 0 { if text { 1 } else { 2 } } else { 0 };
                    client_frame(&mut wire, i + 1 == cuts.len(), op, &whole[start..end], mask);
                    start = end;
                    if rng.below(3) == 0 && i + 1 < cuts.len() {
                        let p = vec![i as u8; rng.below(4)];
                        client_frame(&mut wire, true, 0x9, &p, mask);
                        pings.push(Ev::Ping(p));
                    }
                }
                expect.extend(pings);
                expect.push(if text {
                    Ev::Text(String::from_utf8(whole).unwrap_or_default())
                } else {
                    Ev::Binary(whole)
                });
            }
            _ => {
                let code = (rng.below(4) > 0).then(|| CODES[rng.below(CODES.len())]);
                let reason = String::from_utf8_lossy(&take(&mut rng, &mut rest, 125)).into_owned();
                via_encoder(&mut wire, |o| encode_close(o, code, &reason), mask);
                expect.push(Ev::Close(code));
                // Whatever follows a close is not read.
                client_frame(&mut wire, true, 0x9, b"after close", mask);
                break;
            }
        }
    }
    let max = 1 << 20;
    let (got, violation) = decode_in(&wire, max, &[]);
    assert_eq!(violation, None, "valid frames refused");
    assert_eq!(got, expect, "decode(encode(messages)) differs");
    let reads: Vec<usize> = (0..5).map(|_| 1 + rng.below(300)).collect();
    assert_eq!(
        decode_in(&wire, max, &reads),
        (expect, None),
        "split reads {reads:?} differ"
    );
}

/// Both decoder checks on one input (libFuzzer's `ws_decode`).
pub fn check(data: &[u8]) -> Outcome {
    check_roundtrip(data);
    check_decode(data)
}

/// Origins the broker might be configured with.
fn origins() -> Vec<String> {
    vec!["https://kibitz.example".into(), "*".into()]
}

/// An HTTP request head as hyper reads it (httparse, then the header map), then everything
/// the broker reads from it before the upgrade.
pub fn check_handshake(data: &[u8]) -> Outcome {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    let Ok(_) = req.parse(data) else {
        return Outcome::Rejected;
    };
    let mut map = HeaderMap::new();
    for h in req.headers.iter() {
        // hyper refuses a request with a header it cannot represent.
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_bytes(h.value),
        ) else {
            return Outcome::Rejected;
        };
        map.append(name, value);
    }
    let verdict = read_handshake(&map);
    assert_eq!(verdict, read_handshake(&map), "not deterministic");
    if let Handshake::Accept(accept) = &verdict {
        assert_eq!(accept.len(), 28, "accept value {accept:?}");
        assert!(map.contains_key("sec-websocket-key"));
    }
    let _ = origin_allowed(&origins(), &map);
    assert!(origin_allowed(&[], &map), "an empty origin list allows any");
    if let Some(path) = req.path
        && let Ok(uri) = path.parse::<Uri>()
    {
        let p = open_params(uri.query());
        for v in [&p.id, &p.key, &p.token].into_iter().flatten() {
            assert!(
                v.len() <= path.len() * 3,
                "decoded value longer than its query"
            );
        }
    }
    // Values the client chose, through a form encoder and back.
    let vals: Vec<String> = data
        .splitn(3, |b| *b == b'\n')
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    let mut q = form_urlencoded::Serializer::new(String::new());
    let names = ["id", "token", "key"];
    for (n, v) in names.iter().zip(&vals) {
        q.append_pair(n, v);
    }
    let q = q.finish();
    let p = open_params(Some(&q));
    for (n, v) in names.iter().zip(&vals) {
        let got = match *n {
            "id" => &p.id,
            "token" => &p.token,
            _ => &p.key,
        };
        assert_eq!(
            got.as_deref(),
            Some(v.as_str()),
            "{n} did not survive the query"
        );
    }
    let _ = accept_key(data);
    match verdict {
        Handshake::Accept(_) => Outcome::Ok,
        _ => Outcome::Rejected,
    }
}

/// Valid inputs to start from: frames for the decoder, request heads for the handshake.
pub fn seeds(handshake: bool) -> Vec<Vec<u8>> {
    if handshake {
        return vec![
            b"GET /peerjs?key=peerjs&id=abc&token=t0k3n&version=1.5.5 HTTP/1.1\r\nHost: 127.0.0.1:9000\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: https://kibitz.example\r\n\r\n".to_vec(),
            b"GET /myapp/peerjs?key=k&id=a+b%2Bc HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Upgrade\r\nUpgrade: WebSocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: AQIDBAUGBwgJCgsMDQ4PEA==\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n".to_vec(),
            b"GET /peerjs HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\nSec-WebSocket-Version: 8\r\n\r\n".to_vec(),
        ];
    }
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut v = Vec::new();
    let mut f = vec![3u8, 7, 9];
    client_frame(&mut f, true, 1, b"{\"type\":\"HEARTBEAT\"}", mask);
    v.push(f);
    let mut f = vec![4u8, 1, 1];
    client_frame(&mut f, false, 1, "ké☕".as_bytes(), mask);
    client_frame(&mut f, true, 9, b"ping", mask);
    client_frame(&mut f, true, 0, "𝄞!".as_bytes(), mask);
    client_frame(&mut f, true, 8, &[0x03, 0xe8, b'o', b'k'], mask);
    v.push(f);
    let mut f = vec![5u8, 200, 3];
    client_frame(&mut f, true, 2, &[0xab; 300], mask);
    client_frame(&mut f, true, 2, &[0xcd; 1000], mask);
    v.push(f);
    v
}

/// One mutation of `input`, sometimes spliced with another corpus entry.
pub fn mutate(rng: &mut Rng, input: &[u8], corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut b = input.to_vec();
    for _ in 0..=rng.below(4) {
        let len = b.len();
        match rng.below(8) {
            0 if len > 0 => flip_bit(rng, &mut b),
            1 if len > 0 => {
                // Frame-header and HTTP-ish bytes are the interesting ones.
                set_byte(rng, &mut b, |r| {
                    [
                        0x80, 0x81, 0x82, 0x88, 0x89, 0x8a, 0x00, 0x7e, 0x7f, 0xfe, 0xff, b'\r',
                        b'\n', b':', b',', b'%', b'&', b'=',
                    ][r.below(18)]
                });
            }
            2 if len > 0 => set_byte(rng, &mut b, |r| r.next() as u8),
            3 => {
                let i = rng.below(len + 1);
                let n = 1 + rng.below(8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                b.splice(i..i, bytes);
            }
            4 if len > 0 => delete_run(rng, &mut b, usize::MAX),
            5 if !corpus.is_empty() => splice_tail(rng, &mut b, corpus),
            6 if len > 0 => {
                // Duplicate a run (repeated frames, repeated headers).
                let i = rng.below(len);
                let n = rng.below((len - i).min(256) + 1);
                let run = b[i..i + n].to_vec();
                b.splice(i..i, run);
            }
            _ => b = random_bytes(rng, 64),
        }
    }
    b
}

/// The decoder checks ([`check`]) or [`check_handshake`] on [`mutate`]d inputs, cut at
/// 20,000 bytes (libFuzzer's default -max_len is 4096; a little more here, for 16-bit
/// lengths).
struct Ws {
    handshake: bool,
}

impl Harness for Ws {
    const KEEP: Keep = Keep::new(2048, 8);
    fn mutate(&mut self, rng: &mut Rng, input: &[u8], corpus: &[Vec<u8>]) -> Vec<u8> {
        let mut input = mutate(rng, input, corpus);
        input.truncate(20_000);
        input
    }
    fn check(&mut self, input: &[u8]) -> Outcome {
        if self.handshake {
            check_handshake(input)
        } else {
            check(input)
        }
    }
}

/// Runs `iterations` mutated inputs from `seed` through [`check`] (or [`check_handshake`]);
/// panics are caught and recorded as crashes.
pub fn run(handshake: bool, seed: u64, iterations: u64) -> Stats {
    let mut rng = Rng(seed | 1);
    let mut corpus = seeds(handshake);
    let mut stats = Stats::default();
    let mut harness = Ws { handshake };
    run_loop(&mut harness, &mut rng, &mut corpus, iterations, &mut stats);
    stats
}
