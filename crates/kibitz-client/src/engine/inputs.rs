//! Inputs: timers and network events, routed to the part of the engine they belong to.

use kibitz_proto::binarypack::Value;

use crate::config::timing::{
    AUTHORITY_SILENCE_MS, CLAIM_TIMEOUT_MS, FREEZE_GAP_MS, PING_MS, RECLAIM_DELAY_MS, RETRY_MS,
};
use crate::net::{ConnId, NetCmd, NetEvent, PeerFailure, PeerKey, Plane};
use crate::types::Status;
use crate::wire;

use super::{Engine, Phase};

impl Engine {
    // ---- inputs -------------------------------------------------------------------------

    pub(super) fn on_timeout(&mut self) {
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

    pub(super) fn on_net(&mut self, ev: NetEvent) {
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
            NetEvent::MediaIncomingCall { conn, remote } => self.media.on_incoming_call(
                &mut self.ctx,
                &mut self.mesh,
                &self.roster,
                conn,
                remote,
            ),
            NetEvent::MediaLocalSignal { conn, signal } => {
                self.media
                    .on_local_signal(&mut self.ctx, &mut self.mesh, conn, signal)
            }
            NetEvent::MediaOpen { conn } => self.media.on_open(&mut self.ctx, conn),
            NetEvent::MediaClosed { conn, failed } => {
                self.media
                    .on_closed(&mut self.ctx, &mut self.mesh, conn, failed)
            }
            NetEvent::MediaStats {
                conn,
                audio_in_bytes,
                video_in_bytes,
                audio_out_bytes,
                video_out_bytes,
            } => self.media.on_stats(
                &mut self.ctx,
                conn,
                [
                    audio_in_bytes,
                    video_in_bytes,
                    audio_out_bytes,
                    video_out_bytes,
                ],
            ),
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
            self.media.reset(&mut self.ctx, &mut self.mesh);
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
            self.mesh
                .on_open(&mut self.ctx, &self.roster, conn, am_host);
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
            self.mesh
                .on_open(&mut self.ctx, &self.roster, conn, am_host);
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
            if let Some((from, c)) =
                self.mesh
                    .on_data(&mut self.ctx, &self.roster, conn, frame, host.as_deref())
            {
                self.media
                    .on_control(&mut self.ctx, &mut self.mesh, &self.roster, &from, c);
            }
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
}
