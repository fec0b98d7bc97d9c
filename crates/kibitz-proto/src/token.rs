//! Signed tokens and the JWKs that verify them, as the Kibitz web client makes them with
//! WebCrypto.
//!
//! A token is `body "." sig` where `body = base64url(UTF-8 JSON payload)` and `sig` is the
//! ECDSA P-256 / SHA-256 signature over the ASCII bytes of `body`, in WebCrypto's raw `r‖s`
//! form (64 bytes), base64url. base64url is unpadded; decoding also takes padding. Keys travel
//! as JWKs (`kty:"EC"`, `crv:"P-256"`, `x`, `y`, plus `d` when private); WebCrypto's `ext` and
//! `key_ops` fields are ignored when reading.
//!
//! Signing here is deterministic (RFC 6979), so it needs no randomness; generating a key does
//! ([`SigningKey::random`] takes the caller's CSPRNG).

use base64::Engine as _;
use base64::alphabet::URL_SAFE;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use p256::EncodedPoint;
use p256::ecdsa::Signature;
use p256::ecdsa::signature::{Signer as _, Verifier as _};
pub use p256::ecdsa::{SigningKey, VerifyingKey};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Decodes base64url leniently, the way the web client's `atob`-based decoder does: padding
/// optional, non-zero trailing bits allowed.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &URL_SAFE,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// Unpadded base64url.
pub fn b64url_encode(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// base64url, padded or not; `None` if it is not base64url.
pub fn b64url_decode(text: &str) -> Option<Vec<u8>> {
    LENIENT.decode(text).ok()
}

/// Why a key or token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The JWK is not an EC P-256 key with valid coordinates.
    #[error("not a P-256 JWK")]
    BadKey,
    /// Not `body.sig`, or either half is not base64url, or the body is not JSON.
    #[error("malformed token")]
    Malformed,
    /// The signature does not verify with this key.
    #[error("bad token signature")]
    BadSignature,
    /// The signature verifies, but the payload is not of the expected shape.
    #[error("unexpected token payload")]
    Payload,
}

/// A P-256 public key as a JWK. Serialises as `{"kty","crv","x","y"}`; reading ignores any
/// other member (`ext`, `key_ops`, `alg`, …).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EcJwk {
    /// Always `EC`.
    pub kty: String,
    /// Always `P-256`.
    pub crv: String,
    /// base64url of the 32-byte affine x coordinate.
    pub x: String,
    /// base64url of the 32-byte affine y coordinate.
    pub y: String,
}

impl EcJwk {
    /// The JWK of a public key.
    pub fn from_verifying_key(key: &VerifyingKey) -> Self {
        let point = key.to_encoded_point(false);
        // An uncompressed point of a valid public key always has both coordinates.
        let (x, y) = match (point.x(), point.y()) {
            (Some(x), Some(y)) => (b64url_encode(x), b64url_encode(y)),
            _ => unreachable!("uncompressed P-256 points carry x and y"),
        };
        Self {
            kty: "EC".into(),
            crv: "P-256".into(),
            x,
            y,
        }
    }

    /// The public key, if this is an EC P-256 JWK whose point is on the curve.
    pub fn to_verifying_key(&self) -> Result<VerifyingKey, TokenError> {
        if self.kty != "EC" || self.crv != "P-256" {
            return Err(TokenError::BadKey);
        }
        let x = coordinate(&self.x)?;
        let y = coordinate(&self.y)?;
        let point = EncodedPoint::from_affine_coordinates(&x.into(), &y.into(), false);
        VerifyingKey::from_encoded_point(&point).map_err(|_| TokenError::BadKey)
    }

    /// Parses a JWK from JSON and checks it is a usable P-256 public key.
    pub fn from_json(json: &[u8]) -> Result<Self, TokenError> {
        let jwk: Self = serde_json::from_slice(json).map_err(|_| TokenError::BadKey)?;
        jwk.to_verifying_key()?;
        Ok(jwk)
    }

    /// The link encoding (`gk`, `gh`): base64url of the JWK's JSON.
    pub fn to_link_param(&self) -> String {
        b64url_encode(serde_json::to_vec(self).unwrap_or_default())
    }

    /// Reads the link encoding; `None` if it is not a usable P-256 public key.
    pub fn from_link_param(param: &str) -> Option<Self> {
        Self::from_json(&b64url_decode(param)?).ok()
    }
}

/// A P-256 private key as a JWK (`kty, crv, x, y, d`). Its `Debug` hides `d`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EcPrivateJwk {
    /// The public members.
    #[serde(flatten)]
    pub public: EcJwk,
    /// base64url of the 32-byte private scalar.
    pub d: String,
}

impl std::fmt::Debug for EcPrivateJwk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EcPrivateJwk")
            .field("public", &self.public)
            .field("d", &"<hidden>")
            .finish()
    }
}

impl EcPrivateJwk {
    /// The JWK of a private key.
    pub fn from_signing_key(key: &SigningKey) -> Self {
        Self {
            public: EcJwk::from_verifying_key(key.verifying_key()),
            d: b64url_encode(key.to_bytes()),
        }
    }

    /// The private key, if `d` is a valid scalar whose public point matches `x`/`y`.
    pub fn to_signing_key(&self) -> Result<SigningKey, TokenError> {
        let public = self.public.to_verifying_key()?;
        let d = coordinate(&self.d)?;
        let key = SigningKey::from_bytes(&d.into()).map_err(|_| TokenError::BadKey)?;
        if key.verifying_key() != &public {
            return Err(TokenError::BadKey);
        }
        Ok(key)
    }
}

fn coordinate(text: &str) -> Result<[u8; 32], TokenError> {
    b64url_decode(text)
        .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
        .ok_or(TokenError::BadKey)
}

/// Signs a JSON payload into a `body.sig` token.
pub fn sign_payload<T: Serialize + ?Sized>(key: &SigningKey, payload: &T) -> String {
    // Serialising plain data (strings, numbers, maps with string keys) cannot fail.
    let json = serde_json::to_vec(payload).unwrap_or_default();
    let body = b64url_encode(json);
    let sig: Signature = key.sign(body.as_bytes());
    format!("{body}.{}", b64url_encode(sig.to_bytes()))
}

/// Verifies a token's signature (splitting at the first `.`) and returns its JSON payload.
/// Callers enforce any room, expiry or claim policy.
pub fn verify_token(token: &str, key: &VerifyingKey) -> Result<serde_json::Value, TokenError> {
    let (body, sig) = token.split_once('.').ok_or(TokenError::Malformed)?;
    if body.is_empty() || sig.is_empty() {
        return Err(TokenError::Malformed);
    }
    let sig = b64url_decode(sig).ok_or(TokenError::Malformed)?;
    let payload: serde_json::Value = b64url_decode(body)
        .and_then(|json| serde_json::from_slice(&json).ok())
        .ok_or(TokenError::Malformed)?;
    let sig = Signature::from_slice(&sig).map_err(|_| TokenError::BadSignature)?;
    key.verify(body.as_bytes(), &sig)
        .map_err(|_| TokenError::BadSignature)?;
    Ok(payload)
}

/// [`verify_token`], then reads the payload as `T`.
pub fn verify_payload<T: DeserializeOwned>(
    token: &str,
    key: &VerifyingKey,
) -> Result<T, TokenError> {
    serde_json::from_value(verify_token(token, key)?).map_err(|_| TokenError::Payload)
}

/// A signed room invite: who it is for, the normalised room, and its expiry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvitePayload {
    /// The invitee's label.
    pub name: String,
    /// The normalised room id it is valid in.
    pub room: String,
    /// Expiry, unix seconds.
    pub exp: u64,
}

/// Why an invite was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InviteError {
    /// Malformed, or not signed by the room's key.
    #[error("bad invite signature")]
    BadSignature,
    /// Signed for another room.
    #[error("invite for another room")]
    WrongRoom,
    /// `now >= exp`, or no numeric `exp`.
    #[error("invite expired")]
    Expired,
    /// Empty `name`.
    #[error("invite has no name")]
    NoName,
}

/// Signs an invite.
pub fn sign_invite(key: &SigningKey, invite: &InvitePayload) -> String {
    sign_payload(key, invite)
}

/// Verifies an invite against the room's key (`gk`), its room and `now_unix`; returns the
/// invitee's name.
pub fn verify_invite(
    token: &str,
    key: &VerifyingKey,
    room: &str,
    now_unix: u64,
) -> Result<String, InviteError> {
    let payload = verify_token(token, key).map_err(|_| InviteError::BadSignature)?;
    if payload.get("room").and_then(|r| r.as_str()) != Some(room) {
        return Err(InviteError::WrongRoom);
    }
    match payload.get("exp").and_then(|e| e.as_f64()) {
        Some(exp) if (now_unix as f64) < exp => {}
        _ => return Err(InviteError::Expired),
    }
    match payload.get("name").and_then(|n| n.as_str()) {
        Some(name) if !name.is_empty() => Ok(name.to_owned()),
        _ => Err(InviteError::NoName),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32].into()).unwrap()
    }

    #[test]
    fn base64url_is_unpadded_and_reads_padding() {
        assert_eq!(b64url_encode([0xfb, 0xff]), "-_8");
        assert_eq!(b64url_decode("-_8"), Some(vec![0xfb, 0xff]));
        assert_eq!(b64url_decode("-_8="), Some(vec![0xfb, 0xff]));
        assert_eq!(b64url_decode("+/8"), None);
        assert_eq!(b64url_decode("a"), None);
    }

    #[test]
    fn jwk_round_trip_ignores_webcrypto_members() {
        let k = key(7);
        let jwk = EcJwk::from_verifying_key(k.verifying_key());
        assert_eq!(jwk.to_verifying_key(), Ok(*k.verifying_key()));
        let json = serde_json::to_string(&jwk).unwrap();
        assert!(json.starts_with(r#"{"kty":"EC","crv":"P-256","x":""#));
        let webcrypto = format!(
            r#"{{"key_ops":["verify"],"ext":true,"kty":"EC","x":"{}","y":"{}","crv":"P-256"}}"#,
            jwk.x, jwk.y
        );
        assert_eq!(EcJwk::from_json(webcrypto.as_bytes()), Ok(jwk.clone()));
        assert_eq!(
            EcJwk::from_link_param(&jwk.to_link_param()),
            Some(jwk.clone())
        );

        let private = EcPrivateJwk::from_signing_key(&k);
        let json = serde_json::to_string(&private).unwrap();
        assert!(json.contains(r#""d":""#));
        assert!(!format!("{private:?}").contains(&private.d));
        let back: EcPrivateJwk = serde_json::from_str(&json).unwrap();
        assert_eq!(back.to_signing_key().unwrap().to_bytes(), k.to_bytes());
        // A `d` that does not match the public half is refused.
        let mut mixed = private.clone();
        mixed.d = EcPrivateJwk::from_signing_key(&key(8)).d;
        assert_eq!(mixed.to_signing_key().err(), Some(TokenError::BadKey));
    }

    #[test]
    fn corrupt_jwks_are_refused() {
        let jwk = EcJwk::from_verifying_key(key(7).verifying_key());
        let off_curve = EcJwk {
            y: jwk.x.clone(),
            ..jwk.clone()
        };
        assert_eq!(off_curve.to_verifying_key(), Err(TokenError::BadKey));
        let other_curve = EcJwk {
            crv: "P-384".into(),
            ..jwk.clone()
        };
        assert_eq!(other_curve.to_verifying_key(), Err(TokenError::BadKey));
        assert_eq!(EcJwk::from_link_param("not base64!"), None);
        assert_eq!(EcJwk::from_link_param(&b64url_encode("{}")), None);
        assert_eq!(EcJwk::from_link_param(&b64url_encode("[1]")), None);
    }

    #[test]
    fn tokens_sign_and_verify() {
        let k = key(3);
        let t = sign_payload(&k, &serde_json::json!({"hello": "wörld", "n": 1}));
        let (body, sig) = t.split_once('.').unwrap();
        assert_eq!(b64url_decode(sig).unwrap().len(), 64);
        assert_eq!(
            b64url_decode(body).unwrap(),
            r#"{"hello":"wörld","n":1}"#.as_bytes()
        );
        let v = verify_token(&t, k.verifying_key()).unwrap();
        assert_eq!(v["hello"], "wörld");
        assert_eq!(
            verify_token(&t, key(4).verifying_key()),
            Err(TokenError::BadSignature)
        );
        // Tamper with the body: same signature, other bytes.
        let other = sign_payload(&k, &serde_json::json!({"hello": "world", "n": 1}));
        let forged = format!("{}.{sig}", other.split_once('.').unwrap().0);
        assert_eq!(
            verify_token(&forged, k.verifying_key()),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            verify_token(body, k.verifying_key()),
            Err(TokenError::Malformed)
        );
        assert_eq!(
            verify_token(&format!("{body}."), k.verifying_key()),
            Err(TokenError::Malformed)
        );
        assert_eq!(
            verify_token(&format!(".{sig}"), k.verifying_key()),
            Err(TokenError::Malformed)
        );
        // Splits at the FIRST dot: anything after it is the signature (and fails).
        assert_eq!(
            verify_token(&format!("{t}.x"), k.verifying_key()),
            Err(TokenError::Malformed)
        );
        assert_eq!(
            verify_payload::<InvitePayload>(&t, k.verifying_key()),
            Err(TokenError::Payload)
        );
    }

    #[test]
    fn invites() {
        let k = key(5);
        let inv = InvitePayload {
            name: "Alice".into(),
            room: "standup".into(),
            exp: 1_000,
        };
        let t = sign_invite(&k, &inv);
        let pubk = k.verifying_key();
        assert_eq!(verify_invite(&t, pubk, "standup", 999), Ok("Alice".into()));
        assert_eq!(
            verify_invite(&t, pubk, "standup", 1_000),
            Err(InviteError::Expired)
        );
        assert_eq!(
            verify_invite(&t, pubk, "other", 0),
            Err(InviteError::WrongRoom)
        );
        assert_eq!(
            verify_invite(&t, key(6).verifying_key(), "standup", 0),
            Err(InviteError::BadSignature)
        );
        let nameless = sign_payload(
            &k,
            &serde_json::json!({"name": "", "room": "standup", "exp": 9}),
        );
        assert_eq!(
            verify_invite(&nameless, pubk, "standup", 0),
            Err(InviteError::NoName)
        );
        assert_eq!(verify_payload::<InvitePayload>(&t, pubk), Ok(inv));
    }
}
