//! Content-blind: with every log at TRACE, relayed payloads never appear in the logs.

#![allow(clippy::unwrap_used, clippy::expect_used)]
use kibitz_e2e::{Config, start};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

const MARKER: &str = "KBZ-SECRET-4f1c9e";

#[tokio::test]
async fn payloads_never_reach_logs() {
    let logs = Captured::default();
    let sink = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || sink.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let b = start(Config {
        expire_timeout: Duration::from_millis(300),
        ..Config::default()
    })
    .await;
    let mut alice = b.peer("alice").await;
    let mut bob = b.peer("bob").await;
    let offer = format!(r#"{{"type":"OFFER","dst":"bob","payload":{{"sdp":"{MARKER}"}}}}"#);
    alice.send(&offer).await;
    assert!(bob.recv().await.contains(MARKER), "relayed intact");
    // Queued, then expired; malformed; oversized-ish binary; a frame on the wrong path.
    alice
        .send(&format!(
            r#"{{"type":"CANDIDATE","dst":"ghost","payload":"{MARKER}"}}"#
        ))
        .await;
    alice
        .expect(r#"{"type":"EXPIRE","src":"ghost","dst":"alice"}"#)
        .await;
    alice.send(&format!("not json {MARKER}")).await;
    alice
        .try_send(Message::binary(format!("{MARKER}\u{0}").into_bytes()))
        .await;
    alice.send(r#"{"type":"OFFER","dst":"alice"}"#).await;
    alice
        .expect(r#"{"type":"OFFER","src":"alice","dst":"alice"}"#)
        .await;
    drop(alice);
    drop(bob);
    tokio::time::sleep(Duration::from_millis(100)).await;

    let text = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    // The capture works: the relay path logged at TRACE.
    assert!(
        text.contains("OFFER") && text.contains("frame"),
        "no TRACE logs captured:\n{text}"
    );
    let hex: String = MARKER.bytes().map(|b| format!("{b:02x}")).collect();
    assert!(!text.contains(MARKER), "payload leaked into logs");
    assert!(
        !text.to_lowercase().contains(&hex),
        "payload leaked into logs as hex"
    );
}
