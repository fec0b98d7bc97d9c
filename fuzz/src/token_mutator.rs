//! Mutation fuzzing for every text-token parser in kibitz-proto: signed tokens (host commands,
//! agent assertions, invites, manifests), credit JWTs, room grants, sealed blobs, room links
//! and PeerJS frames. Seeds are valid tokens; mutations flip, insert, delete, splice and
//! truncate. The invariant: no parser panics, whatever the input.

use kibitz_proto::agent::{AgentKeyEntry, verify_agent_assertion};
use kibitz_proto::credit::{CreditPolicy, Jwks, verify_credit};
use kibitz_proto::hostcmd::{ReplayGuard, Sender, verify_host_cmd};
use kibitz_proto::manifest::verify_manifest;
use kibitz_proto::token::{EcJwk, SigningKey, sign_payload, verify_invite, verify_token};
use kibitz_proto::turn::{GrantPayload, sign_grant, verify_grant};
use kibitz_proto::{link, peerjs, seal};
use serde_json::json;

const ROOM: &str = "kbz-room";
const NOW: u64 = 1_700_000_000;

/// Fixed keys and seeds, built once.
pub struct Fixture {
    key: SigningKey,
    agents: Vec<AgentKeyEntry>,
    jwks: Jwks,
    policy: CreditPolicy,
    /// Valid inputs to mutate.
    pub seeds: Vec<String>,
}

fn b64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

impl Fixture {
    pub fn new() -> Self {
        let Ok(key) = SigningKey::from_bytes(&[7u8; 32].into()) else {
            unreachable!("a fixed valid scalar")
        };
        let jwk = EcJwk::from_verifying_key(key.verifying_key());
        let agents: Vec<AgentKeyEntry> =
            serde_json::from_value(json!([{ "key": jwk, "label": "bot" }])).unwrap_or_default();
        let jwks: Jwks = serde_json::from_value(json!({"keys": [{
            "kty": "RSA", "kid": "k1", "alg": "RS256", "e": "AQAB",
            "n": "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw"
        }]}))
        .unwrap_or(Jwks { keys: Vec::new() });
        let policy = CreditPolicy {
            trusted_issuers: vec!["https://issuer.example".into()],
            kind: None,
        };
        let seeds = vec![
            sign_payload(
                &key,
                &json!({"k":"kbz-host-cmd.v1","room":ROOM,"fp":"ab:cd","op":"kick","target":"m1",
                        "iat":NOW,"jti":"0123456789abcdef01234567"}),
            ),
            sign_payload(
                &key,
                &json!({"k":"kbz-agent-key.v1","room":ROOM,"fp":"ab:cd","iat":NOW}),
            ),
            sign_payload(&key, &json!({"name":"ann","room":ROOM,"exp":NOW + 60})),
            sign_payload(
                &key,
                &json!({"members":["a@b.example"],"mode":"invite","room":ROOM,"exp":NOW + 60}),
            ),
            sign_grant(
                b"grant",
                &GrantPayload {
                    room: ROOM.into(),
                    sub: "t".into(),
                    exp: Some(NOW + 60),
                },
            ),
            format!(
                "{}.{}.{}",
                b64(r#"{"alg":"RS256","typ":"JWT","kid":"k1"}"#),
                b64(
                    r#"{"iss":"https://issuer.example","sub":"agent","exp":1700000060,"room":"kbz-room"}"#
                ),
                b64("not a signature")
            ),
            format!("AQ{}", "A".repeat(60)),
            format!(
                "https://kibitz.chat/#{ROOM}?g=names&gn=ann,bob&ghn=ann&gl=1&gh={}",
                b64(&serde_json::to_string(&jwk).unwrap_or_default())
            ),
            "https://kibitz.chat/j/My%20Room?grant=x".into(),
            r#"{"type":"OFFER","dst":"bob","payload":{"sdp":"v=0"}}"#.into(),
        ];
        Self {
            key,
            agents,
            jwks,
            policy,
            seeds,
        }
    }

    /// Runs every parser on `input`. Panics are the caller's to catch.
    pub fn check(&self, input: &str) {
        let vk = self.key.verifying_key();
        let _ = verify_token(input, vk);
        let _ = verify_invite(input, vk, ROOM, NOW);
        let _ = verify_manifest(input, vk, ROOM, None, NOW);
        let mut replay = ReplayGuard::new();
        let _ = verify_host_cmd(
            input,
            Some(vk),
            ROOM,
            Sender::Remote(Some("AB:CD")),
            NOW,
            &mut replay,
        );
        let _ = verify_host_cmd(
            input,
            Some(vk),
            ROOM,
            Sender::SelfInjected,
            NOW,
            &mut replay,
        );
        let _ = verify_agent_assertion(input, &self.agents, ROOM, Some("ab:cd"), NOW);
        let _ = verify_credit(input, &self.jwks, &self.policy, ROOM, NOW);
        let _ = verify_grant(b"grant", input, NOW);
        let _ = link::parse_room_target(input, "https://kibitz.chat");
        let _ = peerjs::ClientFrame::parse(input);
        // Sealed blobs cost a 210k-round PBKDF2 once they look well formed; check the cheap
        // rejection path always and the full path only for short inputs.
        if input.len() < 200 {
            let _ = seal::open(input, "pw");
        }
    }
}

impl Default for Fixture {
    fn default() -> Self {
        Self::new()
    }
}

/// A small deterministic generator (xorshift64*).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

const ALPHABET: &[u8] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/:%#?&{}[]\",\\ \x00\xff";

/// One mutation of a seed (or of random bytes), lossily made text.
pub fn mutate(rng: &mut Rng, seeds: &[String]) -> String {
    let mut b: Vec<u8> = match rng.below(10) {
        0 => (0..rng.below(300))
            .map(|_| ALPHABET[rng.below(ALPHABET.len())])
            .collect(),
        _ => seeds[rng.below(seeds.len())].clone().into_bytes(),
    };
    for _ in 0..=rng.below(4) {
        let len = b.len();
        match rng.below(7) {
            0 if len > 0 => {
                let i = rng.below(len);
                b[i] ^= 1 << rng.below(8);
            }
            1 => {
                let i = rng.below(len + 1);
                b.insert(i, ALPHABET[rng.below(ALPHABET.len())]);
            }
            2 if len > 0 => {
                b.remove(rng.below(len));
            }
            3 => b.truncate(rng.below(len + 1)),
            4 if len > 0 => {
                // Splice another seed's tail in at a random point (e.g. a body onto a signature).
                let other = seeds[rng.below(seeds.len())].as_bytes();
                let cut = rng.below(len);
                let from = rng.below(other.len());
                b.truncate(cut);
                b.extend_from_slice(&other[from..]);
            }
            5 if len > 0 => {
                let i = rng.below(len);
                b[i] = ALPHABET[rng.below(ALPHABET.len())];
            }
            _ => {
                let i = rng.below(len + 1);
                b.splice(i..i, std::iter::repeat_n(b'A', rng.below(64)));
            }
        }
    }
    String::from_utf8_lossy(&b).into_owned()
}

/// Outcome of a run.
#[derive(Debug, Default)]
pub struct Stats {
    pub execs: u64,
    pub crashes: Vec<String>,
}

/// Runs `iterations` mutated inputs through every parser, catching panics.
pub fn run(seed: u64, iterations: u64) -> Stats {
    let fx = Fixture::new();
    let mut rng = Rng::new(seed);
    let mut stats = Stats::default();
    for s in &fx.seeds {
        fx.check(s);
    }
    for _ in 0..iterations {
        let input = mutate(&mut rng, &fx.seeds);
        stats.execs += 1;
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fx.check(&input))).is_err() {
            stats.crashes.push(input);
        }
    }
    stats
}
