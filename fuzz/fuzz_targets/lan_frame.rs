//! libFuzzer target (`fuzz/run lan_frame SECONDS`): see `src/harness/lan_frame.rs`; the stable runner
//! (`mutate_boundary lan_frame`) runs the same check.
#![no_main]

#[path = "../src/harness/lan_frame.rs"]
#[allow(dead_code)]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::check(data));
