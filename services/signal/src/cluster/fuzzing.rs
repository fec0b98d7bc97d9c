//! Fuzzing entry points (cargo feature `fuzzing`, used by `fuzz/`): the registry-answer
//! parsers on whatever Redis sends. Not an API.

use super::wire::{self, Seen};
use redis::Value;

/// Runs every reply parser on `v`: none may panic, and what they keep is bounded by `v`.
pub fn redis_reply(v: Value) {
    let mut seen = Seen::default();
    let _ = wire::text_tag(&v);
    let _ = wire::int(&v);
    let _ = wire::text(v.clone());
    let (_claim, _from) = wire::parse_claim(v.clone(), &mut seen);
    let (_last, entries) = wire::inbox_entries(v.clone());
    let _ = entries.len();
    let _ = wire::queued(wire::items(v).into_iter(), &mut seen);
}
