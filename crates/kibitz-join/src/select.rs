//! Choosing the broker and the TURN relay, as the web client does (KIBITZ.md §1.1, §2.2).

use kibitz_rtc::tls::{error_chain, is_certificate_error};
use kibitz_rtc::{BrokerConfig, ClientTls, HttpClient, RelayConfig};
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
        /// Because the server's TLS certificate did not verify.
        certificate: bool,
    },
    /// `/api/signal` answered `{"host": null}`: no healthy broker.
    #[error("{0} names no healthy broker")]
    NoBroker(String),
    /// Relay-only was asked for and there is no usable TURN server (fail-closed).
    #[error("relay-only: {0} offers no usable TURN relay, so no connection is made")]
    NoRelay(String),
}

/// An HTTP(S) client for `/api/signal` and `/api/turn` on the participant's one TLS
/// configuration (the broker uses the same: [`BrokerConfig::tls`]).
pub fn http_client(tls: &ClientTls) -> Result<HttpClient, SelectError> {
    tls.http_client(reqwest::Client::builder().timeout(std::time::Duration::from_secs(5)))
        .map_err(|e| api("http client", e))
}

fn api(url: &str, e: impl std::error::Error + 'static) -> SelectError {
    SelectError::Api {
        url: url.to_owned(),
        reason: error_chain(&e),
        certificate: is_certificate_error(&e),
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
    client: &HttpClient,
    url: &str,
) -> Result<T, SelectError> {
    client
        .get(url)
        .map_err(|e| api(url, e))?
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
    client: &HttpClient,
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
    client: &HttpClient,
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
