//! The data mesh (KIBITZ.md §4.9) and capability grants (§4.8).
//!
//! Full mesh over the roster's voiceIds on the media peer; the smaller id dials. Every frame
//! arriving on a mesh connection is attributed to the connection's remote peer id, never to
//! a field. Grants are enforced here on both sides: content is withheld from a recipient whose
//! grant does not allow it, and content from a sender without `send-chat` is dropped.

use std::collections::BTreeMap;

use kibitz_proto::binarypack::{Value, to_value};
use kibitz_proto::content::{Chat, Content};
use kibitz_proto::grants::{Act, Grant, Perceive, Role, effective_grant};
use kibitz_proto::mesh::{MeshFrame, should_initiate};
use kibitz_proto::presence::{Member, Roster};

use crate::config::timing::MESH_REDIAL_MS;
use crate::ctx::Ctx;
use crate::engine::{AuditEntry, AuditKind, Event, Message};
use crate::net::{ConnId, NetCmd, PeerKey};

/// Frames held from a sender the roster does not list yet (it may be just behind).
const HELD_PER_CONN: usize = 32;
/// Grants lapse once their issuer has been out of the roster this long (ms): longer than a
/// migration takes to rebuild the roster, shorter than anyone would mind.
pub const GRANT_LAPSE_MS: u64 = 15_000;
/// Audit entries kept.
const AUDIT_CAP: usize = 1024;

#[derive(Debug)]
struct Link {
    remote: String,
    open: bool,
    held: Vec<Value>,
}

#[derive(Debug, Default)]
pub(crate) struct Mesh {
    pub peer: Option<PeerKey>,
    pub self_id: Option<String>,
    links: BTreeMap<ConnId, Link>,
    redial_at: BTreeMap<String, u64>,
    /// Grants in force, from the verified host's last `caps`.
    pub explicit: BTreeMap<String, Grant>,
    /// Who issued them: they lapse (to role defaults) once the issuer leaves the roster.
    issuer: Option<String>,
    issuer_missing_since: Option<u64>,
    /// What we grant, while we are the verified host.
    pub host_grants: BTreeMap<String, Grant>,
    pub audit: Vec<AuditEntry>,
    seq: u64,
}

fn member<'a>(roster: &'a Roster, id: &str) -> Option<&'a Member> {
    roster.members.iter().find(|m| m.id == id)
}

impl Mesh {
    /// Forgets every connection (the media peer is gone).
    pub fn reset(&mut self) {
        self.links.clear();
        self.redial_at.clear();
        self.peer = None;
        self.self_id = None;
    }

    /// `(remote, open)` for every link.
    pub fn links(&self) -> Vec<(String, bool)> {
        self.links
            .values()
            .map(|l| (l.remote.clone(), l.open))
            .collect()
    }

    pub fn owns(&self, conn: ConnId) -> bool {
        self.links.contains_key(&conn)
    }

    fn has_link_to(&self, remote: &str) -> bool {
        self.links.values().any(|l| l.remote == remote)
    }

    fn open_conn(&self, remote: &str) -> Option<ConnId> {
        self.links
            .iter()
            .find(|(_, l)| l.open && l.remote == remote)
            .map(|(c, _)| *c)
    }

    pub fn next_timeout(&self) -> Option<u64> {
        self.redial_at.values().min().copied()
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
        let (Some(peer), Some(me)) = (self.peer, self.self_id.clone()) else {
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
        let gone: Vec<ConnId> = self
            .links
            .iter()
            .filter(|(_, l)| !ids.contains(&l.remote.as_str()))
            .map(|(c, _)| *c)
            .collect();
        for c in gone {
            self.links.remove(&c);
            ctx.net(NetCmd::Close { conn: c });
        }
        self.redial_at.retain(|id, _| ids.contains(&id.as_str()));
        for id in ids {
            if id != me
                && should_initiate(&me, id)
                && !self.has_link_to(id)
                && !self.redial_at.contains_key(id)
            {
                let conn = ctx.conn_id();
                self.links.insert(
                    conn,
                    Link {
                        remote: id.to_owned(),
                        open: false,
                        held: Vec::new(),
                    },
                );
                ctx.net(NetCmd::Connect {
                    peer,
                    conn,
                    remote: id.to_owned(),
                });
            }
        }
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
                self.on_data(ctx, roster, c, f, None);
            }
        }
    }

    pub fn on_timeout(&mut self, ctx: &mut Ctx, roster: &Roster, am_host: bool) {
        let now = ctx.now.ms;
        let before = self.redial_at.len();
        self.redial_at.retain(|_, at| *at > now);
        if self.redial_at.len() != before {
            self.sync(ctx, roster, am_host);
        }
    }

    pub fn on_incoming(&mut self, conn: ConnId, remote: String) {
        self.links.insert(
            conn,
            Link {
                remote,
                open: true,
                held: Vec::new(),
            },
        );
    }

    /// A link opened (either direction): the host resyncs that peer's grants.
    pub fn on_open(&mut self, ctx: &mut Ctx, conn: ConnId, am_host: bool) {
        if let Some(l) = self.links.get_mut(&conn) {
            l.open = true;
            if am_host {
                let remote = l.remote.clone();
                self.send_caps(ctx, Some(&remote));
            }
        }
    }

    /// A link failed or closed: re-dial after a pause if we are the dialling side.
    pub fn on_closed(&mut self, ctx: &mut Ctx, conn: ConnId) {
        if let Some(l) = self.links.remove(&conn)
            && !self.has_link_to(&l.remote)
        {
            self.redial_at.insert(l.remote, ctx.now.ms + MESH_REDIAL_MS);
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
        let conns: Vec<ConnId> = self
            .links
            .iter()
            .filter(|(_, l)| l.open && to.is_none_or(|t| t == l.remote))
            .map(|(c, _)| *c)
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
    /// the room commits a cryptographic host tier (only then are `caps` honoured).
    pub fn on_data(
        &mut self,
        ctx: &mut Ctx,
        roster: &Roster,
        conn: ConnId,
        frame: Value,
        crypto_host: Option<&str>,
    ) {
        let Some(link) = self.links.get_mut(&conn) else {
            return;
        };
        let from = link.remote.clone();
        if member(roster, &from).is_none() {
            if link.held.len() < HELD_PER_CONN {
                link.held.push(frame);
            }
            return;
        }
        let content = match MeshFrame::from_raw(frame) {
            MeshFrame::Content(c) => c,
            // Control frames (media negotiation, health) and unknown kinds: nothing for the
            // room engine; unknown kinds are ignored by contract (§4.11).
            MeshFrame::Control(_) | MeshFrame::Unknown(_) => return,
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
                return;
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
                    return;
                }
            }
        }
        let direct = is_direct(&content);
        ctx.event(Event::Message(Message {
            from,
            direct,
            content,
        }));
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
    ) -> Result<usize, crate::engine::SendError> {
        let Some(me) = self.self_id.clone() else {
            return Err(crate::engine::SendError::NotConnected);
        };
        let what = kind_name(content);
        if !matches!(content, Content::Idtoken { .. } | Content::Caps { .. })
            && !self
                .grant_of(roster, &me, ctx.now.unix())
                .may(Act::SendChat)
        {
            self.audit_event(ctx, AuditKind::Blocked { what });
            return Err(crate::engine::SendError::NotPermitted);
        }
        let Ok(frame) = to_value(content) else {
            return Err(crate::engine::SendError::NotConnected);
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
            return Err(crate::engine::SendError::UnknownMember(t.to_owned()));
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
            if let Some(c) = self.open_conn(&id) {
                ctx.send(c, frame.clone());
                sent += 1;
            }
        }
        Ok(sent)
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
