//! The operator guide lists every broker metric and every `rejected_total` reason the code
//! can emit.

use kibitz_signal::metrics::REJECT_REASONS;

const GUIDE: &str = include_str!("../../../docs/operator.md");
const METRICS: &str = include_str!("../src/metrics.rs");

#[test]
fn every_reject_reason_is_in_the_operator_guide() {
    for reason in REJECT_REASONS {
        assert!(
            GUIDE.contains(&format!("| `{reason}`")) || GUIDE.contains(&format!(", `{reason}`")),
            "docs/operator.md has no row for reason {reason}"
        );
    }
}

#[test]
fn every_broker_metric_is_in_the_operator_guide() {
    let names: Vec<&str> = METRICS
        .split('"')
        .filter(|s| {
            s.starts_with("kibitz_") && s.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        })
        .collect();
    assert!(names.len() > 10, "found only {names:?}");
    for name in names {
        assert!(
            GUIDE.contains(&format!("`{name}`")),
            "docs/operator.md does not list {name}"
        );
    }
}
