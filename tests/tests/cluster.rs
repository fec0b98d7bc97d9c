//! Cluster mode end to end: a real `redis-server` (started here on 127.0.0.1) and several
//! broker nodes, each on its own runtime as if it were its own process. Every scenario runs
//! twice: on one Redis (`single::`) and on a 3-master Redis Cluster with the registry in 16
//! shards (`redis_cluster::`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use kibitz_e2e::{Client, Config, Node, Registry, RegistryKind, Seen};
use std::time::Duration;
use tokio::time::Instant;

// Short enough to keep the tests quick, long enough for a loaded CI machine to renew in time
// (every third of it).
const LEASE_MS: u64 = 2000;
/// The lease of the scenarios whose Redis outage (or failover) the peers must ride out: a
/// node that cannot renew its lease for nine tenths of it drops its ids and closes their
/// sockets (fencing), so the lease must outlast the outage, on a loaded machine too.
const OUTAGE_LEASE_MS: u64 = 8000;

fn nodes(redis: &Registry, n: usize, config: &Config) -> Vec<Node> {
    nodes_leased(redis, n, config, LEASE_MS)
}

fn nodes_leased(redis: &Registry, n: usize, config: &Config, lease_ms: u64) -> Vec<Node> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    (0..n)
        .map(|_| Node::start(redis.config(config.clone(), lease_ms)))
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

async fn relays_across_nodes_and_queues_for_offline_ids(kind: RegistryKind) {
    let redis = Registry::start(kind);
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
async fn racing_claims_on_different_nodes_open_exactly_once(kind: RegistryKind) {
    // KIBITZ_RACE_RUNS=5000 for a longer run.
    let runs: usize = std::env::var("KIBITZ_RACE_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(1000);
    let redis = Registry::start(kind);
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
async fn a_dead_nodes_ids_are_free_within_the_lease_and_others_untouched(kind: RegistryKind) {
    let redis = Registry::start(kind);
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
async fn a_redis_restart_mid_relay_loses_no_message(kind: RegistryKind) {
    const N: u64 = 400;
    // A node hands messages again only within their queue lifetime, and delivered ones one
    // lease after it reconnects: the outage, the restart and the reconnect must fit in it.
    // On a loaded machine they took over 3 s and the default 5 s lost the inbox's unread tail
    // (as documented), so the scenario gets a lifetime that fits.
    const TTL: Duration = Duration::from_secs(15);
    let mut redis = Registry::start(kind);
    let config = Config {
        expire_timeout: TTL,
        ..Config::default()
    };
    let ns = nodes_leased(&redis, 2, &config, OUTAGE_LEASE_MS);
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
async fn room_leave_notices_cross_nodes(kind: RegistryKind) {
    let redis = Registry::start(kind);
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
async fn a_clean_shutdown_frees_ids_at_once(kind: RegistryKind) {
    let redis = Registry::start(kind);
    let long_lease = redis.config(Config::default(), 30_000);
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
async fn while_redis_is_down_new_ids_are_refused_clearly(kind: RegistryKind) {
    let mut redis = Registry::start(kind);
    let ns = nodes_leased(&redis, 2, &Config::default(), OUTAGE_LEASE_MS);
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
async fn queues_that_expire_during_an_outage_still_expire(kind: RegistryKind) {
    let mut redis = Registry::start(kind);
    let config = Config {
        expire_timeout: Duration::from_millis(600),
        ..Config::default()
    };
    let ns = nodes_leased(&redis, 2, &config, OUTAGE_LEASE_MS);
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
async fn ten_thousand_messages_across_nodes_arrive_in_order(kind: RegistryKind) {
    const N: u64 = 10_000;
    let redis = Registry::start(kind);
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

/// Node links: once a sender's node knows where its receiver is, a message crosses nodes
/// over the link even while Redis answers nothing (frozen), in order, and the Redis copy
/// that follows once Redis is back is not delivered again.
#[tokio::test]
async fn a_cross_node_message_goes_over_the_link_while_redis_is_frozen() {
    let redis = Registry::start(RegistryKind::Single);
    let ns = nodes_leased(&redis, 2, &Config::default(), OUTAGE_LEASE_MS);
    let mut a = open(&ns[0], "alice", "ta").await;
    let mut b = open(&ns[1], "bob", "tb").await;
    // Through Redis first; each answer tells alice's node where bob is.
    for n in 0..20 {
        a.send(&offer("bob", n)).await;
        b.expect(&relayed("alice", "bob", n)).await;
    }
    let frozen = redis.single().expect("one redis-server");
    frozen.freeze();
    for n in 20..25 {
        a.send(&offer("bob", n)).await;
    }
    for n in 20..25 {
        match b.next_within(Duration::from_secs(5)).await {
            Seen::Text(t) => assert_eq!(t, relayed("alice", "bob", n), "over the link"),
            other => {
                frozen.thaw();
                panic!("message {n} not relayed while Redis was frozen: {other:?}");
            }
        }
    }
    frozen.thaw();
    // Redis delivers its copies of 20..25 now: dropped as repeats, so 25 comes next.
    a.send(&offer("bob", 25)).await;
    b.expect(&relayed("alice", "bob", 25)).await;
    b.send(&offer("alice", 26)).await;
    a.expect(&relayed("bob", "alice", 26)).await;
}

/// A node's link port takes only nodes that prove they know the cluster's link key: a wrong
/// proof, an oversized hello and garbage are each refused (the connection closed), and the
/// nodes' own links keep working (a message crosses over the link while Redis is frozen).
#[tokio::test]
async fn a_node_link_refuses_strangers_and_garbage() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let redis = Registry::start(RegistryKind::Single);
    let ns = nodes_leased(&redis, 2, &Config::default(), OUTAGE_LEASE_MS);
    let mut a = open(&ns[0], "alice", "ta").await;
    let mut b = open(&ns[1], "bob", "tb").await;
    let single = redis.single().expect("one redis-server");
    let port = single.port;
    // Node ids name their link address: {uuid}@127.0.0.1:PORT.
    let keys = kibitz_e2e::redis_cli(port, &["KEYS", "kibitz:node:*"]).expect("redis-cli");
    let links: Vec<String> = keys
        .lines()
        .filter_map(|k| k.split_once('@').map(|(_, a)| a.to_owned()))
        .collect();
    assert_eq!(links.len(), 2, "two nodes with links: {keys}");
    // Each stranger must be closed by the node (read returns 0 or fails), within 5 s.
    async fn refused(addr: &str, hello: &[u8]) {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .expect("link port");
        let mut challenge = [0u8; 32];
        s.read_exact(&mut challenge).await.expect("a challenge");
        let _ = s.write_all(hello).await;
        let mut rest = [0u8; 64];
        let r = tokio::time::timeout(Duration::from_secs(5), s.read(&mut rest)).await;
        assert!(
            matches!(r, Ok(Ok(0)) | Ok(Err(_))),
            "a stranger was not refused: {r:?}"
        );
    }
    let mut forged = vec![0u8, 9];
    forged.extend_from_slice(b"x@1.2.3.4");
    forged.extend_from_slice(&[0u8; 32]);
    refused(&links[0], &forged).await;
    refused(&links[0], &[0xff, 0xff, 1, 2, 3]).await;
    refused(
        &links[1],
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n0123456789012345678901234567890123456789",
    )
    .await;
    // The nodes' own links still carry messages.
    for n in 0..20 {
        a.send(&offer("bob", n)).await;
        b.expect(&relayed("alice", "bob", n)).await;
    }
    single.freeze();
    a.send(&offer("bob", 20)).await;
    let got = b.next_within(Duration::from_secs(5)).await;
    single.thaw();
    assert_eq!(got, Seen::Text(relayed("alice", "bob", 20)));
}

/// A sender streams messages to an id that opens on the sender's node meanwhile: every one
/// arrives once and in order. Those relayed while the id's claim is in flight would go
/// through the node's own inbox and be overtaken by those relayed straight to the socket once
/// the claim is answered (the cluster simulation's seeds 1663 and 2131); they wait for the
/// answer and follow OPEN and what Redis had queued instead.
async fn messages_to_an_id_opening_on_the_senders_node_keep_their_order(kind: RegistryKind) {
    const N: u64 = 3000;
    let redis = Registry::start(kind);
    let mut config = Config::default();
    config.limits.msg_rate = 1_000_000;
    config.limits.msg_burst = 1_000_000;
    // Everything sent before carol is open is queued for her, none refused.
    config.limits.max_queued_per_dst = 100_000;
    let ns = nodes(&redis, 2, &config);
    let mut a = open(&ns[0], "alice", "ta").await;
    let (started, go) = tokio::sync::oneshot::channel();
    let sender = tokio::spawn(async move {
        let mut started = Some(started);
        for n in 0..N {
            a.send(&offer("carol", n)).await;
            if n == 100
                && let Some(s) = started.take()
            {
                let _ = s.send(());
            }
        }
        a
    });
    go.await.unwrap();
    let mut c = ns[0].broker().connect("carol", "tc").await;
    c.expect(r#"{"type":"OPEN"}"#).await;
    for n in 0..N {
        match c.next_within(Duration::from_secs(10)).await {
            Seen::Text(t) => assert_eq!(t, relayed("alice", "carol", n), "message {n}"),
            other => panic!("message {n}: {other:?}"),
        }
    }
    sender.await.unwrap();
}

/// Each scenario on one Redis and on a Redis Cluster.
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod single {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(kibitz_e2e::RegistryKind::Single).await;
                }
            )*
        }
        mod redis_cluster {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(kibitz_e2e::RegistryKind::Cluster).await;
                }
            )*
        }
    };
}

on_both!(
    relays_across_nodes_and_queues_for_offline_ids,
    racing_claims_on_different_nodes_open_exactly_once,
    a_dead_nodes_ids_are_free_within_the_lease_and_others_untouched,
    a_redis_restart_mid_relay_loses_no_message,
    room_leave_notices_cross_nodes,
    a_clean_shutdown_frees_ids_at_once,
    while_redis_is_down_new_ids_are_refused_clearly,
    queues_that_expire_during_an_outage_still_expire,
    ten_thousand_messages_across_nodes_arrive_in_order,
    messages_to_an_id_opening_on_the_senders_node_keep_their_order
);

/// A master of a Redis Cluster (3 masters, 3 replicas) holding a live id's shard is killed
/// with SIGKILL mid-relay; its replica takes over. Messages sent across the failover are each
/// delivered once or EXPIREd to their sender; clients on every node relay afterwards; ids
/// contested during the failover end with one owner each, and the registry names one.
#[tokio::test]
async fn a_redis_cluster_master_failover_keeps_one_owner_and_every_message() {
    const N: u64 = 600;
    // Long enough to cover the failover, the reconnect and the one-lease replay after it.
    const TTL: Duration = Duration::from_secs(15);
    let mut rc = kibitz_e2e::RedisCluster::start(3, 3);
    let mut config = Config {
        expire_timeout: TTL,
        ..Config::default()
    };
    config.limits.msg_rate = 1_000_000;
    config.limits.msg_burst = 1_000_000;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let ns: Vec<Node> = (0..3)
        .map(|_| {
            Node::start(kibitz_e2e::redis_cluster_config(
                config.clone(),
                &rc,
                OUTAGE_LEASE_MS,
            ))
        })
        .collect();
    for n in &ns {
        kibitz_e2e::wait_cluster_ready(n.addr.port()).await;
    }
    let mut a = open(&ns[0], "alice", "ta").await;
    let b = open(&ns[1], "bob", "tb").await;
    let c = open(&ns[2], "carol", "tc").await;
    let slot = kibitz_signal::registry_slot("bob", 16);
    let victim = rc.master_of(slot).expect("bob's master");
    let reader = tokio::spawn(async move {
        let mut b = b;
        let mut seen = std::collections::BTreeMap::<u64, u32>::new();
        let deadline = Instant::now() + TTL * 3;
        while seen.len() < N as usize && Instant::now() < deadline {
            match b.next_within(TTL * 2).await {
                Seen::Text(t) => {
                    let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                    assert_eq!(v["src"], "alice", "{t}");
                    *seen.entry(v["payload"].as_u64().unwrap()).or_default() += 1;
                }
                other => {
                    eprintln!("bob: {other:?} after {} messages", seen.len());
                    break;
                }
            }
        }
        (b, seen)
    });
    // Ids contested from two nodes while the master is down: attempts go on until the end.
    let contested: Vec<String> = (0..12).map(|k| format!("contested-{k}")).collect();
    let mut owners: Vec<(String, Client)> = Vec::new();
    let mut killed_at = None;
    for n in 0..N {
        if n == N / 4 {
            rc.kill_port(victim);
            killed_at = Some(Instant::now());
        }
        if n >= N / 4 && n % 50 == 0 {
            for (k, id) in contested.iter().enumerate() {
                let node = &ns[(k + n as usize / 50) % 3];
                let (cl, first) = attempt(node, id, &format!("t{n}")).await;
                if first == Seen::Text(r#"{"type":"OPEN"}"#.into()) {
                    owners.push((id.clone(), cl));
                }
            }
        }
        a.send(&offer("bob", n)).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let killed_at = killed_at.unwrap();
    // The replica took over.
    let live = rc.live_ports();
    rc.wait_ok(&live);
    let promoted = rc.master_of(slot).expect("a master for bob's slot");
    assert_ne!(promoted, victim);
    eprintln!(
        "failover: {victim} -> {promoted}, {:?} after the kill",
        killed_at.elapsed()
    );
    for n in &ns {
        kibitz_e2e::wait_cluster_ready(n.addr.port()).await;
    }
    let (b, seen) = reader.await.unwrap();
    // Every message to bob: delivered once, or its sender heard EXPIRE from bob.
    let dups = seen.values().filter(|c| **c > 1).count();
    let missing: Vec<u64> = (0..N).filter(|n| !seen.contains_key(n)).collect();
    let mut expired = 0;
    if !missing.is_empty() {
        // An EXPIRE from bob would come to alice (one per queue).
        while let Seen::Text(t) = a.next_within(Duration::from_secs(2)).await {
            if t.contains(r#""type":"EXPIRE","src":"bob""#) {
                expired += 1;
            }
        }
    }
    eprintln!(
        "delivered {} of {N} across the failover, {dups} more than once, {} missing, {expired} EXPIREs",
        seen.len(),
        missing.len()
    );
    assert_eq!(dups, 0, "delivered more than once");
    assert!(
        missing.is_empty() || expired > 0,
        "lost without EXPIRE: {missing:?}"
    );
    // After the promotion: clients on every node relay to every other node.
    let mut clients = [a, b, c];
    let names = ["alice", "bob", "carol"];
    for i in 0..3 {
        for j in 0..3 {
            if i != j {
                clients[i].send(&offer(names[j], 100 + i as u64)).await;
                clients[j]
                    .expect(&relayed(names[i], names[j], 100 + i as u64))
                    .await;
            }
        }
    }
    eprintln!(
        "contested ids: {} OPENs over {} ids during and after the failover",
        owners.len(),
        contested.len()
    );
    // One owner per contested id: of the clients that got OPEN, at most one still holds it
    // (a node closes a socket whose id it lost), and a newcomer is refused if one does.
    for id in &contested {
        let mut alive = 0;
        for (_, cl) in owners.iter_mut().filter(|(i, _)| i == id) {
            cl.send(&offer(id, 7)).await;
            match cl.next_within(Duration::from_secs(3)).await {
                Seen::Text(t) if t == relayed(id, id, 7) => alive += 1,
                _ => {}
            }
        }
        assert!(alive <= 1, "{id}: {alive} owners");
        if alive == 1 {
            for n in &ns {
                let (_t, first) = attempt(n, id, "thief").await;
                assert_eq!(
                    first,
                    Seen::Text(r#"{"type":"ID-TAKEN","payload":{"msg":"ID is taken"}}"#.into()),
                    "{id}"
                );
            }
        }
    }
    // The registry agrees: each live id is in exactly one node's id set of its shard.
    for id in names
        .iter()
        .copied()
        .chain(contested.iter().map(String::as_str))
    {
        let shard = kibitz_signal::registry_shard(id, 16);
        let port = rc.master_of(kibitz_signal::registry_slot(id, 16)).unwrap();
        let sets = kibitz_e2e::redis_cli(port, &["KEYS", &format!("kibitz:{{{shard}}}:ids:*")])
            .unwrap_or_default();
        let holders = sets
            .lines()
            .filter(|set| {
                kibitz_e2e::redis_cli(port, &["SISMEMBER", set, id]).as_deref() == Some("1")
            })
            .count();
        assert!(holders <= 1, "{id} in {holders} id sets");
        if names.contains(&id) {
            assert_eq!(holders, 1, "{id} held");
        }
    }
}
