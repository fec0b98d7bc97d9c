//! The broker's Redis replies: bytes through the redis crate's RESP parser (the one its
//! connections use), then every cluster reply parser (`services/signal/src/cluster/wire.rs`)
//! on the value.

/// Words libFuzzer and the stable runner splice in.
pub const DICT: &[&[u8]] = &[
    b"*",
    b"$",
    b"+",
    b"-",
    b":",
    b"%",
    b"~",
    b">",
    b"_",
    b",",
    b"#",
    b"=",
    b"(",
    b"!",
    b"|",
    b"\r\n",
    b"new",
    b"reattach",
    b"taken",
    b"limit",
    b"settle",
    b"stale",
    b"t",
    b"m",
    b"b",
    b"v",
    b"a",
    b"k",
    b"s",
    b"d",
    b"i",
    b"n",
    b"OFFER",
    b"-1",
    b"*2147483647\r\n",
];

/// Runs one input; panics on a broken invariant.
pub fn check(data: &[u8]) {
    if let Ok(v) = redis::parse_redis_value(data) {
        kibitz_signal::fuzzing::redis_reply(v);
    }
}
