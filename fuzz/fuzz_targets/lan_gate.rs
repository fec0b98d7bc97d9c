//! libFuzzer target (`fuzz/run lan_gate SECONDS`): see `src/harness/lan_gate.rs`; the stable runner
//! (`mutate_boundary lan_gate`) runs the same check.
#![no_main]

#[path = "../src/harness/stun_util.rs"]
#[allow(dead_code)]
mod stun_util;

#[path = "../src/harness/lan_gate.rs"]
#[allow(dead_code)]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::check(data));
