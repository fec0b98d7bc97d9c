//! Room tokens against the platform's: `tokens/webcrypto.mjs` makes and checks host commands
//! (KIBITZ.md §4.6), agent assertions and thumbprints (§4.7) with Node's WebCrypto, as the
//! Kibitz web client does, and mints an RS256 credit JWT and JWKS as an issuer would. Both
//! directions: what WebCrypto signs verifies in kibitz-proto and the reverse; tampered tokens
//! fail on both sides.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use kibitz_proto::agent::{
    AgentKeyEntry, agent_key_thumbprint, sign_agent_assertion, verify_agent_assertion,
};
use kibitz_proto::credit::{CreditError, CreditPolicy, Jwks, verify_credit};
use kibitz_proto::grants::{Act, Perceive};
use kibitz_proto::hostcmd::{
    HostCmd, HostCmdError, HostOp, ReplayGuard, Sender, sign_host_cmd, verify_host_cmd,
};
use kibitz_proto::token::{EcJwk, SigningKey};
use serde_json::{Value, json};

const ROOM: &str = "standup";
const FP: &str = "AB:CD:EF:01:23:45:67:89";
const NOW: u64 = 1_800_000_000;

/// Runs the script: its output when it succeeded, `None` when it refused (exit 1, `null`).
fn node(args: &[&str]) -> Option<String> {
    kibitz_e2e::node_cli("tokens/webcrypto.mjs", args)
}

fn json_out(args: &[&str]) -> Value {
    serde_json::from_str(&node(args).unwrap()).unwrap()
}

/// Flips one character early in the signature (no padding bits there).
fn tamper_signature(token: &str) -> String {
    let (body, sig) = token.rsplit_once('.').unwrap();
    let mut sig: Vec<char> = sig.chars().collect();
    sig[0] = if sig[0] == 'A' { 'B' } else { 'A' };
    format!("{body}.{}", sig.into_iter().collect::<String>())
}

fn key() -> SigningKey {
    SigningKey::from_bytes(&[0x42; 32].into()).unwrap()
}

#[test]
fn host_commands_cross_verify() {
    // WebCrypto signs (as the host's browser does) → kibitz-proto verifies.
    let cmd = HostCmd::new(ROOM, FP, HostOp::Kick, Some("voice-9"), NOW - 5, [0x5a; 12]);
    let made = json_out(&["sign", &serde_json::to_string(&cmd).unwrap()]);
    let jwk = EcJwk::from_json(made["jwk"].to_string().as_bytes()).unwrap();
    let host = jwk.to_verifying_key().unwrap();
    let token = made["token"].as_str().unwrap();
    let mut guard = ReplayGuard::new();
    let remote = Sender::Remote(Some(" ab:cd:ef:01:23:45:67:89"));
    assert_eq!(
        verify_host_cmd(token, Some(&host), ROOM, remote, NOW, &mut guard),
        Ok(cmd.clone())
    );
    assert_eq!(
        verify_host_cmd(token, Some(&host), ROOM, remote, NOW, &mut guard),
        Err(HostCmdError::Replay)
    );
    assert_eq!(
        verify_host_cmd(
            &tamper_signature(token),
            Some(&host),
            ROOM,
            remote,
            NOW,
            &mut ReplayGuard::new()
        ),
        Err(HostCmdError::BadSignature)
    );

    // kibitz-proto signs → WebCrypto runs the coordinator's checks.
    let k = key();
    let ours = EcJwk::from_verifying_key(k.verifying_key());
    let ours = serde_json::to_string(&ours).unwrap();
    let cmd = HostCmd::new(ROOM, FP, HostOp::Claim, None, NOW, [0x01; 12]);
    let token = sign_host_cmd(&k, &cmd);
    let now = NOW.to_string();
    let verified = json_out(&["verify-host", &token, &ours, ROOM, FP, &now]);
    assert_eq!(verified, serde_json::to_value(&cmd).unwrap());
    assert_eq!(
        node(&[
            "verify-host",
            &tamper_signature(&token),
            &ours,
            ROOM,
            FP,
            &now
        ]),
        None
    );
    assert_eq!(
        node(&["verify-host", &token, &ours, ROOM, "ab:cd", &now]),
        None
    );
    let late = (NOW + 121).to_string();
    assert_eq!(node(&["verify-host", &token, &ours, ROOM, FP, &late]), None);
}

#[test]
fn agent_assertions_and_thumbprints_cross_verify() {
    // An agent keyed by WebCrypto; the manifest lists its exported JWK (ext/key_ops ignored).
    let payload =
        json!({"k": "kbz-agent-key.v1", "room": ROOM, "fp": FP.to_lowercase(), "iat": NOW});
    let made = json_out(&["sign", &payload.to_string()]);
    assert!(made["jwk"]["key_ops"].is_array());
    let entry: AgentKeyEntry = serde_json::from_value(json!({
        "key": made["jwk"], "caps": {"perceive": ["read-chat", "see-screen"], "act": ["send-chat"]},
        "label": "webcrypto agent"
    }))
    .unwrap();
    let token = made["token"].as_str().unwrap();
    let manifest_keys = [entry.clone()];
    let m = verify_agent_assertion(token, &manifest_keys, ROOM, Some(FP), NOW + 300).unwrap();
    assert_eq!(m.grant.perceive, [Perceive::SeeScreen, Perceive::ReadChat]);
    assert_eq!(m.grant.act, [Act::SendChat]);
    assert!(
        verify_agent_assertion(
            &tamper_signature(token),
            &manifest_keys,
            ROOM,
            Some(FP),
            NOW
        )
        .is_err()
    );
    assert!(verify_agent_assertion(token, &manifest_keys, ROOM, Some(FP), NOW + 301).is_err());

    // Both sides compute the same thumbprint for the same key.
    let theirs = node(&["thumbprint", &made["jwk"].to_string()]).unwrap();
    assert_eq!(agent_key_thumbprint(&entry.key), theirs);
    assert_eq!(m.thumbprint, theirs);

    // kibitz-proto signs → WebCrypto verifies.
    let k = key();
    let ours = serde_json::to_string(&EcJwk::from_verifying_key(k.verifying_key())).unwrap();
    let token = sign_agent_assertion(&k, ROOM, FP, NOW);
    let now = (NOW + 30).to_string();
    let verified = json_out(&["verify-agent", &token, &ours, ROOM, FP, &now]);
    assert_eq!(verified, payload);
    assert_eq!(
        node(&[
            "verify-agent",
            &tamper_signature(&token),
            &ours,
            ROOM,
            FP,
            &now
        ]),
        None
    );
    assert_eq!(
        node(&["verify-agent", &token, &ours, "other", FP, &now]),
        None
    );
    let ours_jwk: EcJwk = serde_json::from_str(&ours).unwrap();
    assert_eq!(
        node(&["thumbprint", &ours]).unwrap(),
        agent_key_thumbprint(&ours_jwk)
    );
}

#[test]
fn webcrypto_credit_jwt_verifies_against_its_jwks() {
    let claims = json!({"iss": "https://credits.example", "sub": "agent-7", "iat": NOW,
                        "exp": NOW + 60, "room": ROOM, "k": "wbz-credit.v1"});
    let made = json_out(&["credit", &claims.to_string(), "key-1"]);
    let jwks: Jwks = serde_json::from_value(made["jwks"].clone()).unwrap();
    let jwt = made["jwt"].as_str().unwrap();
    let policy = CreditPolicy {
        trusted_issuers: vec!["https://credits.example".into()],
        kind: Some("wbz-credit.v1".into()),
    };
    let got = verify_credit(jwt, &jwks, &policy, ROOM, NOW).unwrap();
    assert_eq!(got.sub, "agent-7");
    assert_eq!(got.exp, NOW + 60);
    assert_eq!(
        verify_credit(&tamper_signature(jwt), &jwks, &policy, ROOM, NOW),
        Err(CreditError::BadSignature)
    );
    assert_eq!(
        verify_credit(jwt, &jwks, &policy, ROOM, NOW + 120),
        Err(CreditError::Expired)
    );
    let untrusted = CreditPolicy {
        trusted_issuers: vec!["https://other.example".into()],
        kind: None,
    };
    assert_eq!(
        verify_credit(jwt, &jwks, &untrusted, ROOM, NOW),
        Err(CreditError::Issuer)
    );
    // Another issuer's key set does not verify it.
    let other = json_out(&["credit", &claims.to_string(), "key-1"]);
    let other_jwks: Jwks = serde_json::from_value(other["jwks"].clone()).unwrap();
    assert_eq!(
        verify_credit(jwt, &other_jwks, &policy, ROOM, NOW),
        Err(CreditError::BadSignature)
    );
}
