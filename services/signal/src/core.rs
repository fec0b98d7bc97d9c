//! The broker as a sans-IO state machine: peer table, offline queues, liveness, limits.
//!
//! The I/O layer owns sockets and one timer. It tells the core about connections and frames
//! with `now` passed in, then drains [`Broker::poll_output`] until it returns `None`, and
//! sleeps until [`Broker::poll_timeout`] before calling [`Broker::handle_timeout`]. After any
//! mutation, drain the outputs. The core never reads the clock and never touches a socket.
//!
//! Cluster mode ([`CoreConfig::cluster`]): the core still owns this node's sockets, peer
//! table, liveness and rate limits, but the id space, offline queues and routing to other
//! nodes live in a shared registry that the I/O layer drives. The core asks for what it cannot
//! decide alone with [`Output::Claim`], [`Output::Release`] and [`Output::Forward`], and learns
//! the answers through [`Broker::handle_claim`], [`Broker::handle_remote`],
//! [`Broker::handle_moved`], [`Broker::handle_lost`] and [`Broker::handle_expired`]. Relays
//! between two sockets of the same node never leave the core.

use crate::metrics::Metrics;
use kibitz_proto::peerjs::{self, ClientFrame, Dst, MessageType};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::IpAddr;
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
}

/// What the core asks the I/O layer to do.
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
    /// [`Broker::handle_claim`].
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

/// Leave notices for room ids (`kbz-v1-…`): when the socket holding one closes and the id is
/// not registered again within `grace`, every peer that exchanged OFFER/ANSWER/CANDIDATE with
/// it gets `{"type":"LEAVE","src":<room id>,"dst":<peer>}`, so a room's survivors can reclaim
/// at once instead of after seconds of silence. Messages queued for an unheld room id expire
/// after `expire` instead of `expire_timeout`. Never applies to other ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoomNotices {
    /// How long a closed room id may come back before the notice goes out.
    pub grace: Duration,
    /// Offline-queue lifetime for room ids.
    pub expire: Duration,
}

/// The prefix of Kibitz room ids (`peerIdFor`).
pub const ROOM_PREFIX: &str = "kbz-v1-";
/// Peers remembered per room id for its leave notice.
const MAX_CONTACTS: usize = 1024;

/// Malformed frames tolerated on one socket before it is closed with 1007.
const GARBAGE_LIMIT: u32 = 32;
/// Messages a socket may send while its claim is in flight (cluster mode); later ones are
/// dropped and counted.
const MAX_EARLY: usize = 64;

struct Peer {
    token: String,
    conn: ConnId,
    last_ping: Instant,
    /// Registration number: tells a live registration from an older one with the same id.
    seq: u64,
    /// When this registration's entry in `alive` is filed for.
    filed: Instant,
    /// Cluster mode: the registry's registration number (0 on a single node).
    reg: u64,
    /// Cluster mode: the id was re-attached on another node; this entry only lets the old
    /// socket keep speaking for it. It is never delivered to and never released from here.
    moved: bool,
}

struct Conn {
    /// The registration this socket speaks for: the id and its registration number. A
    /// same-token re-attach keeps the registration, so the older socket still speaks for the
    /// id as in the reference; once the registration ends, none of its sockets do.
    id: Option<(Arc<str>, u64)>,
    ip: Option<IpAddr>,
    tokens: f64,
    refilled: Instant,
    garbage: u32,
    /// Cluster mode: the claim in flight (id, token) and what the socket sent meanwhile.
    pending: Option<Box<Pending>>,
}

struct Pending {
    id: Arc<str>,
    token: String,
    early: Vec<String>,
}

/// A leave notice waiting out its grace period.
struct Notice {
    token: String,
    contacts: BTreeSet<Arc<str>>,
    deadline: (Instant, u64),
}

struct Queue {
    deadline: (Instant, u64),
    msgs: VecDeque<(Arc<str>, String)>,
}

/// The broker's state. See the module docs for the run loop.
pub struct Broker {
    cfg: CoreConfig,
    peers: HashMap<Arc<str>, Peer>,
    conns: HashMap<ConnId, Conn>,
    per_ip: HashMap<IpAddr, usize>,
    queues: HashMap<Arc<str>, Queue>,
    /// Queue expiry order.
    queue_deadlines: BTreeMap<(Instant, u64), Arc<str>>,
    queued_total: usize,
    /// One entry per registration: (earliest possible death, seq) -> id. Heartbeats only bump
    /// `last_ping`; an entry that comes due for a live peer is re-filed.
    alive: BTreeMap<(Instant, u64), Arc<str>>,
    seq: u64,
    /// Room ids (when notices are on): who signalled with each registered room id.
    contacts: HashMap<Arc<str>, BTreeSet<Arc<str>>>,
    /// Closed room ids waiting out their grace period, and their deadlines.
    notices: HashMap<Arc<str>, Notice>,
    notice_deadlines: BTreeMap<(Instant, u64), Arc<str>>,
    /// Cluster mode: sockets that closed with a claim in flight, and the id they claimed.
    orphans: HashMap<ConnId, Arc<str>>,
    out: VecDeque<Output>,
    metrics: Metrics,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("peers", &self.peers.len())
            .field("conns", &self.conns.len())
            .field("queued", &self.queued_total)
            .finish_non_exhaustive()
    }
}

impl Broker {
    /// A broker with no peers.
    pub fn new(cfg: CoreConfig, metrics: Metrics) -> Self {
        Self {
            cfg,
            peers: HashMap::new(),
            conns: HashMap::new(),
            per_ip: HashMap::new(),
            queues: HashMap::new(),
            queue_deadlines: BTreeMap::new(),
            queued_total: 0,
            alive: BTreeMap::new(),
            seq: 0,
            contacts: HashMap::new(),
            notices: HashMap::new(),
            notice_deadlines: BTreeMap::new(),
            orphans: HashMap::new(),
            out: VecDeque::new(),
            metrics,
        }
    }

    /// The next thing to do, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When [`Broker::handle_timeout`] should next run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let alive = self.alive.first_key_value().map(|(k, _)| k.0);
        let queue = self.queue_deadlines.first_key_value().map(|(k, _)| k.0);
        let notice = self.notice_deadlines.first_key_value().map(|(k, _)| k.0);
        [alive, queue, notice].into_iter().flatten().min()
    }

    /// Number of registered ids.
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// Whether `id` is registered on this broker (this node, in cluster mode) right now.
    pub fn is_registered(&self, id: &str) -> bool {
        self.peers.get(id).is_some_and(|p| !p.moved)
    }

    /// Cluster mode: this node's live registrations (id, token, registry number), for
    /// re-asserting them after a registry outage.
    pub fn registrations(&self) -> Vec<(Arc<str>, String, u64)> {
        self.peers
            .iter()
            .filter(|(_, p)| !p.moved)
            .map(|(id, p)| (id.clone(), p.token.clone(), p.reg))
            .collect()
    }

    /// Registered ids in registration order (for discovery).
    pub fn peer_ids(&self) -> Vec<String> {
        let mut ids: Vec<(u64, &Arc<str>)> = self.peers.iter().map(|(id, p)| (p.seq, id)).collect();
        ids.sort_unstable();
        ids.into_iter().map(|(_, id)| id.to_string()).collect()
    }

    fn send(&mut self, conn: ConnId, text: String) {
        self.out.push_back(Output::Send { conn, text });
    }

    fn reject(&mut self, conn: ConnId, text: String, reason: &'static str) {
        self.metrics.rejected(reason);
        self.send(conn, text);
        self.out.push_back(Output::Close {
            conn,
            reason: CloseReason::Rejected,
        });
    }

    /// A WebSocket was upgraded on the broker path; admits it or rejects it in-band.
    pub fn handle_open(
        &mut self,
        now: Instant,
        conn: ConnId,
        ip: Option<IpAddr>,
        params: OpenParams,
    ) {
        let nonempty = |v: Option<String>| v.filter(|s| !s.is_empty());
        let (Some(key), Some(id), Some(token)) = (
            nonempty(params.key),
            nonempty(params.id),
            nonempty(params.token),
        ) else {
            return self.reject(
                conn,
                peerjs::error_frame(peerjs::MSG_INVALID_PARAMS),
                "bad_params",
            );
        };
        if key != self.cfg.key {
            return self.reject(
                conn,
                peerjs::error_frame(peerjs::MSG_INVALID_KEY),
                "bad_key",
            );
        }
        if let Some(ip) = ip {
            let live = self.per_ip.get(&ip).copied().unwrap_or(0);
            if self.cfg.per_ip_connections > 0 && live >= self.cfg.per_ip_connections {
                return self.reject(
                    conn,
                    peerjs::error_frame("Too many connections from this address"),
                    "ip_limit",
                );
            }
        }
        let id: Arc<str> = Arc::from(id);
        let existing = self
            .peers
            .get(&id)
            .filter(|p| !p.moved)
            .map(|p| (p.token == token, p.conn));
        match existing {
            Some((false, _)) => {
                return self.reject(conn, peerjs::ID_TAKEN.to_owned(), "id_taken");
            }
            Some((true, old)) => self.reattach_here(now, conn, ip, &id, old),
            None if self.cfg.cluster => {
                // The registry decides; the socket waits (and its early messages with it).
                self.attach(now, conn, ip, None);
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.pending = Some(Box::new(Pending {
                        id: id.clone(),
                        token: token.clone(),
                        early: Vec::new(),
                    }));
                }
                self.out.push_back(Output::Claim { conn, id, token });
                return;
            }
            None => {
                if self.peers.len() >= self.cfg.concurrent_limit {
                    return self.reject(
                        conn,
                        peerjs::error_frame(peerjs::MSG_LIMIT),
                        "concurrent_limit",
                    );
                }
                self.register(now, conn, ip, &id, token, 0);
                self.send(conn, peerjs::OPEN.to_owned());
            }
        }
        self.flush_queue(&id, conn);
    }

    /// Same id, same token, registered on this node: the new socket becomes current.
    fn reattach_here(
        &mut self,
        now: Instant,
        conn: ConnId,
        ip: Option<IpAddr>,
        id: &Arc<str>,
        old: ConnId,
    ) {
        let seq = self.peers.get(id).map_or(0, |p| p.seq);
        self.attach(now, conn, ip, Some((id.clone(), seq)));
        if let Some(peer) = self.peers.get_mut(id) {
            peer.conn = conn;
        }
        if self.cfg.takeover {
            if let Some(c) = self.conns.get_mut(&old) {
                c.id = None;
            }
            self.out.push_back(Output::Close {
                conn: old,
                reason: CloseReason::Replaced,
            });
            self.send(conn, peerjs::OPEN.to_owned());
        }
    }

    /// A new registration of `id` for `conn` (its `Conn` may exist already, as in cluster
    /// mode after the claim).
    fn register(
        &mut self,
        now: Instant,
        conn: ConnId,
        ip: Option<IpAddr>,
        id: &Arc<str>,
        token: String,
        reg: u64,
    ) {
        // Cluster mode: a leftover entry that only let a re-attached socket speak ends here.
        if let Some(old) = self.peers.remove(id) {
            self.alive.remove(&(old.filed, old.seq));
        }
        self.seq += 1;
        let seq = self.seq;
        let filed = now + self.cfg.alive_timeout;
        self.peers.insert(
            id.clone(),
            Peer {
                token,
                conn,
                last_ping: now,
                seq,
                filed,
                reg,
                moved: false,
            },
        );
        self.alive.insert((filed, seq), id.clone());
        self.metrics.peers.set(self.peers.len() as f64);
        self.cancel_notice(id);
        match self.conns.get_mut(&conn) {
            Some(c) => c.id = Some((id.clone(), seq)),
            None => self.attach(now, conn, ip, Some((id.clone(), seq))),
        }
    }

    /// Cluster mode: the registry's answer to [`Output::Claim`] for `conn`.
    pub fn handle_claim(&mut self, now: Instant, conn: ConnId, claim: Claim) {
        let Some(pending) = self.conns.get_mut(&conn).and_then(|c| c.pending.take()) else {
            // The socket closed while its claim was in flight: undo what the registry did.
            if let Claim::New { reg, queued } | Claim::Reattach { reg, queued } = claim {
                self.abandon_claim(conn, reg, queued);
            }
            return;
        };
        let Pending { id, token, early } = *pending;
        let queued = match claim {
            Claim::Taken => return self.reject(conn, peerjs::ID_TAKEN.to_owned(), "id_taken"),
            Claim::Limit => {
                return self.reject(
                    conn,
                    peerjs::error_frame(peerjs::MSG_LIMIT),
                    "concurrent_limit",
                );
            }
            Claim::Unavailable(msg) => {
                return self.reject(conn, peerjs::error_frame(msg), "registry_unavailable");
            }
            Claim::New { reg, queued } => {
                self.register(now, conn, None, &id, token, reg);
                self.send(conn, peerjs::OPEN.to_owned());
                queued
            }
            Claim::Reattach { reg, queued } => {
                let here = self
                    .peers
                    .get(&id)
                    .filter(|p| !p.moved && p.token == token)
                    .map(|p| p.conn);
                match here {
                    // Another socket of this node re-attached first.
                    Some(old) => self.reattach_here(now, conn, None, &id, old),
                    None => {
                        self.register(now, conn, None, &id, token, reg);
                        if self.cfg.takeover {
                            self.send(conn, peerjs::OPEN.to_owned());
                        }
                    }
                }
                queued
            }
        };
        for (_, text) in queued {
            self.send(conn, text);
        }
        for text in early {
            self.handle_message(now, conn, &text);
        }
    }

    /// A claim answered after its socket closed: release it and put its messages back.
    fn abandon_claim(&mut self, conn: ConnId, reg: u64, queued: Vec<(String, String)>) {
        let Some(id) = self.orphans.remove(&conn) else {
            return;
        };
        self.out.push_back(Output::Release {
            id: id.clone(),
            reg,
        });
        for (src, text) in queued {
            self.out.push_back(Output::Forward(Forward {
                // Only OFFER, ANSWER and CANDIDATE are ever queued; the type only matters
                // for LEAVE and EXPIRE.
                kind: MessageType::Offer,
                src: Arc::from(src),
                dst: id.to_string(),
                text,
                ttl: self.cfg.expire_timeout,
                requeue: true,
                notice: false,
            }));
        }
    }
    /// The id is held again within its grace period: no notice. The same client (same token)
    /// keeps the peers it signalled with.
    fn cancel_notice(&mut self, id: &Arc<str>) {
        let Some(notice) = self.notices.remove(id) else {
            return;
        };
        self.notice_deadlines.remove(&notice.deadline);
        let same_client = self.peers.get(id).is_some_and(|p| p.token == notice.token);
        if same_client {
            self.contacts.insert(id.clone(), notice.contacts);
        }
    }

    fn attach(
        &mut self,
        now: Instant,
        conn: ConnId,
        ip: Option<IpAddr>,
        id: Option<(Arc<str>, u64)>,
    ) {
        if let Some(ip) = ip {
            *self.per_ip.entry(ip).or_insert(0) += 1;
        }
        self.conns.insert(
            conn,
            Conn {
                id,
                ip,
                tokens: f64::from(self.cfg.msg_burst),
                refilled: now,
                garbage: 0,
                pending: None,
            },
        );
    }

    fn flush_queue(&mut self, id: &str, conn: ConnId) {
        if let Some(q) = self.queues.remove(id) {
            self.queue_deadlines.remove(&q.deadline);
            self.queued_total -= q.msgs.len();
            self.metrics.queued.set(self.queued_total as f64);
            for (_, text) in q.msgs {
                self.send(conn, text);
            }
        }
    }

    /// A socket closed (for any reason). Frees its id if it was the id's current socket.
    pub fn handle_close(&mut self, now: Instant, conn: ConnId) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        if let Some(ip) = c.ip
            && let Some(n) = self.per_ip.get_mut(&ip)
        {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
        }
        if let Some(p) = c.pending {
            self.orphans.insert(conn, p.id);
        }
        if let Some((id, _)) = c.id
            && self.peers.get(&id).is_some_and(|p| p.conn == conn)
        {
            self.unregister(now, &id);
        }
    }

    fn unregister(&mut self, now: Instant, id: &str) {
        let Some((id, p)) = self.peers.remove_entry(id) else {
            return;
        };
        self.alive.remove(&(p.filed, p.seq));
        self.metrics.peers.set(self.peers.len() as f64);
        if p.moved {
            return;
        }
        if self.cfg.cluster {
            self.out.push_back(Output::Release {
                id: id.clone(),
                reg: p.reg,
            });
        }
        let Some(rn) = self.cfg.room_notices else {
            return;
        };
        if let Some(contacts) = self.contacts.remove(&id)
            && !contacts.is_empty()
        {
            self.seq += 1;
            let deadline = (now + rn.grace, self.seq);
            self.notice_deadlines.insert(deadline, id.clone());
            self.notices.insert(
                id,
                Notice {
                    token: p.token,
                    contacts,
                    deadline,
                },
            );
        }
    }

    /// Remembers that `a` and `b` signalled, for whichever of them is a room id.
    fn note_contact(&mut self, a: &Arc<str>, b: &str) {
        if self.cfg.room_notices.is_none() {
            return;
        }
        for (room, other) in [(a.as_ref(), b), (b, a.as_ref())] {
            if room.starts_with(ROOM_PREFIX) && room != other {
                let Some((key, _)) = self.peers.get_key_value(room) else {
                    continue;
                };
                let key = key.clone();
                let set = self.contacts.entry(key).or_default();
                if set.len() < MAX_CONTACTS {
                    set.insert(Arc::from(other));
                }
            }
        }
    }

    /// A complete text (or UTF-8 binary) message arrived on an admitted socket.
    pub fn handle_message(&mut self, now: Instant, conn: ConnId, text: &str) {
        let rate = f64::from(self.cfg.msg_rate);
        let burst = f64::from(self.cfg.msg_burst);
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let elapsed = now.saturating_duration_since(c.refilled).as_secs_f64();
        c.tokens = (c.tokens + elapsed * rate).min(burst);
        c.refilled = now;
        if c.tokens < 1.0 {
            self.metrics.rejected("rate_limited");
            self.out.push_back(Output::Close {
                conn,
                reason: CloseReason::RateLimited,
            });
            return;
        }
        c.tokens -= 1.0;
        if let Some(p) = c.pending.as_mut() {
            // Cluster mode: the claim is in flight; keep the message for after it.
            if p.early.len() < MAX_EARLY {
                p.early.push(text.to_owned());
            } else {
                self.metrics.rejected("not_registered");
            }
            return;
        }
        let Ok(frame) = ClientFrame::parse(text) else {
            tracing::trace!(conn = conn.0, len = text.len(), "frame is not PeerJS JSON");
            return self.garbage(conn, "malformed");
        };
        // Sizes and types only: the payload never reaches a log.
        tracing::trace!(
            conn = conn.0,
            kind = frame.kind.as_str(),
            len = text.len(),
            "frame"
        );
        let Some((src, seq)) = self.conns.get(&conn).and_then(|c| c.id.clone()) else {
            return;
        };
        let Some(peer) = self.peers.get_mut(&src).filter(|p| p.seq == seq) else {
            // The registration this socket belonged to has ended: it speaks for nobody.
            return self.metrics.rejected("not_registered");
        };
        match frame.kind {
            MessageType::Heartbeat => {
                self.metrics.message(MessageType::Heartbeat);
                peer.last_ping = now;
            }
            kind if kind.is_relayed() => {
                let dst = match frame.dst {
                    Dst::Id(d) => d,
                    Dst::Missing => return self.metrics.rejected("missing_dst"),
                    Dst::Invalid => return self.metrics.rejected("invalid_dst"),
                };
                let text = peerjs::relay_frame(kind, &src, &dst, frame.payload);
                self.metrics.message(kind);
                self.relay(now, kind, src, &dst, text);
            }
            _ => self.metrics.rejected("unknown_type"),
        }
    }

    fn garbage(&mut self, conn: ConnId, reason: &'static str) {
        self.metrics.rejected(reason);
        if let Some(c) = self.conns.get_mut(&conn) {
            c.garbage += 1;
            if c.garbage >= GARBAGE_LIMIT {
                self.out.push_back(Output::Close {
                    conn,
                    reason: CloseReason::Garbage,
                });
            }
        }
    }

    /// A binary message that is not UTF-8, or another protocol-level oddity worth counting.
    pub fn handle_garbage(&mut self, conn: ConnId) {
        self.garbage(conn, "not_utf8");
    }

    fn relay(&mut self, now: Instant, kind: MessageType, src: Arc<str>, dst: &str, text: String) {
        if matches!(
            kind,
            MessageType::Offer | MessageType::Answer | MessageType::Candidate
        ) {
            self.note_contact(&src, dst);
        }
        if let Some(p) = self.peers.get(dst).filter(|p| !p.moved) {
            let conn = p.conn;
            self.send(conn, text);
            return;
        }
        if self.cfg.cluster {
            let ttl = self.queue_ttl(dst);
            self.out.push_back(Output::Forward(Forward {
                kind,
                src,
                dst: dst.to_owned(),
                text,
                ttl,
                requeue: false,
                notice: false,
            }));
            return;
        }
        if matches!(kind, MessageType::Leave | MessageType::Expire) {
            return;
        }
        if self.queued_total >= self.cfg.max_queued_total {
            return self.metrics.rejected("queue_full");
        }
        let queue = match self.queues.get_mut(dst) {
            Some(q) => q,
            None => {
                self.seq += 1;
                let ttl = self.queue_ttl(dst);
                let key = (now + ttl, self.seq);
                let dst: Arc<str> = Arc::from(dst);
                self.queue_deadlines.insert(key, dst.clone());
                self.queues.entry(dst).or_insert(Queue {
                    deadline: key,
                    msgs: VecDeque::new(),
                })
            }
        };
        if queue.msgs.len() >= self.cfg.max_queued_per_dst {
            return self.metrics.rejected("queue_full");
        }
        queue.msgs.push_back((src, text));
        self.queued_total += 1;
        self.metrics.queued.set(self.queued_total as f64);
    }

    /// How long messages for `dst` may wait for it.
    fn queue_ttl(&self, dst: &str) -> Duration {
        match self.cfg.room_notices {
            Some(rn) if dst.starts_with(ROOM_PREFIX) => rn.expire,
            _ => self.cfg.expire_timeout,
        }
    }

    /// Cluster mode: another node (or the registry's offline queue) hands over a message for
    /// `dst`. Delivered if `dst` is held here; otherwise it goes back to the registry.
    pub fn handle_remote(&mut self, kind: MessageType, src: &str, dst: &str, text: String) {
        self.metrics.cluster_in.increment(1);
        if let Some(p) = self.peers.get(dst).filter(|p| !p.moved) {
            let conn = p.conn;
            if matches!(
                kind,
                MessageType::Offer | MessageType::Answer | MessageType::Candidate
            ) {
                let dst: Arc<str> = Arc::from(dst);
                self.note_contact(&dst, src);
            }
            self.send(conn, text);
            return;
        }
        let ttl = self.queue_ttl(dst);
        self.out.push_back(Output::Forward(Forward {
            kind,
            src: Arc::from(src),
            dst: dst.to_owned(),
            text,
            ttl,
            requeue: true,
            notice: false,
        }));
    }

    /// Cluster mode: `id` was re-attached (same token) on another node. With takeover the
    /// socket here is closed; otherwise it keeps speaking for the id, as an older re-attached
    /// socket does on one node, but is no longer delivered to.
    pub fn handle_moved(&mut self, now: Instant, id: &str) {
        let Some(p) = self.peers.get_mut(id).filter(|p| !p.moved) else {
            return;
        };
        p.moved = true;
        let conn = p.conn;
        if self.cfg.takeover {
            if let Some(c) = self.conns.get_mut(&conn) {
                c.id = None;
            }
            self.out.push_back(Output::Close {
                conn,
                reason: CloseReason::Replaced,
            });
            self.unregister(now, id);
        }
    }

    /// Cluster mode: after a registry outage another client holds `id`; this node's socket
    /// for it is closed without releasing anything.
    pub fn handle_lost(&mut self, now: Instant, id: &str) {
        let Some(p) = self.peers.get_mut(id).filter(|p| !p.moved) else {
            return;
        };
        p.moved = true;
        let conn = p.conn;
        if let Some(c) = self.conns.get_mut(&conn) {
            c.id = None;
        }
        self.out.push_back(Output::Close {
            conn,
            reason: CloseReason::Lost,
        });
        self.unregister(now, id);
    }

    /// Cluster mode: the registry expired the offline queue for `dst`; each of `senders` gets
    /// one `EXPIRE`, if it is online.
    pub fn handle_expired(&mut self, now: Instant, dst: &str, senders: &[String]) {
        let dst: Arc<str> = Arc::from(dst);
        for sender in senders {
            self.metrics.expired.increment(1);
            let text = peerjs::relay_frame(MessageType::Expire, &dst, sender, None);
            self.relay(now, MessageType::Expire, dst.clone(), sender, text);
        }
    }

    /// Runs everything due at `now`: queue expiry (one `EXPIRE` per sender) and liveness.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(entry) = self.queue_deadlines.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let dst = entry.remove();
            let Some(q) = self.queues.remove(&dst) else {
                continue;
            };
            self.queued_total -= q.msgs.len();
            self.metrics.queued.set(self.queued_total as f64);
            let mut senders: Vec<Arc<str>> = Vec::new();
            for (src, _) in q.msgs {
                if !senders.contains(&src) {
                    senders.push(src);
                }
            }
            for sender in senders {
                self.metrics.expired.increment(1);
                let text = peerjs::relay_frame(MessageType::Expire, &dst, &sender, None);
                self.relay(now, MessageType::Expire, dst.clone(), &sender, text);
            }
        }
        while let Some(entry) = self.alive.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let ((_, seq), id) = entry.remove_entry();
            let Some(p) = self.peers.get_mut(&id).filter(|p| p.seq == seq) else {
                continue;
            };
            let due = p.last_ping + self.cfg.alive_timeout;
            if due > now {
                p.filed = due;
                self.alive.insert((due, seq), id);
                continue;
            }
            let conn = p.conn;
            self.metrics.rejected("alive_timeout");
            self.out.push_back(Output::Close {
                conn,
                reason: CloseReason::Dead,
            });
            if let Some(q) = self.queues.remove(&id) {
                self.queue_deadlines.remove(&q.deadline);
                self.queued_total -= q.msgs.len();
                self.metrics.queued.set(self.queued_total as f64);
            }
            self.unregister(now, &id);
        }
        while let Some(entry) = self.notice_deadlines.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let room = entry.remove();
            let Some(notice) = self.notices.remove(&room) else {
                continue;
            };
            for peer in notice.contacts {
                self.metrics.leave_notices.increment(1);
                let text = peerjs::relay_frame(MessageType::Leave, &room, &peer, None);
                if self.cfg.cluster {
                    // The room id may be held again on another node: the registry decides.
                    self.out.push_back(Output::Forward(Forward {
                        kind: MessageType::Leave,
                        src: room.clone(),
                        dst: peer.to_string(),
                        text,
                        ttl: self.cfg.expire_timeout,
                        requeue: false,
                        notice: true,
                    }));
                } else {
                    self.relay(now, MessageType::Leave, room.clone(), &peer, text);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> CoreConfig {
        CoreConfig {
            key: "peerjs".into(),
            expire_timeout: Duration::from_secs(5),
            alive_timeout: Duration::from_secs(90),
            concurrent_limit: 3,
            takeover: false,
            msg_rate: 10,
            msg_burst: 20,
            per_ip_connections: 2,
            max_queued_per_dst: 3,
            max_queued_total: 5,
            room_notices: None,
            cluster: false,
        }
    }

    struct Sim {
        b: Broker,
        t0: Instant,
    }

    impl Sim {
        fn new(cfg: CoreConfig) -> Self {
            Self {
                b: Broker::new(cfg, Metrics::new()),
                // Virtual time: a fixed origin, advanced only by the test.
                t0: crate::hub::now(),
            }
        }
        fn at(&self, ms: u64) -> Instant {
            self.t0 + Duration::from_millis(ms)
        }
        fn open(&mut self, ms: u64, conn: u64, id: &str, token: &str) -> Vec<Output> {
            let p = OpenParams {
                key: Some("peerjs".into()),
                id: Some(id.into()),
                token: Some(token.into()),
            };
            self.b.handle_open(self.at(ms), ConnId(conn), None, p);
            self.drain()
        }
        fn msg(&mut self, ms: u64, conn: u64, text: &str) -> Vec<Output> {
            self.b.handle_message(self.at(ms), ConnId(conn), text);
            self.drain()
        }
        fn close(&mut self, ms: u64, conn: u64) -> Vec<Output> {
            self.b.handle_close(self.at(ms), ConnId(conn));
            self.drain()
        }
        fn tick(&mut self, ms: u64) -> Vec<Output> {
            self.b.handle_timeout(self.at(ms));
            self.drain()
        }
        fn drain(&mut self) -> Vec<Output> {
            std::iter::from_fn(|| self.b.poll_output()).collect()
        }
    }

    fn send(conn: u64, text: &str) -> Output {
        Output::Send {
            conn: ConnId(conn),
            text: text.into(),
        }
    }
    fn close(conn: u64, reason: CloseReason) -> Output {
        Output::Close {
            conn: ConnId(conn),
            reason,
        }
    }

    #[test]
    fn queued_messages_follow_open_in_order() {
        let mut s = Sim::new(cfg());
        assert_eq!(s.open(0, 1, "a", "t"), [send(1, peerjs::OPEN)]);
        assert!(
            s.msg(1, 1, r#"{"type":"OFFER","dst":"b","payload":1}"#)
                .is_empty()
        );
        assert!(
            s.msg(2, 1, r#"{"type":"CANDIDATE","dst":"b","payload":2}"#)
                .is_empty()
        );
        assert_eq!(
            s.open(3, 2, "b", "t"),
            [
                send(2, peerjs::OPEN),
                send(2, r#"{"type":"OFFER","src":"a","dst":"b","payload":1}"#),
                send(2, r#"{"type":"CANDIDATE","src":"a","dst":"b","payload":2}"#),
            ]
        );
        assert_eq!(
            s.b.poll_timeout(),
            Some(s.at(90_000)),
            "queue deadline gone"
        );
    }

    #[test]
    fn one_expire_per_sender_at_the_deadline_and_none_for_offline_senders() {
        let mut s = Sim::new(cfg());
        s.open(0, 1, "a", "t");
        s.open(0, 2, "b", "t");
        s.open(0, 3, "c", "t");
        s.msg(100, 1, r#"{"type":"OFFER","dst":"ghost"}"#);
        s.msg(200, 1, r#"{"type":"OFFER","dst":"ghost"}"#);
        s.msg(300, 2, r#"{"type":"OFFER","dst":"ghost"}"#);
        s.msg(300, 3, r#"{"type":"OFFER","dst":"ghost"}"#);
        s.b.handle_close(s.t0, ConnId(3));
        assert_eq!(s.b.poll_timeout(), Some(s.at(5100)));
        assert!(s.tick(5099).is_empty());
        assert_eq!(
            s.tick(5100),
            [
                send(1, r#"{"type":"EXPIRE","src":"ghost","dst":"a"}"#),
                send(2, r#"{"type":"EXPIRE","src":"ghost","dst":"b"}"#),
            ]
        );
        assert_eq!(s.open(6000, 4, "ghost", "t"), [send(4, peerjs::OPEN)]);
    }

    #[test]
    fn admission_errors_in_reference_order() {
        let mut s = Sim::new(cfg());
        s.b.handle_open(s.at(0), ConnId(9), None, OpenParams::default());
        assert_eq!(
            s.drain(),
            [
                send(9, &peerjs::error_frame(peerjs::MSG_INVALID_PARAMS)),
                close(9, CloseReason::Rejected)
            ]
        );
        let p = OpenParams {
            key: Some("PeerJS".into()),
            id: Some("x".into()),
            token: Some("t".into()),
        };
        s.b.handle_open(s.at(0), ConnId(9), None, p);
        assert_eq!(
            s.drain()[0],
            send(9, &peerjs::error_frame(peerjs::MSG_INVALID_KEY))
        );
        s.open(0, 1, "a", "t1");
        assert_eq!(
            s.open(0, 2, "a", "t2"),
            [send(2, peerjs::ID_TAKEN), close(2, CloseReason::Rejected)]
        );
        s.open(0, 3, "b", "t");
        s.open(0, 4, "c", "t");
        assert_eq!(
            s.open(0, 5, "d", "t")[0],
            send(5, &peerjs::error_frame(peerjs::MSG_LIMIT))
        );
        // Re-attach at the limit succeeds, silently.
        assert!(s.open(0, 6, "a", "t1").is_empty());
    }

    #[test]
    fn reattach_routes_to_the_new_socket_and_old_close_keeps_the_id() {
        let mut s = Sim::new(cfg());
        s.open(0, 1, "a", "t");
        s.open(0, 2, "b", "t");
        assert!(s.open(0, 3, "a", "t").is_empty());
        assert_eq!(
            s.msg(1, 2, r#"{"type":"OFFER","dst":"a"}"#),
            [send(3, r#"{"type":"OFFER","src":"b","dst":"a"}"#)]
        );
        // The old socket still speaks for "a".
        assert_eq!(
            s.msg(1, 1, r#"{"type":"OFFER","dst":"b"}"#),
            [send(2, r#"{"type":"OFFER","src":"a","dst":"b"}"#)]
        );
        s.b.handle_close(s.t0, ConnId(1));
        assert!(s.b.is_registered("a"));
        s.b.handle_close(s.t0, ConnId(3));
        assert!(!s.b.is_registered("a"));
    }

    #[test]
    fn an_ended_registration_speaks_for_nobody() {
        let mut s = Sim::new(cfg());
        s.open(0, 1, "a", "t");
        s.open(0, 2, "a", "t"); // re-attach: 1 is superseded but bound
        s.b.handle_close(s.t0, ConnId(2)); // registration ends
        s.open(0, 3, "a", "other"); // someone else takes the id
        s.open(0, 4, "b", "t");
        // The leftover socket cannot send as the new owner of "a".
        assert!(s.msg(1, 1, r#"{"type":"OFFER","dst":"b"}"#).is_empty());
        assert_eq!(
            s.msg(1, 3, r#"{"type":"OFFER","dst":"b"}"#),
            [send(4, r#"{"type":"OFFER","src":"a","dst":"b"}"#)]
        );
    }

    #[test]
    fn takeover_mode_opens_the_new_socket_and_closes_the_old() {
        let mut s = Sim::new(CoreConfig {
            takeover: true,
            ..cfg()
        });
        s.open(0, 1, "a", "t");
        assert_eq!(
            s.open(0, 2, "a", "t"),
            [close(1, CloseReason::Replaced), send(2, peerjs::OPEN)]
        );
        s.open(0, 3, "b", "t");
        assert!(s.msg(1, 1, r#"{"type":"OFFER","dst":"b"}"#).is_empty());
        s.b.handle_close(s.t0, ConnId(1));
        assert!(s.b.is_registered("a"));
    }

    #[test]
    fn liveness_counts_only_heartbeats() {
        let mut s = Sim::new(cfg());
        s.open(0, 1, "a", "t");
        s.open(0, 2, "b", "t");
        s.msg(60_000, 1, r#"{"type":"HEARTBEAT"}"#);
        s.msg(60_000, 2, r#"{"type":"OFFER","dst":"a"}"#);
        assert_eq!(s.tick(90_000), [close(2, CloseReason::Dead)]);
        assert!(!s.b.is_registered("b") && s.b.is_registered("a"));
        assert_eq!(s.b.poll_timeout(), Some(s.at(150_000)));
        assert_eq!(s.tick(150_000), [close(1, CloseReason::Dead)]);
        assert_eq!(s.b.poll_timeout(), None);
    }

    #[test]
    fn limits_rate_queue_and_ip() {
        let mut s = Sim::new(cfg());
        s.open(0, 1, "a", "t");
        for _ in 0..20 {
            assert!(s.msg(0, 1, r#"{"type":"HEARTBEAT"}"#).is_empty());
        }
        assert_eq!(
            s.msg(0, 1, r#"{"type":"HEARTBEAT"}"#),
            [close(1, CloseReason::RateLimited)]
        );
        // Refill: 10/s.
        assert!(s.msg(1000, 1, r#"{"type":"HEARTBEAT"}"#).is_empty());

        let mut s = Sim::new(cfg());
        s.open(0, 1, "a", "t");
        for i in 0..4 {
            s.msg(i, 1, r#"{"type":"OFFER","dst":"x"}"#);
        }
        for i in 0..4 {
            s.msg(i, 1, r#"{"type":"OFFER","dst":"y"}"#);
        }
        assert_eq!(
            s.b.queued_total, 5,
            "3 for x (per-dst cap), 2 for y (total cap)"
        );

        let mut s = Sim::new(cfg());
        let ip: IpAddr = [127, 0, 0, 9].into();
        for (conn, id) in [(1, "a"), (2, "b"), (3, "c")] {
            let p = OpenParams {
                key: Some("peerjs".into()),
                id: Some(id.into()),
                token: Some("t".into()),
            };
            s.b.handle_open(s.at(0), ConnId(conn), Some(ip), p);
        }
        let out = s.drain();
        assert_eq!(out.len(), 4);
        assert_eq!(out[3], close(3, CloseReason::Rejected));
        s.b.handle_close(s.t0, ConnId(1));
        assert!(s.b.per_ip.get(&ip) == Some(&1));
    }

    #[test]
    fn garbage_is_counted_then_closed() {
        let mut s = Sim::new(CoreConfig {
            msg_burst: 1000,
            ..cfg()
        });
        s.open(0, 1, "a", "t");
        for bad in [
            "nope",
            "null",
            "[1]",
            r#"{"type":"OFFER","dst":5}"#,
            r#"{"type":"BOGUS"}"#,
        ] {
            assert!(s.msg(0, 1, bad).is_empty(), "{bad}");
        }
        for _ in 0..GARBAGE_LIMIT - 4 {
            s.msg(0, 1, "\u{0}");
        }
        assert_eq!(s.msg(0, 1, "x"), [close(1, CloseReason::Garbage)]);
    }

    #[test]
    fn leave_and_expire_to_offline_are_dropped() {
        let mut s = Sim::new(cfg());
        s.open(0, 1, "a", "t");
        s.msg(0, 1, r#"{"type":"LEAVE","dst":"ghost"}"#);
        s.msg(0, 1, r#"{"type":"EXPIRE","dst":"ghost"}"#);
        s.msg(0, 1, r#"{"type":"LEAVE"}"#);
        assert_eq!(s.b.queued_total, 0);
        assert!(
            s.b.is_registered("a"),
            "LEAVE without dst does not deregister"
        );
        assert_eq!(
            s.msg(0, 1, r#"{"type":"LEAVE","dst":"a"}"#),
            [send(1, r#"{"type":"LEAVE","src":"a","dst":"a"}"#)]
        );
    }

    fn notices() -> CoreConfig {
        CoreConfig {
            room_notices: Some(RoomNotices {
                grace: Duration::from_secs(1),
                expire: Duration::from_secs(1),
            }),
            concurrent_limit: 10,
            ..cfg()
        }
    }

    const ROOM: &str = "kbz-v1-standup";

    /// The authority holds the room id; two members signalled with it, one did not.
    fn room(cfg: CoreConfig) -> Sim {
        let mut s = Sim::new(cfg);
        s.open(0, 1, ROOM, "auth");
        s.open(0, 2, "p2", "t");
        s.open(0, 3, "p3", "t");
        s.open(0, 4, "p4", "t");
        s.msg(10, 2, r#"{"type":"OFFER","dst":"kbz-v1-standup"}"#);
        s.msg(10, 1, r#"{"type":"ANSWER","dst":"p3"}"#);
        s
    }

    fn leave(conn: u64, dst: &str) -> Output {
        send(
            conn,
            &format!(r#"{{"type":"LEAVE","src":"{ROOM}","dst":"{dst}"}}"#),
        )
    }

    #[test]
    fn room_notices_are_off_by_default() {
        let mut s = room(cfg());
        assert!(s.close(100, 1).is_empty());
        assert!(s.tick(10_000).is_empty());
    }

    #[test]
    fn room_notice_after_the_grace_to_everyone_who_signalled() {
        let mut s = room(notices());
        assert!(s.close(100, 1).is_empty());
        assert_eq!(s.b.poll_timeout(), Some(s.at(1100)));
        assert!(s.tick(1099).is_empty());
        assert_eq!(s.tick(1100), [leave(2, "p2"), leave(3, "p3")]);
        assert!(s.tick(5000).is_empty(), "once");
    }

    #[test]
    fn a_blip_under_the_grace_sends_nothing_and_keeps_the_contacts() {
        let mut s = room(notices());
        s.close(100, 1);
        assert_eq!(s.open(600, 5, ROOM, "auth"), [send(5, peerjs::OPEN)]);
        assert!(s.tick(2000).is_empty());
        // The same client's peers are still remembered for its next close.
        s.close(3000, 5);
        assert_eq!(s.tick(4000), [leave(2, "p2"), leave(3, "p3")]);
    }

    #[test]
    fn a_new_owner_inside_the_grace_cancels_the_notice_and_starts_afresh() {
        let mut s = room(notices());
        s.close(100, 1);
        s.open(600, 5, ROOM, "someone-else");
        assert!(s.tick(2000).is_empty());
        assert!(s.close(3000, 5).is_empty());
        assert!(
            s.tick(5000).is_empty(),
            "nobody signalled with the new owner"
        );
    }

    #[test]
    fn reattach_keeps_the_contacts_and_the_old_socket_closing_changes_nothing() {
        let mut s = room(notices());
        assert!(s.open(50, 5, ROOM, "auth").is_empty(), "silent re-attach");
        assert!(s.close(100, 1).is_empty());
        assert!(s.tick(5000).is_empty(), "the id is still held");
        s.close(6000, 5);
        assert_eq!(s.tick(7000), [leave(2, "p2"), leave(3, "p3")]);
    }

    #[test]
    fn other_ids_never_get_notices_and_room_queues_expire_sooner() {
        let mut s = Sim::new(notices());
        s.open(0, 1, "plain", "t");
        s.open(0, 2, "p2", "t");
        s.msg(10, 2, r#"{"type":"OFFER","dst":"plain"}"#);
        s.close(100, 1);
        assert!(s.tick(10_000).is_empty());
        s.msg(20_000, 2, r#"{"type":"OFFER","dst":"kbz-v1-gone"}"#);
        s.msg(20_000, 2, r#"{"type":"OFFER","dst":"plain-gone"}"#);
        assert_eq!(
            s.tick(21_000),
            [send(
                2,
                r#"{"type":"EXPIRE","src":"kbz-v1-gone","dst":"p2"}"#
            )]
        );
        assert_eq!(
            s.tick(25_000),
            [send(
                2,
                r#"{"type":"EXPIRE","src":"plain-gone","dst":"p2"}"#
            )]
        );
    }

    #[test]
    fn a_dead_room_authority_also_gets_a_notice() {
        let mut s = room(notices());
        // Members heartbeat; the authority does not.
        for ms in [30_000, 60_000, 89_000] {
            for c in [2, 3, 4] {
                s.msg(ms, c, r#"{"type":"HEARTBEAT"}"#);
            }
        }
        assert_eq!(s.tick(90_000), [close(1, CloseReason::Dead)]);
        assert_eq!(s.tick(91_000), [leave(2, "p2"), leave(3, "p3")]);
    }

    // ---- cluster mode: the registry's side is played by the test ----

    fn clustered() -> CoreConfig {
        CoreConfig {
            cluster: true,
            concurrent_limit: 10,
            ..cfg()
        }
    }

    fn claim_out(conn: u64, id: &str, token: &str) -> Output {
        Output::Claim {
            conn: ConnId(conn),
            id: Arc::from(id),
            token: token.into(),
        }
    }

    impl Sim {
        fn claim(&mut self, ms: u64, conn: u64, c: Claim) -> Vec<Output> {
            self.b.handle_claim(self.at(ms), ConnId(conn), c);
            self.drain()
        }
    }

    #[test]
    fn cluster_claims_then_opens_with_queued_then_early_messages() {
        let mut s = Sim::new(clustered());
        assert_eq!(s.open(0, 1, "a", "t"), [claim_out(1, "a", "t")]);
        // Sent before the registry answered: kept, and relayed after OPEN and the queue.
        assert!(
            s.msg(1, 1, r#"{"type":"OFFER","dst":"a","payload":1}"#)
                .is_empty()
        );
        let queued = vec![("x".to_owned(), "queued-frame".to_owned())];
        assert_eq!(
            s.claim(2, 1, Claim::New { reg: 7, queued }),
            [
                send(1, peerjs::OPEN),
                send(1, "queued-frame"),
                send(1, r#"{"type":"OFFER","src":"a","dst":"a","payload":1}"#),
            ]
        );
        assert_eq!(s.b.registrations(), [(Arc::from("a"), "t".to_owned(), 7)]);
        // A local id with another token is refused without asking the registry.
        assert_eq!(
            s.open(3, 2, "a", "u"),
            [send(2, peerjs::ID_TAKEN), close(2, CloseReason::Rejected)]
        );
        // Closing releases the registration.
        assert_eq!(
            s.close(4, 1),
            [Output::Release {
                id: Arc::from("a"),
                reg: 7
            }]
        );
    }

    #[test]
    fn cluster_refusals_and_a_claim_answered_after_the_close() {
        let mut s = Sim::new(clustered());
        s.open(0, 1, "a", "t");
        assert_eq!(
            s.claim(1, 1, Claim::Taken),
            [send(1, peerjs::ID_TAKEN), close(1, CloseReason::Rejected)]
        );
        s.open(0, 2, "b", "t");
        assert_eq!(
            s.claim(1, 2, Claim::Unavailable("down")),
            [
                send(2, &peerjs::error_frame("down")),
                close(2, CloseReason::Rejected)
            ]
        );
        s.open(0, 3, "c", "t");
        s.close(1, 3);
        let queued = vec![("x".to_owned(), "f".to_owned())];
        let out = s.claim(2, 3, Claim::New { reg: 4, queued });
        assert_eq!(
            out[0],
            Output::Release {
                id: Arc::from("c"),
                reg: 4
            }
        );
        assert!(
            matches!(&out[1], Output::Forward(f) if f.dst == "c" && f.requeue && &*f.src == "x"),
            "{out:?}"
        );
        assert!(!s.b.is_registered("c"));
    }

    #[test]
    fn cluster_relays_locally_or_forwards() {
        let mut s = Sim::new(clustered());
        s.open(0, 1, "a", "t");
        s.claim(
            0,
            1,
            Claim::New {
                reg: 1,
                queued: vec![],
            },
        );
        s.open(0, 2, "b", "t");
        s.claim(
            0,
            2,
            Claim::New {
                reg: 2,
                queued: vec![],
            },
        );
        // Same node: straight through.
        assert_eq!(
            s.msg(1, 1, r#"{"type":"OFFER","dst":"b"}"#),
            [send(2, r#"{"type":"OFFER","src":"a","dst":"b"}"#)]
        );
        // Elsewhere or offline: the registry decides.
        let out = s.msg(1, 1, r#"{"type":"CANDIDATE","dst":"far"}"#);
        assert_eq!(
            out,
            [Output::Forward(Forward {
                kind: MessageType::Candidate,
                src: Arc::from("a"),
                dst: "far".into(),
                text: r#"{"type":"CANDIDATE","src":"a","dst":"far"}"#.into(),
                ttl: Duration::from_secs(5),
                requeue: false,
                notice: false,
            })]
        );
        // From another node: delivered here, or handed back if the id left.
        s.b.handle_remote(MessageType::Offer, "far", "b", "frame".into());
        assert_eq!(s.drain(), [send(2, "frame")]);
        s.b.handle_remote(MessageType::Offer, "far", "gone", "frame".into());
        assert!(matches!(&s.drain()[..], [Output::Forward(f)] if f.requeue));
        // An expired queue: one EXPIRE per sender, through the normal relay.
        s.b.handle_expired(s.at(2), "ghost", &["a".to_owned(), "far".to_owned()]);
        let out = s.drain();
        assert_eq!(
            out[0],
            send(1, r#"{"type":"EXPIRE","src":"ghost","dst":"a"}"#)
        );
        assert!(matches!(&out[1], Output::Forward(f) if f.kind == MessageType::Expire));
    }

    #[test]
    fn cluster_moved_id_keeps_the_old_socket_speaking_but_not_delivered_to() {
        let mut s = Sim::new(clustered());
        s.open(0, 1, "a", "t");
        s.claim(
            0,
            1,
            Claim::New {
                reg: 1,
                queued: vec![],
            },
        );
        s.open(0, 2, "b", "t");
        s.claim(
            0,
            2,
            Claim::New {
                reg: 2,
                queued: vec![],
            },
        );
        s.b.handle_moved(s.at(1), "a");
        assert!(s.drain().is_empty());
        assert!(!s.b.is_registered("a"));
        // Still speaks for "a" ...
        assert_eq!(
            s.msg(2, 1, r#"{"type":"OFFER","dst":"b"}"#),
            [send(2, r#"{"type":"OFFER","src":"a","dst":"b"}"#)]
        );
        // ... but messages for "a" go to the registry, and its close releases nothing.
        assert!(matches!(
            &s.msg(2, 2, r#"{"type":"OFFER","dst":"a"}"#)[..],
            [Output::Forward(_)]
        ));
        assert!(s.close(3, 1).is_empty());
        // An id lost after an outage: closed, nothing released.
        s.b.handle_lost(s.at(4), "b");
        assert_eq!(s.drain(), [close(2, CloseReason::Lost)]);
        assert!(s.close(5, 2).is_empty());
    }

    #[test]
    fn cluster_takeover_closes_the_moved_socket() {
        let mut s = Sim::new(CoreConfig {
            takeover: true,
            ..clustered()
        });
        s.open(0, 1, "a", "t");
        s.claim(
            0,
            1,
            Claim::New {
                reg: 1,
                queued: vec![],
            },
        );
        s.b.handle_moved(s.at(1), "a");
        assert_eq!(s.drain(), [close(1, CloseReason::Replaced)]);
        // Re-attached here from elsewhere with takeover: OPEN.
        s.open(2, 3, "a", "t");
        assert_eq!(
            s.claim(
                2,
                3,
                Claim::Reattach {
                    reg: 1,
                    queued: vec![]
                }
            ),
            [send(3, peerjs::OPEN)]
        );
    }
}
