//! Shared helpers for the end-to-end tests: an in-process broker on 127.0.0.1:0 and a small
//! WebSocket client for it.

// Test support: a failed set-up step should fail the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub use kibitz_signal::{Config, Limits};

/// A broker running in this process; stopped when dropped.
#[derive(Debug)]
pub struct Broker {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Starts a broker with `config` on 127.0.0.1:0.
pub async fn start(config: Config) -> Broker {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(kibitz_signal::serve(listener, config, async move {
        let _ = rx.await;
    }));
    Broker {
        addr,
        stop: Some(tx),
    }
}

impl Broker {
    /// `ws://…/peerjs?key=peerjs&id=…&token=…`.
    pub fn ws_url(&self, id: &str, token: &str) -> String {
        format!(
            "ws://{}/peerjs?key=peerjs&id={id}&token={token}&version=1.5.5",
            self.addr
        )
    }

    /// Connects as `id` and expects `OPEN`.
    pub async fn peer(&self, id: &str) -> Client {
        let mut c = self.connect(id, &format!("tok-{id}")).await;
        c.expect(r#"{"type":"OPEN"}"#).await;
        c
    }

    /// Connects as `id` with `token`; reads nothing.
    pub async fn connect(&self, id: &str, token: &str) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(self.ws_url(id, token))
            .await
            .expect("websocket connect");
        Client { ws }
    }
}

/// What a client saw next.
#[derive(Debug, PartialEq, Eq)]
pub enum Seen {
    /// A text frame.
    Text(String),
    /// A close frame with this code (1005 when it had none).
    Closed(u16),
    /// The connection ended without a close frame.
    Gone,
    /// Nothing within the wait.
    Nothing,
}

/// A test WebSocket client.
#[derive(Debug)]
pub struct Client {
    /// The socket.
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Client {
    /// Sends a text frame.
    pub async fn send(&mut self, text: &str) {
        self.ws
            .send(Message::text(text.to_owned()))
            .await
            .expect("send");
    }

    /// Sends a text frame, tolerating a socket the server already closed.
    pub async fn try_send(&mut self, msg: Message) -> bool {
        self.ws.send(msg).await.is_ok()
    }

    /// The next thing that happens within `wait` (pings and pongs skipped).
    pub async fn next_within(&mut self, wait: Duration) -> Seen {
        loop {
            match tokio::time::timeout(wait, self.ws.next()).await {
                Err(_) => return Seen::Nothing,
                Ok(None) | Ok(Some(Err(_))) => return Seen::Gone,
                Ok(Some(Ok(Message::Text(t)))) => return Seen::Text(t.to_string()),
                Ok(Some(Ok(Message::Close(f)))) => {
                    return Seen::Closed(f.map_or(1005, |f: CloseFrame| f.code.into()));
                }
                Ok(Some(Ok(_))) => {}
            }
        }
    }

    /// The next text frame, failing the test on anything else within 5 s.
    pub async fn recv(&mut self) -> String {
        match self.next_within(Duration::from_secs(5)).await {
            Seen::Text(t) => t,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    /// Asserts the next frame is exactly `text`.
    pub async fn expect(&mut self, text: &str) {
        assert_eq!(self.recv().await, text);
    }

    /// Asserts the server closes the socket (close frame with `code`, or a dropped
    /// connection when `code` is `None`) within 5 s, skipping text frames before it.
    pub async fn expect_closed(&mut self, code: Option<u16>) {
        loop {
            match self.next_within(Duration::from_secs(5)).await {
                Seen::Text(_) => continue,
                Seen::Closed(c) => {
                    assert_eq!(Some(c), code, "close code");
                    return;
                }
                Seen::Gone => {
                    assert!(code.is_none(), "connection dropped without close {code:?}");
                    return;
                }
                Seen::Nothing => panic!("socket still open"),
            }
        }
    }
}

/// The broker serving TLS itself with a fresh self-signed certificate for `localhost` (what
/// `kibitz serve --tls-self-signed` runs) on 127.0.0.1:0; stopped when dropped.
#[derive(Debug)]
pub struct TlsBroker {
    /// Where it listens.
    pub addr: SocketAddr,
    /// A client configuration that trusts only that certificate.
    pub client: std::sync::Arc<rustls::ClientConfig>,
    _stop: oneshot::Sender<()>,
}

/// Starts a [`TlsBroker`] with `config`.
pub async fn start_tls(config: Config) -> TlsBroker {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let (tls, pem) = kibitz_http::tls_self_signed(&["localhost".to_owned()]).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = kibitz_signal::router(kibitz_signal::SignalState::start(config));
    let opts = kibitz_http::ServeOptions {
        tls: Some(tls),
        ..Default::default()
    };
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(kibitz_http::serve(listener, app, opts, async {
        let _ = stopped.await;
    }));
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(pem.as_bytes()).unwrap())
        .unwrap();
    let client = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    TlsBroker {
        addr,
        client: std::sync::Arc::new(client),
        _stop: stop,
    }
}

/// Decodes fixture base64 (standard alphabet, padding optional).
pub fn base64(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    let config =
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    GeneralPurpose::new(&base64::alphabet::STANDARD, config)
        .decode(s)
        .expect("fixture base64")
}

/// Runs a Node scenario script under `tests/` (`script` relative to it) to completion, at most
/// 3 minutes, echoing its output. `Ok(stdout)` once it exited 0 with `N passed, 0 failed`;
/// `Err(stdout)` otherwise, so a caller can add context before failing.
pub async fn node_scenarios(script: &str, args: &[&str]) -> Result<String, String> {
    let path = format!("{}/{script}", env!("CARGO_MANIFEST_DIR"));
    let child = tokio::process::Command::new("node")
        .arg(&path)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node must be installed (scripts/test installs it)");
    let out = tokio::time::timeout(Duration::from_secs(180), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{script} timed out"))
        .expect("node ran");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("{stdout}");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    if out.status.success() && stdout.contains(" passed, 0 failed") {
        Ok(stdout)
    } else {
        Err(stdout)
    }
}

/// Runs a Node command-line script under `tests/` once: its trimmed output when it exits 0,
/// `None` when it refuses (exit 1 printing `null`); anything else fails the test.
pub fn node_cli(script: &str, args: &[&str]) -> Option<String> {
    let path = format!("{}/{script}", env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new("node")
        .arg(&path)
        .args(args)
        .output()
        .expect("node must be installed (scripts/test installs it)");
    let stdout = String::from_utf8(out.stdout).unwrap().trim_end().to_owned();
    match out.status.code() {
        Some(0) => Some(stdout),
        Some(1) if stdout == "null" => None,
        _ => panic!(
            "{script} {args:?} crashed: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// A `redis-server` of the test's own on 127.0.0.1 (no persistence), killed on drop.
/// `scripts/test` installs Redis: a missing `redis-server` fails the test.
#[derive(Debug)]
pub struct Redis {
    /// Its port on 127.0.0.1.
    pub port: u16,
    child: Option<std::process::Child>,
    dir: std::path::PathBuf,
    /// Addresses it listens on (space-separated, as `--bind` takes them).
    bind: String,
}

impl Redis {
    /// Starts one on a free loopback port and waits until it answers.
    pub fn start() -> Self {
        Self::start_bound("127.0.0.1")
    }

    /// Like [`Redis::start`], listening on `bind` instead (space-separated addresses, e.g.
    /// `127.0.0.1 10.99.1.1`: for a test inside a network namespace of its own, where other
    /// addresses than loopback are private to it).
    pub fn start_bound(bind: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "kibitz-redis-{}-{}",
            std::process::id(),
            NEXT_REDIS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("redis dir");
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("free port")
                .port();
            let mut r = Self {
                port,
                child: None,
                dir: dir.clone(),
                bind: bind.into(),
            };
            if r.spawn() {
                return r;
            }
        }
        panic!("redis-server did not start (scripts/test installs it)");
    }

    fn spawn(&mut self) -> bool {
        let child = std::process::Command::new("redis-server")
            .args(["--bind", &self.bind, "--port", &self.port.to_string()])
            // Off loopback Redis refuses password-less clients; the other addresses are in a
            // test's own network namespace.
            .args([
                "--protected-mode",
                if self.bind == "127.0.0.1" {
                    "yes"
                } else {
                    "no"
                },
            ])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/test installs it)");
        self.child = Some(child);
        // About 5 s.
        for _ in 0..250 {
            if self.ping() {
                return true;
            }
            if let Some(c) = self.child.as_mut()
                && c.try_wait().ok().flatten().is_some()
            {
                self.child = None;
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    fn ping(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    /// `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kills it (SIGKILL: whatever it held is gone).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Freezes it (SIGSTOP): connections stay open, nothing is answered, until [`Redis::thaw`].
    pub fn freeze(&self) {
        self.signal("STOP");
    }

    /// Lets a frozen one go on (SIGCONT).
    pub fn thaw(&self) {
        self.signal("CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let ok = std::process::Command::new("kill")
            .args([&format!("-{sig}"), &pid])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{sig} {pid}");
    }

    /// Starts it again, empty, on the same port.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "still running");
        for _ in 0..50 {
            if self.spawn() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("redis-server did not restart on port {}", self.port);
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Redis Cluster of the test's own on 127.0.0.1: `masters` masters with `replicas` replicas
/// each (no persistence, `cluster-node-timeout` 1000 ms so a replica takes over quickly),
/// created with `redis-cli --cluster create`; every node is killed on drop.
#[derive(Debug)]
pub struct RedisCluster {
    /// Every node's port; the first `masters` are the masters as created.
    pub ports: Vec<u16>,
    masters: usize,
    replicas: usize,
    children: Vec<Option<std::process::Child>>,
    dir: std::path::PathBuf,
}

impl RedisCluster {
    /// Starts the nodes on free loopback ports, creates the cluster and waits until every
    /// node says `cluster_state:ok` (and, with replicas, every replica is in sync).
    pub fn start(masters: usize, replicas: usize) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "kibitz-redis-cluster-{}-{}",
            std::process::id(),
            NEXT_REDIS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("redis cluster dir");
        let n = masters * (1 + replicas);
        let mut c = Self {
            ports: Vec::new(),
            masters,
            replicas,
            children: Vec::new(),
            dir,
        };
        for _ in 0..n {
            let (port, child) = c.spawn_free();
            c.ports.push(port);
            c.children.push(Some(child));
        }
        c.create();
        c
    }

    /// A free port whose cluster bus port (+10000) is free too; bound and released, so
    /// another process may take it meanwhile: the node then fails to start and the next
    /// port is tried.
    fn spawn_free(&self) -> (u16, std::process::Child) {
        for _ in 0..20 {
            let Ok(l) = std::net::TcpListener::bind("127.0.0.1:0") else {
                continue;
            };
            let Ok(port) = l.local_addr().map(|a| a.port()) else {
                continue;
            };
            if port > 55_000 || std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_err() {
                continue;
            }
            drop(l);
            if let Some(child) = self.spawn(port) {
                return (port, child);
            }
        }
        panic!("no redis-server cluster node started (scripts/test installs redis)");
    }

    fn spawn(&self, port: u16) -> Option<std::process::Child> {
        let conf = self.dir.join(format!("nodes-{port}.conf"));
        let _ = std::fs::remove_file(&conf);
        let mut child = std::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "1000"])
            .arg("--cluster-config-file")
            .arg(&conf)
            .arg("--dir")
            .arg(&self.dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/test installs it)");
        // About 5 s.
        for _ in 0..250 {
            if redis_cli(port, &["PING"]).as_deref() == Some("PONG") {
                return Some(child);
            }
            if child.try_wait().ok().flatten().is_some() {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    fn create(&self) {
        let mut args: Vec<String> = vec!["--cluster".into(), "create".into()];
        args.extend(self.ports.iter().map(|p| format!("127.0.0.1:{p}")));
        args.extend([
            "--cluster-replicas".into(),
            self.replicas.to_string(),
            "--cluster-yes".into(),
        ]);
        let out = std::process::Command::new("redis-cli")
            .args(&args)
            .output()
            .expect("redis-cli must be installed");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        self.wait_ok(&self.ports);
    }

    /// Polls until every node in `ports` says `cluster_state:ok` and every replica among them
    /// has its link to its master up (about 30 s at most).
    pub fn wait_ok(&self, ports: &[u16]) {
        let ok = |p: u16| {
            let info = redis_cli(p, &["CLUSTER", "INFO"]).unwrap_or_default();
            if !info.contains("cluster_state:ok") {
                return false;
            }
            let repl = redis_cli(p, &["INFO", "replication"]).unwrap_or_default();
            !repl.contains("role:slave") || repl.contains("master_link_status:up")
        };
        for _ in 0..1500 {
            if ports.iter().all(|p| ok(*p)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis cluster not ok on {ports:?}");
    }

    /// `redis+cluster://127.0.0.1:P1,127.0.0.1:P2,…/` (every node a seed).
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis+cluster://{}/", hosts.join(","))
    }

    /// The port of the master serving `slot` now, as a live node sees it (`CLUSTER NODES`).
    pub fn master_of(&self, slot: u16) -> Option<u16> {
        for p in self.live_ports() {
            let Some(out) = redis_cli(p, &["CLUSTER", "NODES"]) else {
                continue;
            };
            for line in out.lines() {
                let f: Vec<&str> = line.split_whitespace().collect();
                if f.len() < 9 || !f[2].contains("master") || f[2].contains("fail") {
                    continue;
                }
                let serves = f[8..].iter().any(|r| {
                    let (a, b) = r.split_once('-').unwrap_or((r, r));
                    matches!((a.parse::<u16>(), b.parse::<u16>()), (Ok(a), Ok(b)) if a <= slot && slot <= b)
                });
                if serves {
                    let port = f[1].split(['@', ',']).next()?.rsplit(':').next()?;
                    return port.parse().ok();
                }
            }
        }
        None
    }

    /// Whether the node on `port` is a replica.
    pub fn is_replica(&self, port: u16) -> bool {
        redis_cli(port, &["ROLE"]).is_some_and(|r| r.starts_with("slave"))
    }

    /// SIGKILLs the node on `port` (whatever it had not replicated is gone).
    pub fn kill_port(&mut self, port: u16) {
        if let Some(i) = self.ports.iter().position(|p| *p == port)
            && let Some(mut c) = self.children[i].take()
        {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The live nodes' ports.
    pub fn live_ports(&self) -> Vec<u16> {
        self.ports
            .iter()
            .zip(&self.children)
            .filter(|(_, c)| c.is_some())
            .map(|(p, _)| *p)
            .collect()
    }

    /// Kills every node (the whole registry is gone).
    pub fn kill(&mut self) {
        for c in self.children.iter_mut() {
            if let Some(mut c) = c.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    /// Starts every node again, empty, on the same ports, and creates the cluster anew.
    pub fn start_again(&mut self) {
        assert!(self.children.iter().all(Option::is_none), "still running");
        for i in 0..self.ports.len() {
            let mut child = None;
            for _ in 0..50 {
                child = self.spawn(self.ports[i]);
                if child.is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            assert!(
                child.is_some(),
                "redis cluster node {} did not restart",
                self.ports[i]
            );
            self.children[i] = child;
        }
        self.create();
    }

    /// How many masters it was created with.
    pub fn masters(&self) -> usize {
        self.masters
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `redis-cli -p PORT ARGS…`'s output, trimmed (`None` if it could not run or failed).
pub fn redis_cli(port: u16, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (!text.starts_with("ERR") && !text.starts_with("Could not connect")).then_some(text)
}

/// The registry a cluster test runs on: one Redis, or a 3-master Redis Cluster.
#[derive(Debug)]
pub enum Registry {
    Single(Redis),
    Cluster(RedisCluster),
}

/// Which registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistryKind {
    Single,
    /// Three masters, no replicas.
    Cluster,
}

impl Registry {
    pub fn start(kind: RegistryKind) -> Self {
        match kind {
            RegistryKind::Single => Self::Single(Redis::start()),
            RegistryKind::Cluster => Self::Cluster(RedisCluster::start(3, 0)),
        }
    }

    /// Kills all of it (its data is gone).
    pub fn kill(&mut self) {
        match self {
            Self::Single(r) => r.kill(),
            Self::Cluster(c) => c.kill(),
        }
    }

    /// Starts it again, empty.
    pub fn start_again(&mut self) {
        match self {
            Self::Single(r) => r.start_again(),
            Self::Cluster(c) => c.start_again(),
        }
    }

    /// `config` as a cluster node on this registry with a `lease_ms` lease.
    /// `config` as a cluster node on this registry, with node links on 127.0.0.1 (so
    /// cross-node messages go direct as well as through Redis).
    pub fn config(&self, config: Config, lease_ms: u64) -> Config {
        let mut config = match self {
            Self::Single(r) => cluster_config(config, r, lease_ms),
            Self::Cluster(c) => redis_cluster_config(config, c, lease_ms),
        };
        if let Some(cc) = config.cluster.as_mut() {
            cc.link = Some("127.0.0.1:0".into());
        }
        config
    }

    /// The one `redis-server` (`None` on a Redis Cluster).
    pub fn single(&self) -> Option<&Redis> {
        match self {
            Self::Single(r) => Some(r),
            Self::Cluster(_) => None,
        }
    }
}

/// `config` as a cluster node on the Redis Cluster `cluster` (16 shards) with a `lease_ms`
/// lease.
pub fn redis_cluster_config(mut config: Config, cluster: &RedisCluster, lease_ms: u64) -> Config {
    let mut cc = kibitz_signal::ClusterConfig::single(
        cluster.url().into(),
        Duration::from_millis(lease_ms),
        "kibitz:",
    );
    cc.redis_cluster = true;
    cc.shards = 16;
    config.cluster = Some(cc);
    config
}

static NEXT_REDIS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// `config` as a cluster node on `redis` with a `lease_ms` lease.
pub fn cluster_config(mut config: Config, redis: &Redis, lease_ms: u64) -> Config {
    config.cluster = Some(kibitz_signal::ClusterConfig::single(
        redis.url().into(),
        Duration::from_millis(lease_ms),
        "kibitz:",
    ));
    config
}

/// A broker node on its own runtime and thread, as if it were its own process: dropping
/// (or [`Node::kill`]) ends it abruptly, sockets and Redis connections cut, nothing released.
#[derive(Debug)]
pub struct Node {
    /// Where it listens.
    pub addr: SocketAddr,
    rt: Option<tokio::runtime::Runtime>,
}

impl Node {
    /// Starts a node with `config` on 127.0.0.1:0.
    pub fn start(config: Config) -> Self {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let addr = std_listener.local_addr().expect("addr");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        rt.spawn(async move {
            let listener = TcpListener::from_std(std_listener).expect("listener");
            let _ = kibitz_signal::serve(listener, config, std::future::pending()).await;
        });
        Self { addr, rt: Some(rt) }
    }

    /// Ends the node at once, as a crash would.
    pub fn kill(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }

    /// A [`Broker`]-like handle for connecting clients to this node.
    pub fn broker(&self) -> Broker {
        Broker {
            addr: self.addr,
            stop: None,
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until the cluster node on `port` has joined its registry (`GET /id` answers 200;
/// it answers 503 while the node cannot reach Redis).
pub async fn wait_cluster_ready(port: u16) {
    wait_id_status(port, 200, "join the cluster").await;
}

/// Waits until the cluster node on `port` has noticed it lost its registry (`GET /id` 503).
pub async fn wait_cluster_down(port: u16) {
    wait_id_status(port, 503, "notice the registry was gone").await;
}

/// Polls `GET /id` on `port` until it answers `status`, for at most 10 s.
async fn wait_id_status(port: u16, status: u16, what: &str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let want = format!("HTTP/1.1 {status}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)).await {
            let req =
                format!("GET /id HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
            let mut head = [0u8; 12];
            if s.write_all(req.as_bytes()).await.is_ok()
                && s.read_exact(&mut head).await.is_ok()
                && head == want.as_bytes()
            {
                return;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node on port {port} did not {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `$KIBITZ_BIN`, else `kibitz` in this test binary's profile dir (`target/debug/deps/..`).
pub fn kibitz_bin() -> std::path::PathBuf {
    if let Some(bin) = std::env::var_os("KIBITZ_BIN") {
        return std::path::PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("current exe");
    let bin = exe
        .parent()
        .and_then(std::path::Path::parent)
        .expect("target profile dir")
        .join("kibitz");
    assert!(
        bin.is_file(),
        "{} missing: run `cargo build -p kibitz-cli` (cargo test --workspace builds it) or set KIBITZ_BIN",
        bin.display()
    );
    bin
}

use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};

/// A `kibitz` process with piped stdin and stdout, read line by line.
#[derive(Debug)]
pub struct KibitzProc {
    /// The process.
    pub child: tokio::process::Child,
    /// Its stdin.
    pub stdin: tokio::process::ChildStdin,
    out: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    /// Every line read so far.
    pub seen: Vec<String>,
    name: String,
}

impl KibitzProc {
    /// Starts `kibitz <args>`; `name` labels failures.
    pub fn spawn(name: &str, args: &[&str]) -> Self {
        let mut cmd = tokio::process::Command::new(kibitz_bin());
        cmd.args(args);
        Self::spawn_with(name, cmd)
    }

    /// Starts `cmd` (a `kibitz` command line with its own environment or wrapper) with
    /// stdin and stdout piped; stderr as `cmd` says.
    pub fn spawn_with(name: &str, mut cmd: tokio::process::Command) -> Self {
        let mut child = cmd
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn kibitz");
        let stdin = child.stdin.take().expect("stdin");
        let out = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
        Self {
            child,
            stdin,
            out,
            seen: Vec::new(),
            name: name.into(),
        }
    }

    /// Waits up to `wait` for a line satisfying `pred` (lines already seen count).
    pub async fn expect(&mut self, wait: Duration, pred: impl Fn(&str) -> bool) -> String {
        if let Some(l) = self.seen.iter().find(|l| pred(l)) {
            return l.clone();
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.out.next_line()).await {
                Ok(Ok(Some(line))) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                other => panic!(
                    "{}: not seen within {wait:?} ({other:?}); output: {:#?}",
                    self.name, self.seen
                ),
            }
        }
    }

    /// Types a line.
    pub async fn line(&mut self, text: &str) {
        self.stdin
            .write_all(format!("{text}\n").as_bytes())
            .await
            .unwrap();
        self.stdin.flush().await.unwrap();
    }
}

/// The first item on `rx` matching `want` within `within` (others are skipped); panics with
/// `what` otherwise. For event streams such as kibitz-rtc's.
pub async fn next_matching<T>(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<T>,
    within: Duration,
    mut want: impl FnMut(&T) -> bool,
) -> T {
    tokio::time::timeout(within, async {
        loop {
            let e = rx.recv().await.expect("sender running");
            if want(&e) {
                return e;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no matching event within {within:?}"))
}
