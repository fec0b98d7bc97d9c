//! Property tests over thousands of seeded runs: random joins, crashes, leaves, partitions,
//! loss, kicks and grant changes; then the network heals and the room must converge.
//!
//! Invariants checked after convergence, for every seed:
//! - exactly one authority among the live participants, and the broker agrees who it is;
//! - every live member's roster is exactly the live members;
//! - nobody holds the host slot without the key (key tier) — and nobody at all without a tier;
//! - a kicked participant is out and stays out;
//! - every peer computes the same grant for every member.
//!
//! `KIBITZ_SIM_SEEDS` sets how many seeds run (default 2000); a failure names its seed, and
//! `KIBITZ_SIM_SEED=<n>` replays one.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;

use kibitz_client::sim::{NetConfig, NodeId, Sim};
use kibitz_client::{HostCommit, Lane, RoomConfig, Status};
use kibitz_proto::SplitMix64;
use kibitz_proto::grants::{Act, Grant, Perceive};

struct Rng(SplitMix64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0.next_u64() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    Crash(NodeId),
    Leave(NodeId),
    Partition { len_ms: u64 },
    Kick(NodeId),
    Grant(NodeId),
    LateJoin,
}

struct Run {
    sim: Sim,
    nodes: Vec<NodeId>,
    keyed: bool,
    host: Option<NodeId>,
    /// Rejoiners with a kicked token, and who was in the room when the kick landed.
    kicked: Vec<(NodeId, Vec<NodeId>)>,
    gone: Vec<NodeId>,
    /// Whose name and token each node uses (an index into the first joiners and late joiners).
    identity: Vec<usize>,
}

fn config(keyed: bool, holds: bool, i: usize) -> RoomConfig {
    let name = format!("n{i}");
    if keyed {
        keyed_cfg(&name, holds)
    } else {
        cfg("prop", &name)
    }
}

fn keyed_cfg(name: &str, holds: bool) -> RoomConfig {
    let mut c = keyed("prop", name, holds);
    if !holds {
        c.host_key = None;
    }
    c
}

fn run(seed: u64) -> Result<(), String> {
    let mut rng = Rng(SplitMix64::new(seed));
    let lat_max = [40, 120, 300][rng.below(3) as usize];
    let net = NetConfig {
        latency: (2, lat_max),
        broker_latency: (2, 60),
        loss: [0.0, 0.05, 0.2][rng.below(3) as usize],
        retransmit: (200, 1_000),
    };
    let mut r = Run {
        sim: Sim::new(seed, net, T0_UNIX_MS),
        nodes: Vec::new(),
        keyed: rng.chance(50),
        host: None,
        kicked: Vec::new(),
        gone: Vec::new(),
        identity: Vec::new(),
    };
    let n = 3 + rng.below(4) as usize;
    let host = r.keyed.then(|| rng.below(n as u64) as usize);
    r.host = host;
    // Joins over the first 5 s, in order, with random gaps.
    for i in 0..n {
        let node = r.sim.add(config(r.keyed, host == Some(i), i));
        r.nodes.push(node);
        r.identity.push(i);
        r.sim.start(node);
        r.sim.with(node, |e, now| e.join(now));
        r.sim.run_for(rng.below(1_200));
    }
    // Faults between 5 s and 60 s.
    let faults = rng.below(6);
    let mut t = 5_000;
    for _ in 0..faults {
        t += rng.below(10_000);
        if t >= 60_000 {
            break;
        }
        r.sim.run_until(t);
        let victim = r.nodes[rng.below(r.nodes.len() as u64) as usize];
        let fault = match rng.below(6) {
            0 => Fault::Crash(victim),
            1 => Fault::Leave(victim),
            2 => Fault::Partition {
                len_ms: 1_000 + rng.below(30_000),
            },
            3 => Fault::Kick(victim),
            4 => Fault::Grant(victim),
            _ => Fault::LateJoin,
        };
        apply(&mut r, &mut rng, fault);
    }
    r.sim.run_until(60_000);
    r.sim.heal();
    // Convergence: silence detection (12 s), reclaim (1.5 s), dial retries, reaping.
    r.sim.run_until(110_000);
    let result = check(&r).map_err(|e| format!("seed {seed}: {e}"));
    if result.is_err() && std::env::var("KIBITZ_SIM_SEED").is_ok() {
        dump(&r);
    }
    result
}

/// Prints every node's state and event log (for replaying one seed).
fn dump(r: &Run) {
    eprintln!("holder {:?}", r.sim.holder("kbz-v1-prop"));
    for n in &r.nodes {
        let e = r.sim.engine(*n);
        eprintln!(
            "== node {n} alive={} status={:?} voice={:?} authority={} host={:?}",
            r.sim.alive(*n),
            e.status(),
            e.voice_id(),
            e.is_authority(),
            e.roster().host()
        );
        eprintln!("   links {:?}", e.mesh_links());
        for (t, ev) in r.sim.events(*n) {
            match ev {
                kibitz_client::Event::Participants(_) | kibitz_client::Event::Join(_) => {}
                other => eprintln!("  {t:>6} {other:?}"),
            }
        }
    }
}

fn apply(r: &mut Run, rng: &mut Rng, fault: Fault) {
    let live = |r: &Run, n: NodeId| r.sim.alive(n) && !r.gone.contains(&n);
    match fault {
        Fault::Crash(v) if live(r, v) => {
            r.sim.crash(v);
            r.gone.push(v);
        }
        Fault::Leave(v) if live(r, v) => {
            r.sim.with(v, |e, now| e.leave(now));
            r.gone.push(v);
        }
        Fault::Partition { len_ms } => {
            let groups: Vec<(NodeId, u32)> =
                r.nodes.iter().map(|n| (*n, rng.below(2) as u32)).collect();
            r.sim.partition(&groups);
            r.sim.run_for(len_ms);
            r.sim.heal();
        }
        Fault::Kick(v) => {
            let Some(h) = r.host else { return };
            if v == h || !live(r, h) || !live(r, v) {
                return;
            }
            let Some(id) = r.sim.engine(v).voice_id().map(str::to_owned) else {
                return;
            };
            if r.sim.with(h, |e, now| e.remove(now, &id)).is_err() {
                return;
            }
            r.gone.push(v);
            r.sim.run_for(3_000);
            // Once the kick has landed, the same token in a new tab must be kept out too,
            // whoever coordinates by then.
            if r.sim.engine(v).status()
                == &(Status::Left {
                    reason: "kicked".into(),
                })
            {
                let i = r.nodes.iter().position(|x| *x == v).unwrap();
                // The victim's own name and token (a rejoiner may itself be kicked again).
                let i = r.identity[i];
                let witnesses: Vec<NodeId> = r
                    .nodes
                    .iter()
                    .copied()
                    .filter(|n| *n != v && live(r, *n))
                    .collect();
                let again = r.sim.add(config(r.keyed, false, i));
                r.sim.run_for(rng.below(20_000));
                r.sim.start(again);
                r.sim.with(again, |e, now| e.join(now));
                r.nodes.push(again);
                r.identity.push(i);
                r.kicked.push((again, witnesses));
            }
        }
        Fault::Grant(v) => {
            let Some(h) = r.host else { return };
            if !live(r, h) {
                return;
            }
            let Some(id) = r.sim.engine(v).voice_id().map(str::to_owned) else {
                return;
            };
            let mut g = Grant::agent_default();
            if rng.chance(50) {
                g.act.push(Act::SendChat);
                g.perceive.push(Perceive::HearAudio);
            }
            let _ = r.sim.with(h, |e, now| e.set_capability_grant(now, &id, g));
        }
        Fault::LateJoin => {
            let i = r.nodes.len();
            let node = r.sim.add(config(r.keyed, false, i));
            r.nodes.push(node);
            r.identity.push(i);
            r.sim.start(node);
            r.sim.with(node, |e, now| e.join(now));
        }
        _ => {}
    }
}

fn check(r: &Run) -> Result<(), String> {
    let sim = &r.sim;
    let live: Vec<NodeId> = r
        .nodes
        .iter()
        .copied()
        .filter(|n| sim.alive(*n) && !matches!(sim.engine(*n).status(), Status::Left { .. }))
        .collect();
    // The ban lives in the room: it holds while anyone who was there when it landed is.
    for (k, witnesses) in &r.kicked {
        if live.contains(k) && witnesses.iter().any(|w| live.contains(w)) {
            return Err(format!(
                "kicked token is back in node {k}: {:?}",
                sim.engine(*k).status()
            ));
        }
    }
    let auth = authorities(sim, &live);
    if live.is_empty() {
        return Ok(());
    }
    if auth.len() != 1 {
        return Err(format!("authorities {auth:?} among live {live:?}"));
    }
    if sim.holder("kbz-v1-prop") != Some(auth[0]) {
        return Err(format!(
            "broker says {:?}, engine {}",
            sim.holder("kbz-v1-prop"),
            auth[0]
        ));
    }
    let mut want: Vec<String> = live
        .iter()
        .map(|n| sim.engine(*n).voice_id().unwrap_or("?").to_owned())
        .collect();
    want.sort();
    for n in &live {
        let mut got: Vec<String> = sim
            .engine(*n)
            .roster()
            .members
            .iter()
            .map(|m| m.id.clone())
            .collect();
        got.sort();
        if got != want {
            return Err(format!("node {n} roster {got:?}, live {want:?}"));
        }
        let host = sim.engine(*n).roster().host().map(str::to_owned);
        let allowed = match (r.keyed, r.host) {
            (true, Some(h)) => sim.engine(h).voice_id().map(str::to_owned),
            _ => None,
        };
        if host.is_some() && host != allowed {
            return Err(format!(
                "node {n} names host {host:?}, only {allowed:?} holds the key"
            ));
        }
        if r.keyed
            && let Some(h) = r.host
            && live.contains(&h)
            && host != allowed
        {
            return Err(format!(
                "node {n}: the live key holder is not host ({host:?})"
            ));
        }
    }
    // The data mesh is whole: both channels open between every two live members.
    for n in &live {
        let me = sim.engine(*n).voice_id().unwrap_or("?");
        let links = sim.engine(*n).mesh_links();
        for m in want.iter().filter(|m| *m != me) {
            for lane in [Lane::Sig, Lane::Bulk] {
                if !links
                    .iter()
                    .any(|l| l.remote == *m && l.lane == lane && l.open)
                {
                    return Err(format!("node {n} has no open {lane:?} channel to {m}"));
                }
            }
        }
    }
    for m in &want {
        let grants: Vec<Grant> = live
            .iter()
            .map(|n| sim.engine(*n).capability_grant(m))
            .collect();
        if grants.windows(2).any(|w| w[0] != w[1]) {
            return Err(format!("grants for {m} differ: {grants:?}"));
        }
    }
    let _ = HostCommit::None;
    Ok(())
}

#[test]
fn rooms_converge_under_faults() {
    if let Ok(one) = std::env::var("KIBITZ_SIM_SEED") {
        run(one.parse().unwrap()).unwrap();
        return;
    }
    let seeds: u64 = std::env::var("KIBITZ_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2_000);
    let failures: Vec<String> = (0..seeds).filter_map(|s| run(s).err()).collect();
    assert!(
        failures.is_empty(),
        "{} of {seeds} seeds failed; first ones:\n{}",
        failures.len(),
        failures
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}
