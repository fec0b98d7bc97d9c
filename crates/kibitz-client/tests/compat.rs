//! The engine's presence frames for a join, byte for byte against the frames captured from
//! the real Kibitz client (`tests/binarypack/kibitz-presence-frames.json`, a copy of
//! `shared/fixtures/`). The capture came from the 0.1.0 build, whose roster names the
//! authority as `host`; the current protocol names the verified host, so the room here
//! commits the soft host name `alice` and Alice (the authority) is that host.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use base64::Engine as _;
use kibitz_client::{
    ConnId, Engine, HostCommit, Input, NetCmd, NetEvent, Now, Output, PeerFailure, PeerKey,
    RoomConfig,
};
use kibitz_proto::binarypack::{self, Value};
use kibitz_proto::presence::{KbzMeta, Meta};

const ALICE: &str = "dfd010c3-34d0-4482-a142-f23367b3cce6";
const BOB: &str = "17fa087d-2576-4012-9d7e-c0ba6f47844f";

fn fixture() -> Vec<(String, String, Vec<u8>)> {
    let text = include_str!("../../../tests/binarypack/kibitz-presence-frames.json");
    let v: serde_json::Value = serde_json::from_str(text).unwrap();
    v["frames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(f["bytes_b64"].as_str().unwrap())
                .unwrap();
            let t = f["decoded"]["t"].as_str().unwrap_or("").to_owned();
            (f["from"].as_str().unwrap().to_owned(), t, bytes)
        })
        .collect()
}

fn frame(from: &str, t: &str, nth: usize) -> Vec<u8> {
    fixture()
        .into_iter()
        .filter(|(f, tt, _)| f == from && tt == t)
        .nth(nth)
        .unwrap()
        .2
}

fn meta() -> Meta {
    Meta {
        kbz: Some(KbzMeta {
            v: Some("0.1.0".into()),
            f: Some(
                [
                    "chat.v1",
                    "app.v1",
                    "ink.v1",
                    "pay.v1",
                    "caps.v1",
                    "identity.v1",
                    "schema.v1",
                ]
                .map(String::from)
                .to_vec(),
            ),
            ..KbzMeta::default()
        }),
        ..Meta::default()
    }
}

fn config(name: &str, token: &str) -> RoomConfig {
    let mut c = RoomConfig::new("compat", name, token);
    c.meta = meta();
    c.host = HostCommit::Name("alice".into());
    c
}

/// Drains the engine, returning what it asked the network to do.
fn drain(e: &mut Engine) -> Vec<NetCmd> {
    let mut out = Vec::new();
    loop {
        match e.poll_output() {
            Output::Net(c) => out.push(c),
            Output::Event(_) => {}
            Output::Timeout(_) => return out,
        }
    }
}

fn sent(cmds: &[NetCmd]) -> Vec<Vec<u8>> {
    cmds.iter()
        .filter_map(|c| match c {
            NetCmd::Send { frame, .. } => Some(binarypack::encode(frame).unwrap()),
            _ => None,
        })
        .collect()
}

fn open_keys(cmds: &[NetCmd]) -> Vec<(PeerKey, Option<String>)> {
    cmds.iter()
        .filter_map(|c| match c {
            NetCmd::OpenPeer { key, id, .. } => Some((*key, id.clone())),
            _ => None,
        })
        .collect()
}

const T: Now = Now {
    ms: 1_000,
    unix_ms: 1_800_000_000_000,
};

#[test]
fn participant_knock_and_voice_match_the_real_client() {
    let mut e = Engine::new(config("Bob", "zmh44bqstzw3zbemnyjnp"), T);
    e.start(T);
    let opens = open_keys(&drain(&mut e));
    let (media, claim) = (opens[0].0, opens[1].0);
    assert_eq!(
        opens[0].1, None,
        "the media peer takes an id from the broker"
    );
    assert_eq!(opens[1].1.as_deref(), Some("kbz-v1-compat"));
    e.handle_input(
        T,
        Input::Net(NetEvent::PeerFailed {
            key: claim,
            failure: PeerFailure::IdTaken,
        }),
    );
    let anon = open_keys(&drain(&mut e))[0].0;
    e.handle_input(
        T,
        Input::Net(NetEvent::PeerOpen {
            key: anon,
            id: "anon-1".into(),
        }),
    );
    let cmds = drain(&mut e);
    let NetCmd::Connect { conn, remote, .. } = &cmds[0] else {
        panic!("{cmds:?}")
    };
    assert_eq!(remote, "kbz-v1-compat");
    let conn = *conn;
    e.handle_input(
        T,
        Input::Net(NetEvent::Open {
            conn,
            fingerprint: None,
        }),
    );
    // Channel open: the knock, before the media peer has an id.
    assert_eq!(sent(&drain(&mut e)), [frame("participant", "knock", 0)]);
    e.handle_input(
        T,
        Input::Net(NetEvent::PeerOpen {
            key: media,
            id: BOB.into(),
        }),
    );
    drain(&mut e);
    e.join(T);
    assert_eq!(sent(&drain(&mut e)), [frame("participant", "voice", 0)]);
}

#[test]
fn authority_roster_and_ping_match_the_real_client() {
    let mut e = Engine::new(config("Alice", "alice-token"), T);
    e.start(T);
    let opens = open_keys(&drain(&mut e));
    let (media, claim) = (opens[0].0, opens[1].0);
    e.handle_input(
        T,
        Input::Net(NetEvent::PeerOpen {
            key: claim,
            id: "kbz-v1-compat".into(),
        }),
    );
    e.handle_input(
        T,
        Input::Net(NetEvent::PeerOpen {
            key: media,
            id: ALICE.into(),
        }),
    );
    e.join(T);
    drain(&mut e);
    assert!(e.is_authority());
    let conn = ConnId::incoming(1);
    e.handle_input(
        T,
        Input::Net(NetEvent::Incoming {
            peer: claim,
            conn,
            remote: "anon-1".into(),
            fingerprint: None,
            label: None,
        }),
    );
    // On open (lobby off) the authority sends the roster at once.
    assert_eq!(sent(&drain(&mut e)), [frame("authority", "roster", 0)]);
    let voice: Value =
        binarypack::decode(&frame("participant", "voice", 0), Default::default()).unwrap();
    e.handle_input(T, Input::Net(NetEvent::Data { conn, frame: voice }));
    // Every voice is answered by the full roster.
    assert_eq!(sent(&drain(&mut e)), [frame("authority", "roster", 1)]);
    // The tick: ping, then the roster again.
    let later = T.plus(2_500);
    e.handle_input(later, Input::Timeout);
    assert_eq!(
        sent(&drain(&mut e)),
        [
            frame("authority", "ping", 0),
            frame("authority", "roster", 1)
        ]
    );
}
