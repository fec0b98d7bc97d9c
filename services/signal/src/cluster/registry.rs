//! This node's side of the shared registry as a sans-IO state machine: time, commands from
//! the core and Redis replies in; Redis calls, answers for the core and timeouts out.
//!
//! Drive it like the core: after any [`Registry::handle_input`], drain
//! [`Registry::poll_output`] until it returns [`Output::Timeout`], run what it asked for, and
//! call `handle_input(now, Input::Timeout)` once that instant passes. Two connections
//! ([`Lane`]s) carry its calls: `Main` runs claims, routes, lease renewals and sweeps as
//! pipelined requests, up to [`MAX_INFLIGHT`] in flight on its one connection (Redis serves a
//! connection in order, and answers come back in order), and the setup after a (re)connect
//! (scripts, hello, re-assert) one request at a time; `Inbox` runs this node's blocking
//! `XREAD`, with the trim of what it read last in the same request. A lane's request is
//! answered with [`Input::Reply`] (one result per call) or, when the connection failed,
//! [`Input::Disconnected`] (which stands for every request in flight on it). The registry never reads the clock, never draws
//! randomness and never touches a socket; the module docs of `cluster` explain the model.

use super::direct::{self, DirectMsg};
use super::held::Held;
use super::protocol::{
    BATCH, Call, Cmd, Command, Event, Input, Lane, MAX_INFLIGHT, Output, Reply, Script, Settings,
    ToCore,
};
use super::wire::{self, Entry, MSG_UNAVAILABLE, Seen};
use crate::core::{Claim, ConnId};
use crate::metrics::Metrics;
use kibitz_proto::peerjs::MessageType;
use redis::Value;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often due offline queues are swept.
const SWEEP_EVERY: Duration = Duration::from_millis(100);
/// Ids re-asserted per script call.
const REASSERT_BATCH: usize = 500;
/// How long a cross-node re-attach waits for the old node to confirm.
const ACK_WAIT: Duration = Duration::from_secs(1);
/// Reconnect backoff of the main lane after a failed connect: doubles up to the maximum.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// The fence's margin is this fraction of the lease: it covers timer slack and the time the
/// core needs to close the sockets.
const FENCE_MARGIN_DIV: u32 = 10;
/// Pause before the inbox lane tries again after a failed connect.
const INBOX_RETRY: Duration = Duration::from_millis(200);

/// The main lane.
#[derive(Debug)]
enum Main {
    Down {
        retry_at: Instant,
    },
    Connecting,
    /// Connected and setting up, with this request in flight.
    Busy(Step),
    /// Connected and set up, with these requests in flight (`Exec`, `Renew` or `Sweep`),
    /// oldest first.
    Serving(VecDeque<Step>),
    Stopped,
}

/// The main lane's request in flight.
#[derive(Debug)]
enum Step {
    Load,
    /// Sent at this instant (a lease that holds from then on).
    Hello(Instant),
    /// Waiting for [`Input::Registrations`] (nothing in flight).
    Registrations,
    /// `ReassertBegin` (when `chunk` is false) or a chunk in flight, the rest to follow.
    Reassert {
        chunk: bool,
        rest: VecDeque<Vec<(Arc<str>, String, u64)>>,
    },
    ReassertDone,
    Exec(Vec<Cmd>),
    /// Sent at this instant.
    Renew(Instant),
    Sweep,
    Leave,
}

/// The inbox lane.
#[derive(Debug)]
enum Inbox {
    Down {
        retry_at: Instant,
    },
    Connecting,
    /// A read in flight (after the confirmations and the trim of the last one).
    Reading,
    Stopped,
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct Registry {
    cfg: Settings,
    metrics: Metrics,
    now: Instant,
    out: VecDeque<Output>,
    main: Main,
    inbox: Inbox,
    backoff: Duration,
    /// Commands from the core not yet run, oldest first.
    pending: VecDeque<Cmd>,
    /// Messages to hand over before anything else (after a reconnect or a data loss).
    again: VecDeque<Cmd>,
    /// Messages kept for the registry.
    held: Held,
    /// The registry's epoch as this node last saw it ("" before the first hello).
    epoch: String,
    hellos: u64,
    /// Set by a hello that found the registry's data lost.
    lost_data: bool,
    /// After the registry lost its data: when to hand the delivered part of `recent` again,
    /// and the time of the loss (later messages are not repeated).
    replay_at: Option<(Instant, Instant)>,
    /// Re-attaches from another node, answered once that node confirms it stopped
    /// delivering to its socket: (id, socket, answer, give up at).
    acks: Vec<(String, ConnId, Claim, Instant)>,
    seen: Seen,
    /// Direct copies: this node has a link address (its id names it), what it sends, and
    /// what it received (see `direct`).
    links: bool,
    dout: direct::Out,
    din: direct::In,
    /// The inbox stream id read up to.
    last: String,
    renew_at: Instant,
    sweep_at: Instant,
    reap_at: Instant,
    /// The broker stops: leave once the request in flight is done.
    stopping: bool,
    /// Messages out and in since the last [`Event::Stats`].
    out_n: u64,
    in_n: u64,
    /// Ids this shard may hold now (see [`Registry::set_limit`]).
    limit: usize,
    /// The main lane reaches another Redis than before: its next hello treats this shard's
    /// data as lost.
    failover: bool,
    /// When this node must stop speaking for this shard's ids unless a renewal lands first:
    /// a successful renewal sent at t0 means Redis set the lease's expiry at or after t0, so
    /// the lease holds until at least t0 + lease; the fence falls a margin before that.
    /// `None` while this node holds nothing on the lease (before the first hello, after a
    /// fence).
    fence_at: Option<Instant>,
}

impl Registry {
    /// A registry that starts connecting both lanes at once.
    pub(crate) fn new(now: Instant, cfg: Settings, metrics: Metrics) -> Self {
        let links = direct::link_addr(&cfg.node).is_some();
        let dout = direct::Out::new(cfg.shards);
        let held = Held::new(cfg.max_queued_total, metrics.clone());
        let mut r = Self {
            cfg,
            metrics,
            now,
            out: VecDeque::new(),
            main: Main::Connecting,
            inbox: Inbox::Connecting,
            backoff: BACKOFF_MIN,
            pending: VecDeque::new(),
            again: VecDeque::new(),
            held,
            epoch: String::new(),
            hellos: 0,
            lost_data: false,
            replay_at: None,
            acks: Vec::new(),
            seen: Seen::default(),
            links,
            dout,
            din: direct::In::default(),
            last: "0".to_owned(),
            renew_at: now,
            sweep_at: now,
            reap_at: now,
            stopping: false,
            out_n: 0,
            in_n: 0,
            limit: 0,
            failover: false,
            fence_at: None,
        };
        r.limit = r.cfg.concurrent_limit;
        r.redis(Lane::Main, Command::Connect);
        r.redis(Lane::Inbox, Command::Connect);
        r
    }

    /// Whether the driver should hand over more commands now (otherwise they wait in its
    /// bounded queue).
    pub(crate) fn wants_local(&self) -> bool {
        // With node links every message is taken at once (its direct copy goes then), up to
        // the queue bound; without, a batch's worth waits here and the rest in the queue.
        let room = if self.links {
            self.cfg.max_queued_total.max(BATCH)
        } else {
            BATCH
        };
        self.pending.len() < room
    }

    /// Ids this shard may hold: the cluster-wide limit less what the other shards held when
    /// last asked (so the limit can be passed by the claims landing within one refresh).
    pub(crate) fn set_limit(&mut self, limit: usize) {
        self.limit = limit;
    }

    pub(crate) fn handle_input(&mut self, now: Instant, input: Input) {
        self.now = self.now.max(now);
        match input {
            Input::Local(cmd) => self.local(cmd),
            Input::Registrations(regs) => self.registrations(regs),
            Input::Connected(Lane::Main) => self.main_connected(),
            Input::Connected(Lane::Inbox) => self.inbox_connected(),
            Input::Failover(Lane::Main) => self.failover = true,
            // The new master's stream may lack entries, or number new ones below the last
            // read: read it whole (repeats are dropped by number).
            Input::Failover(Lane::Inbox) => self.last = "0".to_owned(),
            Input::Disconnected(Lane::Main) => self.main_disconnected(),
            Input::Disconnected(Lane::Inbox) => self.inbox_disconnected(),
            Input::Reply(Lane::Main, r) => self.main_reply(r),
            Input::Reply(Lane::Inbox, r) => self.inbox_reply(r),
            Input::Timeout => {}
            Input::Stop => self.stop(),
        }
        // After the input: a renewal answered late still proves the lease from when it was
        // sent, so it may move the fence before it falls.
        self.check_fence();
    }

    /// The next thing to do; [`Output::Timeout`] once there is nothing else.
    pub(crate) fn poll_output(&mut self) -> Output {
        if self.out.is_empty() {
            self.advance();
        }
        match self.out.pop_front() {
            Some(o) => o,
            None => Output::Timeout(self.next_timeout()),
        }
    }

    fn redis(&mut self, lane: Lane, cmd: Command) {
        self.out.push_back(Output::Redis(lane, cmd));
    }

    fn core(&mut self, ev: ToCore) {
        self.out.push_back(Output::Core(ev));
    }

    fn next_timeout(&self) -> Instant {
        let main = match &self.main {
            Main::Down { retry_at } => {
                Some(self.held.due().map_or(*retry_at, |d| d.min(*retry_at)))
            }
            // With no room for another request, the next answer wakes the registry.
            Main::Serving(q) if q.len() >= MAX_INFLIGHT => None,
            Main::Serving(_) => Some(self.renew_at.min(self.sweep_at)),
            _ => None,
        };
        let inbox = match &self.inbox {
            Inbox::Down { retry_at } => Some(*retry_at),
            _ => None,
        };
        [main, inbox, self.fence_at]
            .into_iter()
            .flatten()
            .min()
            // Nothing timed: the next input wakes the registry.
            .unwrap_or(self.now + Duration::from_secs(3600))
    }

    /// A successful lease renewal (or hello) sent at `sent`: the fence moves to a margin
    /// before the lease it proves ends.
    fn leased(&mut self, sent: Instant) {
        let at = sent + self.cfg.lease - self.cfg.lease / FENCE_MARGIN_DIV;
        self.fence_at = Some(self.fence_at.map_or(at, |f| f.max(at)));
    }

    /// Past the fence with no newer renewal: Redis may let this node's lease lapse any
    /// moment, and another node may then grant its ids. Stop speaking for them first: the
    /// core drops them (their clients reconnect and claim again), and the registry starts
    /// over with hello and a re-assert of what the core still holds, which also removes the
    /// dropped ids from Redis if the lease was still alive.
    fn check_fence(&mut self) {
        if self.fence_at.is_none_or(|at| at > self.now) {
            return;
        }
        self.fence_at = None;
        self.metrics.cluster_fences.increment(1);
        tracing::warn!(
            shard = self.cfg.shard,
            "cluster lease not renewed in time; dropping this node's ids in the shard"
        );
        self.core(ToCore::Fenced {
            shard: self.cfg.shard,
            shards: self.cfg.shards,
        });
        match self.main {
            Main::Busy(Step::Leave) | Main::Stopped => {}
            Main::Serving(_) | Main::Busy(_) if !self.stopping => self.stale(),
            Main::Serving(_) | Main::Busy(_) | Main::Down { .. } | Main::Connecting => {}
        }
    }

    /// Starts whatever is due.
    fn advance(&mut self) {
        self.check_fence();
        let now = self.now;
        if let Main::Down { retry_at } = self.main {
            if self.held.due().is_some_and(|d| d <= now) {
                self.expire_waiting();
            }
            if retry_at <= now {
                self.main = Main::Connecting;
                self.redis(Lane::Main, Command::Connect);
            }
        }
        if let Inbox::Down { retry_at } = self.inbox
            && retry_at <= now
        {
            self.inbox = Inbox::Connecting;
            self.redis(Lane::Inbox, Command::Connect);
        }
        if self.stopping {
            match self.main {
                Main::Serving(ref q) if q.is_empty() => {
                    // Give the ids back at once rather than after the lease.
                    self.main = Main::Busy(Step::Leave);
                    self.redis(Lane::Main, Command::Run(vec![Call::Leave]));
                }
                Main::Down { .. } | Main::Connecting => self.main = Main::Stopped,
                Main::Serving(_) | Main::Busy(_) | Main::Stopped => {}
            }
            return;
        }
        while self.start_next() {}
    }

    /// Starts one more main-lane request if there is room and work; whether it did.
    fn start_next(&mut self) -> bool {
        let now = self.now;
        let Main::Serving(q) = &self.main else {
            return false;
        };
        if q.len() >= MAX_INFLIGHT {
            return false;
        }
        if !self.again.is_empty() {
            let n = self.again.len().min(BATCH);
            let batch: Vec<Cmd> = self.again.drain(..n).collect();
            self.exec(batch);
        } else if self.renew_at <= now {
            self.renew_at = next_tick(self.renew_at, now, self.cfg.lease / 3);
            let mut calls = vec![Call::Renew, Call::Stats];
            // Lapsed nodes are reaped soon after their lease ends (their unread messages are
            // routed again with their deadlines), but not in the first lease after this node
            // was set up, so nodes coming back from the same outage can re-assert first.
            if self.reap_at <= now {
                self.reap_at = now + self.cfg.lease / 3;
                calls.push(Call::Reap);
            }
            self.run(Step::Renew(now), calls);
        } else if self.sweep_at <= now {
            self.sweep_at = next_tick(self.sweep_at, now, SWEEP_EVERY);
            // Claims whose old node never confirmed (it stalled or lost the registry):
            // answered anyway.
            let (due, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.acks)
                .into_iter()
                .partition(|a| a.3 <= now);
            self.acks = keep;
            for (_, conn, claim, _) in due {
                self.core(ToCore::Claim(conn, claim));
            }
            self.din.expire(now);
            self.run(Step::Sweep, vec![Call::Sweep]);
        } else if !self.pending.is_empty() {
            let n = self.pending.len().min(BATCH);
            let mut batch: Vec<Cmd> = self.pending.drain(..n).collect();
            for cmd in &mut batch {
                if let Cmd::Forward(_, seq) = cmd {
                    *seq = self.held.number(*seq);
                }
            }
            self.exec(batch);
        } else {
            return false;
        }
        true
    }

    /// Puts a request in flight while serving.
    fn run(&mut self, step: Step, calls: Vec<Call>) {
        if let Main::Serving(q) = &mut self.main {
            q.push_back(step);
            self.redis(Lane::Main, Command::Run(calls));
        }
    }

    fn local(&mut self, mut cmd: Cmd) {
        // A message's queue deadline counts from when the registry took it, and stays.
        if let Cmd::Forward(f, seq) = &mut cmd {
            f.deadline.get_or_insert(self.now + f.ttl);
            // Numbered on arrival (in the order the core sent them), so a direct copy can
            // go at once, whatever Redis is doing.
            if !matches!(self.main, Main::Stopped) {
                *seq = self.held.number(*seq);
                self.direct_copy(f, *seq);
            }
        }
        match self.main {
            Main::Down { .. } => self.offline(cmd),
            Main::Stopped => match cmd {
                Cmd::Claim { conn, .. } => {
                    self.core(ToCore::Claim(conn, Claim::Unavailable(MSG_UNAVAILABLE)));
                }
                Cmd::Probe(f) => self.out.push_back(Output::Probed(f, false)),
                Cmd::Count => self.out.push_back(Output::Counted(None)),
                Cmd::Release { .. } | Cmd::Forward(..) => {}
            },
            _ => self.pending.push_back(cmd),
        }
    }

    /// A copy of message `n` for the node holding its receiver, when that is known and so
    /// is the sender's previous message to it (see `direct`).
    fn direct_copy(&mut self, f: &crate::core::Forward, n: u64) {
        if !self.links || f.requeue || f.notice {
            return;
        }
        if let Some((to, prev)) = self.dout.sent(&self.cfg.node, &f.src, &f.dst, n) {
            self.metrics.cluster_direct_out.increment(1);
            self.out.push_back(Output::Direct(
                to,
                DirectMsg {
                    shard: self.cfg.shard as u32,
                    n,
                    prev,
                    kind: f.kind,
                    src: f.src.to_string(),
                    dst: f.dst.clone(),
                    text: f.text.clone(),
                },
            ));
        }
    }

    /// The prefix of `node`'s message numbers in this shard.
    fn sender_key(&self, node: &str) -> String {
        if self.cfg.shards > 1 {
            format!("{node}.{}", self.cfg.shard)
        } else {
            node.to_owned()
        }
    }

    /// Whether direct copy `m` from `node` may be delivered now: not seen, and its sender's
    /// previous message to the same id delivered here already (or among `earlier`, the
    /// numbers passed earlier in the same batch).
    pub(crate) fn direct_ok(&self, node: &str, m: &DirectMsg, earlier: &[u64]) -> bool {
        if !self.links {
            return false;
        }
        let key = self.sender_key(node);
        if self.seen.contains(&format!("{key}.{}", m.n)) {
            return false;
        }
        let prev_seen =
            earlier.contains(&m.prev) || self.seen.contains(&format!("{key}.{}", m.prev));
        self.din.may_deliver(&key, m.n, m.prev, prev_seen)
    }

    /// Direct copy `n` from `node` was delivered: its Redis copy is a repeat.
    pub(crate) fn direct_delivered(&mut self, node: &str, n: u64) {
        let key = self.sender_key(node);
        self.seen.fresh(&format!("{key}.{n}"));
        self.din.delivered(self.now, &key, n);
    }

    /// Registry down: refuse claims, keep messages (bounded) until their deadline.
    fn offline(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Claim { conn, .. } => {
                self.core(ToCore::Claim(conn, Claim::Unavailable(MSG_UNAVAILABLE)));
            }
            // Re-asserting after the outage replaces this node's id set wholesale.
            Cmd::Release { .. } => {}
            Cmd::Forward(fwd, seq) => {
                let seq = self.held.number(seq);
                self.held.wait(self.now, fwd, seq);
            }
            // Unknown whether the sender is back: the notice goes (a spurious LEAVE rather
            // than a lost one).
            Cmd::Probe(fwd) => self.out.push_back(Output::Probed(fwd, false)),
            Cmd::Count => self.out.push_back(Output::Counted(None)),
        }
    }

    /// Messages whose deadline passed while the registry was away get their EXPIREs.
    fn expire_waiting(&mut self) {
        let due = self.held.expire_waiting(self.now);
        if !due.is_empty() {
            self.core(ToCore::Expired(due));
        }
    }

    // ---- the main lane ----

    fn main_connected(&mut self) {
        if !matches!(self.main, Main::Connecting) {
            return;
        }
        let load = Script::ALL.iter().map(|s| Call::Load(*s)).collect();
        self.main = Main::Busy(Step::Load);
        self.redis(Lane::Main, Command::Run(load));
    }

    fn main_disconnected(&mut self) {
        match std::mem::replace(&mut self.main, Main::Connecting) {
            Main::Connecting => {
                tracing::warn!("cluster registry unreachable");
                self.out.push_back(Output::Event(Event::Up(false)));
                self.offline_all();
                self.main = Main::Down {
                    retry_at: self.now + self.backoff,
                };
                self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
            }
            Main::Busy(Step::Leave) | Main::Stopped => self.main = Main::Stopped,
            main @ Main::Down { .. } => self.main = main,
            Main::Serving(q) => {
                self.main = Main::Serving(q);
                self.broken();
            }
            Main::Busy(_) => self.broken(),
        }
    }

    /// The requests in flight will not be answered (the connection is dropped): their
    /// batches are unanswered, oldest first.
    fn abandon(&mut self) {
        if let Main::Serving(q) = std::mem::replace(&mut self.main, Main::Connecting) {
            for step in q {
                if let Step::Exec(batch) = step {
                    self.unanswered(batch);
                }
            }
        }
    }

    /// A batch whose fate is unknown: messages wait for the next connection, claims are
    /// refused.
    fn unanswered(&mut self, batch: Vec<Cmd>) {
        for cmd in batch {
            match cmd {
                Cmd::Claim { conn, .. } => {
                    self.core(ToCore::Claim(conn, Claim::Unavailable(MSG_UNAVAILABLE)));
                }
                Cmd::Release { .. } => {}
                Cmd::Forward(f, seq) => self.held.wait(self.now, f, seq),
                Cmd::Probe(f) => self.out.push_back(Output::Probed(f, false)),
                Cmd::Count => self.out.push_back(Output::Counted(None)),
            }
        }
    }

    /// The connection failed: reconnect at once, holding messages meanwhile.
    fn broken(&mut self) {
        tracing::warn!("cluster registry connection lost");
        self.out.push_back(Output::Event(Event::Up(false)));
        self.abandon();
        self.hold_again();
        self.offline_all();
        self.main = Main::Connecting;
        self.redis(Lane::Main, Command::Connect);
    }

    /// This node's lease lapsed (the registry restarted or the node stalled): start over
    /// with hello and re-assert on a fresh connection.
    fn stale(&mut self) {
        tracing::warn!("cluster lease lapsed; re-asserting this node's ids");
        self.backoff = BACKOFF_MIN;
        self.abandon();
        self.hold_again();
        self.main = Main::Connecting;
        self.redis(Lane::Main, Command::Connect);
    }

    /// Whatever was not tried yet waits for the next connection too.
    fn hold_again(&mut self) {
        for cmd in std::mem::take(&mut self.again) {
            if let Cmd::Forward(f, seq) = cmd {
                self.held.wait(self.now, f, seq);
            }
        }
    }

    fn offline_all(&mut self) {
        for cmd in std::mem::take(&mut self.pending) {
            self.offline(cmd);
        }
        self.expire_waiting();
    }

    fn main_reply(&mut self, results: Vec<Reply>) {
        let step = match &mut self.main {
            Main::Busy(Step::Registrations) => return,
            Main::Serving(q) => match q.pop_front() {
                Some(step) => step,
                None => return,
            },
            Main::Busy(_) => match std::mem::replace(&mut self.main, Main::Connecting) {
                Main::Busy(step) => step,
                _ => return,
            },
            _ => return,
        };
        match step {
            Step::Exec(batch) => return self.exec_reply(batch, results),
            Step::Leave => {
                self.main = Main::Stopped;
                return;
            }
            _ => {}
        }
        if results.iter().any(Result::is_err) {
            return self.broken();
        }
        let mut results = results.into_iter().map(|r| r.unwrap_or(Value::Nil));
        match step {
            Step::Load => {
                self.hellos += 1;
                let fresh = format!("{}-{}", self.cfg.node, self.hellos);
                self.main = Main::Busy(Step::Hello(self.now));
                let known = self.epoch.clone();
                let force = self.failover;
                self.redis(
                    Lane::Main,
                    Command::Run(vec![Call::Hello {
                        known,
                        fresh,
                        force,
                    }]),
                );
            }
            Step::Hello(sent) => {
                let v = results.next().unwrap_or(Value::Nil);
                if wire::text_tag(&v).as_deref() == Some("shards") {
                    let theirs = wire::items(v).into_iter().nth(1).and_then(wire::text);
                    let msg = format!(
                        "this node spreads the registry over {} shards but the cluster uses {}: every node needs the same --redis-shards",
                        self.cfg.shards,
                        theirs.unwrap_or_default()
                    );
                    self.main = Main::Stopped;
                    self.inbox = Inbox::Stopped;
                    self.out.push_back(Output::Event(Event::Fatal(msg)));
                    return;
                }
                let Some(epoch) = wire::text(v) else {
                    return self.broken();
                };
                self.leased(sent);
                if !self.epoch.is_empty() && self.epoch != epoch {
                    tracing::warn!(
                        shard = self.cfg.shard,
                        "cluster registry lost its data; claims pause for one lease"
                    );
                    self.lost_data = true;
                }
                if std::mem::take(&mut self.failover) {
                    tracing::warn!(
                        shard = self.cfg.shard,
                        "cluster registry shard failed over; claims pause for one lease"
                    );
                    self.lost_data = true;
                }
                self.epoch = epoch;
                self.metrics.reasserts.increment(1);
                self.main = Main::Busy(Step::Registrations);
                self.out.push_back(Output::Event(Event::NeedRegistrations));
            }
            Step::Reassert { chunk, rest } => {
                if chunk {
                    self.reasserted(results.next().unwrap_or(Value::Nil));
                }
                self.reassert_next(rest);
            }
            Step::ReassertDone => self.serve(),
            Step::Renew(sent) => {
                match results.next().as_ref().and_then(wire::int) {
                    Some(0) => return self.stale(),
                    Some(_) => {
                        self.metrics.lease_renewals.increment(1);
                        self.leased(sent);
                    }
                    None => return self.broken(),
                }
                if let Some(Value::Array(stats)) = results.next()
                    && let [nodes, ids] = &stats[..]
                {
                    let ev = Event::Stats {
                        nodes: wire::int(nodes).unwrap_or(0).max(0) as u64,
                        ids: wire::int(ids).unwrap_or(0).max(0) as u64,
                        sent: std::mem::take(&mut self.out_n),
                        read: std::mem::take(&mut self.in_n),
                    };
                    self.out.push_back(Output::Event(ev));
                }
            }
            Step::Sweep => {
                let due: Vec<(String, Vec<String>)> =
                    wire::items(results.next().unwrap_or(Value::Nil))
                        .into_iter()
                        .filter_map(|q| {
                            let mut it = wire::items(q).into_iter();
                            let dst = it.next().and_then(wire::text)?;
                            Some((dst, it.filter_map(wire::text).collect()))
                        })
                        .collect();
                if !due.is_empty() {
                    self.core(ToCore::Expired(due));
                }
                self.replay_if_due();
            }
            Step::Registrations | Step::Exec(_) | Step::Leave => {}
        }
    }

    fn registrations(&mut self, regs: Vec<(Arc<str>, String, u64)>) {
        if !matches!(self.main, Main::Busy(Step::Registrations)) {
            return;
        }
        let rest = regs.chunks(REASSERT_BATCH).map(<[_]>::to_vec).collect();
        self.main = Main::Busy(Step::Reassert { chunk: false, rest });
        self.redis(Lane::Main, Command::Run(vec![Call::ReassertBegin]));
    }

    fn reassert_next(&mut self, mut rest: VecDeque<Vec<(Arc<str>, String, u64)>>) {
        match rest.pop_front() {
            Some(chunk) => {
                self.main = Main::Busy(Step::Reassert { chunk: true, rest });
                self.redis(Lane::Main, Command::Run(vec![Call::Reassert(chunk)]));
            }
            None => {
                self.main = Main::Busy(Step::ReassertDone);
                self.redis(Lane::Main, Command::Run(vec![Call::ReassertDone]));
            }
        }
    }

    /// One re-assert chunk's answer: ids lost meanwhile, and messages queued for the others.
    fn reasserted(&mut self, v: Value) {
        for r in wire::items(v) {
            let mut it = wire::items(r).into_iter();
            let tag = it.next().and_then(wire::text).unwrap_or_default();
            let Some(id) = it.next().and_then(wire::text) else {
                continue;
            };
            if tag == "lost" {
                self.metrics.leases_lost.increment(1);
                tracing::warn!("an id held here was taken elsewhere during a registry outage");
                self.core(ToCore::Lost(id));
            } else {
                let msgs: Vec<_> = wire::queued(it, &mut self.seen)
                    .into_iter()
                    .map(|(src, text)| (MessageType::Offer, src, id.clone(), text))
                    .collect();
                if !msgs.is_empty() {
                    self.core(ToCore::Remote(msgs));
                }
            }
        }
    }

    /// Set up: serve the core, after handing over what waited.
    fn serve(&mut self) {
        let t = self.now;
        self.out.push_back(Output::Event(Event::Up(true)));
        tracing::info!(node = %self.cfg.node, "cluster registry connected");
        // If Redis lost its data, what this node handed it within one queue lifetime may be
        // gone (unread inbox entries, offline queues): hand it again (receivers drop
        // repeats). Then the messages that waited for the registry, in order.
        if std::mem::take(&mut self.lost_data) {
            // Offline queues died with Redis: their messages go back at once (still within
            // their deadline, which they keep). Delivered ones go again after one lease, when
            // every live node has re-asserted its ids, so they meet their receiver's inbox,
            // which drops what it already had, rather than a queue.
            self.replay_at = Some((t + self.cfg.lease, t));
            // Queues whose deadline passed while Redis was away: their senders get the
            // EXPIRE the sweep would have sent.
            let (again, due) = self.held.after_loss(t);
            self.again.extend(again);
            if !due.is_empty() {
                self.core(ToCore::Expired(due));
            }
        }
        let waiting = self.held.take_waiting(t);
        self.again.extend(waiting);
        self.renew_at = t;
        self.sweep_at = t;
        self.reap_at = t + self.cfg.lease;
        self.main = Main::Serving(VecDeque::new());
    }

    /// One lease after a data loss: hand the delivered messages of before the loss again.
    fn replay_if_due(&mut self) {
        let now = self.now;
        let Some((_, lost)) = self.replay_at.take_if(|(at, _)| *at <= now) else {
            return;
        };
        let again = self.held.replay(now, lost);
        tracing::warn!(
            messages = again.len(),
            "handing recent messages to the registry again"
        );
        self.again.extend(again);
    }

    /// Runs a batch in one pipeline: claims and releases one call each, each run of
    /// messages one route call.
    fn exec(&mut self, batch: Vec<Cmd>) {
        let mut calls = Vec::new();
        for cmd in &batch {
            match cmd {
                Cmd::Claim { id, token, .. } => calls.push(Call::Claim {
                    id: id.clone(),
                    token: token.clone(),
                    limit: self.limit,
                }),
                Cmd::Probe(f) => calls.push(Call::Probe { id: f.src.clone() }),
                Cmd::Count => calls.push(Call::Stats),
                Cmd::Release { id, reg } => calls.push(Call::Release {
                    id: id.clone(),
                    reg: *reg,
                }),
                Cmd::Forward(fwd, seq) => {
                    // The queue gets what is left of the message's lifetime.
                    let mut fwd = fwd.clone();
                    if let Some(d) = fwd.deadline {
                        fwd.ttl = d
                            .saturating_duration_since(self.now)
                            .max(Duration::from_millis(1));
                    }
                    match calls.last_mut() {
                        Some(Call::Route(msgs)) => msgs.push((fwd, *seq)),
                        _ => calls.push(Call::Route(vec![(fwd, *seq)])),
                    }
                }
            }
        }
        let routes = calls.iter().filter(|c| matches!(c, Call::Route(_))).count();
        self.metrics.cluster_out_batches.increment(routes as u64);
        self.run(Step::Exec(batch), calls);
    }

    /// One result per command of `batch`, from one per call of its pipeline (`None`: the
    /// answer does not fit the batch).
    fn per_command(batch: &[Cmd], results: Vec<Reply>) -> Option<Vec<Reply>> {
        let mut out = Vec::with_capacity(batch.len());
        let mut results = results.into_iter();
        let mut i = 0;
        while i < batch.len() {
            let r = results.next()?;
            if !matches!(batch[i], Cmd::Forward(..)) {
                out.push(r);
                i += 1;
                continue;
            }
            let run = batch[i..]
                .iter()
                .take_while(|c| matches!(c, Cmd::Forward(..)))
                .count();
            match r {
                Ok(v) => {
                    let each = wire::items(v);
                    if each.len() != run {
                        return None;
                    }
                    out.extend(each.into_iter().map(Ok));
                }
                Err(()) => out.extend(std::iter::repeat_n(Err(()), run)),
            }
            i += run;
        }
        results.next().is_none().then_some(out)
    }

    fn exec_reply(&mut self, batch: Vec<Cmd>, results: Vec<Reply>) {
        let Some(results) = Self::per_command(&batch, results) else {
            self.unanswered(batch);
            return self.broken();
        };
        let mut stale = false;
        for (cmd, r) in batch.into_iter().zip(results) {
            match (cmd, r) {
                (Cmd::Claim { conn, id, .. }, Ok(v)) => {
                    if wire::text_tag(&v).as_deref() == Some("stale") {
                        stale = true;
                    }
                    match wire::parse_claim(v, &mut self.seen) {
                        // Re-attached from another node: answer once that node stopped
                        // delivering to its socket, so no relay reaches the old socket after
                        // the new one is in use.
                        (claim, Some(_from)) => {
                            self.acks
                                .push((id.to_string(), conn, claim, self.now + ACK_WAIT));
                        }
                        (claim, None) => self.core(ToCore::Claim(conn, claim)),
                    }
                }
                (Cmd::Claim { conn, .. }, Err(())) => {
                    stale = true;
                    self.core(ToCore::Claim(conn, Claim::Unavailable(MSG_UNAVAILABLE)));
                }
                (Cmd::Forward(f, seq), Ok(v)) => match wire::text(v).as_deref() {
                    Some(r) if r.starts_with("sent") => {
                        if self.links && !f.requeue {
                            let owner = r.strip_prefix("sent:").filter(|o| !o.is_empty());
                            self.dout.routed(&f.dst, owner);
                        }
                        self.out_n += 1;
                        self.metrics.cluster_out.increment(1);
                        self.held.remember(self.now, f, seq, false);
                    }
                    Some("queued") => {
                        if self.links {
                            self.dout.routed(&f.dst, None);
                        }
                        self.held.remember(self.now, f, seq, true);
                    }
                    _ => {}
                },
                (Cmd::Forward(f, seq), Err(())) => {
                    stale = true;
                    self.held.wait(self.now, f, seq);
                }
                (Cmd::Probe(f), r) => {
                    let held = r.ok().as_ref().and_then(wire::int) == Some(1);
                    self.out.push_back(Output::Probed(f, held));
                }
                (Cmd::Count, r) => {
                    let ids = match r {
                        Ok(Value::Array(stats)) => stats.get(1).and_then(wire::int),
                        _ => None,
                    };
                    let ids = ids.map(|n| n.max(0) as u64);
                    self.out.push_back(Output::Counted(ids));
                }
                (Cmd::Release { .. }, _) => {}
            }
        }
        if stale {
            // A script error (NOSCRIPT after a registry restart, or a lapsed lease).
            self.stale();
        }
    }

    fn stop(&mut self) {
        self.stopping = true;
        self.inbox = Inbox::Stopped;
    }

    /// Whether the registry is done after [`Input::Stop`] (it left, or could not).
    pub(crate) fn is_stopped(&self) -> bool {
        matches!(self.main, Main::Stopped)
    }

    // ---- the inbox lane ----

    /// Reads on, after `calls` (in the same request, so a busy inbox is read back to back).
    fn read(&mut self, mut calls: Vec<Call>) {
        self.inbox = Inbox::Reading;
        let last = self.last.clone();
        calls.push(Call::Read { last });
        self.redis(Lane::Inbox, Command::Run(calls));
    }

    fn inbox_connected(&mut self) {
        if matches!(self.inbox, Inbox::Connecting) {
            self.read(Vec::new());
        }
    }

    fn inbox_disconnected(&mut self) {
        match self.inbox {
            Inbox::Connecting => {
                self.inbox = Inbox::Down {
                    retry_at: self.now + INBOX_RETRY,
                };
            }
            Inbox::Reading => self.inbox_reconnect(),
            Inbox::Down { .. } | Inbox::Stopped => {}
        }
    }

    fn inbox_reconnect(&mut self) {
        self.inbox = Inbox::Connecting;
        self.redis(Lane::Inbox, Command::Connect);
    }

    fn inbox_reply(&mut self, results: Vec<Reply>) {
        if !matches!(self.inbox, Inbox::Reading) {
            return;
        }
        // The read is the request's last call (a failed trim or confirmation before it is
        // harmless: the next trim covers it, and a re-attach is answered after ACK_WAIT).
        let Some(Ok(v)) = results.into_iter().last() else {
            return self.inbox_reconnect();
        };
        let (last, entries) = wire::inbox_entries(v);
        if let Some(last) = last {
            self.last = last;
        }
        let mut msgs = Vec::new();
        let mut moved = Vec::new();
        let mut acked = Vec::new();
        for e in entries {
            match e {
                Entry::Message(kind, src, dst, text, mid) => {
                    // The Redis copy of a message delivered direct is a repeat.
                    let twin = match direct::split_mid(&mid) {
                        Some((sender, n)) if self.links => self.din.read(sender, n),
                        _ => false,
                    };
                    if self.seen.fresh(&mid) && !twin {
                        msgs.push((kind, src, dst, text));
                    }
                }
                Entry::Moved(id, node) => moved.push((id, node)),
                Entry::Acked(id) => acked.push(id),
            }
        }
        if msgs.is_empty() && moved.is_empty() && acked.is_empty() {
            return self.read(Vec::new());
        }
        for id in acked {
            if let Some(i) = self.acks.iter().position(|a| a.0 == id) {
                let (_, conn, claim, _) = self.acks.remove(i);
                self.core(ToCore::Claim(conn, claim));
            }
        }
        let mut calls = Vec::new();
        for (id, node) in moved {
            self.core(ToCore::Moved(id.clone()));
            // Tell the new holder this node no longer delivers to its socket.
            calls.push(Call::Ack { to: node, id });
        }
        if !msgs.is_empty() {
            self.in_n += msgs.len() as u64;
            self.metrics.cluster_in_batches.increment(1);
            self.core(ToCore::Remote(msgs));
        }
        // Entries up to the last one read are done with.
        calls.push(Call::Trim {
            upto: self.last.clone(),
        });
        self.read(calls);
    }
}

/// A periodic timer's next instant: on schedule, or one period after a late tick.
fn next_tick(at: Instant, now: Instant, every: Duration) -> Instant {
    if at + every > now {
        at + every
    } else {
        now + every
    }
}
