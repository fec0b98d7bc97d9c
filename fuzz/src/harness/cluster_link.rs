//! Node-link frames (`services/signal/src/cluster/link.rs`): the bytes another node sends
//! after the handshake, split into frames in one read and in two, round-tripped, then put
//! through the receiving side's direct-copy checks.

/// Words libFuzzer and the stable runner splice in.
pub const DICT: &[&[u8]] = &[
    b"\x00\x00\x00\x2a",
    b"\x00\x00\x00\x00",
    b"\x00\x00\x00\x01",
    b"\x00\x00\x00\x00\x00\x00\x00\x01",
    b"\x01",
    b"\x02",
    b"\x03",
    b"\x04",
    b"\x05",
    b"\x00\x01",
    b"\x00\x05",
    b"alice",
    b"bob",
    b"{\"type\":\"OFFER\"}",
    b"\xff\xff\xff\xff",
];

/// Runs one input; panics on a broken invariant.
pub fn check(data: &[u8]) {
    run(data);
}

/// [`check`], returning how many direct copies passed the receiver's checks.
pub fn run(data: &[u8]) -> usize {
    kibitz_signal::fuzzing::cluster_link(data)
}
