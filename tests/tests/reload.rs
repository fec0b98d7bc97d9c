//! Reload without restart: `kibitz serve` re-reads its files on SIGHUP. A TURN secret rotated
//! in `--turn-secret-file` signs every credential minted after the signal, and a real coturn
//! listing NEW and OLD accepts what is minted before and after; a broken file keeps the secret
//! in use; the embedded relay takes the rotated list at the same time. A new TLS certificate
//! is shown to new connections while open WebSockets carry on; a broken or mismatched key
//! keeps the old one. Needs the Debian package `coturn` (coturn, and uclient as the client).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)]
#[path = "../turn/api.rs"]
mod api;
#[allow(dead_code)]
#[path = "../turn/coturn.rs"]
mod coturn;
#[allow(dead_code)]
#[path = "../serve/proc.rs"]
mod proc;

use coturn::{Coturn, parse_turn_uri, uclient};
use futures_util::{SinkExt, StreamExt};
use kibitz_proto::turn::rest_password;
use proc::Serve;
use rustls::pki_types::CertificateDer;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

const NEW: &str = "kibitz-reload-new-secret";
const OLD: &str = "kibitz-reload-old-secret";

/// A temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("kibitz-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Replaces `path` the way operators' tools do: write a sibling, then rename over it.
fn replace(path: &Path, body: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, body).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Waits until `/metrics` (fetched by `get`) shows `kibitz_reloads_total{part, outcome}` at
/// `n` or more.
async fn wait_reloads<F, Fut>(get: F, part: &str, outcome: &str, n: f64)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = std::io::Result<(u16, String)>>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok((200, body)) = get().await {
            let seen = proc::metric(
                &body,
                "kibitz_reloads_total",
                &[("part", part), ("outcome", outcome)],
            );
            if seen.is_some_and(|v| v >= n) {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no kibitz_reloads_total{{part={part},outcome={outcome}}} >= {n} after SIGHUP"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `GET /api/turn`: (username, password, first UDP turn: URI as host and port).
async fn mint(addr: SocketAddr) -> (String, String, (String, u16)) {
    let (status, body) = api::get(addr, "/api/turn").await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let user = v["username"].as_str().expect(&body).to_owned();
    let pass = v["password"].as_str().expect(&body).to_owned();
    let (host, port, _) = v["uris"]
        .as_array()
        .expect(&body)
        .iter()
        .filter_map(|u| parse_turn_uri(u.as_str()?))
        .find(|(_, _, t)| t == "udp")
        .expect("a turn: URI over UDP");
    (user, pass, (host, port))
}

/// coturn allocates a relay with the credential, and logs so.
async fn coturn_accepts(turn: &Coturn, cred: &(String, String, (String, u16))) {
    let (user, pass, (host, port)) = cred;
    let r = uclient(host, *port, false, user, pass).await;
    assert_eq!(r.code, Some(0), "uclient: {}", r.tail());
    assert!(!r.relay_ports().is_empty(), "no relay: {}", r.tail());
    assert!(
        turn.logged(&Coturn::allocated_line(user), Duration::from_secs(3))
            .await,
        "coturn did not log an ALLOCATE for {user}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rotates_the_turn_secret_and_a_broken_file_keeps_it() {
    let turn = Coturn::start(&[NEW, OLD]).await;
    let dir = TempDir::new("reload-turn");
    let secrets = dir.path("turn-secret");
    replace(&secrets, &format!("{OLD}\n"));
    let args: Vec<String> = [
        "--turn-secret-file",
        secrets.to_str().unwrap(),
        "--turn-host",
        "127.0.0.1",
        "--turn-port",
        &turn.port.to_string(),
        "--turn-rate-per-minute",
        "0",
    ]
    .map(String::from)
    .to_vec();
    let serve = Serve::start(&args).await.expect("kibitz serve");
    let addr = serve.addr;
    let metrics = || async move { Ok(api::get(addr, "/metrics").await) };

    // Before: OLD signs, coturn accepts.
    let before = mint(addr).await;
    assert_eq!(before.1, rest_password(OLD.as_bytes(), &before.0));
    coturn_accepts(&turn, &before).await;

    // Rotation: NEW first, OLD still listed for credentials already out.
    replace(&secrets, &format!("{NEW}\n{OLD}\n"));
    serve.signal("HUP");
    wait_reloads(metrics, "turn", "ok", 1.0).await;
    let after = mint(addr).await;
    assert_eq!(
        after.1,
        rest_password(NEW.as_bytes(), &after.0),
        "minted after SIGHUP must be signed with NEW"
    );
    coturn_accepts(&turn, &after).await;
    // What was minted before the rotation still works (coturn lists OLD).
    coturn_accepts(&turn, &before).await;

    // Broken files: empty, then gone. The secret in use stays.
    replace(&secrets, "\n");
    serve.signal("HUP");
    wait_reloads(metrics, "turn", "failed", 1.0).await;
    std::fs::remove_file(&secrets).unwrap();
    serve.signal("HUP");
    wait_reloads(metrics, "turn", "failed", 2.0).await;
    let kept = mint(addr).await;
    assert_eq!(kept.1, rest_password(NEW.as_bytes(), &kept.0));
    assert_eq!(serve.count("reload failed"), 2, "{:#?}", serve.log());

    // The server is still serving, and no secret reached the log.
    let log = serve.log().join("\n");
    assert!(
        !log.contains(NEW) && !log.contains(OLD),
        "a secret in the log"
    );
    serve.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_hands_rotated_secrets_to_the_embedded_relay() {
    let dir = TempDir::new("reload-embedded");
    let secrets = dir.path("turn-secret");
    replace(&secrets, &format!("{OLD}\n"));
    let args: Vec<String> = [
        "--turn-secret-file",
        secrets.to_str().unwrap(),
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
    ]
    .map(String::from)
    .to_vec();
    let serve = Serve::start(&args).await.expect("kibitz serve");
    let addr = serve.addr;
    let metrics = || async move { Ok(api::get(addr, "/metrics").await) };
    let before = mint(addr).await;
    assert_eq!(before.1, rest_password(OLD.as_bytes(), &before.0));

    // OLD is dropped outright: only a relay that took the new list accepts NEW and refuses OLD.
    replace(&secrets, &format!("{NEW}\n"));
    serve.signal("HUP");
    wait_reloads(metrics, "turn", "ok", 1.0).await;
    let after = mint(addr).await;
    assert_eq!(after.1, rest_password(NEW.as_bytes(), &after.0));
    assert_eq!(
        after.2, before.2,
        "the relay's address is kept across the reload"
    );
    let (host, port) = &after.2;
    let (new, old) = tokio::join!(
        uclient(host, *port, false, &after.0, &after.1),
        uclient(host, *port, false, &before.0, &before.1),
    );
    assert_eq!(new.code, Some(0), "NEW refused: {}", new.tail());
    assert!(!new.relay_ports().is_empty(), "{}", new.tail());
    assert_ne!(old.code, Some(0), "OLD still accepted: {}", old.tail());
    assert!(old.relay_ports().is_empty(), "{}", old.tail());
    serve.stop().await;
}

/// A self-signed certificate for `localhost`: (cert PEM, key PEM, DER).
fn cert() -> (String, String, CertificateDer<'static>) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    (
        ck.cert.pem(),
        ck.key_pair.serialize_pem(),
        ck.cert.der().clone(),
    )
}

/// A broker socket over `wss://` for `id`, past its OPEN.
async fn wss_peer(
    addr: SocketAddr,
    cfg: &std::sync::Arc<rustls::ClientConfig>,
    id: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tls = proc::tls_connect(addr, "localhost", cfg).await.unwrap();
    let url = format!("wss://localhost/peerjs?key=peerjs&id={id}&token=t");
    let (mut ws, _) = tokio_tungstenite::client_async(url, tls).await.unwrap();
    let open = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("no OPEN")
        .unwrap()
        .unwrap();
    assert_eq!(open.into_text().unwrap().as_str(), r#"{"type":"OPEN"}"#);
    ws
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_swaps_the_tls_certificate_for_new_connections() {
    let dir = TempDir::new("reload-tls");
    let (cert_file, key_file) = (dir.path("cert.pem"), dir.path("key.pem"));
    let (a_pem, a_key, a_der) = cert();
    let (b_pem, b_key, b_der) = cert();
    replace(&cert_file, &a_pem);
    replace(&key_file, &a_key);
    let args: Vec<String> = [
        "--tls-cert",
        cert_file.to_str().unwrap(),
        "--tls-key",
        key_file.to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec();
    let serve = Serve::start(&args).await.expect("kibitz serve");
    let addr = serve.addr;
    let client = proc::client_config(&[a_der.clone(), b_der.clone()]);
    let metrics = || {
        let client = client.clone();
        async move {
            let s = proc::tls_connect(addr, "localhost", &client).await?;
            proc::get(s, "localhost", "/metrics").await
        }
    };

    assert_eq!(proc::leaf(addr, "localhost", &client).await.unwrap(), a_der);
    let mut a = wss_peer(addr, &client, "a").await;

    // Swap in B: new connections get it, the open socket carries on.
    replace(&cert_file, &b_pem);
    replace(&key_file, &b_key);
    serve.signal("HUP");
    wait_reloads(&metrics, "tls", "ok", 1.0).await;
    assert_eq!(proc::leaf(addr, "localhost", &client).await.unwrap(), b_der);
    let mut b = wss_peer(addr, &client, "b").await;
    a.send(Message::text(r#"{"type":"OFFER","dst":"b","payload":1}"#))
        .await
        .unwrap();
    let relayed = tokio::time::timeout(Duration::from_secs(5), b.next())
        .await
        .expect("nothing relayed from the socket opened before the swap")
        .unwrap()
        .unwrap();
    assert_eq!(
        relayed.into_text().unwrap().as_str(),
        r#"{"type":"OFFER","src":"a","dst":"b","payload":1}"#
    );

    // A key that is not PEM, then A's key with B's certificate: both refused, B stays.
    replace(&key_file, "not a key\n");
    serve.signal("HUP");
    wait_reloads(&metrics, "tls", "failed", 1.0).await;
    replace(&key_file, &a_key);
    serve.signal("HUP");
    wait_reloads(&metrics, "tls", "failed", 2.0).await;
    assert_eq!(proc::leaf(addr, "localhost", &client).await.unwrap(), b_der);
    drop((a, b));
    serve.stop().await;
}
