//! The core's vocabulary: the socket numbers, configuration and outputs the driver and the
//! core exchange.

use super::notices::RoomNotices;
use kibitz_proto::peerjs::MessageType;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A socket, numbered by the I/O layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// Why the broker closes a socket; the I/O layer turns it into a close frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// After an admission error, as the reference does: a close frame with no status (1005).
    Rejected,
    /// No `HEARTBEAT` within `alive_timeout` (also no status, as the reference).
    Dead,
    /// Takeover mode: a newer socket with the same id and token replaced this one.
    Replaced,
    /// Too many messages per second (1008).
    RateLimited,
    /// Repeated frames that are not PeerJS JSON (1007).
    Garbage,
    /// Cluster mode: the shared registry gave this socket's id to another client (after a
    /// registry outage), so the socket no longer holds it.
    Lost,
    /// Cluster mode: this node could not renew its registry lease in time, so another node
    /// may grant the id: the socket stops speaking for it (the client reconnects and claims
    /// again).
    Fenced,
}

/// What the core asks the I/O layer to do, one [`Broker::poll_output`] at a time.
///
/// [`Broker::poll_output`]: super::Broker::poll_output
#[derive(Debug, PartialEq, Eq)]
pub enum Output {
    /// Send a text frame.
    Send {
        /// To this socket.
        conn: ConnId,
        /// The frame.
        text: String,
    },
    /// Close the socket after what was sent before.
    Close {
        /// This socket.
        conn: ConnId,
        /// Why.
        reason: CloseReason,
    },
    /// Cluster mode: claim `id` for `conn` in the shared registry; answer with
    /// [`Broker::handle_claim`](super::Broker::handle_claim).
    Claim {
        /// The socket waiting for the answer.
        conn: ConnId,
        /// The id it asked for.
        id: Arc<str>,
        /// Its token.
        token: String,
    },
    /// Cluster mode: this node's registration of `id` (registry number `reg`) ended.
    Release {
        /// The id.
        id: Arc<str>,
        /// The registry's registration number.
        reg: u64,
    },
    /// Cluster mode: deliver through the shared registry (to the node holding `dst`, or into
    /// its offline queue).
    Forward(Forward),
    /// Nothing more to do now: call [`Broker::handle_timeout`] at this time, or earlier on
    /// any input (an early call is harmless). Returned once every other output is drained.
    ///
    /// [`Broker::handle_timeout`]: super::Broker::handle_timeout
    Timeout(Instant),
}

/// A message the core cannot deliver on this node (cluster mode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    /// Its type (LEAVE and EXPIRE are dropped, not queued, when `dst` is not held).
    pub kind: MessageType,
    /// The sender's id.
    pub src: Arc<str>,
    /// The destination id.
    pub dst: String,
    /// The rebuilt frame.
    pub text: String,
    /// How long it may wait in an offline queue.
    pub ttl: Duration,
    /// Set when this node was given the message but no longer holds `dst`: queue it even if
    /// the registry still names this node.
    pub requeue: bool,
    /// A room leave notice: drop it if `src` is held again by anyone.
    pub notice: bool,
    /// When its queue lifetime ends: `None` from the core (it ends `ttl` after the registry
    /// takes the message); the registry sets it, so the message keeps its deadline however
    /// often it is taken back and handed over again.
    pub deadline: Option<std::time::Instant>,
}

/// The shared registry's answer to [`Output::Claim`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// A new registration (number `reg`), with the messages queued for the id: (src, frame).
    New {
        /// Registry registration number.
        reg: u64,
        /// Queued messages, oldest first.
        queued: Vec<(String, String)>,
    },
    /// Same id, same token, held here or on another node: the socket re-attaches.
    Reattach {
        /// Registry registration number (unchanged).
        reg: u64,
        /// Queued messages, oldest first.
        queued: Vec<(String, String)>,
    },
    /// Held by another client.
    Taken,
    /// The cluster holds `concurrent_limit` ids.
    Limit,
    /// The registry cannot be reached (or is recovering): refused with this message.
    Unavailable(&'static str),
}

/// Query parameters of a WebSocket connection (last value wins on repeats).
#[derive(Debug, Default, Clone)]
pub struct OpenParams {
    /// `key`.
    pub key: Option<String>,
    /// `id`.
    pub id: Option<String>,
    /// `token`.
    pub token: Option<String>,
}

/// The parts of [`crate::Config`] the core needs.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// PeerJS key.
    pub key: String,
    /// Offline queue lifetime.
    pub expire_timeout: Duration,
    /// Heartbeat liveness.
    pub alive_timeout: Duration,
    /// Maximum registered ids.
    pub concurrent_limit: usize,
    /// Takeover instead of silent re-attach.
    pub takeover: bool,
    /// Messages per second per socket.
    pub msg_rate: u32,
    /// Burst for `msg_rate`.
    pub msg_burst: u32,
    /// Sockets per IP (0 = unlimited).
    pub per_ip_connections: usize,
    /// Queue bound per offline id.
    pub max_queued_per_dst: usize,
    /// Queue bound over all offline ids.
    pub max_queued_total: usize,
    /// Opt-in leave notices for Kibitz room ids; `None` keeps the reference behaviour.
    pub room_notices: Option<RoomNotices>,
    /// Cluster mode: ids, queues and cross-node routing live in a shared registry.
    pub cluster: bool,
}
