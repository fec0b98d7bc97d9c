//! The thin async layer around [`Sharded`]: it owns every shard's two Redis connections,
//! runs the calls the registry asks for, feeds it the core's commands, the replies and the
//! time, and hands what it produces to the core. No registry logic lives here.
//!
//! Connections: two per shard (the main lane's pipelined requests and the inbox lane's
//! blocking `XREAD`, which would stall anything queued behind it), each to the Redis that
//! holds the shard: `2 × shards` in all, plus a short-lived one per connect on a Redis
//! Cluster to read the slot map (and one per master for each `/peers` request).

use super::direct::DirectMsg;
use super::handle::Cluster;
use super::link::{self, Inbound, Outgoing};
use super::protocol::{Command, Input, Lane, Reply, ToCore};
use super::scripts::Ctx;
use super::sharded::{SOutput, Sharded};
use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use redis::aio::MultiplexedConnection;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How long an inbox request may take (its `XREAD` blocks for half a second in Redis).
const INBOX_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a stopping node tries to give its ids back.
const LEAVE_WAIT: Duration = Duration::from_secs(2);

/// The broker's side, as the driver sees it.
pub(crate) trait Local: Send + Sync + 'static {
    /// The broker's clock.
    fn now(&self) -> Instant;
    /// The cluster handle (`None` on one node: the driver does nothing).
    fn cluster(&self) -> Option<Arc<Cluster>>;
    /// Hands the registry's answer to the core.
    fn deliver(&self, ev: ToCore);
    /// This node's live registrations (id, token, registry number).
    fn registrations(&self) -> Vec<(Arc<str>, String, u64)>;
    /// Delivers direct copies whose receiver is held here; whether each was.
    fn direct(&self, msgs: &[DirectMsg]) -> Vec<bool>;
}

enum Done {
    /// With the master's node id on a Redis Cluster.
    Connected(MultiplexedConnection, Option<String>),
    ConnectFailed(redis::RedisError),
    Reply(Vec<Reply>),
    Broken(Option<redis::RedisError>),
}

type Pending = Pin<Box<dyn Future<Output = Done> + Send>>;

/// One connection and its requests in flight, answered in order.
///
/// Requests share the connection, so Redis runs them in the order they were written. They
/// are written when first polled, and `FuturesOrdered` first polls its futures in the order
/// they were pushed (it queues new futures as ready, first in first out), so that is the
/// order the registry asked for them.
struct LaneIo {
    shard: usize,
    lane: Lane,
    con: Option<MultiplexedConnection>,
    /// The Redis Cluster node this lane's last connection reached.
    master: Option<String>,
    futs: FuturesOrdered<Pending>,
}

impl LaneIo {
    fn new(shard: usize, lane: Lane) -> Self {
        Self {
            shard,
            lane,
            con: None,
            master: None,
            futs: FuturesOrdered::new(),
        }
    }

    fn busy(&self) -> bool {
        !self.futs.is_empty()
    }

    fn in_flight(&self) -> usize {
        self.futs.len()
    }

    fn start(&mut self, c: &Arc<Cluster>, cmd: Command) {
        match cmd {
            Command::Connect => {
                // Whatever was in flight on the old connection is given up.
                self.con = None;
                self.futs = FuturesOrdered::new();
                let c = c.clone();
                let shard = self.shard;
                // Blocking reads get no response timeout: the request's own timeout bounds them.
                let timeout = match self.lane {
                    Lane::Main => Some(c.cfg.lease / 3),
                    Lane::Inbox => None,
                };
                self.futs.push_back(Box::pin(async move {
                    match c.connect_shard(shard, timeout).await {
                        Ok((con, id)) => Done::Connected(con, id),
                        Err(e) => Done::ConnectFailed(e),
                    }
                }));
            }
            Command::Run(calls) => {
                let Some(mut con) = self.con.clone() else {
                    self.futs.push_back(Box::pin(async { Done::Broken(None) }));
                    return;
                };
                let ctx = Ctx {
                    prefix: c.prefix(self.shard),
                    shards_key: c.shards_key(self.shard),
                    settings: &c.shard_settings[self.shard],
                    scripts: &c.scripts,
                };
                let mut pipe = redis::pipe();
                pipe.ignore_errors();
                for call in &calls {
                    pipe.add_command(ctx.command(call));
                }
                let n = calls.len();
                let limit = match self.lane {
                    Lane::Main => None,
                    Lane::Inbox => Some(INBOX_TIMEOUT),
                };
                self.futs.push_back(Box::pin(async move {
                    let query = pipe.query_async::<Vec<redis::RedisResult<redis::Value>>>(&mut con);
                    let r = match limit {
                        Some(t) => tokio::time::timeout(t, query).await.ok(),
                        None => Some(query.await),
                    };
                    match r {
                        Some(Ok(results)) if results.len() == n => Done::Reply(
                            results
                                .into_iter()
                                .map(|r| {
                                    r.map_err(|e| {
                                        tracing::debug!(error = %e, "registry call failed");
                                    })
                                })
                                .collect(),
                        ),
                        Some(Err(e)) => Done::Broken(Some(e)),
                        _ => Done::Broken(None),
                    }
                }));
            }
        }
    }

    /// The oldest request in flight, if it is done (cancel-safe: it stays in flight until
    /// it is). A connection to another Redis Cluster node than the last one comes with a
    /// [`Input::Failover`] first.
    fn poll_done(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Vec<Input>> {
        if self.futs.is_empty() {
            return Poll::Pending;
        }
        let Poll::Ready(Some(done)) = self.futs.poll_next_unpin(cx) else {
            return Poll::Pending;
        };
        Poll::Ready(self.done(done))
    }

    fn done(&mut self, done: Done) -> Vec<Input> {
        vec![match done {
            Done::Connected(con, id) => {
                self.con = Some(con);
                let moved = match (&self.master, &id) {
                    (Some(old), Some(new)) => old != new,
                    _ => false,
                };
                if id.is_some() {
                    self.master = id;
                }
                if moved {
                    tracing::warn!(shard = self.shard, lane = ?self.lane, "registry shard is on another Redis node now");
                    return vec![Input::Failover(self.lane), Input::Connected(self.lane)];
                }
                Input::Connected(self.lane)
            }
            Done::ConnectFailed(e) => {
                tracing::debug!(error = %e, lane = ?self.lane, "cluster registry connect failed");
                Input::Disconnected(self.lane)
            }
            Done::Reply(r) => Input::Reply(self.lane, r),
            Done::Broken(e) => {
                if let Some(e) = e {
                    tracing::debug!(error = %e, lane = ?self.lane, "cluster registry connection failed");
                }
                // The answer stands for every request in flight on this connection.
                self.con = None;
                self.futs = FuturesOrdered::new();
                Input::Disconnected(self.lane)
            }
        }]
    }
}

/// Every lane of every shard: `2 * s` is shard `s`'s main lane, `2 * s + 1` its inbox.
struct Lanes {
    all: Vec<LaneIo>,
    /// Where the next poll starts, so no lane starves the others.
    next: usize,
}

impl Lanes {
    fn new(shards: usize) -> Self {
        let all = (0..shards)
            .flat_map(|s| [LaneIo::new(s, Lane::Main), LaneIo::new(s, Lane::Inbox)])
            .collect();
        Self { all, next: 0 }
    }

    fn get(&mut self, shard: usize, lane: Lane) -> Option<&mut LaneIo> {
        self.all
            .get_mut(2 * shard + usize::from(lane == Lane::Inbox))
    }

    fn busy(&self) -> bool {
        self.all.iter().any(LaneIo::busy)
    }

    fn mains_busy(&self) -> bool {
        self.all.iter().any(|l| l.lane == Lane::Main && l.busy())
    }

    fn in_flight(&self) -> usize {
        self.all
            .iter()
            .filter(|l| l.lane == Lane::Main)
            .map(LaneIo::in_flight)
            .sum()
    }

    /// The next lane answer: (shard, inputs).
    async fn next(&mut self) -> (usize, Vec<Input>) {
        std::future::poll_fn(|cx| {
            let n = self.all.len();
            for k in 0..n {
                let i = (self.next + k) % n;
                if let Poll::Ready(inputs) = self.all[i].poll_done(cx) {
                    self.next = (i + 1) % n;
                    return Poll::Ready((self.all[i].shard, inputs));
                }
            }
            Poll::Pending
        })
        .await
    }
}

/// Runs the registry's outputs until it only waits; returns when to wake it.
fn drain<L: Local>(
    reg: &mut Sharded,
    local: &L,
    c: &Arc<Cluster>,
    lanes: &mut Lanes,
    links: &mut Option<Outgoing>,
) -> Instant {
    loop {
        match reg.poll_output() {
            SOutput::Timeout(at) => {
                if let Some(l) = links {
                    l.flush(local.now());
                }
                return at;
            }
            SOutput::Direct(to, m) => {
                if let Some(l) = links {
                    l.push(to, &m);
                }
            }
            SOutput::Core(ev) => local.deliver(ev),
            SOutput::Up(up) => c.set_up(up),
            SOutput::NeedRegistrations => {
                reg.handle_input(local.now(), Input::Registrations(local.registrations()));
            }
            SOutput::Redis(s, lane, cmd) => {
                if let Some(l) = lanes.get(s, lane) {
                    l.start(c, cmd);
                }
            }
            // The registry stays down (every claim refused, health failing) with the error
            // logged; the operator fixes the flag.
            SOutput::Fatal(msg) => {
                tracing::error!(node = %c.node, "{msg}");
                c.set_up(false);
            }
        }
    }
}

/// The driver: runs until `stop`, then gives this node's ids back if it can.
pub(crate) async fn run<L: Local>(local: Arc<L>, stop: CancellationToken) {
    let Some(c) = local.cluster() else {
        return;
    };
    let Some(mut rx) = c.take_rx() else {
        return;
    };
    let shards = c.shards();
    c.metrics.cluster_mode.set(1.0);
    c.metrics.cluster_shards.set(shards as f64);
    c.metrics
        .cluster_redis_cluster
        .set(if c.cfg.redis_cluster { 1.0 } else { 0.0 });
    if !c.cfg.redis_cluster {
        c.metrics.cluster_masters.set(1.0);
    }
    tracing::info!(node = %c.node, redis = %c.cfg.redis_url, shards, redis_cluster = c.cfg.redis_cluster, "cluster mode");
    let mut reg = Sharded::new(local.now(), &c.settings, shards, c.metrics.clone());
    let mut lanes = Lanes::new(shards);
    // Node links: direct copies out and in (see `direct`), when this node has one.
    let (mut links, mut inbound): (Option<Outgoing>, Option<Inbound>) = match c.take_link() {
        Some(l) => {
            let key = link::Key::default();
            let rx = link::start(&c, l, key.clone(), stop.clone());
            tracing::info!(node = %c.node, "cluster links on");
            (
                rx.is_some()
                    .then(|| Outgoing::new(&c.node, key, c.metrics.clone())),
                rx,
            )
        }
        None => (None, None),
    };
    loop {
        let wake = drain(&mut reg, &*local, &c, &mut lanes, &mut links);
        c.metrics.cluster_inflight.set(lanes.in_flight() as f64);
        let (shard, inputs) = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            // Direct copies first: they are cheap, and late ones are wasted.
            Some((from, msgs)) = async {
                match &mut inbound {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                let ok = reg.direct_in(&from, msgs);
                if !ok.is_empty() {
                    let done = local.direct(&ok);
                    for (m, delivered) in ok.iter().zip(done) {
                        if delivered {
                            reg.direct_delivered(&from, m);
                            c.metrics.cluster_direct_in.increment(1);
                        } else {
                            c.metrics.cluster_direct_dropped.increment(1);
                        }
                    }
                }
                continue;
            }
            i = lanes.next(), if lanes.busy() => i,
            cmd = rx.recv(), if reg.wants_local() => {
                let Some(cmd) = cmd else { break };
                c.took(&cmd);
                // Everything queued meanwhile goes in too, so it runs as one batch.
                reg.handle_input(local.now(), Input::Local(cmd));
                while reg.wants_local() {
                    let Ok(cmd) = rx.try_recv() else { break };
                    c.took(&cmd);
                    reg.handle_input(local.now(), Input::Local(cmd));
                }
                continue;
            }
            () = tokio::time::sleep_until(wake.into()) => {
                reg.handle_input(local.now(), Input::Timeout);
                continue;
            }
        };
        for i in inputs {
            reg.handle_lane(local.now(), shard, i);
        }
    }
    reg.handle_input(local.now(), Input::Stop);
    let leave = async {
        loop {
            drain(&mut reg, &*local, &c, &mut lanes, &mut None);
            if reg.is_stopped() || !lanes.mains_busy() {
                break;
            }
            let (shard, inputs) = lanes.next().await;
            for i in inputs {
                reg.handle_lane(local.now(), shard, i);
            }
        }
    };
    let _ = tokio::time::timeout(LEAVE_WAIT, leave).await;
    c.set_up(false);
}
