//! Reads samples back out of the Prometheus text exposition the process already renders.

/// A sample's labels, `(name, value)` in exposition order.
type Labels = Vec<(String, String)>;

/// `(name, labels, value)` for every sample line.
#[derive(Debug, Default)]
pub(crate) struct Samples(Vec<(String, Labels, f64)>);

impl Samples {
    /// Parses exposition text; comments and malformed lines are skipped.
    pub(crate) fn parse(text: &str) -> Self {
        Self(text.lines().filter_map(sample).collect())
    }

    /// The sum of `name`'s samples carrying every label in `with`, as a whole count.
    pub(crate) fn sum(&self, name: &str, with: &[(&str, &str)]) -> u64 {
        self.total(name, |labels| {
            with.iter()
                .all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v))
        })
    }

    /// The sum of `name`'s samples except those with label `not.0` equal to `not.1`.
    pub(crate) fn sum_except(&self, name: &str, not: (&str, &str)) -> u64 {
        self.total(name, |labels| {
            !labels.iter().any(|(k, v)| k == not.0 && v == not.1)
        })
    }

    /// The values of label `label` on `name`'s samples that are zero (e.g. the shards of a
    /// `..._shard_up{shard}` gauge that are down), in exposition order.
    pub(crate) fn zero_labels(&self, name: &str, label: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(n, _, v)| n == name && *v == 0.0)
            .filter_map(|(_, labels, _)| {
                labels
                    .iter()
                    .find(|(k, _)| k == label)
                    .map(|(_, v)| v.clone())
            })
            .collect()
    }

    fn total(&self, name: &str, keep: impl Fn(&[(String, String)]) -> bool) -> u64 {
        let sum: f64 = self
            .0
            .iter()
            .filter(|(n, labels, _)| n == name && keep(labels))
            .map(|(_, _, v)| *v)
            .filter(|v| v.is_finite() && *v > 0.0)
            .sum();
        // Counters and gauges of whole things; saturating float-to-int conversion.
        sum.round() as u64
    }
}

fn sample(line: &str) -> Option<(String, Labels, f64)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (head, value) = match line.find('{') {
        Some(open) => {
            let close = line.rfind('}')?;
            let labels = labels(line.get(open + 1..close)?)?;
            let value = line.get(close + 1..)?.split_whitespace().next()?;
            ((line.get(..open)?, labels), value)
        }
        None => {
            let mut it = line.split_whitespace();
            ((it.next()?, Vec::new()), it.next()?)
        }
    };
    Some((head.0.to_owned(), head.1, value.parse().ok()?))
}

/// `a="x",b="y"`; label values used here never contain quotes or commas.
fn labels(inner: &str) -> Option<Labels> {
    inner
        .split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=')?;
            let v = v.trim().strip_prefix('"')?.strip_suffix('"')?;
            Some((k.trim().to_owned(), v.to_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::Samples;

    const TEXT: &str = r#"# TYPE kibitz_signal_peers gauge
kibitz_signal_peers 3
# TYPE kibitz_signal_messages_total counter
kibitz_signal_messages_total{type="HEARTBEAT"} 40
kibitz_signal_messages_total{type="OFFER"} 2
kibitz_signal_messages_total{type="CANDIDATE"} 7
kibitz_turn_requests_total{outcome="issued_open"} 5
kibitz_turn_requests_total{outcome="free"} 9
kibitz_turn_requests_total{outcome="issued_room"} 1
"#;

    #[test]
    fn sums_by_name_and_label() {
        let s = Samples::parse(TEXT);
        assert_eq!(s.sum("kibitz_signal_peers", &[]), 3);
        assert_eq!(
            s.sum_except("kibitz_signal_messages_total", ("type", "HEARTBEAT")),
            9
        );
        assert_eq!(
            s.sum("kibitz_turn_requests_total", &[("outcome", "issued_open")]),
            5
        );
        assert_eq!(s.sum("kibitz_turn_requests_total", &[]), 15);
        assert_eq!(s.sum("absent", &[]), 0);
    }

    #[test]
    fn lists_labels_of_zero_samples() {
        let s = Samples::parse(
            "kibitz_signal_cluster_shard_up{shard=\"0\"} 1\n\
             kibitz_signal_cluster_shard_up{shard=\"1\"} 0\n\
             kibitz_signal_cluster_shard_up{shard=\"2\"} 0\n",
        );
        assert_eq!(
            s.zero_labels("kibitz_signal_cluster_shard_up", "shard"),
            ["1", "2"]
        );
        assert!(s.zero_labels("absent", "shard").is_empty());
    }
}
