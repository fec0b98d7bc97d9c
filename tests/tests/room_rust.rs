//! Rust participants in one room through our broker, on real WebRTC data channels
//! (kibitz-join over kibitz-rtc), everything on 127.0.0.1.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use kibitz_client::{Event, HostCommit, Lane, Participant, RoomConfig, Status};
use kibitz_e2e::{Config, start};
use kibitz_join::{HostAction, RoomHandle, RoomOptions};
use kibitz_proto::content::Content;
use kibitz_proto::grants::{Grant, Perceive};
use kibitz_rtc::{BrokerConfig, Identity};
use p256::ecdsa::SigningKey;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::{Instant, timeout};

struct Member {
    handle: RoomHandle,
    events: UnboundedReceiver<Event>,
    seen: Vec<Event>,
}

fn options(port: u16) -> RoomOptions {
    RoomOptions {
        media_relay: None,
        broker: BrokerConfig::plain("127.0.0.1", port),
        relay: None,
        identity: Identity::generate().unwrap(),
    }
}

fn host_key() -> SigningKey {
    SigningKey::from_bytes(&[7u8; 32].into()).unwrap()
}

fn config(room: &str, name: &str, holds_key: bool) -> RoomConfig {
    let mut c = RoomConfig::new(room, name, &format!("tok-{name}"));
    c.host = HostCommit::Key(*host_key().verifying_key());
    if holds_key {
        c.host_key = Some(host_key());
    }
    c.seed = name.len() as u64 + 1;
    c
}

fn join(port: u16, cfg: RoomConfig) -> Member {
    let (handle, events) = kibitz_join::start(cfg, options(port));
    handle.join();
    Member {
        handle,
        events,
        seen: Vec::new(),
    }
}

impl Member {
    /// Waits until `pred` holds for an event, keeping everything seen.
    async fn until(&mut self, what: &str, wait: Duration, pred: impl Fn(&Event) -> bool) -> Event {
        if let Some(e) = self.seen.iter().find(|e| pred(e)) {
            return e.clone();
        }
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(Some(e)) = timeout(left, self.events.recv()).await else {
                panic!("no {what} within {wait:?}; saw {:?}", self.seen);
            };
            self.seen.push(e.clone());
            if pred(&e) {
                return e;
            }
        }
    }

    async fn roster(&mut self, names: &[&str], wait: Duration) -> Vec<Participant> {
        let want: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let e = self
            .until(&format!("roster {names:?}"), wait, |e| match e {
                Event::Participants(p) => {
                    let mut got: Vec<String> = p.iter().map(|p| p.name.clone()).collect();
                    got.sort();
                    got == want
                }
                _ => false,
            })
            .await;
        match e {
            Event::Participants(p) => p,
            _ => unreachable!(),
        }
    }
}

fn chat_text(e: &Event) -> Option<(String, bool)> {
    match e {
        Event::Message(m) => match &m.content {
            Content::Chat(c) => Some((c.text.clone(), m.direct)),
            _ => None,
        },
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_rust_participants_chat_moderate_and_migrate() {
    let broker = start(Config::default()).await;
    let port = broker.addr.port();
    let long = Duration::from_secs(20);
    let mut alice = join(port, config("rust room", "Alice", false));
    alice
        .until("authority", long, |e| {
            matches!(e, Event::Status(Status::Authority))
        })
        .await;
    let mut hana = join(port, config("rust room", "Hana", true));
    let mut bob = join(port, config("rust room", "Bob", false));
    let t0 = Instant::now();
    for m in [&mut alice, &mut hana, &mut bob] {
        m.roster(&["Alice", "Bob", "Hana"], long).await;
    }
    eprintln!("three rosters converged in {:?}", t0.elapsed());

    // The data mesh as the web client builds it: a sig and a bulk channel per pair, each a
    // WebRTC connection of its own (bulk is labelled so, and dialled after the other's cap).
    let deadline = Instant::now() + long;
    for m in [&alice, &hana, &bob] {
        let me = m.handle.voice_id().await.unwrap().unwrap();
        loop {
            let links = m.handle.mesh_links().await.unwrap();
            let ps = m.handle.participants().await.unwrap();
            let whole = ps.iter().filter(|p| p.id != me).all(|p| {
                [Lane::Sig, Lane::Bulk].iter().all(|lane| {
                    links
                        .iter()
                        .any(|l| l.remote == p.id && l.lane == *lane && l.open)
                })
            });
            if whole && ps.len() == 3 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "mesh of {me} never whole: {links:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    eprintln!(
        "sig and bulk channels open between all three {:?} after launch",
        t0.elapsed()
    );

    // Chat to everyone, and a directed message to Bob only (the mesh is up once both ends
    // see each other; retry until it is).
    let bob_id = bob.handle.voice_id().await.unwrap().unwrap();
    let deadline = Instant::now() + long;
    while alice.handle.chat("hello room", None).await.unwrap() != Ok(2) {
        assert!(Instant::now() < deadline, "mesh never reached both");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    while hana.handle.chat("just you", Some(&bob_id)).await.unwrap() != Ok(1) {
        assert!(Instant::now() < deadline, "Hana's link to Bob never opened");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bob.until("chat", long, |e| {
        chat_text(e) == Some(("hello room".into(), false))
    })
    .await;
    bob.until("dm", long, |e| {
        chat_text(e) == Some(("just you".into(), true))
    })
    .await;
    hana.until("chat", long, |e| {
        chat_text(e) == Some(("hello room".into(), false))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    while let Ok(e) = alice.events.try_recv() {
        alice.seen.push(e);
    }
    assert!(
        !alice
            .seen
            .iter()
            .any(|e| chat_text(e).is_some_and(|(t, _)| t == "just you"))
    );

    // The key holder was made host; it kicks Bob, who stays out when he comes back.
    let hana_id = hana.handle.voice_id().await.unwrap().unwrap();
    let ps = alice.roster(&["Alice", "Bob", "Hana"], long).await;
    let deadline = Instant::now() + long;
    loop {
        let ps = alice.handle.participants().await.unwrap();
        if ps.iter().any(|p| p.is_host && p.id == hana_id) {
            break;
        }
        assert!(Instant::now() < deadline, "Hana never became host: {ps:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(ps);

    // The host takes chat away from Bob: every peer enforces it, so Alice's next chat goes
    // to Hana only.
    let mut deaf = Grant::full();
    deaf.perceive.retain(|p| *p != Perceive::ReadChat);
    hana.handle.set_grant(&bob_id, deaf.clone()).await.unwrap();
    let deadline = Instant::now() + long;
    loop {
        let ps = alice.handle.participants().await.unwrap();
        if ps.iter().any(|p| p.id == bob_id && p.grant == deaf) {
            break;
        }
        assert!(Instant::now() < deadline, "Alice never applied Bob's grant");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(alice.handle.chat("not for Bob", None).await.unwrap(), Ok(1));
    hana.until("chat", long, |e| {
        chat_text(e) == Some(("not for Bob".into(), false))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    while let Ok(e) = bob.events.try_recv() {
        bob.seen.push(e);
    }
    assert!(
        !bob.seen
            .iter()
            .any(|e| chat_text(e).is_some_and(|(t, _)| t == "not for Bob"))
    );

    hana.handle
        .host(HostAction::Remove(bob_id.clone()))
        .await
        .unwrap();
    bob.until(
        "kick",
        long,
        |e| matches!(e, Event::Status(Status::Left { reason }) if reason == "kicked"),
    )
    .await;
    alice.roster(&["Alice", "Hana"], long).await;
    let mut bob2 = join(port, config("rust room", "Bob", false));
    bob2.until(
        "kick again",
        long,
        |e| matches!(e, Event::Status(Status::Left { reason }) if reason == "kicked"),
    )
    .await;

    // The coordinator goes away: Hana takes over.
    let t_leave = Instant::now();
    drop(alice);
    hana.until("authority", Duration::from_secs(30), |e| {
        matches!(e, Event::Status(Status::Authority))
    })
    .await;
    eprintln!(
        "took over {:?} after the coordinator dropped",
        t_leave.elapsed()
    );
    hana.roster(&["Hana"], long).await;
}

/// A browser member (official peerjs in Chromium, speaking the room as KIBITZ.md describes
/// the web client) next to a Rust member: both mesh channels, chat both ways on bulk, the
/// Rust member's keepalive never lets the web client's watchdog trip, and `bye` on leaving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_member_sees_the_mesh_the_web_client_expects() {
    let broker = start(Config::default()).await;
    let port = broker.addr.port();
    let mut alice = join(port, config("browser-room", "Alice", false));
    alice
        .until("authority", Duration::from_secs(20), |e| {
            matches!(e, Event::Status(Status::Authority))
        })
        .await;
    let probe = alice.handle.clone();
    // Alice answers the page: "hello rust" → "hello browser"; "please leave" → leaves.
    let rust = tokio::spawn(async move {
        while let Some(e) = alice.events.recv().await {
            match chat_text(&e).map(|(t, _)| t).as_deref() {
                Some("hello rust") => {
                    let _ = alice.handle.chat("hello browser", None).await;
                }
                Some("please leave") => {
                    alice.handle.leave().await;
                    return true;
                }
                _ => {}
            }
        }
        false
    });
    let port = port.to_string();
    let res = kibitz_e2e::node_scenarios(
        "node/room-browser.mjs",
        &[
            "--host",
            "127.0.0.1",
            "--port",
            &port,
            "--room",
            "browser-room",
        ],
    )
    .await;
    if let Err(out) = res {
        let links = probe.mesh_links().await;
        let ps = probe.participants().await;
        panic!("browser member failed:\n{out}\nAlice's mesh: {links:?}\nroster: {ps:?}");
    }
    assert!(rust.await.unwrap(), "Alice was asked to leave");
}
