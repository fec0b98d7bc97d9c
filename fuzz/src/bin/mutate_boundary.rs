//! Stable-Rust mutation runs of the trust-boundary harnesses in `src/harness/` (the same
//! checks the libFuzzer targets of the same names run), seeded from `fuzz/corpus/<target>/`.
//!
//!   cargo run --release --manifest-path fuzz/Cargo.toml --bin mutate_boundary -- TARGET|all [iterations] [seed]
//!
//! Prints executions, crashes and the slowest input per target; crashing inputs go to
//! `fuzz/artifacts/<target>/stable-crash-<n>`. Exits 1 if anything crashed.

use std::process::ExitCode;

#[path = "../harness/mod.rs"]
mod harness;
#[allow(dead_code)] // the runner for every harness; this one uses part of it
#[path = "../stable.rs"]
mod stable;

use harness::{TARGETS, Target};

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let which = args.next().unwrap_or_else(|| "all".into());
    let (iterations, seed) = stable::iterations_and_seed(args, 0x5eed);
    let chosen: Vec<&Target> = TARGETS
        .iter()
        .filter(|t| which == "all" || t.0 == which)
        .collect();
    if chosen.is_empty() {
        let names: Vec<&str> = TARGETS.iter().map(|t| t.0).collect();
        eprintln!("unknown target {which:?}; one of: all {}", names.join(" "));
        return ExitCode::from(2);
    }
    std::panic::set_hook(Box::new(|_| {}));
    let mut failed = false;
    for (name, check, dict) in chosen {
        let started = std::time::Instant::now();
        let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
        let stats = stable::run(&corpus, name, *check, dict, seed, iterations);
        println!(
            "{name}: execs {} crashes {} slowest {:?} largest input {} B in {:.1?}",
            stats.execs,
            stats.crashes.len(),
            stats.slowest,
            stats.largest_input,
            started.elapsed()
        );
        failed |= !stats.crashes.is_empty();
        let _ = stable::save_crashes(name, "stable-crash-", "", &stats.crashes);
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
