//! `kibitz_turn_api::serve` in-process on 127.0.0.1:0, and a plain HTTP/1.1 client for it.

use serde_json::Value;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// A running `/api/turn`; stopped on drop.
#[derive(Debug)]
pub struct Api {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for Api {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Starts an API minting HMAC credentials with `secrets` (newest first) for a TURN server on
/// 127.0.0.1:`turn_port`.
pub async fn start(secrets: &[&str], turn_port: u16) -> Api {
    let config = kibitz_turn_api::Config::hmac(
        secrets.iter().map(|s| (*s).to_owned()).collect(),
        "127.0.0.1",
        turn_port,
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind api");
    let addr = listener.local_addr().expect("api addr");
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(kibitz_turn_api::serve(listener, config, async move {
        let _ = rx.await;
    }));
    Api {
        addr,
        stop: Some(tx),
    }
}

/// One minted credential, as `/api/turn` returned it.
#[derive(Debug, Clone)]
pub struct Credential {
    /// `username` (top level; the TURN entry of `iceServers` carries the same).
    pub username: String,
    /// `password` (= `credential` in `iceServers`).
    pub password: String,
    /// The TURN entry's `urls`.
    pub turn_urls: Vec<String>,
}

impl Api {
    /// `http://127.0.0.1:PORT/api/turn`.
    pub fn url(&self) -> String {
        format!("http://{}/api/turn", self.addr)
    }

    /// `GET /api/turn`: checks the status and the parts every TURN client reads, and that the
    /// REST fields agree with the `iceServers` entry.
    pub async fn fetch(&self) -> Credential {
        let (status, body) = get(self.addr, "/api/turn").await;
        assert_eq!(status, 200, "GET /api/turn: {body}");
        let body: Value = serde_json::from_str(&body).expect("/api/turn body is JSON");
        let turn = body["iceServers"]
            .as_array()
            .and_then(|list| list.iter().find(|s| s.get("username").is_some()))
            .unwrap_or_else(|| panic!("no iceServers entry with a username: {body}"))
            .clone();
        let text = |v: &Value, what: &str| {
            v.as_str()
                .unwrap_or_else(|| panic!("{what} is not a string: {body}"))
                .to_owned()
        };
        let username = text(&body["username"], "username");
        let password = text(&body["password"], "password");
        assert_eq!(text(&turn["username"], "iceServers username"), username);
        assert_eq!(text(&turn["credential"], "iceServers credential"), password);
        let turn_urls: Vec<String> = turn["urls"]
            .as_array()
            .unwrap_or_else(|| panic!("iceServers urls is not a list: {body}"))
            .iter()
            .map(|u| text(u, "url"))
            .collect();
        Credential {
            username,
            password,
            turn_urls,
        }
    }
}

/// `GET path` with `Connection: close`: `(status, body)`.
pub async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect api");
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write request");
    let mut raw = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .expect("api response timed out")
        .expect("read response");
    let text = String::from_utf8(raw).expect("utf-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("response head");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (status, body)
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
            .expect("chunk size");
        if size == 0 {
            break;
        }
        out.push_str(&after[..size]);
        rest = after[size..].strip_prefix("\r\n").unwrap_or(&after[size..]);
    }
    out
}
