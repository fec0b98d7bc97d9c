//! The official `peerjs@1.5.5` client in headless Chromium against a Rust peer (`kibitz-rtc`)
//! through our broker: BinaryPack and JSON DataConnections in both offer directions, including
//! a chunked message. The page side is `tests/node/rtc-browser.mjs`; this side echoes what
//! the browser offers and, asked to `call`, offers a connection itself and checks the echoes.
//! The second test runs the same scenarios relay-only on both sides through a local coturn
//! with credentials from our `/api/turn`. Needs Chromium, coturn and the npm packages that
//! `scripts/test` installs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)]
#[path = "../turn/api.rs"]
mod api;
#[allow(dead_code)]
#[path = "../turn/coturn.rs"]
mod coturn;

use std::collections::BTreeMap;

use kibitz_e2e::{Config, start};
use kibitz_rtc::{
    BrokerConfig, ConnId, ConnectOptions, Event, Events, Identity, Message, PackValue, Peer,
    PeerHandle, PeerOptions, RelayConfig, Serialization,
};
use tokio::time::Instant;

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| ((i * 31 + (i >> 8)) & 0xff) as u8).collect()
}

/// What the Rust peer sends on a connection it offers (the page expects the same).
fn script(s: Serialization) -> Vec<Message> {
    match s {
        Serialization::Json => vec![
            Message::Json("hello from rust ✓".into()),
            Message::Json(
                serde_json::json!({"n": 42, "f": -1.5, "t": true, "nil": null, "list": [1, "two"]}),
            ),
        ],
        _ => vec![
            Message::Pack("hello from rust ✓".into()),
            Message::Pack(PackValue::Map(vec![
                ("n".into(), PackValue::Int(42)),
                ("f".into(), PackValue::Float(-1.5)),
                ("t".into(), PackValue::Bool(true)),
                ("nil".into(), PackValue::Nil),
                (
                    "list".into(),
                    PackValue::Array(vec![PackValue::Int(1), "two".into()]),
                ),
            ])),
            Message::Pack(PackValue::Bin(pattern(40_000))),
        ],
    }
}

/// `{cmd: "call", serialization}` from the page, in either framing.
fn call_request(m: &Message) -> Option<Serialization> {
    let s = match m {
        Message::Json(v) if v.get("cmd")?.as_str()? == "call" => {
            v.get("serialization")?.as_str()?
        }
        Message::Pack(v) if v.get("cmd")?.as_str()? == "call" => {
            v.get("serialization")?.as_str()?
        }
        _ => return None,
    };
    Serialization::from_wire(s)
}

struct Offered {
    sent: Vec<Message>,
    got: usize,
    mismatch: Option<String>,
    started: Instant,
}

/// Echoes browser-offered connections; offers on request and checks the echoes.
async fn serve(peer: PeerHandle, mut ev: Events) {
    let mut remotes: BTreeMap<ConnId, String> = BTreeMap::new();
    let mut offered: BTreeMap<ConnId, Offered> = BTreeMap::new();
    while let Some(e) = ev.recv().await {
        match e {
            Event::Connection { conn, remote, info } => {
                println!(
                    "rust: browser offered {:?} ({})",
                    info.serialization, info.label
                );
                remotes.insert(conn, remote);
            }
            Event::ConnOpen { conn, .. } => {
                if let Some(o) = offered.get_mut(&conn) {
                    println!("rust offer -> open: {:?}", o.started.elapsed());
                    for m in o.sent.clone() {
                        peer.send(conn, m).await.unwrap();
                    }
                }
            }
            Event::Data { conn, value } => {
                if let Some(o) = offered.get_mut(&conn) {
                    if o.sent.get(o.got) != Some(&value) && o.mismatch.is_none() {
                        o.mismatch = Some(format!("echo {} differs: {value:?}", o.got));
                    }
                    o.got += 1;
                    if o.got == o.sent.len() {
                        let verdict = o.mismatch.clone().unwrap_or_else(|| "ok".into());
                        let msg = match o.sent[0] {
                            Message::Json(_) => Message::Json(verdict.into()),
                            _ => Message::Pack(verdict.into()),
                        };
                        peer.send(conn, msg).await.unwrap();
                    }
                } else if let Some(s) = call_request(&value) {
                    let remote = remotes[&conn].clone();
                    let opts = ConnectOptions {
                        serialization: s,
                        reliable: true,
                        label: Some(format!("rust-{}", s.as_wire())),
                        ..Default::default()
                    };
                    let started = Instant::now();
                    let c = peer.connect(&remote, opts).await.unwrap();
                    offered.insert(
                        c,
                        Offered {
                            sent: script(s),
                            got: 0,
                            mismatch: None,
                            started,
                        },
                    );
                } else {
                    peer.send(conn, value).await.unwrap();
                }
            }
            Event::SignalError(e) => println!("rust: signal error {e}"),
            Event::ConnClosed { conn, reason } => println!("rust: {conn} closed: {reason:?}"),
            _ => {}
        }
    }
}

/// Starts the broker and the Rust peer (relay-only through `relay` if given), runs the page.
async fn run(relay: Option<RelayConfig>, extra: &[&str]) {
    let broker = start(Config::default()).await;
    let port = broker.addr.port();
    let mut opts = PeerOptions::new(
        BrokerConfig::plain("127.0.0.1", port),
        Identity::generate().unwrap(),
    );
    opts.id = Some("rust-peer".into());
    opts.relay = relay;
    let (peer, ev) = Peer::connect(opts).await.unwrap();
    let server = tokio::spawn(serve(peer.clone(), ev));
    let port = port.to_string();
    let mut args = vec![
        "--host",
        "127.0.0.1",
        "--port",
        &port,
        "--rust",
        "rust-peer",
    ];
    args.extend_from_slice(extra);
    let res = kibitz_e2e::node_scenarios("node/rtc-browser.mjs", &args).await;
    peer.destroy();
    server.abort();
    if let Err(out) = res {
        panic!("browser scenarios failed:\n{out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_peerjs_in_chromium_with_a_rust_peer() {
    run(None, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_only_chromium_and_rust_peer_through_coturn() {
    const SECRET: &str = "kibitz-rtc-browser-relay";
    let turn = coturn::Coturn::start(&[SECRET]).await;
    let api = api::start(&[SECRET], turn.port).await;
    let cred = api.fetch().await;
    let url = cred
        .turn_urls
        .iter()
        .find(|u| u.ends_with("transport=udp"))
        .expect("a turn: URI over udp")
        .clone();
    let relay = RelayConfig {
        server: turn.addr(),
        username: cred.username.clone(),
        credential: cred.password.clone(),
    };
    let extra = [
        "--turn-url",
        url.as_str(),
        "--turn-user",
        cred.username.as_str(),
        "--turn-pass",
        cred.password.as_str(),
    ];
    run(Some(relay), &extra).await;
    let line = format!(
        "user <{}>: incoming packet CHANNEL_BIND processed, success",
        cred.username
    );
    assert!(turn.log().contains(&line), "coturn saw no channel binding");
}
