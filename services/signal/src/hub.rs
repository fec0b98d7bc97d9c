//! The core's driver: the sans-IO [`Broker`] behind one lock, the map from connection to
//! [`Outbox`], and the one timer. Every input (a socket opening, a read batch, a close, the
//! timer, and in cluster mode the registry's answers from `cluster`) goes through
//! [`Hub::with_core`], which drains the core's outputs into outboxes (or, in cluster mode,
//! commands for the registry driver) and re-arms the timer; socket writes happen after the
//! lock is released. Connection tasks, HTTP handlers and the cluster driver only see [`Hub`].

use crate::cluster::{Cluster, Cmd, Local, MSG_UNAVAILABLE, ToCore};
use crate::config::Config;
use crate::core::{Broker, Claim, CloseReason, ConnId, CoreConfig, OpenParams, Output};
use crate::metrics::Metrics;
use crate::ws;
use kibitz_proto::peerjs::MessageType;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;
use tokio::sync::Notify;

use crate::outbox::{Closing, Outbox};

/// The one place the broker reads the clock.
#[allow(clippy::disallowed_methods)]
pub(crate) fn now() -> Instant {
    Instant::now()
}

struct Inner {
    core: Broker,
    outboxes: HashMap<ConnId, Arc<Outbox>>,
    /// The core's last [`Output::Timeout`]: when it next wants [`Broker::handle_timeout`].
    due: Instant,
    /// The deadline the timer task sleeps until.
    armed: Instant,
}

/// The broker shared by every connection task and handler.
pub(crate) struct Hub {
    inner: Mutex<Inner>,
    timer: Notify,
    next_conn: AtomicU64,
    closing: AtomicBool,
    pub(crate) config: Config,
    pub(crate) metrics: Metrics,
    /// `--connect-rate`: upgrades per client IP, checked before the upgrade.
    pub(crate) connect_rate: crate::connect_rate::ConnectRate,
    /// Cluster mode: the shared registry's driver handle.
    pub(crate) cluster: Option<Arc<Cluster>>,
    /// Where heavy sockets take turns (`--heavy-bytes-per-sec`; `None` when 0).
    gate: Option<crate::fair::Gate>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").finish_non_exhaustive()
    }
}

fn close_status(reason: CloseReason) -> Closing {
    match reason {
        CloseReason::Rejected | CloseReason::Dead => Closing::Graceful(None, ""),
        CloseReason::Replaced => Closing::Graceful(Some(1000), "replaced by a newer connection"),
        CloseReason::RateLimited => Closing::Graceful(Some(1008), "message rate limit exceeded"),
        CloseReason::Garbage => Closing::Graceful(Some(1007), "too many invalid frames"),
        CloseReason::Lost => Closing::Graceful(Some(1001), "id taken over after a registry outage"),
        // 1013 (try again later): the client should reconnect, which claims the id afresh.
        CloseReason::Fenced => {
            Closing::Graceful(Some(1013), "cluster registry unreachable; reconnect")
        }
    }
}

impl Inner {
    /// Routes the core's outputs into outboxes until its [`Output::Timeout`], which it keeps
    /// in `due`; returns the outboxes to flush once the lock is gone.
    fn drain(&mut self, metrics: &Metrics, cluster: Option<&Cluster>) -> Vec<Arc<Outbox>> {
        let mut touched: Vec<Arc<Outbox>> = Vec::new();
        loop {
            match self.core.poll_output() {
                Output::Timeout(at) => {
                    self.due = at;
                    return touched;
                }
                Output::Send { conn, text } => {
                    let Some(ob) = self.outboxes.get(&conn) else {
                        continue;
                    };
                    if !ob.push(|buf| ws::encode_text(buf, &text)) {
                        metrics.rejected("slow_reader");
                        tracing::debug!(conn = conn.0, "closing a peer that cannot keep up");
                    } else if !touched.iter().any(|t| Arc::ptr_eq(t, ob)) {
                        touched.push(ob.clone());
                    }
                }
                Output::Close { conn, reason } => {
                    if let Some(ob) = self.outboxes.get(&conn) {
                        tracing::debug!(conn = conn.0, ?reason, "closing");
                        ob.close(close_status(reason));
                    }
                }
                // Only produced in cluster mode, where `cluster` is set. Past the command
                // queue's bound a claim is refused at once and a message dropped (counted).
                Output::Claim { conn, id, token } => {
                    if let Some(c) = cluster
                        && c.send(Cmd::Claim { conn, id, token }).is_err()
                    {
                        let refused = Claim::Unavailable(MSG_UNAVAILABLE);
                        self.core.handle_claim(now(), conn, refused);
                    }
                }
                Output::Release { id, reg } => {
                    if let Some(c) = cluster {
                        let _ = c.send(Cmd::Release { id, reg });
                    }
                }
                Output::Forward(f) => {
                    if let Some(c) = cluster {
                        let _ = c.send(Cmd::Forward(f, 0));
                    }
                }
            }
        }
    }
}

impl Hub {
    pub(crate) fn new(config: Config) -> Self {
        let metrics = Metrics::new();
        let cluster = config.cluster.as_ref().map(|cc| {
            Arc::new(Cluster::new(
                cc.clone(),
                config.concurrent_limit,
                config.limits.max_queued_per_dst,
                config.limits.max_queued_total,
                metrics.clone(),
            ))
        });
        let started = now();
        let core = Broker::new(
            started,
            CoreConfig {
                key: config.key.clone(),
                expire_timeout: config.expire_timeout,
                alive_timeout: config.alive_timeout,
                concurrent_limit: config.concurrent_limit,
                takeover: config.takeover,
                msg_rate: config.limits.msg_rate,
                msg_burst: config.limits.msg_burst,
                per_ip_connections: config.limits.per_ip_connections,
                max_queued_per_dst: config.limits.max_queued_per_dst,
                max_queued_total: config.limits.max_queued_total,
                room_notices: config.room_notices,
                cluster: cluster.is_some(),
            },
            metrics.clone(),
        );
        let mut inner = Inner {
            core,
            outboxes: HashMap::new(),
            due: started,
            armed: started,
        };
        // A fresh core has nothing to send; this only reads its first timeout.
        inner.drain(&metrics, cluster.as_deref());
        inner.armed = inner.due;
        // One permit per runtime worker: every worker may be busy with a heavy socket, and a
        // light socket's task still waits behind at most that many heavy steps.
        let workers = tokio::runtime::Handle::try_current().map_or_else(
            |_| std::thread::available_parallelism().map_or(1, |n| n.get()),
            |h| h.metrics().num_workers(),
        );
        let gate = crate::fair::Gate::new(
            config.limits.heavy_bytes_per_sec,
            config.limits.heavy_burst_bytes,
            workers,
            metrics.throttled_reads.clone(),
        );
        Self {
            gate,
            inner: Mutex::new(inner),
            timer: Notify::new(),
            next_conn: AtomicU64::new(1),
            closing: AtomicBool::new(false),
            connect_rate: crate::connect_rate::ConnectRate::new(
                config.limits.connect_rate,
                config.limits.connect_burst,
            ),
            config,
            metrics,
            cluster,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The core's invariants hold between calls; a panic mid-call is a bug we would rather
        // survive with a possibly stale entry than turn into a dead broker.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the core, then routes its outputs and re-arms the timer if needed.
    fn with_core<R>(&self, f: impl FnOnce(&mut Broker) -> R) -> R {
        let mut inner = self.lock();
        let r = f(&mut inner.core);
        let touched = inner.drain(&self.metrics, self.cluster.as_deref());
        // Wake the timer only when the core wants it earlier than it sleeps.
        let rearm = inner.due < inner.armed;
        if rearm {
            inner.armed = inner.due;
        }
        drop(inner);
        if rearm {
            self.timer.notify_one();
        }
        // Socket writes happen outside the broker lock.
        for ob in touched {
            ob.flush();
        }
        r
    }

    /// Registers a new socket and runs admission on it.
    pub(crate) fn open(&self, ip: Option<IpAddr>, params: OpenParams) -> (ConnId, Arc<Outbox>) {
        let conn = ConnId(self.next_conn.fetch_add(1, Ordering::Relaxed));
        let outbox = Arc::new(Outbox::new(
            self.config.limits.send_queue_bytes,
            self.metrics.bytes_out.clone(),
        ));
        {
            let mut inner = self.lock();
            crate::table::make_room(&mut inner.outboxes, &conn);
            inner.outboxes.insert(conn, outbox.clone());
        }
        self.metrics.connections.increment(1.0);
        tracing::debug!(conn = conn.0, ip = ?ip, "socket open");
        self.with_core(|core| core.handle_open(now(), conn, ip, params));
        (conn, outbox)
    }

    /// Runs `f` with a handler for one socket's messages, all under one lock: a read batch
    /// costs one lock and one output drain however many messages it held.
    pub(crate) fn messages<R>(
        &self,
        conn: ConnId,
        f: impl FnOnce(&mut dyn FnMut(Incoming<'_>)) -> R,
    ) -> R {
        let at = now();
        self.with_core(|core| {
            f(&mut |m| match m {
                Incoming::Text(t) => core.handle_message(at, conn, t),
                Incoming::Garbage => core.handle_garbage(conn),
            })
        })
    }

    /// The socket is gone.
    pub(crate) fn closed(&self, conn: ConnId) {
        self.lock().outboxes.remove(&conn);
        // Through `with_core`: a close can start a timer (a room id's leave notice).
        self.with_core(|core| core.handle_close(now(), conn));
        self.metrics.connections.decrement(1.0);
    }

    /// Cluster mode: the registry answered a claim.
    pub(crate) fn claim_result(&self, conn: ConnId, claim: Claim) {
        self.with_core(|core| core.handle_claim(now(), conn, claim));
    }

    /// Cluster mode: messages from this node's inbox: (type, src, dst, frame).
    pub(crate) fn remote(&self, msgs: Vec<(MessageType, String, String, String)>) {
        self.with_core(|core| {
            for (kind, src, dst, text) in msgs {
                core.handle_remote(kind, &src, &dst, text);
            }
        });
    }

    /// Cluster mode: direct copies from another node; whether each was delivered.
    pub(crate) fn direct(&self, msgs: &[crate::cluster::DirectMsg]) -> Vec<bool> {
        self.with_core(|core| {
            msgs.iter()
                .map(|m| core.handle_direct(m.kind, &m.src, &m.dst, m.text.clone()))
                .collect()
        })
    }

    /// Cluster mode: `id` was re-attached on another node.
    pub(crate) fn moved(&self, id: &str) {
        self.with_core(|core| core.handle_moved(now(), id));
    }

    /// Cluster mode: `id` is held by another client after a registry outage.
    pub(crate) fn lost(&self, id: &str) {
        self.with_core(|core| core.handle_lost(now(), id));
    }

    /// Cluster mode: this node's lease in registry shard `shard` (of `shards`) may have
    /// lapsed: every id of that shard held here is dropped.
    pub(crate) fn fenced(&self, shard: usize, shards: usize) {
        self.with_core(|core| {
            core.handle_fenced(now(), |id| {
                crate::cluster::registry_shard(id, shards) == shard
            });
        });
    }

    /// Cluster mode: expired offline queues: (dst, senders).
    pub(crate) fn expired(&self, due: &[(String, Vec<String>)]) {
        self.with_core(|core| {
            for (dst, senders) in due {
                core.handle_expired(now(), dst, senders);
            }
        });
    }

    /// Cluster mode: this node's live registrations (id, token, registry number).
    pub(crate) fn registrations(&self) -> Vec<(Arc<str>, String, u64)> {
        self.lock().core.registrations()
    }

    /// Registered ids in registration order, over the whole cluster in cluster mode (`None`
    /// when the registry cannot be asked).
    pub(crate) async fn all_peer_ids(&self) -> Option<Vec<String>> {
        match &self.cluster {
            Some(c) => c.peer_ids().await,
            None => Some(self.peer_ids()),
        }
    }

    /// Counts a refusal that happened outside the core.
    pub(crate) fn reject(&self, reason: &'static str) {
        self.metrics.rejected(reason);
    }

    /// A fresh id no live peer holds (for `GET /id`).
    pub(crate) fn fresh_id(&self) -> String {
        loop {
            let id = uuid::Uuid::new_v4().to_string();
            if !self.lock().core.is_registered(&id) {
                return id;
            }
        }
    }

    /// Registered ids in registration order.
    pub(crate) fn peer_ids(&self) -> Vec<String> {
        self.lock().core.peer_ids()
    }

    /// Whether shutdown has begun.
    pub(crate) fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Relaxed)
    }

    /// Shutdown has begun: the broker reports itself unhealthy but keeps serving.
    pub(crate) fn begin_drain(&self) {
        self.closing.store(true, Ordering::Relaxed);
    }

    /// Closes every socket with 1001 (going away), for shutdown.
    pub(crate) fn close_all(&self) {
        self.begin_drain();
        let inner = self.lock();
        for ob in inner.outboxes.values() {
            ob.close(Closing::Graceful(Some(1001), "server shutting down"));
        }
    }

    /// Number of open sockets.
    pub(crate) fn open_sockets(&self) -> usize {
        self.lock().outboxes.len()
    }

    /// The timer: sleeps until the core's next deadline, runs it, repeats.
    pub(crate) async fn run_timer(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        loop {
            let next = {
                let mut inner = self.lock();
                inner.armed = inner.due;
                inner.due
            };
            tokio::select! {
                () = tokio::time::sleep_until(next.into()) => {
                    self.with_core(|core| core.handle_timeout(now()));
                }
                () = self.timer.notified() => {}
                () = stop.cancelled() => return,
            }
        }
    }
}

impl crate::conn::App for Hub {
    fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn max_message(&self) -> usize {
        self.config.limits.max_frame_bytes
    }

    fn gate(&self) -> Option<&crate::fair::Gate> {
        self.gate.as_ref()
    }

    fn messages<R>(
        &self,
        conn: ConnId,
        _outbox: &Outbox,
        f: impl FnOnce(&mut dyn FnMut(crate::conn::Message<'_>)) -> R,
    ) -> R {
        use crate::conn::Message;
        Hub::messages(self, conn, |handle| {
            f(&mut |m| {
                handle(match m {
                    Message::Text(t) => Incoming::Text(t),
                    // The reference accepts binary frames that are UTF-8 as text.
                    Message::Binary(b) => match std::str::from_utf8(b) {
                        Ok(t) => Incoming::Text(t),
                        Err(_) => Incoming::Garbage,
                    },
                })
            })
        })
    }

    fn closed(&self, conn: ConnId) {
        Hub::closed(self, conn);
    }
}

impl Local for Hub {
    fn now(&self) -> Instant {
        now()
    }

    fn cluster(&self) -> Option<Arc<Cluster>> {
        self.cluster.clone()
    }

    fn deliver(&self, ev: ToCore) {
        match ev {
            ToCore::Claim(conn, claim) => self.claim_result(conn, claim),
            ToCore::Remote(msgs) => self.remote(msgs),
            ToCore::Moved(id) => self.moved(&id),
            ToCore::Lost(id) => self.lost(&id),
            ToCore::Fenced { shard, shards } => self.fenced(shard, shards),
            ToCore::Expired(due) => self.expired(&due),
        }
    }

    fn registrations(&self) -> Vec<(Arc<str>, String, u64)> {
        Hub::registrations(self)
    }

    fn direct(&self, msgs: &[crate::cluster::DirectMsg]) -> Vec<bool> {
        Hub::direct(self, msgs)
    }
}

/// One message as the core sees it.
#[derive(Debug)]
pub(crate) enum Incoming<'a> {
    /// A text message, or a binary one that is valid UTF-8 (the reference accepts both).
    Text(&'a str),
    /// A binary message that is not UTF-8.
    Garbage,
}
