//! libFuzzer target (`fuzz/run redis_reply SECONDS`): see `src/harness/redis_reply.rs`; the stable runner
//! (`mutate_boundary redis_reply`) runs the same check.
#![no_main]

#[path = "../src/harness/redis_reply.rs"]
#[allow(dead_code)]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::check(data));
