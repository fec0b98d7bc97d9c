//! What goes in and out of the registry state machine: the core's
//! commands, the Redis calls (by name, with their arguments), replies, and what the core and
//! the driver must do.

use crate::core::{Claim, ConnId, Forward};
use kibitz_proto::peerjs::MessageType;
use redis::Value;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Commands per pipelined batch.
pub(crate) const BATCH: usize = 512;
/// Entries read from the inbox per `XREAD` (an entry carries up to 200 messages).
pub(crate) const INBOX_COUNT: usize = 128;
/// Main-lane requests in flight at once. They share one connection, which Redis serves in
/// order, so a sender's messages still reach Redis (and their receivers) in order.
pub(crate) const MAX_INFLIGHT: usize = 4;
/// How long one `XREAD` blocks in Redis.
pub(crate) const INBOX_BLOCK_MS: u64 = 500;

/// A command for the registry, in the order the core produced it.
#[derive(Debug)]
pub(crate) enum Cmd {
    Claim {
        conn: ConnId,
        id: Arc<str>,
        token: String,
    },
    Release {
        id: Arc<str>,
        reg: u64,
    },
    /// A message, and its number on this node (0 until the registry numbers it): receivers
    /// drop a number they have seen, so handing a message to Redis twice delivers it once.
    Forward(Forward, u64),
    /// A leave notice whose sender lives in this shard and whose receiver in another: asks
    /// whether the sender is held again (answered with [`Output::Probed`]).
    Probe(Forward),
    /// How many ids the shard holds (answered with [`Output::Counted`]): taken from every
    /// shard before a batch of claims, for the cluster-wide id limit.
    Count,
}

/// What the registry needs to know about this node and the broker's limits.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// This node's id (random per process); message numbers are `{node}.{n}` with one
    /// shard, `{node}.{shard}.{n}` with several.
    pub node: String,
    /// This registry's shard, and how many there are (every node of a cluster agrees).
    pub shard: usize,
    pub shards: usize,
    /// How long this node's ids outlive its last lease renewal.
    pub lease: Duration,
    /// The cluster-wide id limit.
    pub concurrent_limit: usize,
    /// Offline-queue bounds, and the bound on messages kept here (per shard: the total is
    /// the broker's divided among the shards).
    pub max_queued_per_dst: usize,
    pub max_queued_total: usize,
}

impl Settings {
    /// Shard `shard`'s settings, of `shards`: each holds its share of the queue bound.
    pub(crate) fn for_shard(&self, shard: usize, shards: usize) -> Settings {
        let shards = shards.max(1);
        Settings {
            shard,
            shards,
            max_queued_total: self.max_queued_total.div_ceil(shards),
            ..self.clone()
        }
    }
}

/// The two connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lane {
    Main,
    Inbox,
}

/// The registry's Lua scripts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Script {
    Claim,
    Release,
    Route,
    Sweep,
    Hello,
    Reassert,
    ReassertDone,
    Reap,
    List,
    Leave,
    Stats,
    Probe,
    Renew,
}

impl Script {
    pub(crate) const ALL: [Script; 13] = [
        Script::Claim,
        Script::Release,
        Script::Route,
        Script::Sweep,
        Script::Hello,
        Script::Reassert,
        Script::ReassertDone,
        Script::Reap,
        Script::List,
        Script::Leave,
        Script::Stats,
        Script::Probe,
        Script::Renew,
    ];
}

/// One Redis command; the driver adds the key prefix and this node's id.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Call {
    /// `SCRIPT LOAD`.
    Load(Script),
    /// Renew the lease, join, read the epoch (`known` is the last one seen, "" at first).
    /// `force`: this shard's Redis failed over, so treat it as having lost its data.
    Hello {
        known: String,
        fresh: String,
        force: bool,
    },
    /// `limit`: ids this shard may hold (the cluster-wide limit less the other shards' last
    /// known counts).
    Claim {
        id: Arc<str>,
        token: String,
        limit: usize,
    },
    /// Whether `id` is held on a live node.
    Probe {
        id: Arc<str>,
    },
    Release {
        id: Arc<str>,
        reg: u64,
    },
    /// Route these messages (each with its number), in order, in one script call: one
    /// answer per message, and one inbox entry per holding node.
    Route(Vec<(Forward, u64)>),
    Sweep,
    /// Start a re-assert: clear the set of ids it collects.
    ReassertBegin,
    /// (id, token, registry number) of this node's live registrations.
    Reassert(Vec<(Arc<str>, String, u64)>),
    ReassertDone,
    /// Extend this node's lease (0 if it lapsed).
    Renew,
    Stats,
    Reap,
    Leave,
    /// `XREAD` of this node's inbox after stream id `last`.
    Read {
        last: String,
    },
    /// Tell node `to` that this node stopped delivering to `id`.
    Ack {
        to: String,
        id: String,
    },
    /// Drop this node's inbox entries up to `upto`.
    Trim {
        upto: String,
    },
}

/// What a lane should do.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Command {
    /// (Re)connect, dropping the lane's connection if it has one.
    Connect,
    /// Run these calls as one pipeline; answer with one result each.
    Run(Vec<Call>),
}

/// A Redis call's result (a failed call's error is logged by the driver).
pub(crate) type Reply = Result<Value, ()>;

/// Everything the registry learns.
#[derive(Debug)]
pub(crate) enum Input {
    /// A command from the core.
    Local(Cmd),
    /// This node's live registrations, asked for with [`Event::NeedRegistrations`].
    Registrations(Vec<(Arc<str>, String, u64)>),
    Connected(Lane),
    /// The lane's new connection reaches another Redis than its last one did (a failover):
    /// the new master may lack the last writes.
    Failover(Lane),
    /// The lane's connect failed, or its connection broke with a request in flight.
    Disconnected(Lane),
    Reply(Lane, Vec<Reply>),
    /// Some instant given by [`Output::Timeout`] passed.
    Timeout,
    /// The broker stops: give this node's ids back if the registry can be told.
    Stop,
}

/// What the core must learn (each maps onto one of its `handle_*` calls).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ToCore {
    Claim(ConnId, Claim),
    /// Messages from the inbox or an offline queue: (type, src, dst, frame).
    Remote(Vec<(MessageType, String, String, String)>),
    Moved(String),
    Lost(String),
    /// This node's lease in registry shard `shard` (of `shards`) may lapse before a renewal
    /// lands: drop every id of that shard held here, so none speaks from here once another
    /// node may grant it.
    Fenced {
        shard: usize,
        shards: usize,
    },
    /// Expired offline queues: (dst, senders).
    Expired(Vec<(String, Vec<String>)>),
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Event {
    /// Whether the registry answers (for health checks and the status page).
    Up(bool),
    /// Answer with [`Input::Registrations`] before anything else.
    NeedRegistrations,
    /// This shard's live nodes and ids (as of the lease renewal), and the messages handed
    /// out and read since the last time.
    Stats {
        nodes: u64,
        ids: u64,
        sent: u64,
        read: u64,
    },
    /// This node cannot join the registry (its shard count differs from the cluster's).
    Fatal(String),
}

#[derive(Debug)]
pub(crate) enum Output {
    Redis(Lane, Command),
    Core(ToCore),
    Event(Event),
    /// The answer to a [`Cmd::Probe`]: whether the notice's sender is held again.
    Probed(Forward, bool),
    /// The answer to a [`Cmd::Count`] (`None`: the shard did not answer).
    Counted(Option<u64>),
    /// Send this copy of a message to node `.0` over a node link (best effort).
    Direct(Arc<str>, super::direct::DirectMsg),
    /// Nothing more to do until this instant (or the next input).
    Timeout(Instant),
}
