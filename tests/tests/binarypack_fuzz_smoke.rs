//! A short run of the BinaryPack mutation fuzzer (`fuzz/src/mutator.rs`, libFuzzer target
//! `binarypack_decode`): mutated valid encodings and random bytes never panic the decoder or
//! the reassembler. Long runs:
//! `cargo run --release --manifest-path fuzz/Cargo.toml --bin mutate -- 1000000`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../fuzz/src/mutator.rs"]
#[allow(dead_code)]
mod mutator;

#[test]
fn mutated_inputs_never_panic() {
    let stats = mutator::run(0x6b69_6269_747a, 50_000);
    eprintln!(
        "execs {} decoded {} rejected {} slowest {:?}",
        stats.execs, stats.ok, stats.rejected, stats.slowest
    );
    assert!(
        stats.crashes.is_empty(),
        "crashing inputs: {:02x?}",
        &stats.crashes[..1]
    );
    assert_eq!(stats.execs, 50_000);
    // Both paths are exercised.
    assert!(stats.ok > 1_000 && stats.rejected > 1_000, "{stats:?}");
}
