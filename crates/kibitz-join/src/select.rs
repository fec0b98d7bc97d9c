//! Choosing the broker and the TURN relay, as the web client does (KIBITZ.md §1.1, §2.2).

use std::sync::Arc;

use kibitz_rtc::{BrokerConfig, RelayConfig};
use serde::Deserialize;

/// Why a broker or relay could not be chosen.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SelectError {
    /// Not a broker address we understand.
    #[error("bad broker address {0:?}: use ws://host:port, wss://host[:port] or a host name")]
    BadBroker(String),
    /// `/api/signal` could not be read.
    #[error("{url}: {reason}")]
    Api {
        /// What was fetched.
        url: String,
        /// Why it failed.
        reason: String,
    },
    /// `/api/signal` answered `{"host": null}`: no healthy broker.
    #[error("{0} names no healthy broker")]
    NoBroker(String),
    /// Relay-only was asked for and there is no usable TURN server (fail-closed).
    #[error("relay-only: {0} offers no usable TURN relay, so no connection is made")]
    NoRelay(String),
}

/// An HTTPS client for `/api/signal` and `/api/turn`; `insecure` accepts any certificate
/// (local testing against a self-signed origin only).
pub fn http_client(insecure: bool) -> Result<reqwest::Client, SelectError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = if insecure {
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| api("tls", e))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCert))
            .with_no_client_auth()
    } else {
        let roots =
            rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| api("tls", e))?
            .with_root_certificates(roots)
            .with_no_client_auth()
    };
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(std::time::Duration::from_secs(5))
        .build()
        .map_err(|e| api("http client", e))
}

fn api(url: &str, e: impl std::fmt::Display) -> SelectError {
    SelectError::Api {
        url: url.to_owned(),
        reason: e.to_string(),
    }
}

/// A broker from an address: `ws://host:port[/path]`, `wss://host[:port][/path]`, or a bare
/// host, which means `wss://host:443/` exactly as Kibitz's `signalHost` does.
pub fn broker_from(addr: &str) -> Result<BrokerConfig, SelectError> {
    let addr = addr.trim().trim_end_matches('/');
    if addr.is_empty() {
        return Err(SelectError::BadBroker(addr.to_owned()));
    }
    let with_scheme = if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("wss://{addr}")
    };
    let url = url::Url::parse(&with_scheme).map_err(|_| SelectError::BadBroker(addr.to_owned()))?;
    let secure = match url.scheme() {
        "ws" | "http" => false,
        "wss" | "https" => true,
        _ => return Err(SelectError::BadBroker(addr.to_owned())),
    };
    let host = url
        .host_str()
        .ok_or_else(|| SelectError::BadBroker(addr.to_owned()))?
        .trim_matches(['[', ']'])
        .to_owned();
    let port = url.port().unwrap_or(if secure { 443 } else { 80 });
    let mut b = if secure {
        BrokerConfig::secure(host, port)
    } else {
        BrokerConfig::plain(host, port)
    };
    b.path = url.path().to_owned();
    Ok(b)
}

#[derive(Deserialize)]
struct SignalAnswer {
    host: Option<String>,
}

async fn get_json<T: serde::de::DeserializeOwned>(
    client: &reqwest::Client,
    url: &str,
) -> Result<T, SelectError> {
    client
        .get(url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| api(url, e))?
        .json()
        .await
        .map_err(|e| api(url, e))
}

/// Asks `<origin>/api/signal` which broker the room uses (one shared verdict for everyone).
pub async fn broker_from_api(
    client: &reqwest::Client,
    origin: &str,
) -> Result<BrokerConfig, SelectError> {
    let url = format!("{}/api/signal", origin.trim_end_matches('/'));
    let answer: SignalAnswer = get_json(client, &url).await?;
    match answer.host.filter(|h| !h.trim().is_empty()) {
        Some(h) => broker_from(&h),
        None => Err(SelectError::NoBroker(url)),
    }
}

/// The TURN relay `/api/turn` offers (its first UDP `turn:` server), or `None` when it
/// offers none. `turn` is a host (`https://<host>/api/turn`, a port allowed) or a full URL.
pub async fn relay_from_api(
    client: &reqwest::Client,
    turn: &str,
) -> Result<Option<RelayConfig>, SelectError> {
    let url = if turn.contains("://") {
        turn.to_owned()
    } else {
        format!("https://{}/api/turn", turn.trim_end_matches('/'))
    };
    let body: serde_json::Value = get_json(client, &url).await?;
    match RelayConfig::from_ice_servers(&body).await {
        Ok(relay) => Ok(Some(relay)),
        Err(kibitz_rtc::RelayError::NoTurn) => Ok(None),
        Err(e) => Err(api(&url, e)),
    }
}

/// Accepts any server certificate (`--insecure`), still checking that the handshake is
/// signed by it.
#[derive(Debug)]
struct AnyCert;

fn algorithms() -> rustls::crypto::WebPkiSupportedAlgorithms {
    rustls::crypto::ring::default_provider().signature_verification_algorithms
}

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        algorithms().supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_addresses() {
        let b = broker_from("ws://127.0.0.1:9000").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (b.host.as_str(), b.port, b.secure),
            ("127.0.0.1", 9000, false)
        );
        let b = broker_from("signal.example.org").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (b.host.as_str(), b.port, b.secure, b.path.as_str()),
            ("signal.example.org", 443, true, "/")
        );
        let b = broker_from("wss://h:8443/base/").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((b.port, b.path.as_str()), (8443, "/base"));
        assert!(broker_from("ftp://x").is_err());
        assert!(broker_from("  ").is_err());
    }
}
