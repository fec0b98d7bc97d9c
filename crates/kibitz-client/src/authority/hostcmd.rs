//! Host commands at the authority: verifying signed ones and applying them (claim, lobby,
//! admit, deny, kick, lock, reset).

use std::collections::BTreeSet;

use kibitz_proto::hostcmd::{HostCmd, HostOp, Sender, verify_host_cmd};
use kibitz_proto::presence::LobbyStatus;

use crate::config::{HostCommit, RoomConfig};
use crate::ctx::Ctx;
use crate::net::ConnId;
use crate::types::Event;
use crate::wire;

use super::{Authority, Effects, Key, remember};

impl Authority {
    /// A signed host command, from a member or self-injected (`Key::Own`).
    pub fn on_host_command(
        &mut self,
        ctx: &mut Ctx,
        cfg: &RoomConfig,
        room: &str,
        from: Key,
        token: &str,
    ) -> Effects {
        let fx = Effects::default();
        let HostCommit::Key(key) = &cfg.host else {
            return fx;
        };
        let sender = match from {
            Key::Own => Sender::SelfInjected,
            Key::Conn(c) => {
                Sender::Remote(self.conns.get(&c).and_then(|s| s.fingerprint.as_deref()))
            }
        };
        let cmd: HostCmd = match verify_host_cmd(
            token,
            Some(key),
            room,
            sender,
            ctx.now.unix(),
            &mut self.replay,
        ) {
            Ok(cmd) => cmd,
            Err(e) => {
                ctx.event(Event::HostCommandRefused {
                    reason: e.to_string(),
                });
                return fx;
            }
        };
        self.apply(ctx, from, &cmd)
    }

    /// A host operation by the coordinator itself, in a tier without signed commands.
    pub fn apply_direct(&mut self, ctx: &mut Ctx, cmd: &HostCmd) -> Effects {
        self.apply(ctx, Key::Own, cmd)
    }

    fn apply(&mut self, ctx: &mut Ctx, from: Key, cmd: &HostCmd) -> Effects {
        let mut fx = Effects::default();
        let target = cmd.target.as_deref().unwrap_or("");
        match cmd.op {
            HostOp::Claim => {
                self.host = Some(from);
                if let Key::Conn(c) = from {
                    self.admit_conn(c);
                }
                fx.roster_changed = true;
            }
            HostOp::Lobbyon => {
                self.lobby = true;
                // Current members stay admitted; connections that never joined lose the roster.
                let members: BTreeSet<ConnId> = self
                    .members
                    .iter()
                    .filter_map(|e| match e.key {
                        Key::Conn(c) => Some(c),
                        Key::Own => None,
                    })
                    .collect();
                let host = self.host_conn();
                let ids: Vec<ConnId> = self.conns.keys().copied().collect();
                for c in ids {
                    if members.contains(&c) || Some(c) == host {
                        self.admit_conn(c);
                    } else if let Some(s) = self.conns.get_mut(&c) {
                        s.admitted = false;
                    }
                }
                fx.roster_changed = true;
            }
            HostOp::Lobbyoff => {
                self.lobby = false;
                let waiting: Vec<ConnId> = self
                    .conns
                    .iter()
                    .filter(|(_, s)| s.pending.is_some())
                    .map(|(c, _)| *c)
                    .collect();
                for c in waiting {
                    self.admit_conn(c);
                    ctx.send(c, wire::lobby(LobbyStatus::Admitted));
                }
                fx.roster_changed = true;
            }
            HostOp::Admit | HostOp::Deny => {
                let found = self
                    .conns
                    .iter()
                    .find(|(c, s)| s.pending.is_some() && c.to_string() == target)
                    .map(|(c, _)| *c);
                if let Some(c) = found {
                    if cmd.op == HostOp::Admit {
                        self.admit_conn(c);
                        ctx.send(c, wire::lobby(LobbyStatus::Admitted));
                        ctx.send(c, self.roster_frame(None));
                    } else if let Some(s) = self.conns.get_mut(&c) {
                        s.pending = None;
                        ctx.send(c, wire::lobby(LobbyStatus::Denied));
                    }
                    ctx.event(Event::LobbyQueue(self.pending()));
                    fx.roster_changed = true;
                }
            }
            HostOp::Lock | HostOp::Unlock => {
                self.locked = cmd.op == HostOp::Lock;
                fx.roster_changed = true;
            }
            HostOp::Reset => {
                for c in self.conns.keys() {
                    ctx.send(*c, wire::bare("reset"));
                }
                fx.reset = true;
            }
            HostOp::Kick => {
                let Some(key) = self.member_key_by_voice(target) else {
                    return fx;
                };
                remember(&mut self.kicked_voice, target.to_owned());
                if let Some(t) = self
                    .members
                    .iter()
                    .find(|e| e.key == key)
                    .and_then(|e| e.token.clone())
                    && self.kicked_tokens.len() < wire::MAX_BANS
                {
                    self.kicked_tokens.insert(wire::ban_hash(&cmd.room, &t));
                }
                match key {
                    Key::Conn(c) => {
                        self.kicked_conns.insert(c);
                        if let Some(s) = self.conns.get_mut(&c) {
                            s.admitted = false;
                        }
                        ctx.send(c, wire::bare("kick"));
                    }
                    Key::Own => fx.kicked_self = true,
                }
                if self.host == Some(key) {
                    self.host = None;
                }
                self.remove_member(key);
                fx.roster_changed = true;
            }
        }
        fx
    }
}
