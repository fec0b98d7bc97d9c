//! The identity gate, agents and their credits, and the engine's timers, driven by hand.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;

use kibitz_client::verify::{Credentials, GateVerifier, Verdict, Verified, Verifier};
use kibitz_client::{
    AgentIdentity, ConnId, Engine, Event, Input, NetCmd, NetEvent, PeerFailure, RoomConfig, Status,
};
use kibitz_proto::agent::AgentKeyEntry;
use kibitz_proto::binarypack::Value;
use kibitz_proto::grants::Act;
use kibitz_proto::presence::LobbyStatus;
use kibitz_proto::token::EcJwk;
use serde_json::json;

fn names_gate(room: &str, name: &str) -> RoomConfig {
    let mut c = cfg(room, name);
    c.credential = Some(name.to_owned());
    c.verifier = Some(Box::new(GateVerifier {
        names: Some(vec!["Alice".into(), "bob".into()]),
        ..GateVerifier::default()
    }));
    c
}

#[test]
fn names_gate_lets_listed_names_in_and_answers_unverified_to_others() {
    let mut sim = sim(20);
    let a = join(&mut sim, names_gate("r", "Alice"));
    sim.run_for(500);
    let b = join(&mut sim, names_gate("r", "Bob"));
    let c = join(&mut sim, names_gate("r", "Carol"));
    sim.run_for(3_000);
    assert_eq!(names(&sim, a), ["Alice", "Bob"]);
    assert_eq!(lobby_events(&sim, c)[0], LobbyStatus::Unverified);
    assert!(lobby_events(&sim, b).is_empty());
    // Oversized credentials are refused without asking the verifier.
    let mut big = names_gate("r", "Bob");
    big.token = "tok-big".into();
    big.credential = Some("b".repeat(9_000));
    let d = join(&mut sim, big);
    sim.run_for(3_000);
    assert_eq!(lobby_events(&sim, d)[0], LobbyStatus::Unverified);
    assert_eq!(names(&sim, a), ["Alice", "Bob"]);
}

fn agent_gate(room: &str, name: &str, agent_key: Option<u8>) -> RoomConfig {
    let mut c = cfg(room, name);
    c.verifier = Some(Box::new(GateVerifier {
        agent_keys: vec![AgentKeyEntry {
            key: EcJwk::from_verifying_key(key(3).verifying_key()),
            caps: Some(
                serde_json::from_value(json!({"perceive": ["read-chat"], "act": ["send-chat"]}))
                    .unwrap(),
            ),
            label: None,
        }],
        ..GateVerifier::default()
    }));
    if let Some(k) = agent_key {
        c.agent = Some(AgentIdentity {
            key: Some(key(k)),
            backend: None,
            egress: true,
        });
    }
    c
}

#[test]
fn agent_assertions_verify_against_the_manifest_keys() {
    let mut sim = sim(21);
    let a = join(&mut sim, agent_gate("r", "Alice", None));
    sim.run_for(500);
    let good = join(&mut sim, agent_gate("r", "Bot", Some(3)));
    let bad = join(&mut sim, agent_gate("r", "Rogue", Some(4)));
    sim.run_for(3_000);
    assert_eq!(names(&sim, a), ["Alice", "Bot"]);
    assert_eq!(lobby_events(&sim, bad)[0], LobbyStatus::Unverified);
    assert!(lobby_events(&sim, good).is_empty());
    let verified: Vec<_> = sim
        .events(a)
        .iter()
        .filter_map(|(_, e)| match e {
            Event::AgentVerified { grant, .. } => Some(grant.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(verified[0].act, [Act::SendChat]);
    // The agent discloses itself in its meta.
    let bot = sim
        .engine(a)
        .participants()
        .into_iter()
        .find(|p| p.name == "Bot")
        .unwrap();
    let meta = bot.meta.unwrap();
    assert!(meta.is_agent() && meta.discloses_egress());
    // Assertions are re-signed as they age: the agent is still in after ten minutes.
    sim.run_for(600_000);
    assert_eq!(names(&sim, a), ["Alice", "Bot"]);
}

/// Accepts credits of the form `exp:<unix>` (the JWT check itself is kibitz-proto's).
#[derive(Debug)]
struct CreditByExp;

impl Verifier for CreditByExp {
    fn requires_verification(&self) -> bool {
        false
    }
    fn credit_gated(&self) -> bool {
        true
    }
    fn verify(&mut self, c: &Credentials<'_>) -> Verdict {
        match c
            .agent_credit
            .and_then(|s| s.strip_prefix("exp:"))
            .and_then(|s| s.parse().ok())
        {
            Some(exp) if c.now_unix < exp + 60 => Verdict::Ok(Verified {
                credit_exp: Some(exp),
                ..Verified::default()
            }),
            _ => Verdict::Reject("bad credit".into()),
        }
    }
}

#[test]
fn agents_whose_credit_lapses_are_reaped_and_renewing_ones_stay() {
    let mut sim = sim(22);
    let mut ac = cfg("r", "Alice");
    ac.verifier = Some(Box::new(CreditByExp));
    let a = join(&mut sim, ac);
    sim.run_for(500);
    let agent = |name: &str| {
        let mut c = cfg("r", name);
        c.agent = Some(AgentIdentity {
            key: None,
            backend: None,
            egress: false,
        });
        c
    };
    let lapsing = sim.add(agent("Lapse"));
    let renewing = sim.add(agent("Renew"));
    for n in [lapsing, renewing] {
        sim.start(n);
        let exp = sim.now().unix() + 60;
        sim.with(n, |e, now| {
            e.set_agent_credit(now, Some(format!("exp:{exp}")))
        });
        sim.with(n, |e, now| e.join(now));
    }
    sim.run_for(3_000);
    assert_eq!(names(&sim, a), ["Alice", "Lapse", "Renew"]);
    // Renew every 50 s; the other never does. Reaped at exp + 90 s.
    for _ in 0..5 {
        sim.run_for(50_000);
        let exp = sim.now().unix() + 60;
        sim.with(renewing, |e, now| {
            e.set_agent_credit(now, Some(format!("exp:{exp}")))
        });
    }
    assert_eq!(names(&sim, a), ["Alice", "Renew"]);
    assert_eq!(
        sim.engine(lapsing).status(),
        &Status::Left {
            reason: "kicked".into()
        }
    );
}

// ---- the engine by hand ---------------------------------------------------------------

/// The id was taken: feeds `ID-TAKEN` for `claim` at `ms` and returns the anonymous
/// presence peer the engine opens instead.
fn taken(e: &mut Engine, ms: u64, claim: kibitz_client::PeerKey) -> kibitz_client::PeerKey {
    e.handle_input(
        at(ms),
        Input::Net(NetEvent::PeerFailed {
            key: claim,
            failure: PeerFailure::IdTaken,
        }),
    );
    let (cmds, _) = drain(e);
    cmds.iter()
        .find_map(|c| match c {
            NetCmd::OpenPeer { key, id: None, .. } => Some(*key),
            _ => None,
        })
        .unwrap()
}

fn member_names(e: &Engine) -> Vec<String> {
    e.roster().members.iter().map(|m| m.name.clone()).collect()
}

#[test]
fn a_frozen_authority_refreshes_liveness_instead_of_reaping() {
    let mut e = authority_with_member();
    assert_eq!(member_names(&e), ["Alice", "Bob"]);
    // Frozen for 20 s: the first tick after it must not reap.
    e.handle_input(at(20_000), Input::Timeout);
    drain(&mut e);
    assert_eq!(member_names(&e), ["Alice", "Bob"]);
    // Then real silence: reaped once 12 s pass without a frame.
    let mut t = 20_000;
    while t < 30_000 {
        t += 2_500;
        e.handle_input(at(t), Input::Timeout);
        drain(&mut e);
        assert_eq!(member_names(&e), ["Alice", "Bob"], "at {t}");
    }
    t += 2_500;
    e.handle_input(at(t), Input::Timeout);
    let (cmds, _) = drain(&mut e);
    assert!(cmds.contains(&NetCmd::Close {
        conn: ConnId::incoming(1)
    }));
    assert_eq!(member_names(&e), ["Alice"]);
}

#[test]
fn malformed_and_spoofed_frames_change_nothing() {
    let mut e = authority_with_member();
    let conn = ConnId::incoming(1);
    let junk = [
        Value::Nil,
        Value::Bin(vec![0xc1; 64]),
        Value::Array(vec![Value::Str("voice".into())]),
        app(json!({"t": "voice", "on": "yes", "voiceId": 7})),
        app(json!({"t": "knock", "name": ["x"]})),
        app(json!({"t": "mod", "token": "a.b.c"})),
        app(json!({"t": "mod", "token": "x".repeat(10_000)})),
        app(json!({"t": "roster", "members": [{"id": "evil"}]})),
        app(json!({"t": "kick"})),
        app(json!({"t": "unknown-kind", "x": 1})),
        Value::Str("s".repeat(100_000)),
    ];
    for f in junk {
        e.handle_input(at(10), Input::Net(NetEvent::Data { conn, frame: f }));
        drain(&mut e);
    }
    // Events for handles the engine never issued are ignored.
    e.handle_input(
        at(10),
        Input::Net(NetEvent::Data {
            conn: ConnId(999),
            frame: Value::Nil,
        }),
    );
    e.handle_input(at(10), Input::Net(NetEvent::Closed { conn: ConnId(998) }));
    e.handle_input(
        at(10),
        Input::Net(NetEvent::PeerFailed {
            key: kibitz_client::PeerKey(77),
            failure: PeerFailure::Lost,
        }),
    );
    drain(&mut e);
    assert!(e.is_authority());
    assert_eq!(member_names(&e), ["Alice", "Bob"]);
    assert_eq!(e.roster().locked, Some(false));
}

#[test]
fn claims_and_dials_retry_on_the_protocol_timings() {
    let mut e = Engine::new(cfg("r", "Bob"), at(0));
    e.start(at(0));
    let (_, t) = drain(&mut e);
    assert_eq!(t, 8_000, "claim timeout");
    e.handle_input(at(8_000), Input::Timeout);
    let (cmds, t) = drain(&mut e);
    assert!(matches!(cmds[0], NetCmd::ClosePeer { .. }));
    assert_eq!(t, 11_000, "retry after 3 s");
    e.handle_input(at(11_000), Input::Timeout);
    let (cmds, _) = drain(&mut e);
    let NetCmd::OpenPeer {
        key, id: Some(id), ..
    } = &cmds[0]
    else {
        panic!("{cmds:?}")
    };
    assert_eq!(id, "kbz-v1-r");
    // Taken: dial the holder, four attempts of 15 s, 3 s apart, then migrate.
    let anon = taken(&mut e, 11_100, *key);
    e.handle_input(
        at(11_200),
        Input::Net(NetEvent::PeerOpen {
            key: anon,
            id: "p".into(),
        }),
    );
    let mut now = 11_200;
    let mut dials = 0;
    loop {
        let (cmds, t) = drain(&mut e);
        dials += cmds
            .iter()
            .filter(|c| matches!(c, NetCmd::Connect { .. }))
            .count();
        if matches!(e.status(), Status::Reconnecting { .. }) {
            break;
        }
        assert!(t > now && t - now <= 15_000, "next step {t} after {now}");
        now = t;
        e.handle_input(at(now), Input::Timeout);
    }
    assert_eq!(dials, 4);
    assert_eq!(now, 11_200 + 4 * 15_000 + 3 * 3_000);
    assert_eq!(
        e.status(),
        &Status::Reconnecting {
            reason: "could not connect".into()
        }
    );
    let (_, t) = drain(&mut e);
    assert_eq!(t, now + 1_500, "reclaim after 1.5 s");
}

#[test]
fn a_leave_notice_for_the_room_id_reclaims_at_once() {
    let mut e = Engine::new(cfg("r", "Bob"), at(0));
    e.start(at(0));
    let (cmds, _) = drain(&mut e);
    let claim = cmds
        .iter()
        .find_map(|c| match c {
            NetCmd::OpenPeer {
                key, id: Some(_), ..
            } => Some(*key),
            _ => None,
        })
        .unwrap();
    let anon = taken(&mut e, 10, claim);
    e.handle_input(
        at(20),
        Input::Net(NetEvent::PeerOpen {
            key: anon,
            id: "p".into(),
        }),
    );
    let (cmds, _) = drain(&mut e);
    let Some(NetCmd::Connect { conn, .. }) = cmds.first().cloned() else {
        panic!("{cmds:?}")
    };
    e.handle_input(
        at(30),
        Input::Net(NetEvent::Open {
            conn,
            fingerprint: None,
        }),
    );
    drain(&mut e);
    // Someone else leaving is nothing to us.
    e.handle_input(
        at(40),
        Input::Net(NetEvent::Left {
            peer: anon,
            remote: "other".into(),
        }),
    );
    drain(&mut e);
    assert_eq!(e.status(), &Status::Connected);
    e.handle_input(
        at(50),
        Input::Net(NetEvent::Left {
            peer: anon,
            remote: "kbz-v1-r".into(),
        }),
    );
    let (cmds, t) = drain(&mut e);
    assert!(cmds.contains(&NetCmd::Close { conn }));
    assert_eq!(
        e.status(),
        &Status::Reconnecting {
            reason: "authority left".into()
        }
    );
    assert_eq!(t, 50, "claims again at once");
    e.handle_input(at(50), Input::Timeout);
    let (cmds, _) = drain(&mut e);
    assert!(
        cmds.iter()
            .any(|c| matches!(c, NetCmd::OpenPeer { id: Some(id), .. } if id == "kbz-v1-r"))
    );
}

/// Stands in for an OIDC verifier with fetched JWKS: a `jwt` of `email:<address>` proves the
/// address (the RS256 check itself is kibitz-proto's `credit`/JWT code's job).
#[derive(Debug)]
struct EmailProof;

impl Verifier for EmailProof {
    fn requires_verification(&self) -> bool {
        true
    }
    fn binds_fingerprint(&self) -> bool {
        true
    }
    fn verify(&mut self, c: &Credentials<'_>) -> Verdict {
        match c.jwt.and_then(|j| j.strip_prefix("email:")) {
            Some(email) => Verdict::Ok(Verified {
                email: Some(email.to_owned()),
                ..Verified::default()
            }),
            None => Verdict::Reject("no email".into()),
        }
    }
}

#[test]
fn email_tier_declares_the_member_proving_the_committed_address_host() {
    let mut sim = sim(23);
    let member = |name: &str, email: &str| {
        let mut c = cfg("r", name);
        c.host = kibitz_client::HostCommit::Email("Host@Example.org".into());
        c.credential = Some(format!("email:{email}"));
        c.verifier = Some(Box::new(EmailProof));
        c
    };
    let a = join(&mut sim, member("Alice", "alice@example.org"));
    sim.run_for(500);
    let b = join(&mut sim, member("Bob", "bob@example.org"));
    let h = join(&mut sim, member("Hana", " host@example.ORG "));
    sim.run_for(3_000);
    let idh = id_of(&sim, h);
    assert_eq!(sim.engine(b).roster().host(), Some(idh.as_str()));
    // The email tier moderates through the coordinator, which is not the host here.
    assert_eq!(
        sim.with(h, |e, now| e.set_locked(now, true)),
        Err(kibitz_client::HostError::NotHost)
    );
    assert_eq!(names(&sim, a), ["Alice", "Bob", "Hana"]);
    // It is a cryptographic tier: the host's grants are honoured.
    let idb = id_of(&sim, b);
    sim.with(h, |e, now| {
        e.set_capability_grant(now, &idb, kibitz_proto::grants::Grant::agent_default())
    })
    .unwrap();
    sim.run_for(500);
    assert_eq!(
        sim.engine(a).capability_grant(&idb),
        kibitz_proto::grants::Grant::agent_default()
    );
}
