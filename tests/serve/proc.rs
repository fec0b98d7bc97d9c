//! `kibitz serve` as operators run it: the real binary as a child process, its address read
//! from its JSON log, every log line kept, signals sent by pid; and a TLS client that trusts
//! given roots and tells which certificate it was shown.

use rustls::pki_types::{CertificateDer, ServerName};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{
    AsyncBufReadExt as _, AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _,
};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// A running `kibitz serve`, killed on drop.
#[derive(Debug)]
pub struct Serve {
    /// The process.
    pub child: tokio::process::Child,
    /// Where it listens.
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl Serve {
    /// Starts `kibitz --log-format json serve ARGS` (on 127.0.0.1:0 unless ARGS has a
    /// `--listen`) and waits for its listening line; `Err` with its log when it exits first (a
    /// port taken, a flag refused).
    pub async fn start(args: &[String]) -> Result<Self, String> {
        let listen: &[&str] = if args.iter().any(|a| a == "--listen") {
            &[]
        } else {
            &["--listen", "127.0.0.1:0"]
        };
        let mut child = tokio::process::Command::new(kibitz_e2e::kibitz_bin())
            .args(["--log-format", "json", "serve", "--drain-grace-ms", "0"])
            .args(listen)
            .args(args)
            .env("KIBITZ_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn kibitz serve");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
        let kept = log.clone();
        // Keeps reading to the end, so the process never blocks on a full pipe.
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stderr).lines();
            let mut addr_tx = Some(addr_tx);
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                    && v["fields"]["mode"] == "serve"
                    && let Some(addr) = v["fields"]["addr"].as_str().and_then(|a| a.parse().ok())
                    && let Some(tx) = addr_tx.take()
                {
                    let _ = tx.send(addr);
                }
                kept.lock().unwrap().push(line);
            }
        });
        match tokio::time::timeout(Duration::from_secs(20), addr_rx).await {
            Ok(Ok(addr)) => Ok(Self { child, addr, log }),
            _ => {
                let _ = child.kill().await;
                Err(log.lock().unwrap().join("\n"))
            }
        }
    }

    /// Every log line so far (JSON).
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Log lines whose message contains `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.log()
            .iter()
            .filter(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .ok()
                    .and_then(|v| v["fields"]["message"].as_str().map(|m| m.contains(needle)))
                    .unwrap_or(false)
            })
            .count()
    }

    /// Waits up to `within` for `n` log messages containing `needle`.
    pub async fn logged(&self, needle: &str, n: usize, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while self.count(needle) < n {
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        true
    }

    /// Sends `signal` (`HUP`, `TERM`, ...).
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("kibitz still running").to_string();
        let sent = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .expect("kill");
        assert!(sent.success(), "kill -{signal} {pid}");
    }

    /// SIGTERM, then waits for the exit.
    pub async fn stop(mut self) {
        self.signal("TERM");
        let status = tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .expect("kibitz did not exit after SIGTERM")
            .expect("wait");
        assert!(status.success(), "exit status {status}");
    }
}

/// A client configuration trusting exactly `roots`, without session resumption: a resumed
/// session reports the certificate of the session it resumes, not the one served now.
pub fn client_config(roots: &[CertificateDer<'static>]) -> Arc<rustls::ClientConfig> {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(r.clone()).expect("root");
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_root_certificates(store)
    .with_no_client_auth();
    cfg.resumption = rustls::client::Resumption::disabled();
    Arc::new(cfg)
}

/// A verified TLS connection to `addr` for `name`.
pub async fn tls_connect(
    addr: SocketAddr,
    name: &str,
    cfg: &Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(name.to_owned()).map_err(std::io::Error::other)?;
    let connect = tokio_rustls::TlsConnector::from(cfg.clone()).connect(name, tcp);
    tokio::time::timeout(Duration::from_secs(10), connect)
        .await
        .map_err(std::io::Error::other)?
}

/// The certificate a verified handshake to `addr` for `name` shows now.
pub async fn leaf(
    addr: SocketAddr,
    name: &str,
    cfg: &Arc<rustls::ClientConfig>,
) -> std::io::Result<CertificateDer<'static>> {
    let s = tls_connect(addr, name, cfg).await?;
    s.get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.clone().into_owned())
        .ok_or_else(|| std::io::Error::other("no peer certificate"))
}

/// `GET path` over `stream` with `Connection: close`: `(status, body)` (not chunked).
pub async fn get<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    host: &str,
    path: &str,
) -> std::io::Result<(u16, String)> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    // A TLS peer closing without close_notify still delivered the whole answer.
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw)).await;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no response head: {text:?}")))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("no status"))?;
    Ok((status, body.to_owned()))
}

/// The value of the Prometheus sample `name` whose labels include every `labels` pair.
pub fn metric(body: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}
