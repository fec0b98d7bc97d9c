//! Shared helpers for the engine scenario and simulation tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use kibitz_client::sim::{NetConfig, NodeId, Sim};
use kibitz_client::{
    ConnId, Engine, Event, Input, NetCmd, NetEvent, Now, Output, PeerKey, RoomConfig, Status,
};
use serde_json::json;

pub const T0_UNIX_MS: u64 = 1_800_000_000_000;

pub fn sim(seed: u64) -> Sim {
    Sim::new(seed, NetConfig::default(), T0_UNIX_MS)
}

pub fn cfg(room: &str, name: &str) -> RoomConfig {
    RoomConfig::new(room, name, &format!("tok-{}", name.to_lowercase()))
}

/// Adds, starts and joins a participant.
pub fn join(sim: &mut Sim, cfg: RoomConfig) -> NodeId {
    let n = sim.add(cfg);
    sim.start(n);
    sim.with(n, |e, now| e.join(now));
    n
}

pub fn names(sim: &Sim, n: NodeId) -> Vec<String> {
    let mut v: Vec<String> = sim
        .engine(n)
        .participants()
        .into_iter()
        .map(|p| p.name)
        .collect();
    v.sort();
    v
}

pub fn authorities(sim: &Sim, nodes: &[NodeId]) -> Vec<NodeId> {
    nodes
        .iter()
        .copied()
        .filter(|n| sim.alive(*n) && sim.engine(*n).is_authority())
        .collect()
}

pub fn statuses(sim: &Sim, n: NodeId) -> Vec<Status> {
    sim.events(n)
        .iter()
        .filter_map(|(_, e)| match e {
            Event::Status(s) => Some(s.clone()),
            _ => None,
        })
        .collect()
}

/// App payloads received, as (from voiceId, value).
pub fn received(sim: &Sim, n: NodeId) -> Vec<(String, kibitz_proto::content::Content)> {
    sim.events(n)
        .iter()
        .filter_map(|(_, e)| match e {
            Event::Message(m) => Some((m.from.clone(), m.content.clone())),
            _ => None,
        })
        .collect()
}

use kibitz_client::HostCommit;
use p256::ecdsa::SigningKey;

pub fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32].into()).unwrap()
}

/// A config for a room whose host commits the key `key(7)`; with `holds` the participant
/// has unsealed it (it is the host).
pub fn keyed(room: &str, name: &str, holds: bool) -> RoomConfig {
    let mut c = cfg(room, name);
    c.host = HostCommit::Key(*key(7).verifying_key());
    if holds {
        c.host_key = Some(key(7));
    }
    c
}

pub fn id_of(sim: &Sim, n: NodeId) -> String {
    sim.engine(n).voice_id().unwrap().to_owned()
}

pub fn lobby_events(sim: &Sim, n: NodeId) -> Vec<kibitz_proto::presence::LobbyStatus> {
    sim.events(n)
        .iter()
        .filter_map(|(_, e)| match e {
            Event::Lobby(s) => Some(*s),
            _ => None,
        })
        .collect()
}

pub fn app(v: serde_json::Value) -> kibitz_proto::binarypack::Value {
    serde_json::from_value(v).unwrap()
}

/// Every network command the engine has queued, and its next timeout.
pub fn drain(e: &mut Engine) -> (Vec<NetCmd>, u64) {
    let mut out = Vec::new();
    loop {
        match e.poll_output() {
            Output::Net(c) => out.push(c),
            Output::Event(_) => {}
            Output::Timeout(t) => return (out, t),
        }
    }
}

pub fn at(ms: u64) -> Now {
    Now {
        ms,
        unix_ms: T0_UNIX_MS + ms,
    }
}

/// An engine that holds the room, with one member connected on `ConnId::incoming(1)`.
pub fn authority_with_member() -> Engine {
    authority_with_member_on().0
}

/// [`authority_with_member`], also returning the media peer's key and what the engine did
/// once the member joined (it dials the member's mesh channel: `va` < `vb`).
pub fn authority_with_member_on() -> (Engine, PeerKey, Vec<NetCmd>) {
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
    e.handle_input(
        at(0),
        Input::Net(NetEvent::PeerOpen {
            key: keys[1],
            id: "kbz-v1-r".into(),
        }),
    );
    e.handle_input(
        at(0),
        Input::Net(NetEvent::PeerOpen {
            key: keys[0],
            id: "va".into(),
        }),
    );
    e.join(at(0));
    let conn = ConnId::incoming(1);
    e.handle_input(
        at(0),
        Input::Net(NetEvent::Incoming {
            peer: keys[1],
            conn,
            remote: "x".into(),
            fingerprint: None,
            label: None,
        }),
    );
    let voice = app(
        json!({"t": "voice", "on": true, "cam": false, "name": "Bob", "voiceId": "vb", "token": "tb"}),
    );
    e.handle_input(at(0), Input::Net(NetEvent::Data { conn, frame: voice }));
    let (cmds, _) = drain(&mut e);
    (e, keys[0], cmds)
}
