//! libFuzzer target (`fuzz/run peerjs_frame SECONDS`): see `src/harness/peerjs_frame.rs`; the stable runner
//! (`mutate_boundary peerjs_frame`) runs the same check.
#![no_main]

#[path = "../src/harness/peerjs_frame.rs"]
#[allow(dead_code)]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::check(data));
