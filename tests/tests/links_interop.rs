//! Room-link crypto against the platform's: `links/webcrypto.mjs` does the formats of
//! KIBITZ.md §3.5 with Node's WebCrypto, as the Kibitz web client does. Both directions:
//! WebCrypto opens and verifies what kibitz-proto seals and signs (including the host key a
//! password link commits), and kibitz-proto opens and verifies what WebCrypto makes. Wrong
//! passwords and tampered tokens fail on both sides.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use kibitz_proto::SplitMix64;
use kibitz_proto::gate::GateDescriptor;
use kibitz_proto::link::{commit_host_password, parse_room_target, room_link, unlock_host_key};
use kibitz_proto::rand_core::{self, CryptoRng, RngCore};
use kibitz_proto::seal::{open, seal};
use kibitz_proto::token::{EcJwk, SigningKey, sign_payload, verify_token};
use serde_json::{Value, json};

const ORIGIN: &str = "https://kibitz.chat";
/// NFKC folds "ﬁ" to "fi" and composes "e" + U+0301: both sides must normalise alike.
const PASSWORD: &str = "ﬁve cafe\u{301} horses";
const SAME_PASSWORD_NFKC: &str = "five café horses";

/// Runs the script: its output when it succeeded, `None` when it refused (exit 1, `null`).
fn node(args: &[&str]) -> Option<String> {
    kibitz_e2e::node_cli("links/webcrypto.mjs", args)
}

/// Flips one bit of the signature's first byte (a character early in it, so no padding bits).
fn tamper_signature(token: &str) -> String {
    let (body, sig) = token.split_once('.').unwrap();
    let mut sig: Vec<char> = sig.chars().collect();
    sig[0] = if sig[0] == 'A' { 'B' } else { 'A' };
    format!("{body}.{}", sig.into_iter().collect::<String>())
}

#[test]
fn webcrypto_opens_and_verifies_what_rust_makes() {
    let plaintext = "manifest.tøken ☕";
    let blob = seal(plaintext.as_bytes(), PASSWORD, [7; 16], [9; 12]).unwrap();
    assert_eq!(
        node(&["open", &blob, SAME_PASSWORD_NFKC]).as_deref(),
        Some(plaintext)
    );
    assert_eq!(node(&["open", &blob, "five cafe horses"]), None);

    let key = SigningKey::from_bytes(&[42u8; 32].into()).unwrap();
    let jwk = serde_json::to_string(&EcJwk::from_verifying_key(key.verifying_key())).unwrap();
    let payload = json!({"name": "Zoë", "room": "standup", "exp": 1_900_000_000u64});
    let token = sign_payload(&key, &payload);
    let verified: Value = serde_json::from_str(&node(&["verify", &token, &jwk]).unwrap()).unwrap();
    assert_eq!(verified, payload);
    assert_eq!(node(&["verify", &tamper_signature(&token), &jwk]), None);
    let other = sign_payload(
        &key,
        &json!({"name": "Mallory", "room": "standup", "exp": 1}),
    );
    let spliced = format!(
        "{}.{}",
        other.split_once('.').unwrap().0,
        token.split_once('.').unwrap().1
    );
    assert_eq!(node(&["verify", &spliced, &jwk]), None);
}

#[test]
fn webcrypto_claims_the_host_key_of_a_rust_link() {
    let mut rng = Counter(SplitMix64::new(0x5eed));
    let key = SigningKey::random(&mut rng);
    let mut gate = GateDescriptor::default();
    commit_host_password(&mut gate, &key, PASSWORD, &mut rng).unwrap();
    let link = room_link(ORIGIN, "Host Test", &gate).unwrap();

    // The browser unseals ghk with the password, imports the private JWK and signs with it.
    let command = json!({"k": "kbz-host-cmd.v1", "room": "host-test", "op": "claim", "iat": 1});
    let token = node(&["host-sign", &link, SAME_PASSWORD_NFKC, &command.to_string()]).unwrap();
    let target = parse_room_target(&link, ORIGIN).unwrap();
    let host_key = target
        .gate
        .host_pub_key
        .unwrap()
        .to_verifying_key()
        .unwrap();
    assert_eq!(verify_token(&token, &host_key), Ok(command.clone()));

    assert_eq!(
        node(&["host-sign", &link, "not the password", &command.to_string()]),
        None
    );
}

#[test]
fn rust_opens_and_verifies_what_webcrypto_makes() {
    let payload = json!({"members": ["a@example.org"], "mode": "invite", "room": "r", "exp": 9});
    let made: Value = serde_json::from_str(
        &node(&[
            "make",
            "sealed by WebCrypto ✓",
            PASSWORD,
            &payload.to_string(),
        ])
        .unwrap(),
    )
    .unwrap();

    let blob = made["blob"].as_str().unwrap();
    assert_eq!(
        open(blob, SAME_PASSWORD_NFKC).as_deref(),
        Some("sealed by WebCrypto ✓")
    );
    assert_eq!(open(blob, "five cafe horses"), None);

    // WebCrypto's export carries ext and key_ops; they are ignored.
    assert!(made["jwk"]["key_ops"].is_array());
    let jwk = EcJwk::from_json(made["jwk"].to_string().as_bytes()).unwrap();
    let key = jwk.to_verifying_key().unwrap();
    let token = made["token"].as_str().unwrap();
    assert_eq!(verify_token(token, &key), Ok(payload));
    assert!(verify_token(&tamper_signature(token), &key).is_err());

    // A host-password link built by the browser: we read gh and unlock ghk.
    let target = parse_room_target(made["link"].as_str().unwrap(), ORIGIN).unwrap();
    assert_eq!(target.room, "webcrypto-room");
    assert_eq!(target.signaling_id, "kbz-v1-webcrypto-room");
    let host = unlock_host_key(&target.gate, SAME_PASSWORD_NFKC).expect("host key unlocks");
    let committed = target
        .gate
        .host_pub_key
        .as_ref()
        .unwrap()
        .to_verifying_key()
        .unwrap();
    assert_eq!(host.verifying_key(), &committed);
    assert!(unlock_host_key(&target.gate, "five cafe horses").is_none());
}

/// A counter "RNG": these tests need valid keys and fresh-looking nonces, not secrecy.
#[derive(Debug)]
struct Counter(SplitMix64);

impl RngCore for Counter {
    fn next_u32(&mut self) -> u32 {
        self.next_u64() as u32
    }
    fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        rand_core::impls::fill_bytes_via_next(self, dest);
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}
impl CryptoRng for Counter {}
