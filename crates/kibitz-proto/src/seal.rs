//! Passphrase-sealed blobs (`ghk`: the host's private JWK; `ge`: a room manifest).
//!
//! Key: PBKDF2-HMAC-SHA256, 210 000 iterations, over the NFKC-normalised passphrase and a
//! 16-byte random salt. Cipher: AES-256-GCM with a 12-byte random IV. Blob:
//! `base64url(0x01 ‖ salt ‖ iv ‖ ciphertext ‖ tag)`. A wrong passphrase, any tampering or an
//! unknown version opens to `None`. Deriving the key is deliberately slow (a tenth of a second
//! or so in an optimised build).

use aes_gcm::aead::{Aead as _, KeyInit as _};
use aes_gcm::{Aes256Gcm, Nonce};
use rand_core::CryptoRngCore;
use sha2::Sha256;
use unicode_normalization::UnicodeNormalization as _;

use crate::token::{EcPrivateJwk, SigningKey, b64url_decode, b64url_encode};

/// The blob format's version byte.
pub const SEAL_VERSION: u8 = 1;
/// PBKDF2 iterations.
pub const PBKDF2_ITERATIONS: u32 = 210_000;
/// Salt length, bytes.
pub const SALT_LEN: usize = 16;
/// AES-GCM IV length, bytes.
pub const IV_LEN: usize = 12;
/// AES-GCM tag length, bytes.
pub const TAG_LEN: usize = 16;

/// Why sealing failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// The plaintext is beyond what AES-GCM may encrypt under one IV.
    #[error("plaintext too long to seal")]
    TooLong,
}

fn derive_key(passphrase: &str, salt: &[u8], iterations: u32) -> Aes256Gcm {
    let normalized: String = passphrase.nfkc().collect();
    let key = pbkdf2::pbkdf2_hmac_array::<Sha256, 32>(normalized.as_bytes(), salt, iterations);
    Aes256Gcm::new(&key.into())
}

/// Seals `plaintext` under `passphrase` with the given salt and IV (fresh random bytes for
/// every blob; see [`seal_with_rng`]).
pub fn seal(
    plaintext: &[u8],
    passphrase: &str,
    salt: [u8; SALT_LEN],
    iv: [u8; IV_LEN],
) -> Result<String, SealError> {
    seal_at(plaintext, passphrase, salt, iv, PBKDF2_ITERATIONS)
}

/// [`seal`] with another PBKDF2 work factor: unit tests use a small one, as a debug build
/// takes seconds for the real one (the known-answer test pins the real one).
fn seal_at(
    plaintext: &[u8],
    passphrase: &str,
    salt: [u8; SALT_LEN],
    iv: [u8; IV_LEN],
    iterations: u32,
) -> Result<String, SealError> {
    let ct = derive_key(passphrase, &salt, iterations)
        .encrypt(Nonce::from_slice(&iv), plaintext)
        .map_err(|_| SealError::TooLong)?;
    let mut blob = Vec::with_capacity(1 + SALT_LEN + IV_LEN + ct.len());
    blob.push(SEAL_VERSION);
    blob.extend_from_slice(&salt);
    blob.extend_from_slice(&iv);
    blob.extend_from_slice(&ct);
    Ok(b64url_encode(blob))
}

/// [`seal`] with a salt and IV drawn from `rng`.
pub fn seal_with_rng(
    plaintext: &[u8],
    passphrase: &str,
    rng: &mut impl CryptoRngCore,
) -> Result<String, SealError> {
    let mut salt = [0u8; SALT_LEN];
    let mut iv = [0u8; IV_LEN];
    rng.fill_bytes(&mut salt);
    rng.fill_bytes(&mut iv);
    seal(plaintext, passphrase, salt, iv)
}

/// Opens a blob: the plaintext as text (invalid UTF-8 replaced, as `TextDecoder` does), or
/// `None` on a wrong passphrase, a tampered or malformed blob, or an unknown version.
pub fn open(blob: &str, passphrase: &str) -> Option<String> {
    open_bytes(blob, passphrase).map(|pt| String::from_utf8_lossy(&pt).into_owned())
}

/// [`open`], returning the plaintext bytes.
pub fn open_bytes(blob: &str, passphrase: &str) -> Option<Vec<u8>> {
    open_at(blob, passphrase, PBKDF2_ITERATIONS)
}

fn open_at(blob: &str, passphrase: &str, iterations: u32) -> Option<Vec<u8>> {
    let raw = b64url_decode(blob)?;
    if raw.len() < 1 + SALT_LEN + IV_LEN + TAG_LEN || raw[0] != SEAL_VERSION {
        return None;
    }
    let (salt, rest) = raw[1..].split_at(SALT_LEN);
    let (iv, ct) = rest.split_at(IV_LEN);
    derive_key(passphrase, salt, iterations)
        .decrypt(Nonce::from_slice(iv), ct)
        .ok()
}

/// Seals a host's private key for the link's `ghk`: the blob's plaintext is the private JWK's
/// JSON (`{"kty","crv","x","y","d"}`), which WebCrypto imports as is.
pub fn seal_host_key(
    key: &SigningKey,
    password: &str,
    rng: &mut impl CryptoRngCore,
) -> Result<String, SealError> {
    seal_with_rng(&private_jwk_json(key), password, rng)
}

fn private_jwk_json(key: &SigningKey) -> Vec<u8> {
    // Serialising a struct of strings cannot fail.
    serde_json::to_vec(&EcPrivateJwk::from_signing_key(key)).unwrap_or_default()
}

/// Opens a `ghk` blob back into the host's private key; `None` on a wrong password, tampering,
/// or a plaintext that is not a valid P-256 private JWK.
pub fn open_host_key(blob: &str, password: &str) -> Option<SigningKey> {
    host_key_from_json(&open_bytes(blob, password)?)
}

fn host_key_from_json(json: &[u8]) -> Option<SigningKey> {
    let jwk: EcPrivateJwk = serde_json::from_slice(json).ok()?;
    jwk.to_signing_key().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::room::tests::Replay;

    const FAST: u32 = 1_000;

    #[test]
    fn opens_a_webcrypto_blob() {
        // Sealed by Node's WebCrypto (PBKDF2 210 000 × SHA-256, AES-256-GCM) with salt 0..16,
        // IV 16..28, over the passphrase below NFKC-normalised.
        let blob =
            "AQABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhtUcJDLys-FCmZzuTBO1BtnYPCBUy9Ouq6rwKkQnpA";
        assert_eq!(
            open(blob, "\u{FB01}ance\u{301}\u{301} \u{2615}").as_deref(),
            Some(r#"{"k":"kibitz"}"#)
        );
        let salt: [u8; 16] = std::array::from_fn(|i| i as u8);
        let iv: [u8; 12] = std::array::from_fn(|i| 16 + i as u8);
        assert_eq!(
            seal(br#"{"k":"kibitz"}"#, "fiancé\u{301} ☕", salt, iv).as_deref(),
            Ok(blob)
        );
    }

    #[test]
    fn seal_open_and_fail_closed() {
        let blob = seal_at(b"manifest.token", "correct horse", [1; 16], [2; 12], FAST).unwrap();
        let raw = b64url_decode(&blob).unwrap();
        assert_eq!(raw.len(), 1 + 16 + 12 + 14 + 16);
        assert_eq!(
            &raw[..29],
            &[[1u8].as_slice(), &[1; 16], &[2; 12]].concat()[..]
        );
        let open = |blob: &str, pass: &str| {
            open_at(blob, pass, FAST).map(|pt| String::from_utf8(pt).unwrap())
        };
        assert_eq!(
            open(&blob, "correct horse").as_deref(),
            Some("manifest.token")
        );
        assert_eq!(open(&blob, "correct horsE"), None);

        let mut tampered = raw.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert_eq!(open(&b64url_encode(&tampered), "correct horse"), None);
        let mut version = raw.clone();
        version[0] = 2;
        assert_eq!(open(&b64url_encode(&version), "correct horse"), None);
        assert_eq!(open(&b64url_encode(&raw[..44]), "correct horse"), None);
        assert_eq!(open("!!!", "correct horse"), None);
    }

    #[test]
    fn passphrase_is_nfkc_normalised() {
        // "ﬁ" (U+FB01) is NFKC-equivalent to "fi"; "é" precomposed vs decomposed likewise.
        let blob = seal_at(b"x", "\u{FB01}an\u{E9}", [3; 16], [4; 12], FAST).unwrap();
        assert_eq!(open_at(&blob, "fiane\u{301}", FAST), Some(b"x".to_vec()));
    }

    #[test]
    fn host_keys_seal_as_private_jwks() {
        let key = SigningKey::from_bytes(&[9u8; 32].into()).unwrap();
        let blob = seal_at(&private_jwk_json(&key), "hunter2", [5; 16], [6; 12], FAST).unwrap();
        let json = open_at(&blob, "hunter2", FAST).unwrap();
        let jwk: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(jwk["kty"], "EC");
        assert_eq!(jwk["crv"], "P-256");
        assert!(jwk["d"].is_string() && jwk["x"].is_string() && jwk["y"].is_string());
        let back = host_key_from_json(&json).unwrap();
        assert_eq!(back.to_bytes(), key.to_bytes());
        // A sealed non-JWK is not a host key.
        assert!(host_key_from_json(br#"{"kty":"EC"}"#).is_none());
        // The public path draws salt then IV from the rng, and opens with the real work factor.
        let mut rng = Replay((0..28).collect(), 0);
        let blob = seal_host_key(&key, "hunter2", &mut rng).unwrap();
        assert_eq!(
            &b64url_decode(&blob).unwrap()[1..29],
            &(0..28).collect::<Vec<u8>>()[..]
        );
        assert_eq!(
            open_host_key(&blob, "hunter2").map(|k| k.to_bytes()),
            Some(key.to_bytes())
        );
    }
}
