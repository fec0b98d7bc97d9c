//! Scenario tests: the room protocol step by step, with exact expected outcomes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;

use kibitz_client::Status;

#[test]
fn first_claims_others_join_and_rosters_converge() {
    let mut sim = sim(1);
    let a = join(&mut sim, cfg("Stand Up", "Alice"));
    sim.run_for(1_000);
    assert_eq!(sim.engine(a).status(), &Status::Authority);
    let b = join(&mut sim, cfg("stand-up", "Bob"));
    let c = join(&mut sim, cfg("STAND UP", "Carol"));
    sim.run_for(3_000);
    for n in [a, b, c] {
        assert_eq!(names(&sim, n), ["Alice", "Bob", "Carol"], "node {n}");
    }
    assert_eq!(authorities(&sim, &[a, b, c]), [a]);
    assert_eq!(sim.engine(b).status(), &Status::Connected);
    assert_eq!(sim.holder("kbz-v1-stand-up"), Some(a));
}

use kibitz_client::{AuditKind, Event, HostError, SendError};
use kibitz_proto::content::Content;
use kibitz_proto::grants::{Act, Grant, Perceive};
use kibitz_proto::presence::LobbyStatus;
use serde_json::json;

fn host_of(sim: &kibitz_client::sim::Sim, n: usize) -> Option<String> {
    sim.engine(n).roster().host().map(str::to_owned)
}

#[test]
fn authority_crash_migrates_to_one_survivor_within_the_protocol_timings() {
    let mut sim = sim(2);
    let a = join(&mut sim, cfg("r", "Alice"));
    sim.run_for(500);
    let b = join(&mut sim, cfg("r", "Bob"));
    let c = join(&mut sim, cfg("r", "Carol"));
    sim.run_for(3_000);
    let t_crash = sim.now().ms;
    sim.crash(a);
    // Silence is noticed after 12 s (on a 2.5 s tick), the id is reclaimed 1.5 s later.
    sim.run_for(11_000);
    assert!(authorities(&sim, &[b, c]).is_empty());
    sim.run_for(9_000);
    let auth = authorities(&sim, &[b, c]);
    assert_eq!(auth.len(), 1, "exactly one new authority");
    let took = sim
        .events(auth[0])
        .iter()
        .find(|(t, e)| *t > t_crash && matches!(e, Event::Status(Status::Authority)))
        .map(|(t, _)| t - t_crash)
        .unwrap();
    assert!(
        (12_000..=17_500).contains(&took),
        "took over after {took} ms"
    );
    sim.run_for(5_000);
    for n in [b, c] {
        assert_eq!(names(&sim, n), ["Bob", "Carol"]);
    }
    assert!(statuses(&sim, b).contains(&Status::Reconnecting {
        reason: "authority silent".into()
    }));
}

#[test]
fn authority_leaving_hands_over_at_once() {
    let mut sim = sim(3);
    let a = join(&mut sim, cfg("r", "Alice"));
    sim.run_for(500);
    let b = join(&mut sim, cfg("r", "Bob"));
    sim.run_for(3_000);
    let t = sim.now().ms;
    sim.with(a, |e, now| e.leave(now));
    sim.run_for(3_000);
    assert!(sim.engine(b).is_authority());
    let took = sim
        .events(b)
        .iter()
        .find(|(at, e)| *at > t && matches!(e, Event::Status(Status::Authority)))
        .map(|(at, _)| at - t)
        .unwrap();
    assert!(took <= 2_000, "took {took} ms");
    assert_eq!(names(&sim, b), ["Bob"]);
    assert_eq!(
        sim.engine(a).status(),
        &Status::Left {
            reason: "left".into()
        }
    );
}

#[test]
fn leave_is_fast_and_a_crashed_member_is_reaped() {
    let mut sim = sim(4);
    let a = join(&mut sim, cfg("r", "Alice"));
    sim.run_for(500);
    let b = join(&mut sim, cfg("r", "Bob"));
    let c = join(&mut sim, cfg("r", "Carol"));
    sim.run_for(3_000);
    sim.with(b, |e, now| e.leave(now));
    sim.run_for(300);
    assert_eq!(names(&sim, a), ["Alice", "Carol"]);
    sim.crash(c);
    sim.run_for(11_500);
    assert_eq!(names(&sim, a), ["Alice", "Carol"], "not reaped before 12 s");
    sim.run_for(3_000);
    assert_eq!(names(&sim, a), ["Alice"]);
}

#[test]
fn chat_and_direct_messages_reach_the_right_members() {
    let mut sim = sim(5);
    let a = join(&mut sim, cfg("r", "Alice"));
    sim.run_for(500);
    let b = join(&mut sim, cfg("r", "Bob"));
    let c = join(&mut sim, cfg("r", "Carol"));
    sim.run_for(3_000);
    let (ida, idb) = (id_of(&sim, a), id_of(&sim, b));
    assert_eq!(sim.with(a, |e, now| e.chat(now, "hi all", None)), Ok(2));
    assert_eq!(
        sim.with(c, |e, now| e.send_to(now, &idb, app(json!({"secret": 1})))),
        Ok(1)
    );
    assert_eq!(
        sim.with(c, |e, now| e.send_to(now, "nobody", app(json!(1)))),
        Err(SendError::UnknownMember("nobody".into()))
    );
    sim.run_for(500);
    let got_b = received(&sim, b);
    let got_c = received(&sim, c);
    // Two senders: their frames may arrive in either order.
    assert!(
        got_b
            .iter()
            .any(|m| matches!(m, (f, Content::Chat(ch)) if *f == ida && ch.text == "hi all"))
    );
    assert!(got_b.iter().any(|m| matches!(m, (_, Content::App { .. }))));
    assert_eq!(got_b.len(), 2);
    assert_eq!(got_c.len(), 1, "the directed payload went to Bob only");
    assert!(received(&sim, a).is_empty());
}

#[test]
fn key_host_claims_kicks_and_the_kicked_token_stays_out() {
    let mut sim = sim(6);
    let a = join(&mut sim, keyed("r", "Alice", false));
    sim.run_for(500);
    let h = join(&mut sim, keyed("r", "Hana", true));
    let m = join(&mut sim, keyed("r", "Mallory", false));
    sim.run_for(3_000);
    let (idh, idm) = (id_of(&sim, h), id_of(&sim, m));
    assert_eq!(
        host_of(&sim, a).as_deref(),
        Some(idh.as_str()),
        "the key holder claimed"
    );
    assert_eq!(host_of(&sim, m).as_deref(), Some(idh.as_str()));
    // Only the key holder can moderate; the coordinator without the key cannot.
    assert_eq!(
        sim.with(a, |e, now| e.remove(now, &idh)),
        Err(HostError::NotHost)
    );
    sim.with(h, |e, now| e.remove(now, &idm)).unwrap();
    sim.run_for(1_000);
    assert_eq!(
        sim.engine(m).status(),
        &Status::Left {
            reason: "kicked".into()
        }
    );
    assert_eq!(names(&sim, a), ["Alice", "Hana"]);
    // Mallory comes back with the same token (a new tab): kicked on sight.
    let m2 = join(&mut sim, keyed("r", "Mallory", false));
    sim.run_for(3_000);
    assert_eq!(
        sim.engine(m2).status(),
        &Status::Left {
            reason: "kicked".into()
        }
    );
    assert_eq!(names(&sim, h), ["Alice", "Hana"]);
}

#[test]
fn forged_replayed_and_misbound_host_commands_are_refused() {
    use kibitz_proto::hostcmd::{HostCmd, HostOp, sign_host_cmd};
    let mut sim = sim(7);
    let a = join(&mut sim, keyed("r", "Alice", false));
    sim.run_for(500);
    let b = join(&mut sim, keyed("r", "Bob", false));
    sim.run_for(3_000);
    let unix = sim.now().unix();
    let fp_b = "fp:1";
    let forged = sign_host_cmd(
        &key(9),
        &HostCmd::new("r", fp_b, HostOp::Lock, None, unix, [1; 12]),
    );
    let misbound = sign_host_cmd(
        &key(7),
        &HostCmd::new("r", "fp:0", HostOp::Lock, None, unix, [2; 12]),
    );
    let old = sign_host_cmd(
        &key(7),
        &HostCmd::new("r", fp_b, HostOp::Lock, None, unix - 121, [3; 12]),
    );
    let other_room = sign_host_cmd(
        &key(7),
        &HostCmd::new("s", fp_b, HostOp::Lock, None, unix, [4; 12]),
    );
    let good = sign_host_cmd(
        &key(7),
        &HostCmd::new("r", fp_b, HostOp::Lobbyon, None, unix, [5; 12]),
    );
    // Bob's presence connection carries what he sends; inject raw frames on it.
    for token in [&forged, &misbound, &old, &other_room, &good, &good] {
        sim.with(b, |e, now| {
            e.send_presence_frame(now, kibitz_client::wire::host_command(token))
        });
    }
    sim.run_for(1_000);
    let refused: Vec<String> = sim
        .events(a)
        .iter()
        .filter_map(|(_, e)| match e {
            Event::HostCommandRefused { reason } => Some(reason.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        refused,
        [
            "bad host command signature",
            "host command bound to another fingerprint",
            "host command expired",
            "host command for another room",
            "host command replayed",
        ]
    );
    assert_eq!(sim.engine(a).roster().locked, Some(false));
    assert_eq!(
        sim.engine(a).roster().lobby,
        Some(true),
        "the one good command applied"
    );
}

#[test]
fn lobby_on_start_holds_knockers_until_the_host_admits() {
    let mut sim = sim(8);
    let mut hc = keyed("r", "Hana", true);
    hc.lobby_on_start = true;
    let h = join(&mut sim, hc);
    sim.run_for(500);
    let mut bc = keyed("r", "Bob", false);
    bc.lobby_on_start = true;
    let b = join(&mut sim, bc);
    sim.run_for(3_000);
    assert_eq!(lobby_events(&sim, b), [LobbyStatus::Waiting]);
    assert_eq!(names(&sim, h), ["Hana"]);
    assert!(
        names(&sim, b).is_empty(),
        "a waiting knocker sees no roster"
    );
    let queue = sim.engine(h).lobby_queue();
    assert_eq!(queue.len(), 1);
    assert_eq!(queue[0].name, "Bob");
    sim.with(h, |e, now| e.admit(now, &queue[0].id)).unwrap();
    sim.run_for(1_000);
    assert_eq!(
        lobby_events(&sim, b),
        [LobbyStatus::Waiting, LobbyStatus::Admitted]
    );
    assert_eq!(names(&sim, b), ["Bob", "Hana"]);
    // A second knocker is denied.
    let mut cc = keyed("r", "Carol", false);
    cc.lobby_on_start = true;
    let c = join(&mut sim, cc);
    sim.run_for(3_000);
    let queue = sim.engine(h).lobby_queue();
    sim.with(h, |e, now| e.deny(now, &queue[0].id)).unwrap();
    sim.run_for(1_000);
    assert_eq!(
        lobby_events(&sim, c),
        [LobbyStatus::Waiting, LobbyStatus::Denied]
    );
    assert_eq!(names(&sim, h), ["Bob", "Hana"]);
}

#[test]
fn remote_host_sees_knockers_and_admits_them() {
    let mut sim = sim(9);
    let a = join(&mut sim, keyed("r", "Alice", false));
    sim.run_for(500);
    let h = join(&mut sim, keyed("r", "Hana", true));
    sim.run_for(3_000);
    sim.with(h, |e, now| e.set_lobby(now, true)).unwrap();
    sim.run_for(500);
    let b = join(&mut sim, keyed("r", "Bob", false));
    sim.run_for(3_000);
    let queue = sim
        .events(h)
        .iter()
        .rev()
        .find_map(|(_, e)| match e {
            Event::LobbyQueue(q) if !q.is_empty() => Some(q.clone()),
            _ => None,
        })
        .expect("the host heard of the knocker");
    assert_eq!(queue[0].name, "Bob");
    assert_eq!(lobby_events(&sim, b), [LobbyStatus::Waiting]);
    sim.with(h, |e, now| e.admit(now, &queue[0].id)).unwrap();
    sim.run_for(1_000);
    assert_eq!(names(&sim, a), ["Alice", "Bob", "Hana"]);
    assert_eq!(names(&sim, b), ["Alice", "Bob", "Hana"]);
}

#[test]
fn locked_room_turns_newcomers_away_but_not_members() {
    let mut sim = sim(10);
    let h = join(&mut sim, keyed("r", "Hana", true));
    sim.run_for(500);
    let b = join(&mut sim, keyed("r", "Bob", false));
    sim.run_for(3_000);
    sim.with(h, |e, now| e.set_locked(now, true)).unwrap();
    sim.run_for(500);
    let c = join(&mut sim, keyed("r", "Carol", false));
    sim.run_for(4_000);
    assert!(lobby_events(&sim, c).contains(&LobbyStatus::Locked));
    assert_eq!(names(&sim, h), ["Bob", "Hana"]);
    assert_eq!(names(&sim, b), ["Bob", "Hana"]);
    assert_eq!(sim.engine(b).roster().locked, Some(true));
}

#[test]
fn tiers_without_a_key() {
    // No host committed: no admin at all.
    let mut sim = sim(11);
    let a = join(&mut sim, cfg("r", "Alice"));
    sim.run_for(1_000);
    assert_eq!(
        sim.with(a, |e, now| e.set_locked(now, true)),
        Err(HostError::NoHostTier)
    );
    assert_eq!(host_of(&sim, a), None);
    // Soft name: the first member with the name holds the slot; the coordinator moderates
    // only if it is that member.
    let mut sim = sim_soft();
    let (a, b) = (0, 1);
    assert_eq!(host_of(&sim, a).as_deref(), Some(id_of(&sim, b).as_str()));
    assert_eq!(
        sim.with(a, |e, now| e.set_locked(now, true)),
        Err(HostError::NotHost)
    );
    assert_eq!(
        sim.with(b, |e, now| e.set_locked(now, true)),
        Err(HostError::NotHost)
    );
}

fn sim_soft() -> kibitz_client::sim::Sim {
    let mut sim = sim(12);
    let soft = |name: &str| {
        let mut c = cfg("r", name);
        c.host = kibitz_client::HostCommit::Name(" hana ".into());
        c
    };
    join(&mut sim, soft("Alice"));
    sim.run_for(500);
    join(&mut sim, soft("Hana"));
    // Second with the same name, after the first is in (its own token: the same token would
    // make it the same participant, and the roster flip between the two).
    sim.run_for(1_500);
    let mut second = soft("hana");
    second.token = "tok-hana-2".into();
    join(&mut sim, second);
    sim.run_for(3_000);
    sim
}

#[test]
fn soft_host_coordinating_moderates_directly() {
    let mut sim = sim(13);
    let soft = |name: &str| {
        let mut c = cfg("r", name);
        c.host = kibitz_client::HostCommit::Name("Hana".into());
        c
    };
    let h = join(&mut sim, soft("Hana"));
    sim.run_for(500);
    let b = join(&mut sim, soft("Bob"));
    sim.run_for(3_000);
    assert_eq!(host_of(&sim, b).as_deref(), Some(id_of(&sim, h).as_str()));
    let idb = id_of(&sim, b);
    sim.with(h, |e, now| e.remove(now, &idb)).unwrap();
    sim.run_for(1_000);
    assert_eq!(
        sim.engine(b).status(),
        &Status::Left {
            reason: "kicked".into()
        }
    );
}

#[test]
fn reset_reaches_everyone() {
    let mut sim = sim(14);
    let h = join(&mut sim, keyed("r", "Hana", true));
    sim.run_for(500);
    let b = join(&mut sim, keyed("r", "Bob", false));
    sim.run_for(3_000);
    sim.with(h, |e, now| e.reset(now)).unwrap();
    sim.run_for(500);
    for n in [h, b] {
        assert!(
            sim.events(n).iter().any(|(_, e)| matches!(e, Event::Reset)),
            "node {n}"
        );
    }
}

#[test]
fn migration_inherits_lobby_and_lock_grandfathers_members_and_resets_the_host() {
    let mut sim = sim(15);
    let a = join(&mut sim, keyed("r", "Alice", false));
    sim.run_for(500);
    let h = join(&mut sim, keyed("r", "Hana", true));
    let b = join(&mut sim, keyed("r", "Bob", false));
    sim.run_for(3_000);
    sim.with(h, |e, now| e.set_locked(now, true)).unwrap();
    sim.with(h, |e, now| e.set_lobby(now, true)).unwrap();
    sim.run_for(1_000);
    sim.crash(a);
    sim.run_for(20_000);
    let auth = authorities(&sim, &[h, b]);
    assert_eq!(auth.len(), 1);
    let r = sim.engine(auth[0]).roster().clone();
    assert_eq!((r.lobby, r.locked), (Some(true), Some(true)), "inherited");
    // Grandfathered: both survivors are back in, despite lobby and lock.
    assert_eq!(names(&sim, b), ["Bob", "Hana"]);
    // The host slot started empty and the key holder claimed it again.
    assert_eq!(host_of(&sim, b).as_deref(), Some(id_of(&sim, h).as_str()));
    assert!(
        sim.events(b)
            .iter()
            .any(|(_, e)| matches!(e, Event::Participants(p) if p.iter().all(|p| !p.is_host)))
    );
}

#[test]
fn agents_start_read_only_and_the_host_grants_live() {
    let mut sim = sim(16);
    let h = join(&mut sim, keyed("r", "Hana", true));
    sim.run_for(500);
    let b = join(&mut sim, keyed("r", "Bob", false));
    let mut ac = keyed("r", "Bot", false);
    ac.agent = Some(kibitz_client::AgentIdentity {
        key: None,
        backend: Some("local-llm".into()),
        egress: false,
    });
    let g = join(&mut sim, ac);
    sim.run_for(3_000);
    let idg = id_of(&sim, g);
    let grant = sim.engine(b).capability_grant(&idg);
    assert_eq!(grant.act, Vec::<Act>::new());
    assert_eq!(grant.backend.as_deref(), Some("local-llm"));
    // The agent may not speak: blocked locally, and dropped by others if it tried anyway.
    assert_eq!(
        sim.with(g, |e, now| e.chat(now, "hello", None)),
        Err(SendError::NotPermitted)
    );
    assert!(
        sim.engine(g)
            .agent_audit()
            .iter()
            .any(|a| matches!(&a.kind, AuditKind::Blocked { what } if what == "chat"))
    );
    // The host lets it chat; every peer now computes the same grant.
    let mut full = Grant::agent_default();
    full.act = vec![Act::SendChat];
    sim.with(h, |e, now| e.set_capability_grant(now, &idg, full.clone()))
        .unwrap();
    sim.run_for(500);
    for n in [h, b, g] {
        assert_eq!(
            sim.engine(n).capability_grant(&idg).act,
            [Act::SendChat],
            "node {n}"
        );
    }
    assert_eq!(sim.with(g, |e, now| e.chat(now, "hello", None)), Ok(2));
    sim.run_for(500);
    assert_eq!(received(&sim, b).len(), 1);
    // Bob is not the host: his grants are refused by everyone.
    assert_eq!(
        sim.with(b, |e, now| e.set_capability_grant(now, &idg, Grant::full())),
        Err(HostError::NotHost)
    );
}

#[test]
fn content_is_withheld_from_members_without_the_grant() {
    let mut sim = sim(17);
    let h = join(&mut sim, keyed("r", "Hana", true));
    sim.run_for(500);
    let b = join(&mut sim, keyed("r", "Bob", false));
    let c = join(&mut sim, keyed("r", "Carol", false));
    sim.run_for(3_000);
    let idb = id_of(&sim, b);
    let mut deaf = Grant::full();
    deaf.perceive
        .retain(|p| *p != Perceive::ReadChat && *p != Perceive::ReceiveDirected);
    sim.with(h, |e, now| e.set_capability_grant(now, &idb, deaf))
        .unwrap();
    sim.run_for(500);
    assert_eq!(sim.with(c, |e, now| e.chat(now, "psst", None)), Ok(1));
    assert_eq!(
        sim.with(c, |e, now| e.send_to(now, &idb, app(json!(1)))),
        Ok(0)
    );
    sim.run_for(500);
    assert!(received(&sim, b).is_empty());
    assert_eq!(received(&sim, h).len(), 1);
    let withheld = sim
        .engine(c)
        .agent_audit()
        .iter()
        .filter(|a| matches!(&a.kind, AuditKind::Withheld { to, .. } if *to == idb))
        .count();
    assert_eq!(withheld, 2);
}

#[test]
fn grants_survive_migration_and_are_resynced_by_the_host() {
    let mut sim = sim(18);
    let a = join(&mut sim, keyed("r", "Alice", false));
    sim.run_for(500);
    let h = join(&mut sim, keyed("r", "Hana", true));
    let b = join(&mut sim, keyed("r", "Bob", false));
    sim.run_for(3_000);
    let idb = id_of(&sim, b);
    sim.with(h, |e, now| {
        e.set_capability_grant(now, &idb, Grant::agent_default())
    })
    .unwrap();
    sim.run_for(500);
    sim.crash(a);
    sim.run_for(20_000);
    let late = join(&mut sim, keyed("r", "Dan", false));
    sim.run_for(4_000);
    for n in [h, b, late] {
        assert_eq!(
            sim.engine(n).capability_grant(&idb),
            Grant::agent_default(),
            "node {n}"
        );
    }
}

#[test]
fn bans_outlive_the_authority_that_kicked() {
    let mut sim = sim(19);
    let a = join(&mut sim, keyed("r", "Alice", false));
    sim.run_for(500);
    let h = join(&mut sim, keyed("r", "Hana", true));
    let b = join(&mut sim, keyed("r", "Bob", false));
    let m = join(&mut sim, keyed("r", "Mallory", false));
    sim.run_for(3_000);
    let idm = id_of(&sim, m);
    sim.with(h, |e, now| e.remove(now, &idm)).unwrap();
    sim.run_for(3_000);
    assert_eq!(
        sim.engine(m).status(),
        &Status::Left {
            reason: "kicked".into()
        }
    );
    sim.crash(a);
    sim.run_for(20_000);
    assert_eq!(authorities(&sim, &[h, b]).len(), 1);
    let m2 = join(&mut sim, keyed("r", "Mallory", false));
    sim.run_for(5_000);
    assert_eq!(
        sim.engine(m2).status(),
        &Status::Left {
            reason: "kicked".into()
        }
    );
    assert_eq!(names(&sim, b), ["Bob", "Hana"]);
}

#[test]
fn a_kicked_token_that_grabs_the_freed_id_is_handed_the_bans_and_steps_down() {
    let mut sim = sim(20);
    let a = join(&mut sim, keyed("r", "Alice", false));
    sim.run_for(500);
    let h = join(&mut sim, keyed("r", "Hana", true));
    let m = join(&mut sim, keyed("r", "Mallory", false));
    sim.run_for(3_000);
    let idm = id_of(&sim, m);
    sim.with(h, |e, now| e.remove(now, &idm)).unwrap();
    sim.run_for(3_000);
    sim.crash(a);
    // Mallory's token in a new tab claims the id the crashed coordinator freed.
    let m2 = join(&mut sim, keyed("r", "Mallory", false));
    sim.run_for(1_000);
    assert!(sim.engine(m2).is_authority());
    sim.run_for(25_000);
    assert_eq!(
        sim.engine(m2).status(),
        &Status::Left {
            reason: "kicked".into()
        }
    );
    assert!(sim.engine(h).is_authority());
    assert_eq!(names(&sim, h), ["Hana"]);
}
