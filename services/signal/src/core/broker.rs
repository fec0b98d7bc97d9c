//! The single-node broker: peer table, offline queues, liveness and limits, and the one poll
//! the driver drains.

use super::api::{CloseReason, ConnId, CoreConfig, Forward, OpenParams, Output};
use super::notices::Notices;
use crate::metrics::Metrics;
use kibitz_proto::peerjs::{self, ClientFrame, Dst, MessageType};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Malformed frames tolerated on one socket before it is closed with 1007.
pub(super) const GARBAGE_LIMIT: u32 = 32;
/// Messages a socket may send while its claim is in flight (cluster mode); later ones are
/// dropped and counted.
const MAX_EARLY: usize = 64;
/// When nothing is scheduled, [`Output::Timeout`] is this long after the latest `now` the
/// core was given: a harmless wake-up, since an early [`Broker::handle_timeout`] does nothing.
pub(super) const IDLE_WAKE: Duration = Duration::from_secs(3600);

pub(super) struct Peer {
    pub(super) token: String,
    pub(super) conn: ConnId,
    last_ping: Instant,
    /// Registration number: tells a live registration from an older one with the same id.
    seq: u64,
    /// When this registration's entry in `alive` is filed for.
    filed: Instant,
    /// Cluster mode: the registry's registration number (0 on a single node).
    pub(super) reg: u64,
    /// Cluster mode: the id was re-attached on another node; this entry only lets the old
    /// socket keep speaking for it. It is never delivered to and never released from here.
    pub(super) moved: bool,
}

pub(super) struct Conn {
    /// The registration this socket speaks for: the id and its registration number. A
    /// same-token re-attach keeps the registration, so the older socket still speaks for the
    /// id as in the reference; once the registration ends, none of its sockets do.
    pub(super) id: Option<(Arc<str>, u64)>,
    ip: Option<IpAddr>,
    tokens: f64,
    refilled: Instant,
    garbage: u32,
    /// Cluster mode: the claim in flight (id, token) and what the socket sent meanwhile.
    pub(super) pending: Option<Box<Pending>>,
}

/// Cluster mode: a claim in flight.
pub(super) struct Pending {
    pub(super) id: Arc<str>,
    pub(super) token: String,
    pub(super) early: Vec<String>,
}

struct Queue {
    deadline: (Instant, u64),
    msgs: VecDeque<(Arc<str>, String)>,
}

/// The broker's state. See the module docs for the run loop.
pub struct Broker {
    pub(super) cfg: CoreConfig,
    pub(super) peers: HashMap<Arc<str>, Peer>,
    pub(super) conns: HashMap<ConnId, Conn>,
    pub(super) per_ip: HashMap<IpAddr, usize>,
    queues: HashMap<Arc<str>, Queue>,
    /// Queue expiry order.
    queue_deadlines: BTreeMap<(Instant, u64), Arc<str>>,
    pub(super) queued_total: usize,
    /// One entry per registration: (earliest possible death, seq) -> id. Heartbeats only bump
    /// `last_ping`; an entry that comes due for a live peer is re-filed.
    alive: BTreeMap<(Instant, u64), Arc<str>>,
    seq: u64,
    /// Room leave notices (inert when they are off).
    notices: Notices,
    /// Cluster mode: sockets that closed with a claim in flight, and the id they claimed.
    pub(super) orphans: HashMap<ConnId, Arc<str>>,
    pub(super) out: VecDeque<Output>,
    pub(super) metrics: Metrics,
    /// The latest `now` any input carried (for [`IDLE_WAKE`]).
    now: Instant,
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
    /// A broker with no peers, started at `now`.
    pub fn new(now: Instant, cfg: CoreConfig, metrics: Metrics) -> Self {
        Self {
            notices: Notices::new(cfg.room_notices),
            cfg,
            peers: HashMap::new(),
            conns: HashMap::new(),
            per_ip: HashMap::new(),
            queues: HashMap::new(),
            queue_deadlines: BTreeMap::new(),
            queued_total: 0,
            alive: BTreeMap::new(),
            seq: 0,
            orphans: HashMap::new(),
            out: VecDeque::new(),
            metrics,
            now,
        }
    }

    /// The next thing to do; [`Output::Timeout`] once everything else is drained.
    pub fn poll_output(&mut self) -> Output {
        match self.out.pop_front() {
            Some(out) => out,
            None => Output::Timeout(self.next_timeout()),
        }
    }

    fn next_timeout(&self) -> Instant {
        let alive = self.alive.first_key_value().map(|(k, _)| k.0);
        let queue = self.queue_deadlines.first_key_value().map(|(k, _)| k.0);
        let notice = self.notices.next_deadline();
        [alive, queue, notice]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(self.now + IDLE_WAKE)
    }

    /// Time only moves forward for the core, whatever order concurrent inputs arrive in.
    pub(super) fn saw(&mut self, now: Instant) {
        self.now = self.now.max(now);
    }

    /// Number of registered ids.
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// Whether `id` is registered on this broker (this node, in cluster mode) right now.
    pub fn is_registered(&self, id: &str) -> bool {
        self.peers.get(id).is_some_and(|p| !p.moved)
    }

    /// Registered ids in registration order (for discovery).
    pub fn peer_ids(&self) -> Vec<String> {
        let mut ids: Vec<(u64, &Arc<str>)> = self.peers.iter().map(|(id, p)| (p.seq, id)).collect();
        ids.sort_unstable();
        ids.into_iter().map(|(_, id)| id.to_string()).collect()
    }

    pub(super) fn send(&mut self, conn: ConnId, text: String) {
        self.out.push_back(Output::Send { conn, text });
    }

    pub(super) fn reject(&mut self, conn: ConnId, text: String, reason: &'static str) {
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
        self.saw(now);
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
    pub(super) fn reattach_here(
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
    pub(super) fn register(
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
        crate::table::make_room(&mut self.peers, id);
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
        let holder = self.peers.get(id).map(|p| p.token.as_str());
        self.notices.cancel(id, holder);
        match self.conns.get_mut(&conn) {
            Some(c) => c.id = Some((id.clone(), seq)),
            None => self.attach(now, conn, ip, Some((id.clone(), seq))),
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
            crate::table::make_room(&mut self.per_ip, &ip);
            *self.per_ip.entry(ip).or_insert(0) += 1;
        }
        crate::table::make_room(&mut self.conns, &conn);
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
        self.saw(now);
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
            crate::table::make_room(&mut self.orphans, &conn);
            self.orphans.insert(conn, p.id);
        }
        if let Some((id, _)) = c.id
            && self.peers.get(&id).is_some_and(|p| p.conn == conn)
        {
            self.unregister(now, &id);
        }
    }

    pub(super) fn unregister(&mut self, now: Instant, id: &str) {
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
        self.notices.ended(now, id, p.token, &mut self.seq);
    }

    /// Remembers that `a` and `b` signalled, for whichever of them is a room id.
    pub(super) fn note_contact(&mut self, a: &Arc<str>, b: &str) {
        let peers = &self.peers;
        self.notices
            .note_contact(a, b, |id| peers.get_key_value(id).map(|(k, _)| k.clone()));
    }

    /// A complete text (or UTF-8 binary) message arrived on an admitted socket.
    pub fn handle_message(&mut self, now: Instant, conn: ConnId, text: &str) {
        self.saw(now);
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

    pub(super) fn relay(
        &mut self,
        now: Instant,
        kind: MessageType,
        src: Arc<str>,
        dst: &str,
        text: String,
    ) {
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
                deadline: None,
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
                crate::table::make_room(&mut self.queues, &dst);
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
    pub(super) fn queue_ttl(&self, dst: &str) -> Duration {
        self.notices.queue_ttl(dst, self.cfg.expire_timeout)
    }

    /// Runs everything due at `now`: queue expiry (one `EXPIRE` per sender) and liveness.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.saw(now);
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
        while let Some((room, contacts)) = self.notices.pop_due(now) {
            for peer in contacts {
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
                        deadline: None,
                    }));
                } else {
                    self.relay(now, MessageType::Leave, room.clone(), &peer, text);
                }
            }
        }
    }
}
