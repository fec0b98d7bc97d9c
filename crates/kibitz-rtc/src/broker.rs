//! Reaching the broker: `GET …/id`, the WebSocket URL, plain or TLS.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;

use crate::tls::{ClientTls, ClientTlsError, error_chain, is_certificate_error};

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
    /// TLS for `secure` (and the `/id` fetch); `None` is [`ClientTls::shared_default`]
    /// (the web roots and the platform's store).
    pub tls: Option<ClientTls>,
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

    fn client_tls(&self) -> Result<ClientTls, BrokerError> {
        match &self.tls {
            Some(t) => Ok(t.clone()),
            None => Ok(ClientTls::shared_default()?),
        }
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
    /// The broker's certificate did not verify against the trusted roots.
    #[error("the broker's certificate did not verify: {0}")]
    Certificate(String),
    /// The TLS configuration could not be built or refused the broker's address.
    #[error(transparent)]
    ClientTls(#[from] ClientTlsError),
}

/// Asks the broker for a fresh id.
pub async fn fetch_id(broker: &BrokerConfig) -> Result<String, BrokerError> {
    // reqwest is built without a default TLS provider and refuses to build a client without
    // one, even for plain http.
    let client = broker.client_tls()?.http_client(
        reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none()),
    )?;
    let resp = client.get(&broker.id_url())?.send().await.map_err(|e| {
        if is_certificate_error(&e) {
            BrokerError::Certificate(error_chain(&e))
        } else {
            BrokerError::Id(error_chain(&e))
        }
    })?;
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
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

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

/// TCP, then TLS when `secure`: the stream the WebSocket runs over.
async fn open_stream(broker: &BrokerConfig) -> Result<Box<dyn Io>, BrokerError> {
    if !broker.secure {
        let tcp = TcpStream::connect((broker.host.as_str(), broker.port))
            .await
            .map_err(|e| BrokerError::Connect(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        return Ok(Box::new(tcp));
    }
    let client_tls = broker.client_tls()?;
    // Resolved (and, insecure, checked) once: the connection goes to exactly these.
    let addrs = client_tls.resolve(&broker.host, broker.port).await?;
    let tcp = TcpStream::connect(&addrs[..])
        .await
        .map_err(|e| BrokerError::Connect(e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    let name = rustls::pki_types::ServerName::try_from(broker.host.clone())
        .map_err(|e| BrokerError::Tls(e.to_string()))?;
    let tls = tokio_rustls::TlsConnector::from(client_tls.config())
        .connect(name, tcp)
        .await
        .map_err(|e| {
            if is_certificate_error(&e) {
                BrokerError::Certificate(error_chain(&e))
            } else {
                BrokerError::Tls(error_chain(&e))
            }
        })?;
    Ok(Box::new(tls))
}

/// Connects to the broker and, when `secure`, completes the TLS handshake, then hangs up:
/// a certificate the client does not trust shows up here as [`BrokerError::Certificate`]
/// (the peer itself would only keep retrying).
pub async fn check_broker(broker: &BrokerConfig) -> Result<(), BrokerError> {
    use tokio::io::AsyncWriteExt as _;
    let mut io = tokio::time::timeout(CONNECT_TIMEOUT, open_stream(broker))
        .await
        .unwrap_or_else(|_| Err(BrokerError::Connect("timed out".into())))?;
    // close_notify, so the broker sees an orderly goodbye rather than a cut connection.
    let _ = tokio::time::timeout(Duration::from_secs(1), io.shutdown()).await;
    Ok(())
}

async fn connect_ws_now(broker: &BrokerConfig, id: &str, token: &str) -> Result<Ws, BrokerError> {
    let io = open_stream(broker).await?;
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
