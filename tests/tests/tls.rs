//! The broker serves WSS itself (Kibitz clients only reach `wss://HOST:443/peerjs`): the
//! same composition `kibitz serve --tls-self-signed` runs, checked with a client that trusts
//! only that certificate.

#![allow(clippy::unwrap_used, clippy::expect_used)]
use kibitz_e2e::Config;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[tokio::test]
async fn wss_and_https_with_a_self_signed_certificate() {
    let (tls, pem) = kibitz_http::tls_self_signed(&["localhost".to_owned()]).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = kibitz_signal::SignalState::start(Config::default());
    let app = kibitz_signal::router(state);
    let opts = kibitz_http::ServeOptions {
        tls: Some(tls),
        ..Default::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(kibitz_http::serve(listener, app, opts, async {
        let _ = stopped.await;
    }));

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(pem.as_bytes()).unwrap())
        .unwrap();
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
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
    let _ = stop.send(());
}
