//! A seeded in-memory network for many engines, on a virtual clock.
//!
//! What Kibitz's `createLocalBus` does, closer to the real thing: a broker whose id claims are
//! atomic (exactly one claimant of an id wins; the others get `ID-TAKEN`), dials to an
//! unregistered id that fail after the broker's 5 s `EXPIRE`, reliable ordered connections
//! with seeded latency and jitter, loss (a lost packet costs a retransmission delay, never
//! order), partitions (frames between the sides wait, and connections fail once a partition
//! outlasts ICE), and crashes (the broker frees the crashed node's ids; its connections go
//! silent, as a killed tab's do). Every frame is BinaryPack-encoded and decoded on the way.
//!
//! The broker itself is always reachable: partitions cut peer-to-peer paths only.
//! Everything is driven by one seed; the same seed replays the same run.
//!
//! Media is faked at the level of the engine's media commands: a legacy call reaches its
//! callee through the broker, an owned pc "offers" an SDP naming itself, and a pair whose
//! descriptions are both set connects after [`MediaNet::open_ms`]. Every open pc reports
//! cumulative byte counts each second; tests can silence a node, cut media one way, fail a
//! pc, or keep pcs from ever connecting. Every media command is logged with its time.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use kibitz_proto::SplitMix64;
use kibitz_proto::binarypack::{self, Value};

use crate::config::RoomConfig;
use crate::engine::Engine;
use crate::net::{ConnId, MediaMode, MediaSignal, NetCmd, NetEvent, PeerFailure, PeerKey};
use crate::types::{Event, Input, Now, Output};

/// The broker's offline-message expiry: a dial to an unknown id fails after this (ms).
pub const EXPIRE_MS: u64 = 5_000;
/// A partition that lasts this long fails the connections across it (ICE gives up).
pub const ICE_FAIL_MS: u64 = 20_000;

/// Network shape.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// One-way latency between peers, ms: `[min, max]`, uniform.
    pub latency: (u64, u64),
    /// One-way latency to the broker, ms.
    pub broker_latency: (u64, u64),
    /// Probability that a frame is lost once (and retransmitted).
    pub loss: f64,
    /// Retransmission delay range, ms.
    pub retransmit: (u64, u64),
}

impl Default for NetConfig {
    fn default() -> Self {
        Self {
            latency: (5, 40),
            broker_latency: (5, 30),
            loss: 0.0,
            retransmit: (200, 1_000),
        }
    }
}

/// The fake media network's shape.
#[derive(Debug, Clone)]
pub struct MediaNet {
    /// A pc pair connects this long after both descriptions are set (a call: after the
    /// answer), ms.
    pub open_ms: u64,
    /// Pcs never connect (stuck-connect).
    pub never_open: bool,
    /// What a sending pc pushes, bytes per second: audio, video.
    pub rate: (u64, u64),
}

impl Default for MediaNet {
    fn default() -> Self {
        Self {
            open_ms: 300,
            never_open: false,
            rate: (4_000, 50_000),
        }
    }
}

#[derive(Debug)]
struct Pc {
    /// The other end, once known.
    peer: Option<(NodeId, ConnId)>,
    open: bool,
    legacy: bool,
    /// Cumulative: audio in, video in, audio out, video out.
    bytes: [u64; 4],
}

/// A node's index.
pub type NodeId = usize;

#[derive(Debug)]
struct Node {
    engine: Engine,
    alive: bool,
    fingerprint: String,
    timeout: u64,
    events: Vec<(u64, Event)>,
    next_incoming: u64,
}

/// One end of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct End {
    node: NodeId,
    conn: ConnId,
}

#[derive(Debug)]
struct Link {
    a: End,
    b: End,
    a_peer: PeerKey,
    b_peer: PeerKey,
    /// Last scheduled delivery per direction (keeps order).
    last_ab: u64,
    last_ba: u64,
    dead: bool,
}

#[derive(Debug)]
enum Action {
    Deliver(NodeId, NetEvent),
    /// A dial reaches the broker.
    Dial {
        from: End,
        from_peer: PeerKey,
        from_id: String,
        to_id: String,
        label: Option<String>,
    },
    /// A claim or anonymous registration reaches the broker.
    Register {
        node: NodeId,
        key: PeerKey,
        id: Option<String>,
    },
    /// A frame arrives at one end of a link.
    Frame {
        link: u64,
        to: End,
        bytes: Vec<u8>,
    },
    /// Partition timer: fail the links still cut.
    IceCheck {
        epoch: u64,
    },
    /// A media pc connects.
    MediaOpen(NodeId, ConnId),
    /// Every open pc reports its byte counts.
    MediaTick,
}

/// The simulated network with its engines.
#[derive(Debug)]
pub struct Sim {
    /// Network shape (may be changed between steps).
    pub net: NetConfig,
    now: Now,
    rng: SplitMix64,
    nodes: Vec<Node>,
    /// id → (node, peer key): the broker's table.
    ids: BTreeMap<String, (NodeId, PeerKey)>,
    /// Peer key → its registered id, per node.
    registered: BTreeMap<(NodeId, PeerKey), String>,
    anon: u64,
    /// Registrations closed by their node (one still on its way to the broker must not land).
    closed: std::collections::BTreeSet<(NodeId, PeerKey)>,
    links: BTreeMap<u64, Link>,
    by_end: BTreeMap<End, u64>,
    next_link: u64,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    actions: BTreeMap<u64, Action>,
    seq: u64,
    /// Partition groups (node → group); empty = whole network.
    groups: BTreeMap<NodeId, u32>,
    partition_epoch: u64,
    /// Frames waiting for a partition to heal.
    held: Vec<(u64, End, Vec<u8>)>,
    /// Frames sent (a measure for tests and benchmarks).
    pub frames_sent: u64,
    /// Media network shape (may be changed between steps).
    pub media_net: MediaNet,
    pcs: BTreeMap<(NodeId, ConnId), Pc>,
    media_log: Vec<(u64, NodeId, NetCmd)>,
    silent: BTreeSet<NodeId>,
    media_cut: BTreeSet<(NodeId, NodeId)>,
    media_ticking: bool,
    /// Nodes behaving as a legacy (v0.1.0) build on the mesh: no `cap` and no owned-media
    /// frames reach them or leave them.
    legacy: BTreeSet<NodeId>,
}

impl Sim {
    /// A network with the given shape and seed; virtual time starts at `unix_ms` (wall) / 0.
    pub fn new(seed: u64, net: NetConfig, unix_ms: u64) -> Self {
        Self {
            net,
            now: Now { ms: 0, unix_ms },
            rng: SplitMix64::new(seed ^ 0x5151_5151_5151_5151),
            nodes: Vec::new(),
            ids: BTreeMap::new(),
            registered: BTreeMap::new(),
            anon: 0,
            closed: std::collections::BTreeSet::new(),
            links: BTreeMap::new(),
            by_end: BTreeMap::new(),
            next_link: 1,
            queue: BinaryHeap::new(),
            actions: BTreeMap::new(),
            seq: 0,
            groups: BTreeMap::new(),
            partition_epoch: 0,
            held: Vec::new(),
            frames_sent: 0,
            media_net: MediaNet::default(),
            pcs: BTreeMap::new(),
            media_log: Vec::new(),
            silent: BTreeSet::new(),
            media_cut: BTreeSet::new(),
            media_ticking: false,
            legacy: BTreeSet::new(),
        }
    }

    /// The virtual time.
    pub fn now(&self) -> Now {
        self.now
    }

    fn rand(&mut self) -> u64 {
        self.rng.next_u64()
    }

    fn range(&mut self, (lo, hi): (u64, u64)) -> u64 {
        if hi <= lo {
            return lo;
        }
        lo + self.rand() % (hi - lo + 1)
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && (self.rand() as f64 / u64::MAX as f64) < p
    }

    /// Adds a participant (not started). Its DTLS fingerprint is `fp:<node>` unless the
    /// config names one.
    pub fn add(&mut self, mut cfg: RoomConfig) -> NodeId {
        let id = self.nodes.len();
        let fingerprint = cfg
            .fingerprint
            .clone()
            .unwrap_or_else(|| format!("fp:{id}"));
        cfg.fingerprint = Some(fingerprint.clone());
        if cfg.seed == 0 {
            cfg.seed = self.rand();
        }
        let engine = Engine::new(cfg, self.now);
        self.nodes.push(Node {
            engine,
            alive: true,
            fingerprint,
            timeout: u64::MAX,
            events: Vec::new(),
            next_incoming: 0,
        });
        id
    }

    /// Starts a node's engine.
    pub fn start(&mut self, node: NodeId) {
        self.with(node, |e, now| e.start(now));
    }

    /// Calls into a node's engine (a controller method), then carries out what it asked.
    pub fn with<R>(&mut self, node: NodeId, f: impl FnOnce(&mut Engine, Now) -> R) -> R {
        let now = self.now;
        let r = f(&mut self.nodes[node].engine, now);
        self.drain(node);
        r
    }

    /// A node's engine, to read.
    pub fn engine(&self, node: NodeId) -> &Engine {
        &self.nodes[node].engine
    }

    /// Events a node's engine emitted, with their times.
    pub fn events(&self, node: NodeId) -> &[(u64, Event)] {
        &self.nodes[node].events
    }

    /// Forgets a node's recorded events.
    pub fn clear_events(&mut self, node: NodeId) {
        self.nodes[node].events.clear();
    }

    /// Whether a node is running.
    pub fn alive(&self, node: NodeId) -> bool {
        self.nodes[node].alive
    }

    /// How many nodes were added.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether no node was added.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Every media command the engines issued: (time, node, command).
    pub fn media_log(&self) -> &[(u64, NodeId, NetCmd)] {
        &self.media_log
    }

    /// A node's media pcs: (connection, the other end's node, connected).
    pub fn media_pcs(&self, node: NodeId) -> Vec<(ConnId, Option<NodeId>, bool)> {
        self.pcs
            .iter()
            .filter(|((n, _), _)| *n == node)
            .map(|((_, c), pc)| (*c, pc.peer.map(|(n, _)| n), pc.open))
            .collect()
    }

    /// Fails a node's media pc now (ICE failed): it reports `MediaClosed { failed: true }`.
    pub fn media_fail(&mut self, node: NodeId, conn: ConnId) {
        if self.pcs.remove(&(node, conn)).is_some() {
            self.input(node, NetEvent::MediaClosed { conn, failed: true });
        }
    }

    /// Makes a node look like a legacy build to its mesh peers (and them to it): `cap`,
    /// `m-sdp`, `m-ice`, `m-dial`, `m-recreate` and `mh-dead` to or from it are dropped.
    pub fn set_legacy(&mut self, node: NodeId) {
        self.legacy.insert(node);
    }

    /// A silent node sends no media (its pcs stay up).
    pub fn set_media_silent(&mut self, node: NodeId, silent: bool) {
        if silent {
            self.silent.insert(node);
        } else {
            self.silent.remove(&node);
        }
    }

    /// Media from `from` stops reaching `to` (or flows again).
    pub fn cut_media(&mut self, from: NodeId, to: NodeId, cut: bool) {
        if cut {
            self.media_cut.insert((from, to));
        } else {
            self.media_cut.remove(&(from, to));
        }
    }

    fn media_command(&mut self, node: NodeId, cmd: NetCmd) {
        self.media_log.push((self.now.ms, node, cmd.clone()));
        if !self.media_ticking {
            self.media_ticking = true;
            self.schedule(1_000, Action::MediaTick);
        }
        let offer = |node: NodeId, conn: ConnId| NetEvent::MediaLocalSignal {
            conn,
            signal: MediaSignal::Sdp {
                offer: true,
                sdp: format!("sim {node} {}", conn.0),
            },
        };
        match cmd {
            NetCmd::MediaCall {
                conn, remote, mode, ..
            } => {
                if mode == MediaMode::Owned {
                    let pc = Pc {
                        peer: None,
                        open: false,
                        legacy: false,
                        bytes: [0; 4],
                    };
                    self.pcs.insert((node, conn), pc);
                    self.deliver(node, 1, offer(node, conn));
                    let cand = NetEvent::MediaLocalSignal {
                        conn,
                        signal: MediaSignal::Candidate(Default::default()),
                    };
                    self.deliver(node, 2, cand);
                    return;
                }
                let Some(&(to, _)) = self.ids.get(&remote) else {
                    self.deliver(
                        node,
                        EXPIRE_MS,
                        NetEvent::MediaClosed { conn, failed: true },
                    );
                    return;
                };
                let caller = self.nodes[node].engine.voice_id().unwrap_or("").to_owned();
                self.nodes[to].next_incoming += 1;
                let inc = ConnId::incoming(self.nodes[to].next_incoming);
                for (a, b) in [((node, conn), (to, inc)), ((to, inc), (node, conn))] {
                    let pc = Pc {
                        peer: Some(b),
                        open: false,
                        legacy: true,
                        bytes: [0; 4],
                    };
                    self.pcs.insert(a, pc);
                }
                let d = self.range(self.net.broker_latency);
                self.deliver(
                    to,
                    d,
                    NetEvent::MediaIncomingCall {
                        conn: inc,
                        remote: caller,
                    },
                );
            }
            NetCmd::MediaAnswerCall { conn } => {
                if let Some(peer) = self.pcs.get(&(node, conn)).and_then(|p| p.peer) {
                    self.media_connect((node, conn), peer);
                }
            }
            NetCmd::MediaSignal {
                conn: Some(conn),
                signal:
                    MediaSignal::Sdp {
                        offer: is_offer,
                        sdp,
                    },
                ..
            } => {
                let mut words = sdp.split(' ').skip(1).map(|w| w.parse::<u64>().ok());
                let (Some(Some(n)), Some(Some(c))) = (words.next(), words.next()) else {
                    return;
                };
                let Ok(n) = usize::try_from(n) else {
                    return;
                };
                let peer = (n, ConnId(c));
                let pc = self.pcs.entry((node, conn)).or_insert(Pc {
                    peer: None,
                    open: false,
                    legacy: false,
                    bytes: [0; 4],
                });
                pc.peer = Some(peer);
                if is_offer {
                    let answer = NetEvent::MediaLocalSignal {
                        conn,
                        signal: MediaSignal::Sdp {
                            offer: false,
                            sdp: format!("sim {node} {}", conn.0),
                        },
                    };
                    self.deliver(node, 1, answer);
                } else if self
                    .pcs
                    .get(&peer)
                    .is_some_and(|p| p.peer == Some((node, conn)))
                {
                    self.media_connect((node, conn), peer);
                }
            }
            NetCmd::MediaRestartIce { conn } if self.pcs.contains_key(&(node, conn)) => {
                self.deliver(node, 1, offer(node, conn));
            }
            NetCmd::MediaClose { conn } => {
                if let Some(pc) = self.pcs.remove(&(node, conn))
                    && pc.legacy
                    && let Some((pn, pcid)) = pc.peer
                    && self.pcs.remove(&(pn, pcid)).is_some()
                {
                    let d = self.range(self.net.latency);
                    self.deliver(
                        pn,
                        d,
                        NetEvent::MediaClosed {
                            conn: pcid,
                            failed: false,
                        },
                    );
                }
            }
            _ => {}
        }
    }

    /// Both ends connect after `open_ms` (unless pcs never connect).
    fn media_connect(&mut self, a: (NodeId, ConnId), b: (NodeId, ConnId)) {
        if self.media_net.never_open {
            return;
        }
        let d = self.media_net.open_ms;
        for (n, c) in [a, b] {
            if self.pcs.get(&(n, c)).is_some_and(|p| !p.open) {
                self.schedule(d, Action::MediaOpen(n, c));
            }
        }
    }

    fn media_tick(&mut self) {
        self.schedule(1_000, Action::MediaTick);
        let (audio, video) = self.media_net.rate;
        let flows = |s: &Self, from: NodeId, to: NodeId, pc: Option<&Pc>| {
            pc.is_some_and(|p| p.open)
                && s.nodes[from].alive
                && !s.silent.contains(&from)
                && !s.media_cut.contains(&(from, to))
        };
        let mut reports = Vec::new();
        let keys: Vec<(NodeId, ConnId)> = self.pcs.keys().copied().collect();
        for (n, c) in keys {
            let Some(pc) = self.pcs.get(&(n, c)) else {
                continue;
            };
            if !pc.open || !self.nodes[n].alive {
                continue;
            }
            let peer = pc.peer.and_then(|k| self.pcs.get(&k).map(|p| (k, p)));
            let inbound = peer.is_some_and(|((pn, _), p)| flows(self, pn, n, Some(p)));
            let outbound = peer.is_some() && !self.silent.contains(&n);
            let Some(pc) = self.pcs.get_mut(&(n, c)) else {
                continue;
            };
            if inbound {
                pc.bytes[0] += audio;
                pc.bytes[1] += video;
            }
            if outbound {
                pc.bytes[2] += audio;
                pc.bytes[3] += video;
            }
            let [a, v, ao, vo] = pc.bytes;
            reports.push((
                n,
                NetEvent::MediaStats {
                    conn: c,
                    audio_in_bytes: a,
                    video_in_bytes: v,
                    audio_out_bytes: ao,
                    video_out_bytes: vo,
                },
            ));
        }
        for (n, ev) in reports {
            self.input(n, ev);
        }
    }

    /// Kills a node: the broker frees its ids at once (its socket closed); its connections go
    /// silent without closing, as a killed browser tab's do.
    pub fn crash(&mut self, node: NodeId) {
        self.nodes[node].alive = false;
        self.ids.retain(|_, (n, _)| *n != node);
        self.registered.retain(|(n, _), _| *n != node);
    }

    /// Splits the peer-to-peer network into groups (node → group); nodes not named are in
    /// group 0. Frames across groups wait; links across still cut after [`ICE_FAIL_MS`] fail.
    pub fn partition(&mut self, groups: &[(NodeId, u32)]) {
        self.groups = groups.iter().copied().collect();
        self.partition_epoch += 1;
        let epoch = self.partition_epoch;
        self.schedule(ICE_FAIL_MS, Action::IceCheck { epoch });
    }

    /// Heals any partition: waiting frames go on their way.
    pub fn heal(&mut self) {
        self.groups.clear();
        self.partition_epoch += 1;
        let held = std::mem::take(&mut self.held);
        for (link, to, bytes) in held {
            let d = self.range(self.net.latency);
            let at = self.ordered(link, to, self.now.ms + d);
            self.schedule_at(at, Action::Frame { link, to, bytes });
        }
    }

    fn group(&self, n: NodeId) -> u32 {
        self.groups.get(&n).copied().unwrap_or(0)
    }

    fn cut(&self, a: NodeId, b: NodeId) -> bool {
        self.group(a) != self.group(b)
    }

    fn schedule(&mut self, delay: u64, action: Action) {
        self.schedule_at(self.now.ms + delay, action);
    }

    fn schedule_at(&mut self, at: u64, action: Action) {
        self.seq += 1;
        self.actions.insert(self.seq, action);
        self.queue.push(Reverse((at, self.seq)));
    }

    fn deliver(&mut self, node: NodeId, delay: u64, ev: NetEvent) {
        self.schedule(delay, Action::Deliver(node, ev));
    }

    /// Runs until virtual time `until` (ms).
    pub fn run_until(&mut self, until: u64) {
        loop {
            let next_action = self.queue.peek().map(|Reverse((t, _))| *t);
            let next_timer = self
                .nodes
                .iter()
                .enumerate()
                .filter(|(_, n)| n.alive)
                .map(|(i, n)| (n.timeout, i))
                .min();
            let t_action = next_action.unwrap_or(u64::MAX);
            let t_timer = next_timer.map_or(u64::MAX, |(t, _)| t);
            let t = t_action.min(t_timer);
            if t > until {
                break;
            }
            self.advance_to(t);
            if t_action <= t_timer {
                if let Some(Reverse((_, seq))) = self.queue.pop()
                    && let Some(a) = self.actions.remove(&seq)
                {
                    self.run_action(a);
                }
            } else if let Some((_, i)) = next_timer {
                self.nodes[i].timeout = u64::MAX;
                let now = self.now;
                self.nodes[i].engine.handle_input(now, Input::Timeout);
                self.drain(i);
            }
        }
        self.advance_to(until);
    }

    /// Runs for `ms` more milliseconds.
    pub fn run_for(&mut self, ms: u64) {
        let until = self.now.ms + ms;
        self.run_until(until);
    }

    fn advance_to(&mut self, t: u64) {
        if t > self.now.ms {
            self.now = self.now.plus(t - self.now.ms);
        }
    }

    fn input(&mut self, node: NodeId, ev: NetEvent) {
        if !self.nodes[node].alive {
            return;
        }
        let now = self.now;
        self.nodes[node].engine.handle_input(now, Input::Net(ev));
        self.drain(node);
    }

    fn drain(&mut self, node: NodeId) {
        loop {
            match self.nodes[node].engine.poll_output() {
                Output::Timeout(t) => {
                    self.nodes[node].timeout = t;
                    break;
                }
                Output::Event(e) => {
                    let t = self.now.ms;
                    self.nodes[node].events.push((t, e));
                }
                Output::Net(cmd) => {
                    if self.nodes[node].alive {
                        self.command(node, cmd);
                    }
                }
            }
        }
    }

    fn command(&mut self, node: NodeId, cmd: NetCmd) {
        match cmd {
            NetCmd::OpenPeer { key, id, .. } => {
                let d = self.range(self.net.broker_latency);
                self.schedule(d, Action::Register { node, key, id });
            }
            NetCmd::ClosePeer { key } => {
                self.closed.insert((node, key));
                if let Some(id) = self.registered.remove(&(node, key)) {
                    self.ids.remove(&id);
                }
                let ends: Vec<u64> = self
                    .links
                    .iter()
                    .filter(|(_, l)| {
                        !l.dead
                            && ((l.a.node == node && l.a_peer == key)
                                || (l.b.node == node && l.b_peer == key))
                    })
                    .map(|(id, _)| *id)
                    .collect();
                for l in ends {
                    self.close_link(l, node);
                }
            }
            NetCmd::Connect {
                peer,
                conn,
                remote,
                label,
            } => {
                let Some(from_id) = self.registered.get(&(node, peer)).cloned() else {
                    self.deliver(node, 0, NetEvent::ConnFailed { conn });
                    return;
                };
                let d = self.range(self.net.broker_latency);
                self.schedule(
                    d,
                    Action::Dial {
                        from: End { node, conn },
                        from_peer: peer,
                        from_id,
                        to_id: remote,
                        label,
                    },
                );
            }
            NetCmd::Send { conn, frame } => {
                let from = End { node, conn };
                let Some(&link) = self.by_end.get(&from) else {
                    return;
                };
                let Some(l) = self.links.get(&link) else {
                    return;
                };
                if l.dead {
                    return;
                }
                let to = if l.a == from { l.b } else { l.a };
                let owned_only = ["cap", "m-sdp", "m-ice", "m-dial", "m-recreate", "mh-dead"];
                if (self.legacy.contains(&node) || self.legacy.contains(&to.node))
                    && frame
                        .get("t")
                        .and_then(Value::as_str)
                        .is_some_and(|t| owned_only.contains(&t))
                {
                    return;
                }
                let Ok(bytes) = binarypack::encode(&frame) else {
                    return;
                };
                self.frames_sent += 1;
                if self.cut(node, to.node) {
                    self.held.push((link, to, bytes));
                    return;
                }
                let mut d = self.range(self.net.latency);
                if self.chance(self.net.loss) {
                    d += self.range(self.net.retransmit);
                }
                let at = self.ordered(link, to, self.now.ms + d);
                self.schedule_at(at, Action::Frame { link, to, bytes });
            }
            NetCmd::Close { conn } => {
                if let Some(&link) = self.by_end.get(&End { node, conn }) {
                    self.close_link(link, node);
                }
            }
            cmd @ (NetCmd::MediaCall { .. }
            | NetCmd::MediaAnswerCall { .. }
            | NetCmd::MediaSignal { .. }
            | NetCmd::MediaRestartIce { .. }
            | NetCmd::MediaClose { .. }
            | NetCmd::MediaGates { .. }) => self.media_command(node, cmd),
        }
    }

    /// The delivery time for a frame towards `to` on `link`, after every earlier one.
    fn ordered(&mut self, link: u64, to: End, at: u64) -> u64 {
        let Some(l) = self.links.get_mut(&link) else {
            return at;
        };
        let last = if l.b == to {
            &mut l.last_ab
        } else {
            &mut l.last_ba
        };
        let at = at.max(*last + 1);
        *last = at;
        at
    }

    /// Closes a link from `by`'s side: the other side hears of it (if the path is up).
    fn close_link(&mut self, link: u64, by: NodeId) {
        let Some(l) = self.links.get_mut(&link) else {
            return;
        };
        if l.dead {
            return;
        }
        l.dead = true;
        let (a, b) = (l.a, l.b);
        self.by_end.remove(&a);
        self.by_end.remove(&b);
        let other = if a.node == by { b } else { a };
        // Across a cut the other side only learns when ICE gives up on the path.
        let d = if self.cut(by, other.node) {
            ICE_FAIL_MS
        } else {
            self.range(self.net.latency)
        };
        let at = self.ordered(link, other, self.now.ms + d);
        self.schedule_at(
            at,
            Action::Deliver(other.node, NetEvent::Closed { conn: other.conn }),
        );
    }

    fn run_action(&mut self, a: Action) {
        match a {
            Action::Deliver(node, ev) => self.input(node, ev),
            Action::Register { node, key, id } => {
                if !self.nodes[node].alive || self.closed.contains(&(node, key)) {
                    return;
                }
                let id = match id {
                    Some(id) => {
                        if self.ids.contains_key(&id) {
                            self.respond(
                                node,
                                NetEvent::PeerFailed {
                                    key,
                                    failure: PeerFailure::IdTaken,
                                },
                            );
                            return;
                        }
                        id
                    }
                    None => {
                        self.anon += 1;
                        let r = self.rand() & 0xffff;
                        format!("peer-{:04}-{r:x}", self.anon)
                    }
                };
                self.ids.insert(id.clone(), (node, key));
                self.registered.insert((node, key), id.clone());
                self.respond(node, NetEvent::PeerOpen { key, id });
            }
            Action::Dial {
                from,
                from_peer,
                from_id,
                to_id,
                label,
            } => {
                let target = self.ids.get(&to_id).copied();
                let Some((to_node, to_peer)) = target else {
                    self.deliver(
                        from.node,
                        EXPIRE_MS,
                        NetEvent::ConnFailed { conn: from.conn },
                    );
                    return;
                };
                if self.cut(from.node, to_node) {
                    // ICE cannot get through: the dial fails once ICE gives up.
                    self.deliver(
                        from.node,
                        ICE_FAIL_MS,
                        NetEvent::ConnFailed { conn: from.conn },
                    );
                    return;
                }
                let n = &mut self.nodes[to_node];
                n.next_incoming += 1;
                let to = End {
                    node: to_node,
                    conn: ConnId::incoming(n.next_incoming),
                };
                let link = self.next_link;
                self.next_link += 1;
                self.links.insert(
                    link,
                    Link {
                        a: from,
                        b: to,
                        a_peer: from_peer,
                        b_peer: to_peer,
                        last_ab: 0,
                        last_ba: 0,
                        dead: false,
                    },
                );
                self.by_end.insert(from, link);
                self.by_end.insert(to, link);
                let from_fp = self.nodes[from.node].fingerprint.clone();
                let to_fp = self.nodes[to_node].fingerprint.clone();
                // Offer/answer through the broker, then ICE and DTLS: both sides open.
                let d = self.range(self.net.broker_latency) + self.range(self.net.latency);
                let at_b = self.ordered(link, to, self.now.ms + d);
                self.schedule_at(
                    at_b,
                    Action::Deliver(
                        to_node,
                        NetEvent::Incoming {
                            peer: to_peer,
                            conn: to.conn,
                            remote: from_id,
                            fingerprint: Some(from_fp),
                            label,
                        },
                    ),
                );
                let d = self.range(self.net.latency);
                let at_a = self.ordered(link, from, at_b + d);
                self.schedule_at(
                    at_a,
                    Action::Deliver(
                        from.node,
                        NetEvent::Open {
                            conn: from.conn,
                            fingerprint: Some(to_fp),
                        },
                    ),
                );
            }
            Action::Frame { link, to, bytes } => {
                let Some(l) = self.links.get(&link) else {
                    return;
                };
                // A frame already on its way is delivered even if its sender has closed the
                // channel since (a data channel flushes what it queued before closing).
                if !self.nodes[to.node].alive {
                    return;
                }
                let from = if l.a == to { l.b } else { l.a };
                if self.cut(from.node, to.node) {
                    self.held.push((link, to, bytes));
                    return;
                }
                match binarypack::decode(&bytes, binarypack::Limits::default()) {
                    Ok(frame) => self.input(
                        to.node,
                        NetEvent::Data {
                            conn: to.conn,
                            frame,
                        },
                    ),
                    // The encoder and decoder disagree: a codec bug the tests must see.
                    Err(e) => panic!("sim: frame did not decode: {e}"),
                }
            }
            Action::MediaOpen(n, c) => {
                if let Some(pc) = self.pcs.get_mut(&(n, c))
                    && !pc.open
                {
                    pc.open = true;
                    self.input(n, NetEvent::MediaOpen { conn: c });
                }
            }
            Action::MediaTick => self.media_tick(),
            Action::IceCheck { epoch } => {
                if epoch != self.partition_epoch {
                    return;
                }
                let cut: Vec<u64> = self
                    .links
                    .iter()
                    .filter(|(_, l)| !l.dead && self.cut(l.a.node, l.b.node))
                    .map(|(id, _)| *id)
                    .collect();
                for id in cut {
                    if let Some(l) = self.links.get_mut(&id) {
                        l.dead = true;
                        let (a, b) = (l.a, l.b);
                        self.by_end.remove(&a);
                        self.by_end.remove(&b);
                        self.deliver(a.node, 0, NetEvent::Closed { conn: a.conn });
                        self.deliver(b.node, 0, NetEvent::Closed { conn: b.conn });
                    }
                }
                self.held
                    .retain(|(l, _, _)| self.links.get(l).is_some_and(|l| !l.dead));
            }
        }
    }

    fn respond(&mut self, node: NodeId, ev: NetEvent) {
        let d = self.range(self.net.broker_latency);
        self.deliver(node, d, ev);
    }

    /// Broker view: who holds `id`.
    pub fn holder(&self, id: &str) -> Option<NodeId> {
        self.ids.get(id).map(|(n, _)| *n)
    }

    /// A node's registered peer ids (presence, media).
    pub fn ids_of(&self, node: NodeId) -> Vec<String> {
        self.registered
            .iter()
            .filter(|((n, _), _)| *n == node)
            .map(|(_, id)| id.clone())
            .collect()
    }
}

/// Encodes a frame as the wire would (for tests comparing bytes).
pub fn encode(frame: &Value) -> Vec<u8> {
    binarypack::encode(frame).unwrap_or_default()
}
