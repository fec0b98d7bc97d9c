//! Who may cost the hub state, and for how long (sans-IO: time comes in as arguments).
//!
//! A source earns per-source state only with a STUN Binding Request whose USERNAME starts with
//! `<hub ufrag>:` and whose MESSAGE-INTEGRITY verifies with the hub's pwd, so junk and port
//! scans allocate nothing. Once admitted it must finish DTLS+SCTP+DCEP within the handshake
//! window and keep sending valid STUN (browsers send consent checks every ~5 s) within the
//! liveness window, or it is expired.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha1::Sha1;
use str0m::ice::StunMessage;

const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];

/// RFC 7983 demux: a STUN message has its top two bits clear and the magic cookie.
pub fn is_stun(buf: &[u8]) -> bool {
    buf.len() >= 20 && buf[0] < 4 && buf[4..8] == MAGIC_COOKIE
}

/// The browser's ufrag, if `buf` is a Binding Request for this hub whose integrity verifies
/// with `pwd`.
pub fn admit_binding(buf: &[u8], ufrag: &str, pwd: &str) -> Option<String> {
    if !is_stun(buf) {
        return None;
    }
    let msg = StunMessage::parse(buf).ok()?;
    if !msg.is_binding_request() {
        return None;
    }
    let (local, remote) = msg.split_username()?;
    // ice-char only (RFC 8839): the ufrag goes into an SDP line, so nothing else may pass.
    let ice_char = |b: u8| b.is_ascii_alphanumeric() || b == b'+' || b == b'/';
    if local != ufrag || remote.is_empty() || remote.len() > 256 || !remote.bytes().all(ice_char) {
        return None;
    }
    msg.verify(pwd.as_bytes(), sha1_hmac)
        .then(|| remote.to_owned())
}

fn sha1_hmac(key: &[u8], payloads: &[&[u8]]) -> [u8; 20] {
    // HMAC takes keys of any length; the error arm cannot happen.
    let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(key) else {
        return [0; 20];
    };
    for p in payloads {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    admitted: Instant,
    last_stun: Instant,
    open: bool,
}

/// Why a source was expired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// DTLS/SCTP/channel not open within the handshake window.
    Handshake,
    /// No valid STUN within the liveness window.
    Silent,
}

/// Per-browser deadlines, keyed by whatever identifies a browser (`K`).
#[derive(Debug)]
pub struct Lifetimes<K> {
    handshake: Duration,
    liveness: Duration,
    entries: BTreeMap<K, Entry>,
}

impl<K: Ord + Copy> Lifetimes<K> {
    /// Tracks nothing yet.
    pub fn new(handshake: Duration, liveness: Duration) -> Self {
        Lifetimes {
            handshake,
            liveness,
            entries: BTreeMap::new(),
        }
    }

    /// A browser was admitted at `now`.
    pub fn admit(&mut self, now: Instant, src: K) {
        self.entries.insert(
            src,
            Entry {
                admitted: now,
                last_stun: now,
                open: false,
            },
        );
    }

    /// A valid STUN request from `src` arrived at `now`.
    pub fn stun(&mut self, now: Instant, src: K) {
        if let Some(e) = self.entries.get_mut(&src) {
            e.last_stun = now;
        }
    }

    /// `src`'s channel opened: the handshake window no longer applies.
    pub fn opened(&mut self, src: K) {
        if let Some(e) = self.entries.get_mut(&src) {
            e.open = true;
        }
    }

    /// Forget `src`.
    pub fn remove(&mut self, src: K) {
        self.entries.remove(&src);
    }

    /// Sources tracked.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is tracked.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn deadline(&self, e: &Entry) -> Instant {
        let silent = e.last_stun + self.liveness;
        if e.open {
            silent
        } else {
            silent.min(e.admitted + self.handshake)
        }
    }

    /// The earliest instant something may expire.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.entries.values().map(|e| self.deadline(e)).min()
    }

    /// Removes and returns every source expired at `now`.
    pub fn expire(&mut self, now: Instant) -> Vec<(K, Expiry)> {
        let mut gone = Vec::new();
        for (src, e) in &self.entries {
            if now >= e.last_stun + self.liveness {
                gone.push((*src, Expiry::Silent));
            } else if !e.open && now >= e.admitted + self.handshake {
                gone.push((*src, Expiry::Handshake));
            }
        }
        for (src, _) in &gone {
            self.entries.remove(src);
        }
        gone
    }
}

/// Browser ufrags whose session ended, refused for a while: a browser that went silent (sleep,
/// lost Wi-Fi) and comes back must fail its consent checks and reconnect, rather than be
/// answered by a fresh handshake state that its established DTLS can never talk to.
#[derive(Debug)]
pub struct Quarantine {
    ttl: Duration,
    cap: usize,
    until: BTreeMap<String, Instant>,
}

impl Quarantine {
    /// Entries live `ttl`; at most `cap` are kept (the oldest go first).
    pub fn new(ttl: Duration, cap: usize) -> Self {
        Quarantine {
            ttl,
            cap: cap.max(1),
            until: BTreeMap::new(),
        }
    }

    /// Refuse `ufrag` until `now + ttl`.
    pub fn insert(&mut self, now: Instant, ufrag: String) {
        self.until.retain(|_, t| *t > now);
        while self.until.len() >= self.cap {
            let Some(oldest) = self
                .until
                .iter()
                .min_by_key(|(_, t)| **t)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            self.until.remove(&oldest);
        }
        self.until.insert(ufrag, now + self.ttl);
    }

    /// Whether `ufrag` is refused at `now`.
    pub fn refuses(&self, now: Instant, ufrag: &str) -> bool {
        self.until.get(ufrag).is_some_and(|t| *t > now)
    }

    /// Entries kept.
    pub fn len(&self) -> usize {
        self.until.len()
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.until.is_empty()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use str0m::ice::TransId;

    fn request(username: &str, pwd: &str) -> Vec<u8> {
        let msg = StunMessage::binding_request(username, TransId::new(), true, 7, 1_000, true);
        let mut buf = vec![0u8; 1500];
        let n = msg
            .to_bytes(Some(pwd.as_bytes()), &mut buf, sha1_hmac)
            .unwrap();
        buf.truncate(n);
        buf
    }

    #[test]
    fn admits_only_signed_requests_for_our_ufrag() {
        let ok = request("hubufrag:brow", "hubpassword");
        assert!(is_stun(&ok));
        assert_eq!(
            admit_binding(&ok, "hubufrag", "hubpassword").as_deref(),
            Some("brow")
        );
        assert_eq!(admit_binding(&ok, "hubufrag", "otherpassword"), None);
        assert_eq!(admit_binding(&ok, "other", "hubpassword"), None);
        assert_eq!(
            admit_binding(
                &request("hubufrag:", "hubpassword"),
                "hubufrag",
                "hubpassword"
            ),
            None
        );
        assert_eq!(
            admit_binding(
                &request("hubufrag:a\r\nb", "hubpassword"),
                "hubufrag",
                "hubpassword"
            ),
            None
        );
        // One flipped byte breaks the integrity.
        let mut bad = ok.clone();
        let last = bad.len() - 30;
        bad[last] ^= 1;
        assert_eq!(admit_binding(&bad, "hubufrag", "hubpassword"), None);
        // Junk, DTLS-looking bytes and truncations.
        assert_eq!(admit_binding(&[0x16; 100], "hubufrag", "hubpassword"), None);
        assert_eq!(admit_binding(&ok[..20], "hubufrag", "hubpassword"), None);
        assert_eq!(admit_binding(&[], "hubufrag", "hubpassword"), None);
    }

    #[test]
    // A base instant only: every later time is injected relative to it.
    #[allow(clippy::disallowed_methods)]
    fn handshake_and_liveness_windows() {
        let t0 = Instant::now();
        let s = |n: u16| SocketAddr::from(([127, 0, 0, 1], n));
        let mut l = Lifetimes::new(Duration::from_secs(15), Duration::from_secs(30));
        l.admit(t0, s(1));
        l.admit(t0, s(2));
        l.opened(s(2));
        assert_eq!(l.next_deadline(), Some(t0 + Duration::from_secs(15)));
        assert!(l.expire(t0 + Duration::from_secs(14)).is_empty());
        assert_eq!(
            l.expire(t0 + Duration::from_secs(15)),
            vec![(s(1), Expiry::Handshake)]
        );
        // Consent checks keep s(2) alive past 30 s.
        for sec in [5, 10, 15, 20, 25, 30, 35] {
            l.stun(t0 + Duration::from_secs(sec), s(2));
            assert!(l.expire(t0 + Duration::from_secs(sec)).is_empty());
        }
        assert_eq!(l.next_deadline(), Some(t0 + Duration::from_secs(65)));
        assert!(l.expire(t0 + Duration::from_secs(64)).is_empty());
        assert_eq!(
            l.expire(t0 + Duration::from_secs(65)),
            vec![(s(2), Expiry::Silent)]
        );
        assert!(l.is_empty());
        assert_eq!(l.next_deadline(), None);
    }

    #[test]
    // A base instant only: every later time is injected relative to it.
    #[allow(clippy::disallowed_methods)]
    fn quarantine_expires_and_is_bounded() {
        let t0 = Instant::now();
        let mut q = Quarantine::new(Duration::from_secs(60), 2);
        q.insert(t0, "a".into());
        assert!(q.refuses(t0 + Duration::from_secs(59), "a"));
        assert!(!q.refuses(t0 + Duration::from_secs(60), "a"));
        assert!(!q.refuses(t0, "b"));
        q.insert(t0 + Duration::from_secs(1), "b".into());
        q.insert(t0 + Duration::from_secs(2), "c".into());
        assert_eq!(q.len(), 2);
        assert!(
            !q.refuses(t0 + Duration::from_secs(2), "a"),
            "oldest evicted"
        );
        assert!(q.refuses(t0 + Duration::from_secs(2), "c"));
        q.insert(t0 + Duration::from_secs(100), "d".into());
        assert_eq!(q.len(), 1, "expired entries pruned");
    }
}
