//! The participant side: frames from the authority, bans, leaving, and our own announces.

use kibitz_proto::agent::sign_agent_assertion;
use kibitz_proto::binarypack::Value;
use kibitz_proto::presence::{AuthorityWire, LobbyStatus, Roster};

use crate::config::timing::{ASSERTION_RESIGN_MS, REANNOUNCE_MS};
use crate::net::NetCmd;
use crate::types::{Event, Knocker, Status};
use crate::wire::{self, Announce};

use super::{Engine, Part, Phase};

impl Engine {
    // ---- participant side ---------------------------------------------------------------

    pub(super) fn on_authority_frame(&mut self, frame: Value) {
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

    pub(super) fn kicked(&mut self) {
        self.end("kicked");
    }

    /// Out of the room for good: both peers closed, nothing more will happen.
    pub(super) fn end(&mut self, reason: &str) {
        self.in_call = false;
        self.next_announce = None;
        self.close_presence();
        self.mesh.bye(&mut self.ctx);
        self.media.reset(&mut self.ctx, &mut self.mesh);
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

    pub(super) fn knock_frame(&mut self) -> Value {
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
    pub(super) fn send_voice(&mut self) {
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

    pub(super) fn announce_now(&mut self) {
        if self.in_call {
            self.send_voice();
        }
    }

    pub(super) fn announce_due(&mut self) {
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
}
