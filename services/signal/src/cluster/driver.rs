//! The thin async layer around [`Registry`]: it owns the two Redis connections, runs the
//! calls the registry asks for, feeds it the core's commands, the replies and the time, and
//! hands what it produces to the core. No registry logic lives here.

use super::handle::Cluster;
use super::protocol::{Command, Event, Input, Lane, Output, Reply, ToCore};
use super::registry::Registry;
use super::scripts::Ctx;
use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use redis::aio::MultiplexedConnection;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
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
}

enum Done {
    Connected(MultiplexedConnection),
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
    lane: Lane,
    con: Option<MultiplexedConnection>,
    futs: FuturesOrdered<Pending>,
}

impl LaneIo {
    fn new(lane: Lane) -> Self {
        Self {
            lane,
            con: None,
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
                // Blocking reads get no response timeout: the request's own timeout bounds them.
                let timeout = match self.lane {
                    Lane::Main => Some(c.cfg.lease / 3),
                    Lane::Inbox => None,
                };
                self.futs.push_back(Box::pin(async move {
                    match c.connect(timeout).await {
                        Ok(con) => Done::Connected(con),
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
                    prefix: c.p(),
                    settings: &c.settings,
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

    /// Waits for the oldest request in flight (cancel-safe: it stays in flight if this is
    /// dropped).
    async fn next(&mut self) -> Input {
        let Some(done) = self.futs.next().await else {
            return std::future::pending().await;
        };
        match done {
            Done::Connected(con) => {
                self.con = Some(con);
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
        }
    }
}

/// Runs the registry's outputs until it only waits; returns when to wake it.
fn drain<L: Local>(
    reg: &mut Registry,
    local: &L,
    c: &Arc<Cluster>,
    main: &mut LaneIo,
    inbox: &mut LaneIo,
) -> Instant {
    loop {
        match reg.poll_output() {
            Output::Timeout(at) => return at,
            Output::Core(ev) => local.deliver(ev),
            Output::Event(Event::Up(up)) => c.set_up(up),
            Output::Event(Event::NeedRegistrations) => {
                reg.handle_input(local.now(), Input::Registrations(local.registrations()));
            }
            Output::Redis(Lane::Main, cmd) => main.start(c, cmd),
            Output::Redis(Lane::Inbox, cmd) => inbox.start(c, cmd),
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
    c.metrics.cluster_mode.set(1.0);
    // One Redis holds the whole registry.
    c.metrics.cluster_shards.set(1.0);
    tracing::info!(node = %c.node, redis = %c.cfg.redis_url, "cluster mode");
    let mut reg = Registry::new(local.now(), c.settings.clone(), c.metrics.clone());
    let mut main = LaneIo::new(Lane::Main);
    let mut inbox = LaneIo::new(Lane::Inbox);
    loop {
        let wake = drain(&mut reg, &*local, &c, &mut main, &mut inbox);
        c.metrics.cluster_inflight.set(main.in_flight() as f64);
        let input = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            i = main.next(), if main.busy() => i,
            i = inbox.next(), if inbox.busy() => i,
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
            () = tokio::time::sleep_until(wake.into()) => Input::Timeout,
        };
        reg.handle_input(local.now(), input);
    }
    reg.handle_input(local.now(), Input::Stop);
    let leave = async {
        loop {
            drain(&mut reg, &*local, &c, &mut main, &mut inbox);
            if reg.is_stopped() || !main.busy() {
                break;
            }
            let i = main.next().await;
            reg.handle_input(local.now(), i);
        }
    };
    let _ = tokio::time::timeout(LEAVE_WAIT, leave).await;
    c.set_up(false);
}
