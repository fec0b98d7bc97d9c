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
#[path = "../stable.rs"]
mod stable;

use harness::{TARGETS, Target};

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let which = args.next().unwrap_or_else(|| "all".into());
    let iterations = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000u64);
    let seed = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(0x5eed_u64);
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
        if stats.crashes.is_empty() {
            continue;
        }
        failed = true;
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("artifacts")
            .join(name);
        let _ = std::fs::create_dir_all(&dir);
        for (i, c) in stats.crashes.iter().enumerate().take(20) {
            let _ = std::fs::write(dir.join(format!("stable-crash-{i}")), c);
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
