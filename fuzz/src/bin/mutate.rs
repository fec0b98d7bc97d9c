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
    let mut args = std::env::args().skip(1);
    let iterations = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000u64);
    let seed = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(0x5eed_u64);
    std::panic::set_hook(Box::new(|_| {}));
    let stats = mutator::run(seed, iterations);
    println!(
        "execs {} decoded {} rejected {} crashes {} slowest {:?} largest input {} B",
        stats.execs,
        stats.decoded,
        stats.rejected,
        stats.crashes.len(),
        stats.slowest,
        stats.largest_input
    );
    if stats.crashes.is_empty() {
        return ExitCode::SUCCESS;
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("artifacts/mutate");
    let _ = std::fs::create_dir_all(&dir);
    for (i, c) in stats.crashes.iter().enumerate().take(20) {
        let _ = std::fs::write(dir.join(format!("crash-{i}.bin")), c);
    }
    ExitCode::FAILURE
}
