//! Agent credit credentials (KIBITZ.md §4.7): RS256 JWTs from a trusted issuer, verified
//! against the issuer's JWKS.
//!
//! Verification pins `alg` to `RS256` (and `typ`, if present, to `JWT`), picks the JWKS key by
//! `kid` (a token without `kid` may use a JWKS holding exactly one RSA key), requires `iss` in
//! the trusted set, an optional credit kind `k`, a `room` claim (when present) equal to this
//! room, `exp` (60 s leeway), `nbf`/`iat` not ahead by more than the leeway, and a non-empty
//! `sub`. RSA keys must have 2048–4096-bit moduli. Fetching the JWKS is the caller's business;
//! time comes in as unix seconds. The authority reaps a credited agent once
//! `now >= exp + 90 s` ([`CREDIT_REAP_LEEWAY_SECS`]).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Sha256;

use rsa::pkcs1v15::{Signature, VerifyingKey};
use rsa::signature::Verifier as _;
use rsa::traits::PublicKeyParts as _;
use rsa::{BigUint, RsaPublicKey};

use crate::token::b64url_decode;

/// Clock leeway on `exp`, `nbf` and `iat`, seconds.
pub const LEEWAY_SECS: u64 = 60;
/// Longest credential accepted, in characters.
pub const MAX_CREDIT_CHARS: usize = 8192;
/// The authority removes a credited agent this long after its credit's `exp`, seconds.
pub const CREDIT_REAP_LEEWAY_SECS: u64 = 90;
/// Smallest RSA modulus accepted, bits.
pub const MIN_RSA_BITS: usize = 2048;

/// An RSA public key in a JWKS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RsaJwk {
    /// Always `RSA`.
    pub kty: String,
    /// Key id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    /// base64url big-endian modulus.
    pub n: String,
    /// base64url big-endian public exponent.
    pub e: String,
    /// Algorithm, if stated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    /// Use, if stated.
    #[serde(default, rename = "use", skip_serializing_if = "Option::is_none")]
    pub use_: Option<String>,
}

impl RsaJwk {
    /// The JWK of an RSA public key.
    pub fn from_public_key(key: &RsaPublicKey, kid: Option<&str>) -> Self {
        Self {
            kty: "RSA".into(),
            kid: kid.map(str::to_owned),
            n: crate::token::b64url_encode(key.n().to_bytes_be()),
            e: crate::token::b64url_encode(key.e().to_bytes_be()),
            alg: Some("RS256".into()),
            use_: Some("sig".into()),
        }
    }

    /// The public key, if this is a usable RSA signing key (2048–4096 bits, RS256 if stated).
    pub fn to_public_key(&self) -> Option<RsaPublicKey> {
        if self.kty != "RSA" || self.alg.as_deref().is_some_and(|a| a != "RS256") {
            return None;
        }
        if self.use_.as_deref().is_some_and(|u| u != "sig") {
            return None;
        }
        let n = BigUint::from_bytes_be(&b64url_decode(&self.n)?);
        let e = BigUint::from_bytes_be(&b64url_decode(&self.e)?);
        let key = RsaPublicKey::new(n, e).ok()?;
        (key.n().bits() >= MIN_RSA_BITS).then_some(key)
    }
}

/// A JSON Web Key Set. Non-RSA or unreadable keys are kept and skipped when verifying.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Jwks {
    /// The keys, as published.
    #[serde(default)]
    pub keys: Vec<Value>,
}

impl Jwks {
    /// A set of RSA keys.
    pub fn from_keys(keys: &[RsaJwk]) -> Self {
        Self {
            keys: keys
                .iter()
                .filter_map(|k| serde_json::to_value(k).ok())
                .collect(),
        }
    }

    fn rsa_keys(&self) -> impl Iterator<Item = RsaJwk> + '_ {
        self.keys
            .iter()
            .filter_map(|k| serde_json::from_value::<RsaJwk>(k.clone()).ok())
            .filter(|k| k.kty == "RSA")
    }

    /// The key a token's `kid` names; with no `kid`, the only RSA key if there is exactly one.
    pub fn key_for(&self, kid: Option<&str>) -> Option<RsaPublicKey> {
        match kid {
            Some(kid) => self
                .rsa_keys()
                .find(|k| k.kid.as_deref() == Some(kid))?
                .to_public_key(),
            None => {
                let mut keys = self.rsa_keys();
                let only = keys.next()?;
                keys.next().is_none().then_some(())?;
                only.to_public_key()
            }
        }
    }
}

/// What a room requires of credits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CreditPolicy {
    /// Issuers whose credits count.
    pub trusted_issuers: Vec<String>,
    /// The credit kind (`k` claim) required, e.g. `wbz-credit.v1`.
    pub kind: Option<String>,
}

/// The claims of a verified credit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditClaims {
    /// Issuer.
    pub iss: String,
    /// Subject (the credited agent).
    pub sub: String,
    /// Expiry, unix seconds.
    pub exp: u64,
    /// Not before, unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Issued at, unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Room scope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    /// Credit kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k: Option<String>,
}

impl CreditClaims {
    /// Whether the authority should remove the agent at `now_unix`.
    pub fn should_reap(&self, now_unix: u64) -> bool {
        now_unix >= self.exp.saturating_add(CREDIT_REAP_LEEWAY_SECS)
    }
}

/// Why a credit was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CreditError {
    /// Longer than 8192 characters.
    #[error("credit too long")]
    TooLong,
    /// Not three base64url JSON parts.
    #[error("malformed credit")]
    Malformed,
    /// `alg` is not RS256, or `typ` is not JWT.
    #[error("credit algorithm not RS256")]
    Algorithm,
    /// No usable JWKS key for the token's `kid`.
    #[error("no key for the credit")]
    NoKey,
    /// The signature does not verify.
    #[error("bad credit signature")]
    BadSignature,
    /// `iss` is not trusted.
    #[error("credit issuer not trusted")]
    Issuer,
    /// The `k` claim is not the required kind.
    #[error("credit of another kind")]
    Kind,
    /// Scoped to another room.
    #[error("credit for another room")]
    WrongRoom,
    /// No numeric `exp`, or expired beyond the leeway.
    #[error("credit expired")]
    Expired,
    /// `nbf` or `iat` ahead beyond the leeway.
    #[error("credit not yet valid")]
    NotYetValid,
    /// No `sub`.
    #[error("credit has no subject")]
    NoSubject,
}

fn json_part(part: &str) -> Option<Value> {
    serde_json::from_slice(&b64url_decode(part)?).ok()
}

/// A numeric claim as whole seconds: absent is `Ok(None)`, non-numeric is `Err`.
fn seconds(claims: &Value, name: &str) -> Result<Option<u64>, ()> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .filter(|t| t.is_finite() && *t >= 0.0)
            // Saturating float-to-int cast; the filter excludes NaN and negatives.
            .map(|t| Some(t.floor() as u64))
            .ok_or(()),
    }
}

/// Verifies a credit JWT against the issuer's JWKS and the policy, for `room` (normalised)
/// at `now_unix`.
pub fn verify_credit(
    jwt: &str,
    jwks: &Jwks,
    policy: &CreditPolicy,
    room: &str,
    now_unix: u64,
) -> Result<CreditClaims, CreditError> {
    if jwt.len() > MAX_CREDIT_CHARS {
        return Err(CreditError::TooLong);
    }
    let mut parts = jwt.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(CreditError::Malformed);
    };
    let header = json_part(h).ok_or(CreditError::Malformed)?;
    let claims = json_part(p).ok_or(CreditError::Malformed)?;
    let sig = b64url_decode(s).ok_or(CreditError::Malformed)?;
    if !header.is_object() || !claims.is_object() {
        return Err(CreditError::Malformed);
    }
    if header.get("alg").and_then(Value::as_str) != Some("RS256") {
        return Err(CreditError::Algorithm);
    }
    match header.get("typ") {
        None | Some(Value::Null) => {}
        Some(t) if t.as_str().is_some_and(|t| t.eq_ignore_ascii_case("JWT")) => {}
        Some(_) => return Err(CreditError::Algorithm),
    }
    let kid = match header.get("kid") {
        None | Some(Value::Null) => None,
        Some(Value::String(k)) => Some(k.as_str()),
        Some(_) => return Err(CreditError::NoKey),
    };
    let key = jwks.key_for(kid).ok_or(CreditError::NoKey)?;
    let sig = Signature::try_from(sig.as_slice()).map_err(|_| CreditError::BadSignature)?;
    VerifyingKey::<Sha256>::new(key)
        .verify(format!("{h}.{p}").as_bytes(), &sig)
        .map_err(|_| CreditError::BadSignature)?;

    let str_claim = |name: &str| claims.get(name).and_then(Value::as_str);
    let iss = str_claim("iss")
        .filter(|iss| policy.trusted_issuers.iter().any(|t| t == iss))
        .ok_or(CreditError::Issuer)?;
    if let Some(kind) = &policy.kind
        && str_claim("k") != Some(kind.as_str())
    {
        return Err(CreditError::Kind);
    }
    let scope = match claims.get("room") {
        None | Some(Value::Null) => None,
        Some(Value::String(r)) if r == room => Some(r.clone()),
        Some(_) => return Err(CreditError::WrongRoom),
    };
    let exp = seconds(&claims, "exp")
        .ok()
        .flatten()
        .ok_or(CreditError::Expired)?;
    if now_unix >= exp.saturating_add(LEEWAY_SECS) {
        return Err(CreditError::Expired);
    }
    let ahead = |t: Option<u64>| t.is_some_and(|t| t > now_unix.saturating_add(LEEWAY_SECS));
    let nbf = seconds(&claims, "nbf").map_err(|()| CreditError::NotYetValid)?;
    let iat = seconds(&claims, "iat").map_err(|()| CreditError::NotYetValid)?;
    if ahead(nbf) || ahead(iat) {
        return Err(CreditError::NotYetValid);
    }
    let sub = str_claim("sub")
        .filter(|s| !s.is_empty())
        .ok_or(CreditError::NoSubject)?;
    Ok(CreditClaims {
        iss: iss.to_owned(),
        sub: sub.to_owned(),
        exp,
        nbf,
        iat,
        room: scope,
        k: str_claim("k").map(str::to_owned),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::b64url_encode;
    use rsa::RsaPrivateKey;
    use rsa::pkcs1v15::SigningKey;
    use rsa::signature::{SignatureEncoding as _, Signer as _};
    use serde_json::json;

    const NOW: u64 = 1_700_000_000;
    const ISS: &str = "https://credits.example";

    /// A 2048-bit test key (made once with WebCrypto; generating one here is slow unoptimised).
    fn test_key() -> RsaPrivateKey {
        let big = |s: &[&str]| BigUint::from_bytes_be(&b64url_decode(&s.concat()).unwrap());
        RsaPrivateKey::from_components(big(&N), big(&["AQAB"]), big(&D), vec![big(&P), big(&Q)])
            .unwrap()
    }

    fn jwt(key: &RsaPrivateKey, header: &Value, claims: &Value) -> String {
        let h = b64url_encode(header.to_string());
        let p = b64url_encode(claims.to_string());
        let sig = SigningKey::<Sha256>::new(key.clone()).sign(format!("{h}.{p}").as_bytes());
        format!("{h}.{p}.{}", b64url_encode(sig.to_bytes()))
    }

    fn policy() -> CreditPolicy {
        CreditPolicy {
            trusted_issuers: vec![ISS.into()],
            kind: Some("wbz-credit.v1".into()),
        }
    }

    #[test]
    fn verifies_and_refuses() {
        let key = test_key();
        let jwks = Jwks {
            keys: vec![
                json!({"kty": "EC", "kid": "ec", "crv": "P-256", "x": "", "y": ""}),
                serde_json::to_value(RsaJwk::from_public_key(&key.to_public_key(), Some("k1")))
                    .unwrap(),
            ],
        };
        let header = json!({"alg": "RS256", "typ": "JWT", "kid": "k1"});
        let claims = json!({"iss": ISS, "sub": "agent-7", "exp": NOW + 60, "iat": NOW,
                            "nbf": NOW, "room": "standup", "k": "wbz-credit.v1"});
        let t = jwt(&key, &header, &claims);
        let got = verify_credit(&t, &jwks, &policy(), "standup", NOW).unwrap();
        assert_eq!(got.sub, "agent-7");
        assert_eq!(got.room.as_deref(), Some("standup"));
        assert!(!got.should_reap(NOW + 149) && got.should_reap(NOW + 150));
        let v = |t: &str, room: &str, now| verify_credit(t, &jwks, &policy(), room, now);
        // exp leeway: valid until exp + 60.
        assert!(v(&t, "standup", NOW + 119).is_ok());
        assert_eq!(v(&t, "standup", NOW + 120), Err(CreditError::Expired));
        assert_eq!(v(&t, "other", NOW), Err(CreditError::WrongRoom));
        assert_eq!(v(&t, "standup", NOW - 61), Err(CreditError::NotYetValid));

        let with = |k: &str, val: Value| {
            let mut c = claims.clone();
            c[k] = val;
            jwt(&key, &header, &c)
        };
        assert_eq!(
            v(&with("iss", json!("https://evil")), "standup", NOW),
            Err(CreditError::Issuer)
        );
        assert_eq!(
            v(&with("k", json!("other.v1")), "standup", NOW),
            Err(CreditError::Kind)
        );
        assert_eq!(
            v(&with("sub", json!("")), "standup", NOW),
            Err(CreditError::NoSubject)
        );
        assert_eq!(
            v(&with("exp", json!(null)), "standup", NOW),
            Err(CreditError::Expired)
        );
        assert_eq!(
            v(&with("exp", json!("soon")), "standup", NOW),
            Err(CreditError::Expired)
        );
        assert_eq!(
            v(&with("iat", json!(NOW + 61)), "standup", NOW),
            Err(CreditError::NotYetValid)
        );
        assert!(v(&with("room", json!(null)), "elsewhere", NOW).is_ok());

        let hdr = |h: Value| jwt(&key, &h, &claims);
        assert_eq!(
            v(&hdr(json!({"alg": "HS256", "kid": "k1"})), "standup", NOW),
            Err(CreditError::Algorithm)
        );
        assert_eq!(
            v(
                &hdr(json!({"alg": "RS256", "typ": "at+jwt", "kid": "k1"})),
                "standup",
                NOW
            ),
            Err(CreditError::Algorithm)
        );
        assert_eq!(
            v(&hdr(json!({"alg": "RS256", "kid": "k2"})), "standup", NOW),
            Err(CreditError::NoKey)
        );
        assert_eq!(
            v(&hdr(json!({"alg": "RS256", "kid": "ec"})), "standup", NOW),
            Err(CreditError::NoKey)
        );
        // No kid: the only RSA key in the set is used.
        assert!(v(&hdr(json!({"alg": "RS256"})), "standup", NOW).is_ok());

        // Tampered claims keep the old signature.
        let (h, rest) = t.split_once('.').unwrap();
        let (_, s) = rest.split_once('.').unwrap();
        let other = with("sub", json!("mallory"));
        let forged = format!("{h}.{}.{s}", other.split('.').nth(1).unwrap());
        assert_eq!(v(&forged, "standup", NOW), Err(CreditError::BadSignature));
        assert_eq!(v("a.b", "standup", NOW), Err(CreditError::Malformed));
        assert_eq!(
            v(&format!("{t}.x"), "standup", NOW),
            Err(CreditError::Malformed)
        );
        assert_eq!(
            v(&"a".repeat(8193), "standup", NOW),
            Err(CreditError::TooLong)
        );
    }

    #[test]
    fn every_single_character_corruption_is_refused() {
        let key = test_key();
        let jwks = Jwks::from_keys(&[RsaJwk::from_public_key(&key.to_public_key(), Some("k"))]);
        let claims = json!({"iss": ISS, "sub": "a", "exp": NOW + 60, "k": "wbz-credit.v1"});
        let t = jwt(&key, &json!({"alg": "RS256", "kid": "k"}), &claims);
        assert!(verify_credit(&t, &jwks, &policy(), "r", NOW).is_ok());
        let chars: Vec<char> = t.chars().collect();
        for i in 0..chars.len() {
            for c in ['A', '.', '_', '~', 'é'] {
                if chars[i] == c {
                    continue;
                }
                let mut bad = chars.clone();
                bad[i] = c;
                let bad: String = bad.into_iter().collect();
                // The last character of a 256-byte signature carries 4 padding bits.
                if i + 1 < chars.len() {
                    assert!(
                        verify_credit(&bad, &jwks, &policy(), "r", NOW).is_err(),
                        "{i} {c}"
                    );
                }
            }
        }
    }

    #[test]
    fn small_or_odd_keys_are_refused() {
        let key = test_key().to_public_key();
        let mut jwk = RsaJwk::from_public_key(&key, None);
        assert!(jwk.to_public_key().is_some());
        jwk.alg = Some("PS256".into());
        assert!(jwk.to_public_key().is_none());
        let small = RsaJwk {
            n: b64url_encode([0xc5u8; 128]),
            ..RsaJwk::from_public_key(&key, None)
        };
        assert!(small.to_public_key().is_none());
    }

    const N: [&str; 5] = [
        "oZ6H00dDRkQK9QtvX_ZzJMzx2niezxST9NpQFeyyAeCQDr_0rCU3lSyPSYD6qCVi7qaRiqMWJUkRDlsJ",
        "dZo8oLM1GD46NvIjSiqpS63EOE12CjDOzN9X1EtxLTn_zG9t1ZP07NSNt0KLdFKnZGHYvkkJoTLy8vP3",
        "YS61kASC_hFW8dkIwuwC73eTRFxzbyxPrtJoYwdHqRUxrKERMcofs3T8QKPAJr6FxMnLncoizn4cOu_y",
        "8W-w0P95CnpR_dVeL46KiiN78E4cduXI6Pbl43fyCzP8bvLLJYoVbLfboSIMhZ8iQv_orP6gDG3Z_ZvF",
        "p1E19iHLaHiyhdJKYulXfQ",
    ];
    const D: [&str; 5] = [
        "BoUyzZ9OY4NTPdecQq7arl1mVH4RSiF2ZqZ4HKpT9CdvKGkuIdPOjkIh9cEyW55Gg4JM1N8HgbGU8pNR",
        "qmDymTkhpzy7dIQIUHGwKtFz3SGi5X5amYFZNcNlaYGxhDnqoHc7pmJc5UvV_HdpMW-RIvwnW02G565Y",
        "CJ-ty4WjE0TnZahRXldPW4maHtQajCsPHypnnDWndqu7CO3igME4RGJeN0YGwcm8YRCvKaDS6rD3KBJT",
        "M5jcr1j394Evo-3SqHcqkzBY1WdYb4szegVTHXbJvLy1dal_Vo2kpwF9dLGMIfNKFdjvRS1T7EPxY78j",
        "uWJ7VD2A0JDRRa2e5k75sQ",
    ];
    const P: [&str; 3] = [
        "0WtK9zdNH8u8tY2HPXUuB6xARd4jBHFj7yOnJ81ZjYRb_F7rnoLowif5v-odejvhmYm95pGyEr_VNAmO",
        "JJz-OmnyrK_q0__yUPjV6Cax3DXmKE-o4W_LFF7epDta3eiNlG_-NwxSD37PaEM3-bUML6Bfnu7876V2",
        "PtYIncMCdjM",
    ];
    const Q: [&str; 3] = [
        "xZFtPja87nuNZHM6jFD6eiSBNme46uItzYJNnyn8SNSafZe5GMAPQsKqEay0Wf_W0AzXGuesjJ5d2IQa",
        "WQjIjzeu79O94dz6BOtQQ2ZnZZVfhHQLeUQxr8zFd7bFg-ZgffFHc24oH9myZ0TFA46cB9cX3N08YZCA",
        "6x5F8GhWa48",
    ];
}
