//! The room's authority (coordinator): the peer holding `kbz-v1-<room>` (KIBITZ.md §4.4).
//!
//! It keeps the roster keyed by presence connection, gates entry (kicked, locked, identity,
//! lobby), verifies host commands, and re-sends the full roster on every change and every
//! tick. Moderation follows the committed host tier; the coordinator is not the admin unless
//! it proves to be.

mod hostcmd;

use std::collections::{BTreeMap, BTreeSet};

use kibitz_proto::binarypack::Value;
use kibitz_proto::credit::CREDIT_REAP_LEEWAY_SECS;
use kibitz_proto::hostcmd::ReplayGuard;
use kibitz_proto::presence::{ClientWire, Knock, LobbyStatus, Member, Roster, Voice};

use crate::config::timing::{FREEZE_GAP_MS, PING_MS, REAP_MS};
use crate::config::{HostCommit, RoomConfig};
use crate::ctx::Ctx;
use crate::net::{ConnId, NetCmd, PeerKey};
use crate::types::{Event, Knocker};
use crate::verify::{Credentials, Verdict};
use crate::wire;

/// Whose roster entry: a presence connection, or the authority itself (`__self__`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Key {
    Own,
    Conn(ConnId),
}

#[derive(Debug, Clone)]
struct Entry {
    key: Key,
    member: Member,
    token: Option<String>,
}

#[derive(Debug, Default)]
struct ConnState {
    last_seen: u64,
    fingerprint: Option<String>,
    admitted: bool,
    verified: bool,
    /// Knocked while the lobby was on: `(name, token)`.
    pending: Option<(String, Option<String>)>,
    waiting_sent: bool,
    credit_exp: Option<u64>,
    token: Option<String>,
}

/// What a change asks of the engine around the authority.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Effects {
    pub roster_changed: bool,
    pub kicked_self: bool,
    pub reset: bool,
}

#[derive(Debug)]
pub(crate) struct Authority {
    pub peer: PeerKey,
    conns: BTreeMap<ConnId, ConnState>,
    members: Vec<Entry>,
    pub lobby: bool,
    pub locked: bool,
    host: Option<Key>,
    kicked_tokens: BTreeSet<String>,
    kicked_voice: BTreeSet<String>,
    kicked_conns: BTreeSet<ConnId>,
    admitted_tokens: BTreeSet<String>,
    seen_tokens: BTreeSet<String>,
    seen_voice: BTreeSet<String>,
    grandfathered: BTreeSet<String>,
    replay: ReplayGuard,
    last_tick: u64,
    pub next_tick: u64,
}

/// Identities an authority remembers (seen, admitted, kicked), at most: a flood of made-up
/// tokens must not grow it without bound. Past the cap an arbitrary old entry goes.
const REMEMBER_CAP: usize = 4096;

fn remember(set: &mut BTreeSet<String>, v: String) {
    if set.len() >= REMEMBER_CAP && !set.contains(&v) {
        set.pop_first();
    }
    set.insert(v);
}

fn norm_name(s: &str) -> String {
    s.trim().to_lowercase()
}

impl Authority {
    /// A new authority, inheriting `lobby`/`locked` and grandfathering the members of the
    /// last roster this participant saw (migration); no host is verified yet.
    pub fn new(
        peer: PeerKey,
        now: u64,
        inherited: Option<&Roster>,
        bans: Vec<String>,
        lobby_on_start: bool,
    ) -> Self {
        let (lobby, locked, grandfathered) = match inherited {
            Some(r) => (
                r.lobby.unwrap_or(false),
                r.locked.unwrap_or(false),
                r.members.iter().map(|m| m.id.clone()).collect(),
            ),
            None => (lobby_on_start, false, BTreeSet::new()),
        };
        Self {
            peer,
            conns: BTreeMap::new(),
            members: Vec::new(),
            lobby,
            locked,
            host: None,
            kicked_tokens: bans.into_iter().take(wire::MAX_BANS).collect(),
            kicked_voice: BTreeSet::new(),
            kicked_conns: BTreeSet::new(),
            admitted_tokens: BTreeSet::new(),
            seen_tokens: BTreeSet::new(),
            seen_voice: BTreeSet::new(),
            grandfathered,
            replay: ReplayGuard::new(),
            last_tick: now,
            next_tick: now + PING_MS,
        }
    }

    pub fn owns(&self, conn: ConnId) -> bool {
        self.conns.contains_key(&conn)
    }

    pub fn conns(&self) -> impl Iterator<Item = ConnId> + '_ {
        self.conns.keys().copied()
    }

    /// The roster as everyone is told it.
    pub fn roster(&self) -> Roster {
        let host = self
            .host
            .and_then(|k| self.members.iter().find(|e| e.key == k))
            .map(|e| e.member.id.clone())
            .unwrap_or_default();
        Roster {
            members: self.members.iter().map(|e| e.member.clone()).collect(),
            lobby: Some(self.lobby),
            host: Some(host),
            locked: Some(self.locked),
        }
    }

    /// The roster frame, with the bans and (for the host) the pending knockers.
    fn roster_frame(&self, pending: Option<&[(String, String)]>) -> Value {
        let bans: Vec<String> = self.kicked_tokens.iter().cloned().collect();
        wire::roster(&self.roster(), &bans, pending)
    }

    /// The kicked-token hashes (a later authority inherits them).
    pub fn bans(&self) -> Vec<String> {
        self.kicked_tokens.iter().cloned().collect()
    }

    /// The knockers waiting in the lobby.
    pub fn pending(&self) -> Vec<Knocker> {
        self.conns
            .iter()
            .filter_map(|(c, s)| {
                s.pending.as_ref().map(|(name, _)| Knocker {
                    id: c.to_string(),
                    name: name.clone(),
                })
            })
            .collect()
    }

    fn host_conn(&self) -> Option<ConnId> {
        match self.host {
            Some(Key::Conn(c)) => Some(c),
            _ => None,
        }
    }

    /// Sends the roster to every connection that may see it (all, or only the admitted ones
    /// while the lobby is on); the verified host also gets the pending list.
    pub fn broadcast_roster(&self, ctx: &mut Ctx) {
        let plain = self.roster_frame(None);
        let pending: Vec<(String, String)> =
            self.pending().into_iter().map(|k| (k.id, k.name)).collect();
        let host = self.host_conn();
        for (c, s) in &self.conns {
            if self.lobby && !s.admitted {
                continue;
            }
            if Some(*c) == host && self.lobby {
                ctx.send(*c, self.roster_frame(Some(&pending)));
            } else {
                ctx.send(*c, plain.clone());
            }
        }
    }

    pub fn on_open(&mut self, ctx: &mut Ctx, conn: ConnId, fingerprint: Option<String>) {
        self.conns.insert(
            conn,
            ConnState {
                last_seen: ctx.now.ms,
                fingerprint,
                ..ConnState::default()
            },
        );
        if !self.lobby {
            ctx.send(conn, self.roster_frame(None));
        }
    }

    pub fn on_closed(&mut self, conn: ConnId) -> Effects {
        self.conns.remove(&conn);
        self.kicked_conns.remove(&conn);
        let mut fx = Effects::default();
        if self.host == Some(Key::Conn(conn)) {
            self.host = None;
            fx.roster_changed = true;
        }
        if self.remove_member(Key::Conn(conn)) {
            fx.roster_changed = true;
        }
        fx
    }

    fn remove_member(&mut self, key: Key) -> bool {
        let before = self.members.len();
        self.members.retain(|e| e.key != key);
        before != self.members.len()
    }

    fn member_key_by_voice(&self, id: &str) -> Option<Key> {
        self.members
            .iter()
            .find(|e| e.member.id == id)
            .map(|e| e.key)
    }

    /// Upserts the authority's own entry (`None` = not in the call).
    pub fn set_self(&mut self, cfg: &RoomConfig, member: Option<Member>) -> Effects {
        let mut fx = Effects::default();
        match member {
            Some(m) => {
                remember(&mut self.seen_voice, m.id.clone());
                remember(&mut self.seen_tokens, cfg.token.clone());
                let entry = Entry {
                    key: Key::Own,
                    member: m,
                    token: Some(cfg.token.clone()),
                };
                match self.members.iter_mut().find(|e| e.key == Key::Own) {
                    Some(e) if e.member == entry.member => {}
                    Some(e) => {
                        *e = entry;
                        fx.roster_changed = true;
                    }
                    None => {
                        self.members.push(entry);
                        fx.roster_changed = true;
                    }
                }
                if self.soft_host_match(cfg, Key::Own) {
                    fx.roster_changed = true;
                }
            }
            None => {
                if self.remove_member(Key::Own) {
                    fx.roster_changed = true;
                }
                if self.host == Some(Key::Own) {
                    self.host = None;
                }
            }
        }
        fx
    }

    /// Soft-name tier: the first member whose name matches holds the slot.
    fn soft_host_match(&mut self, cfg: &RoomConfig, key: Key) -> bool {
        let HostCommit::Name(want) = &cfg.host else {
            return false;
        };
        if self.host.is_some() {
            return false;
        }
        let Some(e) = self.members.iter().find(|e| e.key == key) else {
            return false;
        };
        if norm_name(&e.member.name) == norm_name(want) {
            self.host = Some(key);
            return true;
        }
        false
    }

    fn soft_host_would_match(&self, cfg: &RoomConfig, name: &str) -> bool {
        matches!(&cfg.host, HostCommit::Name(want) if self.host.is_none() && norm_name(name) == norm_name(want))
    }

    /// Bans handed over by a participant (a coordinator that did not inherit them): keep
    /// them, remove anyone they name — this coordinator included.
    fn merge_bans(
        &mut self,
        ctx: &mut Ctx,
        cfg: &RoomConfig,
        room: &str,
        bans: Vec<String>,
    ) -> Effects {
        let mut fx = Effects::default();
        for b in bans {
            if self.kicked_tokens.len() >= wire::MAX_BANS {
                break;
            }
            self.kicked_tokens.insert(b);
        }
        let kicked = &self.kicked_tokens;
        let banned = |t: &str| kicked.contains(&wire::ban_hash(room, t));
        let self_banned = banned(&cfg.token);
        let out: Vec<Key> = self
            .members
            .iter()
            .filter(|e| e.key != Key::Own && e.token.as_deref().is_some_and(banned))
            .map(|e| e.key)
            .collect();
        for key in out {
            if let Key::Conn(c) = key {
                self.kicked_conns.insert(c);
                ctx.send(c, wire::bare("kick"));
            }
            if self.host == Some(key) {
                self.host = None;
            }
            self.remove_member(key);
            fx.roster_changed = true;
        }
        if self_banned {
            self.remove_member(Key::Own);
            fx.kicked_self = true;
        }
        fx
    }

    /// Handles one frame from a presence connection.
    pub fn on_frame(
        &mut self,
        ctx: &mut Ctx,
        cfg: &mut RoomConfig,
        room: &str,
        conn: ConnId,
        frame: Value,
    ) -> Effects {
        let mut fx = Effects::default();
        let Some(state) = self.conns.get_mut(&conn) else {
            return fx;
        };
        state.last_seen = ctx.now.ms;
        if let Some(bans) = wire::read_bans(&frame) {
            return self.merge_bans(ctx, cfg, room, bans);
        }
        let Some(msg) = wire::read_client(frame) else {
            return fx;
        };
        // Kicked: by connection, or by token/voiceId on an announce.
        let (token, voice_id) = match &msg {
            ClientWire::Voice(v) => (v.token.clone(), v.voice_id.clone()),
            ClientWire::Knock(k) => (k.token.clone(), k.voice_id.clone()),
            _ => (None, None),
        };
        if self.kicked_conns.contains(&conn)
            || token
                .as_ref()
                .is_some_and(|t| self.kicked_tokens.contains(&wire::ban_hash(room, t)))
            || voice_id
                .as_ref()
                .is_some_and(|v| self.kicked_voice.contains(v))
        {
            ctx.send(conn, wire::bare("kick"));
            return fx;
        }
        if let ClientWire::Mod { token } = &msg {
            return self.on_host_command(ctx, cfg, room, Key::Conn(conn), token);
        }
        let entering = matches!(
            &msg,
            ClientWire::Knock(_) | ClientWire::Voice(Voice { on: true, .. })
        );
        let grandfathered = voice_id
            .as_ref()
            .is_some_and(|v| self.grandfathered.contains(v));
        if entering && self.locked {
            let known = token.as_ref().is_some_and(|t| self.seen_tokens.contains(t))
                || voice_id
                    .as_ref()
                    .is_some_and(|v| self.seen_voice.contains(v) || self.grandfathered.contains(v));
            let is_member = self.members.iter().any(|e| e.key == Key::Conn(conn));
            if !known && !is_member {
                ctx.send(conn, wire::lobby(LobbyStatus::Locked));
                return fx;
            }
        }
        if entering && !grandfathered && !self.gate(ctx, cfg, room, conn, &msg, &mut fx) {
            return fx;
        }
        if let Some(s) = self.conns.get_mut(&conn) {
            s.token = token.clone().or(s.token.take());
        }
        match msg {
            ClientWire::Knock(k) => self.on_knock(ctx, conn, &k, grandfathered),
            ClientWire::Voice(v) if v.on => {
                if self.lobby && !self.conns.get(&conn).is_some_and(|s| s.admitted) {
                    let bypass = self.soft_host_would_match(cfg, &v.name);
                    if bypass {
                        self.admit_conn(conn);
                    } else {
                        let knock = Knock {
                            name: v.name.clone(),
                            token: v.token.clone(),
                            voice_id: v.voice_id.clone(),
                            ..Knock::default()
                        };
                        self.on_knock(ctx, conn, &knock, grandfathered);
                        if !self.conns.get(&conn).is_some_and(|s| s.admitted) {
                            return fx;
                        }
                    }
                }
                if let Some(id) = v.voice_id.clone() {
                    self.upsert(cfg, conn, id, v);
                    fx.roster_changed = true;
                }
            }
            ClientWire::Voice(_) => {
                if self.remove_member(Key::Conn(conn)) {
                    fx.roster_changed = true;
                }
            }
            ClientWire::Leave => {
                if let Some(s) = self.conns.get_mut(&conn) {
                    s.admitted = false;
                }
                if self.host == Some(Key::Conn(conn)) {
                    self.host = None;
                }
                if self.remove_member(Key::Conn(conn)) {
                    fx.roster_changed = true;
                }
            }
            ClientWire::Ping | ClientWire::Mod { .. } => {}
        }
        fx
    }

    fn upsert(&mut self, cfg: &RoomConfig, conn: ConnId, id: String, v: Voice) {
        let key = Key::Conn(conn);
        // A reconnect under the same token replaces its older entry.
        if let Some(t) = &v.token {
            let stale: Vec<Key> = self
                .members
                .iter()
                .filter(|e| e.key != key && e.key != Key::Own && e.token.as_ref() == Some(t))
                .map(|e| e.key)
                .collect();
            for k in stale {
                self.remove_member(k);
                if self.host == Some(k) {
                    self.host = None;
                }
            }
        }
        remember(&mut self.seen_voice, id.clone());
        if let Some(t) = &v.token {
            remember(&mut self.seen_tokens, t.clone());
        }
        let member = Member {
            id,
            name: v.name,
            cam: v.cam,
            avatar: v.avatar,
            meta: v.meta,
        };
        let entry = Entry {
            key,
            member,
            token: v.token,
        };
        match self.members.iter_mut().find(|e| e.key == key) {
            Some(e) => *e = entry,
            None => self.members.push(entry),
        }
        self.soft_host_match(cfg, key);
    }

    fn admit_conn(&mut self, conn: ConnId) {
        if let Some(s) = self.conns.get_mut(&conn) {
            s.admitted = true;
            s.pending = None;
            if let Some(t) = &s.token {
                remember(&mut self.admitted_tokens, t.clone());
            }
        }
    }

    fn on_knock(&mut self, ctx: &mut Ctx, conn: ConnId, k: &Knock, grandfathered: bool) {
        if !self.lobby {
            return;
        }
        let Some(s) = self.conns.get_mut(&conn) else {
            return;
        };
        if s.admitted {
            return;
        }
        let silent = grandfathered
            || k.token
                .as_ref()
                .is_some_and(|t| self.admitted_tokens.contains(t));
        if silent {
            self.admit_conn(conn);
            ctx.send(conn, self.roster_frame(None));
            return;
        }
        let first = s.pending.is_none();
        s.pending = Some((k.name.clone(), k.token.clone()));
        if !s.waiting_sent {
            s.waiting_sent = true;
            ctx.send(conn, wire::lobby(LobbyStatus::Waiting));
        }
        if first {
            ctx.event(Event::LobbyQueue(self.pending()));
            // The host learns of knockers through the roster it receives.
            if let Some(h) = self.host_conn() {
                let pending: Vec<(String, String)> =
                    self.pending().into_iter().map(|k| (k.id, k.name)).collect();
                ctx.send(h, self.roster_frame(Some(&pending)));
            }
        }
    }

    /// The identity gate; `false` = stop processing this frame.
    fn gate(
        &mut self,
        ctx: &mut Ctx,
        cfg: &mut RoomConfig,
        room: &str,
        conn: ConnId,
        msg: &ClientWire,
        fx: &mut Effects,
    ) -> bool {
        let Some(verifier) = cfg.verifier.as_mut() else {
            return true;
        };
        let Some(state) = self.conns.get_mut(&conn) else {
            return false;
        };
        let (jwt, assertion, credit, oversize) = match msg {
            ClientWire::Voice(v) => (
                v.jwt.as_deref(),
                v.agent_assertion.as_deref(),
                v.agent_credit.as_deref(),
                v.has_oversize_credential(),
            ),
            ClientWire::Knock(k) => (
                k.jwt.as_deref(),
                k.agent_assertion.as_deref(),
                k.agent_credit.as_deref(),
                k.has_oversize_credential(),
            ),
            _ => return true,
        };
        let credit_gated = verifier.credit_gated() && credit.is_some();
        let needed = verifier.requires_verification() || assertion.is_some() || credit_gated;
        // Credit-gated agents are re-verified on every announce (the credit is short-lived).
        if !needed || (state.verified && !credit_gated) {
            return true;
        }
        if oversize {
            ctx.send(conn, wire::lobby(LobbyStatus::Unverified));
            return false;
        }
        if state.fingerprint.is_none() && (verifier.binds_fingerprint() || assertion.is_some()) {
            return false;
        }
        let creds = Credentials {
            jwt,
            agent_assertion: assertion,
            agent_credit: credit,
            fingerprint: state.fingerprint.as_deref(),
            room,
            now_unix: ctx.now.unix(),
        };
        match verifier.verify(&creds) {
            Verdict::Hold => false,
            Verdict::Reject(_) => {
                if state.verified {
                    // A lapsed credit: the reap takes care of it.
                    return false;
                }
                ctx.send(conn, wire::lobby(LobbyStatus::Unverified));
                false
            }
            Verdict::Ok(v) => {
                state.verified = true;
                if v.credit_exp.is_some() {
                    state.credit_exp = v.credit_exp;
                }
                if let (HostCommit::Email(want), Some(email)) = (&cfg.host, &v.email)
                    && self.host.is_none()
                    && kibitz_proto::manifest::normalize_email(want)
                        == kibitz_proto::manifest::normalize_email(email)
                {
                    self.host = Some(Key::Conn(conn));
                    self.admit_conn(conn);
                    fx.roster_changed = true;
                }
                if let Some(grant) = v.grant {
                    ctx.event(Event::AgentVerified {
                        conn: conn.to_string(),
                        grant,
                    });
                }
                true
            }
        }
    }

    /// The heartbeat: ping, reap the silent (unless this process was frozen), reap lapsed
    /// credits, re-send the roster.
    pub fn tick(&mut self, ctx: &mut Ctx) -> Effects {
        let mut fx = Effects::default();
        let now = ctx.now.ms;
        let gap = now.saturating_sub(self.last_tick);
        self.last_tick = now;
        self.next_tick = now + PING_MS;
        for c in self.conns.keys() {
            ctx.send(*c, wire::bare("ping"));
        }
        if gap > FREEZE_GAP_MS {
            for s in self.conns.values_mut() {
                s.last_seen = now;
            }
        } else {
            let silent: Vec<ConnId> = self
                .conns
                .iter()
                .filter(|(_, s)| now.saturating_sub(s.last_seen) > REAP_MS)
                .map(|(c, _)| *c)
                .collect();
            for c in silent {
                ctx.net(NetCmd::Close { conn: c });
                let e = self.on_closed(c);
                fx.roster_changed |= e.roster_changed;
            }
        }
        let unix = ctx.now.unix();
        let lapsed: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, s)| {
                s.credit_exp
                    .is_some_and(|exp| unix >= exp + CREDIT_REAP_LEEWAY_SECS)
            })
            .map(|(c, _)| *c)
            .collect();
        for c in lapsed {
            if let Some(s) = self.conns.get_mut(&c) {
                s.credit_exp = None;
                s.verified = false;
                s.admitted = false;
            }
            ctx.send(c, wire::bare("kick"));
            if self.remove_member(Key::Conn(c)) {
                fx.roster_changed = true;
            }
        }
        self.broadcast_roster(ctx);
        fx
    }
}
