//! One participant's room engine: the claim loop, the participant and authority roles, the
//! data mesh, and the controller API.
//!
//! The struct and its run loop live here; each section of its behaviour has a file below.

mod api;
mod claim;
mod host;
mod inputs;
mod participant;
mod roster;

use kibitz_proto::binarypack::Value;
use kibitz_proto::grants::Grant;
use kibitz_proto::presence::{LobbyStatus, Roster};
use kibitz_proto::room::{normalize_room, peer_id_for};

use crate::authority::Authority;
use crate::config::RoomConfig;
use crate::ctx::Ctx;
use crate::media::{Media, MediaLink};
use crate::mesh::{Mesh, MeshLink};
use crate::net::{ConnId, PeerKey};
use crate::types::{AuditEntry, Event, Input, Knocker, Now, Output, Participant, Status};

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
    media: Media,
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
        let (media, cam) = (Media::new(cfg.media), cfg.cam);
        Self {
            room_id: peer_id_for(&room),
            room,
            ctx,
            cfg,
            phase: Phase::Idle,
            status: Status::Idle,
            mesh: Mesh::default(),
            media,
            media_retry_at: None,
            in_call: false,
            cam,
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
        self.media_sync();
    }

    /// One pass of the media plane over the current state (it is level-triggered).
    fn media_sync(&mut self) {
        if matches!(self.phase, Phase::Left) {
            return;
        }
        self.media.sync(&mut self.ctx, &mut self.mesh, &self.roster);
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
        at(self
            .media
            .next_timeout(&self.mesh, self.ctx.now.ms, self.ctx.now.unix_ms));
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

    /// The media connections, one per peer (MEDIA.md).
    pub fn media_links(&self) -> Vec<MediaLink> {
        self.media.links()
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

    /// How many frames never went out because their recipient's link did not open in time
    /// (or too many waited, or it left the roster first); each is also in the audit feed.
    pub fn unsent_count(&self) -> u64 {
        self.mesh.pending_dropped
    }

    fn set_status(&mut self, s: Status) {
        if self.status != s {
            self.status = s.clone();
            self.ctx.event(Event::Status(s));
        }
    }
}
