//! `kibitz serve` as operators run it: starts, serves, and on SIGTERM closes broker sockets
//! with 1001 and exits within its drain deadline.

#![allow(clippy::unwrap_used, clippy::expect_used)]
use futures_util::StreamExt;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn serves_then_drains_on_sigterm() {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_kibitz"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--drain-timeout-ms",
            "3000",
        ])
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

    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{addr}/peerjs?key=peerjs&id=a&token=t"))
            .await
            .unwrap();
    let open = ws.next().await.unwrap().unwrap();
    assert_eq!(open.into_text().unwrap().as_str(), r#"{"type":"OPEN"}"#);

    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let close = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("no close frame after SIGTERM");
    match close {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(u16::from(frame.code), 1001),
        other => panic!("expected close 1001, got {other:?}"),
    }
    let status = tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .expect("kibitz did not exit after SIGTERM")
        .unwrap();
    assert!(status.success(), "exit status {status}");
}
