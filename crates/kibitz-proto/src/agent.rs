//! Agent key assertions (KIBITZ.md §4.7): `kbz-agent-key.v1` tokens an agent signs with its own
//! P-256 key, checked against a room manifest's `agentKeys`.
//!
//! An assertion is valid when one of the manifest's agent keys verifies it, its room is this
//! room, its `fp` is the agent's presence-connection DTLS fingerprint (canonical: trimmed,
//! lowercased), it is at most 300 s old and `iat` is at most 60 s ahead. The matched entry's
//! `caps` (sanitised; the agent default when absent) become the agent's grant. The web agent
//! runtime re-signs every 4 minutes. Time comes in as unix seconds.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::grants::{Grant, sanitize_grant};
use crate::presence::Raw;
use crate::room::canonical_fingerprint;
use crate::token::{EcJwk, SigningKey, b64url_encode, sign_payload, verify_token};

/// The payload kind.
pub const KIND: &str = "kbz-agent-key.v1";
/// Longest assertion accepted, in characters.
pub const MAX_ASSERTION_CHARS: usize = 2048;
/// Oldest assertion accepted, seconds.
pub const MAX_AGE_SECS: u64 = 300;
/// How far in the future `iat` may be, seconds.
pub const MAX_FUTURE_SECS: u64 = 60;
/// How often the web agent runtime re-signs, seconds.
pub const RESIGN_SECS: u64 = 240;

/// The payload of an agent assertion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentAssertion {
    /// Always [`KIND`].
    pub k: String,
    /// Normalised room id.
    pub room: String,
    /// The agent's presence DTLS fingerprint, canonical.
    pub fp: String,
    /// Issued at, unix seconds.
    pub iat: u64,
}

/// A manifest's `agentKeys[]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentKeyEntry {
    /// The agent's public key.
    pub key: EcJwk,
    /// Its grant, as written (read through [`AgentKeyEntry::grant`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caps: Option<Raw>,
    /// A label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

impl AgentKeyEntry {
    /// The grant this entry gives: its sanitised `caps`, or the agent default.
    pub fn grant(&self) -> Grant {
        self.caps
            .as_ref()
            .and_then(|caps| serde_json::to_value(caps).ok())
            .and_then(|caps| sanitize_grant(&caps))
            .unwrap_or_else(Grant::agent_default)
    }
}

/// The RFC 7638-style thumbprint the web client uses: base64url SHA-256 of
/// `{"crv","kty","x","y"}` JSON, members in that order.
pub fn agent_key_thumbprint(jwk: &EcJwk) -> String {
    let s = |v: &str| serde_json::Value::from(v).to_string();
    let json = format!(
        "{{\"crv\":{},\"kty\":{},\"x\":{},\"y\":{}}}",
        s(&jwk.crv),
        s(&jwk.kty),
        s(&jwk.x),
        s(&jwk.y)
    );
    b64url_encode(Sha256::digest(json.as_bytes()))
}

/// Signs an assertion for `room` (normalised) binding the agent's fingerprint at `iat`.
pub fn sign_agent_assertion(key: &SigningKey, room: &str, fp: &str, iat: u64) -> String {
    sign_payload(
        key,
        &AgentAssertion {
            k: KIND.to_owned(),
            room: room.to_owned(),
            fp: canonical_fingerprint(fp),
            iat,
        },
    )
}

/// Why an assertion was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// Longer than 2048 characters.
    #[error("agent assertion too long")]
    TooLong,
    /// The presence fingerprint is not readable yet (hold and retry).
    #[error("agent fingerprint unknown")]
    NoFingerprint,
    /// Malformed, or no manifest agent key verifies it.
    #[error("no agent key verifies the assertion")]
    BadSignature,
    /// Not a `kbz-agent-key.v1` payload of the right shape.
    #[error("not an agent assertion")]
    Kind,
    /// For another room.
    #[error("agent assertion for another room")]
    WrongRoom,
    /// Bound to another fingerprint.
    #[error("agent assertion bound to another fingerprint")]
    WrongFingerprint,
    /// `iat` too far ahead.
    #[error("agent assertion from the future")]
    Future,
    /// Older than 300 s.
    #[error("agent assertion expired")]
    Expired,
}

/// A verified assertion: which manifest entry it matched and what that entry grants.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentMatch {
    /// Index into the manifest's `agentKeys`.
    pub index: usize,
    /// The matched key's thumbprint.
    pub thumbprint: String,
    /// The matched entry's grant.
    pub grant: Grant,
    /// The verified payload.
    pub assertion: AgentAssertion,
}

/// Verifies an assertion against a manifest's agent keys for `room` (normalised) and the
/// agent's presence fingerprint, at `now_unix`.
pub fn verify_agent_assertion(
    token: &str,
    agent_keys: &[AgentKeyEntry],
    room: &str,
    fingerprint: Option<&str>,
    now_unix: u64,
) -> Result<AgentMatch, AgentError> {
    if token.len() > MAX_ASSERTION_CHARS {
        return Err(AgentError::TooLong);
    }
    let fp = fingerprint
        .filter(|fp| !fp.trim().is_empty())
        .map(canonical_fingerprint)
        .ok_or(AgentError::NoFingerprint)?;
    let (index, payload) = agent_keys
        .iter()
        .enumerate()
        .find_map(|(i, entry)| {
            let key = entry.key.to_verifying_key().ok()?;
            verify_token(token, &key).ok().map(|p| (i, p))
        })
        .ok_or(AgentError::BadSignature)?;
    if payload.get("k").and_then(|k| k.as_str()) != Some(KIND) {
        return Err(AgentError::Kind);
    }
    let assertion: AgentAssertion =
        serde_json::from_value(payload).map_err(|_| AgentError::Kind)?;
    if assertion.room != room {
        return Err(AgentError::WrongRoom);
    }
    if canonical_fingerprint(&assertion.fp) != fp {
        return Err(AgentError::WrongFingerprint);
    }
    if assertion.iat > now_unix.saturating_add(MAX_FUTURE_SECS) {
        return Err(AgentError::Future);
    }
    if now_unix.saturating_sub(assertion.iat) > MAX_AGE_SECS {
        return Err(AgentError::Expired);
    }
    let entry = &agent_keys[index];
    Ok(AgentMatch {
        index,
        thumbprint: agent_key_thumbprint(&entry.key),
        grant: entry.grant(),
        assertion,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grants::Perceive;
    use serde_json::json;

    const NOW: u64 = 1_700_000_000;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32].into()).unwrap()
    }

    fn entry(seed: u8, caps: Option<serde_json::Value>) -> AgentKeyEntry {
        AgentKeyEntry {
            key: EcJwk::from_verifying_key(key(seed).verifying_key()),
            caps: caps.map(crate::presence::tests::raw),
            label: None,
        }
    }

    #[test]
    fn thumbprint_is_rfc7638() {
        // RFC 7638 has no EC example; this pins the member order and the encoding.
        let jwk = EcJwk {
            kty: "EC".into(),
            crv: "P-256".into(),
            x: "X".into(),
            y: "Y".into(),
        };
        let want = b64url_encode(Sha256::digest(
            br#"{"crv":"P-256","kty":"EC","x":"X","y":"Y"}"#,
        ));
        assert_eq!(agent_key_thumbprint(&jwk), want);
        assert_eq!(want.len(), 43);
    }

    #[test]
    fn verifies_against_manifest_keys() {
        let keys = [
            entry(1, None),
            entry(
                2,
                Some(json!({"perceive": ["see-screen", "bogus"], "act": ["speak"]})),
            ),
        ];
        let t = sign_agent_assertion(&key(2), "standup", " AA:BB ", NOW);
        let m = verify_agent_assertion(&t, &keys, "standup", Some("aa:bb"), NOW + 300).unwrap();
        assert_eq!(m.index, 1);
        assert_eq!(m.grant.perceive, [Perceive::SeeScreen]);
        assert_eq!(m.thumbprint, agent_key_thumbprint(&keys[1].key));
        let t1 = sign_agent_assertion(&key(1), "standup", "aa:bb", NOW);
        let m = verify_agent_assertion(&t1, &keys, "standup", Some("AA:BB"), NOW).unwrap();
        assert_eq!(m.grant, Grant::agent_default());

        let v = |t: &str, room, fp, now| verify_agent_assertion(t, &keys, room, fp, now);
        assert_eq!(
            v(&t, "standup", Some("aa:bb"), NOW + 301),
            Err(AgentError::Expired)
        );
        assert_eq!(
            v(&t, "standup", Some("aa:bb"), NOW - 61),
            Err(AgentError::Future)
        );
        assert!(v(&t, "standup", Some("aa:bb"), NOW - 60).is_ok());
        assert_eq!(
            v(&t, "other", Some("aa:bb"), NOW),
            Err(AgentError::WrongRoom)
        );
        assert_eq!(
            v(&t, "standup", Some("aa:cc"), NOW),
            Err(AgentError::WrongFingerprint)
        );
        assert_eq!(v(&t, "standup", None, NOW), Err(AgentError::NoFingerprint));
        assert_eq!(
            v(&t, "standup", Some(" "), NOW),
            Err(AgentError::NoFingerprint)
        );
        let stranger = sign_agent_assertion(&key(3), "standup", "aa:bb", NOW);
        assert_eq!(
            v(&stranger, "standup", Some("aa:bb"), NOW),
            Err(AgentError::BadSignature)
        );
        let long = "x".repeat(MAX_ASSERTION_CHARS + 1);
        assert_eq!(
            v(&long, "standup", Some("aa:bb"), NOW),
            Err(AgentError::TooLong)
        );
        let host_cmd = sign_payload(
            &key(1),
            &json!({"k": "kbz-host-cmd.v1", "room": "standup", "fp": "aa:bb", "iat": NOW}),
        );
        assert_eq!(
            v(&host_cmd, "standup", Some("aa:bb"), NOW),
            Err(AgentError::Kind)
        );
        // A broken key in the manifest is skipped, not fatal.
        let mut broken = entry(9, None);
        broken.key.crv = "P-384".into();
        let keys2 = [broken, entry(1, None)];
        assert_eq!(
            verify_agent_assertion(&t1, &keys2, "standup", Some("aa:bb"), NOW).map(|m| m.index),
            Ok(1)
        );
    }
}
