//! Long-term credentials (RFC 8489 §9.2): who may allocate, and the key their messages are
//! signed with, `MD5(username ":" realm ":" password)`.

use md5::{Digest, Md5};

/// Secret bytes: used, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// Wraps secret bytes.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Self(bytes.into())
    }
    /// The bytes.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret(*** {} bytes)", self.0.len())
    }
}

/// Who may allocate.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum TurnAuth {
    /// One fixed user (the LAN hub: realm `kibitz`, a per-run or well-known user/password).
    Static {
        /// The only accepted USERNAME.
        user: String,
        /// Its password.
        pass: Secret,
    },
    /// TURN REST credentials (coturn's `use-auth-secret`, what `/api/turn` mints): USERNAME
    /// `<unix expiry>:<id>` (or `<id>:<expiry>`, or the expiry alone, as coturn accepts),
    /// password `base64(HMAC-SHA1(secret, username))` for any of these secrets (several while
    /// rotating). As in coturn, the expiry is checked when a credential is first used; an
    /// allocation's later requests are checked against the key it was created with.
    RestSecrets(Vec<Secret>),
}

/// `MD5(user ":" realm ":" pass)`.
pub(crate) fn long_term_key(user: &str, realm: &str, pass: &str) -> [u8; 16] {
    let mut h = Md5::new();
    h.update(user.as_bytes());
    h.update(b":");
    h.update(realm.as_bytes());
    h.update(b":");
    h.update(pass.as_bytes());
    h.finalize().into()
}

/// The expiry (unix seconds) in a REST username, as coturn reads it: the part before the first
/// `:` if it is all digits, else the part after it.
pub(crate) fn rest_expiry(username: &str) -> Option<u64> {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    match username.split_once(':') {
        None => digits(username).then(|| username.parse().ok())?,
        Some((head, _)) if digits(head) => head.parse().ok(),
        Some((_, tail)) => {
            let ts = tail.split(':').next().unwrap_or("");
            digits(ts).then(|| ts.parse().ok())?
        }
    }
}

/// Why a username cannot allocate before any key is tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Not the static user, or not a REST username.
    UnknownUser,
    /// REST expiry in the past.
    Expired,
}

impl TurnAuth {
    /// Candidate keys for `username` (one per REST secret), or why there are none. `unix` is
    /// the current unix time for the REST expiry check.
    pub(crate) fn keys(
        &self,
        username: &str,
        realm: &str,
        unix: u64,
    ) -> Result<Vec<[u8; 16]>, Refusal> {
        match self {
            TurnAuth::Static { user, pass } => {
                if username != user {
                    return Err(Refusal::UnknownUser);
                }
                let pass = String::from_utf8_lossy(pass.expose());
                Ok(vec![long_term_key(username, realm, &pass)])
            }
            TurnAuth::RestSecrets(secrets) => {
                let expiry = rest_expiry(username).ok_or(Refusal::UnknownUser)?;
                if expiry < unix {
                    return Err(Refusal::Expired);
                }
                Ok(secrets
                    .iter()
                    .map(|s| {
                        let pass = kibitz_proto::turn::rest_password(s.expose(), username);
                        long_term_key(username, realm, &pass)
                    })
                    .collect())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rest_expiry_forms_coturn_accepts() {
        assert_eq!(rest_expiry("1700000000:alice"), Some(1_700_000_000));
        assert_eq!(rest_expiry("1700000000"), Some(1_700_000_000));
        assert_eq!(rest_expiry("alice:1700000000"), Some(1_700_000_000));
        assert_eq!(
            rest_expiry("1700000000:@alice:example.org"),
            Some(1_700_000_000)
        );
        for bad in [
            "",
            "alice",
            "alice:",
            ":",
            "12a:b",
            "alice:bob",
            "99999999999999999999999",
        ] {
            assert_eq!(rest_expiry(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn rest_keys_follow_the_turn_md_vectors_and_expiry() {
        let auth = TurnAuth::RestSecrets(vec![Secret::new("OTHER"), Secret::new("SOMESECRET")]);
        let keys = auth.keys("1700000000:alice", "r", 1_600_000_000).unwrap();
        // TURN.md §1.3: password for this username with SOMESECRET.
        let want = long_term_key("1700000000:alice", "r", "2FkwxKJPhNfNI0HFeFxNGhDsEnc=");
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[1], want);
        // Expiry equal to now is still valid (coturn: expiry >= now); one second later it is not.
        assert!(auth.keys("1700000000:alice", "r", 1_700_000_000).is_ok());
        assert_eq!(
            auth.keys("1700000000:alice", "r", 1_700_000_001),
            Err(Refusal::Expired)
        );
        assert_eq!(auth.keys("alice", "r", 0), Err(Refusal::UnknownUser));
    }

    #[test]
    fn static_user_only() {
        let auth = TurnAuth::Static {
            user: "wblan".into(),
            pass: Secret::new("Sp64SHsXMZOdzT6rgYcF"),
        };
        assert_eq!(
            auth.keys("wblan", "kibitz", 0).unwrap(),
            vec![long_term_key("wblan", "kibitz", "Sp64SHsXMZOdzT6rgYcF")]
        );
        assert_eq!(auth.keys("other", "kibitz", 0), Err(Refusal::UnknownUser));
        assert!(!format!("{auth:?}").contains("Sp64"));
    }
}
