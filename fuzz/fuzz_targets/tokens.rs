//! libFuzzer target (`cargo fuzz run tokens`): every token parser on arbitrary text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

#[path = "../src/token_mutator.rs"]
#[allow(dead_code)]
mod token_mutator;

static FIXTURE: OnceLock<token_mutator::Fixture> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let fx = FIXTURE.get_or_init(token_mutator::Fixture::new);
    fx.check(&String::from_utf8_lossy(data));
});
