//! Long mutation-fuzzing runs of the broker's WebSocket decoder, or (`handshake`) of its
//! upgrade-request parsing, on stable Rust:
//!
//!   cargo run --release --manifest-path fuzz/Cargo.toml --bin mutate_ws -- [decode|handshake] [iterations] [seed]
//!
//! Prints executions, accepted/rejected counts, the slowest input and crashes; crashing
//! inputs are written to `fuzz/artifacts/mutate_ws/crash-<n>.bin`. Exits 1 if anything crashed.

use std::process::ExitCode;

#[path = "../ws_mutator.rs"]
mod ws_mutator;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let handshake = match args.next().as_deref() {
        Some("handshake") => true,
        Some("decode") | None => false,
        Some(other) => {
            eprintln!("mutate_ws: unknown target {other:?} (decode or handshake)");
            return ExitCode::from(2);
        }
    };
    let iterations = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000u64);
    let seed = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(0x5eed_u64);
    std::panic::set_hook(Box::new(|_| {}));
    let stats = ws_mutator::run(handshake, seed, iterations);
    println!(
        "execs {} accepted {} rejected {} crashes {} slowest {:?} largest input {} B",
        stats.execs,
        stats.ok,
        stats.rejected,
        stats.crashes.len(),
        stats.slowest,
        stats.largest_input
    );
    if stats.crashes.is_empty() {
        return ExitCode::SUCCESS;
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("artifacts/mutate_ws");
    let _ = std::fs::create_dir_all(&dir);
    for (i, c) in stats.crashes.iter().enumerate().take(20) {
        let _ = std::fs::write(dir.join(format!("crash-{i}.bin")), c);
    }
    ExitCode::FAILURE
}
