//! The data mesh (KIBITZ.md §4.9) and capability grants (§4.8).
//!
//! Full mesh over the roster's voiceIds on the media peer; the smaller id dials. Each pair has
//! a `sig` channel (control frames, content fallback) and, once the other side advertised
//! `{t:'cap', bulk:1}`, a `bulk` channel that the dialler opens and all content prefers. Both
//! sides send an `mh` keepalive on sig every 2 s (zeros: this client carries no media), which
//! is what the web client's watchdog expects of a live channel; we hold peers that keep it
//! alive to the same rule. `{t:'bye'}` on leaving lets peers drop the links at once.
//!
//! Every frame arriving on a mesh connection is attributed to the connection's remote peer
//! id, never to a field. Grants are enforced here on both sides: content is withheld from a
//! recipient whose grant does not allow it, and content from a sender without `send-chat` is
//! dropped.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use kibitz_proto::binarypack::{Value, to_value};
use kibitz_proto::content::{Chat, Content};
use kibitz_proto::grants::{Act, Grant, Perceive, Role, effective_grant};
use kibitz_proto::mesh::{MeshControl, MeshFrame, should_initiate};
use kibitz_proto::presence::{Member, Roster};

use crate::config::timing::{
    MESH_DROP_GRACE_MS, MESH_KEEPALIVE_MS, MESH_REDIAL_MS, PENDING_MAX, PENDING_MS, SIG_DEAD_MS,
};
use crate::ctx::Ctx;
use crate::net::{BULK_LABEL, ConnId, NetCmd, PeerKey};
use crate::types::{AuditEntry, AuditKind, Event, Message, SendError};

/// Frames held from a sender the roster does not list yet (it may be just behind).
const HELD_PER_CONN: usize = 32;
/// Grants lapse once their issuer has been out of the roster this long (ms): longer than a
/// migration takes to rebuild the roster, shorter than anyone would mind.
pub const GRANT_LAPSE_MS: u64 = 15_000;
/// Audit entries kept.
const AUDIT_CAP: usize = 1024;

/// The two channels of a pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Lane {
    /// The first connection: control frames, and content until bulk is open.
    Sig,
    /// The content channel.
    Bulk,
}

/// One data-mesh connection, as [`crate::Engine::mesh_links`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshLink {
    /// The remote voiceId.
    pub remote: String,
    /// Which channel of the pair.
    pub lane: Lane,
    /// Whether it is open.
    pub open: bool,
}

#[derive(Debug)]
struct Link {
    remote: String,
    lane: Lane,
    open: bool,
    /// We dialled it (so we re-dial it).
    ours: bool,
    /// When anything last arrived (or it opened).
    last_recv: u64,
    /// When it opened.
    opened_at: u64,
    /// The remote sends the `mh` keepalive on it, so silence means it is dead.
    keepalive: bool,
    held: Vec<Value>,
}

impl Link {
    fn new(remote: String, lane: Lane, ours: bool, now: u64) -> Self {
        Self {
            remote,
            lane,
            open: false,
            ours,
            last_recv: now,
            opened_at: now,
            keepalive: false,
            held: Vec::new(),
        }
    }
}

/// A frame waiting for a member's link to open (the member is in the roster, its link is not
/// up yet): sent in order once it opens, dropped once too old or too many.
#[derive(Debug)]
struct Queued {
    at: u64,
    frame: Value,
    /// The envelope kind or control tag, for the audit feed.
    what: String,
    /// What the recipient must perceive (re-checked at flush: grants may change meanwhile).
    need: Vec<Perceive>,
    /// A control frame (sig only), not content.
    control: bool,
}

#[derive(Debug, Default)]
pub(crate) struct Mesh {
    pub peer: Option<PeerKey>,
    pub self_id: Option<String>,
    links: BTreeMap<ConnId, Link>,
    redial_at: BTreeMap<(String, Lane), u64>,
    /// Peers that advertised a bulk channel.
    bulk_capable: BTreeSet<String>,
    /// Peers that said `bye`: not re-dialled while the roster still lists them.
    left: BTreeSet<String>,
    /// Since when a peer we have links to is missing from the roster.
    absent_since: BTreeMap<String, u64>,
    next_keepalive: Option<u64>,
    /// Grants in force, from the verified host's last `caps`.
    pub explicit: BTreeMap<String, Grant>,
    /// Who issued them: they lapse (to role defaults) once the issuer leaves the roster.
    issuer: Option<String>,
    issuer_missing_since: Option<u64>,
    /// What we grant, while we are the verified host.
    pub host_grants: BTreeMap<String, Grant>,
    pub audit: Vec<AuditEntry>,
    seq: u64,
    /// Per member: frames waiting for its link to open.
    pending: BTreeMap<String, VecDeque<Queued>>,
    /// Frames dropped from those queues (bound, age, member gone).
    pub pending_dropped: u64,
    /// Per peer, the `mh` figures (kbps: in video, in audio, out video, out audio) the media
    /// plane measured; zeros for peers without media.
    pub mh_figures: BTreeMap<String, [u64; 4]>,
}

fn member<'a>(roster: &'a Roster, id: &str) -> Option<&'a Member> {
    roster.members.iter().find(|m| m.id == id)
}

impl Mesh {
    /// Forgets every connection (the media peer is gone).
    pub fn reset(&mut self) {
        let waiting: usize = self.pending.values().map(VecDeque::len).sum();
        self.pending_dropped += waiting as u64;
        self.pending.clear();
        self.links.clear();
        self.redial_at.clear();
        self.bulk_capable.clear();
        self.left.clear();
        self.absent_since.clear();
        self.next_keepalive = None;
        self.peer = None;
        self.self_id = None;
    }

    /// Every link.
    pub fn links(&self) -> Vec<MeshLink> {
        self.links
            .values()
            .map(|l| MeshLink {
                remote: l.remote.clone(),
                lane: l.lane,
                open: l.open,
            })
            .collect()
    }

    pub fn owns(&self, conn: ConnId) -> bool {
        self.links.contains_key(&conn)
    }

    fn link_to(&self, remote: &str, lane: Lane) -> Option<ConnId> {
        self.links
            .iter()
            .find(|(_, l)| l.lane == lane && l.remote == remote)
            .map(|(c, _)| *c)
    }

    fn open_on(&self, remote: &str, lane: Lane) -> Option<ConnId> {
        self.link_to(remote, lane)
            .filter(|c| self.links.get(c).is_some_and(|l| l.open))
    }

    /// Since when `remote`'s sig channel is open.
    pub fn sig_open_since(&self, remote: &str) -> Option<u64> {
        self.open_on(remote, Lane::Sig)
            .and_then(|c| self.links.get(&c))
            .map(|l| l.opened_at)
    }

    /// Where content to `remote` goes: bulk once open, else sig.
    fn content_conn(&self, remote: &str) -> Option<ConnId> {
        self.open_on(remote, Lane::Bulk)
            .or_else(|| self.open_on(remote, Lane::Sig))
    }

    pub fn next_timeout(&self) -> Option<u64> {
        self.redial_at
            .values()
            .copied()
            .chain(self.next_keepalive)
            .chain(self.absent_since.values().map(|t| t + MESH_DROP_GRACE_MS))
            .chain(
                self.pending
                    .values()
                    .filter_map(|q| q.front().map(|f| f.at + PENDING_MS)),
            )
            .min()
    }

    fn dial(&mut self, ctx: &mut Ctx, peer: PeerKey, remote: &str, lane: Lane) {
        let conn = ctx.conn_id();
        self.links
            .insert(conn, Link::new(remote.to_owned(), lane, true, ctx.now.ms));
        ctx.net(NetCmd::Connect {
            peer,
            conn,
            remote: remote.to_owned(),
            label: (lane == Lane::Bulk).then(|| BULK_LABEL.to_owned()),
        });
    }

    /// Dials whatever we should and have not: sig to every member we initiate with, bulk
    /// to those of them that take it.
    fn dial_missing(&mut self, ctx: &mut Ctx, ids: &[&str]) {
        let (Some(peer), Some(me)) = (self.peer, self.self_id.clone()) else {
            return;
        };
        for &id in ids {
            if id == me || !should_initiate(&me, id) || self.left.contains(id) {
                continue;
            }
            for lane in [Lane::Sig, Lane::Bulk] {
                if lane == Lane::Bulk && !self.bulk_capable.contains(id) {
                    continue;
                }
                if self.link_to(id, lane).is_none()
                    && !self.redial_at.contains_key(&(id.to_owned(), lane))
                {
                    self.dial(ctx, peer, id, lane);
                }
            }
        }
    }

    /// Drops a link from the books. The `cap` a peer sent holds for its sig channel only: a
    /// new one brings a new `cap`.
    fn forget(&mut self, conn: ConnId) -> Option<Link> {
        let l = self.links.remove(&conn)?;
        if l.lane == Lane::Sig {
            self.bulk_capable.remove(&l.remote);
        }
        Some(l)
    }

    /// Forgets a link and closes it.
    fn close(&mut self, ctx: &mut Ctx, conn: ConnId) {
        self.forget(conn);
        ctx.net(NetCmd::Close { conn });
    }

    /// Says `bye` on every open sig channel (we are leaving the room).
    pub fn bye(&mut self, ctx: &mut Ctx) {
        let Ok(frame) = to_value(&MeshControl::Bye) else {
            return;
        };
        let conns: Vec<ConnId> = self
            .links
            .iter()
            .filter(|(_, l)| l.open && l.lane == Lane::Sig)
            .map(|(c, _)| *c)
            .collect();
        for c in conns {
            ctx.send(c, frame.clone());
        }
    }

    /// Closes every link to `remote`.
    fn drop_remote(&mut self, ctx: &mut Ctx, remote: &str) {
        let conns: Vec<ConnId> = self
            .links
            .iter()
            .filter(|(_, l)| l.remote == remote)
            .map(|(c, _)| *c)
            .collect();
        for c in conns {
            self.close(ctx, c);
        }
        self.redial_at.retain(|(id, _), _| id != remote);
    }

    pub fn audit(&mut self, ctx: &Ctx, kind: AuditKind) -> AuditEntry {
        let e = AuditEntry {
            at_unix: ctx.now.unix(),
            kind,
        };
        if self.audit.len() >= AUDIT_CAP {
            self.audit.remove(0);
        }
        self.audit.push(e.clone());
        e
    }

    fn audit_event(&mut self, ctx: &mut Ctx, kind: AuditKind) {
        let e = self.audit(ctx, kind);
        ctx.event(Event::Audit(e));
    }

    /// The grant in force for `id`, as every peer computes it.
    pub fn grant_of(&self, roster: &Roster, id: &str, now_unix: u64) -> Grant {
        let meta = member(roster, id).and_then(|m| m.meta.as_ref());
        let is_self = self.self_id.as_deref() == Some(id);
        // Others see our explicit grant or our role default; only locally is self "full".
        let role = match Role::of(meta, false) {
            Role::Agent => Role::Agent,
            _ if is_self => Role::Human,
            r => r,
        };
        effective_grant(
            role,
            self.explicit.get(id),
            meta.and_then(|m| m.backend.as_deref()),
            meta.is_some_and(|m| m.discloses_egress()),
            now_unix,
        )
    }

    /// Dials roster members we should dial, drops links to those who left, and (as host)
    /// resyncs grants.
    pub fn sync(&mut self, ctx: &mut Ctx, roster: &Roster, am_host: bool) {
        let (Some(_), Some(me)) = (self.peer, self.self_id.clone()) else {
            return;
        };
        let ids: Vec<&str> = roster.members.iter().map(|m| m.id.as_str()).collect();
        // Grants are the issuing host's. Once it has been out of the roster for a while (it
        // left; a migration only hides it for the seconds re-announcing takes) they lapse
        // everywhere alike, as every peer converges on the same roster, rather than diverge
        // by whichever version each peer last heard.
        if let Some(issuer) = &self.issuer {
            if ids.contains(&issuer.as_str()) {
                self.issuer_missing_since = None;
            } else {
                let since = *self.issuer_missing_since.get_or_insert(ctx.now.ms);
                if ctx.now.ms.saturating_sub(since) >= GRANT_LAPSE_MS {
                    self.issuer = None;
                    self.issuer_missing_since = None;
                    if !self.explicit.is_empty() {
                        self.explicit.clear();
                        self.audit_event(
                            ctx,
                            AuditKind::GrantsChanged {
                                by: "lapsed".into(),
                            },
                        );
                        ctx.event(Event::Grants(BTreeMap::new()));
                    }
                }
            }
        }
        if am_host
            && (self.issuer.as_deref() != Some(me.as_str()) || self.explicit != self.host_grants)
        {
            let grants = self.host_grants.clone();
            self.apply_grants(ctx, grants, &me);
        }
        // Links to a peer the roster no longer lists go only once it has stayed away a while:
        // a roster gap (a broker blip, a migration) must not tear the mesh down.
        let now = ctx.now.ms;
        let absent: BTreeSet<String> = self
            .links
            .values()
            .filter(|l| !ids.contains(&l.remote.as_str()))
            .map(|l| l.remote.clone())
            .collect();
        self.absent_since.retain(|id, _| absent.contains(id));
        for id in absent {
            let since = *self.absent_since.entry(id.clone()).or_insert(now);
            if now.saturating_sub(since) >= MESH_DROP_GRACE_MS {
                self.absent_since.remove(&id);
                self.drop_remote(ctx, &id);
            }
        }
        self.expire_pending(ctx, Some(roster));
        self.redial_at
            .retain(|(id, _), _| ids.contains(&id.as_str()));
        self.left.retain(|id| ids.contains(&id.as_str()));
        self.dial_missing(ctx, &ids);
        if am_host {
            self.send_caps(ctx, None);
        }
        // Frames held from senders the roster now lists.
        let ready: Vec<ConnId> = self
            .links
            .iter()
            .filter(|(_, l)| !l.held.is_empty() && member(roster, &l.remote).is_some())
            .map(|(c, _)| *c)
            .collect();
        for c in ready {
            let held = self
                .links
                .get_mut(&c)
                .map(|l| std::mem::take(&mut l.held))
                .unwrap_or_default();
            for f in held {
                // Held frames are content: nothing for the media plane.
                let _ = self.on_data(ctx, roster, c, f, None);
            }
        }
    }

    pub fn on_timeout(&mut self, ctx: &mut Ctx, roster: &Roster, am_host: bool) {
        let now = ctx.now.ms;
        self.expire_pending(ctx, None);
        if self.next_keepalive.is_some_and(|t| t <= now) {
            self.keepalive(ctx);
        }
        let before = self.redial_at.len();
        self.redial_at.retain(|_, at| *at > now);
        let drop_due = self
            .absent_since
            .values()
            .any(|t| t + MESH_DROP_GRACE_MS <= now);
        if self.redial_at.len() != before || drop_due {
            self.sync(ctx, roster, am_host);
        }
    }

    /// Every 2 s: `mh` on every open sig channel, and a fresh sig channel in place of one
    /// we dialled whose keepalive has stopped (open but dead, as a stalled SCTP association
    /// over a relay can be).
    fn keepalive(&mut self, ctx: &mut Ctx) {
        let now = ctx.now.ms;
        self.next_keepalive = None;
        let mut dead = Vec::new();
        let mut any = false;
        for (c, l) in &self.links {
            if !l.open || l.lane != Lane::Sig {
                continue;
            }
            if l.ours && l.keepalive && now.saturating_sub(l.last_recv) > SIG_DEAD_MS {
                dead.push((*c, l.remote.clone()));
                continue;
            }
            any = true;
            let [v, a, ov, oa] = self.mh_figures.get(&l.remote).copied().unwrap_or_default();
            let mh = MeshControl::Mh {
                v: v as f64,
                a: a as f64,
                ov: ov as f64,
                oa: oa as f64,
            };
            if let Ok(frame) = to_value(&mh) {
                ctx.send(*c, frame);
            }
        }
        for (c, remote) in dead {
            self.close(ctx, c);
            if let Some(peer) = self.peer {
                self.dial(ctx, peer, &remote, Lane::Sig);
            }
        }
        if any {
            self.next_keepalive = Some(now + MESH_KEEPALIVE_MS);
        }
    }

    fn arm_keepalive(&mut self, now: u64) {
        if self.next_keepalive.is_none() {
            self.next_keepalive = Some(now + MESH_KEEPALIVE_MS);
        }
    }

    pub fn on_incoming(
        &mut self,
        ctx: &mut Ctx,
        conn: ConnId,
        remote: String,
        label: Option<&str>,
    ) {
        let lane = if label == Some(BULK_LABEL) {
            Lane::Bulk
        } else {
            Lane::Sig
        };
        // The newest connection of a lane is the one in use (the dialler re-dialled).
        if let Some(old) = self.link_to(&remote, lane) {
            self.close(ctx, old);
        }
        self.left.remove(&remote);
        self.links
            .insert(conn, Link::new(remote, lane, false, ctx.now.ms));
    }

    /// A link opened (either direction). On sig: advertise bulk and, as host, resync that
    /// peer's grants.
    pub fn on_open(&mut self, ctx: &mut Ctx, roster: &Roster, conn: ConnId, am_host: bool) {
        let now = ctx.now.ms;
        let Some(l) = self.links.get_mut(&conn) else {
            return;
        };
        l.open = true;
        l.last_recv = now;
        l.opened_at = now;
        if l.lane != Lane::Sig {
            return;
        }
        let remote = l.remote.clone();
        if let Ok(cap) = to_value(&MeshControl::cap_bulk()) {
            ctx.send(conn, cap);
        }
        self.arm_keepalive(now);
        if am_host {
            self.send_caps(ctx, Some(&remote));
        }
        self.flush(ctx, roster, &remote);
    }

    /// A link failed or closed: re-dial it after a pause if we are the dialling side.
    pub fn on_closed(&mut self, ctx: &mut Ctx, conn: ConnId) {
        if let Some(l) = self.forget(conn)
            && l.ours
            && !self.left.contains(&l.remote)
            && self.link_to(&l.remote, l.lane).is_none()
        {
            self.redial_at
                .insert((l.remote, l.lane), ctx.now.ms + MESH_REDIAL_MS);
        }
    }

    fn caps_frame(&self) -> Option<Value> {
        let grants = self
            .host_grants
            .iter()
            .filter_map(|(id, g)| Some((id.clone(), to_value(g).ok()?)))
            .collect();
        to_value(&Content::Caps { grants }).ok()
    }

    /// Sends our grants to one peer or all.
    pub fn send_caps(&mut self, ctx: &mut Ctx, to: Option<&str>) {
        let Some(frame) = self.caps_frame() else {
            return;
        };
        let remotes: BTreeSet<&str> = self
            .links
            .values()
            .filter(|l| l.open && to.is_none_or(|t| t == l.remote))
            .map(|l| l.remote.as_str())
            .collect();
        let conns: Vec<ConnId> = remotes
            .into_iter()
            .filter_map(|r| self.content_conn(r))
            .collect();
        for c in conns {
            ctx.send(c, frame.clone());
        }
    }

    /// Applies a grants map as in force, reporting the change.
    pub fn apply_grants(&mut self, ctx: &mut Ctx, grants: BTreeMap<String, Grant>, from: &str) {
        let issuer = Some(from.to_owned());
        if grants == self.explicit && issuer == self.issuer {
            return;
        }
        self.issuer = issuer;
        if grants == self.explicit {
            return;
        }
        self.explicit = grants;
        self.audit_event(
            ctx,
            AuditKind::GrantsChanged {
                by: from.to_owned(),
            },
        );
        ctx.event(Event::Grants(self.explicit.clone()));
    }

    /// A frame arrived on mesh connection `conn`. `host` is the roster's verified host when
    /// the room commits a cryptographic host tier (only then are `caps` honoured). Returns
    /// the control frames of the media plane that arrived on a sig channel, with their
    /// sender, for [`crate::media`] (which checks membership itself).
    pub fn on_data(
        &mut self,
        ctx: &mut Ctx,
        roster: &Roster,
        conn: ConnId,
        frame: Value,
        crypto_host: Option<&str>,
    ) -> Option<(String, MeshControl)> {
        let link = self.links.get_mut(&conn)?;
        link.last_recv = ctx.now.ms;
        let from = link.remote.clone();
        let lane = link.lane;
        if frame.get("t").is_some()
            && let MeshFrame::Control(c) = MeshFrame::from_raw(frame.clone())
        {
            if lane == Lane::Sig {
                self.on_control(ctx, roster, conn, &from, &c);
                return Some((from, c));
            }
            if matches!(
                c,
                MeshControl::MSdp { .. } | MeshControl::MIce { .. } | MeshControl::MRecreate { .. }
            ) {
                // Media signalling rides sig only: anything else is not acted on.
                self.audit_event(
                    ctx,
                    AuditKind::MediaRefused {
                        from,
                        what: control_tag(&c).into(),
                    },
                );
            }
            return None;
        }
        if member(roster, &from).is_none() {
            if link.held.len() < HELD_PER_CONN {
                link.held.push(frame);
            }
            return None;
        }
        let content = match MeshFrame::from_raw(frame) {
            MeshFrame::Content(c) => c,
            // Unknown kinds are ignored by contract (§4.11).
            MeshFrame::Control(_) | MeshFrame::Unknown(_) => return None,
        };
        match &content {
            Content::Caps { .. } => {
                let host = crypto_host.or(roster.host());
                if crypto_host.is_some() && host == Some(from.as_str()) {
                    let grants = content.sanitized_grants();
                    self.apply_grants(ctx, grants, &from);
                } else {
                    self.audit_event(ctx, AuditKind::CapsRefused { from });
                }
                return None;
            }
            Content::Idtoken { .. } => {}
            _ => {
                if !self
                    .grant_of(roster, &from, ctx.now.unix())
                    .may(Act::SendChat)
                {
                    self.audit_event(
                        ctx,
                        AuditKind::Dropped {
                            from,
                            what: kind_name(&content),
                        },
                    );
                    return None;
                }
            }
        }
        let direct = is_direct(&content);
        ctx.event(Event::Message(Message {
            from,
            direct,
            content,
        }));
        None
    }

    /// A control frame on a sig channel. Media negotiation and its health reports are for a
    /// media connection this client does not have; the rest run the mesh.
    fn on_control(
        &mut self,
        ctx: &mut Ctx,
        roster: &Roster,
        conn: ConnId,
        from: &str,
        c: &MeshControl,
    ) {
        match c {
            MeshControl::Mh { .. } => {
                if let Some(l) = self.links.get_mut(&conn) {
                    l.keepalive = true;
                }
            }
            &MeshControl::Cap { bulk: Some(1) } => {
                let new = self.bulk_capable.insert(from.to_owned());
                // A peer the roster does not list yet is dialled when it does (`sync`).
                if new && member(roster, from).is_some() {
                    self.dial_missing(ctx, &[from]);
                }
            }
            MeshControl::Bye => {
                self.left.insert(from.to_owned());
                self.drop_remote(ctx, from);
            }
            _ => {}
        }
    }

    /// What a recipient needs to perceive this content.
    fn needs(content: &Content, direct: bool) -> Vec<Perceive> {
        let mut need = match content {
            Content::Chat(_) | Content::Pay { .. } => vec![Perceive::ReadChat],
            Content::Img(_) => vec![Perceive::ReadMedia],
            Content::XBegin(_)
            | Content::XChunk(_)
            | Content::XEnd(_)
            | Content::XCancel(_)
            | Content::XResume(_) => vec![Perceive::ReadFiles],
            _ => Vec::new(),
        };
        if direct {
            need.push(Perceive::ReceiveDirected);
        }
        need
    }

    /// Sends content to one member (`to`) or every roster member, withholding it from
    /// recipients whose grant does not allow it. Returns how many received it.
    pub fn send_content(
        &mut self,
        ctx: &mut Ctx,
        roster: &Roster,
        content: &Content,
        to: Option<&str>,
    ) -> Result<usize, SendError> {
        let Some(me) = self.self_id.clone() else {
            return Err(SendError::NotConnected);
        };
        let what = kind_name(content);
        if !matches!(content, Content::Idtoken { .. } | Content::Caps { .. })
            && !self
                .grant_of(roster, &me, ctx.now.unix())
                .may(Act::SendChat)
        {
            self.audit_event(ctx, AuditKind::Blocked { what });
            return Err(SendError::NotPermitted);
        }
        let Ok(frame) = to_value(content) else {
            return Err(SendError::NotConnected);
        };
        let direct = to.is_some();
        let need = Self::needs(content, direct);
        let targets: Vec<String> = roster
            .members
            .iter()
            .map(|m| m.id.clone())
            .filter(|id| *id != me && to.is_none_or(|t| t == id))
            .collect();
        if let Some(t) = to
            && targets.is_empty()
        {
            return Err(SendError::UnknownMember(t.to_owned()));
        }
        let mut sent = 0;
        for id in targets {
            let g = self.grant_of(roster, &id, ctx.now.unix());
            if !need.iter().all(|p| g.perceives(*p)) {
                self.audit_event(
                    ctx,
                    AuditKind::Withheld {
                        to: id,
                        what: what.clone(),
                    },
                );
                continue;
            }
            match self.content_conn(&id) {
                Some(c) if !self.has_pending(&id) => ctx.send(c, frame.clone()),
                // Its link is still opening (or not dialled yet): wait for it, in order.
                _ => {
                    let q = Queued {
                        at: ctx.now.ms,
                        frame: frame.clone(),
                        what: what.clone(),
                        need: need.clone(),
                        control: false,
                    };
                    self.enqueue(ctx, &id, q);
                }
            }
            sent += 1;
        }
        Ok(sent)
    }

    /// Whether frames for `remote` wait in its queue.
    fn has_pending(&self, remote: &str) -> bool {
        self.pending.get(remote).is_some_and(|q| !q.is_empty())
    }

    /// Counts and audits one frame that will never go out.
    fn drop_queued(&mut self, ctx: &mut Ctx, to: &str, what: String) {
        self.pending_dropped += 1;
        self.audit_event(
            ctx,
            AuditKind::Unsent {
                to: to.to_owned(),
                what,
            },
        );
    }

    /// Holds a frame for a member whose link is not open yet; beyond the bound it is dropped.
    fn enqueue(&mut self, ctx: &mut Ctx, to: &str, q: Queued) {
        let queue = self.pending.entry(to.to_owned()).or_default();
        if queue.len() >= PENDING_MAX {
            let what = q.what;
            self.drop_queued(ctx, to, what);
            return;
        }
        queue.push_back(q);
    }

    /// Sends what waits for `remote`, in order, once its sig channel is open. Content is
    /// checked again against the grant in force now.
    fn flush(&mut self, ctx: &mut Ctx, roster: &Roster, remote: &str) {
        let Some(sig) = self.open_on(remote, Lane::Sig) else {
            return;
        };
        let Some(queue) = self.pending.remove(remote) else {
            return;
        };
        let content = self.content_conn(remote).unwrap_or(sig);
        let g = self.grant_of(roster, remote, ctx.now.unix());
        for q in queue {
            if q.control {
                ctx.send(sig, q.frame);
            } else if q.need.iter().all(|p| g.perceives(*p)) {
                ctx.send(content, q.frame);
            } else {
                self.audit_event(
                    ctx,
                    AuditKind::Withheld {
                        to: remote.to_owned(),
                        what: q.what,
                    },
                );
            }
        }
    }

    /// Drops queued frames past their age, and the queues of members the roster dropped.
    fn expire_pending(&mut self, ctx: &mut Ctx, roster: Option<&Roster>) {
        let now = ctx.now.ms;
        let mut dropped = Vec::new();
        for (to, q) in &mut self.pending {
            let gone = roster.is_some_and(|r| member(r, to).is_none());
            while let Some(f) = q.front() {
                if !gone && f.at + PENDING_MS > now {
                    break;
                }
                if let Some(f) = q.pop_front() {
                    dropped.push((to.clone(), f.what));
                }
            }
        }
        self.pending.retain(|_, q| !q.is_empty());
        for (to, what) in dropped {
            self.drop_queued(ctx, &to, what);
        }
    }

    /// Sends a control frame on `remote`'s sig channel, or holds it until that opens.
    pub fn send_control(&mut self, ctx: &mut Ctx, remote: &str, c: &MeshControl) {
        let Ok(frame) = to_value(c) else {
            return;
        };
        match self.open_on(remote, Lane::Sig) {
            Some(sig) if !self.has_pending(remote) => ctx.send(sig, frame),
            _ => {
                let what = frame
                    .get("t")
                    .and_then(Value::as_str)
                    .unwrap_or("control")
                    .to_owned();
                let q = Queued {
                    at: ctx.now.ms,
                    frame,
                    what,
                    need: Vec::new(),
                    control: true,
                };
                self.enqueue(ctx, remote, q);
            }
        }
    }

    /// A chat envelope as the web client builds it.
    pub fn chat(&mut self, ctx: &Ctx, text: &str, name: &str, direct: bool) -> Content {
        self.seq += 1;
        let me = self.self_id.clone().unwrap_or_default();
        Content::Chat(Chat {
            text: text
                .chars()
                .take(kibitz_proto::content::MAX_CHAT_CHARS)
                .collect(),
            dm: direct.then_some(true),
            mid: Some(format!("{me}#{}", self.seq)),
            ts: Some(ctx.now.unix_ms),
            from: Some(me),
            name: Some(name.to_owned()),
        })
    }
}

/// A control frame's `t`, for the audit feed.
pub(crate) fn control_tag(c: &MeshControl) -> &'static str {
    match c {
        MeshControl::Cap { .. } => "cap",
        MeshControl::Mh { .. } => "mh",
        MeshControl::MhDead => "mh-dead",
        MeshControl::MDial => "m-dial",
        MeshControl::MSdp { .. } => "m-sdp",
        MeshControl::MIce { .. } => "m-ice",
        MeshControl::MRecreate { .. } => "m-recreate",
        MeshControl::Bye => "bye",
    }
}

fn is_direct(c: &Content) -> bool {
    let dm = match c {
        Content::Chat(x) => x.dm,
        Content::Img(x) => x.dm,
        Content::Pay { dm, .. } => *dm,
        _ => None,
    };
    dm == Some(true)
}

/// The envelope kind, for the audit feed (never the content).
pub(crate) fn kind_name(c: &Content) -> String {
    to_value(c)
        .ok()
        .and_then(|v| v.get("k").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| "unknown".into())
}
