//! Cluster mode end to end: a real `redis-server` (started here on 127.0.0.1) and several
//! broker nodes, each on its own runtime as if it were its own process.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use kibitz_e2e::{Client, Config, Node, Redis, Seen, cluster_config};
use std::time::Duration;
use tokio::time::Instant;

const LEASE_MS: u64 = 1000;

fn nodes(redis: &Redis, n: usize, config: &Config) -> Vec<Node> {
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
