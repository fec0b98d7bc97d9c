//! Long mutation-fuzzing runs of every token parser on stable Rust.
//!
//!   cargo run --release --manifest-path fuzz/Cargo.toml --bin mutate_tokens -- [iterations] [seed]
//!
//! Prints executions and crashes; crashing inputs go to `fuzz/artifacts/tokens/`. Exits 1 if
//! anything crashed.

use std::process::ExitCode;

#[allow(dead_code)]
#[path = "../stable.rs"]
mod stable;
#[path = "../token_mutator.rs"]
mod token_mutator;

fn main() -> ExitCode {
    let (iterations, seed) = stable::iterations_and_seed(std::env::args().skip(1), 0x70c3);
    std::panic::set_hook(Box::new(|_| {}));
    let started = std::time::Instant::now();
    let stats = token_mutator::run(seed, iterations);
    println!(
        "execs {} crashes {} in {:.1?}",
        stats.execs,
        stats.crashes.len(),
        started.elapsed()
    );
    stable::save_crashes("tokens", "crash-", ".txt", &stats.crashes)
}
