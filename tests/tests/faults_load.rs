//! Faults under load against a real `kibitz signal` process on 127.0.0.1:0:
//!
//! - a slow consumer (a raw WebSocket client with a small receive buffer that stops reading)
//!   is closed once its queue passes `--send-queue-bytes`, counted in /metrics, and the
//!   relay between its peers keeps flowing;
//! - heavy senders (sockets flooding as fast as TCP takes it) read through the shared gate
//!   (`--heavy-bytes-per-sec`): counted in /metrics, never closed, while a light pair relays;
//! - descriptor exhaustion (the broker under `prlimit --nofile`): at the cap new connections
//!   are refused promptly, the accept loop does not spin, existing peers keep relaying, and
//!   service resumes once descriptors free.
//!
//! Every wait is on a condition with a deadline; the figures each fault shows are printed
//! (`cargo test -p kibitz-e2e --test faults_load -- --nocapture`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use kibitz_e2e::{Client, Seen, kibitz_bin};
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::{Instant, timeout};

const WAIT: Duration = Duration::from_secs(20);

/// `kibitz signal` on 127.0.0.1:0, optionally under `prlimit --nofile=N`; its JSON log kept.
struct Signal {
    child: tokio::process::Child,
    addr: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Signal {
    async fn start(nofile: Option<u32>, args: &[&str]) -> Self {
        let mut cmd = match nofile {
            Some(n) => {
                let mut c = tokio::process::Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}"))
                    .arg("--")
                    .arg(kibitz_bin());
                c
            }
            None => tokio::process::Command::new(kibitz_bin()),
        };
        let mut child = cmd
            .args(["signal", "--log-format", "json", "--listen", "127.0.0.1:0"])
            .args(args)
            .env("KIBITZ_LOG", "info,kibitz_http=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn kibitz (and prlimit, from util-linux)");
        let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let sink = logs.clone();
        tokio::spawn(async move {
            let mut tx = Some(tx);
            while let Ok(Some(line)) = lines.next_line().await {
                let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                if let Some(a) = v["fields"]["addr"].as_str()
                    && v["fields"]["mode"].is_string()
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(a.parse::<SocketAddr>().unwrap());
                }
                sink.lock().unwrap().push(line);
            }
        });
        let addr = timeout(WAIT, rx)
            .await
            .unwrap_or_else(|_| panic!("no listening line: {:#?}", logs.lock().unwrap()))
            .expect("kibitz exited before listening");
        Self { child, addr, logs }
    }

    fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    fn url(&self, id: &str) -> String {
        format!(
            "ws://{}/peerjs?key=peerjs&id={id}&token=t{id}&version=1.5.5",
            self.addr
        )
    }

    /// A PeerJS client as `id`, after `OPEN`; `Err` if the broker refused or did not answer
    /// within 5 s (a refusal must be prompt, never a hang).
    async fn try_peer(&self, id: &str) -> Result<Client, String> {
        let open = async {
            let (ws, _) = tokio_tungstenite::connect_async(self.url(id))
                .await
                .map_err(|e| e.to_string())?;
            let mut c = Client { ws };
            match c.next_within(Duration::from_secs(5)).await {
                Seen::Text(t) if t.contains("OPEN") => Ok(c),
                other => Err(format!("{other:?}")),
            }
        };
        match timeout(Duration::from_secs(5), open).await {
            Ok(r) => r,
            Err(_) => panic!("connecting as {id} hung: neither served nor refused within 5 s"),
        }
    }

    async fn peer(&self, id: &str) -> Client {
        self.try_peer(id).await.unwrap()
    }

    /// GET /metrics: the value of the first sample whose line starts with `series`.
    async fn metric(&self, series: &str) -> f64 {
        let mut s = TcpStream::connect(self.addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut body = String::new();
        timeout(WAIT, s.read_to_string(&mut body))
            .await
            .unwrap()
            .unwrap();
        body.lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    fn log_count(&self, needle: &str) -> usize {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// utime + stime of the process, in clock ticks (USER_HZ = 100).
    fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        let rest = stat.rsplit_once(')').unwrap().1;
        let f: Vec<u64> = rest
            .split_whitespace()
            .map(|v| v.parse().unwrap_or(0))
            .collect();
        f[11] + f[12]
    }

    fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

/// `a` sends `b` an OFFER tagged `n`; `b` must get it within 5 s.
async fn relay(a: &mut Client, b: &mut Client, b_id: &str, n: u64) -> Duration {
    let t = Instant::now();
    a.send(&format!(
        r#"{{"type":"OFFER","dst":"{b_id}","payload":{{"n":{n}}}}}"#
    ))
    .await;
    let want = format!(r#""n":{n}"#);
    loop {
        match b.next_within(Duration::from_secs(5)).await {
            Seen::Text(t2) if t2.contains(&want) => return t.elapsed(),
            Seen::Text(_) => {}
            other => panic!("relay {n} to {b_id}: {other:?}"),
        }
    }
}

/// A raw WebSocket client for `id` with a small receive buffer that reads its handshake and
/// `OPEN`, then stops reading.
async fn stalled_reader(addr: SocketAddr, id: &str) -> TcpStream {
    let sock = TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut s = sock.connect(addr).await.unwrap();
    let req = format!(
        "GET /peerjs?key=peerjs&id={id}&token=t{id}&version=1.5.5 HTTP/1.1\r\nhost: {addr}\r\n\
         upgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-version: 13\r\n\
         sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    while !String::from_utf8_lossy(&got).contains(r#"{"type":"OPEN"}"#) {
        let n = timeout(WAIT, s.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "closed during handshake");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got.starts_with(b"HTTP/1.1 101"), "{got:?}");
    s
}

#[tokio::test]
async fn slow_consumer_is_closed_at_its_send_queue_and_others_keep_relaying() {
    const QUEUE: usize = 64 * 1024;
    let k = Signal::start(None, &["--send-queue-bytes", &QUEUE.to_string()]).await;
    let mut slow = stalled_reader(k.addr, "slow").await;
    let mut a = k.peer("a").await;
    let mut b = k.peer("b").await;
    let mut c = k.peer("c").await;
    let series = r#"kibitz_signal_rejected_total{reason="slow_reader"}"#;
    assert_eq!(k.metric(series).await, 0.0);

    // `a` floods `slow` with 16 KiB offers (within the message rate burst) while `b` and `c`
    // relay to each other; stop once the broker has closed `slow`.
    let big = format!(
        r#"{{"type":"OFFER","dst":"slow","payload":{{"pad":"{}"}}}}"#,
        "x".repeat(16 * 1024)
    );
    let started = Instant::now();
    let (mut sent, mut rounds, mut worst) = (0u64, 0u64, Duration::ZERO);
    let closed_after = loop {
        for _ in 0..20 {
            a.send(&big).await;
            sent += 1;
        }
        rounds += 1;
        worst = worst.max(relay(&mut b, &mut c, "c", rounds).await);
        worst = worst.max(relay(&mut c, &mut b, "b", rounds).await);
        if k.metric(series).await >= 1.0 {
            break started.elapsed();
        }
        assert!(
            sent < 900 && started.elapsed() < WAIT,
            "slow reader not closed after {sent} offers ({} MiB)",
            sent * 16 / 1024
        );
    };
    // The slow socket was aborted: once it reads what the kernel held, it sees the end.
    let mut sink = vec![0u8; 64 * 1024];
    let ended = timeout(WAIT, async {
        loop {
            match slow.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "slow reader's socket still open");
    // Its peers are unaffected: the sender and the other pair still relay, nobody else closed.
    relay(&mut a, &mut b, "b", 10_000).await;
    relay(&mut b, &mut a, "a", 10_001).await;
    relay(&mut c, &mut a, "a", 10_002).await;
    assert_eq!(
        k.metric(series).await,
        1.0,
        "exactly one slow reader closed"
    );
    println!(
        "slow consumer: closed after {sent} x 16 KiB offers in {closed_after:?} \
         (--send-queue-bytes {QUEUE}); other pairs' worst relay meanwhile {worst:?} over \
         {rounds} rounds each way"
    );
}

#[tokio::test]
async fn descriptor_exhaustion_refuses_cleanly_without_spinning_and_recovers() {
    const NOFILE: u32 = 128;
    let k = Signal::start(
        Some(NOFILE),
        &["--per-ip-connections", "0", "--concurrent-limit", "100000"],
    )
    .await;
    let mut a = k.peer("a").await;
    let mut b = k.peer("b").await;

    // Fill the process's descriptor table with live peers until a connection is refused.
    let mut fill = Vec::new();
    let first_refusal = loop {
        match k.try_peer(&format!("f{}", fill.len())).await {
            Ok(c) => fill.push(c),
            Err(e) => break e,
        }
        assert!(fill.len() < NOFILE as usize, "no refusal below the limit");
    };
    let at_cap = fill.len();
    println!(
        "descriptor exhaustion: {at_cap} peers (+2) open at nofile={NOFILE}, {} fds; \
         first refusal: {first_refusal}",
        k.open_fds()
    );

    // At the cap, over a window of at least 2 s: every new connection is refused promptly,
    // the existing peers relay, and the broker's CPU stays low (no busy accept loop).
    let cpu0 = k.cpu_ticks();
    let t0 = Instant::now();
    let (mut refused, mut n) = (0u32, 0u64);
    while t0.elapsed() < Duration::from_secs(2) || refused < 20 {
        let attempt = Instant::now();
        assert!(k.try_peer("late").await.is_err(), "accepted above the cap");
        assert!(attempt.elapsed() < Duration::from_secs(2), "slow refusal");
        refused += 1;
        n += 1;
        relay(&mut a, &mut b, "b", n).await;
        relay(&mut b, &mut a, "a", n).await;
        // A closed-loop client, paced so the window measures the broker, not the client.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let window = t0.elapsed().as_secs_f64();
    let cpu_pct = (k.cpu_ticks() - cpu0) as f64 / 100.0 / window * 100.0;
    println!(
        "at the cap: {refused} connections refused, {n} relays each way in {window:.2} s; \
         broker CPU {cpu_pct:.1} % of a core"
    );
    assert!(cpu_pct < 20.0, "broker CPU {cpu_pct:.1} % at the cap");
    assert_eq!(
        k.log_count("out of file descriptors"),
        1,
        "exhaustion logged once per episode"
    );

    // Free descriptors: service resumes.
    let freed = Instant::now();
    for mut c in fill.drain(..10) {
        let _ = c.ws.close(None).await;
    }
    let resumed = loop {
        if let Ok(c) = k.try_peer("after").await {
            break c;
        }
        assert!(freed.elapsed() < WAIT, "service did not resume");
        tokio::task::yield_now().await;
    };
    let recovery = freed.elapsed();
    let mut resumed = resumed;
    relay(&mut a, &mut resumed, "after", 1_000_000).await;
    let refused_total = k
        .metric(r#"kibitz_accept_refused_total{reason="fd_limit"}"#)
        .await;
    assert!(refused_total >= f64::from(refused), "{refused_total}");
    assert_eq!(k.log_count("file descriptors available again"), 1);
    println!(
        "recovery: a new peer opened {recovery:?} after 10 peers closed; \
         kibitz_accept_refused_total {refused_total}"
    );
}

/// One masked (all-zero key) text frame carrying `text`, as a client sends it.
fn client_text_frame(text: &str) -> Vec<u8> {
    let len = text.len();
    let mut f = vec![0x81];
    match len {
        0..=125 => f.push(0x80 | len as u8),
        126..=65535 => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&[0; 4]);
    f.extend_from_slice(text.as_bytes());
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_senders_are_throttled_while_light_peers_keep_relaying() {
    // Low thresholds so a few test sockets are plainly heavy; message limits out of the way,
    // so the flood is held back by the gate (and TCP), not closed.
    let k = Signal::start(
        None,
        &[
            "--heavy-bytes-per-sec",
            "65536",
            "--heavy-burst-bytes",
            "65536",
            "--msg-rate",
            "1000000",
            "--msg-burst",
            "1000000",
        ],
    )
    .await;
    let throttled = "kibitz_signal_throttled_reads_total";
    let mut a = k.peer("a").await;
    let mut b = k.peer("b").await;
    // Light signalling never goes through the gate.
    for n in 0..20 {
        relay(&mut a, &mut b, "b", n).await;
        relay(&mut b, &mut a, "a", n).await;
    }
    assert_eq!(k.metric(throttled).await, 0.0, "light peers were gated");

    // Four sockets send 16 KiB offers (to an id nobody holds) as fast as TCP takes them, and
    // discard what comes back (EXPIREs).
    let frame = Arc::new(client_text_frame(&format!(
        r#"{{"type":"OFFER","dst":"nobody","payload":{{"pad":"{}"}}}}"#,
        "x".repeat(16 * 1024)
    )));
    let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut flood = tokio::task::JoinSet::new();
    for i in 0..4 {
        let (mut rd, mut wr) = stalled_reader(k.addr, &format!("flood{i}"))
            .await
            .into_split();
        let (frame, sent) = (frame.clone(), sent.clone());
        flood.spawn(async move {
            let mut sink = vec![0u8; 64 * 1024];
            let drain = async {
                while let Ok(n) = rd.read(&mut sink).await {
                    if n == 0 {
                        break;
                    }
                }
            };
            let send = async {
                while wr.write_all(&frame).await.is_ok() {
                    sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            };
            tokio::select! { () = drain => {}, () = send => {} }
        });
    }
    // The flood's reads go through the gate.
    let t0 = Instant::now();
    while k.metric(throttled).await < 100.0 {
        assert!(t0.elapsed() < WAIT, "flood not throttled");
        assert!(flood.try_join_next().is_none(), "a flood socket ended");
        tokio::task::yield_now().await;
    }
    // Meanwhile the light pair relays, each message within relay()'s deadline, while the
    // flood goes on (the gate keeps counting).
    let before = k.metric(throttled).await;
    let mut worst = Duration::ZERO;
    for n in 100..140 {
        worst = worst.max(relay(&mut a, &mut b, "b", n).await);
        worst = worst.max(relay(&mut b, &mut a, "a", n).await);
    }
    let after = k.metric(throttled).await;
    assert!(after > before, "the flood stopped while the pair relayed");
    assert!(flood.try_join_next().is_none(), "a flood socket ended");
    // Throttled, not closed: nobody was over a limit.
    for reason in ["rate_limited", "slow_reader", "oversized", "protocol"] {
        let series = format!(r#"kibitz_signal_rejected_total{{reason="{reason}"}}"#);
        assert_eq!(k.metric(&series).await, 0.0, "{reason}");
    }
    flood.abort_all();
    println!(
        "heavy senders: {} x 16 KiB offers sent by 4 flood sockets, {after} throttled reads; \
         light pair's worst relay meanwhile {worst:?} over 40 rounds each way",
        sent.load(std::sync::atomic::Ordering::Relaxed)
    );
}
