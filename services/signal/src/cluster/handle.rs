//! This node's handle on the cluster, shared by the broker and the driver: the bounded
//! command queue, whether the registry is up, and the discovery query.

use super::protocol::{Cmd, Script, Settings};
use super::scripts::Scripts;
use super::sharded::slot_of;
use super::wire;
use crate::config::ClusterConfig;
use crate::metrics::Metrics;
use redis::aio::MultiplexedConnection;
use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo, Value};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;

/// See the module docs.
pub(crate) struct Cluster {
    pub(crate) cfg: ClusterConfig,
    /// This node's id (random per process).
    pub(crate) node: String,
    pub(crate) settings: Settings,
    pub(crate) metrics: Metrics,
    tx: mpsc::UnboundedSender<Cmd>,
    rx: Mutex<Option<mpsc::UnboundedReceiver<Cmd>>>,
    /// Claims and messages in the queue; beyond `bound` they are refused (releases always
    /// pass: there is one per registration, and dropping one would leave the id held).
    queued: AtomicUsize,
    bound: usize,
    up: AtomicBool,
    /// The one Redis, or a Redis Cluster's seed nodes. Empty only for a URL that does not
    /// parse (the config check refuses those first): such a node never reaches the
    /// registry, so it refuses every claim.
    seeds: Vec<ConnectionInfo>,
    /// Redis Cluster: every node (host, port) seen in the last topology, tried after the
    /// seeds (which may be the ones that died).
    known: Mutex<Vec<(String, u16)>>,
    pub(crate) scripts: Scripts,
    /// Per shard: its settings, key prefix, the key of the shard count, and its slot.
    pub(crate) shard_settings: Vec<Settings>,
    prefixes: Vec<String>,
    shards_keys: Vec<String>,
    slots: Vec<u16>,
    /// The node-link listener, until the driver takes it.
    link: Mutex<Option<std::net::TcpListener>>,
}

/// A Redis Cluster slot range and its master (host, port).
type SlotRange = (u16, u16, String, u16);

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node", &self.node)
            .field("redis_url", &self.cfg.redis_url)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// `concurrent_limit` and the queue bounds are the broker's; the command queue holds at
    /// most `max_queued_total` claims and messages.
    pub(crate) fn new(
        cfg: ClusterConfig,
        concurrent_limit: usize,
        max_queued_per_dst: usize,
        max_queued_total: usize,
        metrics: Metrics,
    ) -> Self {
        let seeds = match cfg.seeds().and_then(|seeds| {
            seeds
                .iter()
                .map(|s| s.as_str().into_connection_info().map_err(|e| e.to_string()))
                .collect::<Result<Vec<_>, _>>()
        }) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, redis = %cfg.redis_url, "unusable redis url: every claim will be refused");
                Vec::new()
            }
        };
        // With node links, the id names the link address (`{uuid}@{host}:{port}`), so a
        // route answer naming a holder also says where to send its direct copies.
        let mut node = uuid::Uuid::new_v4().simple().to_string();
        let link = cfg.link.as_deref().and_then(|bind| {
            match bind_link(bind, cfg.link_advertise.as_deref()) {
                Ok((l, advertise)) => {
                    node = format!("{node}@{advertise}");
                    Some(l)
                }
                Err(e) => {
                    tracing::error!(error = %e, link = bind, "cluster link off");
                    None
                }
            }
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let shards = cfg.shards.max(1);
        let settings = Settings {
            node: node.clone(),
            shard: 0,
            shards,
            lease: cfg.lease,
            concurrent_limit,
            max_queued_per_dst,
            max_queued_total,
        };
        Self {
            shard_settings: (0..shards).map(|s| settings.for_shard(s, shards)).collect(),
            prefixes: (0..shards).map(|s| cfg.shard_prefix(s)).collect(),
            shards_keys: (0..shards).map(|s| cfg.shards_key(s)).collect(),
            slots: (0..shards).map(|s| slot_of(&s.to_string())).collect(),
            settings,
            cfg,
            node,
            metrics,
            tx,
            rx: Mutex::new(Some(rx)),
            queued: AtomicUsize::new(0),
            bound: max_queued_total.max(1),
            up: AtomicBool::new(false),

            seeds,
            known: Mutex::new(Vec::new()),
            scripts: Scripts::new(),
            link: Mutex::new(link),
        }
    }

    /// The node-link listener, once (for the driver).
    pub(crate) fn take_link(&self) -> Option<std::net::TcpListener> {
        self.link.lock().ok().and_then(|mut l| l.take())
    }

    /// The cluster's link key, stored as `fresh` if there is none yet.
    pub(crate) async fn link_key(&self, fresh: &str) -> redis::RedisResult<String> {
        let (mut con, _) = self.connect_shard(0, Some(Duration::from_secs(1))).await?;
        let key = format!("{}linkkey", self.prefix(0));
        let (k,): (String,) = redis::pipe()
            .cmd("SET")
            .arg(&key)
            .arg(fresh)
            .arg("NX")
            .ignore()
            .cmd("GET")
            .arg(&key)
            .query_async(&mut con)
            .await?;
        Ok(k)
    }

    /// Queues a command for the driver (never blocks; called under the broker lock). A claim
    /// or message beyond the queue's bound comes back, counted.
    pub(crate) fn send(&self, cmd: Cmd) -> Result<(), Cmd> {
        if !matches!(cmd, Cmd::Release { .. }) {
            if self.queued.load(Ordering::Relaxed) >= self.bound {
                self.metrics.cluster_overflow.increment(1);
                return Err(cmd);
            }
            self.queued.fetch_add(1, Ordering::Relaxed);
        }
        // The driver only stops with the broker; a command after that has nobody to serve.
        let _ = self.tx.send(cmd);
        Ok(())
    }

    /// The driver took `cmd` off the queue.
    pub(crate) fn took(&self, cmd: &Cmd) {
        if !matches!(cmd, Cmd::Release { .. }) {
            self.queued.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// The queue's receiving end, once (for the driver).
    pub(crate) fn take_rx(&self) -> Option<mpsc::UnboundedReceiver<Cmd>> {
        self.rx.lock().ok().and_then(|mut r| r.take())
    }

    /// Whether the registry answered the last time this node asked.
    pub(crate) fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    pub(crate) fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Relaxed);
        self.metrics.registry_up.set(if up { 1.0 } else { 0.0 });
    }

    /// Shard `s`'s key prefix.
    pub(crate) fn prefix(&self, s: usize) -> &str {
        self.prefixes
            .get(s)
            .map_or(&self.cfg.prefix, String::as_str)
    }

    /// Where shard `s` checks the shard count.
    pub(crate) fn shards_key(&self, s: usize) -> &str {
        self.shards_keys.get(s).map_or("", String::as_str)
    }

    pub(crate) fn shards(&self) -> usize {
        self.shard_settings.len()
    }

    async fn open(
        info: ConnectionInfo,
        response_timeout: Option<Duration>,
    ) -> redis::RedisResult<MultiplexedConnection> {
        let cfg = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(response_timeout);
        redis::Client::open(info)?
            .get_multiplexed_async_connection_with_config(&cfg)
            .await
    }

    fn unusable() -> redis::RedisError {
        redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "unusable redis url"))
    }

    /// A seed's credentials and TLS settings, at another node's address.
    fn at(&self, host: &str, port: u16) -> Option<ConnectionInfo> {
        let seed = self.seeds.first()?;
        let addr = match seed.addr().clone() {
            ConnectionAddr::TcpTls {
                insecure,
                tls_params,
                ..
            } => ConnectionAddr::TcpTls {
                host: host.to_owned(),
                port,
                insecure,
                tls_params,
            },
            _ => ConnectionAddr::Tcp(host.to_owned(), port),
        };
        Some(seed.clone().set_addr(addr))
    }

    /// A connection to the Redis holding shard `s`, and (on a Redis Cluster) that master's
    /// node id, so a lane tells a failover from a reconnect.
    pub(crate) async fn connect_shard(
        &self,
        s: usize,
        response_timeout: Option<Duration>,
    ) -> redis::RedisResult<(MultiplexedConnection, Option<String>)> {
        if !self.cfg.redis_cluster {
            let info = self.seeds.first().cloned().ok_or_else(Self::unusable)?;
            return Ok((Self::open(info, response_timeout).await?, None));
        }
        let slot = self.slots.get(s).copied().unwrap_or(0);
        let topo = self.discover().await?;
        let (host, port) = master_of(&topo, slot).ok_or_else(|| {
            redis::RedisError::from((
                redis::ErrorKind::Server(redis::ServerErrorKind::ClusterDown),
                "no master serves the shard's slot",
            ))
        })?;
        let info = self.at(&host, port).ok_or_else(Self::unusable)?;
        let mut con = Self::open(info, response_timeout).await?;
        let id: String = redis::cmd("CLUSTER")
            .arg("MYID")
            .query_async(&mut con)
            .await?;
        Ok((con, Some(id)))
    }

    /// The Redis Cluster's slot map, from the first seed or known node that answers.
    async fn discover(&self) -> redis::RedisResult<Vec<SlotRange>> {
        let mut candidates: Vec<ConnectionInfo> = self.seeds.clone();
        let known = self.known.lock().map(|k| k.clone()).unwrap_or_default();
        candidates.extend(known.iter().filter_map(|(h, p)| self.at(h, *p)));
        let mut last = Self::unusable();
        for info in candidates {
            let fallback = match info.addr() {
                ConnectionAddr::Tcp(h, _) | ConnectionAddr::TcpTls { host: h, .. } => h.clone(),
                _ => String::new(),
            };
            let mut con = match Self::open(info, Some(Duration::from_secs(1))).await {
                Ok(c) => c,
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            let v: Value = match redis::cmd("CLUSTER")
                .arg("SLOTS")
                .query_async(&mut con)
                .await
            {
                Ok(v) => v,
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            let (ranges, nodes) = parse_slots(v, &fallback);
            if ranges.is_empty() {
                continue;
            }
            if let Ok(mut k) = self.known.lock() {
                *k = nodes;
            }
            let mut masters: Vec<(String, u16)> = self
                .slots
                .iter()
                .filter_map(|slot| master_of(&ranges, *slot))
                .collect();
            masters.sort();
            masters.dedup();
            self.metrics.cluster_masters.set(masters.len() as f64);
            return Ok(ranges);
        }
        Err(last)
    }

    /// Registered ids over the whole cluster, in registration order (for discovery): every
    /// shard's list, one connection per Redis, ordered by (registration number, id) as
    /// numbers are per shard.
    pub(crate) async fn peer_ids(&self) -> Option<Vec<String>> {
        let timeout = Some(Duration::from_secs(2));
        // Shards grouped by the Redis that holds them.
        let mut groups: BTreeMap<(String, u16), Vec<usize>> = BTreeMap::new();
        if self.cfg.redis_cluster {
            let topo = self.discover().await.ok()?;
            for (s, slot) in self.slots.iter().enumerate() {
                groups.entry(master_of(&topo, *slot)?).or_default().push(s);
            }
        } else {
            groups.insert((String::new(), 0), (0..self.shards()).collect());
        }
        let mut ids: Vec<(u64, String)> = Vec::new();
        for ((host, port), shards) in groups {
            let info = if self.cfg.redis_cluster {
                self.at(&host, port)?
            } else {
                self.seeds.first()?.clone()
            };
            let mut con = Self::open(info, timeout).await.ok()?;
            let mut pipe = redis::pipe();
            for s in &shards {
                pipe.add_command(self.scripts.get(Script::List).call(&[self.prefix(*s)]));
            }
            let lists: Vec<Value> = pipe.query_async(&mut con).await.ok()?;
            for v in lists {
                ids.extend(wire::items(v).into_iter().filter_map(|pair| {
                    let mut it = wire::items(pair).into_iter();
                    let reg = wire::text(it.next()?)?.parse().unwrap_or(0);
                    Some((reg, wire::text(it.next()?)?))
                }));
            }
        }
        ids.sort();
        Some(ids.into_iter().map(|(_, id)| id).collect())
    }
}

/// Binds the node-link listener: it, and the address other nodes dial.
fn bind_link(
    bind: &str,
    advertise: Option<&str>,
) -> std::io::Result<(std::net::TcpListener, String)> {
    let l = std::net::TcpListener::bind(bind)?;
    l.set_nonblocking(true)?;
    let at = l.local_addr()?;
    let advertise = match advertise {
        Some(a) => a.to_owned(),
        None if at.ip().is_unspecified() => {
            return Err(std::io::Error::other(
                "a link on 0.0.0.0 or [::] needs --cluster-link-advertise",
            ));
        }
        None => at.to_string(),
    };
    if advertise.contains(['{', '}', '@', ' ']) {
        return Err(std::io::Error::other("unusable --cluster-link-advertise"));
    }
    Ok((l, advertise))
}

/// The master (host, port) serving `slot`.
fn master_of(ranges: &[SlotRange], slot: u16) -> Option<(String, u16)> {
    ranges
        .iter()
        .find(|r| r.0 <= slot && slot <= r.1)
        .map(|r| (r.2.clone(), r.3))
}

/// A `CLUSTER SLOTS` answer → the slot ranges with their masters, and every node named
/// (masters and replicas). An empty host means the node that answered (`fallback`).
fn parse_slots(v: Value, fallback: &str) -> (Vec<SlotRange>, Vec<(String, u16)>) {
    let mut ranges = Vec::new();
    let mut nodes = Vec::new();
    for r in wire::items(v) {
        let mut it = wire::items(r).into_iter();
        let (Some(start), Some(end)) = (
            it.next().as_ref().and_then(wire::int),
            it.next().as_ref().and_then(wire::int),
        ) else {
            continue;
        };
        let mut first = true;
        for n in it {
            let mut f = wire::items(n).into_iter();
            let host = f.next().and_then(wire::text).unwrap_or_default();
            let host = if host.is_empty() || host == "?" {
                fallback.to_owned()
            } else {
                host
            };
            let Some(port) = f.next().as_ref().and_then(wire::int) else {
                continue;
            };
            let port = u16::try_from(port).unwrap_or(0);
            if first {
                ranges.push((
                    u16::try_from(start).unwrap_or(0),
                    u16::try_from(end).unwrap_or(0),
                    host.clone(),
                    port,
                ));
                first = false;
            }
            if !nodes.contains(&(host.clone(), port)) {
                nodes.push((host, port));
            }
        }
    }
    (ranges, nodes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::ConnId;
    use std::sync::Arc;

    #[test]
    fn the_command_queue_is_bounded_but_releases_always_pass() {
        let cfg = ClusterConfig::single(
            "redis://:s3cret@127.0.0.1:1/".into(),
            Duration::from_secs(1),
            "t:",
        );
        let c = Cluster::new(cfg, 10, 10, 2, Metrics::new());
        assert!(!format!("{c:?}").contains("s3cret"));
        let claim = |n| Cmd::Claim {
            conn: ConnId(n),
            id: Arc::from("a"),
            token: "t".into(),
        };
        assert!(c.send(claim(1)).is_ok());
        assert!(c.send(claim(2)).is_ok());
        assert!(matches!(c.send(claim(3)), Err(Cmd::Claim { .. })));
        for _ in 0..5 {
            let release = Cmd::Release {
                id: Arc::from("a"),
                reg: 1,
            };
            assert!(c.send(release).is_ok());
        }
        let mut rx = c.take_rx().unwrap();
        let first = rx.try_recv().unwrap();
        c.took(&first);
        assert!(
            c.send(claim(4)).is_ok(),
            "room again once the driver took one"
        );
    }
}
