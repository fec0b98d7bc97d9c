//! Scenario tests: the room protocol step by step, with exact expected outcomes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;

use kibitz_client::Status;

#[test]
fn first_claims_others_join_and_rosters_converge() {
    let mut sim = sim(1);
    let a = join(&mut sim, cfg("Stand Up", "Alice"));
    sim.run_for(1_000);
    assert_eq!(sim.engine(a).status(), &Status::Authority);
    let b = join(&mut sim, cfg("stand-up", "Bob"));
    let c = join(&mut sim, cfg("STAND UP", "Carol"));
    sim.run_for(3_000);
    for n in [a, b, c] {
        assert_eq!(names(&sim, n), ["Alice", "Bob", "Carol"], "node {n}");
    }
    assert_eq!(authorities(&sim, &[a, b, c]), [a]);
    assert_eq!(sim.engine(b).status(), &Status::Connected);
    assert_eq!(sim.holder("kbz-v1-stand-up"), Some(a));
}
