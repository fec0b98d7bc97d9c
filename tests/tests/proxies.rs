//! Kibitz Edge behind the proxies operators put in front of it, each the real Debian program
//! started here on 127.0.0.1 with a config file in a temp dir: nginx (`proxy_pass` with
//! `X-Forwarded-For`, and `stream` with `proxy_protocol on`), HAProxy (`send-proxy-v2`);
//! plus the broker's Origin allow-list in Chromium and its connect-rate limit. The broker is
//! the real `kibitz serve` binary, its DEBUG log read as JSON.
//! Needs nginx, libnginx-mod-stream, haproxy, Chromium and the npm packages (`scripts/test`
//! installs them).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use futures_util::StreamExt;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};

const WAIT: Duration = Duration::from_secs(20);
static NEXT_DIR: AtomicUsize = AtomicUsize::new(0);

fn temp_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "kibitz-proxies-{what}-{}-{}",
        std::process::id(),
        NEXT_DIR.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port()
}

// ---------------------------------------------------------------------------------------
// `kibitz serve`, its JSON log collected line by line.

struct Kibitz {
    port: u16,
    child: tokio::process::Child,
    logs: Arc<Mutex<Vec<Value>>>,
    seen: tokio::sync::watch::Receiver<usize>,
}

impl Drop for Kibitz {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

impl Kibitz {
    /// `kibitz serve --listen 127.0.0.1:0 <args>` with the broker and listener at DEBUG.
    async fn start(args: &[&str]) -> Self {
        let mut child = tokio::process::Command::new(kibitz_e2e::kibitz_bin())
            .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
            .args(["--drain-grace-ms", "0"])
            .args(args)
            .env(
                "KIBITZ_LOG",
                "info,kibitz_signal=debug,kibitz_http=debug,kibitz_turn_api=debug",
            )
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn kibitz");
        let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, seen) = tokio::sync::watch::channel(0usize);
        let sink = logs.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let v = serde_json::from_str(&line).unwrap_or(Value::String(line));
                sink.lock().unwrap().push(v);
                tx.send_modify(|n| *n += 1);
            }
        });
        let mut k = Self {
            port: 0,
            child,
            logs,
            seen,
        };
        let listening = k
            .wait_log(|v| {
                v["fields"]["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("listening"))
            })
            .await;
        let addr: SocketAddr = listening["fields"]["addr"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        k.port = addr.port();
        k
    }

    /// The first log line matching `pred`, waiting up to [`WAIT`] for it.
    async fn wait_log(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(v) = self.logs.lock().unwrap().iter().find(|v| pred(v)) {
                return v.clone();
            }
            if tokio::time::timeout_at(deadline, self.seen.changed())
                .await
                .is_err()
            {
                let tail: Vec<String> = self
                    .logs
                    .lock()
                    .unwrap()
                    .iter()
                    .rev()
                    .take(20)
                    .map(Value::to_string)
                    .collect();
                panic!("no such log line within {WAIT:?}; last lines: {tail:#?}");
            }
        }
    }

    /// The `WebSocket open` line for the socket whose connection address is `peer`.
    async fn opened_from(&mut self, peer: SocketAddr) -> Value {
        let peer = peer.to_string();
        self.wait_log(|v| {
            v["fields"]["message"] == "WebSocket open" && v["fields"]["peer"] == peer.as_str()
        })
        .await
    }
}

// ---------------------------------------------------------------------------------------
// nginx and HAProxy, started on a free loopback port from a config file.

struct Proxy {
    port: u16,
    child: std::process::Child,
    dir: PathBuf,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Proxy {
    /// nginx with `body` (an `http { … }` or `stream { … }` block, `PORT` standing for its
    /// listening port) in front of kibitz on `upstream`.
    fn nginx(body: &str) -> Self {
        Self::start("nginx", |dir, port| {
            let conf = format!(
                "daemon off;\nmaster_process off;\nworker_processes 1;\nworker_rlimit_nofile 8192;\n\
                 pid {dir}/nginx.pid;\nerror_log {dir}/error.log notice;\n\
                 load_module /usr/lib/nginx/modules/ngx_stream_module.so;\n\
                 events {{ worker_connections 4096; }}\n{}\n",
                body.replace("PORT", &port.to_string()).replace("DIR", dir),
            );
            std::fs::write(format!("{dir}/nginx.conf"), conf).unwrap();
            let mut cmd = std::process::Command::new("nginx");
            cmd.args(["-p", dir, "-e", &format!("{dir}/error.log"), "-c"])
                .arg(format!("{dir}/nginx.conf"));
            cmd
        })
    }

    /// HAProxy forwarding TCP to kibitz on `upstream` with `send-proxy-v2`.
    fn haproxy(upstream: u16) -> Self {
        Self::start("haproxy", |dir, port| {
            let conf = format!(
                "global\n  maxconn 4096\n\
                 defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n\
                 frontend fe\n  bind 127.0.0.1:{port}\n  default_backend kibitz\n\
                 backend kibitz\n  server k1 127.0.0.1:{upstream} send-proxy-v2\n"
            );
            std::fs::write(format!("{dir}/haproxy.cfg"), conf).unwrap();
            let mut cmd = std::process::Command::new("haproxy");
            cmd.args(["-db", "-f"]).arg(format!("{dir}/haproxy.cfg"));
            cmd
        })
    }

    /// Starts `make(dir, port)` on a free port; tries another port if it exits (the port was
    /// taken meanwhile), then waits until kibitz's `/healthz` answers through it.
    fn start(what: &str, make: impl Fn(&str, u16) -> std::process::Command) -> Self {
        let dir = temp_dir(what);
        let d = dir.to_str().unwrap();
        for _ in 0..5 {
            let port = free_port();
            let child = make(d, port)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::fs::File::create(dir.join("stderr")).unwrap())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("{what} must be installed (scripts/test installs it): {e}")
                });
            let mut p = Self {
                port,
                child,
                dir: dir.clone(),
            };
            if p.wait_ready() {
                return p;
            }
            let _ = p.child.kill();
            let _ = p.child.wait();
            p.dir = temp_dir(what);
        }
        let log = std::fs::read_to_string(dir.join("stderr")).unwrap_or_default();
        panic!("{what} did not start: {log}");
    }

    // A test helper on the wall clock, not an engine.
    #[allow(clippy::disallowed_methods)]
    fn wait_ready(&mut self) -> bool {
        let deadline = std::time::Instant::now() + WAIT;
        while std::time::Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return false;
            }
            if blocking_get(self.port, "/healthz").is_some_and(|r| r.starts_with("HTTP/1.1 200")) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

fn blocking_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

const NGINX_HTTP: &str = "http {
    access_log off;
    client_body_temp_path DIR/body; proxy_temp_path DIR/proxy; fastcgi_temp_path DIR/fcgi;
    uwsgi_temp_path DIR/uwsgi; scgi_temp_path DIR/scgi;
    map $http_upgrade $connection_upgrade { default upgrade; '' close; }
    server {
        listen 127.0.0.1:PORT;
        location / {
            proxy_pass http://127.0.0.1:UPSTREAM;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_read_timeout 300s;
            proxy_buffering off;
        }
    }
}";

const NGINX_STREAM: &str = "stream {
    server {
        listen 127.0.0.1:PORT;
        proxy_pass 127.0.0.1:UPSTREAM;
        proxy_protocol on;
    }
}";

// ---------------------------------------------------------------------------------------
// Clients.

type Ws = WebSocketStream<TcpStream>;

/// A raw HTTP/1.1 GET on 127.0.0.1:`port`, optionally after `prefix` bytes (a PROXY header):
/// the status code and the whole response.
async fn get(port: u16, path: &str, headers: &[(&str, &str)], prefix: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(&[prefix, req.as_bytes()].concat())
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut out))
        .await
        .expect("response in time")
        .unwrap();
    let out = String::from_utf8_lossy(&out).into_owned();
    let status = out.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, out)
}

/// The value of a Prometheus sample line `name{labels}` on kibitz's /metrics (0 if absent).
async fn metric(port: u16, prefix: &[u8], sample: &str) -> f64 {
    let (_, body) = get(port, "/metrics", &[], prefix).await;
    body.lines()
        .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Opens a broker WebSocket on 127.0.0.1:`port` as `id` with extra request headers, after
/// `prefix`; the socket's local address, and the socket or the HTTP status that refused it.
async fn ws_connect(
    port: u16,
    id: &str,
    headers: &[(&str, &str)],
    prefix: &[u8],
) -> (SocketAddr, Result<Ws, u16>) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let local = stream.local_addr().unwrap();
    stream.write_all(prefix).await.unwrap();
    let mut req =
        format!("ws://127.0.0.1:{port}/peerjs?key=peerjs&id={id}&token=t-{id}&version=1.5.5")
            .into_client_request()
            .unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    let r = tokio::time::timeout(WAIT, tokio_tungstenite::client_async(req, stream))
        .await
        .expect("handshake in time");
    match r {
        Ok((ws, _)) => (local, Ok(ws)),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            (local, Err(resp.status().as_u16()))
        }
        Err(e) => panic!("handshake failed: {e}"),
    }
}

/// The broker's first frame on `ws`.
async fn first_frame(ws: &mut Ws) -> String {
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame in time")
        {
            Some(Ok(Message::Text(t))) => return t.to_string(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

const OPEN: &str = r#"{"type":"OPEN"}"#;
const IP_LIMIT: &str = "Too many connections from this address";

/// Opens a socket through `port` that must be registered (OPEN).
async fn open(port: u16, id: &str, headers: &[(&str, &str)]) -> Ws {
    let (_, ws) = ws_connect(port, id, headers, b"").await;
    let mut ws = ws.unwrap_or_else(|s| panic!("{id}: upgrade refused with {s}"));
    assert_eq!(first_frame(&mut ws).await, OPEN, "{id}");
    ws
}

// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_forwarded_addresses_feed_the_per_ip_limit_and_are_ignored_from_others() {
    let kibitz = Kibitz::start(&[
        "--trusted-proxy",
        "127.0.0.1/32",
        "--per-ip-connections",
        "100",
    ])
    .await;
    let nginx = Proxy::nginx(&NGINX_HTTP.replace("UPSTREAM", &kibitz.port.to_string()));
    let mut held = Vec::new();
    // 150 clients, each with its own forwarded address: the limit of 100 touches none.
    for n in 0..150u32 {
        let addr = format!("198.18.{}.{}", n / 200, n % 200 + 1);
        held.push(
            open(
                nginx.port,
                &format!("many-{n}"),
                &[("X-Forwarded-For", &addr)],
            )
            .await,
        );
    }
    // 101 from one forwarded address: the 101st is refused.
    for n in 0..100 {
        held.push(
            open(
                nginx.port,
                &format!("one-{n}"),
                &[("X-Forwarded-For", "192.0.2.77")],
            )
            .await,
        );
    }
    let (_, ws) = ws_connect(
        nginx.port,
        "one-100",
        &[("X-Forwarded-For", "192.0.2.77")],
        b"",
    )
    .await;
    let mut ws = ws.expect("upgraded");
    let refused = first_frame(&mut ws).await;
    assert!(refused.contains(IP_LIMIT), "{refused}");
    // Without the header, a client is nginx's peer (127.0.0.1): still room for it.
    held.push(open(nginx.port, "plain", &[]).await);
    assert_eq!(
        metric(
            kibitz.port,
            b"",
            r#"kibitz_signal_rejected_total{reason="ip_limit"}"#
        )
        .await,
        1.0
    );

    // The same headers sent straight to a broker that does not trust this address (it
    // trusts a range we are not in) are ignored: everyone is 127.0.0.1.
    let other = Kibitz::start(&[
        "--trusted-proxy",
        "192.0.2.0/24",
        "--per-ip-connections",
        "100",
    ])
    .await;
    let mut direct = Vec::new();
    for n in 0..100u32 {
        let addr = format!("198.18.{}.{}", n / 200, n % 200 + 1);
        direct.push(
            open(
                other.port,
                &format!("direct-{n}"),
                &[("X-Forwarded-For", &addr)],
            )
            .await,
        );
    }
    let (_, ws) = ws_connect(
        other.port,
        "direct-100",
        &[("X-Forwarded-For", "198.18.9.9")],
        b"",
    )
    .await;
    let mut ws = ws.expect("upgraded");
    let refused = first_frame(&mut ws).await;
    assert!(refused.contains(IP_LIMIT), "{refused}");
    drop((held, direct));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_turn_rate_limit_counts_forwarded_clients_through_nginx() {
    let kibitz = Kibitz::start(&[
        "--trusted-proxy",
        "127.0.0.1",
        "--turn-rate-per-minute",
        "2",
    ])
    .await;
    let nginx = Proxy::nginx(&NGINX_HTTP.replace("UPSTREAM", &kibitz.port.to_string()));
    // The limit is per clock minute: a run that straddles a minute starts again.
    for _ in 0..3 {
        let mut statuses = Vec::new();
        let mut minutes = Vec::new();
        for _ in 0..3 {
            let (status, resp) = get(
                nginx.port,
                "/api/turn",
                &[("X-Forwarded-For", "198.51.100.20")],
                b"",
            )
            .await;
            statuses.push(status);
            minutes.push(date_minute(&resp));
        }
        let (other, resp) = get(
            nginx.port,
            "/api/turn",
            &[("X-Forwarded-For", "198.51.100.21")],
            b"",
        )
        .await;
        minutes.push(date_minute(&resp));
        if minutes.windows(2).any(|w| w[0] != w[1]) {
            continue;
        }
        assert_eq!(
            statuses,
            [200, 200, 429],
            "one forwarded client: 2 a minute"
        );
        assert_eq!(other, 200, "another forwarded client is unaffected");
        let limited = kibitz_log_has_rate_limit(&kibitz);
        assert!(limited, "the DEBUG log names the forwarded client");
        return;
    }
    panic!("three runs straddled a minute");
}

fn kibitz_log_has_rate_limit(k: &Kibitz) -> bool {
    k.logs.lock().unwrap().iter().any(|v| {
        v["fields"]["message"] == "rate limited" && v["fields"]["client"] == "198.51.100.20"
    })
}

/// `hh:mm` of a response's `Date` header.
fn date_minute(resp: &str) -> String {
    resp.lines()
        .find_map(|l| {
            l.strip_prefix("date: ")
                .or_else(|| l.strip_prefix("Date: "))
        })
        .and_then(|d| d.get(17..22))
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_peerjs_client_in_chromium_through_nginx() {
    let kibitz = Kibitz::start(&["--trusted-proxy", "127.0.0.1/32"]).await;
    let nginx = Proxy::nginx(&NGINX_HTTP.replace("UPSTREAM", &kibitz.port.to_string()));
    let port = nginx.port.to_string();
    let args = ["--host", "127.0.0.1", "--port", &port];
    if let Err(out) = kibitz_e2e::node_scenarios("browser/peerjs-e2e.mjs", &args).await {
        panic!("browser scenarios through nginx failed:\n{out}");
    }
}

/// A PROXY v1 header naming `src` as the client.
fn v1(src: &str, port: u16) -> Vec<u8> {
    format!("PROXY TCP4 {src} 127.0.0.1 {port} 443\r\n").into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_v2_and_nginx_stream_v1_carry_the_client_address() {
    // A long head timeout: the stalled header below must outlive the rest of the test.
    let mut kibitz = Kibitz::start(&["--proxy-protocol", "--handshake-timeout-ms", "300000"]).await;
    let haproxy = Proxy::haproxy(kibitz.port);
    let nginx = Proxy::nginx(&NGINX_STREAM.replace("UPSTREAM", &kibitz.port.to_string()));

    // The broker's connection address is our own socket's, though the TCP peer it accepted
    // is the proxy: the header carried it.
    for (via, port) in [("haproxy", haproxy.port), ("nginx", nginx.port)] {
        let (local, ws) = ws_connect(port, &format!("via-{via}"), &[], b"").await;
        let mut ws = ws.unwrap();
        assert_eq!(first_frame(&mut ws).await, OPEN, "{via}");
        let line = kibitz.opened_from(local).await;
        assert_eq!(line["fields"]["client"], "127.0.0.1", "{via}: {line}");
    }

    // A header we write ourselves: its source is the client the limits see.
    let (_, ws) = ws_connect(kibitz.port, "forged", &[], &v1("198.51.100.9", 4711)).await;
    let mut ws = ws.unwrap();
    assert_eq!(first_frame(&mut ws).await, OPEN);
    let line = kibitz
        .opened_from("198.51.100.9:4711".parse().unwrap())
        .await;
    assert_eq!(line["fields"]["client"], "198.51.100.9");

    // Malformed and truncated headers are refused: closed without an answer, counted. One
    // that stalls mid-header holds up nobody else.
    let mut stalled = TcpStream::connect(("127.0.0.1", kibitz.port))
        .await
        .unwrap();
    stalled.write_all(b"PROXY TCP4 198.51.1").await.unwrap();
    for (bad, shut) in [
        (&b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"[..], false),
        (
            b"PROXY TCP4 198.51.100.9 127.0.0.1 99999 443\r\nGET / HTTP/1.1\r\n\r\n",
            false,
        ),
        (b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c\xc6\x33", true),
        (b"PROXY TCP4 198.51.100.9 127.0.0.1 4711", true),
    ] {
        let mut s = TcpStream::connect(("127.0.0.1", kibitz.port))
            .await
            .unwrap();
        s.write_all(bad).await.unwrap();
        if shut {
            s.shutdown().await.unwrap();
        }
        let mut out = Vec::new();
        // A close with our bytes unread arrives as a reset: closed all the same.
        let read = tokio::time::timeout(WAIT, s.read_to_end(&mut out)).await;
        assert!(read.is_ok(), "{bad:?}: the connection was not closed");
        assert!(
            out.is_empty(),
            "{bad:?}: got an answer {:?}",
            String::from_utf8_lossy(&out)
        );
    }
    for (via, port) in [("haproxy", haproxy.port), ("nginx", nginx.port)] {
        let (_, ws) = ws_connect(port, &format!("after-{via}"), &[], b"").await;
        assert_eq!(first_frame(&mut ws.unwrap()).await, OPEN, "{via}");
    }
    let (status, _) = get(haproxy.port, "/healthz", &[], b"").await;
    assert_eq!(status, 200);
    for reason in ["malformed", "truncated"] {
        let sample = format!(r#"kibitz_proxy_protocol_rejected_total{{reason="{reason}"}}"#);
        assert_eq!(metric(haproxy.port, b"", &sample).await, 2.0, "{reason}");
    }
    // The stalled one is still waiting (its deadline is the head timeout); finish it.
    stalled
        .write_all(b"00.9 127.0.0.1 4711 443\r\nGET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, stalled.read_to_end(&mut answer))
        .await
        .expect("an answer in time")
        .unwrap();
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "a slow header still gets through"
    );
    let refused = kibitz
        .wait_log(|v| v["fields"]["message"] == "PROXY header refused")
        .await;
    assert!(refused["fields"]["error"].as_str().is_some(), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_rate_refuses_a_burst_from_one_address_only() {
    // 0.01/s: no token comes back during the test, however slow the machine.
    let kibitz = Kibitz::start(&[
        "--trusted-proxy",
        "127.0.0.1",
        "--connect-rate",
        "0.01",
        "--connect-burst",
        "5",
        "--per-ip-connections",
        "0",
    ])
    .await;
    let a = [("X-Forwarded-For", "198.51.100.30")];
    let mut held = Vec::new();
    for n in 0..5 {
        held.push(open(kibitz.port, &format!("burst-{n}"), &a).await);
    }
    let (_, refused) = ws_connect(kibitz.port, "burst-5", &a, b"").await;
    assert_eq!(
        refused.err(),
        Some(429),
        "beyond the burst: 429 before the upgrade"
    );
    let (status, resp) = get(
        kibitz.port,
        "/peerjs?key=peerjs&id=x&token=y",
        &[
            ("X-Forwarded-For", "198.51.100.30"),
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Version", "13"),
        ],
        b"",
    )
    .await;
    assert_eq!(status, 429);
    assert!(
        resp.to_ascii_lowercase().contains("retry-after: "),
        "{resp}"
    );
    // Another address is unaffected.
    held.push(
        open(
            kibitz.port,
            "other-address",
            &[("X-Forwarded-For", "198.51.100.31")],
        )
        .await,
    );
    assert_eq!(
        metric(
            kibitz.port,
            b"",
            r#"kibitz_signal_rejected_total{reason="connect_rate"}"#
        )
        .await,
        2.0
    );
    for mut ws in held {
        let _ = ws.close(None).await;
    }
}

/// Serves a page that loads the official peerjs bundle on 127.0.0.1:0; its origin.
async fn page_server() -> String {
    let bundle = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/node/node_modules/peerjs/dist/peerjs.min.js"
    ))
    .expect("peerjs bundle (scripts/test runs npm ci in tests/node)");
    let html = "<!doctype html><meta charset=utf-8><link rel=icon href=\"data:,\">\
                <title>origin</title><script src=\"/peerjs.min.js\"></script>";
    let app = axum::Router::new()
        .route(
            "/",
            axum::routing::get(move || async move { axum::response::Html(html) }),
        )
        .route(
            "/peerjs.min.js",
            axum::routing::get(move || {
                let bundle = bundle.clone();
                async move { ([("content-type", "text/javascript")], bundle) }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    origin
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_allow_list_in_chromium_and_for_clients_without_an_origin() {
    let allowed = page_server().await;
    let other = page_server().await;
    let kibitz = Kibitz::start(&["--cors-origin", &allowed]).await;
    let port = kibitz.port.to_string();
    let (a, o) = (format!("{allowed}/"), format!("{other}/"));
    let args = ["--broker-port", &port, "--allowed", &a, "--other", &o];
    if let Err(out) = kibitz_e2e::node_scenarios("browser/origin.mjs", &args).await {
        panic!("origin scenarios failed:\n{out}");
    }
    // Refused by the broker, before the upgrade: counted.
    let refused = metric(
        kibitz.port,
        b"",
        r#"kibitz_signal_rejected_total{reason="origin"}"#,
    )
    .await;
    assert!(refused >= 2.0, "{refused}");
    let (_, ws) = ws_connect(
        kibitz.port,
        "evil",
        &[("Origin", "https://evil.example")],
        b"",
    )
    .await;
    assert_eq!(ws.err(), Some(403));
    let (_, ws) = ws_connect(kibitz.port, "good", &[("Origin", &allowed)], b"").await;
    assert_eq!(first_frame(&mut ws.unwrap()).await, OPEN);

    // `kibitz join` sends no Origin: it connects.
    let signal = format!("ws://127.0.0.1:{port}");
    let mut join = kibitz_e2e::KibitzProc::spawn(
        "join",
        &[
            "join",
            "origin-room",
            "--name",
            "Ann",
            "--signal-host",
            &signal,
        ],
    );
    join.expect(WAIT, |l| l == "* connected (you coordinate the room)")
        .await;
    let _ = join.child.kill().await;
}
