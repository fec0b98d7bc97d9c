//! Cluster mode end to end: a real `redis-server` (started here on 127.0.0.1) and several
//! broker nodes, each on its own runtime as if it were its own process.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use kibitz_e2e::{Client, Config, Node, Redis, Seen, cluster_config};
use std::time::Duration;
use tokio::time::Instant;

// Short enough to keep the tests quick, long enough for a loaded CI machine to renew in time
// (every third of it).
const LEASE_MS: u64 = 2000;

fn nodes(redis: &Redis, n: usize, config: &Config) -> Vec<Node> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    (0..n)
        .map(|_| Node::start(cluster_config(config.clone(), redis, LEASE_MS)))
        .collect()
}

/// Connects as `id`/`token` and returns the first thing the node says.
async fn attempt(node: &Node, id: &str, token: &str) -> (Client, Seen) {
    let mut c = node.broker().connect(id, token).await;
    let first = c.next_within(Duration::from_secs(5)).await;
    (c, first)
}

/// Connects until the node answers OPEN (the cluster needs a moment after start).
async fn open(node: &Node, id: &str, token: &str) -> Client {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (c, first) = attempt(node, id, token).await;
        if first == Seen::Text(r#"{"type":"OPEN"}"#.into()) {
            return c;
        }
        assert!(Instant::now() < deadline, "{id}: no OPEN, last {first:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn offer(dst: &str, n: u64) -> String {
    format!(r#"{{"type":"OFFER","dst":"{dst}","payload":{n}}}"#)
}

fn relayed(src: &str, dst: &str, n: u64) -> String {
    format!(r#"{{"type":"OFFER","src":"{src}","dst":"{dst}","payload":{n}}}"#)
}

#[tokio::test]
async fn relays_across_nodes_and_queues_for_offline_ids() {
    let redis = Redis::start();
    let ns = nodes(&redis, 2, &Config::default());
    let mut a = open(&ns[0], "alice", "ta").await;
    let mut b = open(&ns[1], "bob", "tb").await;
    a.send(&offer("bob", 1)).await;
    b.expect(&relayed("alice", "bob", 1)).await;
    b.send(&offer("alice", 2)).await;
    a.expect(&relayed("bob", "alice", 2)).await;
    // Offline: queued in the registry, delivered right after OPEN on another node.
    a.send(&offer("carol", 3)).await;
    a.send(&offer("carol", 4)).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut c = ns[1].broker().connect("carol", "tc").await;
    c.expect(r#"{"type":"OPEN"}"#).await;
    c.expect(&relayed("alice", "carol", 3)).await;
    c.expect(&relayed("alice", "carol", 4)).await;
    // ID-TAKEN across nodes.
    let (_t, first) = attempt(&ns[0], "bob", "other").await;
    assert_eq!(
        first,
        Seen::Text(r#"{"type":"ID-TAKEN","payload":{"msg":"ID is taken"}}"#.into())
    );
}

/// Two clients race for one id on different nodes, many times: exactly one gets OPEN, the
/// other ID-TAKEN, every time.
#[tokio::test]
async fn racing_claims_on_different_nodes_open_exactly_once() {
    // KIBITZ_RACE_RUNS=2000 for a longer run.
    let runs: usize = std::env::var("KIBITZ_RACE_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(200);
    let redis = Redis::start();
    let ns = nodes(&redis, 3, &Config::default());
    // Warm up: every node joined the registry.
    for (i, n) in ns.iter().enumerate() {
        drop(open(n, &format!("warm{i}"), "t").await);
    }
    let taken = Seen::Text(r#"{"type":"ID-TAKEN","payload":{"msg":"ID is taken"}}"#.into());
    let opened = Seen::Text(r#"{"type":"OPEN"}"#.into());
    for run in 0..runs {
        let id = format!("room-{run}");
        let (x, y) = (&ns[run % 3], &ns[(run + 1) % 3]);
        let ((_a, fa), (_b, fb)) = tokio::join!(attempt(x, &id, "ta"), attempt(y, &id, "tb"));
        let opens = [&fa, &fb].iter().filter(|s| ***s == opened).count();
        let refused = [&fa, &fb].iter().filter(|s| ***s == taken).count();
        assert_eq!(
            (opens, refused),
            (1, 1),
            "run {run}: {fa:?} / {fb:?} (exactly one OPEN and one ID-TAKEN)"
        );
    }
}

/// A node that dies loses its ids within the lease; peers on other nodes are untouched.
#[tokio::test]
async fn a_dead_nodes_ids_are_free_within_the_lease_and_others_untouched() {
    let redis = Redis::start();
    let mut ns = nodes(&redis, 3, &Config::default());
    let mut doomed = Vec::new();
    for i in 0..20 {
        doomed.push(open(&ns[0], &format!("d{i}"), "old").await);
    }
    let mut y = open(&ns[1], "y", "ty").await;
    let mut z = open(&ns[2], "z", "tz").await;
    ns[0].kill();
    let killed = Instant::now();
    // Its sockets are cut at once.
    for c in &mut doomed {
        assert!(matches!(
            c.next_within(Duration::from_secs(2)).await,
            Seen::Gone | Seen::Closed(_)
        ));
    }
    // Until the lease lapses the ids are still held ...
    let (_c, first) = attempt(&ns[2], "d0", "new").await;
    assert_eq!(
        first,
        Seen::Text(r#"{"type":"ID-TAKEN","payload":{"msg":"ID is taken"}}"#.into()),
        "held right after the kill"
    );
    // ... then free, within the lease (polled every 20 ms).
    let mut got = Vec::new();
    loop {
        let (c, first) = attempt(&ns[1], "d0", "new").await;
        if first == Seen::Text(r#"{"type":"OPEN"}"#.into()) {
            got.push(c);
            break;
        }
        assert!(killed.elapsed() < Duration::from_secs(5), "d0 never freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let freed = killed.elapsed();
    eprintln!("dead node's ids free {freed:?} after the kill (lease {LEASE_MS} ms)");
    assert!(
        // Redis drops the lease at most LEASE_MS after the kill (it was renewed at most a
        // third of that before); the rest is this poll's 20 ms and a WebSocket handshake.
        freed <= Duration::from_millis(LEASE_MS + 400),
        "ids freed after {freed:?}, lease {LEASE_MS} ms"
    );
    for i in 1..20 {
        let (c, first) = attempt(&ns[1 + i % 2], &format!("d{i}"), "new").await;
        assert_eq!(first, Seen::Text(r#"{"type":"OPEN"}"#.into()), "d{i}");
        got.push(c);
    }
    // The others never noticed: still held, still relaying across nodes.
    let (_c, first) = attempt(&ns[2], "y", "thief").await;
    assert_eq!(
        first,
        Seen::Text(r#"{"type":"ID-TAKEN","payload":{"msg":"ID is taken"}}"#.into())
    );
    z.send(&offer("y", 7)).await;
    y.expect(&relayed("z", "y", 7)).await;
    y.send(&offer("z", 8)).await;
    z.expect(&relayed("y", "z", 8)).await;
    got[0].send(&offer("y", 9)).await;
    y.expect(&relayed("d0", "y", 9)).await;
}

/// Redis is killed (losing everything) and started again while a sender streams OFFERs to a
/// peer on another node and to offline ids (one queued in Redis before the kill, one sent
/// during the outage): every OFFER to the online peer arrives exactly once, the sender gets
/// one EXPIRE per offline id, and the ids are held again afterwards.
#[tokio::test]
async fn a_redis_restart_mid_relay_loses_no_message() {
    const N: u64 = 400;
    // A node hands messages again only within their queue lifetime, and delivered ones one
    // lease after it reconnects: the outage, the restart and the reconnect must fit in it.
    // On a loaded machine they took over 3 s and the default 5 s lost the inbox's unread tail
    // (as documented), so the scenario gets a lifetime that fits.
    const TTL: Duration = Duration::from_secs(15);
    let mut redis = Redis::start();
    let config = Config {
        expire_timeout: TTL,
        ..Config::default()
    };
    let ns = nodes(&redis, 2, &config);
    let mut a = open(&ns[0], "alice", "ta").await;
    let mut b = open(&ns[1], "bob", "tb").await;
    let reader = tokio::spawn(async move {
        let mut seen = std::collections::BTreeMap::<u64, u32>::new();
        let deadline = Instant::now() + TTL * 3;
        while seen.len() < N as usize && Instant::now() < deadline {
            match b.next_within(Duration::from_secs(10)).await {
                Seen::Text(t) => {
                    let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                    assert_eq!(v["src"], "alice");
                    *seen.entry(v["payload"].as_u64().unwrap()).or_default() += 1;
                }
                other => panic!(
                    "bob: {other:?} after {} messages, missing {:?}",
                    seen.len(),
                    (0..N).filter(|n| !seen.contains_key(n)).collect::<Vec<_>>()
                ),
            }
        }
        (b, seen)
    });
    for n in 0..N {
        if n == N / 4 {
            // Queued in Redis, then lost with it: the sender's node hands it again.
            a.send(&offer("ghost-before", 1)).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            redis.kill();
            // Held on the sender's node while Redis is away.
            a.send(&offer("ghost", 1)).await;
        }
        if n == N / 2 {
            redis.start_again();
        }
        a.send(&offer("bob", n)).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (mut b, seen) = reader.await.unwrap();
    let missing: Vec<u64> = (0..N).filter(|n| !seen.contains_key(n)).collect();
    let dups = seen.values().filter(|c| **c > 1).count();
    eprintln!("delivered {} of {N}, {dups} more than once", seen.len());
    assert!(missing.is_empty(), "lost: {missing:?}");
    assert_eq!(dups, 0, "a message handed to Redis again is delivered once");
    // Each offline id's sender hears EXPIRE (one TTL after its OFFER), once.
    let mut expired = Vec::new();
    for _ in 0..2 {
        match a.next_within(TTL * 2).await {
            Seen::Text(t) => expired.push(t),
            other => panic!("alice: {other:?} (got {expired:?})"),
        }
    }
    expired.sort();
    assert_eq!(
        expired,
        [
            r#"{"type":"EXPIRE","src":"ghost","dst":"alice"}"#,
            r#"{"type":"EXPIRE","src":"ghost-before","dst":"alice"}"#,
        ]
    );
    // Nothing else is waiting for alice: her own probe comes next.
    a.send(&offer("alice", 1)).await;
    a.expect(&relayed("alice", "alice", 1)).await;
    // Both ids were re-asserted: another token is refused (once claims reopen).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_c, first) = attempt(&ns[0], "bob", "thief").await;
        if first == Seen::Text(r#"{"type":"ID-TAKEN","payload":{"msg":"ID is taken"}}"#.into()) {
            break;
        }
        assert!(Instant::now() < deadline, "bob not re-asserted: {first:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    a.send(&offer("bob", 10_000)).await;
    b.expect(&relayed("alice", "bob", 10_000)).await;
}

/// Room leave notices work across nodes: the room id's holder on one node closes, and the
/// peer that signalled with it from another node gets LEAVE after the grace; a room id taken
/// back (on any node) within the grace sends nothing.
#[tokio::test]
async fn room_leave_notices_cross_nodes() {
    let redis = Redis::start();
    let config = Config {
        room_notices: Some(kibitz_signal::core::RoomNotices {
            grace: Duration::from_millis(300),
            expire: Duration::from_millis(1000),
        }),
        ..Config::default()
    };
    let ns = nodes(&redis, 2, &config);
    let room = "kbz-v1-standup";
    let mut auth = open(&ns[0], room, "auth").await;
    let mut member = open(&ns[1], "m1", "tm").await;
    member.send(&offer(room, 1)).await;
    auth.expect(&relayed("m1", room, 1)).await;
    drop(auth);
    assert_eq!(
        member.next_within(Duration::from_secs(3)).await,
        Seen::Text(format!(r#"{{"type":"LEAVE","src":"{room}","dst":"m1"}}"#))
    );
    // Taken back on the other node within the grace: no notice.
    let mut auth = open(&ns[0], room, "auth").await;
    member.send(&offer(room, 2)).await;
    auth.expect(&relayed("m1", room, 2)).await;
    drop(auth);
    let _back = open(&ns[1], room, "auth2").await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    // The next frame is the member's own probe, not a LEAVE.
    member.send(&offer("m1", 3)).await;
    member.expect(&relayed("m1", "m1", 3)).await;
}

/// A node that shuts down cleanly gives its ids back at once, not after the lease.
#[tokio::test]
async fn a_clean_shutdown_frees_ids_at_once() {
    let redis = Redis::start();
    let long_lease = cluster_config(Config::default(), &redis, 30_000);
    let stopping = kibitz_e2e::start(long_lease.clone()).await;
    let other = Node::start(long_lease);
    kibitz_e2e::wait_cluster_ready(stopping.addr.port()).await;
    let mut x = stopping.connect("x", "old").await;
    x.expect(r#"{"type":"OPEN"}"#).await;
    let stopped = Instant::now();
    drop(stopping);
    x.expect_closed(Some(1001)).await;
    let _x = open(&other, "x", "new").await;
    assert!(
        stopped.elapsed() < Duration::from_secs(5),
        "freed after {:?} (lease 30 s)",
        stopped.elapsed()
    );
}

/// While Redis is unreachable a node refuses new ids with an in-band ERROR (never granting one
/// on its own) and answers `GET /id` with 503; peers it already holds keep relaying locally.
/// When Redis is back (empty), claims resume once the cluster has settled.
#[tokio::test]
async fn while_redis_is_down_new_ids_are_refused_clearly() {
    let mut redis = Redis::start();
    let ns = nodes(&redis, 2, &Config::default());
    // Both nodes have joined (and seen the registry's epoch) before it goes away.
    for n in &ns {
        kibitz_e2e::wait_cluster_ready(n.addr.port()).await;
    }
    let mut a = open(&ns[0], "a", "ta").await;
    let mut b = open(&ns[0], "b", "tb").await;
    redis.kill();
    // The node notices at its next registry call (a lease renewal at the latest).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_c, first) = attempt(&ns[1], "newcomer", "t").await;
        if first
            == Seen::Text(
                r#"{"type":"ERROR","payload":{"msg":"Cluster registry unavailable, try again"}}"#
                    .into(),
            )
        {
            break;
        }
        assert_ne!(
            first,
            Seen::Text(r#"{"type":"OPEN"}"#.into()),
            "granted without Redis"
        );
        assert!(Instant::now() < deadline, "no clear refusal: {first:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = http_status(ns[1].addr.port(), "/id").await;
    assert_eq!(status, 503, "GET /id while Redis is down");
    // Same-node relays go on.
    a.send(&offer("b", 1)).await;
    b.expect(&relayed("a", "b", 1)).await;
    // The holder of "a" notices too, at its next registry call (a lease renewal at the latest;
    // an idle node had not yet, seen under load), so that its return below is a re-assert.
    kibitz_e2e::wait_cluster_down(ns[0].addr.port()).await;
    redis.start_again();
    // Both nodes back: ns[0] has re-asserted "a" (a node turns ready after its re-assert). The
    // cluster-wide settle window holds claims for one lease so that this normally happens
    // first, but a node slower than a lease to reconnect loses its ids, by design; that
    // window is not what this test asserts.
    kibitz_e2e::wait_cluster_ready(ns[1].addr.port()).await;
    kibitz_e2e::wait_cluster_ready(ns[0].addr.port()).await;
    let _n = open(&ns[1], "newcomer", "t").await;
    // "a" was re-asserted: another token is refused.
    let (_c, first) = attempt(&ns[1], "a", "thief").await;
    assert_eq!(
        first,
        Seen::Text(r#"{"type":"ID-TAKEN","payload":{"msg":"ID is taken"}}"#.into())
    );
}

async fn http_status(port: u16, path: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = [0u8; 12];
    s.read_exact(&mut head).await.unwrap();
    std::str::from_utf8(&head[9..12]).unwrap().parse().unwrap()
}

/// Offline queues whose deadline passes while Redis is away (queued before it died, or held on
/// the sender's node during the outage) still end in one EXPIRE each.
#[tokio::test]
async fn queues_that_expire_during_an_outage_still_expire() {
    let mut redis = Redis::start();
    let config = Config {
        expire_timeout: Duration::from_millis(600),
        ..Config::default()
    };
    let ns = nodes(&redis, 2, &config);
    let mut a = open(&ns[0], "alice", "ta").await;
    a.send(&offer("ghost-q", 1)).await;
    a.send(&offer("ghost-q", 2)).await;
    // Both queued in Redis (the probe proves alice's node handled them).
    a.send(&offer("alice", 0)).await;
    a.expect(&relayed("alice", "alice", 0)).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    redis.kill();
    a.send(&offer("ghost-w", 1)).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    redis.start_again();
    let mut expired = Vec::new();
    for _ in 0..2 {
        match a.next_within(Duration::from_secs(5)).await {
            Seen::Text(t) => expired.push(t),
            other => panic!("alice: {other:?} (got {expired:?})"),
        }
    }
    expired.sort();
    assert_eq!(
        expired,
        [
            r#"{"type":"EXPIRE","src":"ghost-q","dst":"alice"}"#,
            r#"{"type":"EXPIRE","src":"ghost-w","dst":"alice"}"#,
        ]
    );
    a.send(&offer("alice", 9)).await;
    a.expect(&relayed("alice", "alice", 9)).await;
}

/// 10,000 messages from one sender to a peer on another node arrive in order: routes are
/// pipelined (several requests in flight) and coalesced per receiving node, yet a sender's
/// messages keep their order. The receiver reads while the sender writes.
#[tokio::test]
async fn ten_thousand_messages_across_nodes_arrive_in_order() {
    const N: u64 = 10_000;
    let redis = Redis::start();
    let mut config = Config::default();
    config.limits.msg_rate = 1_000_000;
    config.limits.msg_burst = 1_000_000;
    let ns = nodes(&redis, 2, &config);
    let mut a = open(&ns[0], "alice", "ta").await;
    let mut b = open(&ns[1], "bob", "tb").await;
    let reader = tokio::spawn(async move {
        for n in 0..N {
            match b.next_within(Duration::from_secs(10)).await {
                Seen::Text(t) => assert_eq!(t, relayed("alice", "bob", n), "message {n}"),
                other => panic!("message {n}: {other:?}"),
            }
        }
        b
    });
    for n in 0..N {
        a.send(&offer("bob", n)).await;
    }
    reader.await.unwrap();
}
