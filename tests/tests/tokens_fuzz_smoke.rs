//! A short run of the token-parser mutation fuzzer (`fuzz/src/token_mutator.rs`): mutated
//! valid tokens and random text never panic any parser. Long runs:
//! `cargo run --release --manifest-path fuzz/Cargo.toml --bin mutate_tokens -- 1000000`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../fuzz/src/token_mutator.rs"]
#[allow(dead_code)]
mod token_mutator;

#[test]
fn mutated_tokens_never_panic() {
    let stats = token_mutator::run(0x6b69_6269_747a, 300);
    assert_eq!(stats.execs, 300);
    assert!(
        stats.crashes.is_empty(),
        "crashing input: {:?}",
        stats.crashes[0]
    );
}
