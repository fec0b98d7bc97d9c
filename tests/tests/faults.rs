//! Fault suite: what peers see when the process or its registry fails under them, and how long
//! until they are whole again.
//!
//! * Redis frozen (SIGSTOP) under a three-node cluster while messages flow across nodes.
//! * One node cut off from Redis (it runs in a network namespace this test creates, reaching
//!   Redis over a veth pair whose route is blackholed, then restored).
//! * `kibitz serve` killed with SIGKILL under a live room (three `kibitz join` processes and a
//!   room member on the official `peerjs` client in headless Chromium) and started again on
//!   the same port; and, as its baseline, stopped cleanly (SIGTERM) and started again.
//!
//! Each prints what users saw and the recovery time it measured (`cargo test -p kibitz-e2e
//! --test faults -- --nocapture`; `bench/faults.sh` repeats them for the spread). The
//! invariants checked: never two owners of an id (no id OPEN for two clients at once; the
//! registry's records name the node that holds the socket), every message delivered once or
//! EXPIREd to its sender by its deadline, and one room with one coordinator.
//!
//! In the two cluster scenarios a node that cannot renew its registry lease closes its
//! clients (1013) before another node may grant their ids (fencing), so the clients of the
//! node cut off, and with Redis frozen for longer than the lease every client, see their
//! socket end; no EXPIRE is owed to a sender whose socket ended.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use futures_util::{SinkExt, StreamExt};
use kibitz_e2e::{Client, Config, Node, Redis, Seen, cluster_config};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

const LEASE_MS: u64 = 2000;
const OPEN: &str = r#"{"type":"OPEN"}"#;
/// How long after a message's deadline its EXPIRE may come.
const EXPIRE_SLACK: Duration = Duration::from_millis(500);

fn url(addr: SocketAddr, id: &str, token: &str) -> String {
    format!("ws://{addr}/peerjs?key=peerjs&id={id}&token={token}&version=1.5.5")
}

/// Connects as `id`/`token` and returns what the node says first within `wait` (a refused
/// handshake or connection reads as `Gone`).
async fn attempt(
    addr: SocketAddr,
    id: &str,
    token: &str,
    wait: Duration,
) -> (Option<Client>, Seen) {
    match tokio::time::timeout(wait, tokio_tungstenite::connect_async(url(addr, id, token))).await {
        Ok(Ok((ws, _))) => {
            let mut c = Client { ws };
            let first = c.next_within(wait).await;
            (Some(c), first)
        }
        Ok(Err(_)) => (None, Seen::Gone),
        Err(_) => (None, Seen::Nothing),
    }
}

/// Connects until the node answers OPEN.
async fn open(addr: SocketAddr, id: &str, token: &str) -> Client {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (c, first) = attempt(addr, id, token, Duration::from_secs(5)).await;
        if first == Seen::Text(OPEN.into())
            && let Some(c) = c
        {
            return c;
        }
        assert!(
            Instant::now() < deadline,
            "{id}@{addr}: no OPEN, last {first:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn offer(dst: &str, n: u64) -> String {
    format!(r#"{{"type":"OFFER","dst":"{dst}","payload":{n}}}"#)
}

/// What one client saw: payloads with when they arrived, EXPIREs (src, when), anything else,
/// and how its socket ended (if it did).
#[derive(Debug, Default)]
struct Inbox {
    got: Vec<(u64, Instant)>,
    expired: Vec<(String, Instant)>,
    other: Vec<String>,
    ended: Option<(Instant, Seen)>,
}

type Sink = futures_util::stream::SplitSink<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    Message,
>;
type Shared<T> = Arc<Mutex<T>>;

/// Splits `c`: its sending half, and a task reading the other into a shared [`Inbox`] until
/// the socket ends.
fn split(c: Client) -> (Sink, Shared<Inbox>) {
    let (tx, mut rx) = c.ws.split();
    let inbox = Arc::new(Mutex::new(Inbox::default()));
    let sink = inbox.clone();
    tokio::spawn(async move {
        loop {
            let m = rx.next().await;
            let now = Instant::now();
            let mut i = sink.lock().unwrap();
            match m {
                Some(Ok(Message::Text(t))) => {
                    let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                    match (v["type"].as_str(), v["payload"].as_u64()) {
                        (Some("OFFER"), Some(n)) => i.got.push((n, now)),
                        (Some("EXPIRE"), _) => i
                            .expired
                            .push((v["src"].as_str().unwrap_or_default().to_owned(), now)),
                        _ => i.other.push(t.to_string()),
                    }
                }
                Some(Ok(Message::Close(f))) => {
                    i.ended = Some((now, Seen::Closed(f.map_or(1005, |f| f.code.into()))));
                    return;
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => {
                    i.ended = Some((now, Seen::Gone));
                    return;
                }
            }
        }
    });
    (tx, inbox)
}

type Thefts = Shared<Vec<(Instant, Seen, Option<Client>)>>;

/// Claims `id` with a foreign token on `addr` every 150 ms (each attempt waiting up to 15 s,
/// so attempts pile up while the registry is unreachable) until `stop`: every answer with the
/// time it came. OPENed sockets are kept open.
fn thief(addr: SocketAddr, id: &'static str, stop: tokio::sync::watch::Receiver<bool>) -> Thefts {
    let log = Arc::new(Mutex::new(Vec::new()));
    let sink = log.clone();
    tokio::spawn(async move {
        let mut k = 0u32;
        while !*stop.borrow() {
            k += 1;
            let sink = sink.clone();
            tokio::spawn(async move {
                let (c, first) =
                    attempt(addr, id, &format!("thief{k}"), Duration::from_secs(15)).await;
                let keep = (first == Seen::Text(OPEN.into())).then_some(c).flatten();
                sink.lock().unwrap().push((Instant::now(), first, keep));
            });
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    });
    log
}

/// Every OPEN the thief got for `id` while its owner's socket was still open: two owners.
fn double_owners(id: &str, owner: &Shared<Inbox>, thefts: &Thefts) -> Vec<String> {
    let ended = owner.lock().unwrap().ended.as_ref().map(|(t, _)| *t);
    thefts
        .lock()
        .unwrap()
        .iter()
        .filter(|(at, s, _)| *s == Seen::Text(OPEN.into()) && ended.is_none_or(|e| e > *at))
        .map(|(at, _, _)| {
            format!(
                "{id}: a second client got OPEN while the first was still open (the first {})",
                match ended {
                    Some(e) => format!("closed {:?} later", e - *at),
                    None => "never closed".into(),
                }
            )
        })
        .collect()
}

/// What a client was told first, short: the frame's type (and message), or how it ended.
fn told(s: &Seen) -> String {
    match s {
        Seen::Text(t) => {
            let v: serde_json::Value = serde_json::from_str(t).unwrap_or_default();
            match v["payload"]["msg"].as_str() {
                Some(m) => format!("{} \"{m}\"", v["type"].as_str().unwrap_or("?")),
                None => v["type"].as_str().unwrap_or("?").to_owned(),
            }
        }
        other => format!("{other:?}"),
    }
}

/// The thief's answers, counted by kind.
fn answers(log: &Thefts) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for (_, s, _) in log.lock().unwrap().iter() {
        *m.entry(told(s)).or_default() += 1;
    }
    m
}

/// `redis-cli` against the test's Redis.
fn redis_cli(redis: &Redis, args: &[&str]) -> String {
    let out = std::process::Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &redis.port.to_string(), "--raw"])
        .args(args)
        .output()
        .expect("redis-cli (redis-tools, installed with redis-server)");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Whether the registry's record for `id` names a node whose lease is alive and whose id set
/// lists `id`; with the node named.
fn registry_holds(redis: &Redis, id: &str) -> (bool, String) {
    let node = redis_cli(redis, &["HGET", &format!("kibitz:id:{id}"), "node"]);
    let live = !node.is_empty()
        && redis_cli(redis, &["EXISTS", &format!("kibitz:node:{node}")]) == "1"
        && redis_cli(redis, &["SISMEMBER", &format!("kibitz:ids:{node}"), id]) == "1";
    (live, node)
}

/// One sender's numbered OFFERs, round-robin to `dsts`, one every 10 ms.
struct Flow {
    tx: Sink,
    /// Its own inbox (for the EXPIREs it gets).
    inbox: Shared<Inbox>,
    dsts: Vec<&'static str>,
    next: u64,
    sent: Vec<(u64, &'static str, Instant)>,
}

impl Flow {
    fn new(c: Client, dsts: &[&'static str], first: u64) -> Self {
        let (tx, inbox) = split(c);
        Self {
            tx,
            inbox,
            dsts: dsts.to_vec(),
            next: first,
            sent: Vec::new(),
        }
    }

    /// Sends the next OFFER (a socket already closed is noted by its reader, not here).
    async fn send(&mut self) {
        let dst = self.dsts[(self.next % self.dsts.len() as u64) as usize];
        if self
            .tx
            .send(Message::text(offer(dst, self.next)))
            .await
            .is_ok()
        {
            self.sent.push((self.next, dst, Instant::now()));
        }
        self.next += 1;
    }

    /// Per message: delivered once, or not delivered and its destination EXPIREd to the
    /// sender by the message's deadline. An EXPIRE names a destination, not a message, and
    /// an offline queue expires whole (as in the reference server: at its first message's
    /// deadline), so the first EXPIRE for the destination after the message was sent is the
    /// one that answers for it. A message not delivered whose sender's socket ended by its
    /// deadline is owed nothing. Returns (delivered, expired by the deadline, slowest delivery,
    /// problems).
    fn account(
        &self,
        inboxes: &BTreeMap<&str, Shared<Inbox>>,
        ttl: Duration,
    ) -> (usize, usize, Duration, Vec<String>) {
        let (mut problems, mut lost, mut late) = (Vec::new(), Vec::new(), Vec::new());
        let (mut delivered, mut expired, mut slowest) = (0, 0, Duration::ZERO);
        let me = self.inbox.lock().unwrap();
        // An EXPIRE can only reach a sender whose socket is open: none is owed once the
        // broker closed it (a node that could not renew its lease closes its clients).
        let gone = me.ended.as_ref().map(|(t, _)| *t);
        for (n, dst, at) in &self.sent {
            let inbox = inboxes[dst].lock().unwrap();
            let copies: Vec<Instant> = inbox
                .got
                .iter()
                .filter(|(m, _)| m == n)
                .map(|(_, t)| *t)
                .collect();
            match copies.len() {
                1 => {
                    delivered += 1;
                    slowest = slowest.max(copies[0] - *at);
                }
                0 => match next_expire(&me, dst, *at) {
                    Some(t) if t <= *at + ttl + EXPIRE_SLACK => expired += 1,
                    _ if gone.is_some_and(|g| g <= *at + ttl + EXPIRE_SLACK) => {}
                    Some(t) => late.push((*n, *dst, t - (*at + ttl))),
                    None => lost.push(format!("{n}→{dst}")),
                },
                k => problems.push(format!("message {n} to {dst}: delivered {k} times")),
            }
        }
        if !lost.is_empty() {
            problems.push(format!(
                "{} messages neither delivered nor EXPIREd to their sender: {}",
                lost.len(),
                lost.join(" ")
            ));
        }
        if let Some(worst) = late.iter().map(|(_, _, l)| *l).max() {
            problems.push(format!(
                "{} messages not delivered and not EXPIREd by their deadline (+{EXPIRE_SLACK:?}): the next EXPIRE for their destination came up to {worst:?} after it ({})",
                late.len(),
                late.iter()
                    .map(|(n, d, l)| format!("{n}→{d} +{}ms", l.as_millis()))
                    .collect::<Vec<_>>()
                    .join(" ")
            ));
        }
        (delivered, expired, slowest, problems)
    }

    /// Every message delivered, or an EXPIRE for its destination since it was sent (or the
    /// sender's socket ended).
    fn settled(&self, inboxes: &BTreeMap<&str, Shared<Inbox>>) -> bool {
        let me = self.inbox.lock().unwrap();
        if me.ended.is_some() {
            // Nothing more can reach it.
            return true;
        }
        self.sent.iter().all(|(n, dst, at)| {
            inboxes[dst].lock().unwrap().got.iter().any(|(m, _)| m == n)
                || next_expire(&me, dst, *at).is_some()
        })
    }
}

/// The first EXPIRE for `dst` in `inbox` after `sent`.
fn next_expire(inbox: &Inbox, dst: &str, sent: Instant) -> Option<Instant> {
    inbox
        .expired
        .iter()
        .find(|(src, t)| src == dst && *t >= sent)
        .map(|(_, t)| *t)
}

/// The brokers' config in the cluster scenarios: a queue lifetime shorter than the fault, so
/// that some messages sent during it must end in EXPIRE.
fn fault_config() -> Config {
    Config {
        expire_timeout: Duration::from_secs(3),
        ..Config::default()
    }
}

/// A fault applied to a running cluster: `begin` starts it, `end` lifts it.
trait Fault {
    fn name(&self) -> String;
    fn begin(&mut self);
    fn end(&mut self);
}

/// The nodes of one cluster scenario: `a` hosts the main sender and the thief; `b` a
/// receiver; `c` (the node the fault hits hardest, or just another node) a receiver that also
/// sends, and the victim id the thief goes after.
struct Scenario<'a> {
    redis: &'a Redis,
    a: SocketAddr,
    b: SocketAddr,
    c: SocketAddr,
    ttl: Duration,
    /// How long the fault lasts.
    hold: Duration,
}

/// Runs `fault` over a cluster while messages flow (alice@a → bob@b and carol@c; carol@c →
/// bob@b) and a foreign token keeps claiming `vic`, held on c; then checks ownership and
/// delivery and prints what users saw and how long recovery took.
async fn run_fault(s: Scenario<'_>, fault: &mut dyn Fault) {
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let mut alice = Flow::new(open(s.a, "alice", "ta").await, &["bob", "carol"], 0);
    let mut carol = Flow::new(open(s.c, "carol", "tc").await, &["bob"], 1_000_000);
    let (_btx, bob) = split(open(s.b, "bob", "tb").await);
    let (_vtx, vic) = split(open(s.c, "vic", "tv").await);
    let inboxes: BTreeMap<&str, Shared<Inbox>> = [
        ("alice", alice.inbox.clone()),
        ("bob", bob.clone()),
        ("carol", carol.inbox.clone()),
        ("vic", vic.clone()),
    ]
    .into();
    let got = |id: &str| inboxes[id].lock().unwrap().got.len();
    // Flowing before the fault: messages arrived on every path.
    let deadline = Instant::now() + Duration::from_secs(10);
    while got("bob") < 20 || got("carol") < 10 {
        alice.send().await;
        carol.send().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(Instant::now() < deadline, "no flow before the fault");
    }
    fault.begin();
    let began = Instant::now();
    let thefts = thief(s.a, "vic", stop.clone());
    // Newcomers during the fault, on the node it hits and on another: what does a user see?
    let newcomer = |addr: SocketAddr, id: &'static str| {
        tokio::spawn(async move {
            let t = Instant::now();
            let (c, first) = attempt(addr, id, "tn", Duration::from_secs(30)).await;
            (t.elapsed(), first, c)
        })
    };
    let new_c = newcomer(s.c, "newc");
    let new_b = newcomer(s.b, "newb");
    while began.elapsed() < s.hold {
        alice.send().await;
        carol.send().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (a_mark, c_mark) = (alice.sent.len(), carol.sent.len());
    fault.end();
    let ended = Instant::now();
    // Claims on c after the fault: how long until one is granted again.
    let reclaim = tokio::spawn(async move {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (c, first) = attempt(s.c, "after", "ta2", Duration::from_secs(10)).await;
            if first == Seen::Text(OPEN.into()) {
                return (ended.elapsed(), c);
            }
            assert!(
                Instant::now() < deadline,
                "no claim granted on c after the fault: {first:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    // Sending goes on for a while after the fault.
    while ended.elapsed() < Duration::from_millis(LEASE_MS) {
        alice.send().await;
        carol.send().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let deadline = Instant::now() + s.ttl * 3 + s.hold;
    while !(alice.settled(&inboxes) && carol.settled(&inboxes)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Recovery: the first message sent after the fault delivered, on each path.
    let back = |flow: &Flow, mark: usize, dst: &str| {
        let (n, _, _) = flow.sent.iter().skip(mark).find(|(_, d, _)| *d == dst)?;
        let t = inboxes[dst]
            .lock()
            .unwrap()
            .got
            .iter()
            .find(|(m, _)| m == n)?
            .1;
        Some(t - ended)
    };
    let a_to_c = back(&alice, a_mark, "carol");
    let c_to_b = back(&carol, c_mark, "bob");
    let (claim_back, _after) = reclaim.await.unwrap();
    let (took_c, saw_c, _nc) = new_c.await.unwrap();
    let (took_b, saw_b, _nb) = new_b.await.unwrap();
    stop_tx.send(true).unwrap();

    let mut problems = Vec::new();
    println!(
        "{} for {:?} (lease {LEASE_MS} ms, queue lifetime {:?}):",
        fault.name(),
        s.hold,
        s.ttl
    );
    for (who, flow) in [("alice", &alice), ("carol", &carol)] {
        let (d, e, slowest, p) = flow.account(&inboxes, s.ttl);
        println!(
            "  {who}'s {} messages: {d} delivered once (the slowest in {slowest:?}), {e} EXPIREd by their deadline",
            flow.sent.len()
        );
        problems.extend(p);
    }
    problems.extend(double_owners("vic", &vic, &thefts));
    println!(
        "  a newcomer on the faulted node was told {} after {took_c:?}; on another node {} after {took_b:?}",
        told(&saw_c),
        told(&saw_b)
    );
    println!(
        "  after the fault: a claim on the faulted node granted in {claim_back:?}; first message alice→carol delivered in {a_to_c:?}, carol→bob in {c_to_b:?}"
    );
    println!("  foreign claims on vic: {:?}", answers(&thefts));
    for (id, i) in &inboxes {
        let i = i.lock().unwrap();
        println!(
            "  {id}: socket {}, other frames {:?}",
            match &i.ended {
                Some((t, seen)) =>
                    format!("ended ({seen:?}) {:?} after the fault began", *t - began),
                None => "open".into(),
            },
            i.other
        );
    }
    // The registry agrees with where the sockets are: each id still open here is recorded on
    // a live node that lists it.
    for id in ["alice", "bob", "carol", "vic"] {
        if inboxes[id].lock().unwrap().ended.is_none() {
            let (live, node) = registry_holds(s.redis, id);
            if !live {
                problems.push(format!("{id}: open, but the registry names {node:?}"));
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

// ---------------------------------------------------------------------------------------
// Redis frozen.

struct Freeze<'a>(&'a Redis);

impl Fault for Freeze<'_> {
    fn name(&self) -> String {
        "redis frozen (SIGSTOP)".into()
    }
    fn begin(&mut self) {
        self.0.freeze();
    }
    fn end(&mut self) {
        self.0.thaw();
    }
}

/// Redis is frozen (SIGSTOP) for three node leases (longer than the queue lifetime) under a three-node cluster while
/// messages flow across nodes and a foreign token keeps claiming an id, then thawed. Checked:
/// no id is ever OPEN for two clients at once (and the registry's records agree with where the
/// sockets are), and every message is delivered once or EXPIREd to its sender.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_frozen_mid_relay() {
    let redis = Redis::start();
    let config = fault_config();
    let ns: Vec<Node> = (0..3)
        .map(|_| Node::start(cluster_config(config.clone(), &redis, LEASE_MS)))
        .collect();
    for n in &ns {
        kibitz_e2e::wait_cluster_ready(n.addr.port()).await;
    }
    let s = Scenario {
        redis: &redis,
        a: ns[0].addr,
        b: ns[1].addr,
        c: ns[2].addr,
        ttl: config.expire_timeout,
        hold: Duration::from_millis(3 * LEASE_MS),
    };
    run_fault(s, &mut Freeze(&redis)).await;
}

// ---------------------------------------------------------------------------------------
// One node cut off from Redis.

/// Runs `cmd` with `sh -c`, failing the test if it fails.
fn sh(cmd: &str) {
    let out = std::process::Command::new("sh")
        .args(["-c", cmd])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Node c's network namespace, nested in the test's own: a veth pair 10.99.0.1 (the test's
/// side) – 10.99.0.2 (c's side), and Redis reached from c at 10.99.1.1 (an address on the test
/// side's loopback) through a route that the cut replaces with a blackhole, so that c keeps
/// its clients but its packets to Redis vanish, as in a partition.
struct CutOff {
    /// `unshare -n sleep`: holds the namespace.
    holder: std::process::Child,
}

impl CutOff {
    const REDIS: &str = "10.99.1.1";
    const C: &str = "10.99.0.2";

    fn new() -> Self {
        let holder = std::process::Command::new("unshare")
            .args(["-n", "sleep", "3600"])
            .spawn()
            .expect("unshare");
        let pid = holder.id();
        let ours = std::fs::read_link("/proc/self/ns/net").unwrap();
        // Until `unshare` has switched namespaces (about 5 s at most).
        let mut tries = 0;
        while std::fs::read_link(format!("/proc/{pid}/ns/net"))
            .ok()
            .as_ref()
            == Some(&ours)
        {
            tries += 1;
            assert!(tries < 500, "no namespace");
            std::thread::sleep(Duration::from_millis(10));
        }
        sh("ip link set lo up");
        sh(&format!(
            "ip link add kbz0 type veth peer name kbz1 netns {pid}"
        ));
        sh("ip addr add 10.99.0.1/24 dev kbz0 && ip link set kbz0 up");
        sh(&format!("ip addr add {}/32 dev lo", Self::REDIS));
        let n = Self { holder };
        n.inside(&format!(
            "ip link set lo up && ip addr add {}/24 dev kbz1 && ip link set kbz1 up && ip route add {}/32 via 10.99.0.1",
            Self::C,
            Self::REDIS
        ));
        n
    }

    fn inside(&self, cmd: &str) {
        sh(&format!("nsenter -t {} -n sh -c '{cmd}'", self.holder.id()));
    }

    /// `kibitz serve` in c's namespace, clustered on `redis_port` at 10.99.1.1, with queue
    /// lifetime `ttl`.
    fn serve(&self, redis_port: u16, ttl: Duration) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new("nsenter");
        cmd.args(["-t", &self.holder.id().to_string(), "-n"])
            .arg(kibitz_e2e::kibitz_bin())
            .args([
                "serve",
                "--listen",
                &format!("{}:0", Self::C),
                "--log-format",
                "json",
            ])
            .args([
                "--redis-url",
                &format!("redis://{}:{redis_port}/", Self::REDIS),
            ])
            .args(["--redis-lease-ms", &LEASE_MS.to_string()])
            .args(["--expire-timeout-ms", &ttl.as_millis().to_string()]);
        cmd
    }
}

impl Drop for CutOff {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

struct Cut<'a>(&'a CutOff);

impl Fault for Cut<'_> {
    fn name(&self) -> String {
        "one node cut off from redis (its route blackholed)".into()
    }
    fn begin(&mut self) {
        self.0
            .inside(&format!("ip route replace blackhole {}/32", CutOff::REDIS));
    }
    fn end(&mut self) {
        self.0.inside(&format!(
            "ip route replace {}/32 via 10.99.0.1",
            CutOff::REDIS
        ));
    }
}

/// One node of three is cut off from Redis for three leases (it runs in a network namespace
/// this test creates; its route to Redis is blackholed) while messages flow to, from and past
/// it and a foreign token keeps claiming an id held on it; then the route comes back. Checked
/// as for the frozen Redis. The test re-runs itself in a network namespace of its own (root
/// only; skipped, loudly, otherwise), where Redis may listen on the veth side's address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_redis() {
    const NAME: &str = "a_node_cut_off_from_redis";
    if std::env::var_os("KIBITZ_FAULTS_NETNS_CHILD").is_some() {
        return cut_off_child().await;
    }
    let probe = std::process::Command::new("unshare")
        .args(["-n", "true"])
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        eprintln!("SKIPPED: unshare -n needs root (CI runs as root)");
        return;
    }
    let out = tokio::process::Command::new("unshare")
        .arg("-n")
        .arg(std::env::current_exe().unwrap())
        .args([NAME, "--exact", "--nocapture"])
        .env("KIBITZ_FAULTS_NETNS_CHILD", "1")
        .env("KIBITZ_BIN", kibitz_e2e::kibitz_bin())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(180), out)
        .await
        .expect("netns child within 180 s")
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(
        out.status.success() && text.contains("netns child: ok"),
        "netns child failed"
    );
}

async fn cut_off_child() {
    let net = CutOff::new();
    let redis = Redis::start_bound(&format!("127.0.0.1 {}", CutOff::REDIS));
    let config = fault_config();
    let ns: Vec<Node> = (0..2)
        .map(|_| Node::start(cluster_config(config.clone(), &redis, LEASE_MS)))
        .collect();
    for n in &ns {
        kibitz_e2e::wait_cluster_ready(n.addr.port()).await;
    }
    let (mut c, c_port) = serve_with(net.serve(redis.port, config.expire_timeout)).await;
    let s = Scenario {
        redis: &redis,
        a: ns[0].addr,
        b: ns[1].addr,
        c: SocketAddr::new(CutOff::C.parse().unwrap(), c_port),
        ttl: config.expire_timeout,
        hold: Duration::from_millis(3 * LEASE_MS),
    };
    run_fault(s, &mut Cut(&net)).await;
    let _ = c.start_kill();
    println!("netns child: ok");
}

// ---------------------------------------------------------------------------------------
// The broker killed under a live room.

/// A process whose stdout lines are collected, with when each arrived; stdin piped.
struct Watched {
    name: &'static str,
    child: tokio::process::Child,
    stdin: Option<tokio::process::ChildStdin>,
    lines: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl Watched {
    fn spawn(name: &'static str, mut cmd: tokio::process::Command) -> Self {
        use tokio::io::AsyncBufReadExt as _;
        let mut child = cmd
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn");
        let stdin = child.stdin.take();
        let mut out = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        tokio::spawn(async move {
            while let Ok(Some(l)) = out.next_line().await {
                sink.lock().unwrap().push((Instant::now(), l));
            }
        });
        Self {
            name,
            child,
            stdin,
            lines,
        }
    }

    /// The last line starting with one of `prefixes`.
    fn last(&self, prefixes: &[&str]) -> Option<String> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|(_, l)| prefixes.iter().any(|p| l.starts_with(p)))
            .map(|(_, l)| l.clone())
    }

    /// Lines that arrived after `t`.
    fn since(&self, t: Instant) -> Vec<String> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|(at, _)| *at > t)
            .map(|(at, l)| format!("+{:.1}s {l}", (*at - t).as_secs_f32()))
            .collect()
    }

    async fn line(&mut self, text: &str) {
        use tokio::io::AsyncWriteExt as _;
        if let Some(i) = self.stdin.as_mut() {
            let _ = i.write_all(format!("{text}\n").as_bytes()).await;
            let _ = i.flush().await;
        }
    }
}

/// `kibitz serve` on 127.0.0.1:`port` (0: any); returns it once it logs that it listens, with
/// the port it took.
async fn serve(port: u16) -> (tokio::process::Child, u16) {
    let mut cmd = tokio::process::Command::new(kibitz_e2e::kibitz_bin());
    cmd.args([
        "serve",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--log-format",
        "json",
        // A clean stop closes the sockets at once (no load balancer to wait for here).
        "--drain-grace-ms",
        "0",
    ]);
    serve_with(cmd).await
}

/// Runs `cmd` (a `kibitz serve` command line with `--log-format json`) until it logs that it
/// listens; returns it with the port it took.
async fn serve_with(mut cmd: tokio::process::Command) -> (tokio::process::Child, u16) {
    use tokio::io::AsyncBufReadExt as _;
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn kibitz serve");
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let port = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(l)) = lines.next_line().await {
            let v: serde_json::Value = serde_json::from_str(&l).unwrap_or_default();
            if let Some(m) = v["fields"]["message"].as_str()
                && m.starts_with("listening")
            {
                let addr: SocketAddr = v["fields"]["addr"].as_str().unwrap().parse().unwrap();
                return addr.port();
            }
        }
        panic!("kibitz serve exited before listening");
    })
    .await
    .expect("kibitz serve listening within 30 s");
    // Keep draining its log so that it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, port)
}

const NAMES: [&str; 4] = ["Alice", "Bob", "Browser", "Carol"];

/// Everyone connected, each seeing all four, exactly one `kibitz join` coordinating: the
/// coordinator's name, or why not yet.
fn one_room(joins: &[Watched], page: &Watched) -> Result<&'static str, String> {
    let mut coordinators = Vec::new();
    for j in joins {
        let status = j.last(&[
            "* connected",
            "* reconnecting",
            "* looking",
            "* connecting",
            "* left",
        ]);
        let roster = j.last(&["* in the room:"]).unwrap_or_default();
        match status.as_deref() {
            Some("* connected (you coordinate the room)") => coordinators.push(j.name),
            Some("* connected") => {}
            other => return Err(format!("{}: {other:?}", j.name)),
        }
        if !NAMES.iter().all(|n| roster.contains(n)) {
            return Err(format!("{}: {roster}", j.name));
        }
    }
    let status = page.last(&["status "]);
    if status.as_deref() != Some("status connected") {
        return Err(format!("browser: {status:?}"));
    }
    let roster = page.last(&["roster "]).unwrap_or_default();
    if roster != format!("roster {}", NAMES.join(", ")) {
        return Err(format!("browser: {roster}"));
    }
    match coordinators[..] {
        [one] => Ok(one),
        _ => Err(format!("coordinators: {coordinators:?}")),
    }
}

/// Polls [`one_room`] every 50 ms until it holds, at most `wait`.
async fn until_one_room(joins: &[Watched], page: &Watched, wait: Duration) -> &'static str {
    let deadline = Instant::now() + wait;
    loop {
        match one_room(joins, page) {
            Ok(c) => return c,
            Err(why) => assert!(
                Instant::now() < deadline,
                "not one room within {wait:?}: {why}\n{:#?}",
                joins
                    .iter()
                    .chain([page])
                    .map(|w| (
                        w.name,
                        w.lines
                            .lock()
                            .unwrap()
                            .iter()
                            .map(|(_, l)| l.clone())
                            .collect::<Vec<_>>()
                    ))
                    .collect::<Vec<_>>()
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Three `kibitz join` processes and a room participant on the official `peerjs` client in
/// headless Chromium share a room through `kibitz serve`; the broker is killed with SIGKILL
/// and started again on the same port. Everyone is back in one room with one coordinator,
/// within a bound this test measures and prints (and asserts generously: 60 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_killed_under_a_live_room_and_restarted_on_the_same_port() {
    broker_restart_under_a_live_room("KILL", "fault-room-kill").await;
}

/// The baseline for the crash above, in the same suite: the broker stopped cleanly (SIGTERM,
/// no drain grace: every socket closed 1001) and started again on the same port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_stopped_cleanly_under_a_live_room_and_restarted_on_the_same_port() {
    broker_restart_under_a_live_room("TERM", "fault-room-term").await;
}

async fn broker_restart_under_a_live_room(sig: &str, room: &str) {
    let (mut broker, port) = serve(0).await;
    let signal = format!("ws://127.0.0.1:{port}");
    // KIBITZ_FAULTS_VERBOSE=1: the participants' peer logs too (kibitz-rtc at debug on
    // stderr, peerjs's log in the page's output), to see where a slow rejoin stalled.
    let verbose = std::env::var_os("KIBITZ_FAULTS_VERBOSE").is_some();
    let join = |name: &'static str| {
        let mut cmd = tokio::process::Command::new(kibitz_e2e::kibitz_bin());
        cmd.args(["join", room, "--name", name, "--signal-host", &signal]);
        if verbose {
            cmd.env("KIBITZ_LOG", "info,kibitz_rtc=debug,kibitz_join=debug");
        }
        Watched::spawn(name, cmd)
    };
    let joins = vec![join("Alice"), join("Bob"), join("Carol")];
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(format!(
        "{}/node/room-fault.mjs",
        env!("CARGO_MANIFEST_DIR")
    ))
    .args([
        "--host",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "--room",
        room,
    ]);
    if verbose {
        cmd.arg("--verbose");
    }
    let mut page = Watched::spawn("browser", cmd);
    let first = until_one_room(&joins, &page, Duration::from_secs(60)).await;
    println!("one room before the fault, {first} coordinating");

    let signalled = Instant::now();
    let pid = broker.id().expect("running").to_string();
    let sent = std::process::Command::new("kill")
        .args([&format!("-{sig}"), &pid])
        .status()
        .is_ok_and(|s| s.success());
    assert!(sent, "kill -{sig} {pid}");
    let status = tokio::time::timeout(Duration::from_secs(30), broker.wait())
        .await
        .expect("the broker exits within 30 s")
        .unwrap();
    let exited = signalled.elapsed();
    let (mut broker, again) = serve(port).await;
    let restarted = Instant::now();
    assert_eq!(again, port);
    let coordinator = until_one_room(&joins, &page, Duration::from_secs(60)).await;
    let took = signalled.elapsed();
    println!(
        "broker SIG{sig} ({status}, gone after {exited:?}) and restarted on port {port} ({:?} after the signal): one room again {took:?} after the signal ({:?} after the restart), {coordinator} coordinating (was {first})",
        restarted - signalled,
        restarted.elapsed()
    );
    for w in joins.iter().chain([&page]) {
        println!("  {} saw: {:#?}", w.name, w.since(signalled));
    }
    assert!(took < Duration::from_secs(60), "{took:?}");

    for mut j in joins {
        j.line("/quit").await;
        let _ = tokio::time::timeout(Duration::from_secs(10), j.child.wait()).await;
    }
    drop(page.stdin.take());
    let _ = tokio::time::timeout(Duration::from_secs(20), page.child.wait()).await;
    let _ = broker.start_kill();
}
