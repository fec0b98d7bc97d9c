//! The broker serves WSS itself (Kibitz clients only reach `wss://HOST:443/peerjs`): the
//! same composition `kibitz serve --tls-self-signed` runs, checked with a client that trusts
//! only that certificate.

#![allow(clippy::unwrap_used, clippy::expect_used)]
use kibitz_e2e::Config;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn wss_and_https_with_a_self_signed_certificate() {
    let broker = kibitz_e2e::start_tls(Config::default()).await;
    let addr = broker.addr;
    let connector = tokio_rustls::TlsConnector::from(broker.client.clone());
    let name = ServerName::try_from("localhost").unwrap();

    // HTTPS: a fresh id.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut tls_stream = connector.connect(name.clone(), tcp).await.unwrap();
    tls_stream
        .write_all(b"GET /peerjs/id HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut resp = String::new();
    tls_stream.read_to_string(&mut resp).await.unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");

    // WSS: OPEN.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls_stream = connector.connect(name, tcp).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(
        "wss://localhost/peerjs?key=peerjs&id=secure&token=t",
        tls_stream,
    )
    .await
    .unwrap();
    use futures_util::StreamExt;
    let first = ws.next().await.unwrap().unwrap();
    assert_eq!(first.into_text().unwrap().as_str(), r#"{"type":"OPEN"}"#);
    drop(broker);
}
