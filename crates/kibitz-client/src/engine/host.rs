//! Host commands: signed or direct, as the room's tier allows, and re-kicks after migration.

use kibitz_proto::hostcmd::{HostCmd, HostOp, sign_host_cmd};

use crate::authority::Key;
use crate::config::HostCommit;
use crate::config::timing::RETRY_MS;
use crate::types::HostError;
use crate::wire;

use super::{Engine, Phase};

impl Engine {
    // ---- host ---------------------------------------------------------------------------

    pub(super) fn am_host(&self) -> bool {
        self.mesh.self_id.is_some() && self.roster.host() == self.mesh.self_id.as_deref()
    }

    /// Whether we are the verified host of a cryptographic tier (we set grants).
    pub(super) fn am_crypto_host(&self) -> bool {
        self.cfg.host.is_cryptographic() && self.am_host()
    }

    pub(super) fn crypto_host(&self) -> Option<String> {
        self.cfg
            .host
            .is_cryptographic()
            .then(|| self.roster.host().map(str::to_owned))
            .flatten()
    }

    fn signed(&mut self, op: HostOp, target: Option<&str>) -> Option<String> {
        let key = self.cfg.host_key.as_ref()?;
        let fp = self.cfg.fingerprint.as_deref().unwrap_or("");
        let cmd = HostCmd::new(
            &self.room,
            fp,
            op,
            target,
            self.ctx.now.unix(),
            self.ctx.jti(),
        );
        Some(sign_host_cmd(key, &cmd))
    }

    /// Issues a host operation the way the room's tier allows.
    pub(super) fn host_op(&mut self, op: HostOp, target: Option<&str>) -> Result<(), HostError> {
        match self.cfg.host.clone() {
            HostCommit::None => Err(HostError::NoHostTier),
            HostCommit::Key(_) => {
                let token = self.signed(op, target).ok_or(HostError::NotHost)?;
                match &mut self.phase {
                    Phase::Authority(a) => {
                        let fx = a.on_host_command(
                            &mut self.ctx,
                            &self.cfg,
                            &self.room,
                            Key::Own,
                            &token,
                        );
                        self.after_authority_change(fx);
                        Ok(())
                    }
                    Phase::Participant(p) if p.open => {
                        let conn = p.conn;
                        self.ctx.send(conn, wire::host_command(&token));
                        Ok(())
                    }
                    _ => Err(HostError::NotConnected),
                }
            }
            // Soft and email tiers: the coordinator acts directly, if it is the host.
            HostCommit::Name(_) | HostCommit::Email(_) => {
                if !(self.is_authority() && self.am_host()) {
                    return Err(HostError::NotHost);
                }
                self.direct_host_op(op, target);
                Ok(())
            }
        }
    }

    fn direct_host_op(&mut self, op: HostOp, target: Option<&str>) {
        // The authority applies a self-injected command; building one keeps a single code path.
        let cmd = HostCmd::new(
            &self.room,
            "",
            op,
            target,
            self.ctx.now.unix(),
            self.ctx.jti(),
        );
        if let Phase::Authority(a) = &mut self.phase {
            let fx = a.apply_direct(&mut self.ctx, &cmd);
            self.after_authority_change(fx);
        }
    }

    /// With the host key: claim the host slot whenever the roster does not name us.
    pub(super) fn claim_host_if_keyed(&mut self) {
        if self.cfg.host_key.is_none() || !matches!(self.cfg.host, HostCommit::Key(_)) {
            return;
        }
        if self.mesh.self_id.is_none() || !self.in_call || self.am_host() {
            return;
        }
        let now = self.ctx.now.ms;
        if let Phase::Participant(p) = &mut self.phase {
            if !p.open
                || p.claimed_at
                    .is_some_and(|t| now.saturating_sub(t) < RETRY_MS)
            {
                return;
            }
            p.claimed_at = Some(now);
        }
        let _ = self.host_op(HostOp::Claim, None);
    }

    /// As host, kick again anyone we kicked who is back (after a migration the new authority
    /// starts with empty ban lists).
    pub(super) fn rekick(&mut self) {
        if !self.am_host() || self.kicked_voice.is_empty() {
            return;
        }
        let back: Vec<String> = self
            .roster
            .members
            .iter()
            .filter(|m| self.kicked_voice.contains(&m.id))
            .map(|m| m.id.clone())
            .collect();
        for id in back {
            let _ = self.host_op(HostOp::Kick, Some(&id));
        }
    }
}
