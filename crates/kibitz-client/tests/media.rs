//! The media plane over the in-memory network: who calls whom, one pc per pair, the owned
//! recovery ladder, stuck connects, and the gates.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;

use common::*;
use kibitz_client::sim::{NodeId, Sim};
use kibitz_client::{ConnId, Event, LaneGates, MediaMode, NetCmd};
use kibitz_proto::content::Content;
use kibitz_proto::grants::{Grant, Perceive};

fn calls(sim: &Sim) -> Vec<(u64, NodeId, String, MediaMode, bool)> {
    sim.media_log()
        .iter()
        .filter_map(|(t, n, c)| match c {
            NetCmd::MediaCall {
                remote,
                mode,
                relay,
                ..
            } => Some((*t, *n, remote.clone(), *mode, *relay)),
            _ => None,
        })
        .collect()
}

fn connected(sim: &Sim, n: NodeId) -> Vec<(String, MediaMode)> {
    sim.events(n)
        .iter()
        .filter_map(|(_, e)| match e {
            Event::MediaConnected { voice_id, mode } => Some((voice_id.clone(), *mode)),
            _ => None,
        })
        .collect()
}

fn room(sim: &mut Sim, n: usize, legacy: bool) -> Vec<NodeId> {
    let mut nodes = Vec::new();
    for i in 0..n {
        let node = sim.add(cfg("r", &format!("P{i}")));
        if legacy {
            sim.set_legacy(node);
        }
        sim.start(node);
        sim.with(node, |e, now| e.join(now));
        nodes.push(node);
        sim.run_for(500);
    }
    nodes
}

/// Every pair has exactly one call, placed by the smaller voiceId, and it connected.
fn one_call_per_pair(sim: &Sim, nodes: &[NodeId], mode: MediaMode) {
    let calls = calls(sim);
    for &a in nodes {
        for &b in nodes {
            let (ia, ib) = (id_of(sim, a), id_of(sim, b));
            if ia >= ib {
                continue;
            }
            let ab = calls.iter().filter(|c| c.1 == a && c.2 == ib).count();
            let ba = calls.iter().filter(|c| c.1 == b && c.2 == ia).count();
            assert_eq!((ab, ba), (1, 0), "{ia} calls {ib} once, never the reverse");
            assert!(calls.iter().all(|c| c.3 == mode));
            assert!(connected(sim, a).contains(&(ib.clone(), mode)));
            assert!(connected(sim, b).contains(&(ia.clone(), mode)));
        }
        let pcs = sim.media_pcs(a);
        assert_eq!(pcs.len(), nodes.len() - 1, "one pc per peer");
        assert!(pcs.iter().all(|p| p.2), "all connected");
    }
}

#[test]
fn legacy_smaller_id_calls_once_per_pair() {
    for n in [2, 3] {
        let mut sim = sim(40 + n as u64);
        let nodes = room(&mut sim, n, true);
        sim.run_for(6_000);
        one_call_per_pair(&sim, &nodes, MediaMode::Legacy);
        // Each call went out ~2 s after that pair's sig opened, not before.
        let first = calls(&sim).iter().map(|c| c.0).min().unwrap();
        assert!(
            first >= 2_000,
            "legacy waits for a sign of owned media first"
        );
    }
}

#[test]
fn owned_smaller_id_offers_once_per_pair() {
    for n in [2, 3] {
        let mut sim = sim(50 + n as u64);
        let nodes = room(&mut sim, n, false);
        sim.run_for(6_000);
        one_call_per_pair(&sim, &nodes, MediaMode::Owned);
        // Steady: nothing re-made over a minute.
        let before = calls(&sim).len();
        sim.run_for(60_000);
        assert_eq!(calls(&sim).len(), before);
        for &a in &nodes {
            assert!(
                sim.engine(a)
                    .media_links()
                    .iter()
                    .all(|l| l.open && l.recoveries == 0)
            );
        }
    }
}

/// (initiator, answerer) of a two-member owned room, connected.
fn owned_pair(seed: u64) -> (Sim, NodeId, NodeId) {
    let mut sim = sim(seed);
    let nodes = room(&mut sim, 2, false);
    sim.run_for(5_000);
    let (a, b) = (nodes[0], nodes[1]);
    let pair = if id_of(&sim, a) < id_of(&sim, b) {
        (a, b)
    } else {
        (b, a)
    };
    (sim, pair.0, pair.1)
}

fn restarts(sim: &Sim, n: NodeId) -> Vec<u64> {
    sim.media_log()
        .iter()
        .filter(|(_, m, c)| *m == n && matches!(c, NetCmd::MediaRestartIce { .. }))
        .map(|(t, _, _)| *t)
        .collect()
}

#[test]
fn owned_ladder_restart_then_recreate_then_relay() {
    let (mut sim, i, r) = owned_pair(61);
    let cut_at = sim.now().ms;
    // The initiator hears nothing while the answerer keeps sending (its mh says so).
    sim.cut_media(r, i, true);
    sim.run_for(12_000);
    let rs = restarts(&sim, i);
    assert_eq!(rs.len(), 1, "n=0: ICE restart");
    let lag = rs[0] - cut_at;
    assert!(
        (9_000..=11_000).contains(&lag),
        "after 9 s below 1 kbps (+ stats ticks): {lag}"
    );
    // n=1: m-recreate without relay, rebuilt 9 s after the restart's window began.
    sim.run_for(11_000);
    let c = calls(&sim);
    let rebuilt: Vec<_> = c.iter().filter(|c| c.1 == i && c.0 > rs[0]).collect();
    assert_eq!(rebuilt.len(), 1);
    assert!(!rebuilt[0].4, "not relay yet");
    let lag = rebuilt[0].0 - rs[0];
    assert!((9_000..=11_000).contains(&lag), "{lag}");
    // The new pc connects but never receives: straight to relay, 9 s after it connected.
    sim.run_for(12_000);
    let c = calls(&sim);
    let relay: Vec<_> = c
        .iter()
        .filter(|c| c.1 == i && c.0 > rebuilt[0].0)
        .collect();
    assert_eq!(relay.len(), 1);
    assert!(relay[0].4, "relay-only");
    let lag = relay[0].0 - rebuilt[0].0;
    assert!((9_000..=10_000).contains(&lag), "{lag}");
    // The answerer rebuilt relay-only too (its answering pc was made with relay).
    assert!(sim.media_log().iter().any(|(t, n, c)| *n == r
        && *t >= relay[0].0
        && matches!(c, NetCmd::MediaSignal { relay: true, .. })));
    // Budget spent: nothing more while media stays cut.
    sim.run_for(30_000);
    assert_eq!(calls(&sim).len(), c.len());
    let link = &sim.engine(i).media_links()[0];
    assert_eq!((link.recoveries, link.relay), (3, true));
    // Both directions flow again: the budget resets.
    sim.cut_media(r, i, false);
    sim.run_for(3_000);
    assert_eq!(sim.engine(i).media_links()[0].recoveries, 0);
}

#[test]
fn a_failed_pc_is_rebuilt_with_m_recreate() {
    let (mut sim, i, _) = owned_pair(62);
    let before = calls(&sim).len();
    let (conn, _, _) = sim.media_pcs(i)[0];
    sim.media_fail(i, conn);
    sim.run_for(2_000);
    let c = calls(&sim);
    assert_eq!(
        c.len(),
        before + 1,
        "a failed pc cannot restart ICE: rebuilt at once"
    );
    assert!(sim.engine(i).media_links()[0].open);
}

#[test]
fn stuck_connect_is_remade_three_times() {
    let mut sim = sim(63);
    sim.media_net.never_open = true;
    let nodes = room(&mut sim, 2, false);
    sim.run_for(60_000);
    let c = calls(&sim);
    assert_eq!(c.len(), 4, "the first pc and three re-makes");
    for w in c.windows(2) {
        assert_eq!(w[1].0 - w[0].0, 8_000, "each after 8 s unconnected");
    }
    let _ = nodes;
}

fn last_gates(sim: &Sim, n: NodeId) -> (BTreeMap<String, LaneGates>, LaneGates) {
    sim.media_log()
        .iter()
        .rev()
        .find_map(|(_, m, c)| match c {
            NetCmd::MediaGates { send, receive } if *m == n => Some((send.clone(), *receive)),
            _ => None,
        })
        .expect("gates")
}

/// The gates in force on `n` when it first acted for `peer` (a call, or an answering pc).
fn gates_before_first_media(sim: &Sim, n: NodeId, peer: &str) -> LaneGates {
    let mut gates = None;
    for (_, m, c) in sim.media_log() {
        if *m != n {
            continue;
        }
        match c {
            NetCmd::MediaGates { send, .. } => gates = send.get(peer).copied(),
            NetCmd::MediaCall { remote, .. } | NetCmd::MediaSignal { remote, .. }
                if remote == peer =>
            {
                return gates.expect("gates before the first media command");
            }
            NetCmd::MediaAnswerCall { .. } => return gates.expect("gates first"),
            _ => {}
        }
    }
    panic!("no media command for {peer}");
}

const DEAF: LaneGates = LaneGates {
    mic: false,
    camera: true,
    share: false,
    share_audio: false,
};

fn agent(mut c: kibitz_client::RoomConfig) -> kibitz_client::RoomConfig {
    c.meta.role = Some("agent".into());
    c
}

#[test]
fn an_agent_is_gated_from_the_first_packet_in_both_modes() {
    for legacy in [false, true] {
        let mut sim = sim(70);
        let h = sim.add(cfg("r", "Hana"));
        let g = sim.add(agent(cfg("r", "Bot")));
        for n in [h, g] {
            if legacy {
                sim.set_legacy(n);
            }
            sim.start(n);
            sim.with(n, |e, now| e.join(now));
            sim.run_for(500);
        }
        sim.run_for(6_000);
        let idg = id_of(&sim, g);
        assert_eq!(gates_before_first_media(&sim, h, &idg), DEAF);
        assert_eq!(
            last_gates(&sim, g).1,
            DEAF,
            "the agent records no audio itself"
        );
        assert!(connected(&sim, h).iter().any(|c| c.0 == idg));
    }
}

#[test]
fn host_caps_under_a_key_tier_open_the_gates() {
    let mut sim = sim(71);
    let h = join(&mut sim, keyed("r", "Hana", true));
    sim.run_for(500);
    let c = join(&mut sim, keyed("r", "Carl", false));
    let g = join(&mut sim, agent(keyed("r", "Bot", false)));
    sim.run_for(6_000);
    let idg = id_of(&sim, g);
    assert_eq!(last_gates(&sim, c).0[&idg], DEAF);
    let hear = Grant {
        perceive: vec![Perceive::HearAudio, Perceive::SeeScreen, Perceive::ReadChat],
        ..Grant::default()
    };
    sim.with(h, |e, now| e.set_capability_grant(now, &idg, hear))
        .unwrap();
    assert_eq!(
        last_gates(&sim, h).0[&idg],
        LaneGates::OPEN,
        "the host re-gates at once"
    );
    sim.run_for(500);
    assert_eq!(last_gates(&sim, c).0[&idg], LaneGates::OPEN);
    assert_eq!(
        last_gates(&sim, g).1,
        LaneGates::OPEN,
        "the agent may record now"
    );
}

#[test]
fn an_open_tier_caps_frame_does_not_open_the_gates() {
    let mut sim = sim(72);
    let a = join(&mut sim, cfg("r", "Alice"));
    sim.run_for(500);
    let b = join(&mut sim, cfg("r", "Bob"));
    let g = join(&mut sim, agent(cfg("r", "Bot")));
    sim.run_for(6_000);
    let idg = id_of(&sim, g);
    let full = kibitz_proto::binarypack::to_value(&Grant::full()).unwrap();
    let caps = Content::Caps {
        grants: [(idg.clone(), full)].into_iter().collect(),
    };
    sim.with(a, |e, now| e.send_content(now, &caps, None))
        .unwrap();
    sim.run_for(1_000);
    assert_eq!(last_gates(&sim, b).0[&idg], DEAF);
    assert_eq!(last_gates(&sim, g).1, DEAF);
}

#[test]
fn a_member_reannounced_as_agent_is_regated_at_once() {
    let mut sim = sim(73);
    let a = join(&mut sim, cfg("r", "Alice"));
    sim.run_for(500);
    let b = join(&mut sim, cfg("r", "Bob"));
    sim.run_for(6_000);
    let idb = id_of(&sim, b);
    assert_eq!(last_gates(&sim, a).0[&idb], LaneGates::OPEN);
    assert!(sim.media_pcs(a).iter().all(|p| p.2), "its pc exists");
    let mut meta = sim.engine(b).participants()[0]
        .meta
        .clone()
        .unwrap_or_default();
    meta.role = Some("agent".into());
    sim.with(b, |e, now| e.set_meta(now, meta));
    let t0 = sim.now().ms;
    let mut waited = 0;
    while last_gates(&sim, a).0[&idb] != DEAF {
        sim.run_for(10);
        waited += 10;
        assert!(waited < 1_000, "re-gated with the roster that says so");
    }
    let _ = t0;
    let pcs: Vec<ConnId> = sim.media_pcs(a).iter().map(|p| p.0).collect();
    assert_eq!(pcs.len(), 1, "same pc: gating never renegotiates");
}
