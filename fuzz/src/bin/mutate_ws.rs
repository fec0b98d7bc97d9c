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
    let (iterations, seed) = ws_mutator::stable::iterations_and_seed(args, 0x5eed);
    std::panic::set_hook(Box::new(|_| {}));
    let stats = ws_mutator::run(handshake, seed, iterations);
    println!("{}", stats.line("accepted"));
    ws_mutator::stable::save_crashes("mutate_ws", "crash-", ".bin", &stats.crashes)
}
