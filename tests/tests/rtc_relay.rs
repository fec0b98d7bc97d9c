//! Relay-only (`iceTransportPolicy: "relay"`) Rust peers (`kibitz-rtc`) through a local coturn
//! with credentials from our `/api/turn`: they connect through the relay; with bad credentials
//! or coturn stopped they do not connect at all (fail-closed). Needs the Debian package
//! `coturn`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)]
#[path = "../turn/api.rs"]
mod api;
#[allow(dead_code)]
#[path = "../turn/coturn.rs"]
mod coturn;

use std::time::Duration;

use coturn::Coturn;
use kibitz_e2e::{Config, start};
use kibitz_rtc::{
    BrokerConfig, CloseReason, ConnectOptions, Event, Events, Identity, Message, PackValue, Peer,
    PeerHandle, PeerOptions, RelayConfig,
};
use tokio::time::Instant;

const SECRET: &str = "kibitz-rtc-relay-secret";

/// The first event matching `want` within 15 s (others are skipped).
async fn next(ev: &mut Events, want: impl FnMut(&Event) -> bool) -> Event {
    kibitz_e2e::next_matching(ev, Duration::from_secs(15), want).await
}

async fn peer(
    port: u16,
    id: &str,
    relay: Option<RelayConfig>,
    open_timeout: Duration,
) -> (PeerHandle, Events) {
    let mut o = PeerOptions::new(
        BrokerConfig::plain("127.0.0.1", port),
        Identity::generate().unwrap(),
    );
    o.id = Some(id.into());
    o.relay = relay;
    o.open_timeout = open_timeout;
    let (h, mut ev) = Peer::connect(o).await.unwrap();
    next(&mut ev, |e| matches!(e, Event::Open { .. })).await;
    (h, ev)
}

/// The relay as a client reads it from `/api/turn`'s raw answer.
async fn relay_from(api: &api::Api) -> RelayConfig {
    let (status, body) = api::get(api.addr, "/api/turn").await;
    assert_eq!(status, 200, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    RelayConfig::from_ice_servers(&body).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_only_peers_connect_through_coturn_and_fail_closed_without_it() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let turn = Coturn::start(&[SECRET]).await;
    let api = api::start(&[SECRET], turn.port).await;
    let relay = relay_from(&api).await;
    assert_eq!(relay.server, turn.addr());
    let broker = start(Config::default()).await;
    let port = broker.addr.port();

    // Both relay-only.
    let (alice, mut a_ev) = peer(port, "alice", Some(relay.clone()), Duration::from_secs(10)).await;
    let (bob, mut b_ev) = peer(port, "bob", Some(relay.clone()), Duration::from_secs(10)).await;
    let t = Instant::now();
    let c = alice
        .connect("bob", ConnectOptions::default())
        .await
        .unwrap();
    next(
        &mut a_ev,
        |e| matches!(e, Event::ConnOpen { conn, .. } if *conn == c),
    )
    .await;
    println!("relay-only OFFER -> open: {:?}", t.elapsed());
    let big = PackValue::Bin((0..50_000).map(|i| (i % 253) as u8).collect());
    alice.send(c, Message::Pack(big.clone())).await.unwrap();
    let Event::Data { conn: bc, value } =
        next(&mut b_ev, |e| matches!(e, Event::Data { .. })).await
    else {
        unreachable!()
    };
    assert_eq!(value, Message::Pack(big));
    bob.send(bc, Message::Pack("back".into())).await.unwrap();
    next(&mut a_ev, |e| matches!(e, Event::Data { .. })).await;
    for what in ["ALLOCATE", "CHANNEL_BIND"] {
        let line = format!(
            "user <{}>: incoming packet {what} processed, success",
            relay.username
        );
        assert!(
            turn.logged(&line, Duration::from_secs(3)).await,
            "coturn did not log {what}:\n{}",
            turn.log()
        );
    }

    // Relay-only on one side, direct on the other: still connects (through the relay).
    let (carol, mut c_ev) = peer(port, "carol", None, Duration::from_secs(10)).await;
    let c2 = alice
        .connect("carol", ConnectOptions::default())
        .await
        .unwrap();
    next(
        &mut a_ev,
        |e| matches!(e, Event::ConnOpen { conn, .. } if *conn == c2),
    )
    .await;
    alice
        .send(c2, Message::Pack("via relay".into()))
        .await
        .unwrap();
    next(&mut c_ev, |e| matches!(e, Event::Data { .. })).await;

    // Wrong credential: refused by coturn, the connection fails at once.
    let bad = RelayConfig {
        credential: "not-the-password".into(),
        ..relay.clone()
    };
    let (mallory, mut m_ev) = peer(port, "mallory", Some(bad), Duration::from_secs(10)).await;
    let mc = mallory
        .connect("carol", ConnectOptions::default())
        .await
        .unwrap();
    match next(
        &mut m_ev,
        |e| matches!(e, Event::ConnClosed { conn, .. } if *conn == mc),
    )
    .await
    {
        Event::ConnClosed {
            reason: CloseReason::Failed(why),
            ..
        } => assert!(why.contains("401"), "{why}"),
        other => panic!("{other:?}"),
    }

    // coturn stopped: relay-only peers never connect, not even directly.
    drop(turn);
    let (dave, mut d_ev) = peer(port, "dave", Some(relay.clone()), Duration::from_secs(3)).await;
    let dc = dave
        .connect("carol", ConnectOptions::default())
        .await
        .unwrap();
    let e = next(&mut d_ev, |e| {
        matches!(e, Event::ConnOpen { .. } | Event::ConnClosed { .. })
    })
    .await;
    assert!(
        matches!(e, Event::ConnClosed { conn, reason: CloseReason::Timeout } if conn == dc),
        "{e:?}"
    );
    for h in [alice, bob, carol, mallory, dave] {
        h.destroy();
    }
}
