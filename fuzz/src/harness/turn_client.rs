//! The kibitz-rtc TURN client (relay-only connections) fed arbitrary datagrams from its
//! server, interleaved with permits, sends and timeouts; the records and invariants live in
//! `crates/kibitz-rtc/src/turn/fuzz.rs` (feature `fuzzing`), next to the private parser.

use std::time::Instant;

/// Words libFuzzer and the stable runner splice in.
pub const DICT: &[&[u8]] = &[
    b"\x21\x12\xa4\x42",
    b"\x01\x03",
    b"\x01\x13",
    b"\x01\x09",
    b"\x01\x19",
    b"\x00\x17",
    b"\x00\x16\x00\x08",
    b"\x00\x09\x00\x04\x00\x00\x04\x01",
    b"\x00\x14",
    b"\x00\x15",
    b"\x00\x0d\x00\x04",
    b"\x00\x12\x00\x08",
    b"\x00\x13",
    b"\x40\x00",
];

/// Runs one input; panics on a broken invariant.
pub fn check(data: &[u8]) {
    let _ = run(data);
}

/// [`check`], telling how far the input got: (allocations, datagrams relayed to the client).
pub fn run(data: &[u8]) -> (usize, usize) {
    #[allow(clippy::disallowed_methods)] // a virtual clock's origin
    let t0 = Instant::now();
    kibitz_rtc::fuzzing::turn_client(t0, data)
}
