//! libFuzzer target (`cargo fuzz run ws_handshake`): an HTTP request head as hyper parses
//! it, then everything the broker reads from it before the WebSocket upgrade.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../src/ws_mutator.rs"]
#[allow(dead_code)]
mod ws_mutator;

fuzz_target!(|data: &[u8]| {
    ws_mutator::check_handshake(data);
});
