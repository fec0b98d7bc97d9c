//! No lost lines while a link opens: content for a member whose mesh link is still opening
//! waits (bounded) and goes out in order once it opens.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use kibitz_client::{AuditKind, ConnId, Event, Input, Lane, NetCmd, NetEvent};
use kibitz_proto::content::Content;

fn chats(frames: &[NetCmd], conn: ConnId) -> Vec<String> {
    frames
        .iter()
        .filter_map(|c| match c {
            NetCmd::Send { conn: c, frame } if *c == conn => {
                let v = frame.get("text")?.as_str()?.to_owned();
                Some(v)
            }
            _ => None,
        })
        .collect()
}

fn sig_dial(cmds: &[NetCmd]) -> ConnId {
    cmds.iter()
        .find_map(|c| match c {
            NetCmd::Connect {
                conn, label: None, ..
            } => Some(*conn),
            _ => None,
        })
        .expect("the sig dial")
}

#[test]
fn chats_wait_for_the_link_and_go_out_in_order() {
    let (mut e, _, cmds) = authority_with_member_on();
    let sig = sig_dial(&cmds);
    for (i, t) in ["one", "two", "three"].iter().enumerate() {
        assert_eq!(e.chat(at(10 + i as u64), t, None), Ok(1));
    }
    let (cmds, _) = drain(&mut e);
    assert!(
        chats(&cmds, sig).is_empty(),
        "nothing before the link opens"
    );
    e.handle_input(
        at(200),
        Input::Net(NetEvent::Open {
            conn: sig,
            fingerprint: None,
        }),
    );
    assert_eq!(e.chat(at(201), "four", None), Ok(1));
    let (cmds, _) = drain(&mut e);
    assert_eq!(chats(&cmds, sig), ["one", "two", "three", "four"]);
    assert_eq!(e.unsent_count(), 0);
}

#[test]
fn the_queue_is_bounded_in_size_and_age() {
    let (mut e, _, _) = authority_with_member_on();
    for i in 0..70 {
        e.chat(at(10), &format!("m{i}"), None).unwrap();
    }
    drain(&mut e);
    assert_eq!(e.unsent_count(), 6, "beyond 64 are dropped and counted");
    let unsent = e
        .agent_audit()
        .iter()
        .filter(
            |a| matches!(&a.kind, AuditKind::Unsent { to, what } if to == "vb" && what == "chat"),
        )
        .count();
    assert_eq!(unsent, 6);
    e.handle_input(at(10_009), Input::Timeout);
    drain(&mut e);
    assert_eq!(e.unsent_count(), 6, "not before 10 s");
    e.handle_input(at(10_010), Input::Timeout);
    drain(&mut e);
    assert_eq!(e.unsent_count(), 70, "after 10 s the rest go too");
}

#[test]
fn a_chat_right_after_a_member_appears_is_delivered_once_and_in_order() {
    for seed in 0..8 {
        let mut sim = sim(100 + seed);
        let a = join(&mut sim, cfg("r", "Alice"));
        sim.run_for(1_000);
        let b = join(&mut sim, cfg("r", "Bob"));
        // The moment Alice's roster lists Bob, before any mesh link between them is open.
        let mut steps = 0;
        while sim.engine(a).participants().len() < 2 {
            sim.run_for(1);
            steps += 1;
            assert!(steps < 5_000, "Bob never joined");
        }
        assert!(
            !sim.engine(a)
                .mesh_links()
                .iter()
                .any(|l| l.open && l.lane == Lane::Sig),
            "the link is still opening"
        );
        assert_eq!(sim.with(a, |e, now| e.chat(now, "first", None)), Ok(1));
        sim.run_for(5);
        assert_eq!(sim.with(a, |e, now| e.chat(now, "second", None)), Ok(1));
        sim.run_for(3_000);
        assert_eq!(sim.with(a, |e, now| e.chat(now, "third", None)), Ok(1));
        sim.run_for(1_000);
        let got: Vec<String> = sim
            .events(b)
            .iter()
            .filter_map(|(_, e)| match e {
                Event::Message(m) => match &m.content {
                    Content::Chat(c) => Some(c.text.clone()),
                    _ => None,
                },
                _ => None,
            })
            .collect();
        assert_eq!(got, ["first", "second", "third"], "seed {seed}");
        assert_eq!(sim.engine(a).unsent_count(), 0);
    }
}

#[test]
fn a_member_leaving_drops_its_queue() {
    let (mut e, _, _) = authority_with_member_on();
    e.chat(at(10), "hello", None).unwrap();
    drain(&mut e);
    // Bob's presence link closes: the authority drops him from the roster.
    e.handle_input(
        at(20),
        Input::Net(NetEvent::Closed {
            conn: ConnId::incoming(1),
        }),
    );
    drain(&mut e);
    assert_eq!(e.unsent_count(), 1);
}
