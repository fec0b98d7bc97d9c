//! Host commands (KIBITZ.md §4.6): `kbz-host-cmd.v1` tokens signed with the room's host key
//! and verified by whoever coordinates.
//!
//! A command is a [signed token](crate::token) whose payload is [`HostCmd`]. The coordinator
//! checks, in order: a host key is committed; the token is at most [`MAX_TOKEN_CHARS`]; for a
//! remote command, the sender's presence-connection DTLS fingerprint is known (fail closed);
//! the signature; the kind; the room; the op; `payload.fp` equals the sender's fingerprint
//! (canonical: trimmed, lowercased); `iat` is not more than 60 s ahead; the command is at most
//! 120 s old; `jti` is 24 lowercase hex and not seen before ([`ReplayGuard`]). Time comes in as
//! unix seconds.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::room::canonical_fingerprint;
use crate::token::{SigningKey, VerifyingKey, sign_payload, verify_token};

/// The payload kind.
pub const KIND: &str = "kbz-host-cmd.v1";
/// Longest token accepted, in characters.
pub const MAX_TOKEN_CHARS: usize = 8192;
/// How far in the future `iat` may be, seconds.
pub const MAX_FUTURE_SECS: u64 = 60;
/// Oldest command accepted, seconds.
pub const MAX_AGE_SECS: u64 = 120;
/// How many `jti`s the replay guard remembers.
pub const REPLAY_CAPACITY: usize = 256;

/// A host operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HostOp {
    /// Become the verified host.
    Claim,
    /// Lobby on.
    Lobbyon,
    /// Lobby off.
    Lobbyoff,
    /// Admit a knocker (`target` = knock connection id).
    Admit,
    /// Deny a knocker (`target` = knock connection id).
    Deny,
    /// Lock the room.
    Lock,
    /// Unlock the room.
    Unlock,
    /// Clear everyone's chat.
    Reset,
    /// Remove a member (`target` = voiceId).
    Kick,
}

/// The payload of a host command token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostCmd {
    /// Always [`KIND`].
    pub k: String,
    /// Normalised room id.
    pub room: String,
    /// The sender's own DTLS fingerprint, canonical.
    pub fp: String,
    /// The operation.
    pub op: HostOp,
    /// voiceId (kick) or knock connection id (admit/deny).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Issued at, unix seconds.
    pub iat: u64,
    /// 24 lowercase hex characters (12 random bytes).
    pub jti: String,
}

impl HostCmd {
    /// A command issued at `iat` with the 12 random bytes `jti`; `fp` is canonicalised.
    pub fn new(
        room: &str,
        fp: &str,
        op: HostOp,
        target: Option<&str>,
        iat: u64,
        jti: [u8; 12],
    ) -> Self {
        Self {
            k: KIND.to_owned(),
            room: room.to_owned(),
            fp: canonical_fingerprint(fp),
            op,
            target: target.map(str::to_owned),
            iat,
            jti: jti.iter().map(|b| format!("{b:02x}")).collect(),
        }
    }
}

/// Signs a host command with the host key.
pub fn sign_host_cmd(key: &SigningKey, cmd: &HostCmd) -> String {
    sign_payload(key, cmd)
}

/// Whose command is being verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sender<'a> {
    /// A remote member: the DTLS fingerprint of its presence connection, if readable.
    Remote(Option<&'a str>),
    /// The coordinator itself, being the host: no fingerprint binding.
    SelfInjected,
}

/// Why a host command was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HostCmdError {
    /// The room commits no host key.
    #[error("no host key committed")]
    NoHostKey,
    /// Longer than 8192 characters.
    #[error("host command too long")]
    TooLong,
    /// The sender's DTLS fingerprint is unknown.
    #[error("sender fingerprint unknown")]
    NoFingerprint,
    /// Malformed or not signed by the host key.
    #[error("bad host command signature")]
    BadSignature,
    /// Not a `kbz-host-cmd.v1` payload of the right shape.
    #[error("not a host command")]
    Kind,
    /// For another room.
    #[error("host command for another room")]
    WrongRoom,
    /// Unknown op.
    #[error("unknown host op")]
    Op,
    /// Bound to another fingerprint.
    #[error("host command bound to another fingerprint")]
    WrongFingerprint,
    /// `iat` too far ahead.
    #[error("host command from the future")]
    Future,
    /// Older than 120 s.
    #[error("host command expired")]
    Expired,
    /// `jti` is not 24 lowercase hex.
    #[error("bad host command id")]
    BadJti,
    /// `jti` seen before.
    #[error("host command replayed")]
    Replay,
}

/// Remembers the last [`REPLAY_CAPACITY`] command ids, forgetting those too old to verify.
#[derive(Debug, Clone, Default)]
pub struct ReplayGuard {
    seen: VecDeque<(String, u64)>,
}

impl ReplayGuard {
    /// An empty guard.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `jti` at `now_unix`; `false` if it was already there (a replay).
    pub fn check_and_insert(&mut self, jti: &str, now_unix: u64) -> bool {
        // An id older than the accepted age cannot verify again; dropping it keeps the
        // window bounded by time as well as by count.
        let horizon = now_unix.saturating_sub(MAX_AGE_SECS + MAX_FUTURE_SECS);
        self.seen.retain(|(_, at)| *at >= horizon);
        if self.seen.iter().any(|(j, _)| j == jti) {
            return false;
        }
        if self.seen.len() >= REPLAY_CAPACITY {
            self.seen.pop_front();
        }
        self.seen.push_back((jti.to_owned(), now_unix));
        true
    }

    /// How many ids are remembered.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

fn is_jti(jti: &str) -> bool {
    jti.len() == 24
        && jti
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Verifies a host command for `room` (normalised) against the committed host key (`gh`) at
/// `now_unix`, recording its `jti` in `replay` when it is accepted.
pub fn verify_host_cmd(
    token: &str,
    host_key: Option<&VerifyingKey>,
    room: &str,
    sender: Sender<'_>,
    now_unix: u64,
    replay: &mut ReplayGuard,
) -> Result<HostCmd, HostCmdError> {
    let key = host_key.ok_or(HostCmdError::NoHostKey)?;
    if token.len() > MAX_TOKEN_CHARS {
        return Err(HostCmdError::TooLong);
    }
    let remote_fp = match sender {
        Sender::Remote(Some(fp)) if !fp.trim().is_empty() => Some(canonical_fingerprint(fp)),
        Sender::Remote(_) => return Err(HostCmdError::NoFingerprint),
        Sender::SelfInjected => None,
    };
    let payload = verify_token(token, key).map_err(|_| HostCmdError::BadSignature)?;
    if payload.get("k").and_then(|k| k.as_str()) != Some(KIND) {
        return Err(HostCmdError::Kind);
    }
    if payload.get("room").and_then(|r| r.as_str()) != Some(room) {
        return Err(HostCmdError::WrongRoom);
    }
    if payload
        .get("op")
        .and_then(|o| serde_json::from_value::<HostOp>(o.clone()).ok())
        .is_none()
    {
        return Err(HostCmdError::Op);
    }
    let cmd: HostCmd = serde_json::from_value(payload).map_err(|_| HostCmdError::Kind)?;
    if let Some(fp) = remote_fp
        && canonical_fingerprint(&cmd.fp) != fp
    {
        return Err(HostCmdError::WrongFingerprint);
    }
    if cmd.iat > now_unix.saturating_add(MAX_FUTURE_SECS) {
        return Err(HostCmdError::Future);
    }
    if now_unix.saturating_sub(cmd.iat) > MAX_AGE_SECS {
        return Err(HostCmdError::Expired);
    }
    if !is_jti(&cmd.jti) {
        return Err(HostCmdError::BadJti);
    }
    if !replay.check_and_insert(&cmd.jti, now_unix) {
        return Err(HostCmdError::Replay);
    }
    Ok(cmd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::sign_payload;
    use serde_json::json;

    const FP: &str = " AB:CD:EF ";
    const NOW: u64 = 1_700_000_000;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32].into()).unwrap()
    }

    fn cmd(op: HostOp, iat: u64, jti: u8) -> HostCmd {
        HostCmd::new("standup", FP, op, Some("v1"), iat, [jti; 12])
    }

    #[test]
    fn payload_shape() {
        let c = cmd(HostOp::Kick, NOW, 0xab);
        assert_eq!(
            serde_json::to_value(&c).unwrap(),
            json!({"k": KIND, "room": "standup", "fp": "ab:cd:ef", "op": "kick",
                   "target": "v1", "iat": NOW, "jti": "abababababababababababab"})
        );
    }

    #[test]
    fn verifies_and_refuses() {
        let k = key(1);
        let pk = *k.verifying_key();
        let mut guard = ReplayGuard::new();
        let t = sign_host_cmd(&k, &cmd(HostOp::Claim, NOW, 1));
        let remote = Sender::Remote(Some("ab:cd:ef"));
        let v = |t: &str, s, now, g: &mut ReplayGuard| {
            verify_host_cmd(t, Some(&pk), "standup", s, now, g)
        };
        assert_eq!(
            v(&t, remote, NOW, &mut guard).map(|c| c.op),
            Ok(HostOp::Claim)
        );
        assert_eq!(v(&t, remote, NOW, &mut guard), Err(HostCmdError::Replay));

        let mut g = ReplayGuard::new();
        assert_eq!(
            verify_host_cmd(&t, None, "standup", remote, NOW, &mut g),
            Err(HostCmdError::NoHostKey)
        );
        let long = "a".repeat(MAX_TOKEN_CHARS + 1);
        assert_eq!(v(&long, remote, NOW, &mut g), Err(HostCmdError::TooLong));
        assert_eq!(
            v(&t, Sender::Remote(None), NOW, &mut g),
            Err(HostCmdError::NoFingerprint)
        );
        assert_eq!(
            v(&t, Sender::Remote(Some("ab:cd:00")), NOW, &mut g),
            Err(HostCmdError::WrongFingerprint)
        );
        assert_eq!(
            verify_host_cmd(
                &t,
                Some(key(2).verifying_key()),
                "standup",
                remote,
                NOW,
                &mut g
            ),
            Err(HostCmdError::BadSignature)
        );
        assert_eq!(
            verify_host_cmd(&t, Some(&pk), "other", remote, NOW, &mut g),
            Err(HostCmdError::WrongRoom)
        );
        assert_eq!(
            v(&t, remote, NOW + MAX_AGE_SECS + 1, &mut g),
            Err(HostCmdError::Expired)
        );
        assert_eq!(
            v(&t, remote, NOW - MAX_FUTURE_SECS - 1, &mut g),
            Err(HostCmdError::Future)
        );
        assert!(g.is_empty());
        // Boundaries: exactly 120 s old, exactly 60 s ahead.
        assert!(v(&t, remote, NOW + MAX_AGE_SECS, &mut ReplayGuard::new()).is_ok());
        assert!(v(&t, remote, NOW - MAX_FUTURE_SECS, &mut ReplayGuard::new()).is_ok());
        // The coordinator-host injects its own commands without fingerprint binding.
        assert!(v(&t, Sender::SelfInjected, NOW, &mut ReplayGuard::new()).is_ok());

        let bad = |payload: serde_json::Value| {
            v(
                &sign_payload(&k, &payload),
                remote,
                NOW,
                &mut ReplayGuard::new(),
            )
        };
        let base = serde_json::to_value(cmd(HostOp::Lock, NOW, 2)).unwrap();
        let with = |key: &str, val: serde_json::Value| {
            let mut p = base.clone();
            p[key] = val;
            p
        };
        assert_eq!(
            bad(with("k", json!("kbz-agent-key.v1"))),
            Err(HostCmdError::Kind)
        );
        assert_eq!(bad(with("op", json!("nuke"))), Err(HostCmdError::Op));
        assert_eq!(
            bad(with("jti", json!("ABABABABABABABABABABABAB"))),
            Err(HostCmdError::BadJti)
        );
        assert_eq!(bad(with("jti", json!("abab"))), Err(HostCmdError::BadJti));
        assert_eq!(bad(with("iat", json!("soon"))), Err(HostCmdError::Kind));
        assert!(bad(base).is_ok());
    }

    #[test]
    fn every_single_character_corruption_is_refused() {
        let k = key(4);
        let t = sign_host_cmd(&k, &cmd(HostOp::Reset, NOW, 7));
        let remote = Sender::Remote(Some(FP));
        let chars: Vec<char> = t.chars().collect();
        for i in 0..chars.len() {
            for c in ['A', '.', '~'] {
                if chars[i] == c {
                    continue;
                }
                let mut bad = chars.clone();
                bad[i] = c;
                let bad: String = bad.into_iter().collect();
                let res = verify_host_cmd(
                    &bad,
                    Some(k.verifying_key()),
                    "standup",
                    remote,
                    NOW,
                    &mut ReplayGuard::new(),
                );
                // The last character of a 64-byte signature carries 4 padding bits.
                if i + 1 < chars.len() {
                    assert!(res.is_err(), "{i} {c}");
                }
            }
        }
    }

    #[test]
    fn replay_guard_is_bounded() {
        let mut g = ReplayGuard::new();
        for i in 0..300u32 {
            assert!(g.check_and_insert(&format!("{i:024x}"), NOW));
        }
        assert_eq!(g.len(), REPLAY_CAPACITY);
        // The oldest were evicted, the newest are remembered.
        assert!(g.check_and_insert(&format!("{:024x}", 0), NOW));
        assert!(!g.check_and_insert(&format!("{:024x}", 299), NOW));
        // Ids past the verifiable age are forgotten.
        assert!(g.check_and_insert(&format!("{:024x}", 299), NOW + 1000));
        assert_eq!(g.len(), 1);
    }
}
