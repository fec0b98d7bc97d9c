//! The authority side: our own roster entry, the roster broadcast, and the roster view.

use kibitz_proto::presence::{Member, Roster};

use crate::authority::Effects;
use crate::types::Event;

use super::{Engine, Phase};

impl Engine {
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
    pub(super) fn sync_self(&mut self) {
        let m = self.self_member();
        if let Phase::Authority(a) = &mut self.phase {
            let fx = a.set_self(&self.cfg, m);
            self.after_authority_change(fx);
        }
    }

    pub(super) fn after_authority_change(&mut self, fx: Effects) {
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

    pub(super) fn refresh_roster_from_authority(&mut self) {
        if let Phase::Authority(a) = &self.phase {
            let r = a.roster();
            self.set_roster(r);
            self.rekick();
        }
    }

    /// Installs a new roster view: events, mesh links, grants resync.
    pub(super) fn set_roster(&mut self, r: Roster) {
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
}
