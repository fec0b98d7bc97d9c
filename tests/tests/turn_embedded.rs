//! The embedded TURN relay (`kibitz-turn`) on 127.0.0.1:0 against real clients: coturn's
//! `turnutils_uclient` (two clients relaying to each other, `-y`) with the LAN hub's static
//! user (realm `kibitz`) and with `/api/turn` REST credentials; wrong, expired and tampered
//! credentials are refused with 401; kibitz-rtc relay-only peers connect through it with
//! credentials from `/api/turn`. Needs the Debian package `coturn` (for uclient only).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)]
#[path = "../turn/api.rs"]
mod api;
#[allow(dead_code)]
#[path = "../turn/coturn.rs"]
mod coturn;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use kibitz_e2e::{Config, start};
use kibitz_rtc::{
    BrokerConfig, CloseReason, ConnectOptions, Event, Events, Identity, Message, PackValue, Peer,
    PeerHandle, PeerOptions, RelayConfig,
};
use kibitz_turn::{Secret, TurnAuth, TurnConfig, TurnHandle, TurnLimits, TurnServer};

const SECRET: &str = "kibitz-embedded-turn-secret";
const OLD: &str = "kibitz-embedded-turn-old-secret";
const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn relay(realm: &str, auth: TurnAuth) -> TurnHandle {
    TurnServer::start(TurnConfig {
        listen: (LOCAL, 0).into(),
        relay_ip: LOCAL,
        advertised_ip: LOCAL,
        realm: realm.into(),
        auth,
        limits: TurnLimits {
            // Both ends of every test are on 127.0.0.1.
            allow_loopback_peers: true,
            ..TurnLimits::default()
        },
    })
    .unwrap()
}

fn rest() -> TurnAuth {
    TurnAuth::RestSecrets(vec![Secret::new(SECRET), Secret::new(OLD)])
}

/// uclient relayed its messages both ways.
fn assert_relayed(what: &str, r: &coturn::Uclient) {
    assert_eq!(r.code, Some(0), "{what}: {}", r.tail());
    assert!(
        r.relay_ports().len() >= 2,
        "{what}: two relays: {}",
        r.tail()
    );
    let (sent, recv) = r
        .messages()
        .unwrap_or_else(|| panic!("{what}: {}", r.tail()));
    assert!(
        sent > 0 && recv >= sent,
        "{what}: sent {sent} received {recv}"
    );
}

fn assert_refused(what: &str, r: &coturn::Uclient) {
    assert_ne!(r.code, Some(0), "{what} must be refused: {}", r.tail());
    assert!(
        r.output.contains("Cannot complete Allocation") || r.output.contains("401"),
        "{what}: {}",
        r.output
    );
    assert!(r.relay_ports().is_empty(), "{what}: {}", r.tail());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uclient_relays_through_the_static_user_relay_and_bad_passwords_are_refused() {
    let turn = relay(
        "kibitz",
        TurnAuth::Static {
            user: "wblan".into(),
            pass: Secret::new("Sp64SHsXMZOdzT6rgYcF"),
        },
    );
    let port = turn.local_addr().port();
    let (good, wrong, other) = tokio::join!(
        coturn::uclient("127.0.0.1", port, false, "wblan", "Sp64SHsXMZOdzT6rgYcF"),
        coturn::uclient("127.0.0.1", port, false, "wblan", "not-the-password"),
        coturn::uclient("127.0.0.1", port, false, "someone", "Sp64SHsXMZOdzT6rgYcF"),
    );
    assert_relayed("static user", &good);
    assert_refused("wrong password", &wrong);
    assert_refused("unknown user", &other);
    let s = turn.stats();
    assert!(s.relayed > 0, "{s:?}");
    assert!(s.auth_failures >= 2, "{s:?}");
    turn.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uclient_relays_with_api_credentials_and_expired_or_tampered_ones_are_refused() {
    let turn = relay("kibitz.test", rest());
    let port = turn.local_addr().port();
    let api = api::start(&[SECRET], port).await;
    let old_api = api::start(&[OLD], port).await;
    let foreign = api::start(&["never-configured"], port).await;
    let cred = api.fetch().await;
    let old = old_api.fetch().await;
    let bad = foreign.fetch().await;
    assert!(
        cred.turn_urls
            .iter()
            .any(|u| u == &format!("turn:127.0.0.1:{port}?transport=udp")),
        "{:?}",
        cred.turn_urls
    );
    let now = coturn::unix_now();
    let expired_user = kibitz_proto::turn::rest_username(now - 60, "e2e");
    let expired_pass = kibitz_proto::turn::rest_password(SECRET.as_bytes(), &expired_user);
    let mut tampered = cred.password.clone();
    tampered.replace_range(0..1, if tampered.starts_with('A') { "B" } else { "A" });
    let (exp, id) = cred.username.split_once(':').unwrap();
    let later_user = format!("{}:{id}", exp.parse::<u64>().unwrap() + 3600);
    let (r_good, r_old, r_bad, r_expired, r_tampered, r_user) = tokio::join!(
        coturn::uclient("127.0.0.1", port, false, &cred.username, &cred.password),
        coturn::uclient("127.0.0.1", port, false, &old.username, &old.password),
        coturn::uclient("127.0.0.1", port, false, &bad.username, &bad.password),
        coturn::uclient("127.0.0.1", port, false, &expired_user, &expired_pass),
        coturn::uclient("127.0.0.1", port, false, &cred.username, &tampered),
        coturn::uclient("127.0.0.1", port, false, &later_user, &cred.password),
    );
    assert_relayed("API credential", &r_good);
    assert_relayed("credential signed with the older secret", &r_old);
    assert_refused("foreign secret", &r_bad);
    assert_refused("expired", &r_expired);
    assert_refused("tampered password", &r_tampered);
    assert_refused("tampered username", &r_user);
    assert!(turn.stats().auth_failures >= 4);
    turn.shutdown().await;
}

async fn next(ev: &mut Events, want: impl FnMut(&Event) -> bool) -> Event {
    kibitz_e2e::next_matching(ev, Duration::from_secs(15), want).await
}

async fn peer(port: u16, id: &str, relay: Option<RelayConfig>) -> (PeerHandle, Events) {
    let mut o = PeerOptions::new(
        BrokerConfig::plain("127.0.0.1", port),
        Identity::generate().unwrap(),
    );
    o.id = Some(id.into());
    o.relay = relay;
    o.open_timeout = Duration::from_secs(10);
    let (h, mut ev) = Peer::connect(o).await.unwrap();
    next(&mut ev, |e| matches!(e, Event::Open { .. })).await;
    (h, ev)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kibitz_rtc_relay_only_peers_connect_through_the_embedded_relay() {
    let turn = relay("kibitz.test", rest());
    let api = api::start(&[SECRET], turn.local_addr().port()).await;
    let (status, body) = api::get(api.addr, "/api/turn").await;
    assert_eq!(status, 200, "{body}");
    let relay_cfg = RelayConfig::from_ice_servers(&serde_json::from_str(&body).unwrap())
        .await
        .unwrap();
    assert_eq!(relay_cfg.server, turn.local_addr());
    let broker = start(Config::default()).await;
    let port = broker.addr.port();

    let (alice, mut a_ev) = peer(port, "alice", Some(relay_cfg.clone())).await;
    let (bob, mut b_ev) = peer(port, "bob", Some(relay_cfg.clone())).await;
    let c = alice
        .connect("bob", ConnectOptions::default())
        .await
        .unwrap();
    next(
        &mut a_ev,
        |e| matches!(e, Event::ConnOpen { conn, .. } if *conn == c),
    )
    .await;
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
    let s = turn.stats();
    assert!(s.allocations >= 2 && s.relayed > 0, "{s:?}");

    // A wrong credential: refused, the connection fails (fail-closed).
    let bad = RelayConfig {
        credential: "not-the-password".into(),
        ..relay_cfg.clone()
    };
    let (mallory, mut m_ev) = peer(port, "mallory", Some(bad)).await;
    let mc = mallory
        .connect("bob", ConnectOptions::default())
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
    for h in [alice, bob, mallory] {
        h.destroy();
    }
    turn.shutdown().await;
}

/// `kibitz serve --turn-embedded` on 127.0.0.1:0: its HTTP address and its relay's.
struct Serve {
    _child: tokio::process::Child,
    http: std::net::SocketAddr,
    turn: std::net::SocketAddr,
}

async fn serve_with_embedded_turn() -> Serve {
    use tokio::io::AsyncBufReadExt as _;
    let mut child = tokio::process::Command::new(kibitz_e2e::kibitz_bin())
        .args([
            "--log-format",
            "json",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--turn-secret",
            SECRET,
            "--turn-host",
            "127.0.0.1",
            "--turn-rate-per-minute",
            "0",
            "--turn-embedded",
            "--turn-embedded-port",
            "0",
            "--turn-embedded-bind",
            "127.0.0.1",
            "--turn-embedded-allow-loopback",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn kibitz serve");
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let (mut http, mut turn) = (None, None);
    let mut seen = Vec::new();
    let found = tokio::time::timeout(Duration::from_secs(20), async {
        while let Ok(Some(line)) = lines.next_line().await {
            seen.push(line.clone());
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            let field = |k: &str| v["fields"][k].as_str().and_then(|s| s.parse().ok());
            turn = turn.or(field("turn_listen"));
            if v["fields"]["mode"] == "serve" {
                http = field("addr");
            }
            if http.is_some() && turn.is_some() {
                return true;
            }
        }
        false
    })
    .await;
    assert!(
        matches!(found, Ok(true)),
        "kibitz serve did not report its addresses: {seen:#?}"
    );
    // Keep draining stderr so the process never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Serve {
        _child: child,
        http: http.unwrap(),
        turn: turn.unwrap(),
    }
}

/// An `/api/turn` serving a fixed `iceServers` list (the static backend).
async fn static_api(
    ice_servers: serde_json::Value,
) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let config = kibitz_turn_api::Config {
        backend: kibitz_turn_api::Backend::Static(ice_servers),
        ..kibitz_turn_api::Config::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(kibitz_turn_api::serve(listener, config, async move {
        let _ = rx.await;
    }));
    (addr, tx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_relays_through_kibitz_serve_turn_embedded_with_its_api_credentials() {
    let serve = serve_with_embedded_turn().await;
    let url = format!("turn:127.0.0.1:{}?transport=udp", serve.turn.port());
    // /api/turn of that process lists exactly its relay, UDP only.
    let (status, body) = api::get(serve.http, "/api/turn").await;
    assert_eq!(status, 200, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["uris"], serde_json::json!([url]));

    // Refused credentials, UDP URL only: signed with a secret the relay does not know
    // (tampered), and properly signed but expired a minute ago.
    let now = coturn::unix_now();
    let entry = |user: String, secret: &str| {
        let pass = kibitz_proto::turn::rest_password(secret.as_bytes(), &user);
        serde_json::json!([{"urls": [url], "username": user, "credential": pass}])
    };
    let live = kibitz_proto::turn::rest_username(now + 3600, "tampered");
    let (foreign, _stop1) = static_api(entry(live, "not-the-serve-secret")).await;
    let old = kibitz_proto::turn::rest_username(now - 60, "expired");
    let (expired, _stop2) = static_api(entry(old, SECRET)).await;

    let good_url = format!("http://{}/api/turn", serve.http);
    let foreign_url = format!("http://{foreign}/api/turn");
    let expired_url = format!("http://{expired}/api/turn");
    let args = [
        "--api",
        &good_url,
        "--bad-api",
        &foreign_url,
        "--bad-api",
        &expired_url,
        // OS-chosen relay ports.
        "--relay-ports",
        "1024-65535",
        "--transports",
        "udp",
    ];
    if let Err(out) = kibitz_e2e::node_scenarios("turn/relay.mjs", &args).await {
        panic!("browser scenarios failed:\n{out}");
    }
}
