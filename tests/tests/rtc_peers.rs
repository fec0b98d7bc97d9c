//! Two Rust peers (`kibitz-rtc`) through our broker on 127.0.0.1: BinaryPack (one message
//! chunked), JSON and raw data connections, a shared DTLS identity, reconnect, bad input.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use kibitz_e2e::{Config, start};
use kibitz_rtc::{
    BrokerConfig, CloseReason, ConnId, ConnectOptions, Event, Events, Identity, Message, PackValue,
    Peer, PeerHandle, PeerOptions, Serialization,
};
use tokio::time::Instant;

async fn peer(port: u16, id: Option<&str>, identity: &Identity) -> (PeerHandle, Events) {
    let mut opts = PeerOptions::new(BrokerConfig::plain("127.0.0.1", port), identity.clone());
    opts.id = id.map(str::to_owned);
    let (h, mut ev) = Peer::connect(opts).await.expect("peer connects");
    let open = next(&mut ev, |e| matches!(e, Event::Open { .. })).await;
    assert_eq!(
        open,
        Event::Open {
            id: h.id().to_owned()
        }
    );
    (h, ev)
}

/// The first event matching `want` within 10 s (others are skipped).
async fn next(ev: &mut Events, want: impl FnMut(&Event) -> bool) -> Event {
    kibitz_e2e::next_matching(ev, Duration::from_secs(10), want).await
}

async fn data(ev: &mut Events, conn: ConnId) -> Message {
    match next(
        ev,
        |e| matches!(e, Event::Data { conn: c, .. } if *c == conn),
    )
    .await
    {
        Event::Data { value, .. } => value,
        _ => unreachable!(),
    }
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 % 256) as u8).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_rust_peers_binary_json_raw() {
    let broker = start(Config::default()).await;
    let port = broker.addr.port();
    let shared = Identity::generate().unwrap();
    let other = Identity::generate().unwrap();
    // Alice asks the broker for an id; Bob claims his.
    let (alice, mut a_ev) = peer(port, None, &shared).await;
    let (bob, mut b_ev) = peer(port, Some("kbz-v1-room"), &other).await;
    assert_eq!(alice.fingerprint(), shared.fingerprint());

    // binary, Alice offers.
    let started = Instant::now();
    let a_conn = alice
        .connect(
            "kbz-v1-room",
            ConnectOptions {
                reliable: true,
                metadata: Some(serde_json::json!({"hello": "world"})),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let Event::Connection {
        conn: b_conn,
        remote,
        info,
    } = next(&mut b_ev, |e| matches!(e, Event::Connection { .. })).await
    else {
        unreachable!()
    };
    assert_eq!(remote, alice.id());
    assert_eq!(info.serialization, Serialization::Binary);
    assert!(info.reliable);
    assert_eq!(info.label, info.connection_id);
    assert!(info.connection_id.starts_with("dc_"));
    assert_eq!(info.metadata, Some(serde_json::json!({"hello": "world"})));
    let Event::ConnOpen {
        remote_fingerprint, ..
    } = next(
        &mut a_ev,
        |e| matches!(e, Event::ConnOpen { conn, .. } if *conn == a_conn),
    )
    .await
    else {
        unreachable!()
    };
    println!("binary OFFER -> open: {:?}", started.elapsed());
    assert_eq!(remote_fingerprint, other.fingerprint());
    let Event::ConnOpen {
        remote_fingerprint, ..
    } = next(
        &mut b_ev,
        |e| matches!(e, Event::ConnOpen { conn, .. } if *conn == b_conn),
    )
    .await
    else {
        unreachable!()
    };
    assert_eq!(remote_fingerprint, shared.fingerprint());
    let (_, _, fp) = bob.conn_info(b_conn).await.unwrap();
    assert_eq!(fp.as_deref(), Some(shared.fingerprint()));

    let nested = PackValue::Map(vec![
        ("n".into(), PackValue::Int(42)),
        ("f".into(), PackValue::Float(-1.5)),
        (
            "list".into(),
            PackValue::Array(vec![1i64.into(), "two".into(), PackValue::Nil]),
        ),
    ]);
    let big = PackValue::Bin(pattern(100_000)); // 7 chunks
    for v in ["hello ✓".into(), nested.clone(), big.clone()] {
        alice.send(a_conn, Message::Pack(v.clone())).await.unwrap();
        assert_eq!(data(&mut b_ev, b_conn).await, Message::Pack(v));
    }
    let back = PackValue::Str("x".repeat(20_000)); // chunked the other way
    bob.send(b_conn, Message::Pack(back.clone())).await.unwrap();
    assert_eq!(data(&mut a_ev, a_conn).await, Message::Pack(back));
    // A wrong kind for the serialization is refused locally.
    assert!(
        alice
            .send(a_conn, Message::Text("no".into()))
            .await
            .is_err()
    );

    // Throughput: 4 MB of 16 KB messages, one way, with backpressure.
    let chunk = PackValue::Bin(pattern(16_000));
    let t = Instant::now();
    let total = 256;
    let sender = {
        let alice = alice.clone();
        let chunk = chunk.clone();
        tokio::spawn(async move {
            let mut sent = 0;
            let mut max_buffered = 0;
            while sent < total {
                match alice.send(a_conn, Message::Pack(chunk.clone())).await {
                    Ok(b) => {
                        max_buffered = max_buffered.max(b);
                        sent += 1;
                    }
                    Err(kibitz_rtc::SendError::Full { .. }) => {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err(e) => panic!("send: {e}"),
                }
            }
            max_buffered
        })
    };
    for _ in 0..total {
        assert_eq!(data(&mut b_ev, b_conn).await, Message::Pack(chunk.clone()));
    }
    let max_buffered = sender.await.unwrap();
    let secs = t.elapsed().as_secs_f64();
    println!(
        "throughput: {:.1} MB/s ({} x 16000 B in {secs:.2} s, max buffered {max_buffered} B)",
        (total * 16_000) as f64 / secs / 1e6,
        total
    );

    // json, Bob offers this time.
    let b_json = bob
        .connect(
            alice.id(),
            ConnectOptions {
                serialization: Serialization::Json,
                label: Some("lbl-json".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let Event::Connection {
        conn: a_json, info, ..
    } = next(&mut a_ev, |e| matches!(e, Event::Connection { .. })).await
    else {
        unreachable!()
    };
    assert_eq!(info.label, "lbl-json");
    assert!(!info.reliable);
    next(
        &mut b_ev,
        |e| matches!(e, Event::ConnOpen { conn, .. } if *conn == b_json),
    )
    .await;
    let j = serde_json::json!({"a": 1, "s": "é", "list": [1, "two", null]});
    bob.send(b_json, Message::Json(j.clone())).await.unwrap();
    assert_eq!(data(&mut a_ev, a_json).await, Message::Json(j.clone()));
    alice.send(a_json, Message::Json(j.clone())).await.unwrap();
    assert_eq!(data(&mut b_ev, b_json).await, Message::Json(j));
    let too_big = serde_json::Value::String("x".repeat(16_300));
    assert!(bob.send(b_json, Message::Json(too_big)).await.is_err());

    // raw: text stays text, bytes stay bytes.
    let a_raw = alice
        .connect(
            bob.id(),
            ConnectOptions {
                serialization: Serialization::Raw,
                reliable: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let Event::Connection { conn: b_raw, .. } =
        next(&mut b_ev, |e| matches!(e, Event::Connection { .. })).await
    else {
        unreachable!()
    };
    next(
        &mut a_ev,
        |e| matches!(e, Event::ConnOpen { conn, .. } if *conn == a_raw),
    )
    .await;
    alice
        .send(a_raw, Message::Text("plain".into()))
        .await
        .unwrap();
    assert_eq!(data(&mut b_ev, b_raw).await, Message::Text("plain".into()));
    alice
        .send(a_raw, Message::Bytes(vec![1, 2, 3]))
        .await
        .unwrap();
    assert_eq!(data(&mut b_ev, b_raw).await, Message::Bytes(vec![1, 2, 3]));

    // Closing one side closes the other.
    alice.close(a_conn);
    next(
        &mut b_ev,
        |e| matches!(e, Event::ConnClosed { conn, reason: CloseReason::Remote } if *conn == b_conn),
    )
    .await;

    // Broker socket lost and back with the same id and token; connections carry on.
    alice.disconnect();
    next(&mut a_ev, |e| matches!(e, Event::Disconnected)).await;
    alice
        .send(a_raw, Message::Text("still here".into()))
        .await
        .unwrap();
    assert_eq!(
        data(&mut b_ev, b_raw).await,
        Message::Text("still here".into())
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    alice.reconnect().await.unwrap();
    next(&mut a_ev, |e| matches!(e, Event::Open { .. })).await;
    let again = alice
        .connect(bob.id(), ConnectOptions::default())
        .await
        .unwrap();
    next(
        &mut a_ev,
        |e| matches!(e, Event::ConnOpen { conn, .. } if *conn == again),
    )
    .await;

    alice.destroy();
    bob.destroy();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_peers_share_one_identity() {
    let broker = start(Config::default()).await;
    let port = broker.addr.port();
    let me = Identity::generate().unwrap();
    let (presence, mut p_ev) = peer(port, Some("me-presence"), &me).await;
    let (media, _m_ev) = peer(port, Some("me-media"), &me).await;
    let (other, mut o_ev) = peer(port, Some("other"), &Identity::generate().unwrap()).await;
    for p in [&presence, &media] {
        assert_eq!(p.fingerprint(), me.fingerprint());
        let c = p.connect("other", ConnectOptions::default()).await.unwrap();
        let Event::ConnOpen {
            remote_fingerprint,
            remote,
            ..
        } = next(&mut o_ev, |e| matches!(e, Event::ConnOpen { .. })).await
        else {
            unreachable!()
        };
        assert_eq!(remote, p.id());
        assert_eq!(remote_fingerprint, me.fingerprint());
        p.close(c);
    }
    // The same id again gets ID-TAKEN.
    let mut opts = PeerOptions::new(BrokerConfig::plain("127.0.0.1", port), me.clone());
    opts.id = Some("other".into());
    let (_dup, mut d_ev) = Peer::connect(opts).await.unwrap();
    next(&mut d_ev, |e| matches!(e, Event::IdTaken)).await;
    // Connecting to an id that never registers: EXPIRE from the broker closes the attempt.
    // (the broker's expire timeout is 5 s).
    let ghost = presence
        .connect("ghost", ConnectOptions::default())
        .await
        .unwrap();
    let mut expired = false;
    loop {
        match next(&mut p_ev, |e| {
            matches!(e, Event::Expire { .. })
                || matches!(e, Event::ConnClosed { conn, .. } if *conn == ghost)
        })
        .await
        {
            Event::Expire { remote } => {
                assert_eq!(remote, "ghost");
                expired = true;
            }
            Event::ConnClosed { conn, reason } => {
                assert_eq!(conn, ghost);
                assert_eq!(reason, CloseReason::Left);
                assert!(expired, "closed before EXPIRE");
                break;
            }
            _ => unreachable!(),
        }
    }
    drop(other);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_broker_with_a_self_signed_certificate() {
    let server = kibitz_e2e::start_tls(Config::default()).await;
    let port = server.addr.port();
    let broker = BrokerConfig {
        tls: Some(server.client.clone().into()),
        ..BrokerConfig::secure("localhost", port)
    };
    // One peer gets its id over https, the other claims one over wss.
    let mut a = PeerOptions::new(broker.clone(), Identity::generate().unwrap());
    a.id = None;
    let (alice, mut a_ev) = Peer::connect(a).await.unwrap();
    next(&mut a_ev, |e| matches!(e, Event::Open { .. })).await;
    assert_eq!(alice.id().len(), 36, "a broker-assigned UUID");
    let mut b = PeerOptions::new(broker, Identity::generate().unwrap());
    b.id = Some("bob-secure".into());
    let (bob, mut b_ev) = Peer::connect(b).await.unwrap();
    next(&mut b_ev, |e| matches!(e, Event::Open { .. })).await;
    let c = alice
        .connect("bob-secure", ConnectOptions::default())
        .await
        .unwrap();
    next(&mut a_ev, |e| matches!(e, Event::ConnOpen { .. })).await;
    alice
        .send(c, Message::Pack("over wss".into()))
        .await
        .unwrap();
    let Event::Data { value, .. } = next(&mut b_ev, |e| matches!(e, Event::Data { .. })).await
    else {
        unreachable!()
    };
    assert_eq!(value, Message::Pack("over wss".into()));
    alice.destroy();
    bob.destroy();
    drop(server);
}
