//! Long mutation-fuzzing runs of every token parser on stable Rust.
//!
//!   cargo run --release --manifest-path fuzz/Cargo.toml --bin mutate_tokens -- [iterations] [seed]
//!
//! Prints executions and crashes; crashing inputs go to `fuzz/artifacts/tokens/`. Exits 1 if
//! anything crashed.

use std::process::ExitCode;

#[path = "../token_mutator.rs"]
mod token_mutator;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let iterations = args.next().and_then(|a| a.parse().ok()).unwrap_or(1_000_000u64);
    let seed = args.next().and_then(|a| a.parse().ok()).unwrap_or(0x70c3_u64);
    std::panic::set_hook(Box::new(|_| {}));
    let started = std::time::Instant::now();
    let stats = token_mutator::run(seed, iterations);
    println!(
        "execs {} crashes {} in {:.1?}",
        stats.execs,
        stats.crashes.len(),
        started.elapsed()
    );
    if stats.crashes.is_empty() {
        return ExitCode::SUCCESS;
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("artifacts/tokens");
    let _ = std::fs::create_dir_all(&dir);
    for (i, c) in stats.crashes.iter().enumerate().take(20) {
        let _ = std::fs::write(dir.join(format!("crash-{i}.txt")), c);
    }
    ExitCode::FAILURE
}
