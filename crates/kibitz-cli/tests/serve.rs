//! `kibitz serve` as operators run it: starts, serves, and on SIGTERM answers `/readyz` 503
//! for its drain grace while still serving, then closes broker sockets with 1001 and exits
//! within its drain deadline.

#![allow(clippy::unwrap_used, clippy::expect_used)]
use futures_util::{SinkExt, StreamExt};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// `kibitz serve` on 127.0.0.1:0 with `args`; returns it and the address it listens on.
async fn start(args: &[&str]) -> (tokio::process::Child, String) {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_kibitz"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(args)
        .env("KIBITZ_LOG", "info")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .expect("no listening line")
            .unwrap()
            .expect("kibitz exited early");
        if let Some(rest) = line.split("http://").nth(1) {
            break rest.split('/').next().unwrap().to_owned();
        }
    };
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, addr)
}

/// A broker socket for `id`, past its OPEN.
async fn peer(addr: &str, id: &str) -> Ws {
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{addr}/peerjs?key=peerjs&id={id}&token=t"))
            .await
            .unwrap();
    let open = ws.next().await.unwrap().unwrap();
    assert_eq!(open.into_text().unwrap().as_str(), r#"{"type":"OPEN"}"#);
    ws
}

fn sigterm(child: &tokio::process::Child) {
    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
}

/// The next frame on `ws`, within `within`, is a close with 1001 (going away).
async fn expect_going_away(ws: &mut Ws, within: Duration) {
    let close = tokio::time::timeout(within, ws.next())
        .await
        .expect("no close frame after SIGTERM");
    match close {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(u16::from(frame.code), 1001),
        other => panic!("expected close 1001, got {other:?}"),
    }
}

async fn expect_clean_exit(child: &mut tokio::process::Child, within: Duration) {
    let status = tokio::time::timeout(within, child.wait())
        .await
        .expect("kibitz did not exit after SIGTERM")
        .unwrap();
    assert!(status.success(), "exit status {status}");
}

#[tokio::test]
async fn serves_then_drains_on_sigterm() {
    let (mut child, addr) = start(&["--drain-timeout-ms", "3000"]).await;
    let mut ws = peer(&addr, "a").await;

    sigterm(&child);
    expect_going_away(&mut ws, Duration::from_secs(5)).await;
    expect_clean_exit(&mut child, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn readyz_answers_503_while_still_serving_through_the_drain_grace() {
    let (mut child, addr) =
        start(&["--drain-grace-ms", "5000", "--drain-timeout-ms", "3000"]).await;
    let mut a = peer(&addr, "a").await;
    let mut b = peer(&addr, "b").await;
    let _ = rustls::crypto::ring::default_provider().install_default();
    // A fresh connection per request: what a load balancer's probe sees.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let readyz = format!("http://{addr}/readyz");
    assert_eq!(http.get(&readyz).send().await.unwrap().status(), 200);

    sigterm(&child);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let status = http
            .get(&readyz)
            .send()
            .await
            .expect("the listener closed before /readyz answered 503")
            .status();
        if status == 503 {
            break;
        }
        assert_eq!(status, 200);
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz never said 503"
        );
        tokio::task::yield_now().await;
    }

    // Draining, not closed: sockets still relay and new HTTP requests are still answered.
    a.send(Message::text(r#"{"type":"OFFER","dst":"b","payload":1}"#))
        .await
        .unwrap();
    let relayed = tokio::time::timeout(Duration::from_secs(5), b.next())
        .await
        .expect("no relay while draining")
        .unwrap()
        .unwrap();
    assert_eq!(
        relayed.into_text().unwrap().as_str(),
        r#"{"type":"OFFER","src":"a","dst":"b","payload":1}"#
    );
    let id = http.get(format!("http://{addr}/id")).send().await.unwrap();
    assert_eq!(id.status(), 200);
    assert_eq!(
        http.get(&readyz).send().await.unwrap().status(),
        503,
        "still draining"
    );

    // After the grace: 1001, and the listener is gone.
    expect_going_away(&mut a, Duration::from_secs(15)).await;
    assert!(
        TcpStream::connect(&addr).await.is_err(),
        "the listener closes before sockets are told to go"
    );
    expect_clean_exit(&mut child, Duration::from_secs(10)).await;
}
