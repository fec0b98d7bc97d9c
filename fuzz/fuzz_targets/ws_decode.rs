//! libFuzzer target (`cargo fuzz run ws_decode`): the broker's WebSocket frame decoder on
//! arbitrary bytes in arbitrary read splits, and decode(encode(messages)) round trips.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../src/ws_mutator.rs"]
#[allow(dead_code)]
mod ws_mutator;

fuzz_target!(|data: &[u8]| {
    ws_mutator::check(data);
});
