//! The data mesh's channels as the web client (KIBITZ.md §4.9) expects them, driven by hand:
//! `cap` on sig open, the bulk channel the dialler opens on a peer's `cap`, content on bulk
//! once it is open, the `mh` keepalive, re-dialling a sig channel whose keepalive stopped,
//! and `bye` both ways.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;

use kibitz_client::{ConnId, Engine, Input, NetCmd, NetEvent, PeerKey};
use kibitz_proto::binarypack::{Value, encode};
use serde_json::json;

/// The bytes a frame goes out as, so comparisons hold to the wire (an integral float and an
/// integer pack alike, as in JS).
fn wire(v: &Value) -> Vec<u8> {
    encode(v).unwrap()
}

/// A frame with its keys in the order given (the web client's object literal order).
fn frame(pairs: &[(&str, Value)]) -> Vec<u8> {
    wire(&Value::Map(
        pairs
            .iter()
            .map(|(k, v)| (Value::Str((*k).to_owned()), v.clone()))
            .collect(),
    ))
}

fn s(v: &str) -> Value {
    Value::Str(v.to_owned())
}

/// Frames sent on `conn`, as bytes.
fn sent_on(cmds: &[NetCmd], conn: ConnId) -> Vec<Vec<u8>> {
    cmds.iter()
        .filter_map(|c| match c {
            NetCmd::Send { conn: c, frame } if *c == conn => Some(wire(frame)),
            _ => None,
        })
        .collect()
}

/// Kinds (`k`) of the content frames sent on `conn`.
fn kinds_on(cmds: &[NetCmd], conn: ConnId) -> Vec<String> {
    cmds.iter()
        .filter_map(|c| match c {
            NetCmd::Send { conn: c, frame } if *c == conn => {
                frame.get("k").and_then(Value::as_str).map(str::to_owned)
            }
            _ => None,
        })
        .collect()
}

/// The mesh dial to `vb` with this label.
fn dial(cmds: &[NetCmd], media: PeerKey, label: Option<&str>) -> Option<ConnId> {
    cmds.iter().find_map(|c| match c {
        NetCmd::Connect {
            peer,
            conn,
            remote,
            label: l,
        } if *peer == media && remote == "vb" && l.as_deref() == label => Some(*conn),
        _ => None,
    })
}

fn feed(e: &mut Engine, ms: u64, ev: NetEvent) -> Vec<NetCmd> {
    e.handle_input(at(ms), Input::Net(ev));
    drain(e).0
}

fn tick(e: &mut Engine, ms: u64) -> Vec<NetCmd> {
    e.handle_input(at(ms), Input::Timeout);
    drain(e).0
}

fn open(e: &mut Engine, ms: u64, conn: ConnId) -> Vec<NetCmd> {
    feed(
        e,
        ms,
        NetEvent::Open {
            conn,
            fingerprint: None,
        },
    )
}

fn data(e: &mut Engine, ms: u64, conn: ConnId, v: serde_json::Value) -> Vec<NetCmd> {
    feed(
        e,
        ms,
        NetEvent::Data {
            conn,
            frame: app(v),
        },
    )
}

const CAP: fn() -> serde_json::Value = || json!({"t": "cap", "bulk": 1});

/// Alice (`va`) holds the room with Bob (`vb`) in it; she dials Bob's sig channel and it opens.
fn with_sig_open() -> (Engine, PeerKey, ConnId, Vec<NetCmd>) {
    let (mut e, media, cmds) = authority_with_member_on();
    let sig = dial(&cmds, media, None).expect("va < vb: Alice dials Bob's sig channel");
    assert_eq!(
        dial(&cmds, media, Some("bulk")),
        None,
        "no bulk before Bob's cap"
    );
    let cmds = open(&mut e, 100, sig);
    (e, media, sig, cmds)
}

#[test]
fn bulk_opens_on_cap_and_carries_the_content() {
    let (mut e, media, sig, cmds) = with_sig_open();
    assert_eq!(
        sent_on(&cmds, sig),
        [frame(&[("t", s("cap")), ("bulk", Value::Int(1))])],
        "cap goes out on sig open"
    );

    // Until a bulk channel is open, content rides sig.
    e.chat(at(200), "hi", None).unwrap();
    let (cmds, _) = drain(&mut e);
    assert_eq!(kinds_on(&cmds, sig), ["chat"]);

    // Bob takes bulk: Alice, the dialler, opens it.
    let cmds = data(&mut e, 300, sig, CAP());
    let bulk = dial(&cmds, media, Some("bulk")).expect("a bulk dial on Bob's cap");
    // A repeated cap does not dial again.
    assert_eq!(
        dial(&data(&mut e, 310, sig, CAP()), media, Some("bulk")),
        None
    );
    let cmds = open(&mut e, 400, bulk);
    assert!(
        sent_on(&cmds, bulk).is_empty(),
        "cap is a sig frame: {cmds:?}"
    );
    e.chat(at(500), "again", None).unwrap();
    e.broadcast(at(500), app(json!({"n": 1}))).unwrap();
    let (cmds, _) = drain(&mut e);
    assert_eq!(kinds_on(&cmds, bulk), ["chat", "app"]);
    assert!(kinds_on(&cmds, sig).is_empty());

    // Control frames count on sig only.
    data(&mut e, 600, bulk, json!({"t": "bye"}));
    assert_eq!(
        e.mesh_links().iter().filter(|l| l.open).count(),
        2,
        "a bye on bulk is not a bye: {:?}",
        e.mesh_links()
    );

    // Bulk closes: content falls back to sig, and Alice re-dials bulk.
    feed(&mut e, 700, NetEvent::Closed { conn: bulk });
    e.chat(at(710), "fallback", None).unwrap();
    let (cmds, _) = drain(&mut e);
    assert_eq!(kinds_on(&cmds, sig), ["chat"]);
    let cmds = tick(&mut e, 1_600);
    assert!(dial(&cmds, media, Some("bulk")).is_some(), "{cmds:?}");
}

#[test]
fn sig_carries_a_keepalive_and_a_silent_one_is_redialled() {
    let (mut e, media, sig, _) = with_sig_open();
    let z = Value::Int(0);
    let mh = frame(&[
        ("t", s("mh")),
        ("v", z.clone()),
        ("a", z.clone()),
        ("ov", z.clone()),
        ("oa", z),
    ]);
    // Every 2 s: mh on sig.
    let mut beats = 0;
    let mut t = 100;
    while t < 6_200 {
        t += 100;
        let cmds = tick(&mut e, t);
        beats += sent_on(&cmds, sig).iter().filter(|f| **f == mh).count();
    }
    assert_eq!(beats, 3, "mh at 2.1, 4.1 and 6.1 s");

    // A peer that never sent mh (an older client) is never judged by it.
    let cmds = tick(&mut e, 20_000);
    assert_eq!(dial(&cmds, media, None), None, "{cmds:?}");

    // Bob keeps alive, then goes silent: past 8 s Alice replaces the sig channel.
    data(
        &mut e,
        20_100,
        sig,
        json!({"t": "mh", "v": 0, "a": 0, "ov": 0, "oa": 0}),
    );
    let mut t = 20_100;
    let mut redial = None;
    while t < 40_000 && redial.is_none() {
        t += 100;
        let cmds = tick(&mut e, t);
        if cmds.contains(&NetCmd::Close { conn: sig }) {
            redial = dial(&cmds, media, None).map(|c| (t, c));
        }
    }
    let (when, fresh) = redial.expect("the dead sig channel is replaced");
    assert!(
        (28_100..=30_200).contains(&when),
        "replaced at {when} ms, silent since 20 100"
    );
    assert_ne!(fresh, sig);
}

#[test]
fn bye_drops_the_peer_and_leaving_says_bye() {
    let (mut e, media, sig, _) = with_sig_open();
    data(&mut e, 300, sig, CAP());
    let cmds = data(&mut e, 400, sig, json!({"t": "bye"}));
    assert!(cmds.contains(&NetCmd::Close { conn: sig }), "{cmds:?}");
    assert!(e.mesh_links().is_empty(), "{:?}", e.mesh_links());
    // Bob is still in the roster for a moment; he is not re-dialled.
    for t in (500..5_000).step_by(100) {
        let cmds = tick(&mut e, t);
        assert_eq!(dial(&cmds, media, None), None, "at {t}: {cmds:?}");
    }

    // Leaving says bye on every open sig channel before the media peer goes.
    let (mut e, media, sig, _) = with_sig_open();
    e.leave(at(500));
    let (cmds, _) = drain(&mut e);
    let bye = cmds
        .iter()
        .position(
            |c| matches!(c, NetCmd::Send { conn, frame } if *conn == sig && wire(frame) == frame_bye()),
        )
        .expect("bye on sig");
    let gone = cmds
        .iter()
        .position(|c| *c == NetCmd::ClosePeer { key: media })
        .expect("the media peer closes");
    assert!(bye < gone);
}

fn frame_bye() -> Vec<u8> {
    frame(&[("t", s("bye"))])
}

#[test]
fn an_incoming_bulk_channel_is_the_content_channel() {
    let (mut e, media, sig, _) = with_sig_open();
    let bulk = ConnId::incoming(7);
    feed(
        &mut e,
        300,
        NetEvent::Incoming {
            peer: media,
            conn: bulk,
            remote: "vb".into(),
            fingerprint: None,
            label: Some("bulk".into()),
        },
    );
    e.chat(at(400), "hi", None).unwrap();
    let (cmds, _) = drain(&mut e);
    assert_eq!(kinds_on(&cmds, bulk), ["chat"]);
    assert!(kinds_on(&cmds, sig).is_empty());
    // A newer bulk channel from Bob replaces the old one.
    let newer = ConnId::incoming(8);
    let cmds = feed(
        &mut e,
        500,
        NetEvent::Incoming {
            peer: media,
            conn: newer,
            remote: "vb".into(),
            fingerprint: None,
            label: Some("bulk".into()),
        },
    );
    assert!(cmds.contains(&NetCmd::Close { conn: bulk }));
}

#[test]
fn a_member_missing_from_the_roster_keeps_its_links_for_a_grace() {
    let (mut e, _, sig, _) = with_sig_open();
    // Bob's presence connection drops: the roster loses him at once, the mesh not yet.
    let cmds = feed(
        &mut e,
        1_000,
        NetEvent::Closed {
            conn: ConnId::incoming(1),
        },
    );
    assert_eq!(e.roster().members.len(), 1);
    assert!(!cmds.contains(&NetCmd::Close { conn: sig }));
    let mut closed_at = None;
    for t in (1_100..=10_000).step_by(100) {
        if tick(&mut e, t).contains(&NetCmd::Close { conn: sig }) {
            closed_at = Some(t);
            break;
        }
    }
    assert_eq!(
        closed_at,
        Some(8_000),
        "closed 7 s after the roster lost him"
    );
    assert!(e.mesh_links().is_empty());
}
