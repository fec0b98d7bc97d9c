//! Room ids: normalisation, the deterministic signaling id, fresh and page-derived rooms, and
//! the room-salted identity nonce.
//!
//! The normalised room id is a frozen cross-version contract: the presence authority claims
//! `kbz-v1-<normalised room>` on the broker, and the same normalised id salts every room-bound
//! signature and nonce. Nothing here reads a clock or draws randomness on its own: fresh ids take
//! the random bytes (or a CSPRNG) as an argument.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand_core::CryptoRngCore;
use sha2::{Digest, Sha256};

/// Prefix of every room's broker peer id.
pub const PEER_ID_PREFIX: &str = "kbz-v1-";

/// Longest normalised room id, in characters.
pub const MAX_ROOM_LEN: usize = 40;

/// Hash routes of the Kibitz app that are never rooms.
pub const RESERVED: [&str; 12] = [
    "new",
    "install",
    "uninstall",
    "privacy",
    "terms",
    "security",
    "relay",
    "setup",
    "docs",
    "extension",
    "help",
    "wake",
];

/// The sayable words in front of a fresh room's random code.
pub const FRESH_WORDS: [&str; 10] = [
    "amber", "birch", "coral", "dusk", "ember", "fjord", "grove", "lunar", "opal", "tidal",
];

/// Length of a fresh room's random code (about 52 bits).
pub const FRESH_CODE_LEN: usize = 10;

/// Normalises a room name: lowercase, every run of characters outside `[a-z0-9]` becomes one
/// `-`, leading and trailing `-` are stripped, then the result is cut to 40 characters (so a
/// trailing `-` can survive the cut).
pub fn normalize_room(room: &str) -> String {
    let mut out = String::with_capacity(room.len());
    let mut in_run = false;
    // Unicode lowercasing first, as JavaScript's `toLowerCase` does: a few non-ASCII letters
    // (the Kelvin sign, for one) lowercase into ASCII.
    for c in room.to_lowercase().chars() {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
            in_run = false;
        } else if !in_run {
            out.push('-');
            in_run = true;
        }
    }
    let trimmed = out.trim_matches('-');
    // All ASCII by now, so byte indices are character indices.
    trimmed[..trimmed.len().min(MAX_ROOM_LEN)].to_owned()
}

/// The broker peer id the room's presence authority claims: `kbz-v1-` + the normalised room.
pub fn peer_id_for(room: &str) -> String {
    format!("{PEER_ID_PREFIX}{}", normalize_room(room))
}

/// Whether a normalised room id is one of the app's reserved routes.
pub fn is_reserved(normalized: &str) -> bool {
    RESERVED.contains(&normalized)
}

/// The unbiased base-36 code the accepted bytes give: bytes ≥ 252 are skipped, each other byte
/// `b` gives the digit `b % 36` (`0-9a-z`). `None` if fewer than `len` bytes were accepted.
pub fn code_from_bytes(bytes: &[u8], len: usize) -> Option<String> {
    let code: String = bytes
        .iter()
        .filter(|&&b| b < 252)
        .take(len)
        .map(|&b| base36_digit(u32::from(b % 36)))
        .collect();
    (code.len() == len).then_some(code)
}

/// A random base-36 code of `len` characters (see [`code_from_bytes`]).
pub fn random_code(len: usize, rng: &mut impl CryptoRngCore) -> String {
    let mut code = String::with_capacity(len);
    let mut buf = [0u8; 16];
    while code.len() < len {
        rng.fill_bytes(&mut buf);
        for b in buf.iter().filter(|&&b| b < 252) {
            if code.len() == len {
                break;
            }
            code.push(base36_digit(u32::from(b % 36)));
        }
    }
    code
}

/// A fresh room id, `<word>-<10-character code>` (already normalised), e.g. `ember-a3f9k2mq7p`.
pub fn fresh_room(rng: &mut impl CryptoRngCore) -> String {
    let word = loop {
        let mut b = [0u8; 1];
        rng.fill_bytes(&mut b);
        // 250 = 25 × 10: rejecting the rest keeps every word equally likely.
        if b[0] < 250 {
            break FRESH_WORDS[usize::from(b[0] % 10)];
        }
    };
    format!("{word}-{}", random_code(FRESH_CODE_LEN, rng))
}

/// A typed room name, normalised; a name that normalises to nothing gives a fresh room.
pub fn room_from_input(raw: &str, rng: &mut impl CryptoRngCore) -> String {
    let named = normalize_room(raw);
    if named.is_empty() {
        fresh_room(rng)
    } else {
        named
    }
}

/// The deterministic room of a web page (the browser extension's rooms): hostname without
/// `www.` plus the lowercased path without trailing `/`, tagged with the base-36 FNV-1a-32 of
/// that key. Query and fragment are ignored. `None` if `href` is not an absolute URL.
pub fn room_for_url(href: &str) -> Option<String> {
    let url = url::Url::parse(href).ok()?;
    let hostname = url.host_str().unwrap_or("");
    let host = hostname.strip_prefix("www.").unwrap_or(hostname);
    let path = url.path().trim_end_matches('/').to_lowercase();
    let key = format!("{host}{path}");
    let mut hash: u32 = 0x811c_9dc5;
    // FNV over UTF-16 code units, as the extension computes it with `charCodeAt`.
    for unit in key.encode_utf16() {
        hash ^= u32::from(unit);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    let tag = base36(hash);
    let slug = normalize_room(host);
    let slug = &slug[..slug.len().min(38usize.saturating_sub(tag.len()))];
    Some(normalize_room(&format!("{slug}-{tag}")))
}

/// Canonical form of a DTLS fingerprint (colon hex): trimmed and lowercased.
pub fn canonical_fingerprint(fp: &str) -> String {
    fp.trim().to_lowercase()
}

/// The OIDC nonce that binds an ID token to a DTLS certificate in a room:
/// `base64url(SHA-256(canonical fp + "|" + room salt))`, with no `|` when the salt is empty.
/// The room salt is the normalised room id.
pub fn identity_nonce(fingerprint: &str, room_salt: &str) -> String {
    let mut input = canonical_fingerprint(fingerprint);
    if !room_salt.is_empty() {
        input.push('|');
        input.push_str(room_salt);
    }
    URL_SAFE_NO_PAD.encode(Sha256::digest(input.as_bytes()))
}

fn base36_digit(d: u32) -> char {
    char::from_digit(d, 36).unwrap_or('0')
}

fn base36(mut n: u32) -> String {
    let mut digits = Vec::new();
    loop {
        digits.push(base36_digit(n % 36));
        n /= 36;
        if n == 0 {
            break;
        }
    }
    digits.iter().rev().collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A "CSPRNG" that replays fixed bytes, then zeros: deterministic tests only.
    #[derive(Debug)]
    pub(crate) struct Replay(pub Vec<u8>, pub usize);

    impl rand_core::RngCore for Replay {
        fn next_u32(&mut self) -> u32 {
            rand_core::impls::next_u32_via_fill(self)
        }
        fn next_u64(&mut self) -> u64 {
            rand_core::impls::next_u64_via_fill(self)
        }
        fn fill_bytes(&mut self, dest: &mut [u8]) {
            for d in dest {
                *d = self.0.get(self.1).copied().unwrap_or(0);
                self.1 += 1;
            }
        }
        fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
            self.fill_bytes(dest);
            Ok(())
        }
    }
    impl rand_core::CryptoRng for Replay {}

    #[test]
    fn frozen_vectors() {
        assert_eq!(peer_id_for("standup"), "kbz-v1-standup");
        assert_eq!(peer_id_for("My Room"), "kbz-v1-my-room");
        assert_eq!(peer_id_for("  Hello, World!  "), "kbz-v1-hello-world");
        assert_eq!(peer_id_for("room-3f9k2mq7p1"), "kbz-v1-room-3f9k2mq7p1");
        assert_eq!(normalize_room("café ☕ chat"), "caf-chat");
        assert_eq!(peer_id_for("café ☕ chat"), "kbz-v1-caf-chat");
        assert_eq!(normalize_room(&"x".repeat(50)), "x".repeat(40));
    }

    #[test]
    fn normalisation_edges() {
        assert_eq!(normalize_room(""), "");
        assert_eq!(normalize_room("---"), "");
        assert_eq!(normalize_room("a__b--c"), "a-b-c");
        // The cut comes after the trim, so a trailing '-' can survive it.
        let s = format!("{}-b", "a".repeat(39));
        assert_eq!(normalize_room(&s), format!("{}-", "a".repeat(39)));
        // Kelvin sign lowercases to ASCII 'k'; dotted capital I to "i" + a combining dot.
        assert_eq!(normalize_room("\u{212A}ilo"), "kilo");
        assert_eq!(normalize_room("\u{130}x"), "i-x");
        assert!(is_reserved("new"));
        assert!(is_reserved(&normalize_room("  Help ")));
        assert!(!is_reserved("standup"));
    }

    #[test]
    fn codes_reject_biased_bytes() {
        assert_eq!(
            code_from_bytes(&[0, 9, 10, 35, 36, 251], 6).as_deref(),
            Some("09az0z")
        );
        assert_eq!(
            code_from_bytes(&[252, 255, 1, 253, 2, 3, 4, 5, 6, 7, 8, 9, 10], 10).as_deref(),
            Some("123456789a")
        );
        assert_eq!(code_from_bytes(&[252, 1], 2), None);
        let mut rng = Replay(vec![255, 252, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], 0);
        assert_eq!(random_code(10, &mut rng), "123456789a");
    }

    #[test]
    fn fresh_rooms() {
        let mut bytes = vec![254, 13];
        bytes.extend(0..10);
        let room = fresh_room(&mut Replay(bytes, 0));
        assert_eq!(room, "dusk-0123456789");
        assert_eq!(normalize_room(&room), room);
        assert_eq!(
            room_from_input(" Team Sync ", &mut Replay(vec![], 0)),
            "team-sync"
        );
        assert_eq!(
            room_from_input("!!!", &mut Replay(vec![0; 16], 0)),
            "amber-0000000000"
        );
    }

    #[test]
    fn page_rooms() {
        // Vectors computed with the same algorithm in Node (Math.imul, toString(36)).
        assert_eq!(
            room_for_url("https://www.example.com/Some/Path/?q=1#x").as_deref(),
            Some("example-com-195t5pr")
        );
        assert_eq!(
            room_for_url("https://example.com/some/path").as_deref(),
            Some("example-com-195t5pr")
        );
        assert_eq!(
            room_for_url("https://news.ycombinator.com/").as_deref(),
            Some("news-ycombinator-com-125r1pq")
        );
        assert_eq!(room_for_url("not a url"), None);
        assert_eq!(
            room_for_url("https://a-very-long-subdomain.of-a-very-long-domain.example.org/p")
                .as_deref(),
            Some("a-very-long-subdomain-of-a-very-nngn7o")
        );
        assert_eq!(
            room_for_url("https://例え.jp/Ä/").as_deref(),
            Some("xn-r8jz45g-jp-hj1rf8")
        );
    }

    #[test]
    fn identity_nonce_golden_vector() {
        let fp = "AB:CD:EF:01:23:45:67:89:".repeat(4);
        let fp = fp.trim_end_matches(':');
        assert_eq!(
            identity_nonce(fp, "room-salt"),
            "jr1LLr5BsB5Y2nbZiWzrzU2SCJjNQu4GuhlOyN361zo"
        );
        assert_eq!(
            identity_nonce(fp, "room-salt"),
            identity_nonce(&fp.to_lowercase(), "room-salt")
        );
        assert_ne!(identity_nonce(fp, ""), identity_nonce(fp, "room-salt"));
    }
}
