//! This node's handle on the cluster, shared by the broker and the driver: the bounded
//! command queue, whether the registry is up, and the discovery query.

use super::protocol::{Cmd, Script, Settings};
use super::scripts::Scripts;
use super::wire;
use crate::config::ClusterConfig;
use crate::metrics::Metrics;
use redis::Value;
use redis::aio::MultiplexedConnection;
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
    /// `None` only for a URL that does not parse (the config check refuses those first):
    /// such a node never reaches the registry, so it refuses every claim.
    client: Option<redis::Client>,
    pub(crate) scripts: Scripts,
}

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
        let client = match redis::Client::open(cfg.redis_url.expose()) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::error!(error = %e, redis = %cfg.redis_url, "unusable redis url: every claim will be refused");
                None
            }
        };
        let node = uuid::Uuid::new_v4().simple().to_string();
        let (tx, rx) = mpsc::unbounded_channel();
        Self {
            settings: Settings {
                node: node.clone(),
                lease: cfg.lease,
                concurrent_limit,
                max_queued_per_dst,
                max_queued_total,
            },
            cfg,
            node,
            metrics,
            tx,
            rx: Mutex::new(Some(rx)),
            queued: AtomicUsize::new(0),
            bound: max_queued_total.max(1),
            up: AtomicBool::new(false),
            client,
            scripts: Scripts::new(),
        }
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

    pub(crate) fn p(&self) -> &str {
        &self.cfg.prefix
    }

    pub(crate) async fn connect(
        &self,
        response_timeout: Option<Duration>,
    ) -> redis::RedisResult<MultiplexedConnection> {
        let cfg = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(response_timeout);
        let Some(client) = &self.client else {
            return Err(redis::RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "unusable redis url",
            )));
        };
        client
            .get_multiplexed_async_connection_with_config(&cfg)
            .await
    }

    /// Registered ids over the whole cluster, in registration order (for discovery).
    pub(crate) async fn peer_ids(&self) -> Option<Vec<String>> {
        let mut con = self.connect(Some(Duration::from_secs(2))).await.ok()?;
        let v: Value = self
            .scripts
            .get(Script::List)
            .call(&[self.p()])
            .query_async(&mut con)
            .await
            .ok()?;
        let mut ids: Vec<(u64, String)> = wire::items(v)
            .into_iter()
            .filter_map(|pair| {
                let mut it = wire::items(pair).into_iter();
                let reg = wire::text(it.next()?)?.parse().unwrap_or(0);
                Some((reg, wire::text(it.next()?)?))
            })
            .collect();
        ids.sort();
        Some(ids.into_iter().map(|(_, id)| id).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::ConnId;
    use std::sync::Arc;

    #[test]
    fn the_command_queue_is_bounded_but_releases_always_pass() {
        let cfg = ClusterConfig {
            redis_url: "redis://:s3cret@127.0.0.1:1/".into(),
            lease: Duration::from_secs(1),
            prefix: "t:".into(),
        };
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
