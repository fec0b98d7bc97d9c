//! The core on a virtual clock: every input and output, no sockets.

use super::broker::{GARBAGE_LIMIT, IDLE_WAKE};
use super::*;
use crate::metrics::Metrics;
use kibitz_proto::peerjs::{self, MessageType};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn cfg() -> CoreConfig {
    CoreConfig {
        key: "peerjs".into(),
        expire_timeout: Duration::from_secs(5),
        alive_timeout: Duration::from_secs(90),
        concurrent_limit: 3,
        takeover: false,
        msg_rate: 10,
        msg_burst: 20,
        per_ip_connections: 2,
        max_queued_per_dst: 3,
        max_queued_total: 5,
        room_notices: None,
        cluster: false,
    }
}

struct Sim {
    b: Broker,
    t0: Instant,
}

impl Sim {
    fn new(cfg: CoreConfig) -> Self {
        // Virtual time: a fixed origin, advanced only by the test.
        #[allow(clippy::disallowed_methods)]
        let t0 = Instant::now();
        Self {
            b: Broker::new(t0, cfg, Metrics::new()),
            t0,
        }
    }
    fn at(&self, ms: u64) -> Instant {
        self.t0 + Duration::from_millis(ms)
    }
    fn open(&mut self, ms: u64, conn: u64, id: &str, token: &str) -> Vec<Output> {
        let p = OpenParams {
            key: Some("peerjs".into()),
            id: Some(id.into()),
            token: Some(token.into()),
        };
        self.b.handle_open(self.at(ms), ConnId(conn), None, p);
        self.drain()
    }
    fn msg(&mut self, ms: u64, conn: u64, text: &str) -> Vec<Output> {
        self.b.handle_message(self.at(ms), ConnId(conn), text);
        self.drain()
    }
    fn close(&mut self, ms: u64, conn: u64) -> Vec<Output> {
        self.b.handle_close(self.at(ms), ConnId(conn));
        self.drain()
    }
    fn tick(&mut self, ms: u64) -> Vec<Output> {
        self.b.handle_timeout(self.at(ms));
        self.drain()
    }
    /// Every output up to the [`Output::Timeout`] that ends them.
    fn drain(&mut self) -> Vec<Output> {
        std::iter::from_fn(|| match self.b.poll_output() {
            Output::Timeout(_) => None,
            out => Some(out),
        })
        .collect()
    }
    /// The time the drained core asks to be woken at.
    fn timeout(&mut self) -> Instant {
        match self.b.poll_output() {
            Output::Timeout(at) => at,
            out => panic!("undrained output {out:?}"),
        }
    }
}

fn send(conn: u64, text: &str) -> Output {
    Output::Send {
        conn: ConnId(conn),
        text: text.into(),
    }
}
fn close(conn: u64, reason: CloseReason) -> Output {
    Output::Close {
        conn: ConnId(conn),
        reason,
    }
}

#[test]
fn queued_messages_follow_open_in_order() {
    let mut s = Sim::new(cfg());
    assert_eq!(s.open(0, 1, "a", "t"), [send(1, peerjs::OPEN)]);
    assert!(
        s.msg(1, 1, r#"{"type":"OFFER","dst":"b","payload":1}"#)
            .is_empty()
    );
    assert!(
        s.msg(2, 1, r#"{"type":"CANDIDATE","dst":"b","payload":2}"#)
            .is_empty()
    );
    assert_eq!(
        s.open(3, 2, "b", "t"),
        [
            send(2, peerjs::OPEN),
            send(2, r#"{"type":"OFFER","src":"a","dst":"b","payload":1}"#),
            send(2, r#"{"type":"CANDIDATE","src":"a","dst":"b","payload":2}"#),
        ]
    );
    assert_eq!(s.timeout(), s.at(90_000), "queue deadline gone");
}

#[test]
fn one_expire_per_sender_at_the_deadline_and_none_for_offline_senders() {
    let mut s = Sim::new(cfg());
    s.open(0, 1, "a", "t");
    s.open(0, 2, "b", "t");
    s.open(0, 3, "c", "t");
    s.msg(100, 1, r#"{"type":"OFFER","dst":"ghost"}"#);
    s.msg(200, 1, r#"{"type":"OFFER","dst":"ghost"}"#);
    s.msg(300, 2, r#"{"type":"OFFER","dst":"ghost"}"#);
    s.msg(300, 3, r#"{"type":"OFFER","dst":"ghost"}"#);
    s.b.handle_close(s.t0, ConnId(3));
    assert_eq!(s.timeout(), s.at(5100));
    assert!(s.tick(5099).is_empty());
    assert_eq!(
        s.tick(5100),
        [
            send(1, r#"{"type":"EXPIRE","src":"ghost","dst":"a"}"#),
            send(2, r#"{"type":"EXPIRE","src":"ghost","dst":"b"}"#),
        ]
    );
    assert_eq!(s.open(6000, 4, "ghost", "t"), [send(4, peerjs::OPEN)]);
}

#[test]
fn admission_errors_in_reference_order() {
    let mut s = Sim::new(cfg());
    s.b.handle_open(s.at(0), ConnId(9), None, OpenParams::default());
    assert_eq!(
        s.drain(),
        [
            send(9, &peerjs::error_frame(peerjs::MSG_INVALID_PARAMS)),
            close(9, CloseReason::Rejected)
        ]
    );
    let p = OpenParams {
        key: Some("PeerJS".into()),
        id: Some("x".into()),
        token: Some("t".into()),
    };
    s.b.handle_open(s.at(0), ConnId(9), None, p);
    assert_eq!(
        s.drain()[0],
        send(9, &peerjs::error_frame(peerjs::MSG_INVALID_KEY))
    );
    s.open(0, 1, "a", "t1");
    assert_eq!(
        s.open(0, 2, "a", "t2"),
        [send(2, peerjs::ID_TAKEN), close(2, CloseReason::Rejected)]
    );
    s.open(0, 3, "b", "t");
    s.open(0, 4, "c", "t");
    assert_eq!(
        s.open(0, 5, "d", "t")[0],
        send(5, &peerjs::error_frame(peerjs::MSG_LIMIT))
    );
    // Re-attach at the limit succeeds, silently.
    assert!(s.open(0, 6, "a", "t1").is_empty());
}

#[test]
fn reattach_routes_to_the_new_socket_and_old_close_keeps_the_id() {
    let mut s = Sim::new(cfg());
    s.open(0, 1, "a", "t");
    s.open(0, 2, "b", "t");
    assert!(s.open(0, 3, "a", "t").is_empty());
    assert_eq!(
        s.msg(1, 2, r#"{"type":"OFFER","dst":"a"}"#),
        [send(3, r#"{"type":"OFFER","src":"b","dst":"a"}"#)]
    );
    // The old socket still speaks for "a".
    assert_eq!(
        s.msg(1, 1, r#"{"type":"OFFER","dst":"b"}"#),
        [send(2, r#"{"type":"OFFER","src":"a","dst":"b"}"#)]
    );
    s.b.handle_close(s.t0, ConnId(1));
    assert!(s.b.is_registered("a"));
    s.b.handle_close(s.t0, ConnId(3));
    assert!(!s.b.is_registered("a"));
}

#[test]
fn an_ended_registration_speaks_for_nobody() {
    let mut s = Sim::new(cfg());
    s.open(0, 1, "a", "t");
    s.open(0, 2, "a", "t"); // re-attach: 1 is superseded but bound
    s.b.handle_close(s.t0, ConnId(2)); // registration ends
    s.open(0, 3, "a", "other"); // someone else takes the id
    s.open(0, 4, "b", "t");
    // The leftover socket cannot send as the new owner of "a".
    assert!(s.msg(1, 1, r#"{"type":"OFFER","dst":"b"}"#).is_empty());
    assert_eq!(
        s.msg(1, 3, r#"{"type":"OFFER","dst":"b"}"#),
        [send(4, r#"{"type":"OFFER","src":"a","dst":"b"}"#)]
    );
}

#[test]
fn takeover_mode_opens_the_new_socket_and_closes_the_old() {
    let mut s = Sim::new(CoreConfig {
        takeover: true,
        ..cfg()
    });
    s.open(0, 1, "a", "t");
    assert_eq!(
        s.open(0, 2, "a", "t"),
        [close(1, CloseReason::Replaced), send(2, peerjs::OPEN)]
    );
    s.open(0, 3, "b", "t");
    assert!(s.msg(1, 1, r#"{"type":"OFFER","dst":"b"}"#).is_empty());
    s.b.handle_close(s.t0, ConnId(1));
    assert!(s.b.is_registered("a"));
}

#[test]
fn liveness_counts_only_heartbeats() {
    let mut s = Sim::new(cfg());
    s.open(0, 1, "a", "t");
    s.open(0, 2, "b", "t");
    s.msg(60_000, 1, r#"{"type":"HEARTBEAT"}"#);
    s.msg(60_000, 2, r#"{"type":"OFFER","dst":"a"}"#);
    assert_eq!(s.tick(90_000), [close(2, CloseReason::Dead)]);
    assert!(!s.b.is_registered("b") && s.b.is_registered("a"));
    assert_eq!(s.timeout(), s.at(150_000));
    assert_eq!(s.tick(150_000), [close(1, CloseReason::Dead)]);
    assert_eq!(s.timeout(), s.at(150_000) + IDLE_WAKE, "nothing scheduled");
}

#[test]
fn limits_rate_queue_and_ip() {
    let mut s = Sim::new(cfg());
    s.open(0, 1, "a", "t");
    for _ in 0..20 {
        assert!(s.msg(0, 1, r#"{"type":"HEARTBEAT"}"#).is_empty());
    }
    assert_eq!(
        s.msg(0, 1, r#"{"type":"HEARTBEAT"}"#),
        [close(1, CloseReason::RateLimited)]
    );
    // Refill: 10/s.
    assert!(s.msg(1000, 1, r#"{"type":"HEARTBEAT"}"#).is_empty());

    let mut s = Sim::new(cfg());
    s.open(0, 1, "a", "t");
    for i in 0..4 {
        s.msg(i, 1, r#"{"type":"OFFER","dst":"x"}"#);
    }
    for i in 0..4 {
        s.msg(i, 1, r#"{"type":"OFFER","dst":"y"}"#);
    }
    assert_eq!(
        s.b.queued_total, 5,
        "3 for x (per-dst cap), 2 for y (total cap)"
    );

    let mut s = Sim::new(cfg());
    let ip: IpAddr = [127, 0, 0, 9].into();
    for (conn, id) in [(1, "a"), (2, "b"), (3, "c")] {
        let p = OpenParams {
            key: Some("peerjs".into()),
            id: Some(id.into()),
            token: Some("t".into()),
        };
        s.b.handle_open(s.at(0), ConnId(conn), Some(ip), p);
    }
    let out = s.drain();
    assert_eq!(out.len(), 4);
    assert_eq!(out[3], close(3, CloseReason::Rejected));
    s.b.handle_close(s.t0, ConnId(1));
    assert!(s.b.per_ip.get(&ip) == Some(&1));
}

#[test]
fn garbage_is_counted_then_closed() {
    let mut s = Sim::new(CoreConfig {
        msg_burst: 1000,
        ..cfg()
    });
    s.open(0, 1, "a", "t");
    for bad in [
        "nope",
        "null",
        "[1]",
        r#"{"type":"OFFER","dst":5}"#,
        r#"{"type":"BOGUS"}"#,
    ] {
        assert!(s.msg(0, 1, bad).is_empty(), "{bad}");
    }
    for _ in 0..GARBAGE_LIMIT - 4 {
        s.msg(0, 1, "\u{0}");
    }
    assert_eq!(s.msg(0, 1, "x"), [close(1, CloseReason::Garbage)]);
}

#[test]
fn leave_and_expire_to_offline_are_dropped() {
    let mut s = Sim::new(cfg());
    s.open(0, 1, "a", "t");
    s.msg(0, 1, r#"{"type":"LEAVE","dst":"ghost"}"#);
    s.msg(0, 1, r#"{"type":"EXPIRE","dst":"ghost"}"#);
    s.msg(0, 1, r#"{"type":"LEAVE"}"#);
    assert_eq!(s.b.queued_total, 0);
    assert!(
        s.b.is_registered("a"),
        "LEAVE without dst does not deregister"
    );
    assert_eq!(
        s.msg(0, 1, r#"{"type":"LEAVE","dst":"a"}"#),
        [send(1, r#"{"type":"LEAVE","src":"a","dst":"a"}"#)]
    );
}

fn notices() -> CoreConfig {
    CoreConfig {
        room_notices: Some(RoomNotices {
            grace: Duration::from_secs(1),
            expire: Duration::from_secs(1),
        }),
        concurrent_limit: 10,
        ..cfg()
    }
}

const ROOM: &str = "kbz-v1-standup";

/// The authority holds the room id; two members signalled with it, one did not.
fn room(cfg: CoreConfig) -> Sim {
    let mut s = Sim::new(cfg);
    s.open(0, 1, ROOM, "auth");
    s.open(0, 2, "p2", "t");
    s.open(0, 3, "p3", "t");
    s.open(0, 4, "p4", "t");
    s.msg(10, 2, r#"{"type":"OFFER","dst":"kbz-v1-standup"}"#);
    s.msg(10, 1, r#"{"type":"ANSWER","dst":"p3"}"#);
    s
}

fn leave(conn: u64, dst: &str) -> Output {
    send(
        conn,
        &format!(r#"{{"type":"LEAVE","src":"{ROOM}","dst":"{dst}"}}"#),
    )
}

#[test]
fn room_notices_are_off_by_default() {
    let mut s = room(cfg());
    assert!(s.close(100, 1).is_empty());
    assert!(s.tick(10_000).is_empty());
}

#[test]
fn room_notice_after_the_grace_to_everyone_who_signalled() {
    let mut s = room(notices());
    assert!(s.close(100, 1).is_empty());
    assert_eq!(s.timeout(), s.at(1100));
    assert!(s.tick(1099).is_empty());
    assert_eq!(s.tick(1100), [leave(2, "p2"), leave(3, "p3")]);
    assert!(s.tick(5000).is_empty(), "once");
}

#[test]
fn a_blip_under_the_grace_sends_nothing_and_keeps_the_contacts() {
    let mut s = room(notices());
    s.close(100, 1);
    assert_eq!(s.open(600, 5, ROOM, "auth"), [send(5, peerjs::OPEN)]);
    assert!(s.tick(2000).is_empty());
    // The same client's peers are still remembered for its next close.
    s.close(3000, 5);
    assert_eq!(s.tick(4000), [leave(2, "p2"), leave(3, "p3")]);
}

#[test]
fn a_new_owner_inside_the_grace_cancels_the_notice_and_starts_afresh() {
    let mut s = room(notices());
    s.close(100, 1);
    s.open(600, 5, ROOM, "someone-else");
    assert!(s.tick(2000).is_empty());
    assert!(s.close(3000, 5).is_empty());
    assert!(
        s.tick(5000).is_empty(),
        "nobody signalled with the new owner"
    );
}

#[test]
fn reattach_keeps_the_contacts_and_the_old_socket_closing_changes_nothing() {
    let mut s = room(notices());
    assert!(s.open(50, 5, ROOM, "auth").is_empty(), "silent re-attach");
    assert!(s.close(100, 1).is_empty());
    assert!(s.tick(5000).is_empty(), "the id is still held");
    s.close(6000, 5);
    assert_eq!(s.tick(7000), [leave(2, "p2"), leave(3, "p3")]);
}

#[test]
fn other_ids_never_get_notices_and_room_queues_expire_sooner() {
    let mut s = Sim::new(notices());
    s.open(0, 1, "plain", "t");
    s.open(0, 2, "p2", "t");
    s.msg(10, 2, r#"{"type":"OFFER","dst":"plain"}"#);
    s.close(100, 1);
    assert!(s.tick(10_000).is_empty());
    s.msg(20_000, 2, r#"{"type":"OFFER","dst":"kbz-v1-gone"}"#);
    s.msg(20_000, 2, r#"{"type":"OFFER","dst":"plain-gone"}"#);
    assert_eq!(
        s.tick(21_000),
        [send(
            2,
            r#"{"type":"EXPIRE","src":"kbz-v1-gone","dst":"p2"}"#
        )]
    );
    assert_eq!(
        s.tick(25_000),
        [send(
            2,
            r#"{"type":"EXPIRE","src":"plain-gone","dst":"p2"}"#
        )]
    );
}

#[test]
fn a_dead_room_authority_also_gets_a_notice() {
    let mut s = room(notices());
    // Members heartbeat; the authority does not.
    for ms in [30_000, 60_000, 89_000] {
        for c in [2, 3, 4] {
            s.msg(ms, c, r#"{"type":"HEARTBEAT"}"#);
        }
    }
    assert_eq!(s.tick(90_000), [close(1, CloseReason::Dead)]);
    assert_eq!(s.tick(91_000), [leave(2, "p2"), leave(3, "p3")]);
}

// ---- cluster mode: the registry's side is played by the test ----

fn clustered() -> CoreConfig {
    CoreConfig {
        cluster: true,
        concurrent_limit: 10,
        ..cfg()
    }
}

fn claim_out(conn: u64, id: &str, token: &str) -> Output {
    Output::Claim {
        conn: ConnId(conn),
        id: Arc::from(id),
        token: token.into(),
    }
}

impl Sim {
    fn claim(&mut self, ms: u64, conn: u64, c: Claim) -> Vec<Output> {
        self.b.handle_claim(self.at(ms), ConnId(conn), c);
        self.drain()
    }
    /// `conn` opens as `id` (token "t") at 0 and the registry grants it as registration `reg`.
    fn registered(&mut self, conn: u64, id: &str, reg: u64) {
        self.open(0, conn, id, "t");
        let queued = vec![];
        self.claim(0, conn, Claim::New { reg, queued });
    }
}

#[test]
fn cluster_claims_then_opens_with_queued_then_early_messages() {
    let mut s = Sim::new(clustered());
    assert_eq!(s.open(0, 1, "a", "t"), [claim_out(1, "a", "t")]);
    // Sent before the registry answered: kept, and relayed after OPEN and the queue.
    assert!(
        s.msg(1, 1, r#"{"type":"OFFER","dst":"a","payload":1}"#)
            .is_empty()
    );
    let queued = vec![("x".to_owned(), "queued-frame".to_owned())];
    assert_eq!(
        s.claim(2, 1, Claim::New { reg: 7, queued }),
        [
            send(1, peerjs::OPEN),
            send(1, "queued-frame"),
            send(1, r#"{"type":"OFFER","src":"a","dst":"a","payload":1}"#),
        ]
    );
    assert_eq!(s.b.registrations(), [(Arc::from("a"), "t".to_owned(), 7)]);
    // A local id with another token is refused without asking the registry.
    assert_eq!(
        s.open(3, 2, "a", "u"),
        [send(2, peerjs::ID_TAKEN), close(2, CloseReason::Rejected)]
    );
    // Closing releases the registration.
    assert_eq!(
        s.close(4, 1),
        [Output::Release {
            id: Arc::from("a"),
            reg: 7
        }]
    );
}

#[test]
fn cluster_refusals_and_a_claim_answered_after_the_close() {
    let mut s = Sim::new(clustered());
    s.open(0, 1, "a", "t");
    assert_eq!(
        s.claim(1, 1, Claim::Taken),
        [send(1, peerjs::ID_TAKEN), close(1, CloseReason::Rejected)]
    );
    s.open(0, 2, "b", "t");
    assert_eq!(
        s.claim(1, 2, Claim::Unavailable("down")),
        [
            send(2, &peerjs::error_frame("down")),
            close(2, CloseReason::Rejected)
        ]
    );
    s.open(0, 3, "c", "t");
    s.close(1, 3);
    let queued = vec![("x".to_owned(), "f".to_owned())];
    let out = s.claim(2, 3, Claim::New { reg: 4, queued });
    assert_eq!(
        out[0],
        Output::Release {
            id: Arc::from("c"),
            reg: 4
        }
    );
    assert!(
        matches!(&out[1], Output::Forward(f) if f.dst == "c" && f.requeue && &*f.src == "x"),
        "{out:?}"
    );
    assert!(!s.b.is_registered("c"));
}

#[test]
fn cluster_relays_locally_or_forwards() {
    let mut s = Sim::new(clustered());
    s.registered(1, "a", 1);
    s.registered(2, "b", 2);
    // Same node: straight through.
    assert_eq!(
        s.msg(1, 1, r#"{"type":"OFFER","dst":"b"}"#),
        [send(2, r#"{"type":"OFFER","src":"a","dst":"b"}"#)]
    );
    // Elsewhere or offline: the registry decides.
    let out = s.msg(1, 1, r#"{"type":"CANDIDATE","dst":"far"}"#);
    assert_eq!(
        out,
        [Output::Forward(Forward {
            kind: MessageType::Candidate,
            src: Arc::from("a"),
            dst: "far".into(),
            text: r#"{"type":"CANDIDATE","src":"a","dst":"far"}"#.into(),
            ttl: Duration::from_secs(5),
            requeue: false,
            notice: false,
            deadline: None,
        })]
    );
    // From another node: delivered here, or handed back if the id left.
    s.b.handle_remote(MessageType::Offer, "far", "b", "frame".into());
    assert_eq!(s.drain(), [send(2, "frame")]);
    s.b.handle_remote(MessageType::Offer, "far", "gone", "frame".into());
    assert!(matches!(&s.drain()[..], [Output::Forward(f)] if f.requeue));
    // An expired queue: one EXPIRE per sender, through the normal relay.
    s.b.handle_expired(s.at(2), "ghost", &["a".to_owned(), "far".to_owned()]);
    let out = s.drain();
    assert_eq!(
        out[0],
        send(1, r#"{"type":"EXPIRE","src":"ghost","dst":"a"}"#)
    );
    assert!(matches!(&out[1], Output::Forward(f) if f.kind == MessageType::Expire));
}

#[test]
fn cluster_moved_id_keeps_the_old_socket_speaking_but_not_delivered_to() {
    let mut s = Sim::new(clustered());
    s.registered(1, "a", 1);
    s.registered(2, "b", 2);
    s.b.handle_moved(s.at(1), "a");
    assert!(s.drain().is_empty());
    assert!(!s.b.is_registered("a"));
    // Still speaks for "a" ...
    assert_eq!(
        s.msg(2, 1, r#"{"type":"OFFER","dst":"b"}"#),
        [send(2, r#"{"type":"OFFER","src":"a","dst":"b"}"#)]
    );
    // ... but messages for "a" go to the registry, and its close releases nothing.
    assert!(matches!(
        &s.msg(2, 2, r#"{"type":"OFFER","dst":"a"}"#)[..],
        [Output::Forward(_)]
    ));
    assert!(s.close(3, 1).is_empty());
    // An id lost after an outage: closed, nothing released.
    s.b.handle_lost(s.at(4), "b");
    assert_eq!(s.drain(), [close(2, CloseReason::Lost)]);
    assert!(s.close(5, 2).is_empty());
}

#[test]
fn cluster_takeover_closes_the_moved_socket() {
    let mut s = Sim::new(CoreConfig {
        takeover: true,
        ..clustered()
    });
    s.registered(1, "a", 1);
    s.b.handle_moved(s.at(1), "a");
    assert_eq!(s.drain(), [close(1, CloseReason::Replaced)]);
    // Re-attached here from elsewhere with takeover: OPEN.
    s.open(2, 3, "a", "t");
    assert_eq!(
        s.claim(
            2,
            3,
            Claim::Reattach {
                reg: 1,
                queued: vec![]
            }
        ),
        [send(3, peerjs::OPEN)]
    );
}

#[test]
fn poll_output_ends_in_a_timeout_every_time() {
    let mut s = Sim::new(cfg());
    // Fresh: nothing scheduled, so a wake-up well after the start.
    assert_eq!(s.b.poll_output(), Output::Timeout(s.at(0) + IDLE_WAKE));
    s.b.handle_open(
        s.at(10),
        ConnId(1),
        None,
        OpenParams {
            key: Some("peerjs".into()),
            id: Some("a".into()),
            token: Some("t".into()),
        },
    );
    assert_eq!(s.b.poll_output(), send(1, peerjs::OPEN));
    assert_eq!(s.b.poll_output(), Output::Timeout(s.at(90_010)));
    assert_eq!(s.b.poll_output(), Output::Timeout(s.at(90_010)), "again");
    // Inputs from the past (a concurrent caller's older `now`) do not move time back.
    s.b.handle_close(s.at(5), ConnId(1));
    assert_eq!(s.timeout(), s.at(10) + IDLE_WAKE);
}
