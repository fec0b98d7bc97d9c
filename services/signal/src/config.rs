//! Broker configuration: the validated [`Config`] and the clap [`SignalArgs`] that build it.

use std::time::Duration;

/// Everything the broker needs to know, validated. `Config::default()` matches the reference
/// `peer` 1.0.2 library defaults, plus the limits the reference lacks.
#[derive(Debug, Clone)]
pub struct Config {
    /// HTTP base path, normalised to start and end with `/`; the WebSocket is `{path}peerjs`.
    pub path: String,
    /// PeerJS API key clients must present (case-sensitive).
    pub key: String,
    /// How long messages for an offline id wait before the senders get `EXPIRE`.
    pub expire_timeout: Duration,
    /// A registered peer that sends no `HEARTBEAT` for this long is disconnected.
    pub alive_timeout: Duration,
    /// Maximum number of registered ids.
    pub concurrent_limit: usize,
    /// Serve `GET {path}{key}/peers`.
    pub allow_discovery: bool,
    /// CORS allow-list; empty reflects any origin (the reference default).
    pub cors_origins: Vec<String>,
    /// Same-id same-token reconnects evict the old socket and get `OPEN` (peers/peerjs#1203),
    /// instead of the reference's silent re-attach.
    pub takeover: bool,
    /// Limits the reference lacks.
    pub limits: Limits,
}

/// Abuse limits. Zero means unlimited where noted.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest accepted WebSocket message, in bytes (close 1009 beyond).
    pub max_frame_bytes: usize,
    /// Sustained client messages per second per connection (close 1008 beyond the burst).
    pub msg_rate: u32,
    /// Burst allowance for `msg_rate`.
    pub msg_burst: u32,
    /// Live WebSocket connections per client IP; 0 = unlimited.
    pub per_ip_connections: usize,
    /// Time allowed for the HTTP request head of any connection.
    pub handshake_timeout: Duration,
    /// Messages held for one offline destination; later ones are dropped.
    pub max_queued_per_dst: usize,
    /// Messages held for all offline destinations together.
    pub max_queued_total: usize,
    /// Bytes waiting to be written to one peer before it is closed as too slow.
    pub send_queue_bytes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            path: "/".into(),
            key: "peerjs".into(),
            expire_timeout: Duration::from_millis(5000),
            alive_timeout: Duration::from_millis(90_000),
            concurrent_limit: 5000,
            allow_discovery: false,
            cors_origins: Vec::new(),
            takeover: false,
            limits: Limits::default(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame_bytes: 64 * 1024,
            msg_rate: 200,
            msg_burst: 1000,
            per_ip_connections: 100,
            handshake_timeout: Duration::from_secs(10),
            max_queued_per_dst: 200,
            max_queued_total: 100_000,
            send_queue_bytes: 1 << 20,
        }
    }
}
