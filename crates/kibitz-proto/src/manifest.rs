//! Room manifests (KIBITZ.md §3.5): the verified roster a room link commits, signed with the
//! gate key (`gk`) and carried sealed in `ge` or referenced by `gm`.
//!
//! A manifest is valid when `gk` signs it, its room is this room, its mode matches an optional
//! pin, `now < exp`, and at least one of `members`, `mh` and `agentKeys` is non-empty. Emails
//! compare NFKC-normalised, trimmed and lowercased. A manifest listing agent keys but no
//! members or domains leaves the room open to humans.

use serde::{Deserialize, Serialize};
use unicode_normalization::UnicodeNormalization as _;

use crate::agent::AgentKeyEntry;
use crate::presence::Raw;
use crate::token::{SigningKey, VerifyingKey, sign_payload, verify_token};

/// How the manifest's members prove who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ManifestMode {
    /// Signed invite tokens.
    Invite,
    /// OIDC ID tokens (emails).
    Google,
    /// Picked names.
    Names,
}

/// A listed invitee.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Invitee {
    /// `oidc`, `signin` or `mail`.
    pub method: String,
    /// Identifier (e.g. an email).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Display flag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show: Option<Raw>,
}

/// A manifest payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Member emails or names.
    #[serde(default)]
    pub members: Vec<String>,
    /// Room-bound member hashes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mh: Option<Vec<String>>,
    /// Allowed email domains.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domains: Option<Vec<String>>,
    /// How members prove themselves.
    pub mode: ManifestMode,
    /// Normalised room id.
    pub room: String,
    /// Expiry, unix seconds.
    pub exp: u64,
    /// Invitees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invitees: Option<Vec<Invitee>>,
    /// Agent keys and their grants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_keys: Option<Vec<AgentKeyEntry>>,
}

/// NFKC, trimmed, lowercased: how manifest emails compare.
pub fn normalize_email(email: &str) -> String {
    email.nfkc().collect::<String>().trim().to_lowercase()
}

impl Manifest {
    /// The agent keys (empty when absent).
    pub fn agent_keys(&self) -> &[AgentKeyEntry] {
        self.agent_keys.as_deref().unwrap_or_default()
    }

    /// Whether `email` is a listed member.
    pub fn has_member(&self, email: &str) -> bool {
        let want = normalize_email(email);
        self.members.iter().any(|m| normalize_email(m) == want)
    }

    /// Whether `email` is a listed member or in a listed domain.
    pub fn allows_email(&self, email: &str) -> bool {
        if self.has_member(email) {
            return true;
        }
        let email = normalize_email(email);
        let Some((_, domain)) = email.rsplit_once('@') else {
            return false;
        };
        self.domains.as_deref().unwrap_or_default().iter().any(|d| {
            let d = normalize_email(d);
            d.trim_start_matches('@') == domain
        })
    }

    /// An agent-only manifest (agent keys, no members, no domains) leaves humans open.
    pub fn humans_open(&self) -> bool {
        !self.agent_keys().is_empty()
            && self.members.is_empty()
            && self.domains.as_deref().unwrap_or_default().is_empty()
    }

    fn lists_someone(&self) -> bool {
        !self.members.is_empty()
            || !self.mh.as_deref().unwrap_or_default().is_empty()
            || !self.agent_keys().is_empty()
    }
}

/// Signs a manifest with the gate key.
pub fn sign_manifest(key: &SigningKey, manifest: &Manifest) -> String {
    sign_payload(key, manifest)
}

/// Why a manifest was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// Malformed or not signed by the gate key.
    #[error("bad manifest signature")]
    BadSignature,
    /// Not a manifest of the right shape.
    #[error("not a manifest")]
    Payload,
    /// For another room.
    #[error("manifest for another room")]
    WrongRoom,
    /// Not the pinned mode.
    #[error("manifest of another mode")]
    WrongMode,
    /// `now >= exp`.
    #[error("manifest expired")]
    Expired,
    /// No members, member hashes or agent keys.
    #[error("manifest lists nobody")]
    Empty,
}

/// Verifies a manifest token against the gate key for `room` (normalised) at `now_unix`,
/// optionally pinning its mode.
pub fn verify_manifest(
    token: &str,
    gate_key: &VerifyingKey,
    room: &str,
    mode: Option<ManifestMode>,
    now_unix: u64,
) -> Result<Manifest, ManifestError> {
    let payload = verify_token(token, gate_key).map_err(|_| ManifestError::BadSignature)?;
    let manifest: Manifest = serde_json::from_value(payload).map_err(|_| ManifestError::Payload)?;
    if manifest.room != room {
        return Err(ManifestError::WrongRoom);
    }
    if mode.is_some_and(|m| m != manifest.mode) {
        return Err(ManifestError::WrongMode);
    }
    if now_unix >= manifest.exp {
        return Err(ManifestError::Expired);
    }
    if !manifest.lists_someone() {
        return Err(ManifestError::Empty);
    }
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::EcJwk;
    use serde_json::json;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32].into()).unwrap()
    }

    #[test]
    fn verify_rules() {
        let gk = key(1);
        let agent = EcJwk::from_verifying_key(key(2).verifying_key());
        let m: Manifest = serde_json::from_value(json!({
            "members": ["Zoë@Example.org "], "domains": ["@corp.example"], "mode": "google",
            "room": "standup", "exp": 100,
            "invitees": [{"method": "oidc", "id": "a@b.c", "show": true}],
            "agentKeys": [{"key": agent, "label": "bot"}]
        }))
        .unwrap();
        let t = sign_manifest(&gk, &m);
        let pk = gk.verifying_key();
        let got = verify_manifest(&t, pk, "standup", Some(ManifestMode::Google), 99).unwrap();
        assert_eq!(got, m);
        assert!(got.has_member("zoe\u{308}@example.org"));
        assert!(got.allows_email("x@CORP.example"));
        assert!(!got.allows_email("x@corp.example.evil"));
        assert!(!got.humans_open());
        assert_eq!(
            verify_manifest(&t, pk, "standup", None, 100),
            Err(ManifestError::Expired)
        );
        assert_eq!(
            verify_manifest(&t, pk, "other", None, 0),
            Err(ManifestError::WrongRoom)
        );
        assert_eq!(
            verify_manifest(&t, pk, "standup", Some(ManifestMode::Invite), 0),
            Err(ManifestError::WrongMode)
        );
        assert_eq!(
            verify_manifest(&t, key(3).verifying_key(), "standup", None, 0),
            Err(ManifestError::BadSignature)
        );

        let agents_only = Manifest {
            members: vec![],
            domains: None,
            invitees: None,
            ..m.clone()
        };
        let t = sign_manifest(&gk, &agents_only);
        assert!(
            verify_manifest(&t, pk, "standup", None, 0)
                .unwrap()
                .humans_open()
        );
        let nobody = Manifest {
            agent_keys: Some(vec![]),
            ..agents_only
        };
        let t = sign_manifest(&gk, &nobody);
        assert_eq!(
            verify_manifest(&t, pk, "standup", None, 0),
            Err(ManifestError::Empty)
        );
        let t = sign_payload(&gk, &json!({"room": "standup", "exp": 9}));
        assert_eq!(
            verify_manifest(&t, pk, "standup", None, 0),
            Err(ManifestError::Payload)
        );
    }
}
