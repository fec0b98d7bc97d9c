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
    /// CORS allow-list; empty reflects any origin (the reference default). When set, it is
    /// also the WebSocket `Origin` allow-list: upgrades from other origins get 403.
    pub cors_origins: Vec<String>,
    /// Same-id same-token reconnects evict the old socket and get `OPEN` (peers/peerjs#1203),
    /// instead of the reference's silent re-attach.
    pub takeover: bool,
    /// Limits the reference lacks.
    pub limits: Limits,
    /// Opt-in leave notices for Kibitz room ids (off: the reference behaviour).
    pub room_notices: Option<crate::core::RoomNotices>,
    /// Cluster mode: share ids, queues and routing with other nodes through Redis.
    pub cluster: Option<ClusterConfig>,
}

/// How a broker node joins a cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// `redis://host:port/db` (or `redis+unix:///path`); it may carry a password, so it
    /// prints masked.
    pub redis_url: RedisUrl,
    /// How long a node's ids outlive its last lease renewal.
    pub lease: Duration,
    /// Key prefix, so several clusters can share one Redis.
    pub prefix: String,
    /// The registry runs on a Redis Cluster (`redis_url` names its seed nodes).
    pub redis_cluster: bool,
    /// Registry shards, each one hash slot (every node of a cluster must agree).
    pub shards: usize,
    /// Where this node listens for node links (direct copies of messages; `None`: off),
    /// and the address other nodes dial (default: the bound address).
    pub link: Option<String>,
    pub link_advertise: Option<String>,
}

impl ClusterConfig {
    /// One Redis, one shard: the plain registry.
    pub fn single(redis_url: RedisUrl, lease: Duration, prefix: &str) -> Self {
        Self {
            redis_url,
            lease,
            prefix: prefix.to_owned(),
            redis_cluster: false,
            shards: 1,
            link: None,
            link_advertise: None,
        }
    }

    /// Shard `s`'s key prefix: the plain prefix with one shard on one Redis (so the keys
    /// stay as they always were), otherwise the prefix and the shard as a hash tag
    /// (`kibitz:{7}:`), which puts every key of the shard in one Redis Cluster slot.
    pub fn shard_prefix(&self, s: usize) -> String {
        if self.shards <= 1 && !self.redis_cluster {
            self.prefix.clone()
        } else {
            format!("{}{{{s}}}:", self.prefix)
        }
    }

    /// Where the shard count is kept: one key on one Redis, one per shard on a Redis
    /// Cluster (a script may only touch its own slot).
    pub fn shards_key(&self, s: usize) -> String {
        if self.redis_cluster {
            format!("{}shards", self.shard_prefix(s))
        } else {
            format!("{}shards", self.prefix)
        }
    }

    /// The URLs to connect to: the one Redis, or a Redis Cluster's seed nodes.
    pub fn seeds(&self) -> Result<Vec<String>, String> {
        cluster_seeds(self.redis_url.expose()).map(|(_, seeds)| seeds)
    }
}

/// `redis+cluster://[auth@]h1:p1,h2:p2[/…]` (or `rediss+cluster://`) → (true, one
/// `redis://` URL per seed); any other URL → (false, itself).
fn cluster_seeds(url: &str) -> Result<(bool, Vec<String>), String> {
    let (scheme, rest) = match url.split_once("://") {
        Some(("redis+cluster", rest)) => ("redis", rest),
        Some(("rediss+cluster", rest)) => ("rediss", rest),
        _ => return Ok((false, vec![url.to_owned()])),
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (auth, hosts) = match authority.rfind('@') {
        Some(at) => (&authority[..=at], &authority[at + 1..]),
        None => ("", authority),
    };
    let seeds: Vec<String> = hosts
        .split(',')
        .filter(|h| !h.is_empty())
        .map(|h| format!("{scheme}://{auth}{h}{tail}"))
        .collect();
    if seeds.is_empty() {
        return Err("a redis+cluster:// URL needs at least one host:port".into());
    }
    Ok((true, seeds))
}

/// A Redis URL: used to connect, printed (`Debug`, `Display`) with its password masked.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl(String);

impl RedisUrl {
    /// The URL with its password, for connecting only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with anything secret replaced by `***`: the user info before `@` and the
    /// values of `pass`/`password` query parameters (`redis+unix://…?pass=…`).
    pub fn masked(&self) -> String {
        let url = self.0.as_str();
        let (scheme, rest) = match url.find("://") {
            Some(i) => url.split_at(i + 3),
            None => ("", url),
        };
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        let host = match authority.rfind('@') {
            Some(at) => format!("***@{}", &authority[at + 1..]),
            None => authority.to_owned(),
        };
        let tail = match tail.split_once('?') {
            None => tail.to_owned(),
            Some((path, query)) => {
                let params: Vec<String> = query
                    .split('&')
                    .map(|kv| match kv.split_once('=') {
                        Some((k, _))
                            if k.eq_ignore_ascii_case("pass")
                                || k.eq_ignore_ascii_case("password") =>
                        {
                            format!("{k}=***")
                        }
                        _ => kv.to_owned(),
                    })
                    .collect();
                format!("{path}?{}", params.join("&"))
            }
        };
        format!("{scheme}{host}{tail}")
    }
}

impl From<String> for RedisUrl {
    fn from(url: String) -> Self {
        Self(url)
    }
}

impl From<&str> for RedisUrl {
    fn from(url: &str) -> Self {
        Self(url.to_owned())
    }
}

impl std::str::FromStr for RedisUrl {
    type Err = std::convert::Infallible;
    fn from_str(url: &str) -> Result<Self, Self::Err> {
        Ok(url.into())
    }
}

impl std::fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RedisUrl({:?})", self.masked())
    }
}

impl std::fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.masked())
    }
}

/// Whether `url` is a Redis URL this node can use (checked when the config is built). The
/// redis crate's parse errors are fixed texts that never repeat the URL.
pub fn check_url(url: &RedisUrl) -> Result<(), String> {
    for seed in cluster_seeds(url.expose())?.1 {
        redis::Client::open(seed).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// `--heavy-bytes-per-sec`: far above signalling (a few KiB per connection and minute), while
/// 10,000 sockets at this rate are still less than one core can read.
const DEFAULT_HEAVY_RATE: u64 = 32 * 1024;
/// `--heavy-burst-bytes`: a room's worth of SDP offers at once.
const DEFAULT_HEAVY_BURST: u64 = 256 * 1024;

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
    /// Sustained WebSocket upgrades per second per client IP (429 beyond the burst); 0 = off.
    pub connect_rate: f64,
    /// Upgrades one client IP may make at once above `connect_rate`.
    pub connect_burst: u32,
    /// Time allowed for the HTTP request head of any connection.
    pub handshake_timeout: Duration,
    /// Messages held for one offline destination; later ones are dropped.
    pub max_queued_per_dst: usize,
    /// Messages held for all offline destinations together.
    pub max_queued_total: usize,
    /// Bytes waiting to be written to one peer before it is closed as too slow.
    pub send_queue_bytes: usize,
    /// Bytes per second a socket reads on the fast path; beyond that and its burst it is
    /// heavy and takes turns with other heavy sockets (see `fair`). 0 = off.
    pub heavy_bytes_per_sec: u64,
    /// Bytes a socket may read at once before it is heavy.
    pub heavy_burst_bytes: u64,
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
            room_notices: None,
            cluster: None,
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
            connect_rate: 0.0,
            connect_burst: 20,
            handshake_timeout: Duration::from_secs(10),
            max_queued_per_dst: 200,
            max_queued_total: 100_000,
            send_queue_bytes: 1 << 20,
            heavy_bytes_per_sec: DEFAULT_HEAVY_RATE,
            heavy_burst_bytes: DEFAULT_HEAVY_BURST,
        }
    }
}

/// A configuration that cannot work.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The path has characters a route cannot hold.
    #[error("path {0:?} must be a plain URL path like / or /myapp")]
    Path(String),
    /// A value that must be positive is zero.
    #[error("{0} must be greater than zero")]
    Zero(&'static str),
    /// A rate that is negative or not a number.
    #[error("{0} must be a number of at least 0")]
    Rate(&'static str),
    /// The key is empty.
    #[error("key must not be empty")]
    EmptyKey,
    /// The Redis URL cannot be used.
    #[error("redis url: {0}")]
    RedisUrl(String),
    /// A key prefix with a hash tag of its own on a Redis Cluster.
    #[error(
        "redis prefix {0:?} must not contain {{ or }} on a Redis Cluster (shards are hash tags)"
    )]
    ClusterPrefix(String),
    /// A shard count out of range.
    #[error("redis shards must be between 1 and 16384, not {0}")]
    Shards(usize),
}

/// Broker flags, shared by `kibitz serve` and `kibitz signal`. Every flag also reads a
/// `KIBITZ_*` environment variable.
#[derive(Debug, Clone, clap::Args)]
pub struct SignalArgs {
    /// HTTP base path; the WebSocket is at {path}peerjs.
    #[arg(long, env = "KIBITZ_PATH", default_value = "/")]
    pub path: String,
    /// PeerJS key clients must present.
    #[arg(long, env = "KIBITZ_KEY", default_value = "peerjs")]
    pub key: String,
    /// Milliseconds messages for an offline id wait before the senders get EXPIRE.
    #[arg(long, env = "KIBITZ_EXPIRE_TIMEOUT_MS", default_value_t = 5000)]
    pub expire_timeout_ms: u64,
    /// Milliseconds without HEARTBEAT after which a peer is disconnected.
    #[arg(long, env = "KIBITZ_ALIVE_TIMEOUT_MS", default_value_t = 90_000)]
    pub alive_timeout_ms: u64,
    /// Maximum number of registered ids.
    #[arg(long, env = "KIBITZ_CONCURRENT_LIMIT", default_value_t = 5000)]
    pub concurrent_limit: usize,
    /// Serve GET {path}{key}/peers (the list of connected ids).
    #[arg(long, env = "KIBITZ_ALLOW_DISCOVERY")]
    pub allow_discovery: bool,
    /// Allowed origin (repeat, or comma-separated in the env), like https://app.example: CORS
    /// answers name only these, and WebSocket upgrades from other origins get 403; requests
    /// without an Origin (non-browser clients) are allowed. None: any origin.
    #[arg(
        long = "cors-origin",
        env = "KIBITZ_CORS_ORIGINS",
        value_delimiter = ','
    )]
    pub cors_origins: Vec<String>,
    /// A reconnect with the same id and token evicts the old socket and gets OPEN
    /// (instead of the reference's silent re-attach).
    #[arg(long, env = "KIBITZ_TAKEOVER")]
    pub takeover: bool,
    /// Largest WebSocket message accepted, in bytes (larger: close 1009).
    #[arg(long, env = "KIBITZ_MAX_FRAME_BYTES", default_value_t = 64 * 1024)]
    pub max_frame_bytes: usize,
    /// Sustained messages per second per socket (beyond the burst: close 1008).
    #[arg(long, env = "KIBITZ_MSG_RATE", default_value_t = 200)]
    pub msg_rate: u32,
    /// Message burst allowed per socket above the sustained rate.
    #[arg(long, env = "KIBITZ_MSG_BURST", default_value_t = 1000)]
    pub msg_burst: u32,
    /// Open broker sockets per client IP; 0 = unlimited.
    #[arg(long, env = "KIBITZ_PER_IP_CONNECTIONS", default_value_t = 100)]
    pub per_ip_connections: usize,
    /// WebSocket upgrades per second per client IP, sustained (fractions allowed; beyond the
    /// burst: HTTP 429 before the upgrade); 0 = unlimited.
    #[arg(long, env = "KIBITZ_CONNECT_RATE", default_value_t = 0.0)]
    pub connect_rate: f64,
    /// WebSocket upgrades one client IP may make at once above --connect-rate.
    #[arg(long, env = "KIBITZ_CONNECT_BURST", default_value_t = 20)]
    pub connect_burst: u32,
    /// Milliseconds allowed for a TLS handshake and each HTTP request head.
    #[arg(long, env = "KIBITZ_HANDSHAKE_TIMEOUT_MS", default_value_t = 10_000)]
    pub handshake_timeout_ms: u64,
    /// Messages held for one offline id.
    #[arg(long, env = "KIBITZ_MAX_QUEUED_PER_DST", default_value_t = 200)]
    pub max_queued_per_dst: usize,
    /// Messages held for all offline ids together.
    #[arg(long, env = "KIBITZ_MAX_QUEUED_TOTAL", default_value_t = 100_000)]
    pub max_queued_total: usize,
    /// Bytes waiting to be written to one peer before it is closed as too slow.
    #[arg(long, env = "KIBITZ_SEND_QUEUE_BYTES", default_value_t = 1 << 20)]
    pub send_queue_bytes: usize,
    /// Bytes per second a socket reads at once; a socket past this and its burst is heavy:
    /// until it has caught up, it takes turns with other heavy sockets at a gate of one
    /// permit per worker thread, so floods cannot delay light peers. 0 = off.
    #[arg(long, env = "KIBITZ_HEAVY_BYTES_PER_SEC", default_value_t = DEFAULT_HEAVY_RATE)]
    pub heavy_bytes_per_sec: u64,
    /// Bytes a socket may send at once before it is heavy (see --heavy-bytes-per-sec).
    #[arg(long, env = "KIBITZ_HEAVY_BURST_BYTES", default_value_t = DEFAULT_HEAVY_BURST)]
    pub heavy_burst_bytes: u64,
    /// When the socket holding a Kibitz room id (kbz-v1-…) closes and the id is not taken again
    /// within the grace, send LEAVE from the room id to every peer that signalled with it.
    #[arg(long, env = "KIBITZ_ROOM_LEAVE_NOTICES")]
    pub room_leave_notices: bool,
    /// Milliseconds a closed room id may come back before its leave notice goes out.
    #[arg(long, env = "KIBITZ_ROOM_LEAVE_GRACE_MS", default_value_t = 1000)]
    pub room_leave_grace_ms: u64,
    /// With room leave notices: lifetime of messages queued for an unheld room id.
    #[arg(long, env = "KIBITZ_ROOM_EXPIRE_TIMEOUT_MS", default_value_t = 1000)]
    pub room_expire_timeout_ms: u64,
    /// Cluster mode: share ids, offline queues and relaying with every broker node using
    /// this Redis (redis://host:port/db). Off: one node, in memory.
    #[arg(long, env = "KIBITZ_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<RedisUrl>,
    /// Cluster mode: milliseconds a node's ids outlive its last lease renewal (a dead node's
    /// ids are free after this long; renewed every third of it).
    #[arg(long, env = "KIBITZ_REDIS_LEASE_MS", default_value_t = 10_000)]
    pub redis_lease_ms: u64,
    /// Cluster mode: prefix of every Redis key, so several clusters can share one Redis.
    #[arg(long, env = "KIBITZ_REDIS_PREFIX", default_value = "kibitz:")]
    pub redis_prefix: String,
    /// Cluster mode: --redis-url names seed nodes of a Redis Cluster (as does a
    /// redis+cluster://host:port,host:port URL); the registry is sharded over its masters.
    #[arg(long, env = "KIBITZ_REDIS_CLUSTER")]
    pub redis_cluster: bool,
    /// Cluster mode: registry shards, each in one hash slot (default 16 on a Redis Cluster,
    /// 1 on one Redis). Every node of a cluster must use the same number.
    #[arg(long, env = "KIBITZ_REDIS_SHARDS")]
    pub redis_shards: Option<usize>,
    /// Cluster mode: listen here (host:port, port 0 for any) for node links, which carry a
    /// direct copy of each cross-node message beside the one through Redis, so it arrives
    /// sooner (Redis still delivers it if the link cannot). Off when unset.
    #[arg(long, env = "KIBITZ_CLUSTER_LINK")]
    pub cluster_link: Option<String>,
    /// Cluster mode: the host:port other nodes dial for this node's link (default: the
    /// address --cluster-link bound; required when that is 0.0.0.0 or [::]).
    #[arg(long, env = "KIBITZ_CLUSTER_LINK_ADVERTISE")]
    pub cluster_link_advertise: Option<String>,
}

/// `/`, `/myapp` or `/myapp/` → `/`, `/myapp/`, `/myapp/`.
pub fn normalize_path(path: &str) -> Result<String, ConfigError> {
    let trimmed = path.trim_matches('/');
    let ok = trimmed
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-._~/".contains(c))
        && !trimmed.contains("//");
    if !ok {
        return Err(ConfigError::Path(path.to_owned()));
    }
    Ok(if trimmed.is_empty() {
        "/".to_owned()
    } else {
        format!("/{trimmed}/")
    })
}

impl SignalArgs {
    /// Validates the flags into a [`Config`].
    pub fn to_config(&self) -> Result<Config, ConfigError> {
        let positive = |v: u64, name| {
            if v == 0 {
                Err(ConfigError::Zero(name))
            } else {
                Ok(v)
            }
        };
        if self.key.is_empty() {
            return Err(ConfigError::EmptyKey);
        }
        Ok(Config {
            path: normalize_path(&self.path)?,
            key: self.key.clone(),
            expire_timeout: Duration::from_millis(positive(
                self.expire_timeout_ms,
                "expire-timeout-ms",
            )?),
            alive_timeout: Duration::from_millis(positive(
                self.alive_timeout_ms,
                "alive-timeout-ms",
            )?),
            concurrent_limit: self.concurrent_limit,
            allow_discovery: self.allow_discovery,
            cors_origins: self
                .cors_origins
                .iter()
                .filter(|o| !o.is_empty())
                .cloned()
                .collect(),
            takeover: self.takeover,
            limits: Limits {
                max_frame_bytes: positive(self.max_frame_bytes as u64, "max-frame-bytes")? as usize,
                msg_rate: positive(u64::from(self.msg_rate), "msg-rate")? as u32,
                msg_burst: positive(u64::from(self.msg_burst), "msg-burst")? as u32,
                per_ip_connections: self.per_ip_connections,
                connect_rate: if self.connect_rate.is_finite() && self.connect_rate >= 0.0 {
                    self.connect_rate
                } else {
                    return Err(ConfigError::Rate("connect-rate"));
                },
                connect_burst: positive(u64::from(self.connect_burst), "connect-burst")? as u32,
                handshake_timeout: Duration::from_millis(positive(
                    self.handshake_timeout_ms,
                    "handshake-timeout-ms",
                )?),
                max_queued_per_dst: self.max_queued_per_dst,
                max_queued_total: self.max_queued_total,
                send_queue_bytes: positive(self.send_queue_bytes as u64, "send-queue-bytes")?
                    as usize,
                heavy_bytes_per_sec: self.heavy_bytes_per_sec,
                heavy_burst_bytes: positive(self.heavy_burst_bytes, "heavy-burst-bytes")?,
            },
            room_notices: self.room_leave_notices.then_some(crate::core::RoomNotices {
                grace: Duration::from_millis(self.room_leave_grace_ms),
                expire: Duration::from_millis(self.room_expire_timeout_ms.max(1)),
            }),
            cluster: match self.redis_url.as_ref().filter(|u| !u.expose().is_empty()) {
                None => None,
                Some(url) => {
                    check_url(url).map_err(ConfigError::RedisUrl)?;
                    let redis_cluster = self.redis_cluster
                        || cluster_seeds(url.expose())
                            .map_err(ConfigError::RedisUrl)?
                            .0;
                    if redis_cluster && self.redis_prefix.contains(['{', '}']) {
                        return Err(ConfigError::ClusterPrefix(self.redis_prefix.clone()));
                    }
                    let shards = self
                        .redis_shards
                        .unwrap_or(if redis_cluster { 16 } else { 1 });
                    if !(1..=16384).contains(&shards) {
                        return Err(ConfigError::Shards(shards));
                    }
                    Some(ClusterConfig {
                        redis_url: url.clone(),
                        lease: Duration::from_millis(
                            positive(self.redis_lease_ms, "redis-lease-ms")?.max(300),
                        ),
                        prefix: self.redis_prefix.clone(),
                        redis_cluster,
                        shards,
                        link: self.cluster_link.clone().filter(|l| !l.is_empty()),
                        link_advertise: self
                            .cluster_link_advertise
                            .clone()
                            .filter(|l| !l.is_empty()),
                    })
                }
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_normalise() {
        assert_eq!(normalize_path("/").unwrap(), "/");
        assert_eq!(normalize_path("").unwrap(), "/");
        assert_eq!(normalize_path("myapp").unwrap(), "/myapp/");
        assert_eq!(normalize_path("/a/b/").unwrap(), "/a/b/");
        assert!(normalize_path("/a b").is_err());
        assert!(normalize_path("/{key}").is_err());
    }

    #[test]
    fn redis_urls_print_masked() {
        for (url, shown) in [
            ("redis://127.0.0.1:6379/", "redis://127.0.0.1:6379/"),
            (
                "redis://:s3cret@10.0.0.5:6379/0",
                "redis://***@10.0.0.5:6379/0",
            ),
            ("rediss://user:s3cret@host/", "rediss://***@host/"),
            (
                "redis+unix:///run/r.sock?db=1&pass=s3cret",
                "redis+unix:///run/r.sock?db=1&pass=***",
            ),
            ("redis://host?password=s3cret", "redis://host?password=***"),
        ] {
            let u = RedisUrl::from(url);
            assert_eq!(u.to_string(), shown);
            assert_eq!(format!("{u:?}"), format!("RedisUrl({shown:?})"));
            assert_eq!(u.expose(), url);
        }
        let args = SignalArgs {
            redis_url: Some("redis://:s3cret@127.0.0.1:6379/".into()),
            ..<SignalArgs as clap::FromArgMatches>::from_arg_matches(
                &<SignalArgs as clap::Args>::augment_args(clap::Command::new("t"))
                    .get_matches_from(["t"]),
            )
            .unwrap()
        };
        let config = args.to_config().unwrap();
        for shown in [format!("{args:?}"), format!("{config:?}")] {
            assert!(!shown.contains("s3cret"), "{shown}");
            assert!(shown.contains("***@127.0.0.1"), "{shown}");
        }
    }

    fn args(argv: &[&str]) -> SignalArgs {
        let mut all = vec!["t"];
        all.extend_from_slice(argv);
        <SignalArgs as clap::FromArgMatches>::from_arg_matches(
            &<SignalArgs as clap::Args>::augment_args(clap::Command::new("t"))
                .get_matches_from(all),
        )
        .unwrap()
    }

    #[test]
    fn redis_cluster_urls_and_shards() {
        let c = args(&[
            "--redis-url",
            "redis+cluster://:s3cret@10.0.0.1:7000,10.0.0.2:7001/",
        ])
        .to_config()
        .unwrap()
        .cluster
        .unwrap();
        assert!(c.redis_cluster);
        assert_eq!(c.shards, 16);
        assert_eq!(
            c.seeds().unwrap(),
            [
                "redis://:s3cret@10.0.0.1:7000/",
                "redis://:s3cret@10.0.0.2:7001/"
            ]
        );
        assert_eq!(
            c.redis_url.to_string(),
            "redis+cluster://***@10.0.0.1:7000,10.0.0.2:7001/"
        );
        assert_eq!(c.shard_prefix(7), "kibitz:{7}:");
        assert_eq!(c.shards_key(7), "kibitz:{7}:shards");

        let c = args(&[
            "--redis-url",
            "redis://h:1/",
            "--redis-cluster",
            "--redis-shards",
            "4",
        ])
        .to_config()
        .unwrap()
        .cluster
        .unwrap();
        assert!(c.redis_cluster);
        assert_eq!(c.shards, 4);
        assert_eq!(c.seeds().unwrap(), ["redis://h:1/"]);

        // One Redis: one shard, keys exactly as before.
        let c = args(&["--redis-url", "redis://h:1/"])
            .to_config()
            .unwrap()
            .cluster
            .unwrap();
        assert!(!c.redis_cluster);
        assert_eq!(c.shards, 1);
        assert_eq!(c.shard_prefix(0), "kibitz:");
        assert_eq!(c.shards_key(0), "kibitz:shards");

        for bad in [
            &["--redis-url", "redis+cluster:///"][..],
            &[
                "--redis-url",
                "redis://h:1/",
                "--redis-cluster",
                "--redis-prefix",
                "a{b}:",
            ],
            &["--redis-url", "redis://h:1/", "--redis-shards", "0"],
        ] {
            let e = args(bad).to_config().unwrap_err().to_string();
            assert!(!e.is_empty(), "{bad:?}");
        }
    }
}
