//! Reaching the broker: `GET …/id`, the WebSocket URL, plain or TLS.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;

/// Where the PeerJS broker is, as the peerjs client options say it.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Host name or IP.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Path prefix, normalised to start and end with `/` (default `/`).
    pub path: String,
    /// The broker key (default `peerjs`).
    pub key: String,
    /// `https`/`wss` when true.
    pub secure: bool,
    /// TLS client configuration for `secure`; `None` trusts the webpki roots.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl BrokerConfig {
    /// A plain `ws://host:port/peerjs` broker with key `peerjs`.
    pub fn plain(host: impl Into<String>, port: u16) -> Self {
        BrokerConfig {
            host: host.into(),
            port,
            path: "/".into(),
            key: "peerjs".into(),
            secure: false,
            tls: None,
        }
    }

    /// A `wss://host:port/peerjs` broker (Kibitz brokers: port 443) with key `peerjs`.
    pub fn secure(host: impl Into<String>, port: u16) -> Self {
        BrokerConfig {
            secure: true,
            ..Self::plain(host, port)
        }
    }

    fn base(&self, ws: bool) -> String {
        let scheme = match (ws, self.secure) {
            (true, true) => "wss",
            (true, false) => "ws",
            (false, true) => "https",
            (false, false) => "http",
        };
        let mut path = self.path.clone();
        if !path.starts_with('/') {
            path.insert(0, '/');
        }
        if !path.ends_with('/') {
            path.push('/');
        }
        let host = if self.host.contains(':') && !self.host.starts_with('[') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!("{scheme}://{host}:{}{path}", self.port)
    }

    /// `http[s]://host:port{path}{key}/id`.
    pub fn id_url(&self) -> String {
        format!("{}{}/id", self.base(false), enc(&self.key))
    }

    /// `ws[s]://host:port{path}peerjs?key=…&id=…&token=…&version=1.5.5`.
    pub fn ws_url(&self, id: &str, token: &str) -> String {
        format!(
            "{}peerjs?key={}&id={}&token={}&version=1.5.5",
            self.base(true),
            enc(&self.key),
            enc(id),
            enc(token)
        )
    }

    fn tls_config(&self) -> Result<Arc<rustls::ClientConfig>, BrokerError> {
        if let Some(t) = &self.tls {
            return Ok(t.clone());
        }
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| BrokerError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(Arc::new(cfg))
    }
}

fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Why the broker could not be reached.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// `GET …/id` failed or answered something that is not an id.
    #[error("could not get an id from the broker: {0}")]
    Id(String),
    /// TCP, TLS or the WebSocket handshake failed.
    #[error("could not connect to the broker: {0}")]
    Connect(String),
    /// TLS configuration or handshake.
    #[error("tls: {0}")]
    Tls(String),
}

/// Asks the broker for a fresh id.
pub async fn fetch_id(broker: &BrokerConfig) -> Result<String, BrokerError> {
    // reqwest is built without a default TLS provider and refuses to build a client without
    // one, even for plain http.
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .use_preconfigured_tls((*broker.tls_config()?).clone())
        .build()
        .map_err(|e| BrokerError::Id(e.to_string()))?;
    let resp = client
        .get(broker.id_url())
        .send()
        .await
        .map_err(|e| BrokerError::Id(e.to_string()))?;
    if !resp.status().is_success() {
        return Err(BrokerError::Id(format!("status {}", resp.status())));
    }
    let text = resp
        .text()
        .await
        .map_err(|e| BrokerError::Id(e.to_string()))?;
    let id = text.trim();
    if id.is_empty() || id.len() > 256 || id.chars().any(char::is_control) {
        return Err(BrokerError::Id("not an id".into()));
    }
    Ok(id.to_owned())
}

/// A byte stream the WebSocket runs over (TCP or TLS over TCP).
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

pub(crate) type Ws = WebSocketStream<Box<dyn Io>>;

/// How long TCP, TLS and the WebSocket handshake may take together.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Opens the broker WebSocket as `id` with `token`, within [`CONNECT_TIMEOUT`].
pub(crate) async fn connect_ws(
    broker: &BrokerConfig,
    id: &str,
    token: &str,
) -> Result<Ws, BrokerError> {
    tokio::time::timeout(CONNECT_TIMEOUT, connect_ws_now(broker, id, token))
        .await
        .unwrap_or_else(|_| Err(BrokerError::Connect("timed out".into())))
}

/// Bytes read from the broker socket at a time (larger frames take several reads).
const WS_READ_BUFFER: usize = 8 * 1024;

async fn connect_ws_now(broker: &BrokerConfig, id: &str, token: &str) -> Result<Ws, BrokerError> {
    let tcp = TcpStream::connect((broker.host.as_str(), broker.port))
        .await
        .map_err(|e| BrokerError::Connect(e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    let io: Box<dyn Io> = if broker.secure {
        let name = rustls::pki_types::ServerName::try_from(broker.host.clone())
            .map_err(|e| BrokerError::Tls(e.to_string()))?;
        let tls = tokio_rustls::TlsConnector::from(broker.tls_config()?)
            .connect(name, tcp)
            .await
            .map_err(|e| BrokerError::Tls(e.to_string()))?;
        Box::new(tls)
    } else {
        Box::new(tcp)
    };
    // tungstenite zeroes `read_buffer_size` bytes on every read attempt, and the driver polls
    // the socket on each of its wakeups (hundreds a second once media flows): the 128 KiB
    // default made that memset a few % of a participant's CPU. Signalling frames are small.
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(WS_READ_BUFFER);
    let (ws, _) =
        tokio_tungstenite::client_async_with_config(broker.ws_url(id, token), io, Some(config))
            .await
            .map_err(|e| BrokerError::Connect(e.to_string()))?;
    Ok(ws)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_follow_peerjs() {
        let b = BrokerConfig::plain("127.0.0.1", 9000);
        assert_eq!(b.id_url(), "http://127.0.0.1:9000/peerjs/id");
        assert_eq!(
            b.ws_url("kbz-v1-room", "t0k"),
            "ws://127.0.0.1:9000/peerjs?key=peerjs&id=kbz-v1-room&token=t0k&version=1.5.5"
        );
        let s = BrokerConfig {
            path: "app".into(),
            ..BrokerConfig::secure("signal.example.org", 443)
        };
        assert_eq!(
            s.ws_url("a b", "x"),
            "wss://signal.example.org:443/app/peerjs?key=peerjs&id=a+b&token=x&version=1.5.5"
        );
    }
}
