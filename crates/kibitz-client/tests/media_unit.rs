//! The media plane of one engine, fed by hand: exact timings and frames.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use kibitz_client::{
    AuditKind, ConnId, Engine, Input, MediaMode, MediaSignal, NetCmd, NetEvent, PeerKey,
};
use kibitz_proto::binarypack::Value;
use kibitz_proto::mesh::MeshControl;
use serde_json::json;

const SIG: ConnId = ConnId(ConnId::INCOMING | 50);

/// An authority "va" whose roster lists `member`, with an open sig channel to it (dialled by
/// whichever is smaller). Returns the engine, its media peer and the sig connection.
fn room_with(member: &str, t: u64) -> (Engine, PeerKey, ConnId) {
    let mut e = Engine::new(cfg("r", "Alice"), at(0));
    e.start(at(0));
    let (cmds, _) = drain(&mut e);
    let keys: Vec<_> = cmds
        .iter()
        .filter_map(|c| match c {
            NetCmd::OpenPeer { key, .. } => Some(*key),
            _ => None,
        })
        .collect();
    let (media, presence) = (keys[0], keys[1]);
    for (key, id) in [(presence, "kbz-v1-r"), (media, "va")] {
        let id = id.into();
        e.handle_input(at(0), Input::Net(NetEvent::PeerOpen { key, id }));
    }
    e.join(at(0));
    let conn = ConnId::incoming(1);
    e.handle_input(
        at(0),
        Input::Net(NetEvent::Incoming {
            peer: presence,
            conn,
            remote: "x".into(),
            fingerprint: None,
            label: None,
        }),
    );
    let voice = app(
        json!({"t": "voice", "on": true, "cam": false, "name": "Bob", "voiceId": member, "token": "tb"}),
    );
    e.handle_input(at(0), Input::Net(NetEvent::Data { conn, frame: voice }));
    let (cmds, _) = drain(&mut e);
    let sig = if member < "va" {
        e.handle_input(
            at(t),
            Input::Net(NetEvent::Incoming {
                peer: media,
                conn: SIG,
                remote: member.into(),
                fingerprint: None,
                label: None,
            }),
        );
        SIG
    } else {
        let sig = cmds
            .iter()
            .find_map(|c| match c {
                NetCmd::Connect {
                    conn, label: None, ..
                } => Some(*conn),
                _ => None,
            })
            .unwrap();
        let ev = NetEvent::Open {
            conn: sig,
            fingerprint: None,
        };
        e.handle_input(at(t), Input::Net(ev));
        sig
    };
    (e, media, sig)
}

fn data(e: &mut Engine, t: u64, conn: ConnId, v: serde_json::Value) -> Vec<NetCmd> {
    e.handle_input(
        at(t),
        Input::Net(NetEvent::Data {
            conn,
            frame: app(v),
        }),
    );
    drain(e).0
}

fn net(e: &mut Engine, t: u64, ev: NetEvent) -> Vec<NetCmd> {
    e.handle_input(at(t), Input::Net(ev));
    drain(e).0
}

/// Runs the engine's timers up to `until`, returning (time, command).
fn run(e: &mut Engine, from: u64, until: u64) -> Vec<(u64, NetCmd)> {
    let mut out = Vec::new();
    let (_, mut next) = drain(e);
    let mut now = from;
    while next <= until {
        now = next.max(now);
        e.handle_input(at(now), Input::Timeout);
        let (cmds, n) = drain(e);
        out.extend(cmds.into_iter().map(|c| (now, c)));
        next = n;
    }
    out
}

fn sent_t<'a>(cmds: impl IntoIterator<Item = &'a NetCmd>, conn: ConnId, t: &str) -> Vec<Value> {
    cmds.into_iter()
        .filter_map(|c| match c {
            NetCmd::Send { conn: c, frame }
                if *c == conn && frame.get("t").and_then(Value::as_str) == Some(t) =>
            {
                Some(frame.clone())
            }
            _ => None,
        })
        .collect()
}

fn offer(sdp: &str) -> serde_json::Value {
    json!({"t": "m-sdp", "d": {"type": "offer", "sdp": sdp}, "relay": false})
}

fn answer(sdp: &str) -> serde_json::Value {
    json!({"t": "m-sdp", "d": {"type": "answer", "sdp": sdp}, "relay": false})
}

#[test]
fn the_answerer_sends_m_dial_every_2_s_until_the_offer() {
    let (mut e, _, sig) = room_with("a0", 100);
    let cmds = data(&mut e, 110, sig, json!({"t": "cap", "bulk": 1}));
    assert_eq!(sent_t(&cmds, sig, "m-dial").len(), 1, "at once");
    let timed = run(&mut e, 110, 5_000);
    let dials: Vec<u64> = timed
        .iter()
        .filter(|(_, c)| !sent_t([c], sig, "m-dial").is_empty())
        .map(|(t, _)| *t)
        .collect();
    assert_eq!(dials, [2_110, 4_110]);
    assert!(
        !timed
            .iter()
            .any(|(_, c)| matches!(c, NetCmd::MediaCall { .. })),
        "never dials"
    );
    let cmds = data(&mut e, 5_000, sig, offer("o1"));
    // (The gates for "a0" went out with the roster already: see tests/media.rs.)
    let sig_pos = cmds.iter().position(|c| {
        matches!(c, NetCmd::MediaSignal { conn: Some(_), remote, signal: MediaSignal::Sdp { offer: true, .. }, .. } if remote == "a0")
    });
    assert!(sig_pos.is_some(), "an answering pc: {cmds:?}");
    let timed = run(&mut e, 5_000, 9_000);
    assert!(
        timed
            .iter()
            .all(|(_, c)| sent_t([c], sig, "m-dial").is_empty())
    );
}

fn answering_conn(cmds: &[NetCmd]) -> ConnId {
    cmds.iter()
        .find_map(|c| match c {
            NetCmd::MediaSignal {
                conn: Some(c),
                signal: MediaSignal::Sdp { offer: true, .. },
                ..
            } => Some(*c),
            _ => None,
        })
        .expect("an answering pc")
}

#[test]
fn glare_the_answerer_is_polite() {
    let (mut e, _, sig) = room_with("a0", 100);
    data(&mut e, 110, sig, json!({"t": "cap", "bulk": 1}));
    let pc = answering_conn(&data(&mut e, 200, sig, offer("o1")));
    // Our pc wants to renegotiate: it offers.
    let ours = MediaSignal::Sdp {
        offer: true,
        sdp: "mine".into(),
    };
    let cmds = net(
        &mut e,
        300,
        NetEvent::MediaLocalSignal {
            conn: pc,
            signal: ours,
        },
    );
    assert_eq!(sent_t(&cmds, sig, "m-sdp").len(), 1);
    // Theirs collides: we roll back (close ours) and answer theirs on a fresh pc.
    let cmds = data(&mut e, 310, sig, offer("o2"));
    assert!(cmds.contains(&NetCmd::MediaClose { conn: pc }));
    assert_ne!(answering_conn(&cmds), pc);
}

#[test]
fn glare_the_initiator_ignores_colliding_offers() {
    let (mut e, _, sig) = room_with("vz", 100);
    let cmds = data(&mut e, 110, sig, json!({"t": "cap", "bulk": 1}));
    let pc = cmds
        .iter()
        .find_map(|c| match c {
            NetCmd::MediaCall {
                conn,
                mode: MediaMode::Owned,
                remote,
                relay: false,
            } if remote == "vz" => Some(*conn),
            _ => None,
        })
        .expect("the initiator offers at once on cap");
    let ours = MediaSignal::Sdp {
        offer: true,
        sdp: "mine".into(),
    };
    net(
        &mut e,
        120,
        NetEvent::MediaLocalSignal {
            conn: pc,
            signal: ours,
        },
    );
    let cmds = data(&mut e, 130, sig, offer("theirs"));
    assert!(
        !cmds
            .iter()
            .any(|c| matches!(c, NetCmd::MediaSignal { .. } | NetCmd::MediaClose { .. }))
    );
    let cmds = data(&mut e, 140, sig, answer("a"));
    assert!(cmds.iter().any(|c| matches!(c, NetCmd::MediaSignal { conn: Some(c), signal: MediaSignal::Sdp { offer: false, .. }, .. } if *c == pc)));
    // Not colliding any more: a re-offer from the answerer is taken on the same pc.
    let cmds = data(&mut e, 150, sig, offer("again"));
    assert!(cmds.iter().any(|c| matches!(c, NetCmd::MediaSignal { conn: Some(c), signal: MediaSignal::Sdp { offer: true, .. }, .. } if *c == pc)));
    // Candidates go to the pc (the transport queues them if need be).
    let cmds = data(
        &mut e,
        160,
        sig,
        json!({"t": "m-ice", "c": {"candidate": "c", "sdpMid": "0"}}),
    );
    assert!(cmds.iter().any(|c| matches!(
        c,
        NetCmd::MediaSignal {
            signal: MediaSignal::Candidate(_),
            ..
        }
    )));
}

#[test]
fn mh_carries_the_measured_kbps() {
    let (mut e, _, sig) = room_with("vz", 100);
    let cmds = data(&mut e, 110, sig, json!({"t": "cap", "bulk": 1}));
    let pc = cmds
        .iter()
        .find_map(|c| match c {
            NetCmd::MediaCall { conn, .. } => Some(*conn),
            _ => None,
        })
        .unwrap();
    net(&mut e, 500, NetEvent::MediaOpen { conn: pc });
    let stats = |a: u64, v: u64, ao: u64, vo: u64| NetEvent::MediaStats {
        conn: pc,
        audio_in_bytes: a,
        video_in_bytes: v,
        audio_out_bytes: ao,
        video_out_bytes: vo,
    };
    net(&mut e, 1_000, stats(0, 0, 0, 0));
    net(&mut e, 2_000, stats(4_000, 50_000, 2_000, 25_000));
    let timed = run(&mut e, 2_000, 4_200);
    let mh = timed
        .iter()
        .flat_map(|(_, c)| sent_t([c], sig, "mh"))
        .last()
        .expect("an mh");
    let mh: MeshControl = kibitz_proto::binarypack::from_value(mh).unwrap();
    assert_eq!(
        mh,
        MeshControl::Mh {
            v: 400.0,
            a: 32.0,
            ov: 200.0,
            oa: 16.0
        }
    );
    assert_eq!(e.media_links()[0].kbps, [400, 32, 200, 16]);
}

#[test]
fn media_frames_from_non_members_or_off_sig_are_not_acted_on() {
    let (mut e, media, _) = room_with("vz", 100);
    let stranger = ConnId::incoming(60);
    net(
        &mut e,
        200,
        NetEvent::Incoming {
            peer: media,
            conn: stranger,
            remote: "a9".into(),
            fingerprint: None,
            label: None,
        },
    );
    let cmds = data(&mut e, 210, stranger, offer("x"));
    assert!(!cmds.iter().any(|c| matches!(c, NetCmd::MediaSignal { .. })));
    let bulk = ConnId::incoming(61);
    net(
        &mut e,
        220,
        NetEvent::Incoming {
            peer: media,
            conn: bulk,
            remote: "vz".into(),
            fingerprint: None,
            label: Some("bulk".into()),
        },
    );
    let cmds = data(&mut e, 230, bulk, json!({"t": "m-recreate", "relay": true}));
    assert!(
        !cmds
            .iter()
            .any(|c| matches!(c, NetCmd::MediaClose { .. } | NetCmd::MediaCall { .. }))
    );
    let refused: Vec<_> = e
        .agent_audit()
        .iter()
        .filter_map(|a| match &a.kind {
            AuditKind::MediaRefused { from, what } => Some((from.as_str(), what.as_str())),
            _ => None,
        })
        .collect();
    assert_eq!(refused, [("a9", "m-sdp"), ("vz", "m-recreate")]);
}

#[test]
fn legacy_initiator_calls_2_s_after_sig_opens_without_cap() {
    let (mut e, _, _) = room_with("vz", 100);
    let timed = run(&mut e, 100, 6_000);
    let calls: Vec<_> = timed
        .iter()
        .filter(|(_, c)| {
            matches!(
                c,
                NetCmd::MediaCall {
                    mode: MediaMode::Legacy,
                    ..
                }
            )
        })
        .collect();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].0, 2_100);
    let NetCmd::MediaCall { conn, .. } = calls[0].1 else {
        unreachable!()
    };
    // It fails: no re-dial while the peer stays in the roster.
    net(&mut e, 7_000, NetEvent::MediaClosed { conn, failed: true });
    let timed = run(&mut e, 7_000, 30_000);
    assert!(
        !timed
            .iter()
            .any(|(_, c)| matches!(c, NetCmd::MediaCall { .. }))
    );
}

#[test]
fn legacy_callee_answers_every_call_and_the_newest_wins() {
    let (mut e, _, _) = room_with("a0", 100);
    let (c1, c2) = (ConnId::incoming(70), ConnId::incoming(71));
    let call = |conn| NetEvent::MediaIncomingCall {
        conn,
        remote: "a0".into(),
    };
    let cmds = net(&mut e, 200, call(c1));
    assert!(matches!(cmds.last(), Some(NetCmd::MediaAnswerCall { conn }) if *conn == c1));
    let cmds = net(&mut e, 300, call(c2));
    assert!(cmds.contains(&NetCmd::MediaClose { conn: c1 }));
    assert!(cmds.contains(&NetCmd::MediaAnswerCall { conn: c2 }));
    let stranger = NetEvent::MediaIncomingCall {
        conn: ConnId::incoming(72),
        remote: "nobody".into(),
    };
    let cmds = net(&mut e, 400, stranger);
    assert_eq!(
        cmds,
        [NetCmd::MediaClose {
            conn: ConnId::incoming(72)
        }]
    );
    assert_eq!(e.media_links()[0].mode, Some(MediaMode::Legacy));
}

#[test]
fn media_off_emits_no_media_commands() {
    let mut c = cfg("r", "Alice");
    c.media = false;
    let mut e = Engine::new(c, at(0));
    e.start(at(0));
    let (cmds, _) = drain(&mut e);
    assert!(!cmds.iter().any(|c| matches!(c, NetCmd::MediaGates { .. })));
}

#[test]
fn a_member_leaving_the_roster_ends_owned_media_after_the_grace_legacy_at_once() {
    for legacy in [false, true] {
        let (mut e, _, sig) = room_with("vz", 100);
        let pc = if legacy {
            run(&mut e, 100, 2_100)
                .into_iter()
                .find_map(|(_, c)| match c {
                    NetCmd::MediaCall { conn, .. } => Some(conn),
                    _ => None,
                })
                .unwrap()
        } else {
            data(&mut e, 110, sig, json!({"t": "cap", "bulk": 1}))
                .into_iter()
                .find_map(|c| match c {
                    NetCmd::MediaCall { conn, .. } => Some(conn),
                    _ => None,
                })
                .unwrap()
        };
        // Bob's presence link closes: the authority drops him from the roster.
        let cmds = net(
            &mut e,
            3_000,
            NetEvent::Closed {
                conn: ConnId::incoming(1),
            },
        );
        let closed_now = cmds.contains(&NetCmd::MediaClose { conn: pc });
        assert_eq!(closed_now, legacy);
        if !legacy {
            let timed = run(&mut e, 3_000, 10_000);
            let at = timed
                .iter()
                .find(|(_, c)| *c == NetCmd::MediaClose { conn: pc })
                .map(|(t, _)| *t);
            assert_eq!(at, Some(10_000), "after the 7 s roster-drop grace");
        }
    }
}

#[test]
fn a_late_cap_turns_an_unanswered_legacy_call_into_owned_media() {
    let (mut e, _, sig) = room_with("vz", 100);
    let legacy = run(&mut e, 100, 2_100)
        .into_iter()
        .find_map(|(_, c)| match c {
            NetCmd::MediaCall {
                conn,
                mode: MediaMode::Legacy,
                ..
            } => Some(conn),
            _ => None,
        })
        .unwrap();
    let cmds = data(&mut e, 2_500, sig, json!({"t": "cap", "bulk": 1}));
    assert!(cmds.contains(&NetCmd::MediaClose { conn: legacy }));
    assert!(cmds.iter().any(|c| matches!(
        c,
        NetCmd::MediaCall {
            mode: MediaMode::Owned,
            ..
        }
    )));
}
