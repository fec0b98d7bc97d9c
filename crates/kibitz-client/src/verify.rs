//! The identity gate's verifier (KIBITZ.md §3.5, §4.4 "Identity gate").
//!
//! The authority asks a [`Verifier`] about a member's credentials (`jwt`, `agentAssertion`,
//! `agentCredit`) together with the remote DTLS fingerprint of that member's presence
//! connection. The verifier is pluggable: [`GateVerifier`] covers what a room link can commit
//! on its own (names, invites, manifest agent keys, agent credit); an OIDC verifier with
//! fetched JWKS can be plugged in the same way.

use kibitz_proto::agent::{AgentKeyEntry, verify_agent_assertion};
use kibitz_proto::credit::{CreditPolicy, Jwks, verify_credit};
use kibitz_proto::grants::Grant;
use kibitz_proto::token::verify_invite;
use p256::ecdsa::VerifyingKey;

/// What a member presented.
#[derive(Debug, Clone, Copy, Default)]
pub struct Credentials<'a> {
    /// `jwt`: invite token, picked name, or OIDC ID token.
    pub jwt: Option<&'a str>,
    /// `agentAssertion`.
    pub agent_assertion: Option<&'a str>,
    /// `agentCredit`.
    pub agent_credit: Option<&'a str>,
    /// Remote DTLS fingerprint of the presence connection, if readable.
    pub fingerprint: Option<&'a str>,
    /// Normalised room id.
    pub room: &'a str,
    /// Unix seconds.
    pub now_unix: u64,
}

/// What the verifier proved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verified {
    /// A verified email (OIDC), for the email host tier.
    pub email: Option<String>,
    /// A grant the credential carries (an agent key's `caps`).
    pub grant: Option<Grant>,
    /// When an agent credit expires (unix seconds): the authority reaps at `exp + 90 s`.
    pub credit_exp: Option<u64>,
}

/// The verifier's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Let in.
    Ok(Verified),
    /// Refused (`{lobby:'unverified'}`), with a reason for the local log.
    Reject(String),
    /// Cannot decide yet (e.g. no fingerprint): ask again on the next announce.
    Hold,
}

/// A pluggable identity verifier.
pub trait Verifier: Send + std::fmt::Debug {
    /// Whether every member must verify (otherwise only agents presenting assertions or
    /// credits are checked).
    fn requires_verification(&self) -> bool;
    /// Whether credentials are bound to the presence connection's fingerprint.
    fn binds_fingerprint(&self) -> bool {
        false
    }
    /// Whether agents must present a credit (re-verified on every announce).
    fn credit_gated(&self) -> bool {
        false
    }
    /// Checks the credentials.
    fn verify(&mut self, creds: &Credentials<'_>) -> Verdict;
}

/// The verifier a room link commits: a names list (`g=names`), invites against the gate key
/// (`g=invite`), manifest agent keys, and an optional credit gate for agents.
#[derive(Debug, Clone, Default)]
pub struct GateVerifier {
    /// Allowed names (case-insensitive), when the room is `names`-gated.
    pub names: Option<Vec<String>>,
    /// The gate key invites are signed with, when the room is invite-gated.
    pub invite_key: Option<VerifyingKey>,
    /// Agent keys from the manifest.
    pub agent_keys: Vec<AgentKeyEntry>,
    /// Credit gate: the issuer keys and policy agents' credits must satisfy.
    pub credit: Option<(Jwks, CreditPolicy)>,
}

impl Verifier for GateVerifier {
    fn requires_verification(&self) -> bool {
        self.names.is_some() || self.invite_key.is_some()
    }

    fn credit_gated(&self) -> bool {
        self.credit.is_some()
    }

    fn verify(&mut self, c: &Credentials<'_>) -> Verdict {
        let mut out = Verified::default();
        let mut agent = false;
        if let Some(assertion) = c.agent_assertion {
            if c.fingerprint.is_none() {
                return Verdict::Hold;
            }
            match verify_agent_assertion(
                assertion,
                &self.agent_keys,
                c.room,
                c.fingerprint,
                c.now_unix,
            ) {
                Ok(m) => {
                    out.grant = Some(m.grant);
                    agent = true;
                }
                Err(e) => return Verdict::Reject(e.to_string()),
            }
        }
        if let Some((jwks, policy)) = &self.credit {
            match c.agent_credit {
                Some(credit) => match verify_credit(credit, jwks, policy, c.room, c.now_unix) {
                    Ok(claims) => {
                        out.credit_exp = Some(claims.exp);
                        agent = true;
                    }
                    Err(e) => return Verdict::Reject(e.to_string()),
                },
                None if agent => return Verdict::Reject("agent credit required".into()),
                None => {}
            }
        }
        if agent {
            return Verdict::Ok(out);
        }
        let Some(jwt) = c.jwt else {
            return if self.requires_verification() {
                Verdict::Reject("no credential".into())
            } else {
                Verdict::Ok(out)
            };
        };
        if let Some(names) = &self.names {
            let want = jwt.trim().to_lowercase();
            if names.iter().any(|n| n.trim().to_lowercase() == want) {
                return Verdict::Ok(out);
            }
        }
        if let Some(key) = &self.invite_key {
            return match verify_invite(jwt, key, c.room, c.now_unix) {
                Ok(_) => Verdict::Ok(out),
                Err(e) => Verdict::Reject(e.to_string()),
            };
        }
        if self.requires_verification() {
            Verdict::Reject("name not on the list".into())
        } else {
            Verdict::Ok(out)
        }
    }
}
