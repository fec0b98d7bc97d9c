#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The status page (`kibitz-status`) mounted as `kibitz serve` mounts it, over the broker,
//! `/api/turn` and `/api/signal`: non-HTML `GET /` still gets the PeerJS banner byte for byte;
//! in headless Chromium the self-test reports TURN and the broker green against a real coturn,
//! and the TURN failure with its reason when coturn refuses the secret (401) or is gone
//! (unreachable). The browser part is `tests/status/selftest.mjs`; it saves
//! `target/test-artifacts/status-page.png`. Needs Debian `coturn` and `chromium` and the npm
//! packages `scripts/test` installs.

// Shared with the TURN tests; not every helper is used here.
#[allow(dead_code)]
#[path = "../turn/api.rs"]
mod api;
#[allow(dead_code)]
#[path = "../turn/coturn.rs"]
mod coturn;

use coturn::Coturn;
use kibitz_proto::peerjs::BANNER;
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

const SECRET: &str = "kibitz-e2e-status-secret";
const OTHER: &str = "kibitz-e2e-status-secret-coturn-never-heard-of";

/// Every service on one listener, wired as `kibitz serve` wires them; stopped on drop.
struct Bundle {
    addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

async fn bundle(secret: &str, turn_port: u16) -> Bundle {
    kibitz_http::install_metrics();
    let config = kibitz_signal::Config::default();
    let (path, key) = (config.path.clone(), config.key.clone());
    let broker = kibitz_signal::SignalState::start(config);
    let turn = kibitz_turn_api::TurnState::new(kibitz_turn_api::Config::hmac(
        vec![secret.to_owned()],
        "127.0.0.1",
        turn_port,
    ))
    .unwrap();
    let selector =
        kibitz_signal_config::SignalConfigState::start(kibitz_signal_config::Config::default());
    let probe = broker.clone();
    let answer = selector.clone();
    let status = kibitz_status::Config {
        broker: Some(kibitz_status::Broker {
            path,
            key,
            healthy: Arc::new(move || probe.is_healthy()),
        }),
        turn: Some(kibitz_status::Turn {
            backend: "hmac",
            configured: true,
        }),
        signal: Some(Arc::new(move || {
            let a = answer.current_answer();
            kibitz_status::SignalAnswer {
                host: a.host,
                healthy: a.healthy,
            }
        })),
        metrics: Some(kibitz_http::install_metrics()),
    };
    let app = axum::Router::new()
        .merge(kibitz_signal::router(broker))
        .merge(kibitz_turn_api::router(turn))
        .merge(kibitz_signal_config::router(selector))
        .merge(kibitz_status::router(kibitz_status::StatusState::new(
            status,
        )))
        .layer(axum::middleware::from_fn(kibitz_status::html_root));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let opts = kibitz_http::ServeOptions::default();
    tokio::spawn(kibitz_http::serve_with_ops(
        listener,
        app,
        opts,
        async move {
            let _ = rx.await;
        },
    ));
    Bundle { addr, _stop: tx }
}

/// `GET /` with these extra header lines: `(status, content-type, body)`.
async fn get_root(addr: SocketAddr, headers: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!("GET / HTTP/1.1\r\nHost: {addr}\r\n{headers}Connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let ct = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_owned())
        })
        .unwrap_or_default();
    (status, ct, body.to_owned())
}

#[tokio::test]
async fn non_html_root_requests_still_get_the_banner() {
    let b = bundle(SECRET, 3478).await;
    for headers in [
        "",
        "Accept: */*\r\n",
        "Accept: application/json\r\n",
        "Accept: application/json, text/plain, */*\r\n",
        "Accept: text/*\r\n",
        "Accept: text/html, application/json\r\n",
        "User-Agent: curl/8.0\r\nAccept: */*\r\n",
    ] {
        let (status, ct, body) = get_root(b.addr, headers).await;
        assert_eq!(status, 200, "{headers:?}");
        assert_eq!(ct, "application/json; charset=utf-8", "{headers:?}");
        assert_eq!(body, BANNER, "{headers:?}");
    }
    let browser = "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n";
    let (status, ct, body) = get_root(b.addr, browser).await;
    assert_eq!((status, ct.as_str()), (200, "text/html; charset=utf-8"));
    assert!(body.contains("Run self-test"), "{body}");
    // The ops routes and the other services are still there.
    let (status, _) = api::get(b.addr, "/healthz").await;
    assert_eq!(status, 200);
    let (status, body) = api::get(b.addr, "/status.json").await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["services"]["broker"]["healthy"], true, "{v}");
    assert_eq!(v["services"]["turn"]["configured"], true, "{v}");
    assert_eq!(v["services"]["signal"]["host"], Value::Null, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_self_test_reports_turn_and_broker() {
    let turn = Coturn::start(&[SECRET]).await;
    // A coturn that is started and stopped again: its port answers nothing.
    let gone_port = {
        let gone = Coturn::start(&[SECRET]).await;
        gone.port
    };
    let good = bundle(SECRET, turn.port).await;
    let refused = bundle(OTHER, turn.port).await;
    let gone = bundle(SECRET, gone_port).await;

    let artifacts = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/test-artifacts");
    std::fs::create_dir_all(artifacts).unwrap();
    let url = |b: &Bundle| format!("http://{}/", b.addr);
    let (good_url, refused_url, gone_url) = (url(&good), url(&refused), url(&gone));
    let args = [
        "--good",
        &good_url,
        "--refused",
        &refused_url,
        "--gone",
        &gone_url,
        "--artifacts",
        artifacts,
    ];
    if let Err(out) = kibitz_e2e::node_scenarios("status/selftest.mjs", &args).await {
        panic!(
            "browser scenarios failed:\n{out}\n--- coturn log ---\n{}",
            turn.log()
        );
    }
    // The green run really allocated on this coturn, and the counts saw the credentials.
    assert!(turn.log().contains("ALLOCATE processed, success"));
    let (_, body) = api::get(good.addr, "/status.json").await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(
        v["counts"]["credentialsMinted"].as_u64().unwrap() >= 3,
        "{v}"
    );
    let png = std::fs::metadata(format!("{artifacts}/status-page.png")).unwrap();
    assert!(png.len() > 1000);
}
