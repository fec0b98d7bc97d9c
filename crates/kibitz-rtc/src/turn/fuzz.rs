//! Fuzzing entry point (cargo feature `fuzzing`, used by `fuzz/`): the TURN client fed
//! arbitrary server datagrams, interleaved with its own calls. Not an API.
//!
//! The input is a list of records `[op, len_hi, len_lo, bytes…]`. Datagram records may have
//! their transaction id replaced by one the client is waiting on (and their length field
//! fixed), so answers reach the success and error paths instead of being dropped as unknown.

use super::*;

fn peer_from(b: &[u8]) -> SocketAddr {
    let mut a = [0u8; 6];
    for (d, s) in a.iter_mut().zip(b) {
        *d = *s;
    }
    SocketAddr::new(
        IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3])),
        u16::from_be_bytes([a[4], a[5]]),
    )
}

/// Checks what the client queued: every STUN message it built parses back (with the same
/// attributes it was given), every ChannelData message has the length it says.
fn check_out(c: &mut TurnClient) {
    assert!(c.out.len() <= 4096, "send queue grows without bound");
    assert!(
        c.pending.len() <= 4096,
        "pending requests grow without bound"
    );
    while let Some(d) = c.poll_transmit() {
        if (0x40..0x80).contains(&d[0]) {
            let len = usize::from(u16::from_be_bytes([d[2], d[3]]));
            assert!(4 + len <= d.len(), "short ChannelData");
        } else {
            assert!(
                parse(&d).is_some(),
                "the client built a message it cannot parse"
            );
        }
    }
}

/// Runs one input; panics on a broken invariant. Returns how far it got: allocations made and
/// datagrams relayed to the client (seeds must reach both).
pub fn turn_client(t0: Instant, data: &[u8]) -> (usize, usize) {
    let mut reach = (0, 0);
    let cfg = RelayConfig {
        server: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 3478),
        username: "1700000000:fuzz".into(),
        credential: "c2VjcmV0".into(),
    };
    let mut c = TurnClient::new(t0, cfg);
    let mut now = t0;
    let mut rest = data;
    let mut records = 0;
    while let [op, tail @ ..] = rest {
        records += 1;
        if records > 512 {
            break;
        }
        let (len, tail) = match tail {
            [h, l, t @ ..] => (usize::from(u16::from_be_bytes([*h, *l])), t),
            _ => (tail.len(), &[][..]),
        };
        let (bytes, tail) = tail.split_at(len.min(tail.len()));
        rest = tail;
        match op % 8 {
            0..=3 => {
                let mut d = bytes.to_vec();
                if op & 0x10 != 0 && d.len() >= 20 {
                    if let Some(id) = c.pending.keys().nth(usize::from(op >> 5)).copied() {
                        d[8..20].copy_from_slice(&id);
                    }
                    d[4..8].copy_from_slice(&MAGIC.to_be_bytes());
                    if op & 0x08 != 0 {
                        let l = u16::try_from(d.len() - 20).unwrap_or(u16::MAX);
                        d[2..4].copy_from_slice(&l.to_be_bytes());
                    }
                }
                match c.handle(now, &d) {
                    TurnInput::Data { data, .. } => {
                        assert!(
                            data.len() <= d.len(),
                            "relayed data longer than the datagram"
                        );
                        reach.1 += 1;
                    }
                    TurnInput::Event(TurnEvent::Allocated(a)) => {
                        assert_eq!(c.relay(), Some(a));
                        reach.0 += 1;
                    }
                    TurnInput::Event(TurnEvent::Failed(_)) | TurnInput::Nothing => {}
                }
            }
            4 => c.permit(now, peer_from(bytes)),
            5 => {
                let (p, payload) = bytes.split_at(bytes.len().min(6));
                c.send_to(now, peer_from(p), payload);
            }
            6 => {
                let step = bytes.first().map_or(1, |b| u64::from(*b));
                now += Duration::from_millis(step * 250);
                let _ = c.handle_timeout(now);
                if let Some(next) = c.next_timeout() {
                    assert!(next >= t0, "a timeout before the start");
                }
            }
            _ => c.deallocate(),
        }
        check_out(&mut c);
    }
    round_trip(data);
    reach
}

/// Messages the client builds parse back to what went in (values short enough for a
/// datagram, as the client only ever builds).
fn round_trip(data: &[u8]) {
    let id = [7u8; 12];
    let mut m = Msg::new(ALLOCATE, REQUEST, &id);
    let attrs: Vec<(u16, &[u8])> = data
        .chunks(61)
        .take(16)
        .enumerate()
        .map(|(i, v)| (u16::try_from(i).unwrap_or(0) + 0x8000, v))
        .collect();
    for (t, v) in &attrs {
        m.attr(*t, v);
    }
    let key = [3u8; 16];
    let buf = m.finish(Some(&key));
    let Some(p) = parse(&buf) else {
        panic!("a built message does not parse")
    };
    assert_eq!(p.id, id);
    assert_eq!(p.kind, ALLOCATE | REQUEST);
    assert_eq!(p.attrs.len(), attrs.len() + 1, "attributes lost");
    for ((t, v), (pt, pv)) in attrs.iter().zip(&p.attrs) {
        assert_eq!((t, v), (pt, pv), "attribute changed");
    }
    let addr = peer_from(data);
    assert_eq!(read_xor_addr(&xor_addr(addr, &id), &id), Some(addr));
}
