//! One participant's room engine: the claim loop, the participant and authority roles, the
//! data mesh, and the controller API.

use std::collections::BTreeMap;

use kibitz_proto::agent::sign_agent_assertion;
use kibitz_proto::binarypack::Value;
use kibitz_proto::content::Content;
use kibitz_proto::grants::Grant;
use kibitz_proto::hostcmd::{HostCmd, HostOp, sign_host_cmd};
use kibitz_proto::presence::{AuthorityWire, LobbyStatus, Member, Meta, Roster};
use kibitz_proto::room::{normalize_room, peer_id_for};

use crate::authority::{Authority, Effects, Key};
use crate::config::timing::*;
use crate::config::{HostCommit, RoomConfig};
use crate::ctx::{Ctx, Now};
use crate::mesh::{Mesh, MeshLink};
use crate::net::{ConnId, NetCmd, NetEvent, PeerFailure, PeerKey, Plane};
use crate::wire::{self, Announce};

/// Input to [`Engine::handle_input`].
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// Something happened on the network.
    Net(NetEvent),
    /// The time given by the last [`Output::Timeout`] has come (early calls are harmless).
    Timeout,
}

/// What [`Engine::poll_output`] yields.
// Outputs are drained one at a time and handled at once; boxing events would only add
// allocations on the hot path.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Ask the transport to do something.
    Net(NetCmd),
    /// Tell the application something.
    Event(Event),
    /// Nothing more for now: call [`Engine::handle_input`] with [`Input::Timeout`] at this
    /// monotonic time (ms), or earlier on any input.
    Timeout(u64),
}

/// Where this participant stands with the room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Not started.
    Idle,
    /// Claiming `kbz-v1-<room>`.
    Claiming,
    /// The id is taken: connecting to whoever holds it.
    Connecting,
    /// Connected to the authority.
    Connected,
    /// Holding `kbz-v1-<room>`: this participant coordinates the room.
    Authority,
    /// Lost the room; claiming again shortly.
    Reconnecting {
        /// Why.
        reason: String,
    },
    /// Out of the room for good (left, or kicked).
    Left {
        /// Why.
        reason: String,
    },
}

/// A roster member as the application sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Participant {
    /// voiceId.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Camera on.
    pub cam: bool,
    /// Announced meta.
    pub meta: Option<Meta>,
    /// This participant.
    pub is_self: bool,
    /// The verified host.
    pub is_host: bool,
    /// The grant in force for this member.
    pub grant: Grant,
}

/// A knocker waiting in the lobby.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Knocker {
    /// The knock's connection id (the `target` of `admit`/`deny`).
    pub id: String,
    /// The announced name.
    pub name: String,
}

/// Content that arrived on the mesh.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// The sender's voiceId (the connection's remote peer id).
    pub from: String,
    /// Sent to us alone (`dm`).
    pub direct: bool,
    /// The envelope.
    pub content: Content,
}

/// One entry of the local audit feed. It names kinds and members, never content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// Unix seconds.
    pub at_unix: u64,
    /// What happened.
    pub kind: AuditKind,
}

/// What the audit feed records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditKind {
    /// We did not send content to `to`: its grant does not allow it.
    Withheld {
        /// Recipient voiceId.
        to: String,
        /// Envelope kind.
        what: String,
    },
    /// Content from `from` was dropped: the sender may not send it.
    Dropped {
        /// Sender voiceId.
        from: String,
        /// Envelope kind.
        what: String,
    },
    /// We may not send this ourselves.
    Blocked {
        /// Envelope kind.
        what: String,
    },
    /// The grants in force changed.
    GrantsChanged {
        /// Who sent them (voiceId), or `"lapsed"` when the issuing host left.
        by: String,
    },
    /// A `caps` frame from someone other than the verified host was ignored.
    CapsRefused {
        /// Sender voiceId.
        from: String,
    },
}

/// What the engine tells the application.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Status changed.
    Status(Status),
    /// The roster changed: the whole list.
    Participants(Vec<Participant>),
    /// Someone joined the roster.
    Join(Participant),
    /// Someone left the roster (voiceId).
    Leave(String),
    /// Content arrived.
    Message(Message),
    /// Our own lobby status (waiting, admitted, denied, locked, unverified).
    Lobby(LobbyStatus),
    /// The knockers waiting (for the host, or the authority).
    LobbyQueue(Vec<Knocker>),
    /// The host cleared the chat.
    Reset,
    /// The grants in force changed.
    Grants(BTreeMap<String, Grant>),
    /// An audit entry.
    Audit(AuditEntry),
    /// As authority: a host command was refused.
    HostCommandRefused {
        /// Why.
        reason: String,
    },
    /// As authority: an agent's key assertion verified, carrying its manifest grant.
    AgentVerified {
        /// The agent's presence connection.
        conn: String,
        /// The grant its key entry names.
        grant: Grant,
    },
}

/// Why a send was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The media peer is not open yet.
    #[error("not connected to the mesh yet")]
    NotConnected,
    /// Our grant does not allow it.
    #[error("not permitted by this participant's grant")]
    NotPermitted,
    /// No such roster member.
    #[error("no member {0} in the roster")]
    UnknownMember(String),
}

/// Why a host operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HostError {
    /// The room commits no host: nobody moderates.
    #[error("the room has no host")]
    NoHostTier,
    /// This participant cannot moderate (no key, or not the soft host coordinating).
    #[error("this participant is not the host")]
    NotHost,
    /// Not connected to the room.
    #[error("not connected to the room")]
    NotConnected,
}

#[derive(Debug)]
struct Part {
    peer: PeerKey,
    conn: ConnId,
    open: bool,
    attempt: u32,
    deadline: u64,
    last_seen: u64,
    last_tick: u64,
    next_tick: u64,
    lobby: Option<LobbyStatus>,
    claimed_at: Option<u64>,
}

#[derive(Debug)]
enum Phase {
    Idle,
    Claiming {
        peer: PeerKey,
        deadline: u64,
    },
    /// The id is taken; our anonymous presence peer is opening (`conn` unused yet).
    Opening {
        peer: PeerKey,
        deadline: u64,
        attempt: u32,
    },
    /// Waiting to dial the authority again.
    Redial {
        peer: PeerKey,
        at: u64,
        attempt: u32,
    },
    Participant(Part),
    Authority(Box<Authority>),
    /// Waiting before claiming again.
    Waiting {
        at: u64,
    },
    Left,
}

/// One participant's room engine. See the crate docs for the run loop.
#[derive(Debug)]
pub struct Engine {
    cfg: RoomConfig,
    room: String,
    room_id: String,
    ctx: Ctx,
    phase: Phase,
    status: Status,
    mesh: Mesh,
    media_retry_at: Option<u64>,
    in_call: bool,
    cam: bool,
    announce_at: Vec<u64>,
    next_announce: Option<u64>,
    roster: Roster,
    /// The last roster seen from an authority (inherited on migration).
    last_roster: Option<Roster>,
    /// The kicked-token hashes the last roster carried (inherited on migration too).
    last_bans: Vec<String>,
    assertion: Option<(u64, String)>,
    credit: Option<String>,
    kicked_voice: Vec<String>,
}

impl Engine {
    /// An engine for one participant; nothing happens until [`Engine::start`].
    pub fn new(mut cfg: RoomConfig, now: Now) -> Self {
        let room = normalize_room(&cfg.room);
        cfg.room = room.clone();
        if let Some(agent) = &cfg.agent {
            cfg.meta.role = Some("agent".into());
            if agent.backend.is_some() {
                cfg.meta.backend = agent.backend.clone();
            }
            if agent.egress {
                cfg.meta.egress = Some(Value::Bool(true));
            }
        }
        let ctx = Ctx::new(cfg.seed, now);
        Self {
            room_id: peer_id_for(&room),
            room,
            ctx,
            cfg,
            phase: Phase::Idle,
            status: Status::Idle,
            mesh: Mesh::default(),
            media_retry_at: None,
            in_call: false,
            cam: false,
            announce_at: Vec::new(),
            next_announce: None,
            roster: Roster::default(),
            last_roster: None,
            last_bans: Vec::new(),
            assertion: None,
            credit: None,
            kicked_voice: Vec::new(),
        }
    }

    /// The normalised room id.
    pub fn room(&self) -> &str {
        &self.room
    }

    /// Opens the media peer and starts claiming the room.
    pub fn start(&mut self, now: Now) {
        self.ctx.now = now;
        if !matches!(self.phase, Phase::Idle) {
            return;
        }
        self.open_media();
        self.claim();
    }

    /// Feeds time and one input. Drain [`Engine::poll_output`] afterwards.
    pub fn handle_input(&mut self, now: Now, input: Input) {
        self.ctx.now = now;
        match input {
            Input::Timeout => self.on_timeout(),
            Input::Net(ev) => self.on_net(ev),
        }
    }

    /// The next output; [`Output::Timeout`] once drained.
    pub fn poll_output(&mut self) -> Output {
        if let Some(o) = self.ctx.out.pop_front() {
            return o;
        }
        Output::Timeout(self.next_timeout())
    }

    fn next_timeout(&self) -> u64 {
        let mut t = u64::MAX;
        let mut at = |x: Option<u64>| {
            if let Some(x) = x {
                t = t.min(x);
            }
        };
        match &self.phase {
            Phase::Claiming { deadline, .. } | Phase::Opening { deadline, .. } => {
                at(Some(*deadline))
            }
            Phase::Redial { at: x, .. } | Phase::Waiting { at: x } => at(Some(*x)),
            Phase::Participant(p) => {
                at(Some(p.next_tick));
                if !p.open {
                    at(Some(p.deadline));
                }
            }
            Phase::Authority(a) => at(Some(a.next_tick)),
            Phase::Idle | Phase::Left => {}
        }
        at(self.media_retry_at);
        at(self.next_announce);
        at(self.mesh.next_timeout());
        t
    }

    // ---- status and views ---------------------------------------------------------------

    /// Where this participant stands.
    pub fn status(&self) -> &Status {
        &self.status
    }

    /// Whether this participant coordinates the room.
    pub fn is_authority(&self) -> bool {
        matches!(self.phase, Phase::Authority(_))
    }

    /// This participant's voiceId (the media peer's id), once open.
    pub fn voice_id(&self) -> Option<&str> {
        self.mesh.self_id.as_deref()
    }

    /// The data-mesh links.
    pub fn mesh_links(&self) -> Vec<MeshLink> {
        self.mesh.links()
    }

    /// The roster as this participant last knew it.
    pub fn roster(&self) -> &Roster {
        &self.roster
    }

    /// The roster's members with their grants.
    pub fn participants(&self) -> Vec<Participant> {
        let me = self.mesh.self_id.as_deref();
        let host = self.roster.host();
        self.roster
            .members
            .iter()
            .map(|m| Participant {
                id: m.id.clone(),
                name: m.name.clone(),
                cam: m.cam,
                meta: m.meta.clone(),
                is_self: Some(m.id.as_str()) == me,
                is_host: Some(m.id.as_str()) == host,
                grant: self.mesh.grant_of(&self.roster, &m.id, self.ctx.now.unix()),
            })
            .collect()
    }

    /// The knockers waiting, as the authority or host last heard.
    pub fn lobby_queue(&self) -> Vec<Knocker> {
        match &self.phase {
            Phase::Authority(a) => a.pending(),
            _ => Vec::new(),
        }
    }

    /// The grant in force for a member.
    pub fn capability_grant(&self, voice_id: &str) -> Grant {
        self.mesh
            .grant_of(&self.roster, voice_id, self.ctx.now.unix())
    }

    /// The local audit feed (blocked acts and grant changes), oldest first.
    pub fn agent_audit(&self) -> &[AuditEntry] {
        &self.mesh.audit
    }

    fn set_status(&mut self, s: Status) {
        if self.status != s {
            self.status = s.clone();
            self.ctx.event(Event::Status(s));
        }
    }

    // ---- the claim loop -----------------------------------------------------------------

    fn claim(&mut self) {
        let peer = self.ctx.peer_key();
        self.ctx.net(NetCmd::OpenPeer {
            plane: Plane::Presence,
            key: peer,
            id: Some(self.room_id.clone()),
        });
        self.phase = Phase::Claiming {
            peer,
            deadline: self.ctx.now.ms + CLAIM_TIMEOUT_MS,
        };
        self.set_status(Status::Claiming);
    }

    fn presence_peer(&self) -> Option<PeerKey> {
        match &self.phase {
            Phase::Claiming { peer, .. }
            | Phase::Opening { peer, .. }
            | Phase::Redial { peer, .. } => Some(*peer),
            Phase::Participant(p) => Some(p.peer),
            Phase::Authority(a) => Some(a.peer),
            Phase::Idle | Phase::Waiting { .. } | Phase::Left => None,
        }
    }

    /// Tears down the presence plane and claims again after `delay`.
    fn give_up(&mut self, reason: &str, delay: u64) {
        self.close_presence();
        self.phase = Phase::Waiting {
            at: self.ctx.now.ms + delay,
        };
        self.set_status(Status::Reconnecting {
            reason: reason.to_owned(),
        });
    }

    fn close_presence(&mut self) {
        if let Phase::Authority(a) = &self.phase {
            // Keep what the room looked like: a later authority inherits it.
            self.last_roster = Some(a.roster());
            for b in a.bans() {
                if !self.last_bans.contains(&b) && self.last_bans.len() < wire::MAX_BANS {
                    self.last_bans.push(b);
                }
            }
            for c in a.conns() {
                self.ctx.net(NetCmd::Close { conn: c });
            }
        }
        if let Phase::Participant(p) = &self.phase {
            self.ctx.net(NetCmd::Close { conn: p.conn });
        }
        if let Some(peer) = self.presence_peer() {
            self.ctx.net(NetCmd::ClosePeer { key: peer });
        }
    }

    fn dial_authority(&mut self, peer: PeerKey, attempt: u32) {
        let conn = self.ctx.conn_id();
        self.ctx.net(NetCmd::Connect {
            peer,
            conn,
            remote: self.room_id.clone(),
            label: None,
        });
        let now = self.ctx.now.ms;
        self.phase = Phase::Participant(Part {
            peer,
            conn,
            open: false,
            attempt,
            deadline: now + OPEN_TIMEOUT_MS,
            last_seen: now,
            last_tick: now,
            next_tick: now + OPEN_TIMEOUT_MS,
            lobby: None,
            claimed_at: None,
        });
        self.set_status(Status::Connecting);
    }

    /// A dial to the authority failed: retry, or give up (the authority is gone).
    fn dial_failed(&mut self, peer: PeerKey, attempt: u32, unavailable: bool) {
        if unavailable || attempt + 1 >= CONNECT_ATTEMPTS {
            self.give_up(
                if unavailable {
                    "authority gone"
                } else {
                    "could not connect"
                },
                RECLAIM_DELAY_MS,
            );
        } else {
            self.phase = Phase::Redial {
                peer,
                at: self.ctx.now.ms + RETRY_MS,
                attempt: attempt + 1,
            };
        }
    }

    fn become_authority(&mut self, peer: PeerKey) {
        let inherited = self.last_roster.take();
        let bans = self.last_bans.clone();
        let a = Authority::new(
            peer,
            self.ctx.now.ms,
            inherited.as_ref(),
            bans,
            self.cfg.lobby_on_start,
        );
        self.phase = Phase::Authority(Box::new(a));
        self.set_status(Status::Authority);
        self.sync_self();
        self.claim_host_if_keyed();
        self.after_authority_change(Effects {
            roster_changed: true,
            ..Effects::default()
        });
    }

    // ---- inputs -------------------------------------------------------------------------

    fn on_timeout(&mut self) {
        let now = self.ctx.now.ms;
        if self.media_retry_at.is_some_and(|t| t <= now) {
            self.media_retry_at = None;
            self.open_media();
        }
        match &mut self.phase {
            Phase::Claiming { peer, deadline } if *deadline <= now => {
                let peer = *peer;
                self.ctx.net(NetCmd::ClosePeer { key: peer });
                self.phase = Phase::Waiting { at: now + RETRY_MS };
                self.set_status(Status::Reconnecting {
                    reason: "claim timed out".into(),
                });
            }
            Phase::Opening { peer, deadline, .. } if *deadline <= now => {
                let peer = *peer;
                self.ctx.net(NetCmd::ClosePeer { key: peer });
                self.give_up("broker did not answer", RETRY_MS);
            }
            Phase::Redial { peer, at, attempt } if *at <= now => {
                let (peer, attempt) = (*peer, *attempt);
                self.dial_authority(peer, attempt);
            }
            Phase::Waiting { at } if *at <= now => self.claim(),
            Phase::Participant(p) => {
                if !p.open && p.deadline <= now {
                    let (peer, conn, attempt) = (p.peer, p.conn, p.attempt);
                    self.ctx.net(NetCmd::Close { conn });
                    self.dial_failed(peer, attempt, false);
                } else if p.open && p.next_tick <= now {
                    let gap = now.saturating_sub(p.last_tick);
                    p.last_tick = now;
                    p.next_tick = now + PING_MS;
                    let conn = p.conn;
                    if gap > FREEZE_GAP_MS {
                        p.last_seen = now;
                    }
                    let silent = now.saturating_sub(p.last_seen) > AUTHORITY_SILENCE_MS;
                    if silent {
                        self.give_up("authority silent", RECLAIM_DELAY_MS);
                    } else {
                        self.ctx.send(conn, wire::bare("ping"));
                    }
                }
            }
            Phase::Authority(a) if a.next_tick <= now => {
                let fx = a.tick(&mut self.ctx);
                self.after_authority_change(fx);
                // The roster went out with the tick; the mesh still follows it.
                self.refresh_roster_from_authority();
            }
            _ => {}
        }
        if self.next_announce.is_some_and(|t| t <= now) {
            self.announce_due();
        }
        let am_host = self.am_crypto_host();
        self.mesh.on_timeout(&mut self.ctx, &self.roster, am_host);
    }

    fn on_net(&mut self, ev: NetEvent) {
        match ev {
            NetEvent::PeerOpen { key, id } => self.on_peer_open(key, id),
            NetEvent::PeerFailed { key, failure } => self.on_peer_failed(key, failure),
            NetEvent::ConnFailed { conn } => self.on_conn_failed(conn),
            NetEvent::Incoming {
                peer,
                conn,
                remote,
                fingerprint,
                label,
            } => self.on_incoming(peer, conn, remote, fingerprint, label),
            NetEvent::Open { conn, .. } => self.on_open(conn),
            NetEvent::Data { conn, frame } => self.on_data(conn, frame),
            NetEvent::Closed { conn } => self.on_closed(conn),
            NetEvent::Left { peer, remote } => self.on_left(peer, &remote),
        }
    }

    fn on_peer_open(&mut self, key: PeerKey, id: String) {
        if self.mesh.peer == Some(key) {
            self.mesh.self_id = Some(id);
            self.sync_self();
            self.announce_now();
            self.claim_host_if_keyed();
            let am_host = self.am_crypto_host();
            self.mesh.sync(&mut self.ctx, &self.roster, am_host);
            return;
        }
        match &self.phase {
            Phase::Claiming { peer, .. } if *peer == key => self.become_authority(key),
            Phase::Opening { peer, attempt, .. } if *peer == key => {
                let attempt = *attempt;
                self.dial_authority(key, attempt);
            }
            _ => {}
        }
    }

    fn on_peer_failed(&mut self, key: PeerKey, failure: PeerFailure) {
        if self.mesh.peer == Some(key) {
            // A new media peer means a new voiceId; the roster self-heals by re-announcing.
            self.mesh.reset();
            self.sync_self();
            self.media_retry_at = Some(self.ctx.now.ms + RETRY_MS);
            return;
        }
        if self.presence_peer() != Some(key) {
            return;
        }
        match (&self.phase, failure) {
            (Phase::Claiming { .. }, PeerFailure::IdTaken) => {
                self.ctx.net(NetCmd::ClosePeer { key });
                let peer = self.ctx.peer_key();
                self.ctx.net(NetCmd::OpenPeer {
                    plane: Plane::Presence,
                    key: peer,
                    id: None,
                });
                self.phase = Phase::Opening {
                    peer,
                    deadline: self.ctx.now.ms + CLAIM_TIMEOUT_MS,
                    attempt: 0,
                };
                self.set_status(Status::Connecting);
            }
            (Phase::Claiming { .. }, _) => self.give_up("claim failed", RETRY_MS),
            (Phase::Authority(_), _) => self.give_up("lost the room id", RECLAIM_DELAY_MS),
            _ => self.give_up("broker connection lost", RETRY_MS),
        }
    }

    fn on_conn_failed(&mut self, conn: ConnId) {
        if self.mesh.owns(conn) {
            self.mesh.on_closed(&mut self.ctx, conn);
            return;
        }
        if let Phase::Participant(p) = &self.phase
            && p.conn == conn
        {
            let (peer, attempt, open) = (p.peer, p.attempt, p.open);
            if open {
                self.give_up("authority gone", RECLAIM_DELAY_MS);
            } else {
                // EXPIRE: nobody holds the room id any more.
                self.dial_failed(peer, attempt, true);
            }
        }
    }

    fn on_incoming(
        &mut self,
        peer: PeerKey,
        conn: ConnId,
        remote: String,
        fingerprint: Option<String>,
        label: Option<String>,
    ) {
        if self.mesh.peer == Some(peer) {
            self.mesh
                .on_incoming(&mut self.ctx, conn, remote, label.as_deref());
            let am_host = self.am_crypto_host();
            self.mesh.on_open(&mut self.ctx, conn, am_host);
            // Frames may have been held for this sender already.
            self.mesh.sync(&mut self.ctx, &self.roster, false);
            return;
        }
        match &mut self.phase {
            Phase::Authority(a) if a.peer == peer => a.on_open(&mut self.ctx, conn, fingerprint),
            // Nobody else takes presence connections.
            _ => self.ctx.net(NetCmd::Close { conn }),
        }
    }

    fn on_open(&mut self, conn: ConnId) {
        if self.mesh.owns(conn) {
            let am_host = self.am_crypto_host();
            self.mesh.on_open(&mut self.ctx, conn, am_host);
            return;
        }
        if let Phase::Participant(p) = &mut self.phase
            && p.conn == conn
            && !p.open
        {
            let now = self.ctx.now.ms;
            p.open = true;
            p.last_seen = now;
            p.last_tick = now;
            p.next_tick = now + PING_MS;
            p.lobby = None;
            self.set_status(Status::Connected);
            let knock = self.knock_frame();
            self.ctx.send(conn, knock);
            if self.in_call {
                self.send_voice();
            }
            self.claim_host_if_keyed();
        }
    }

    fn on_data(&mut self, conn: ConnId, frame: Value) {
        if self.mesh.owns(conn) {
            let host = self.crypto_host();
            self.mesh
                .on_data(&mut self.ctx, &self.roster, conn, frame, host.as_deref());
            return;
        }
        match &mut self.phase {
            Phase::Authority(a) if a.owns(conn) => {
                let fx = a.on_frame(&mut self.ctx, &mut self.cfg, &self.room, conn, frame);
                self.after_authority_change(fx);
            }
            Phase::Participant(p) if p.conn == conn && p.open => {
                p.last_seen = self.ctx.now.ms;
                self.on_authority_frame(frame);
            }
            _ => {}
        }
    }

    fn on_left(&mut self, peer: PeerKey, remote: &str) {
        if remote != self.room_id || self.presence_peer() != Some(peer) {
            return;
        }
        // The broker freed the room id after its grace: nobody holds it, claim now.
        if matches!(self.phase, Phase::Participant(_) | Phase::Redial { .. }) {
            self.give_up("authority left", 0);
        }
    }

    fn on_closed(&mut self, conn: ConnId) {
        if self.mesh.owns(conn) {
            self.mesh.on_closed(&mut self.ctx, conn);
            return;
        }
        match &mut self.phase {
            Phase::Authority(a) if a.owns(conn) => {
                let fx = a.on_closed(conn);
                self.after_authority_change(fx);
            }
            Phase::Participant(p) if p.conn == conn => {
                if p.open {
                    self.give_up("authority gone", RECLAIM_DELAY_MS);
                } else {
                    let (peer, attempt) = (p.peer, p.attempt);
                    self.dial_failed(peer, attempt, false);
                }
            }
            _ => {}
        }
    }

    // ---- participant side ---------------------------------------------------------------

    fn on_authority_frame(&mut self, frame: Value) {
        let Some((msg, extras)) = wire::read_authority(frame) else {
            return;
        };
        let pending = extras.pending;
        match msg {
            AuthorityWire::Roster(r) => {
                self.learn_bans(extras.bans);
                if self.am_host() && !pending.is_empty() {
                    let queue = pending
                        .into_iter()
                        .map(|(id, name)| Knocker { id, name })
                        .collect();
                    self.ctx.event(Event::LobbyQueue(queue));
                }
                let me = self.mesh.self_id.clone();
                let lacks_us = me
                    .as_ref()
                    .is_some_and(|me| !r.members.iter().any(|m| &m.id == me));
                self.set_roster(r);
                let waiting = matches!(
                    &self.phase,
                    Phase::Participant(Part {
                        lobby: Some(
                            LobbyStatus::Waiting
                                | LobbyStatus::Denied
                                | LobbyStatus::Locked
                                | LobbyStatus::Unverified
                        ),
                        ..
                    })
                );
                if self.in_call && lacks_us && !waiting {
                    self.send_voice();
                }
                self.claim_host_if_keyed();
                self.rekick();
            }
            AuthorityWire::Ping => {}
            AuthorityWire::Lobby { status } => {
                if let Phase::Participant(p) = &mut self.phase {
                    p.lobby = Some(status);
                }
                self.ctx.event(Event::Lobby(status));
                if status == LobbyStatus::Admitted && self.in_call {
                    self.send_voice();
                }
            }
            AuthorityWire::Kick => self.kicked(),
            AuthorityWire::Reset => self.ctx.event(Event::Reset),
        }
    }

    /// Remembers every ban heard of; hands those the authority's roster lacks back to it (a
    /// coordinator that did not inherit them, e.g. one that claimed a freed id first).
    fn learn_bans(&mut self, carried: Vec<String>) {
        let missing: Vec<String> = self
            .last_bans
            .iter()
            .filter(|b| !carried.contains(b))
            .cloned()
            .collect();
        for b in carried {
            if !self.last_bans.contains(&b) && self.last_bans.len() < wire::MAX_BANS {
                self.last_bans.push(b);
            }
        }
        if !missing.is_empty()
            && let Phase::Participant(p) = &self.phase
            && p.open
        {
            let conn = p.conn;
            self.ctx.send(conn, wire::bans(&missing));
        }
    }

    fn kicked(&mut self) {
        self.end("kicked");
    }

    /// Out of the room for good: both peers closed, nothing more will happen.
    fn end(&mut self, reason: &str) {
        self.in_call = false;
        self.next_announce = None;
        self.close_presence();
        self.mesh.bye(&mut self.ctx);
        if let Some(p) = self.mesh.peer {
            self.ctx.net(NetCmd::ClosePeer { key: p });
        }
        self.mesh.reset();
        self.media_retry_at = None;
        self.phase = Phase::Left;
        self.set_roster(Roster::default());
        self.set_status(Status::Left {
            reason: reason.to_owned(),
        });
    }

    fn assertion(&mut self) -> Option<String> {
        let agent = self.cfg.agent.as_ref()?;
        let key = agent.key.as_ref()?;
        let fp = self.cfg.fingerprint.as_deref()?;
        let now = self.ctx.now.ms;
        match &self.assertion {
            Some((at, a)) if now.saturating_sub(*at) < ASSERTION_RESIGN_MS => Some(a.clone()),
            _ => {
                let a = sign_agent_assertion(key, &self.room, fp, self.ctx.now.unix());
                self.assertion = Some((now, a.clone()));
                Some(a)
            }
        }
    }

    fn knock_frame(&mut self) -> Value {
        let assertion = self.assertion();
        wire::knock(&Announce {
            name: if self.cfg.name.is_empty() {
                "Guest"
            } else {
                &self.cfg.name
            },
            avatar: &self.cfg.avatar,
            token: &self.cfg.token,
            voice_id: self.mesh.self_id.as_deref(),
            meta: None,
            jwt: self.cfg.credential.as_deref(),
            agent_assertion: assertion.as_deref(),
            agent_credit: self.credit.as_deref(),
        })
    }

    fn voice_frame(&mut self, on: bool) -> Value {
        let assertion = self.assertion();
        wire::voice(
            on,
            self.cam,
            &Announce {
                name: &self.cfg.name,
                avatar: &self.cfg.avatar,
                token: &self.cfg.token,
                voice_id: self.mesh.self_id.as_deref(),
                meta: Some(&self.cfg.meta),
                jwt: self.cfg.credential.as_deref(),
                agent_assertion: assertion.as_deref(),
                agent_credit: self.credit.as_deref(),
            },
        )
    }

    /// Sends our `voice` to the authority (participant), or updates our own entry (authority).
    fn send_voice(&mut self) {
        if self.mesh.self_id.is_none() {
            return;
        }
        if let Phase::Participant(p) = &self.phase {
            if !p.open {
                return;
            }
            let conn = p.conn;
            let v = self.voice_frame(self.in_call);
            self.ctx.send(conn, v);
        } else if self.is_authority() {
            self.sync_self();
        }
    }

    fn announce_now(&mut self) {
        if self.in_call {
            self.send_voice();
        }
    }

    fn announce_due(&mut self) {
        let now = self.ctx.now.ms;
        self.announce_at.retain(|t| *t > now);
        if self.in_call {
            self.send_voice();
            self.next_announce = Some(
                self.announce_at
                    .first()
                    .copied()
                    .unwrap_or(now + REANNOUNCE_MS),
            );
        } else {
            self.next_announce = None;
        }
    }

    // ---- authority side -----------------------------------------------------------------

    fn self_member(&self) -> Option<Member> {
        if !self.in_call {
            return None;
        }
        Some(Member {
            id: self.mesh.self_id.clone()?,
            name: self.cfg.name.clone(),
            cam: self.cam,
            avatar: Some(self.cfg.avatar.clone()),
            meta: Some(self.cfg.meta.clone()),
        })
    }

    /// Keeps the authority's own roster entry in step with our call state.
    fn sync_self(&mut self) {
        let m = self.self_member();
        if let Phase::Authority(a) = &mut self.phase {
            let fx = a.set_self(&self.cfg, m);
            self.after_authority_change(fx);
        }
    }

    fn after_authority_change(&mut self, fx: Effects) {
        if fx.reset {
            self.ctx.event(Event::Reset);
        }
        if fx.kicked_self {
            // Tell the room first: the roster carries the bans (our own token's included),
            // which whoever coordinates next inherits.
            if let Phase::Authority(a) = &self.phase {
                a.broadcast_roster(&mut self.ctx);
            }
            self.kicked();
            return;
        }
        if fx.roster_changed
            && let Phase::Authority(a) = &self.phase
        {
            a.broadcast_roster(&mut self.ctx);
            self.refresh_roster_from_authority();
        }
    }

    fn refresh_roster_from_authority(&mut self) {
        if let Phase::Authority(a) = &self.phase {
            let r = a.roster();
            self.set_roster(r);
            self.rekick();
        }
    }

    /// Installs a new roster view: events, mesh links, grants resync.
    fn set_roster(&mut self, r: Roster) {
        let old = std::mem::replace(&mut self.roster, r);
        if self.is_authority() || matches!(self.phase, Phase::Participant(_)) {
            self.last_roster = Some(self.roster.clone());
        }
        let am_host = self.am_crypto_host();
        self.mesh.sync(&mut self.ctx, &self.roster, am_host);
        if old.members == self.roster.members && old.host == self.roster.host {
            return;
        }
        let now = self.participants();
        for p in &now {
            if !old.members.iter().any(|m| m.id == p.id) {
                self.ctx.event(Event::Join(p.clone()));
            }
        }
        for m in &old.members {
            if !self.roster.members.iter().any(|x| x.id == m.id) {
                self.ctx.event(Event::Leave(m.id.clone()));
            }
        }
        self.ctx.event(Event::Participants(now));
    }

    // ---- host ---------------------------------------------------------------------------

    fn am_host(&self) -> bool {
        self.mesh.self_id.is_some() && self.roster.host() == self.mesh.self_id.as_deref()
    }

    /// Whether we are the verified host of a cryptographic tier (we set grants).
    fn am_crypto_host(&self) -> bool {
        self.cfg.host.is_cryptographic() && self.am_host()
    }

    fn crypto_host(&self) -> Option<String> {
        self.cfg
            .host
            .is_cryptographic()
            .then(|| self.roster.host().map(str::to_owned))
            .flatten()
    }

    fn signed(&mut self, op: HostOp, target: Option<&str>) -> Option<String> {
        let key = self.cfg.host_key.as_ref()?;
        let fp = self.cfg.fingerprint.as_deref().unwrap_or("");
        let cmd = HostCmd::new(
            &self.room,
            fp,
            op,
            target,
            self.ctx.now.unix(),
            self.ctx.jti(),
        );
        Some(sign_host_cmd(key, &cmd))
    }

    /// Issues a host operation the way the room's tier allows.
    fn host_op(&mut self, op: HostOp, target: Option<&str>) -> Result<(), HostError> {
        match self.cfg.host.clone() {
            HostCommit::None => Err(HostError::NoHostTier),
            HostCommit::Key(_) => {
                let token = self.signed(op, target).ok_or(HostError::NotHost)?;
                match &mut self.phase {
                    Phase::Authority(a) => {
                        let fx = a.on_host_command(
                            &mut self.ctx,
                            &self.cfg,
                            &self.room,
                            Key::Own,
                            &token,
                        );
                        self.after_authority_change(fx);
                        Ok(())
                    }
                    Phase::Participant(p) if p.open => {
                        let conn = p.conn;
                        self.ctx.send(conn, wire::host_command(&token));
                        Ok(())
                    }
                    _ => Err(HostError::NotConnected),
                }
            }
            // Soft and email tiers: the coordinator acts directly, if it is the host.
            HostCommit::Name(_) | HostCommit::Email(_) => {
                if !(self.is_authority() && self.am_host()) {
                    return Err(HostError::NotHost);
                }
                self.direct_host_op(op, target);
                Ok(())
            }
        }
    }

    fn direct_host_op(&mut self, op: HostOp, target: Option<&str>) {
        // The authority applies a self-injected command; building one keeps a single code path.
        let cmd = HostCmd::new(
            &self.room,
            "",
            op,
            target,
            self.ctx.now.unix(),
            self.ctx.jti(),
        );
        if let Phase::Authority(a) = &mut self.phase {
            let fx = a.apply_direct(&mut self.ctx, &cmd);
            self.after_authority_change(fx);
        }
    }

    /// With the host key: claim the host slot whenever the roster does not name us.
    fn claim_host_if_keyed(&mut self) {
        if self.cfg.host_key.is_none() || !matches!(self.cfg.host, HostCommit::Key(_)) {
            return;
        }
        if self.mesh.self_id.is_none() || !self.in_call || self.am_host() {
            return;
        }
        let now = self.ctx.now.ms;
        if let Phase::Participant(p) = &mut self.phase {
            if !p.open
                || p.claimed_at
                    .is_some_and(|t| now.saturating_sub(t) < RETRY_MS)
            {
                return;
            }
            p.claimed_at = Some(now);
        }
        let _ = self.host_op(HostOp::Claim, None);
    }

    /// As host, kick again anyone we kicked who is back (after a migration the new authority
    /// starts with empty ban lists).
    fn rekick(&mut self) {
        if !self.am_host() || self.kicked_voice.is_empty() {
            return;
        }
        let back: Vec<String> = self
            .roster
            .members
            .iter()
            .filter(|m| self.kicked_voice.contains(&m.id))
            .map(|m| m.id.clone())
            .collect();
        for id in back {
            let _ = self.host_op(HostOp::Kick, Some(&id));
        }
    }

    // ---- media peer ---------------------------------------------------------------------

    fn open_media(&mut self) {
        let key = self.ctx.peer_key();
        self.mesh.reset();
        self.mesh.peer = Some(key);
        self.ctx.net(NetCmd::OpenPeer {
            plane: Plane::Media,
            key,
            id: None,
        });
    }

    // ---- controller API -----------------------------------------------------------------

    /// Joins the call (`voice` on). Announces now and again at +600 ms, +1800 ms, then every
    /// 3 s. Returns whether the presence link is up (the announce is kept for when it is).
    pub fn join(&mut self, now: Now) -> bool {
        self.ctx.now = now;
        if matches!(self.phase, Phase::Left) {
            return false;
        }
        self.in_call = true;
        self.announce_at = JOIN_ANNOUNCES_MS.iter().map(|d| now.ms + d).collect();
        self.next_announce = self.announce_at.first().copied();
        self.send_voice();
        self.claim_host_if_keyed();
        matches!(
            self.phase,
            Phase::Authority(_) | Phase::Participant(Part { open: true, .. })
        )
    }

    /// Leaves the call and the room: `voice` off and `leave`, then tears everything down.
    pub fn leave(&mut self, now: Now) {
        self.ctx.now = now;
        if let Phase::Participant(p) = &self.phase
            && p.open
        {
            let conn = p.conn;
            self.ctx.send(conn, wire::bare("leave"));
        }
        self.end("left");
    }

    /// Turns the camera flag on or off (re-announced).
    pub fn set_cam(&mut self, now: Now, cam: bool) {
        self.ctx.now = now;
        self.cam = cam;
        self.send_voice();
    }

    /// Presents a fresh agent credit: re-knock and re-announce.
    pub fn set_agent_credit(&mut self, now: Now, credit: Option<String>) {
        self.ctx.now = now;
        self.credit = credit;
        if let Phase::Participant(p) = &self.phase
            && p.open
        {
            let conn = p.conn;
            let k = self.knock_frame();
            self.ctx.send(conn, k);
        }
        self.send_voice();
    }

    /// Sends an app payload to everyone (`{k:'app', data}`).
    pub fn broadcast(&mut self, now: Now, data: Value) -> Result<usize, SendError> {
        self.ctx.now = now;
        let c = Content::App { data };
        self.mesh
            .send_content(&mut self.ctx, &self.roster, &c, None)
    }

    /// Sends an app payload to one member.
    pub fn send_to(&mut self, now: Now, voice_id: &str, data: Value) -> Result<usize, SendError> {
        self.ctx.now = now;
        let c = Content::App { data };
        self.mesh
            .send_content(&mut self.ctx, &self.roster, &c, Some(voice_id))
    }

    /// Sends chat text to everyone, or directed to one member.
    pub fn chat(&mut self, now: Now, text: &str, to: Option<&str>) -> Result<usize, SendError> {
        self.ctx.now = now;
        let c = self
            .mesh
            .chat(&self.ctx, text, &self.cfg.name, to.is_some());
        self.mesh.send_content(&mut self.ctx, &self.roster, &c, to)
    }

    /// Sends any content envelope (withheld per recipient by the grants).
    pub fn send_content(
        &mut self,
        now: Now,
        content: &Content,
        to: Option<&str>,
    ) -> Result<usize, SendError> {
        self.ctx.now = now;
        self.mesh
            .send_content(&mut self.ctx, &self.roster, content, to)
    }

    /// Sends a raw frame on the presence link to the authority, bypassing the engine (for
    /// tools and tests that speak the wire directly). Returns whether a link was open.
    pub fn send_presence_frame(&mut self, now: Now, frame: Value) -> bool {
        self.ctx.now = now;
        match &self.phase {
            Phase::Participant(p) if p.open => {
                let conn = p.conn;
                self.ctx.send(conn, frame);
                true
            }
            _ => false,
        }
    }

    /// Host: waiting room on or off.
    pub fn set_lobby(&mut self, now: Now, on: bool) -> Result<(), HostError> {
        self.ctx.now = now;
        self.host_op(
            if on {
                HostOp::Lobbyon
            } else {
                HostOp::Lobbyoff
            },
            None,
        )
    }

    /// Host: let a knocker in (its [`Knocker::id`]).
    pub fn admit(&mut self, now: Now, knock_id: &str) -> Result<(), HostError> {
        self.ctx.now = now;
        self.host_op(HostOp::Admit, Some(knock_id))
    }

    /// Host: turn a knocker away.
    pub fn deny(&mut self, now: Now, knock_id: &str) -> Result<(), HostError> {
        self.ctx.now = now;
        self.host_op(HostOp::Deny, Some(knock_id))
    }

    /// Host: remove a member (kicked by voiceId and token; kept out).
    pub fn remove(&mut self, now: Now, voice_id: &str) -> Result<(), HostError> {
        self.ctx.now = now;
        self.host_op(HostOp::Kick, Some(voice_id))?;
        if !self.kicked_voice.iter().any(|v| v == voice_id) {
            self.kicked_voice.push(voice_id.to_owned());
        }
        Ok(())
    }

    /// Host: lock or unlock the room to newcomers.
    pub fn set_locked(&mut self, now: Now, locked: bool) -> Result<(), HostError> {
        self.ctx.now = now;
        self.host_op(if locked { HostOp::Lock } else { HostOp::Unlock }, None)
    }

    /// Host: clear everyone's chat.
    pub fn reset(&mut self, now: Now) -> Result<(), HostError> {
        self.ctx.now = now;
        self.host_op(HostOp::Reset, None)
    }

    /// Host (cryptographic tier): set a member's grant, live, for everyone.
    pub fn set_capability_grant(
        &mut self,
        now: Now,
        voice_id: &str,
        grant: Grant,
    ) -> Result<(), HostError> {
        self.ctx.now = now;
        if !self.cfg.host.is_cryptographic() {
            return Err(HostError::NoHostTier);
        }
        if !self.am_host() {
            return Err(HostError::NotHost);
        }
        self.mesh
            .host_grants
            .insert(voice_id.to_owned(), grant.canonical());
        let grants = self.mesh.host_grants.clone();
        let me = self.mesh.self_id.clone().unwrap_or_default();
        self.mesh.apply_grants(&mut self.ctx, grants, &me);
        self.mesh.send_caps(&mut self.ctx, None);
        Ok(())
    }
}
