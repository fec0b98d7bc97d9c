//! Black-box harness for the PeerJS broker conformance suite (PEERJS.md §3).
//!
//! [`start`] boots one broker per test on `127.0.0.1:<ephemeral>` and returns a [`Target`] that
//! stops it on drop. The backend comes from `KIBITZ_CONFORMANCE_TARGET`:
//!
//! * `ours` (default): `kibitz_signal::serve` in-process;
//! * `reference`: `node tests/reference/peer-server.mjs '<json>'` (the real `peer@1.0.2`), which
//!   proves the suite itself asserts the reference behaviour;
//! * `cluster`: three `kibitz_signal` nodes sharing a `redis-server` started for the test; every
//!   WebSocket and HTTP request goes to a node picked at random (seed: `KIBITZ_CLUSTER_SEED`).
//!
//! HTTP goes through a tiny raw HTTP/1.1 client ([`Target::http`]) so status lines and headers are
//! seen exactly as sent. WebSockets use tokio-tungstenite, wrapped in [`Peer`].

// Test-support code: a failed expectation is a test failure, so panicking is the point.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use kibitz_proto::SplitMix64;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};
use tokio_tungstenite::tungstenite::{self, Message, protocol::CloseFrame};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long any single expected frame / HTTP response may take.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(3);

/// Which broker the suite runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `kibitz_signal::serve`, in-process.
    Ours,
    /// The reference Node server, `peer@1.0.2`.
    Reference,
    /// Three nodes of ours in cluster mode on one Redis.
    Cluster,
    /// Three nodes of ours in cluster mode on a 3-master Redis Cluster (16 registry shards).
    RedisCluster,
}

impl Backend {
    /// The backend selected by `KIBITZ_CONFORMANCE_TARGET` (`ours` unless set to `reference`).
    pub fn from_env() -> Self {
        match std::env::var("KIBITZ_CONFORMANCE_TARGET").as_deref() {
            Ok("reference") | Ok("ref") | Ok("node") => Self::Reference,
            Ok("cluster") => Self::Cluster,
            Ok("redis-cluster") => Self::RedisCluster,
            Ok("ours") | Ok("") | Err(_) => Self::Ours,
            Ok(other) => panic!(
                "KIBITZ_CONFORMANCE_TARGET={other:?}: expected `ours`, `cluster`, `redis-cluster` or `reference`"
            ),
        }
    }
}

/// Broker options shared by both backends.
#[derive(Debug, Clone)]
pub struct Opts {
    /// HTTP base path as a user would give it (`/`, `/myapp`); WS is `{path}/peerjs`.
    pub path: String,
    pub key: String,
    pub expire_timeout_ms: u64,
    pub alive_timeout_ms: u64,
    pub concurrent_limit: usize,
    pub allow_discovery: bool,
    /// CORS allow-list; empty reflects any origin (the reference default).
    pub cors_origins: Vec<String>,
    /// Expiry sweep period; only the reference takes it (ours sweeps on its own schedule).
    pub cleanup_out_msgs_ms: u64,
    /// Opt-in same-token takeover; only ours has it.
    pub takeover: bool,
}

impl Default for Opts {
    fn default() -> Self {
        Self {
            path: "/".into(),
            key: "peerjs".into(),
            expire_timeout_ms: 5000,
            alive_timeout_ms: 90_000,
            concurrent_limit: 5000,
            allow_discovery: false,
            cors_origins: Vec::new(),
            cleanup_out_msgs_ms: 200,
            takeover: false,
        }
    }
}

/// `/x` and `x/` become `/x/`; `/` stays `/`.
fn normalise_path(path: &str) -> String {
    let trimmed = path.trim_matches('/');
    if trimmed.is_empty() {
        "/".into()
    } else {
        format!("/{trimmed}/")
    }
}

enum Running {
    Ours {
        shutdown: Option<tokio::sync::oneshot::Sender<()>>,
        task: tokio::task::JoinHandle<std::io::Result<()>>,
    },
    Reference {
        // kill_on_drop(true): dropping the child kills the node process.
        _child: tokio::process::Child,
    },
    Cluster {
        // Nodes first: they go before their Redis.
        _nodes: Vec<kibitz_e2e::Node>,
        _redis: kibitz_e2e::Registry,
    },
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Ours { .. } => "Ours",
            Self::Reference { .. } => "Reference",
            Self::Cluster { .. } => "Cluster",
        })
    }
}

/// A running broker. Dropping it stops the broker.
#[derive(Debug)]
pub struct Target {
    pub backend: Backend,
    pub port: u16,
    /// Normalised HTTP base path (`/`, `/myapp/`).
    pub path: String,
    /// Cluster: every node's port (`port` is the first).
    pub ports: Vec<u16>,
    running: Running,
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Running::Ours { shutdown, task } = &mut self.running {
            if let Some(tx) = shutdown.take() {
                let _ = tx.send(());
            }
            task.abort();
        }
    }
}

/// Boots a broker with `opts` on the backend chosen by `KIBITZ_CONFORMANCE_TARGET`.
pub async fn start(opts: Opts) -> Target {
    init_tracing();
    let backend = Backend::from_env();
    let path = normalise_path(&opts.path);
    let (ports, running) = match backend {
        Backend::Ours => {
            let (port, running) = start_ours(&opts, &path).await;
            (vec![port], running)
        }
        Backend::Reference => {
            let (port, running) = start_reference(&opts).await;
            (vec![port], running)
        }
        Backend::Cluster => start_cluster(&opts, &path, kibitz_e2e::RegistryKind::Single).await,
        Backend::RedisCluster => {
            start_cluster(&opts, &path, kibitz_e2e::RegistryKind::Cluster).await
        }
    };
    Target {
        backend,
        port: ports[0],
        path,
        ports,
        running,
    }
}

fn ours_config(opts: &Opts, path: &str) -> kibitz_signal::Config {
    kibitz_signal::Config {
        path: path.to_owned(),
        key: opts.key.clone(),
        expire_timeout: Duration::from_millis(opts.expire_timeout_ms),
        alive_timeout: Duration::from_millis(opts.alive_timeout_ms),
        concurrent_limit: opts.concurrent_limit,
        allow_discovery: opts.allow_discovery,
        cors_origins: opts.cors_origins.clone(),
        takeover: opts.takeover,
        ..kibitz_signal::Config::default()
    }
}

/// Three cluster nodes on a fresh Redis (or Redis Cluster); returns once each has joined
/// the registry.
async fn start_cluster(
    opts: &Opts,
    path: &str,
    kind: kibitz_e2e::RegistryKind,
) -> (Vec<u16>, Running) {
    let redis = kibitz_e2e::Registry::start(kind);
    let nodes: Vec<kibitz_e2e::Node> = (0..3)
        .map(|_| kibitz_e2e::Node::start(redis.config(ours_config(opts, path), 2000)))
        .collect();
    let ports: Vec<u16> = nodes.iter().map(|n| n.addr.port()).collect();
    for port in &ports {
        kibitz_e2e::wait_cluster_ready(*port).await;
    }
    (
        ports,
        Running::Cluster {
            _nodes: nodes,
            _redis: redis,
        },
    )
}

static PICK: AtomicU64 = AtomicU64::new(0);

impl Target {
    /// The port for the next connection: one node at random in a cluster.
    pub fn pick(&self) -> u16 {
        if self.ports.len() < 2 {
            return self.port;
        }
        let seed: u64 = std::env::var("KIBITZ_CLUSTER_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| u64::from(std::process::id()));
        // SplitMix64's mix over (seed, call number): random-looking, reproducible with the seed.
        let z = SplitMix64::mix(
            seed.wrapping_add(PICK.fetch_add(1, Ordering::Relaxed))
                .wrapping_mul(SplitMix64::GAMMA),
        );
        self.ports[(z % self.ports.len() as u64) as usize]
    }
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

async fn start_ours(opts: &Opts, path: &str) -> (u16, Running) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let port = listener.local_addr().expect("local_addr").port();
    let config = ours_config(opts, path);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        let _ = rx.await;
    };
    let task = tokio::spawn(kibitz_signal::serve(listener, config, shutdown));
    (
        port,
        Running::Ours {
            shutdown: Some(tx),
            task,
        },
    )
}

async fn start_reference(opts: &Opts) -> (u16, Running) {
    let mut json = serde_json::json!({
        "port": 0,
        "path": opts.path,
        "key": opts.key,
        "expire_timeout": opts.expire_timeout_ms,
        "alive_timeout": opts.alive_timeout_ms,
        "concurrent_limit": opts.concurrent_limit,
        "allow_discovery": opts.allow_discovery,
        "cleanup_out_msgs": opts.cleanup_out_msgs_ms,
    });
    if !opts.cors_origins.is_empty() {
        json["corsOptions"] = serde_json::json!({ "origin": opts.cors_origins });
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/reference/peer-server.mjs");
    let node = std::env::var("NODE").unwrap_or_else(|_| "node".into());
    let mut child = tokio::process::Command::new(&node)
        .arg(script)
        .arg(json.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn `{node} {script}`: {e}"));
    let stdout = child.stdout.take().expect("child stdout");
    let mut lines = BufReader::new(stdout).lines();
    let line = timeout(Duration::from_secs(15), lines.next_line())
        .await
        .expect("reference server did not report its port within 15 s")
        .expect("read reference server stdout")
        .expect("reference server exited before listening");
    let port = line
        .strip_prefix("LISTENING ")
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("unexpected reference server output {line:?}"));
    (port, Running::Reference { _child: child })
}

// ---------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------

/// A raw HTTP/1.1 response.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names lower-cased, in wire order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of header `name`, comma-split and trimmed (for list headers such as `Vary`).
    pub fn header_tokens(&self, name: &str) -> Vec<String> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .filter(|(n, _)| *n == name)
            .flat_map(|(_, v)| v.split(',').map(|t| t.trim().to_owned()))
            .filter(|t| !t.is_empty())
            .collect()
    }

    pub fn text(&self) -> String {
        String::from_utf8(self.body.clone()).expect("UTF-8 body")
    }
}

impl Target {
    /// `http://127.0.0.1:PORT`.
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.pick())
    }

    /// `{path}peerjs` — the WebSocket endpoint path.
    pub fn ws_path(&self) -> String {
        format!("{}peerjs", self.path)
    }

    /// `ws://127.0.0.1:PORT{path}peerjs?{query}` (no `?` when `query` is empty).
    pub fn ws_url(&self, query: &str) -> String {
        if query.is_empty() {
            self.ws_url_raw(&self.ws_path())
        } else {
            self.ws_url_raw(&format!("{}?{query}", self.ws_path()))
        }
    }

    /// `ws://127.0.0.1:PORT{path_and_query}`, verbatim.
    pub fn ws_url_raw(&self, path_and_query: &str) -> String {
        format!("ws://127.0.0.1:{}{path_and_query}", self.pick())
    }

    /// Sends one request (`Connection: close`) and reads the whole response.
    pub async fn http(&self, method: &str, target: &str, headers: &[(&str, &str)]) -> HttpResponse {
        let port = self.pick();
        let fut = async {
            let mut stream = TcpStream::connect(("127.0.0.1", port))
                .await
                .expect("connect");
            let mut req = format!("{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n");
            for (k, v) in headers {
                req.push_str(&format!("{k}: {v}\r\n"));
            }
            req.push_str("Connection: close\r\n\r\n");
            stream
                .write_all(req.as_bytes())
                .await
                .expect("write request");
            let mut raw = Vec::new();
            stream.read_to_end(&mut raw).await.expect("read response");
            parse_response(&raw, method == "HEAD")
        };
        timeout(RECV_TIMEOUT, fut).await.unwrap_or_else(|_| {
            panic!("{method} {target}: no complete response within {RECV_TIMEOUT:?}")
        })
    }

    /// `GET target` with no extra headers.
    pub async fn get(&self, target: &str) -> HttpResponse {
        self.http("GET", target, &[]).await
    }
}

fn parse_response(raw: &[u8], head: bool) -> HttpResponse {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of headers in {:?}", String::from_utf8_lossy(raw)));
    let head_text = std::str::from_utf8(&raw[..split]).expect("ASCII response head");
    let mut lines = head_text.split("\r\n");
    let status_line = lines.next().expect("status line");
    let mut parts = status_line.splitn(3, ' ');
    assert_eq!(
        parts.next(),
        Some("HTTP/1.1"),
        "status line {status_line:?}"
    );
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .expect("status code");
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (k, v) = l
                .split_once(':')
                .unwrap_or_else(|| panic!("bad header line {l:?}"));
            (k.trim().to_ascii_lowercase(), v.trim().to_owned())
        })
        .collect();
    let rest = &raw[split + 4..];
    let find = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let body = if head || status == 204 || status == 304 || (100..200).contains(&status) {
        Vec::new()
    } else if find("transfer-encoding").is_some_and(|te| te.eq_ignore_ascii_case("chunked")) {
        decode_chunked(rest)
    } else if let Some(len) = find("content-length") {
        let len: usize = len.parse().expect("content-length");
        assert!(rest.len() >= len, "body shorter than content-length");
        rest[..len].to_vec()
    } else {
        rest.to_vec()
    };
    HttpResponse {
        status,
        headers,
        body,
    }
}

fn decode_chunked(mut rest: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("chunk size line");
        let size_text = std::str::from_utf8(&rest[..eol]).expect("chunk size");
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .expect("hex chunk size");
        rest = &rest[eol + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

// ---------------------------------------------------------------------------------------------
// WebSocket
// ---------------------------------------------------------------------------------------------

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Outcome of a WebSocket upgrade attempt.
#[derive(Debug)]
pub enum Upgrade {
    Accepted(Box<Ws>),
    /// The server answered the upgrade with this non-101 HTTP status.
    Refused(u16),
}

static PROBE_SEQ: AtomicU64 = AtomicU64::new(1);

/// JSON string literal for `s`.
pub fn js(s: &str) -> String {
    serde_json::to_string(s).expect("string to JSON")
}

/// `{"type":"OPEN"}`.
pub const OPEN: &str = r#"{"type":"OPEN"}"#;

/// One WebSocket client. `id` is what the test believes it is registered as (used by probes).
#[derive(Debug)]
pub struct Peer {
    pub id: String,
    ws: Ws,
}

impl Target {
    /// Attempts an upgrade at `ws_url_raw(path_and_query)`.
    pub async fn upgrade_raw(&self, path_and_query: &str) -> Upgrade {
        Self::upgrade_url(self.ws_url_raw(path_and_query)).await
    }

    async fn upgrade_url(url: String) -> Upgrade {
        match timeout(RECV_TIMEOUT, tokio_tungstenite::connect_async(url.as_str())).await {
            Err(_) => panic!("upgrade {url}: no answer within {RECV_TIMEOUT:?}"),
            Ok(Ok((ws, resp))) => {
                assert_eq!(resp.status().as_u16(), 101, "upgrade {url}");
                Upgrade::Accepted(Box::new(ws))
            }
            Ok(Err(tungstenite::Error::Http(resp))) => Upgrade::Refused(resp.status().as_u16()),
            Ok(Err(e)) => panic!("upgrade {url}: {e}"),
        }
    }

    /// Upgrades on the WS endpoint with `query`; panics unless the server answers 101.
    pub async fn connect(&self, query: &str) -> Peer {
        let path = if query.is_empty() {
            self.ws_path()
        } else {
            format!("{}?{query}", self.ws_path())
        };
        match self.upgrade_raw(&path).await {
            Upgrade::Accepted(ws) => Peer {
                id: String::new(),
                ws: *ws,
            },
            Upgrade::Refused(status) => panic!("upgrade {path}: HTTP {status}, expected 101"),
        }
    }

    /// Connects as `id`/`token` with the configured key; does not read anything.
    pub async fn connect_as(&self, key: &str, id: &str, token: &str) -> Peer {
        let mut peer = self
            .connect(&format!("key={key}&id={id}&token={token}"))
            .await;
        peer.id = id.to_owned();
        peer
    }

    /// Waits until everything `peer` sent so far has been handled as far as any other client
    /// can tell, so a client that connects next sees its effects. On one server that is a
    /// probe round trip. In a cluster a node hands messages for other nodes' (or offline)
    /// ids to the registry after its own socket moved on, so `peer` then also sends an OFFER
    /// to a fresh peer on every node: a node's registry traffic runs in order, so their
    /// arrival proves `peer`'s earlier messages were routed.
    pub async fn settle(&self, peer: &mut Peer) {
        peer.probe().await;
        if self.ports.len() < 2 {
            return;
        }
        let n = PROBE_SEQ.fetch_add(1, Ordering::Relaxed);
        let mut fences = Vec::new();
        for (i, port) in self.ports.iter().enumerate() {
            let id = format!("fence-{n}-{i}");
            let url = format!(
                "ws://127.0.0.1:{port}{}?key=peerjs&id={id}&token=fence",
                self.ws_path()
            );
            let mut fence = match Self::upgrade_url(url).await {
                Upgrade::Accepted(ws) => Peer {
                    id: id.clone(),
                    ws: *ws,
                },
                Upgrade::Refused(status) => panic!("fence {id}: HTTP {status}"),
            };
            fence.expect_text(OPEN).await;
            fences.push(fence);
        }
        for fence in &mut fences {
            let id = js(&fence.id);
            peer.send_text(&format!(
                r#"{{"type":"OFFER","dst":{id},"payload":"fence"}}"#
            ))
            .await;
            let src = js(&peer.id);
            fence
                .expect_text(&format!(
                    r#"{{"type":"OFFER","src":{src},"dst":{id},"payload":"fence"}}"#
                ))
                .await;
        }
        for fence in fences {
            fence.close().await;
        }
    }

    /// Connects as `id`/`token` (key `peerjs` unless the test set another) and expects `OPEN`.
    pub async fn open(&self, id: &str, token: &str) -> Peer {
        self.open_with_key("peerjs", id, token).await
    }

    pub async fn open_with_key(&self, key: &str, id: &str, token: &str) -> Peer {
        let mut peer = self.connect_as(key, id, token).await;
        peer.expect_text(OPEN).await;
        peer
    }

    /// Like [`Target::open`], but retries while the server still refuses the id (`ID-TAKEN`, or
    /// the concurrent limit) because it has not yet processed an earlier socket's close.
    pub async fn open_retry(&self, id: &str, token: &str) -> Peer {
        let deadline = Instant::now() + RECV_TIMEOUT;
        loop {
            let mut peer = self.connect_as("peerjs", id, token).await;
            let first = peer.recv_text().await;
            if first == OPEN {
                return peer;
            }
            assert!(
                Instant::now() < deadline,
                "{id}: still refused after {RECV_TIMEOUT:?}; last answer {first}"
            );
            peer.expect_close_1005().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Peer {
    pub async fn send_text(&mut self, text: &str) {
        self.ws
            .send(Message::text(text.to_owned()))
            .await
            .expect("send text frame");
    }

    pub async fn send_binary(&mut self, bytes: &[u8]) {
        self.ws
            .send(Message::binary(bytes.to_vec()))
            .await
            .expect("send binary frame");
    }

    pub async fn send_ping(&mut self, payload: &[u8]) {
        self.ws
            .send(Message::Ping(payload.to_vec().into()))
            .await
            .expect("send ping");
    }

    /// The next frame (incoming pings are answered by tungstenite and skipped), within `wait`.
    /// `None` when the stream ended.
    pub async fn recv_within(&mut self, wait: Duration) -> Option<Message> {
        let id = self.id.clone();
        let fut = async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Ping(_))) => continue,
                    Some(Ok(m)) => return Some(m),
                    Some(Err(
                        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed,
                    ))
                    | None => return None,
                    Some(Err(tungstenite::Error::Io(e))) => {
                        tracing::debug!("{id}: io error treated as end of stream: {e}");
                        return None;
                    }
                    Some(Err(e)) => panic!("{id}: websocket error: {e}"),
                }
            }
        };
        timeout(wait, fut)
            .await
            .unwrap_or_else(|_| panic!("peer {:?}: nothing received within {wait:?}", self.id))
    }

    pub async fn recv(&mut self) -> Option<Message> {
        self.recv_within(RECV_TIMEOUT).await
    }

    /// The next frame, which must be a text frame.
    pub async fn recv_text(&mut self) -> String {
        self.recv_text_within(RECV_TIMEOUT).await
    }

    pub async fn recv_text_within(&mut self, wait: Duration) -> String {
        match self.recv_within(wait).await {
            Some(Message::Text(t)) => t.to_string(),
            other => panic!("peer {:?}: expected a text frame, got {other:?}", self.id),
        }
    }

    /// The next frame must be exactly this text frame.
    pub async fn expect_text(&mut self, expected: &str) {
        let got = self.recv_text().await;
        assert_eq!(got, expected, "peer {:?}: unexpected frame", self.id);
    }

    /// The next frame must be a close frame with no status (1005 at the client), then the stream
    /// must end.
    pub async fn expect_close_1005(&mut self) {
        match self.recv().await {
            Some(Message::Close(None)) => {}
            other => panic!(
                "peer {:?}: expected a close frame without status (1005), got {other:?}",
                self.id
            ),
        }
        self.expect_end().await;
    }

    /// The next frame must be a close frame (any status); returns it. Then the stream must end.
    pub async fn expect_close_any(&mut self) -> Option<CloseFrame> {
        let frame = match self.recv().await {
            Some(Message::Close(frame)) => frame,
            other => panic!("peer {:?}: expected a close frame, got {other:?}", self.id),
        };
        self.expect_end().await;
        frame
    }

    /// After a close frame: the stream ends (TCP closed) without further frames.
    pub async fn expect_end(&mut self) {
        if let Some(m) = self.recv().await {
            panic!(
                "peer {:?}: expected end of stream after close, got {m:?}",
                self.id
            );
        }
    }

    /// Client-initiated clean close: sends a close frame and waits for the server to finish.
    pub async fn close(mut self) {
        self.ws.close(None).await.expect("send close");
        loop {
            match self.recv().await {
                None => return,
                Some(Message::Close(_)) => continue,
                Some(other) => tracing::debug!("{}: frame while closing: {other:?}", self.id),
            }
        }
    }

    /// A unique self-addressed OFFER (`{"type":"OFFER","dst":<id>,"payload":{"probe":N}}`) and
    /// the exact frame the broker must relay back. Asserting it is the very next frame proves
    /// nothing else was queued for this socket before it.
    pub fn probe_frames(&self) -> (String, String) {
        let n = PROBE_SEQ.fetch_add(1, Ordering::Relaxed);
        let dst = js(&self.id);
        let sent = format!(r#"{{"type":"OFFER","dst":{dst},"payload":{{"probe":{n}}}}}"#);
        let relayed =
            format!(r#"{{"type":"OFFER","src":{dst},"dst":{dst},"payload":{{"probe":{n}}}}}"#);
        (sent, relayed)
    }

    /// Self-addressed OFFER round trip: nothing else may arrive before it.
    pub async fn probe(&mut self) {
        let (sent, relayed) = self.probe_frames();
        self.send_text(&sent).await;
        let got = self.recv_text().await;
        assert_eq!(
            got, relayed,
            "peer {:?}: the probe was not the next frame",
            self.id
        );
    }

    /// Ping/pong round trip for a socket that is not (or no longer) the id's current socket:
    /// the pong must be the very next frame.
    pub async fn ping_probe(&mut self) {
        let n = PROBE_SEQ.fetch_add(1, Ordering::Relaxed);
        let payload = format!("probe-{n}").into_bytes();
        self.send_ping(&payload).await;
        match self.recv().await {
            Some(Message::Pong(p)) if p.as_ref() == payload.as_slice() => {}
            other => panic!(
                "peer {:?}: expected our pong as the next frame, got {other:?}",
                self.id
            ),
        }
    }
}
