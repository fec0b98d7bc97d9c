//! The claim loop: claiming `kbz-v1-<room>`, dialling whoever holds it, taking over; and
//! opening the media peer.

use crate::authority::{Authority, Effects};
use crate::config::timing::{
    CLAIM_TIMEOUT_MS, CONNECT_ATTEMPTS, OPEN_TIMEOUT_MS, RECLAIM_DELAY_MS, RETRY_MS,
};
use crate::net::{NetCmd, PeerKey, Plane};
use crate::types::Status;
use crate::wire;

use super::{Engine, Part, Phase};

impl Engine {
    // ---- the claim loop -----------------------------------------------------------------

    pub(super) fn claim(&mut self) {
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

    pub(super) fn presence_peer(&self) -> Option<PeerKey> {
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
    pub(super) fn give_up(&mut self, reason: &str, delay: u64) {
        self.close_presence();
        self.phase = Phase::Waiting {
            at: self.ctx.now.ms + delay,
        };
        self.set_status(Status::Reconnecting {
            reason: reason.to_owned(),
        });
    }

    pub(super) fn close_presence(&mut self) {
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

    pub(super) fn dial_authority(&mut self, peer: PeerKey, attempt: u32) {
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
    pub(super) fn dial_failed(&mut self, peer: PeerKey, attempt: u32, unavailable: bool) {
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

    pub(super) fn become_authority(&mut self, peer: PeerKey) {
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

    // ---- media peer ---------------------------------------------------------------------

    pub(super) fn open_media(&mut self) {
        let key = self.ctx.peer_key();
        self.mesh.reset();
        self.mesh.peer = Some(key);
        self.ctx.net(NetCmd::OpenPeer {
            plane: Plane::Media,
            key,
            id: None,
        });
    }
}
