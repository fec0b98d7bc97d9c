//! libFuzzer target (`fuzz/run turn_server SECONDS`): see `src/harness/turn_server.rs`; the stable runner
//! (`mutate_boundary turn_server`) runs the same check.
#![no_main]

#[path = "../src/harness/stun_util.rs"]
#[allow(dead_code)]
mod stun_util;

#[path = "../src/harness/turn_server.rs"]
#[allow(dead_code)]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::check(data));
