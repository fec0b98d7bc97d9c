//! Long mutation-fuzzing runs of the BinaryPack decoder on stable Rust.
//!
//!   cargo run --release --manifest-path fuzz/Cargo.toml --bin mutate -- [iterations] [seed]
//!
//! Prints executions, decoded/rejected counts, the slowest input and crashes; crashing inputs
//! are written to `fuzz/artifacts/mutate/crash-<n>.bin`. Exits 1 if anything crashed.

use std::process::ExitCode;

#[path = "../mutator.rs"]
mod mutator;

fn main() -> ExitCode {
    let (iterations, seed) = mutator::stable::iterations_and_seed(std::env::args().skip(1), 0x5eed);
    std::panic::set_hook(Box::new(|_| {}));
    let stats = mutator::run(seed, iterations);
    println!("{}", stats.line("decoded"));
    mutator::stable::save_crashes("mutate", "crash-", ".bin", &stats.crashes)
}
