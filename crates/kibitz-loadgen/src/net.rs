//! Connecting to a PeerJS broker and speaking just enough of its protocol.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use futures_util::StreamExt;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderValue, Uri};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

pub type Ws = WebSocketStream<TcpStream>;

/// Where to connect and how.
#[derive(Debug, Clone)]
pub struct Target {
    addr: SocketAddrV4,
    /// A second broker node (same host, `--alt-port`) for cross-node pairs.
    alt: Option<SocketAddrV4>,
    base_url: String,
    key: String,
    src_ips: u8,
    /// How each connection names a client address of its own, as a proxy in front would.
    proxied: Proxied,
    /// Write the PROXY header in a segment of its own even where the scenario could send it
    /// with the first request.
    header_alone: bool,
}

/// What a proxy in front of the broker would add to each connection, naming a synthetic
/// client address from 198.18.0.0/15 (the benchmarking range: only ever written into headers,
/// never connected to).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Proxied {
    /// Nothing: the broker sees the TCP peer.
    #[default]
    None,
    /// `X-Forwarded-For: <client>` on the upgrade (the broker needs `--trusted-proxy`).
    Xff,
    /// A PROXY protocol v1 header first (the broker needs `--proxy-protocol`).
    V1,
    /// A PROXY protocol v2 header first (the broker needs `--proxy-protocol`).
    V2,
}

/// The synthetic client address of connection `idx` (198.18.0.1 upwards, 65,000 distinct).
pub fn synthetic_client(idx: usize) -> SocketAddrV4 {
    let n = idx % 65_000;
    let ip = Ipv4Addr::new(198, 18, (n / 250) as u8, (n % 250 + 1) as u8);
    SocketAddrV4::new(ip, 10_000 + (idx % 50_000) as u16)
}

/// The PROXY header `p` (v1 or v2) for a connection from `src` to `dst`; empty otherwise.
pub fn proxy_header(p: Proxied, src: SocketAddrV4, dst: SocketAddrV4) -> Vec<u8> {
    use ppp::{v1, v2};
    match p {
        Proxied::V1 => v1::Addresses::new_tcp4(*src.ip(), *dst.ip(), src.port(), dst.port())
            .to_string()
            .into_bytes(),
        Proxied::V2 => v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Proxy,
            v2::Protocol::Stream,
            (SocketAddr::V4(src), SocketAddr::V4(dst)),
        )
        .build()
        .unwrap_or_default(),
        Proxied::None | Proxied::Xff => Vec::new(),
    }
}

impl Target {
    /// `url` is `ws://HOST:PORT/PATH`; HOST must be an IPv4 loopback address or
    /// `localhost` (this tool only ever talks to the local machine).
    pub fn new(url: &str, key: &str, src_ips: u8) -> Result<Self> {
        let uri: Uri = url.parse().with_context(|| format!("bad url {url:?}"))?;
        if uri.scheme_str() != Some("ws") {
            bail!("url must start with ws:// (got {url:?})");
        }
        let host = uri.host().ok_or_else(|| anyhow!("url has no host"))?;
        let ip: Ipv4Addr = if host == "localhost" {
            Ipv4Addr::LOCALHOST
        } else {
            host.parse()
                .with_context(|| format!("host {host:?} is not an IPv4 address"))?
        };
        if !ip.is_loopback() {
            bail!("refusing to target non-loopback address {ip}");
        }
        let port = uri.port_u16().unwrap_or(80);
        if src_ips == 0 || src_ips > 254 {
            bail!("--src-ips must be 1..=254");
        }
        let path = uri.path().trim_end_matches('/');
        Ok(Self {
            addr: SocketAddrV4::new(ip, port),
            alt: None,
            base_url: format!("ws://{ip}:{port}{path}"),
            key: key.to_owned(),
            src_ips,
            proxied: Proxied::None,
            header_alone: false,
        })
    }

    /// Makes every connection carry a client address of its own, the way `p` says.
    pub fn with_proxied(mut self, p: Proxied, header_alone: bool) -> Self {
        self.proxied = p;
        self.header_alone = header_alone;
        self
    }

    /// Loopback source address for the `idx`th connection (127.0.0.1..=127.0.0.k).
    fn src_addr(&self, idx: usize) -> Ipv4Addr {
        // src_ips <= 254, so the result fits in a u8 without wrapping.
        let last = 1 + (idx % usize::from(self.src_ips)) as u8;
        Ipv4Addr::new(127, 0, 0, last)
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Adds a second node of the same cluster, on the same host.
    pub fn with_alt_port(mut self, port: u16) -> Self {
        self.alt = Some(SocketAddrV4::new(*self.addr.ip(), port));
        self
    }

    /// Whether a second node was given.
    pub fn has_alt(&self) -> bool {
        self.alt.is_some()
    }

    /// Relay pairs when a second node is given: pair `p` (ids 2p, 2p+1) is cross-node when
    /// `p` is odd, its second socket on the other node; even pairs stay on one node.
    pub fn is_cross_pair(&self, pair: usize) -> bool {
        self.alt.is_some() && pair % 2 == 1
    }

    fn addr_for(&self, idx: usize) -> SocketAddrV4 {
        match self.alt {
            Some(alt) if idx % 2 == 1 && self.is_cross_pair(idx / 2) => alt,
            _ => self.addr,
        }
    }

    /// TCP connect from a spread source address; with `--proxied v1|v2`, the PROXY header
    /// naming connection `idx`'s synthetic client is written first, on its own.
    pub async fn tcp(&self, idx: usize) -> Result<TcpStream> {
        let (stream, header) = self.tcp_deferred(idx).await?;
        let mut stream = stream;
        stream.write_all(&header).await.context("PROXY header")?;
        Ok(stream)
    }

    /// As [`Target::tcp`], but the PROXY header (if any) is returned for the caller to send
    /// with its first bytes, unless `--proxy-header-alone` (then it was sent already).
    pub async fn tcp_deferred(&self, idx: usize) -> Result<(TcpStream, Vec<u8>)> {
        let sock = TcpSocket::new_v4().context("socket")?;
        let src = SocketAddr::V4(SocketAddrV4::new(self.src_addr(idx), 0));
        sock.bind(src).with_context(|| format!("bind {src}"))?;
        let mut stream = sock
            .connect(SocketAddr::V4(self.addr_for(idx)))
            .await
            .context("tcp connect")?;
        stream.set_nodelay(true).context("nodelay")?;
        let mut header = proxy_header(self.proxied, synthetic_client(idx), self.addr_for(idx));
        if self.header_alone && !header.is_empty() {
            stream.write_all(&header).await.context("PROXY header")?;
            header.clear();
        }
        Ok((stream, header))
    }

    /// The `X-Forwarded-For` value for connection `idx` with `--proxied xff`.
    pub fn forwarded_for(&self, idx: usize) -> Option<String> {
        (self.proxied == Proxied::Xff).then(|| synthetic_client(idx).ip().to_string())
    }

    /// The broker's address.
    pub fn addr(&self) -> SocketAddrV4 {
        self.addr
    }

    /// TCP connect (and PROXY header), then the WebSocket handshake.
    pub async fn connect(&self, idx: usize, id: &str, read_buf: usize) -> Result<Ws> {
        let stream = self.tcp(idx).await?;
        let url = format!(
            "{}?key={}&id={id}&token=lgtok{idx}&version=1.5.5",
            self.base_url, self.key
        );
        let mut req = url.into_client_request().context("request")?;
        if let Some(xff) = self.forwarded_for(idx) {
            let v = HeaderValue::from_str(&xff).context("header")?;
            req.headers_mut().insert("x-forwarded-for", v);
        }
        let cfg = WebSocketConfig::default().read_buffer_size(read_buf);
        let (ws, _resp) = tokio_tungstenite::client_async_with_config(req, stream, Some(cfg))
            .await
            .context("websocket handshake")?;
        Ok(ws)
    }

    /// Connect and wait for the server's `OPEN`, all within `timeout`.
    pub async fn open(
        &self,
        idx: usize,
        id: &str,
        read_buf: usize,
        timeout: Duration,
    ) -> Result<Ws> {
        let fut = async {
            let mut ws = self.connect(idx, id, read_buf).await?;
            wait_open(&mut ws).await?;
            Ok(ws)
        };
        match tokio::time::timeout(timeout, fut).await {
            Ok(r) => r,
            Err(_) => bail!("timed out after {timeout:?} waiting for OPEN"),
        }
    }
}

/// A server message, parsed only as far as the load generator needs.
#[derive(Debug, Deserialize)]
pub struct Incoming<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: &'a str,
    #[serde(default)]
    pub payload: Option<Payload>,
}

#[derive(Debug, Deserialize)]
pub struct Payload {
    #[serde(default)]
    pub t: Option<u64>,
}

async fn wait_open(ws: &mut Ws) -> Result<()> {
    while let Some(msg) = ws.next().await {
        match msg.context("read")? {
            Message::Text(text) => {
                let m: Incoming<'_> = serde_json::from_str(text.as_str())
                    .with_context(|| format!("bad server message {:?}", text.as_str()))?;
                match m.kind {
                    "OPEN" => return Ok(()),
                    "ERROR" | "ID-TAKEN" | "INVALID-KEY" => {
                        bail!("server refused: {}", text.as_str())
                    }
                    _ => {}
                }
            }
            Message::Close(frame) => bail!("closed before OPEN: {frame:?}"),
            _ => {}
        }
    }
    bail!("connection ended before OPEN")
}

/// Best-effort close handshake; never blocks longer than `timeout`.
pub async fn close_quietly(mut ws: Ws, timeout: Duration) {
    let _ = tokio::time::timeout(timeout, async {
        if ws.close(None).await.is_ok() {
            while let Some(Ok(_)) = ws.next().await {}
        }
    })
    .await;
}

pub fn heartbeat() -> Message {
    Message::text(r#"{"type":"HEARTBEAT"}"#)
}

/// What one inbound frame meant to a load task.
#[derive(Debug)]
pub enum Event {
    /// An OFFER carrying our timestamp `t` (nanoseconds since the shared base).
    Offer(u64),
    /// Something we do not care about (pings, other message types).
    Other,
    /// A message we could not parse.
    Bad,
    /// The connection ended or failed.
    Closed(String),
}

pub fn classify(msg: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>) -> Event {
    match msg {
        None => Event::Closed("connection ended".into()),
        Some(Err(e)) => Event::Closed(e.to_string()),
        Some(Ok(Message::Close(f))) => Event::Closed(format!("server closed: {f:?}")),
        Some(Ok(Message::Text(text))) => {
            match serde_json::from_str::<Incoming<'_>>(text.as_str()) {
                Ok(Incoming {
                    kind: "OFFER",
                    payload: Some(Payload { t: Some(t) }),
                }) => Event::Offer(t),
                Ok(Incoming { kind: "ERROR", .. }) => {
                    Event::Closed(format!("server error: {}", text.as_str()))
                }
                Ok(_) => Event::Other,
                Err(_) => Event::Bad,
            }
        }
        Some(Ok(_)) => Event::Other,
    }
}

/// Builds `OFFER` messages to one destination with a payload of about `size`
/// bytes: `{"t":<nanos>,"pad":"xxx…"}`.
#[derive(Debug, Clone)]
pub struct OfferBuilder {
    prefix: String,
    pad: String,
}

impl OfferBuilder {
    pub fn new(dst: &str, payload_size: usize) -> Self {
        Self {
            prefix: format!(r#"{{"type":"OFFER","dst":"{dst}","payload":{{"t":"#),
            pad: "x".repeat(payload_size),
        }
    }

    pub fn build(&self, t: u64) -> Message {
        let mut s = String::with_capacity(self.prefix.len() + self.pad.len() + 32);
        s.push_str(&self.prefix);
        let before = s.len();
        let _ = write!(s, "{t}");
        let digits = s.len() - before;
        // payload = {"t": + digits + ,"pad":" + pad + "}
        let overhead = 5 + digits + 8 + 2;
        let pad = self.pad.len().saturating_sub(overhead);
        s.push_str(r#","pad":""#);
        s.push_str(&self.pad[..pad]);
        s.push_str(r#""}}"#);
        Message::text(s)
    }
}

/// Nanoseconds from `base` to `at` (0 if `at` is earlier).
pub fn nanos_since(base: Instant, at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(base).as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offer_has_requested_payload_size() {
        let b = OfferBuilder::new("peer-b", 200);
        let Message::Text(t) = b.build(123_456_789) else {
            panic!("not text")
        };
        let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
        assert_eq!(v["type"], "OFFER");
        assert_eq!(v["dst"], "peer-b");
        assert_eq!(v["payload"]["t"], 123_456_789);
        assert_eq!(v["payload"].to_string().len(), 200);
    }

    #[test]
    fn classify_reads_reference_server_echo() {
        let text = r#"{"type":"OFFER","dst":"b","payload":{"t":42,"pad":"xx"},"src":"a"}"#;
        match classify(Some(Ok(Message::text(text)))) {
            Event::Offer(42) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn proxy_headers_name_the_synthetic_client() {
        let src = synthetic_client(251);
        assert_eq!(src.ip(), &Ipv4Addr::new(198, 18, 1, 2));
        let dst = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9000);
        let v1 = proxy_header(Proxied::V1, src, dst);
        assert_eq!(v1, b"PROXY TCP4 198.18.1.2 127.0.0.1 10251 9000\r\n");
        let v2 = proxy_header(Proxied::V2, src, dst);
        assert_eq!(&v2[..12], b"\r\n\r\n\0\r\nQUIT\n");
        assert_eq!(&v2[16..20], &[198, 18, 1, 2]);
        assert!(proxy_header(Proxied::Xff, src, dst).is_empty());
    }

    #[test]
    fn target_rejects_remote_hosts() {
        assert!(Target::new("ws://10.0.0.1:9000/peerjs", "peerjs", 1).is_err());
        let t = Target::new("ws://localhost:9000/peerjs/", "peerjs", 4).unwrap();
        assert_eq!(t.base_url(), "ws://127.0.0.1:9000/peerjs");
        assert_eq!(t.src_addr(5), Ipv4Addr::new(127, 0, 0, 2));
    }
}
