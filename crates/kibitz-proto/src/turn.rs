//! TURN credentials and Kibitz room grants: pure functions, no clock (callers pass unix time).
//!
//! - TURN REST credentials (draft-uberti-behave-turn-rest-00, as coturn's `use-auth-secret`
//!   checks them): username `<unix expiry>:<opaque id>`, password
//!   `base64(HMAC-SHA1(secret, username))`.
//! - Room grants (Kibitz `X-Kibitz-Grant`): `base64url(JSON payload) "." base64url(HMAC-SHA256(
//!   secret, <that base64url text>))`, payload `{room, sub, exp}` with `exp` in unix seconds.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// `<expiry>:<user>` (or just the expiry when `user` is empty).
pub fn rest_username(expiry_unix: u64, user: &str) -> String {
    if user.is_empty() {
        expiry_unix.to_string()
    } else {
        format!("{expiry_unix}:{user}")
    }
}

/// `base64(HMAC-SHA1(secret, username))`: the password coturn derives for `username`.
pub fn rest_password(secret: &[u8], username: &str) -> String {
    let Ok(mut mac) = Hmac::<sha1::Sha1>::new_from_slice(secret) else {
        unreachable!("HMAC accepts keys of any length")
    };
    mac.update(username.as_bytes());
    STANDARD.encode(mac.finalize().into_bytes())
}

/// [`rest_password`] for one secret, with the key schedule done once: each password then
/// costs two SHA-1 blocks instead of four.
#[derive(Clone)]
pub struct RestSigner(Hmac<sha1::Sha1>);

impl std::fmt::Debug for RestSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RestSigner(***)")
    }
}

impl RestSigner {
    /// Prepares signing with `secret`.
    pub fn new(secret: &[u8]) -> Self {
        let Ok(mac) = Hmac::<sha1::Sha1>::new_from_slice(secret) else {
            unreachable!("HMAC accepts keys of any length")
        };
        Self(mac)
    }

    /// `base64(HMAC-SHA1(secret, username))`.
    pub fn password(&self, username: &str) -> String {
        let mut mac = self.0.clone();
        mac.update(username.as_bytes());
        STANDARD.encode(mac.finalize().into_bytes())
    }
}

/// First 16 characters of base64url(SHA-256(key)): an opaque, stable tag for a key.
pub fn tag_of(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    let mut tag = URL_SAFE_NO_PAD.encode(digest);
    tag.truncate(16);
    tag
}

/// What a room grant carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantPayload {
    /// The room it is for.
    pub room: String,
    /// Who it was issued to (a tag, never the key itself).
    pub sub: String,
    /// Expiry, unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
}

/// Why a grant was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GrantError {
    /// Not `payload.signature`, or not base64url, or not the payload JSON.
    #[error("malformed grant")]
    Malformed,
    /// The signature does not match.
    #[error("bad grant signature")]
    BadSignature,
    /// `exp` is in the past.
    #[error("grant expired")]
    Expired,
}

fn grant_mac(secret: &[u8], signed: &str) -> Hmac<Sha256> {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        unreachable!("HMAC accepts keys of any length")
    };
    mac.update(signed.as_bytes());
    mac
}

/// Signs a grant.
pub fn sign_grant(secret: &[u8], payload: &GrantPayload) -> String {
    let json = serde_json::to_string(payload).unwrap_or_default();
    let body = URL_SAFE_NO_PAD.encode(json);
    let sig = URL_SAFE_NO_PAD.encode(grant_mac(secret, &body).finalize().into_bytes());
    format!("{body}.{sig}")
}

/// Longest grant accepted, so a huge header costs nothing to refuse.
const MAX_GRANT_LEN: usize = 2048;

/// Verifies a grant's signature (constant time) and expiry at `now_unix`.
pub fn verify_grant(secret: &[u8], token: &str, now_unix: u64) -> Result<GrantPayload, GrantError> {
    if token.len() > MAX_GRANT_LEN {
        return Err(GrantError::Malformed);
    }
    let (body, sig) = token.split_once('.').ok_or(GrantError::Malformed)?;
    let sig = URL_SAFE_NO_PAD
        .decode(sig.trim_end_matches('='))
        .map_err(|_| GrantError::Malformed)?;
    let expected = grant_mac(secret, body).finalize().into_bytes();
    if !bool::from(expected.as_slice().ct_eq(&sig)) {
        return Err(GrantError::BadSignature);
    }
    let json = URL_SAFE_NO_PAD
        .decode(body.trim_end_matches('='))
        .map_err(|_| GrantError::Malformed)?;
    let payload: GrantPayload = serde_json::from_slice(&json).map_err(|_| GrantError::Malformed)?;
    if payload.exp.is_some_and(|exp| exp <= now_unix) {
        return Err(GrantError::Expired);
    }
    Ok(payload)
}

/// Whether a room name is acceptable for a grant (`^[\w.:-]{1,200}$`, as Kibitz checks it).
pub fn valid_grant_room(room: &str) -> bool {
    (1..=200).contains(&room.len())
        && room
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rest_vectors_from_turn_md() {
        let s = b"SOMESECRET";
        assert_eq!(rest_username(1_700_000_000, "alice"), "1700000000:alice");
        assert_eq!(rest_username(1_700_000_000, ""), "1700000000");
        assert_eq!(
            rest_password(s, "1700000000:alice"),
            "2FkwxKJPhNfNI0HFeFxNGhDsEnc="
        );
        assert_eq!(
            rest_password(s, "1700000000"),
            "JHjhc+MfSDOuK1A19mgHiaGXJIQ="
        );
        assert_eq!(
            rest_password(s, "1700000000:@alice:example.org"),
            "32yTTtGfKaHiE1dKdnZ33lGQ8tM="
        );
    }

    #[test]
    fn signer_matches_the_plain_function() {
        let signer = RestSigner::new(b"SOMESECRET");
        for u in [
            "1700000000:alice",
            "1700000000",
            "1700000000:@alice:example.org",
        ] {
            assert_eq!(signer.password(u), rest_password(b"SOMESECRET", u));
        }
        assert_eq!(format!("{signer:?}"), "RestSigner(***)");
    }

    #[test]
    fn grants_round_trip_and_fail_closed() {
        let p = GrantPayload {
            room: "kbz-v1-team".into(),
            sub: tag_of("license-key"),
            exp: Some(2_000),
        };
        let t = sign_grant(b"k", &p);
        assert_eq!(verify_grant(b"k", &t, 1_999), Ok(p.clone()));
        assert_eq!(verify_grant(b"k", &t, 2_000), Err(GrantError::Expired));
        assert_eq!(verify_grant(b"other", &t, 0), Err(GrantError::BadSignature));
        let (body, sig) = t.split_once('.').unwrap();
        let forged = sign_grant(
            b"k",
            &GrantPayload {
                room: "x".into(),
                ..p
            },
        );
        let forged_body = forged.split_once('.').unwrap().0;
        assert_eq!(
            verify_grant(b"k", &format!("{forged_body}.{sig}"), 0),
            Err(GrantError::BadSignature)
        );
        assert_eq!(verify_grant(b"k", body, 0), Err(GrantError::Malformed));
        assert_eq!(verify_grant(b"k", "a.b.c", 0), Err(GrantError::Malformed));
        assert_eq!(
            verify_grant(b"k", &"x".repeat(5000), 0),
            Err(GrantError::Malformed)
        );
    }

    #[test]
    fn tags_and_rooms() {
        assert_eq!(tag_of("abc").len(), 16);
        assert_ne!(tag_of("abc"), tag_of("abd"));
        assert!(valid_grant_room("kbz-v1-a.b:c_d"));
        assert!(!valid_grant_room(""));
        assert!(!valid_grant_room("a b"));
        assert!(!valid_grant_room(&"a".repeat(201)));
    }
}
