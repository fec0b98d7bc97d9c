//! libFuzzer target (`fuzz/run turn_client SECONDS`): see `src/harness/turn_client.rs`; the stable runner
//! (`mutate_boundary turn_client`) runs the same check.
#![no_main]

#[path = "../src/harness/turn_client.rs"]
#[allow(dead_code)]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::check(data));
