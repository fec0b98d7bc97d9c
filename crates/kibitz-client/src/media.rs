//! The media plane's room logic (MEDIA.md §1, §3–6): who calls whom and how, the owned
//! recovery ladder, the `mh` figures, and which lanes flow to whom. No codec, no socket: it
//! decides, and emits [`NetCmd`]s for the transport (see [`crate::net`] for the contract).
//!
//! Per roster peer, one media connection at most:
//! - **Mode** (§6): `cap`, `m-sdp` or `m-dial` on sig means the peer runs owned media; a
//!   PeerJS call from it means legacy. The initiator (the smaller voiceId) waits
//!   [`MEDIA_LEGACY_WAIT_MS`] after sig opens for a sign of owned media, else calls legacy.
//! - **Legacy**: the initiator calls each new member once; no re-dial until the peer leaves
//!   the roster and comes back. Every incoming call is answered (a newer one replaces the
//!   older).
//! - **Owned**: the initiator makes a pc and offers once sig is open (idempotent, retried on
//!   every pass); the answerer builds on the first offer and asks with `m-dial` every
//!   [`MEDIA_HEARTBEAT_MS`] while it has none. Perfect negotiation: the answerer is polite
//!   (drops its own pending offer for theirs), the initiator ignores colliding offers.
//! - **Recovery** (owned, initiator, while sig is open): on failure, on inbound below 1 kbps
//!   for [`MEDIA_RECOVER_MS`] while the peer's `mh` says it sends, or on nothing received that
//!   long after connecting: ICE restart, then `m-recreate` and rebuild, then relay-only; at
//!   most [`MEDIA_MAX_RECOVERIES`] until both directions flow again. The answerer asks with
//!   `mh-dead`. A pc not connected after [`MEDIA_STUCK_MS`] is re-made (bounded).
//! - **Gates** (§4): each peer's lanes follow its effective grant, computed as for content;
//!   [`NetCmd::MediaGates`] goes out whenever any gate changes and before any call or answer.
//!
//! The engine runs [`Media::sync`] after every input, so decisions are level-triggered: the
//! state says what should exist, and each pass makes it so.

use std::collections::{BTreeMap, BTreeSet};

use kibitz_proto::mesh::{MeshControl, SdpType, SessionDescription, should_initiate};
use kibitz_proto::presence::Roster;

use crate::config::timing::{
    MEDIA_HEARTBEAT_MS, MEDIA_LEGACY_WAIT_MS, MEDIA_MAX_RECOVERIES, MEDIA_MIN_KBPS,
    MEDIA_RECOVER_MS, MEDIA_STUCK_MS, MEDIA_STUCK_RETRIES, MESH_DROP_GRACE_MS,
};
use crate::ctx::Ctx;
use crate::mesh::{Mesh, control_tag};
use crate::net::{ConnId, LaneGates, MediaMode, MediaSignal, NetCmd};
use crate::types::{AuditKind, Event};

/// One peer's media connection, as [`crate::Engine::media_links`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaLink {
    /// The peer's voiceId.
    pub remote: String,
    /// The mode, once known.
    pub mode: Option<MediaMode>,
    /// The current connection, if any.
    pub conn: Option<ConnId>,
    /// Whether it is connected.
    pub open: bool,
    /// Relay-only (latched for the pair).
    pub relay: bool,
    /// Recoveries spent from the budget.
    pub recoveries: u32,
    /// Measured kbps: in video, in audio, out video, out audio (what `mh` carries).
    pub kbps: [u64; 4],
}

#[derive(Debug, Default)]
struct Peer {
    mode: Option<MediaMode>,
    conn: Option<ConnId>,
    open: bool,
    created_at: u64,
    opened_at: u64,
    /// Our pc's offer awaits an answer (perfect negotiation: glare).
    offering: bool,
    /// Legacy initiator: called already (until the peer leaves the roster).
    dialled: bool,
    /// Sticky relay-only latch.
    relay: bool,
    recoveries: u32,
    /// The budget is spent and the pc is gone: nothing more until the peer comes back.
    gave_up: bool,
    stuck: u32,
    next_mdial: u64,
    /// Earliest `mh-dead` we send again (once per heartbeat at most).
    next_mhdead: u64,
    /// Last cumulative sample: (at, [audio in, video in, audio out, video out]).
    last: Option<(u64, [u64; 4])>,
    /// kbps: in video, in audio, out video, out audio.
    kbps: [u64; 4],
    /// Bytes received on this pc so far.
    in_total: u64,
    /// Since when inbound is below the floor while the peer says it sends.
    low_since: Option<u64>,
    /// The peer's last `mh` says it sends to us.
    remote_sending: bool,
    /// Since when the roster does not list it.
    absent_since: Option<u64>,
}

impl Peer {
    fn reset_pc(&mut self, conn: Option<ConnId>, now: u64) {
        self.conn = conn;
        self.open = false;
        self.created_at = now;
        self.opened_at = now;
        self.offering = false;
        self.last = None;
        self.kbps = [0; 4];
        self.in_total = 0;
        self.low_since = None;
    }
}

#[derive(Debug, Default)]
pub(crate) struct Media {
    pub enabled: bool,
    peers: BTreeMap<String, Peer>,
    /// Peers that showed owned media on sig (kept while in the roster or sig is open: `cap`
    /// usually arrives before the roster lists a newcomer).
    owned_seen: BTreeSet<String>,
    /// The gates last emitted.
    gates: Option<(BTreeMap<String, LaneGates>, LaneGates)>,
}

/// kbps from a byte delta over `ms` (rounded down: "below 1 kbps" means below).
fn kbps(bytes: u64, ms: u64) -> u64 {
    (bytes * 8).checked_div(ms).unwrap_or(0)
}

impl Media {
    pub fn new(enabled: bool) -> Self {
        Self {
            enabled,
            ..Self::default()
        }
    }

    /// Every peer's media connection.
    pub fn links(&self) -> Vec<MediaLink> {
        self.peers
            .iter()
            .map(|(id, p)| MediaLink {
                remote: id.clone(),
                mode: p.mode,
                conn: p.conn,
                open: p.open,
                relay: p.relay,
                recoveries: p.recoveries,
                kbps: p.kbps,
            })
            .collect()
    }

    /// Drops every media connection (the media peer is gone, or we left).
    pub fn reset(&mut self, ctx: &mut Ctx, mesh: &mut Mesh) {
        for (id, p) in std::mem::take(&mut self.peers) {
            if let Some(conn) = p.conn {
                ctx.net(NetCmd::MediaClose { conn });
                if p.open {
                    ctx.event(Event::MediaDisconnected { voice_id: id });
                }
            }
        }
        self.owned_seen.clear();
        self.gates = None;
        mesh.mh_figures.clear();
    }

    fn peer_of(&self, conn: ConnId) -> Option<String> {
        self.peers
            .iter()
            .find(|(_, p)| p.conn == Some(conn))
            .map(|(id, _)| id.clone())
    }

    /// Emits the gates if any changed (a peer's grant, role, expiry, the roster).
    fn sync_gates(&mut self, ctx: &mut Ctx, mesh: &Mesh, roster: &Roster) {
        let Some(me) = mesh.self_id.as_deref() else {
            return;
        };
        let unix = ctx.now.unix();
        let send: BTreeMap<String, LaneGates> = roster
            .members
            .iter()
            .filter(|m| m.id != me)
            .map(|m| {
                let g = mesh.grant_of(roster, &m.id, unix);
                (m.id.clone(), LaneGates::for_grant(&g))
            })
            .collect();
        let receive = LaneGates::for_grant(&mesh.grant_of(roster, me, unix));
        let now = Some((send, receive));
        if self.gates != now {
            self.gates = now.clone();
            if let Some((send, receive)) = now {
                ctx.net(NetCmd::MediaGates { send, receive });
            }
        }
    }

    /// Makes what should exist exist: one pass over the roster.
    pub fn sync(&mut self, ctx: &mut Ctx, mesh: &mut Mesh, roster: &Roster) {
        if !self.enabled {
            return;
        }
        let Some(me) = mesh.self_id.clone() else {
            return;
        };
        let now = ctx.now.ms;
        let ids: BTreeSet<&str> = roster
            .members
            .iter()
            .map(|m| m.id.as_str())
            .filter(|id| *id != me)
            .collect();
        // Peers gone from the roster: legacy media goes at once (it is re-called when they
        // return); owned media after the roster-drop grace (a migration's roster gap).
        for (id, p) in &mut self.peers {
            if ids.contains(id.as_str()) {
                p.absent_since = None;
            } else {
                p.absent_since.get_or_insert(now);
            }
        }
        let gone: Vec<String> = self
            .peers
            .iter()
            .filter(|(_, p)| {
                p.absent_since.is_some_and(|t| {
                    p.mode != Some(MediaMode::Owned) || now >= t + MESH_DROP_GRACE_MS
                })
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            if let Some(p) = self.peers.remove(&id)
                && let Some(conn) = p.conn
            {
                ctx.net(NetCmd::MediaClose { conn });
                if p.open {
                    ctx.event(Event::MediaDisconnected {
                        voice_id: id.clone(),
                    });
                }
            }
            mesh.mh_figures.remove(&id);
        }
        self.owned_seen
            .retain(|id| ids.contains(id.as_str()) || mesh.sig_open_since(id).is_some());
        self.sync_gates(ctx, mesh, roster);
        for id in ids {
            let sig = mesh.sig_open_since(id);
            let seen = self.owned_seen.contains(id);
            let initiator = should_initiate(&me, id);
            let p = self.peers.entry(id.to_owned()).or_default();
            if p.mode.is_none() && seen {
                p.mode = Some(MediaMode::Owned);
            }
            // A sign of owned media after we fell back to a legacy call that never connected
            // (an owned build never answers one): switch.
            if seen && initiator && p.mode == Some(MediaMode::Legacy) && !p.open {
                if let Some(conn) = p.conn.take() {
                    ctx.net(NetCmd::MediaClose { conn });
                }
                p.mode = Some(MediaMode::Owned);
                p.dialled = false;
            }
            if initiator && p.mode.is_none() && sig.is_some_and(|t| now >= t + MEDIA_LEGACY_WAIT_MS)
            {
                p.mode = Some(MediaMode::Legacy);
            }
            match (p.mode, initiator) {
                (Some(MediaMode::Legacy), true) if !p.dialled && p.conn.is_none() => {
                    self.call(ctx, id, MediaMode::Legacy);
                }
                (Some(MediaMode::Owned), true) if sig.is_some() => {
                    self.owned_initiator(ctx, mesh, id)
                }
                (Some(MediaMode::Owned), false) if sig.is_some() => {
                    self.owned_answerer(ctx, mesh, id)
                }
                _ => {}
            }
        }
        // The figures `mh` carries.
        for (id, p) in &self.peers {
            mesh.mh_figures.insert(id.clone(), p.kbps);
        }
    }

    /// Places a call or makes an offering pc (gates already emitted by this pass).
    fn call(&mut self, ctx: &mut Ctx, id: &str, mode: MediaMode) {
        let conn = ctx.conn_id();
        let now = ctx.now.ms;
        let Some(p) = self.peers.get_mut(id) else {
            return;
        };
        p.reset_pc(Some(conn), now);
        p.dialled = true;
        p.offering = mode == MediaMode::Owned;
        ctx.net(NetCmd::MediaCall {
            conn,
            remote: id.to_owned(),
            mode,
            relay: p.relay,
        });
    }

    fn owned_initiator(&mut self, ctx: &mut Ctx, mesh: &mut Mesh, id: &str) {
        let now = ctx.now.ms;
        let Some(p) = self.peers.get_mut(id) else {
            return;
        };
        if p.gave_up {
            return;
        }
        let Some(_) = p.conn else {
            self.call(ctx, id, MediaMode::Owned);
            return;
        };
        if !p.open {
            if now >= p.created_at + MEDIA_STUCK_MS && p.stuck < MEDIA_STUCK_RETRIES {
                // The answerer drops its half too and awaits the new offer (an offer from a
                // new pc cannot land on its old one).
                p.stuck += 1;
                if let Some(conn) = p.conn.take() {
                    ctx.net(NetCmd::MediaClose { conn });
                }
                let relay = Some(p.relay);
                mesh.send_control(ctx, id, &MeshControl::MRecreate { relay });
                self.call(ctx, id, MediaMode::Owned);
            }
            return;
        }
        let never = p.in_total == 0 && now >= p.opened_at + MEDIA_RECOVER_MS;
        let low = p.low_since.is_some_and(|t| now >= t + MEDIA_RECOVER_MS);
        if never || low {
            self.recover(ctx, mesh, id, never);
        }
    }

    fn owned_answerer(&mut self, ctx: &mut Ctx, mesh: &mut Mesh, id: &str) {
        let now = ctx.now.ms;
        let Some(p) = self.peers.get_mut(id) else {
            return;
        };
        match p.conn {
            None => {
                if now >= p.next_mdial {
                    p.next_mdial = now + MEDIA_HEARTBEAT_MS;
                    mesh.send_control(ctx, id, &MeshControl::MDial);
                }
            }
            // Connecting: a stuck pc is the initiator's to re-make (with `m-recreate`).
            Some(_) if !p.open => {}
            Some(_) => {
                let never = p.in_total == 0 && now >= p.opened_at + MEDIA_RECOVER_MS;
                let low = p.low_since.is_some_and(|t| now >= t + MEDIA_RECOVER_MS);
                if (never || low) && p.recoveries < MEDIA_MAX_RECOVERIES {
                    // Ask the initiator; the window starts again so we ask once per window.
                    p.recoveries += 1;
                    p.low_since = None;
                    p.opened_at = now;
                    mesh.send_control(ctx, id, &MeshControl::MhDead);
                }
            }
        }
    }

    /// One step of the recovery ladder (initiator). `never`: the pc connected but never
    /// received media (straight to relay). A pc that is gone cannot restart ICE.
    fn recover(&mut self, ctx: &mut Ctx, mesh: &mut Mesh, id: &str, never: bool) {
        let now = ctx.now.ms;
        let Some(p) = self.peers.get_mut(id) else {
            return;
        };
        if mesh.sig_open_since(id).is_none() {
            return;
        }
        if p.recoveries >= MEDIA_MAX_RECOVERIES {
            if p.conn.is_none() {
                p.gave_up = true;
            }
            // Stop re-arming the triggers.
            p.low_since = None;
            p.opened_at = u64::MAX / 2;
            return;
        }
        let mut n = p.recoveries;
        if never {
            n = n.max(2);
        }
        if p.conn.is_none() {
            n = n.max(1);
        }
        p.recoveries += 1;
        if n == 0 {
            if let Some(conn) = p.conn {
                p.low_since = None;
                p.opened_at = now;
                p.offering = true;
                ctx.net(NetCmd::MediaRestartIce { conn });
            }
            return;
        }
        let relay = n >= 2;
        if relay {
            p.relay = true;
        }
        mesh.send_control(
            ctx,
            id,
            &MeshControl::MRecreate {
                relay: Some(p.relay),
            },
        );
        if let Some(conn) = p.conn.take() {
            if p.open {
                ctx.event(Event::MediaDisconnected {
                    voice_id: id.to_owned(),
                });
            }
            ctx.net(NetCmd::MediaClose { conn });
        }
        self.call(ctx, id, MediaMode::Owned);
    }

    /// A legacy call arrived on our media peer.
    pub fn on_incoming_call(
        &mut self,
        ctx: &mut Ctx,
        mesh: &mut Mesh,
        roster: &Roster,
        conn: ConnId,
        remote: String,
    ) {
        let member = roster.members.iter().any(|m| m.id == remote);
        if !self.enabled || !member || mesh.self_id.as_deref() == Some(remote.as_str()) {
            mesh.audit(
                ctx,
                AuditKind::MediaRefused {
                    from: remote,
                    what: "call".into(),
                },
            );
            ctx.net(NetCmd::MediaClose { conn });
            return;
        }
        self.sync_gates(ctx, mesh, roster);
        let now = ctx.now.ms;
        let p = self.peers.entry(remote.clone()).or_default();
        if let Some(old) = p.conn.take() {
            if p.open {
                ctx.event(Event::MediaDisconnected {
                    voice_id: remote.clone(),
                });
            }
            ctx.net(NetCmd::MediaClose { conn: old });
        }
        p.mode = Some(MediaMode::Legacy);
        p.reset_pc(Some(conn), now);
        ctx.net(NetCmd::MediaAnswerCall { conn });
    }

    /// Our pc made an offer, answer or candidate: carry it on sig.
    pub fn on_local_signal(
        &mut self,
        ctx: &mut Ctx,
        mesh: &mut Mesh,
        conn: ConnId,
        signal: MediaSignal,
    ) {
        let Some(id) = self.peer_of(conn) else {
            return;
        };
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        let frame = match signal {
            MediaSignal::Sdp { offer, sdp } => {
                if offer {
                    p.offering = true;
                }
                MeshControl::MSdp {
                    d: SessionDescription {
                        kind: if offer {
                            SdpType::Offer
                        } else {
                            SdpType::Answer
                        },
                        sdp,
                    },
                    relay: Some(p.relay),
                }
            }
            MediaSignal::Candidate(c) => MeshControl::MIce { c },
        };
        mesh.send_control(ctx, &id, &frame);
    }

    pub fn on_open(&mut self, ctx: &mut Ctx, conn: ConnId) {
        let Some(id) = self.peer_of(conn) else {
            return;
        };
        let now = ctx.now.ms;
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        if p.open {
            return;
        }
        p.open = true;
        p.opened_at = now;
        p.stuck = 0;
        let mode = p.mode.unwrap_or(MediaMode::Owned);
        ctx.event(Event::MediaConnected { voice_id: id, mode });
    }

    pub fn on_closed(&mut self, ctx: &mut Ctx, mesh: &mut Mesh, conn: ConnId, failed: bool) {
        let Some(id) = self.peer_of(conn) else {
            return;
        };
        let Some(me) = mesh.self_id.clone() else {
            return;
        };
        let now = ctx.now.ms;
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        if p.open {
            ctx.event(Event::MediaDisconnected {
                voice_id: id.clone(),
            });
        }
        p.reset_pc(None, now);
        match p.mode {
            Some(MediaMode::Owned) if should_initiate(&me, &id) => {
                self.recover(ctx, mesh, &id, false);
            }
            Some(MediaMode::Owned) => {
                // Ask again on the heartbeat, not at once: a pc that fails the moment it is
                // made (a relay-only rebuild with no relay here) would otherwise ping-pong
                // with the initiator hundreds of times a second.
                p.next_mdial = p.next_mdial.max(now + MEDIA_HEARTBEAT_MS);
                if failed && now >= p.next_mhdead {
                    p.next_mhdead = now + MEDIA_HEARTBEAT_MS;
                    mesh.send_control(ctx, &id, &MeshControl::MhDead);
                }
            }
            // Legacy: no re-dial until the peer leaves the roster and returns.
            _ => {}
        }
    }

    pub fn on_stats(&mut self, ctx: &mut Ctx, conn: ConnId, bytes: [u64; 4]) {
        let Some(id) = self.peer_of(conn) else {
            return;
        };
        let now = ctx.now.ms;
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        let [ai, vi, ao, vo] = bytes;
        p.in_total = ai + vi;
        if let Some((at, [pai, pvi, pao, pvo])) = p.last {
            let dt = now.saturating_sub(at);
            if dt == 0 {
                return;
            }
            let d = |a: u64, b: u64| a.saturating_sub(b);
            p.kbps = [
                kbps(d(vi, pvi), dt),
                kbps(d(ai, pai), dt),
                kbps(d(vo, pvo), dt),
                kbps(d(ao, pao), dt),
            ];
            let inbound = kbps(d(vi, pvi) + d(ai, pai), dt);
            let outbound = kbps(d(vo, pvo) + d(ao, pao), dt);
            if inbound >= MEDIA_MIN_KBPS && outbound >= MEDIA_MIN_KBPS {
                p.recoveries = 0;
            }
            if inbound < MEDIA_MIN_KBPS && p.remote_sending {
                p.low_since.get_or_insert(now);
            } else {
                p.low_since = None;
            }
        }
        p.last = Some((now, bytes));
    }

    /// A media control frame on `from`'s sig channel.
    pub fn on_control(
        &mut self,
        ctx: &mut Ctx,
        mesh: &mut Mesh,
        roster: &Roster,
        from: &str,
        c: MeshControl,
    ) {
        if !self.enabled {
            return;
        }
        let Some(me) = mesh.self_id.clone() else {
            return;
        };
        match &c {
            MeshControl::Cap { .. } => {
                self.owned_seen.insert(from.to_owned());
                return;
            }
            MeshControl::Mh { ov, oa, .. } => {
                if let Some(p) = self.peers.get_mut(from) {
                    p.remote_sending = ov + oa >= MEDIA_MIN_KBPS as f64;
                }
                return;
            }
            MeshControl::Bye => return,
            _ => {}
        }
        if !roster.members.iter().any(|m| m.id == from) {
            mesh.audit(
                ctx,
                AuditKind::MediaRefused {
                    from: from.to_owned(),
                    what: control_tag(&c).into(),
                },
            );
            return;
        }
        self.owned_seen.insert(from.to_owned());
        let initiator = should_initiate(&me, from);
        let now = ctx.now.ms;
        let p = self.peers.entry(from.to_owned()).or_default();
        if p.mode != Some(MediaMode::Owned) && matches!(c, MeshControl::MSdp { .. }) {
            p.mode = Some(MediaMode::Owned);
        }
        match c {
            MeshControl::MDial if initiator => {
                // Idempotent, but an offer the answerer never saw (it did not list us yet)
                // is made again.
                if p.offering
                    && now >= p.created_at + MEDIA_HEARTBEAT_MS
                    && let Some(conn) = p.conn.take()
                {
                    ctx.net(NetCmd::MediaClose { conn });
                }
                if p.mode.is_none() {
                    p.mode = Some(MediaMode::Owned);
                }
            }
            MeshControl::MhDead
                if initiator && p.mode == Some(MediaMode::Owned) && p.conn.is_some() =>
            {
                self.recover(ctx, mesh, from, false);
            }
            MeshControl::MRecreate { relay } if !initiator => {
                if relay == Some(true) {
                    p.relay = true;
                }
                if let Some(conn) = p.conn.take() {
                    if p.open {
                        ctx.event(Event::MediaDisconnected {
                            voice_id: from.to_owned(),
                        });
                    }
                    ctx.net(NetCmd::MediaClose { conn });
                }
                p.reset_pc(None, now);
                // The new offer follows; no `m-dial` meanwhile.
                p.next_mdial = now + MEDIA_HEARTBEAT_MS;
            }
            MeshControl::MSdp { d, relay } => {
                let offer = d.kind == SdpType::Offer;
                let signal = MediaSignal::Sdp { offer, sdp: d.sdp };
                if relay == Some(true) {
                    p.relay = true;
                }
                match (offer, initiator) {
                    (false, _) => {
                        if let Some(conn) = p.conn
                            && p.offering
                        {
                            p.offering = false;
                            ctx.net(NetCmd::MediaSignal {
                                conn: Some(conn),
                                remote: from.to_owned(),
                                signal,
                                relay: p.relay,
                            });
                        }
                    }
                    // Impolite: a colliding offer is ignored; a re-offer on our pc is taken.
                    (true, true) => {
                        if let Some(conn) = p.conn
                            && !p.offering
                        {
                            ctx.net(NetCmd::MediaSignal {
                                conn: Some(conn),
                                remote: from.to_owned(),
                                signal,
                                relay: p.relay,
                            });
                        }
                    }
                    (true, false) => {
                        let conn = match p.conn {
                            // Polite: our own pending offer yields (close it, answer theirs).
                            Some(old) if p.offering => {
                                if p.open {
                                    ctx.event(Event::MediaDisconnected {
                                        voice_id: from.to_owned(),
                                    });
                                }
                                ctx.net(NetCmd::MediaClose { conn: old });
                                None
                            }
                            c => c,
                        };
                        let conn = match conn {
                            Some(c) => c,
                            None => {
                                let c = ctx.conn_id();
                                p.reset_pc(Some(c), now);
                                self.sync_gates(ctx, mesh, roster);
                                c
                            }
                        };
                        let relay = self.peers.get(from).is_some_and(|p| p.relay);
                        ctx.net(NetCmd::MediaSignal {
                            conn: Some(conn),
                            remote: from.to_owned(),
                            signal,
                            relay,
                        });
                    }
                }
            }
            MeshControl::MIce { c } => {
                if let Some(conn) = p.conn {
                    ctx.net(NetCmd::MediaSignal {
                        conn: Some(conn),
                        remote: from.to_owned(),
                        signal: MediaSignal::Candidate(c),
                        relay: p.relay,
                    });
                }
            }
            _ => {}
        }
    }

    /// The earliest time a pass has something to do (deadlines already past were handled).
    pub fn next_timeout(&self, mesh: &Mesh, now: u64, unix_ms: u64) -> Option<u64> {
        if !self.enabled {
            return None;
        }
        let me = mesh.self_id.as_deref()?;
        let mut t: Vec<u64> = Vec::new();
        for (id, p) in &self.peers {
            if let Some(since) = p.absent_since {
                t.push(since + MESH_DROP_GRACE_MS);
                continue;
            }
            let initiator = should_initiate(me, id);
            let sig = mesh.sig_open_since(id);
            if initiator && p.mode.is_none() && !self.owned_seen.contains(id) {
                t.extend(sig.map(|s| s + MEDIA_LEGACY_WAIT_MS));
            }
            if p.mode != Some(MediaMode::Owned) || sig.is_none() {
                continue;
            }
            match p.conn {
                None if !initiator => t.push(p.next_mdial),
                None => {}
                Some(_) if !p.open => {
                    t.extend(
                        (initiator && p.stuck < MEDIA_STUCK_RETRIES)
                            .then_some(p.created_at + MEDIA_STUCK_MS),
                    );
                }
                Some(_) => {
                    if p.in_total == 0 {
                        t.push(p.opened_at.saturating_add(MEDIA_RECOVER_MS));
                    }
                    t.extend(p.low_since.map(|s| s + MEDIA_RECOVER_MS));
                }
            }
        }
        // A grant's expiry may change a gate.
        for g in mesh.explicit.values() {
            if let Some(exp) = g.expires_at {
                let at = exp.saturating_mul(1000);
                if at > unix_ms {
                    t.push(now + (at - unix_ms));
                }
            }
        }
        t.into_iter().filter(|x| *x > now).min()
    }
}
