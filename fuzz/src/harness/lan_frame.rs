//! The LAN hub's text side: every line of the input through kibitz-proto's LAN parsers (client
//! frames, hub frames, room payloads, pasted blobs and links) with their round trips, then the
//! lines as frames from three sessions into the hub's router core (`HubCore`).

use kibitz_lan_hub::core::HubCore;
use kibitz_proto::lan::{self, ClientFrame, HubFrame, LanMsg};

/// Words libFuzzer and the stable runner splice in.
pub const DICT: &[&[u8]] = &[
    b"\"t\"",
    b"\"join\"",
    b"\"peers\"",
    b"\"to\"",
    b"\"echo\"",
    b"\"room\"",
    b"\"id\"",
    b"\"payload\"",
    b"\"x\"",
    b"\"k\"",
    b"\"sig\"",
    b"\"present\"",
    b"\"hi\"",
    b"\"bye\"",
    b"\"from\"",
    b"\"ids\"",
    b"g1|",
    b"g2|",
    b"~4711",
    b"galaxy=",
    b"#",
    b"%7C",
    b"null",
    b"18446744073709551615",
    b"-1",
    b"1e3",
    b"\\ud800",
];

fn round_trips(text: &str) {
    match lan::parse_client_frame(text) {
        Some(ClientFrame::Join { room }) => {
            let again = lan::parse_client_frame(&lan::join_frame(&room));
            assert!(
                matches!(again, Some(ClientFrame::Join { room: ref r }) if *r == room),
                "join does not round-trip"
            );
        }
        Some(ClientFrame::To { id, payload }) => {
            // The hub relays any JSON; a client reads it back whenever the payload itself is
            // a value it can hold (not, say, 1e999).
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(payload.get()) {
                let frame = lan::from_frame(7, &payload);
                match serde_json::from_str::<HubFrame>(&frame) {
                    Ok(HubFrame::From { id: 7, payload: p }) => {
                        assert_eq!(p, v, "a routed payload changed")
                    }
                    other => panic!("a routed frame does not read back: {other:?}"),
                }
                let again = lan::parse_client_frame(&lan::to_frame(id, &v));
                assert!(
                    matches!(again, Some(ClientFrame::To { id: i, .. }) if i == id),
                    "to does not round-trip"
                );
            }
        }
        Some(ClientFrame::Echo { x }) => {
            let frame = lan::echo_frame(&x);
            let readable = serde_json::from_str::<serde_json::Value>(x.get()).is_ok();
            let back = serde_json::from_str::<HubFrame>(&frame);
            assert!(
                !readable || matches!(back, Ok(HubFrame::Echo { .. })),
                "an echo does not read back"
            );
        }
        Some(ClientFrame::Peers) | None => {}
    }
    let _ = serde_json::from_str::<HubFrame>(text);
    if let Ok(m) = serde_json::from_str::<LanMsg>(text)
        && let Ok(out) = serde_json::to_string(&m)
    {
        // Same variant and fields once re-read (numbers inside `meta` may round).
        let back = serde_json::from_str::<LanMsg>(&out);
        assert!(back.is_ok(), "a room payload does not re-read: {out}");
    }
    if let Ok(blob) = lan::blob_from_input(text) {
        let again = lan::parse_blob(&blob.to_string());
        assert_eq!(again.as_ref(), Ok(&blob), "a blob does not round-trip");
        let _ = blob.turn_urls();
        let _ = blob.fingerprint_sdp();
    }
    let _ = lan::room_from_link(text);
}

/// Runs one input; panics on a broken invariant.
pub fn check(data: &[u8]) {
    for line in data.split(|b| *b == b'\n') {
        if let Ok(text) = std::str::from_utf8(line) {
            round_trips(text);
        }
    }
    let mut core = HubCore::new();
    let mut ids = [core.open(), core.open(), core.open()];
    for line in data.split(|b| *b == b'\n').take(1024) {
        // The first byte picks the session; `~` closes it and opens a new one.
        let slot = usize::from(line.first().copied().unwrap_or(0)) % ids.len();
        match std::str::from_utf8(line) {
            Ok("~") => {
                core.close(ids[slot]);
                ids[slot] = core.open();
            }
            Ok(text) => core.text(ids[slot], text),
            Err(_) => core.binary(ids[slot]),
        }
        let mut n = 0;
        while let Some((to, text)) = core.poll_output() {
            assert!(ids.contains(&to), "a frame for a closed session");
            // Valid JSON always (a payload it relays may hold numbers a client cannot).
            assert!(
                serde_json::from_str::<Box<serde_json::value::RawValue>>(&text).is_ok(),
                "the hub sent a frame that is not JSON: {text}"
            );
            n += 1;
        }
        assert!(n <= 4, "one frame caused {n} outputs");
    }
    assert_eq!(core.sessions(), 3);
}
