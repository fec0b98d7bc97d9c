//! The broker's Prometheus metrics. Labels are fixed enums: never ids, IPs or payloads.

use kibitz_proto::peerjs::MessageType;
use metrics::{Counter, Gauge, counter, gauge};

/// Handles to every broker metric, resolved once so the hot path does no registry lookups.
/// Built before a recorder is installed, they are no-ops (as in unit tests).
#[derive(Clone)]
pub struct Metrics {
    /// Registered ids.
    pub peers: Gauge,
    /// Open broker WebSockets.
    pub connections: Gauge,
    /// Messages waiting for offline ids.
    pub queued: Gauge,
    /// `EXPIRE`s generated for queues that timed out.
    pub expired: Counter,
    /// Room-id `LEAVE` notices sent (opt-in).
    pub leave_notices: Counter,
    /// Bytes of WebSocket payload received.
    pub bytes_in: Counter,
    /// Bytes of WebSocket frames sent.
    pub bytes_out: Counter,
    /// Reads a heavy socket made through the shared gate (`--heavy-bytes-per-sec`).
    pub throttled_reads: Counter,
    /// Cluster mode: messages handed to the registry for another node or its offline queue.
    pub cluster_out: Counter,
    /// Cluster mode: messages received from other nodes (or their queues) through this
    /// node's inbox.
    pub cluster_in: Counter,
    /// Cluster mode: renewals of this node's lease.
    pub lease_renewals: Counter,
    /// Cluster mode: re-assertions of this node's ids after the registry came back.
    pub reasserts: Counter,
    /// Cluster mode: ids this node lost to another client after a registry outage.
    pub leases_lost: Counter,
    /// Cluster mode: times this node dropped a registry shard's ids because its lease there
    /// was not renewed in time (fencing).
    pub cluster_fences: Counter,
    /// Cluster mode: 1 while the registry is reachable.
    pub registry_up: Gauge,
    /// Cluster mode: messages waiting here for the registry to come back.
    pub cluster_pending: Gauge,
    /// 1 when this broker is a cluster node.
    pub cluster_mode: Gauge,
    /// Cluster mode: live nodes, as of this node's last lease renewal.
    pub cluster_nodes: Gauge,
    /// Cluster mode: ids registered over the whole cluster, as of the last lease renewal.
    pub cluster_peers: Gauge,
    /// Cluster mode: claims and messages refused because the queue to the cluster driver was
    /// full.
    pub cluster_overflow: Counter,
    /// Cluster mode: route requests sent to the registry (each carries a run of messages).
    pub cluster_out_batches: Counter,
    /// Cluster mode: inbox reads that brought messages.
    pub cluster_in_batches: Counter,
    /// Cluster mode: registry requests in flight on the main connection.
    pub cluster_inflight: Gauge,
    /// Cluster mode: messages per second handed to other nodes (and their queues) and read
    /// from this node's inbox, over the last lease renewal period.
    pub cluster_rate_out: Gauge,
    pub cluster_rate_in: Gauge,
    /// Cluster mode: registry shards (1 on one Redis unless `--redis-shards` says otherwise).
    pub cluster_shards: Gauge,
    /// Cluster mode: registry shards that answer (the registry is up when all do).
    pub cluster_shards_up: Gauge,
    /// Cluster mode: Redis masters holding the registry's shards (1 on one Redis).
    pub cluster_masters: Gauge,
    /// Cluster mode: 1 when the registry runs on a Redis Cluster.
    pub cluster_redis_cluster: Gauge,
    /// Direct copies sent over node links, delivered from them, and dropped on arrival (late,
    /// ahead of their predecessor, or for an id not held here: the Redis copy delivers).
    pub cluster_direct_out: Counter,
    pub cluster_direct_in: Counter,
    pub cluster_direct_dropped: Counter,
    /// Node links this node dials that are up, and link handshakes refused.
    pub cluster_links: Gauge,
    pub cluster_link_refused: Counter,
    /// Bytes written to node links.
    pub cluster_link_bytes: Counter,
    messages: [Counter; 6],
    rejected: Vec<(&'static str, Counter)>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// Every reason a frame, connection or message is refused; the `reason` label's values.
pub const REJECT_REASONS: &[&str] = &[
    "bad_params",
    "bad_key",
    "id_taken",
    "concurrent_limit",
    "ip_limit",
    "malformed",
    "not_utf8",
    "unknown_type",
    "missing_dst",
    "invalid_dst",
    "not_registered",
    "rate_limited",
    "oversized",
    "protocol",
    "queue_full",
    "slow_reader",
    "alive_timeout",
    "handshake",
    "registry_unavailable",
    "origin",
    "connect_rate",
];

const TYPES: [MessageType; 6] = [
    MessageType::Heartbeat,
    MessageType::Offer,
    MessageType::Answer,
    MessageType::Candidate,
    MessageType::Leave,
    MessageType::Expire,
];

impl Metrics {
    /// Resolves every handle against the installed recorder.
    pub fn new() -> Self {
        Self {
            peers: gauge!("kibitz_signal_peers"),
            connections: gauge!("kibitz_signal_connections"),
            queued: gauge!("kibitz_signal_queued_messages"),
            expired: counter!("kibitz_signal_expired_total"),
            leave_notices: counter!("kibitz_signal_room_leave_notices_total"),
            bytes_in: counter!("kibitz_signal_bytes_total", "direction" => "in"),
            bytes_out: counter!("kibitz_signal_bytes_total", "direction" => "out"),
            throttled_reads: counter!("kibitz_signal_throttled_reads_total"),
            cluster_out: counter!("kibitz_signal_cluster_messages_total", "direction" => "out"),
            cluster_in: counter!("kibitz_signal_cluster_messages_total", "direction" => "in"),
            lease_renewals: counter!("kibitz_signal_cluster_lease_renewals_total"),
            reasserts: counter!("kibitz_signal_cluster_reasserts_total"),
            leases_lost: counter!("kibitz_signal_cluster_leases_lost_total"),
            cluster_fences: counter!("kibitz_signal_cluster_fences_total"),
            registry_up: gauge!("kibitz_signal_cluster_registry_up"),
            cluster_pending: gauge!("kibitz_signal_cluster_pending_messages"),
            cluster_mode: gauge!("kibitz_signal_cluster_mode"),
            cluster_nodes: gauge!("kibitz_signal_cluster_nodes"),
            cluster_peers: gauge!("kibitz_signal_cluster_peers"),
            cluster_overflow: counter!("kibitz_signal_cluster_queue_overflow_total"),
            cluster_out_batches: counter!("kibitz_signal_cluster_batches_total", "direction" => "out"),
            cluster_in_batches: counter!("kibitz_signal_cluster_batches_total", "direction" => "in"),
            cluster_inflight: gauge!("kibitz_signal_cluster_requests_in_flight"),
            cluster_rate_out: gauge!("kibitz_signal_cluster_messages_per_second", "direction" => "out"),
            cluster_rate_in: gauge!("kibitz_signal_cluster_messages_per_second", "direction" => "in"),
            cluster_shards: gauge!("kibitz_signal_cluster_registry_shards"),
            cluster_shards_up: gauge!("kibitz_signal_cluster_registry_shards_up"),
            cluster_masters: gauge!("kibitz_signal_cluster_registry_masters"),
            cluster_redis_cluster: gauge!("kibitz_signal_cluster_redis_cluster"),
            cluster_direct_out: counter!("kibitz_signal_cluster_direct_total", "direction" => "out"),
            cluster_direct_in: counter!("kibitz_signal_cluster_direct_total", "direction" => "in"),
            cluster_direct_dropped: counter!("kibitz_signal_cluster_direct_dropped_total"),
            cluster_links: gauge!("kibitz_signal_cluster_links"),
            cluster_link_refused: counter!("kibitz_signal_cluster_link_refused_total"),
            cluster_link_bytes: counter!("kibitz_signal_cluster_link_bytes_total"),
            messages: TYPES.map(|t| counter!("kibitz_signal_messages_total", "type" => t.as_str())),
            rejected: REJECT_REASONS
                .iter()
                .map(|r| (*r, counter!("kibitz_signal_rejected_total", "reason" => *r)))
                .collect(),
        }
    }

    /// Counts one accepted client message of this type.
    pub fn message(&self, kind: MessageType) {
        if let Some(i) = TYPES.iter().position(|t| *t == kind) {
            self.messages[i].increment(1);
        }
    }

    /// Cluster mode: whether registry shard `shard` answers (`..._shard_up{shard}`; shards
    /// are few and fixed, so the label stays small).
    pub(crate) fn shard_up(&self, shard: usize, up: bool) {
        let was = gauge!("kibitz_signal_cluster_shard_up", "shard" => shard.to_string());
        was.set(if up { 1.0 } else { 0.0 });
    }

    /// Counts one refusal. `reason` must be one of [`REJECT_REASONS`].
    pub fn rejected(&self, reason: &'static str) {
        if let Some((_, c)) = self.rejected.iter().find(|(r, _)| *r == reason) {
            c.increment(1);
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
