//! libFuzzer target (`cargo fuzz run binarypack_decode`): the same invariants as the stable
//! mutation harness.
#![no_main]

use std::time::{Duration, Instant};

use kibitz_proto::binarypack::chunk::Reassembler;
use libfuzzer_sys::fuzz_target;

#[path = "../src/mutator.rs"]
#[allow(dead_code)]
mod mutator;

fuzz_target!(|data: &[u8]| {
    let mut r = Reassembler::new(mutator::LIMITS, 1 << 20, Duration::from_secs(30));
    #[allow(clippy::disallowed_methods)]
    let now = Instant::now();
    mutator::check(data, &mut r, now);
});
