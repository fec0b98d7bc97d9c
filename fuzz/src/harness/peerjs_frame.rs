//! The broker's client-frame path: `peerjs::ClientFrame::parse` on every line of the input
//! (with the relay round trip), then the lines as frames from two admitted sockets into the
//! broker core (type, dst and payload checks, rate limit, garbage counting, relay, queueing).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use kibitz_proto::peerjs::{self, ClientFrame, Dst};
use kibitz_signal::core::{Broker, ConnId, CoreConfig, OpenParams, Output};
use kibitz_signal::metrics::Metrics;
use serde_json::value::RawValue;

/// Words libFuzzer and the stable runner splice in.
pub const DICT: &[&[u8]] = &[
    b"\"type\"",
    b"\"dst\"",
    b"\"payload\"",
    b"\"src\"",
    b"\"OFFER\"",
    b"\"ANSWER\"",
    b"\"CANDIDATE\"",
    b"\"LEAVE\"",
    b"\"EXPIRE\"",
    b"\"HEARTBEAT\"",
    b"\"bob\"",
    b"\"alice\"",
    b"null",
    b"\\u0000",
    b"\\ud800",
    b"{",
    b"}",
    b"[",
    b"]",
    b":",
    b",",
    b"\n",
];

const SRC: &str = "src \"é\\\u{1}";

fn check_frame(text: &str) {
    let Ok(f) = ClientFrame::parse(text) else {
        return;
    };
    let Dst::Id(dst) = &f.dst else {
        return;
    };
    // What the broker relays parses back to the same type, dst and payload bytes.
    let out = peerjs::relay_frame(f.kind, SRC, dst, f.payload);
    let back = match ClientFrame::parse(&out) {
        Ok(b) => b,
        Err(e) => panic!("a relayed frame does not parse: {e}"),
    };
    assert_eq!(back.kind, f.kind, "type changed");
    assert_eq!(&back.dst, &f.dst, "dst changed");
    assert_eq!(
        back.payload.map(RawValue::get),
        f.payload.map(RawValue::get),
        "payload changed"
    );
    let keys: HashMap<String, &RawValue> = match serde_json::from_str(&out) {
        Ok(k) => k,
        Err(e) => panic!("a relayed frame is not a JSON object: {e}"),
    };
    let src = keys
        .get("src")
        .map(|v| serde_json::from_str::<String>(v.get()));
    assert!(matches!(src, Some(Ok(ref s)) if s == SRC), "src changed");
}

fn cfg() -> CoreConfig {
    CoreConfig {
        key: "peerjs".into(),
        expire_timeout: Duration::from_secs(5),
        alive_timeout: Duration::from_secs(60),
        concurrent_limit: 8,
        takeover: false,
        msg_rate: 50,
        msg_burst: 100,
        per_ip_connections: 4,
        max_queued_per_dst: 4,
        max_queued_total: 16,
        room_notices: None,
        cluster: false,
    }
}

fn drain(b: &mut Broker) -> usize {
    let mut n = 0;
    loop {
        match b.poll_output() {
            Output::Timeout(_) => return n,
            Output::Send { text, .. } => {
                // Everything the broker sends a client is a JSON object.
                assert!(
                    serde_json::from_str::<HashMap<String, &RawValue>>(&text).is_ok(),
                    "the broker sent a frame that is not a JSON object"
                );
            }
            _ => {}
        }
        n += 1;
        assert!(n < 10_000, "outputs grow without bound");
    }
}

/// Runs one input; panics on a broken invariant.
pub fn check(data: &[u8]) {
    for line in data.split(|b| *b == b'\n') {
        if let Ok(text) = std::str::from_utf8(line) {
            check_frame(text);
        }
    }
    #[allow(clippy::disallowed_methods)] // a virtual clock's origin
    let t0 = Instant::now();
    let mut b = Broker::new(t0, cfg(), Metrics::new());
    let ids = ["alice", "bob", "carol"];
    for (i, id) in ids.iter().enumerate() {
        let params = OpenParams {
            key: Some("peerjs".into()),
            id: Some((*id).into()),
            token: Some("t".into()),
        };
        b.handle_open(t0, ConnId(i as u64 + 1), None, params);
    }
    drain(&mut b);
    let mut now = t0;
    for (i, line) in data.split(|b| *b == b'\n').enumerate().take(1024) {
        now += Duration::from_millis(7);
        // The first byte of a line picks the sending socket; `~` closes it instead.
        let conn = ConnId(u64::from(line.first().copied().unwrap_or(0) % 3) + 1);
        match std::str::from_utf8(line) {
            Ok("~") => b.handle_close(now, conn),
            Ok(text) => b.handle_message(now, conn, text),
            Err(_) => b.handle_garbage(conn),
        }
        if i % 64 == 63 {
            b.handle_timeout(now);
        }
        drain(&mut b);
    }
    b.handle_timeout(now + Duration::from_secs(120));
    drain(&mut b);
}
