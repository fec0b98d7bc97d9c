//! A short run of the broker WebSocket fuzzer (`fuzz/src/ws_mutator.rs`): mutated frames and
//! random bytes never panic the decoder, one read and split reads agree, held bytes stay
//! bounded and messages round-trip; mutated upgrade requests never panic the handshake
//! parsing. Long runs: `cargo run --release --manifest-path fuzz/Cargo.toml --bin mutate_ws
//! -- decode|handshake 10000000`, or `fuzz/run ws_decode|ws_handshake SECONDS` (libFuzzer).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../fuzz/src/ws_mutator.rs"]
#[allow(dead_code)]
mod ws_mutator;

#[test]
fn mutated_frames_never_panic_the_decoder() {
    let stats = ws_mutator::run(false, 0x6b69_6269_747a, 20_000);
    eprintln!("{stats:?}");
    assert!(
        stats.crashes.is_empty(),
        "crashing input: {:02x?}",
        &stats.crashes[0][..stats.crashes[0].len().min(256)]
    );
    assert_eq!(stats.execs, 20_000);
    // Both paths are exercised.
    assert!(stats.ok > 1_000 && stats.rejected > 1_000, "{stats:?}");
}

#[test]
fn mutated_upgrade_requests_never_panic() {
    let stats = ws_mutator::run(true, 0x6b69_6269_747a, 20_000);
    eprintln!("{stats:?}");
    assert!(
        stats.crashes.is_empty(),
        "crashing input: {:?}",
        String::from_utf8_lossy(&stats.crashes[0])
    );
    assert!(stats.ok > 100 && stats.rejected > 1_000, "{stats:?}");
}
