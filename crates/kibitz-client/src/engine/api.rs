//! The controller API: what the application asks of the engine.

use kibitz_proto::binarypack::Value;
use kibitz_proto::content::Content;
use kibitz_proto::grants::Grant;
use kibitz_proto::hostcmd::HostOp;

use crate::config::timing::JOIN_ANNOUNCES_MS;
use crate::types::{HostError, Now, SendError};
use crate::wire;

use super::{Engine, Part, Phase};

impl Engine {
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

    /// Replaces our announced meta (role, presenting, …) and re-announces it. Peers re-gate
    /// media at once on the roster that follows (a member re-announced as `role:'agent'`).
    pub fn set_meta(&mut self, now: Now, meta: kibitz_proto::presence::Meta) {
        self.ctx.now = now;
        self.cfg.meta = meta;
        self.send_voice();
        self.media_sync();
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

    /// Host: let a knocker in (its [`Knocker::id`](crate::Knocker::id)).
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
        self.media_sync();
        Ok(())
    }
}
