//! The LAN hub's UDP gate (`services/lan-hub/src/gate.rs`): who may cost the hub state. Raw
//! datagrams through `is_stun`/`admit_binding` (str0m's STUN parser underneath), Binding
//! Requests signed with the hub's pwd (which must be admitted exactly when the browser's ufrag
//! is acceptable), and the per-source deadlines and quarantine driven by the input.

use std::time::{Duration, Instant};

use super::stun_util::{self, USERNAME};

const PRIORITY: u16 = 0x0024;
use kibitz_lan_hub::gate::{Lifetimes, Quarantine, admit_binding, is_stun};

/// Words libFuzzer and the stable runner splice in.
pub const DICT: &[&[u8]] = &[
    b"\x21\x12\xa4\x42",
    b"\x00\x01",
    b"\x00\x06",
    b"\x00\x08\x00\x14",
    b"\x80\x28\x00\x04",
    b"\x00\x24\x00\x04",
    b"\x80\x29\x00\x08",
    b"\x80\x2a\x00\x08",
    b"\x00\x25\x00\x00",
    b"hubufrag1:",
    b"+/",
];

const UFRAG: &str = "hubufrag1";
const PWD: &str = "hubpwd0123456789abcdefgh";

fn ice_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'+' || b == b'/'
}

/// Runs one input; panics on a broken invariant.
pub fn check(data: &[u8]) {
    let _ = run(data);
}

/// [`check`], telling whether the signed Binding Request was admitted.
pub fn run(data: &[u8]) -> bool {
    let mut admitted = false;
    let _ = is_stun(data);
    if let Some(remote) = admit_binding(data, UFRAG, PWD) {
        assert!(!remote.is_empty() && remote.len() <= 256 && remote.bytes().all(ice_char));
    }
    // A signed Binding Request: [flags, remote_len, remote…, txid(12), attributes…].
    if let [flags, rlen, rest @ ..] = data {
        let (remote, rest) = rest.split_at(usize::from(*rlen).min(rest.len()));
        let mut txid = [0u8; 12];
        for (d, s) in txid.iter_mut().zip(rest) {
            *d = *s;
        }
        let extra = stun_util::tlvs(rest.get(12..).unwrap_or(&[]));
        let mut username = format!("{UFRAG}:").into_bytes();
        username.extend_from_slice(remote);
        let mut attrs = Vec::new();
        if flags & 4 != 0 {
            attrs.extend(extra.iter().copied());
        }
        // str0m wants PRIORITY in every Binding Request (browsers always send it).
        attrs.push((PRIORITY, &[0x6e, 0x7f, 0x1e, 0xff][..]));
        attrs.push((USERNAME, &username[..]));
        let pwd: &[u8] = if flags & 8 != 0 {
            b"wrong"
        } else {
            PWD.as_bytes()
        };
        let msg = stun_util::build(0x0001, &txid, &attrs, Some(pwd), flags & 2 != 0);
        let got = admit_binding(&msg, UFRAG, PWD);
        admitted = got.is_some();
        if let Some(r) = &got
            && flags & 4 == 0
        {
            assert_eq!(r.as_bytes(), remote, "admitted under another ufrag");
            assert!(flags & 8 == 0, "admitted with the wrong pwd");
        }
        let acceptable =
            !remote.is_empty() && remote.len() <= 256 && remote.iter().all(|b| ice_char(*b));
        if flags & 0x0c == 0 && acceptable {
            assert!(got.is_some(), "a valid Binding Request was refused");
        }
        // With extra attributes in front, a USERNAME and MESSAGE-INTEGRITY among them win
        // (what follows MESSAGE-INTEGRITY is ignored, RFC 8489 §14.5).
        if !acceptable && flags & 4 == 0 {
            assert!(got.is_none(), "an unacceptable ufrag was admitted");
        }
    }
    deadlines(data);
    admitted
}

/// Per-source deadlines and the quarantine under an input-driven schedule.
fn deadlines(data: &[u8]) {
    #[allow(clippy::disallowed_methods)] // a virtual clock's origin
    let t0 = Instant::now();
    let mut now = t0;
    let mut life: Lifetimes<u8> = Lifetimes::new(Duration::from_secs(10), Duration::from_secs(30));
    let mut q = Quarantine::new(Duration::from_secs(60), 4);
    for c in data.chunks(3).take(1024) {
        let (op, src, step) = (
            c[0] % 7,
            c.get(1).copied().unwrap_or(0) % 16,
            c.get(2).copied(),
        );
        now += Duration::from_millis(u64::from(step.unwrap_or(0)) * 100);
        match op {
            0 => life.admit(now, src),
            1 => life.stun(now, src),
            2 => life.opened(src),
            3 => life.remove(src),
            4 => {
                let gone = life.expire(now);
                let mut keys: Vec<u8> = gone.iter().map(|g| g.0).collect();
                keys.sort_unstable();
                keys.dedup();
                assert_eq!(keys.len(), gone.len(), "a source expired twice");
                if let Some(d) = life.next_deadline() {
                    assert!(d > now, "a deadline already passed survived expire");
                }
            }
            5 => q.insert(now, format!("u{src}")),
            _ => {
                let _ = q.refuses(now, &format!("u{src}"));
            }
        }
        assert!(life.len() <= 16 && q.len() <= 4, "state over its bound");
    }
}
