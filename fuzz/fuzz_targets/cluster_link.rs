//! libFuzzer target (`fuzz/run cluster_link SECONDS`): see `src/harness/cluster_link.rs`; the
//! stable runner (`mutate_boundary cluster_link`) runs the same check.
#![no_main]

#[path = "../src/harness/cluster_link.rs"]
#[allow(dead_code)]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::check(data));
