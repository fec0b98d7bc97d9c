//! Short stable mutation runs of every trust-boundary fuzz harness (`fuzz/src/harness/`: PeerJS
//! frames through the broker core, Redis replies, cluster node-link frames, the TURN client
//! and server, the LAN hub's frames and STUN gate), seeded from `fuzz/corpus/`, and a check that every libFuzzer target in
//! `fuzz/fuzz_targets/` gets such a run in CI. Long runs: `fuzz/run TARGET SECONDS`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

#[path = "../../fuzz/src/stable.rs"]
#[allow(dead_code)]
mod stable;

#[path = "../../fuzz/src/harness/mod.rs"]
#[allow(dead_code)]
mod harness;

fn fuzz_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

#[test]
#[allow(clippy::disallowed_methods)] // wall-clock time per target is what is printed
fn mutated_inputs_never_break_a_boundary() {
    std::panic::set_hook(Box::new(|_| {}));
    let mut failed = Vec::new();
    for (name, check, dict) in harness::TARGETS {
        let started = std::time::Instant::now();
        let stats = stable::run(
            &fuzz_dir().join("corpus"),
            name,
            *check,
            dict,
            0x6b69_747a,
            5_000,
        );
        eprintln!(
            "{name}: execs {} crashes {} slowest {:?} in {:.1?}",
            stats.execs,
            stats.crashes.len(),
            stats.slowest,
            started.elapsed()
        );
        assert!(stats.execs >= 5_000);
        if let Some(c) = stats.crashes.first() {
            failed.push(format!("{name}: {c:02x?}"));
        }
    }
    let _ = std::panic::take_hook();
    assert!(failed.is_empty(), "crashing inputs:\n{}", failed.join("\n"));
}

/// Every libFuzzer target runs in CI: here, or in another `*fuzz_smoke*` test that names it.
#[test]
fn every_fuzz_target_has_a_smoke_run() {
    let smokes: String = std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("fuzz_smoke"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .collect();
    let mut missing = Vec::new();
    for e in std::fs::read_dir(fuzz_dir().join("fuzz_targets"))
        .unwrap()
        .flatten()
    {
        let file = e.file_name().to_string_lossy().into_owned();
        let Some(name) = file.strip_suffix(".rs") else {
            continue;
        };
        let here = harness::TARGETS.iter().any(|t| t.0 == name);
        if !here && !smokes.contains(name) {
            missing.push(name.to_owned());
        }
    }
    assert!(
        missing.is_empty(),
        "fuzz targets without a CI smoke run (add them to fuzz/src/harness/mod.rs or a \
         tests/tests/*fuzz_smoke*.rs test): {missing:?}"
    );
}

fn seed(target: &str, name: &str) -> Vec<u8> {
    std::fs::read(fuzz_dir().join("corpus").join(target).join(name)).unwrap()
}

/// The seeds get past the authentication that guards the interesting code, so mutations of
/// them exercise it: an allocation relays both ways, a TURN client allocates and receives,
/// and a Binding Request signed with the hub's pwd is admitted.
#[test]
fn seeds_reach_past_authentication() {
    let r = harness::turn_server::run(&seed("turn_server", "allocate-relay"));
    assert!(r.relays >= 1 && r.relayed >= 2, "{r:?}");
    let (allocated, data) = harness::turn_client::run(&seed("turn_client", "allocate-flow"));
    assert!(allocated == 1 && data >= 2, "{allocated} {data}");
    // A chain of direct copies (each naming the one before) passes the receiver's checks.
    assert!(harness::cluster_link::run(&seed("cluster_link", "chain")) > 0);
    assert!(harness::lan_gate::run(&seed("lan_gate", "build-plain")));
    assert!(harness::lan_gate::run(&seed("lan_gate", "build-extra")));
    assert!(!harness::lan_gate::run(&seed("lan_gate", "build-bad")));
}
