//! Server (and self) resource sampling from /proc, plus latency histograms.

use anyhow::{Context, Result, anyhow};
use hdrhistogram::Histogram;
use serde_json::{Map, Value, json};
use tokio::time::Instant;

/// Linux USER_HZ; it is 100 on every mainstream architecture.
const CLK_TCK: f64 = 100.0;

#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub at: Instant,
    pub rss_kb: u64,
    pub cpu_ticks: u64,
}

/// Reads RSS and CPU time of a process (`"self"` or a pid).
pub fn sample(pid: &str) -> Result<Sample> {
    let at = Instant::now();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    let rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS for pid {pid}"))?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("read /proc/{pid}/stat"))?;
    // Fields after the parenthesised comm: state is field 3, utime 14, stime 15.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("bad /proc/{pid}/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow!("bad /proc/{pid}/stat field {i}"))
    };
    // `rest` starts at field 3, so utime (14) is index 11 and stime (15) index 12.
    let cpu_ticks = num(11)? + num(12)?;
    Ok(Sample {
        at,
        rss_kb,
        cpu_ticks,
    })
}

/// Samples the server (if a pid was given) and this process together.
#[derive(Debug, Clone)]
pub struct Probe {
    /// Every server process; their figures are summed.
    server: Vec<String>,
}

#[derive(Debug, Clone, Copy)]
pub struct Snap {
    pub server: Option<Sample>,
    pub me: Option<Sample>,
}

impl Probe {
    pub fn new(server_pids: &[u32]) -> Self {
        Self {
            server: server_pids.iter().map(|p| p.to_string()).collect(),
        }
    }

    pub fn snap(&self) -> Snap {
        let mut server: Option<Sample> = None;
        for pid in &self.server {
            match sample(pid) {
                Ok(s) => {
                    server = Some(match server {
                        None => s,
                        Some(sum) => Sample {
                            at: sum.at,
                            rss_kb: sum.rss_kb + s.rss_kb,
                            cpu_ticks: sum.cpu_ticks + s.cpu_ticks,
                        },
                    });
                }
                Err(e) => {
                    eprintln!("warning: cannot sample server: {e:#}");
                    server = None;
                    break;
                }
            }
        }
        Snap {
            server,
            me: sample("self").ok(),
        }
    }
}

/// CPU seconds used between two samples, and as % of one core over the wall time.
fn cpu(a: &Sample, b: &Sample) -> (f64, f64) {
    let secs = b.cpu_ticks.saturating_sub(a.cpu_ticks) as f64 / CLK_TCK;
    let wall = b.at.saturating_duration_since(a.at).as_secs_f64();
    let pct = if wall > 0.0 { 100.0 * secs / wall } else { 0.0 };
    (secs, pct)
}

/// Adds server/loadgen CPU and RSS figures for the window `a..b` to `out`.
/// `work` is the number of units (messages, opens) done in the window, for a
/// CPU-µs-per-unit figure.
pub fn window_figures(a: &Snap, b: &Snap, work: u64, out: &mut Map<String, Value>) {
    if let (Some(sa), Some(sb)) = (a.server, b.server) {
        let (secs, pct) = cpu(&sa, &sb);
        out.insert("server_cpu_pct".into(), json!(round2(pct)));
        out.insert("server_cpu_s".into(), json!(round2(secs)));
        if work > 0 {
            out.insert(
                "server_cpu_us_per_op".into(),
                json!(round2(secs * 1e6 / work as f64)),
            );
        }
        out.insert("server_rss_kb".into(), json!(sb.rss_kb));
    }
    if let (Some(ma), Some(mb)) = (a.me, b.me) {
        let (_, pct) = cpu(&ma, &mb);
        out.insert("loadgen_cpu_pct".into(), json!(round2(pct)));
    }
}

pub fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// Latency histogram in microseconds, 1 µs .. 60 s at 3 significant figures.
pub fn new_hist() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 60_000_000, 3).context("histogram")
}

pub fn record_us(h: &mut Histogram<u64>, nanos: u64) {
    h.saturating_record((nanos / 1000).max(1));
}

/// Adds `<prefix>_p50_us`, `_p99_us`, `_p999_us`, `_max_us` to `out`.
pub fn percentiles(prefix: &str, h: &Histogram<u64>, out: &mut Map<String, Value>) {
    if h.is_empty() {
        return;
    }
    out.insert(format!("{prefix}_p50_us"), json!(h.value_at_quantile(0.50)));
    out.insert(format!("{prefix}_p99_us"), json!(h.value_at_quantile(0.99)));
    out.insert(
        format!("{prefix}_p999_us"),
        json!(h.value_at_quantile(0.999)),
    );
    out.insert(format!("{prefix}_max_us"), json!(h.max()));
}

/// Prints the human line and the machine-readable `RESULT {json}` line.
pub fn emit(out: Map<String, Value>) {
    let human: Vec<String> = out
        .iter()
        .map(|(k, v)| match v {
            Value::String(s) => format!("{k}={s}"),
            other => format!("{k}={other}"),
        })
        .collect();
    println!("{}", human.join(" "));
    println!("RESULT {}", Value::Object(out));
}

/// What one closed-loop worker did in the measured window.
pub struct Tally {
    /// Operations completed (connects, requests).
    pub done: u64,
    pub errors: u64,
    pub first_err: Option<String>,
    pub hist: Histogram<u64>,
}

impl Tally {
    pub fn new() -> Result<Self> {
        Ok(Self {
            done: 0,
            errors: 0,
            first_err: None,
            hist: new_hist()?,
        })
    }
}

/// Sums the workers' tallies, waiting at most `grace` for them to finish; a worker that failed
/// or panicked counts as one error.
pub async fn gather(
    tasks: &mut tokio::task::JoinSet<Result<Tally>>,
    grace: std::time::Duration,
) -> Result<Tally> {
    let mut all = Tally::new()?;
    let _ = tokio::time::timeout(grace, async {
        while let Some(r) = tasks.join_next().await {
            match r {
                Ok(Ok(t)) => {
                    all.done += t.done;
                    all.errors += t.errors;
                    let _ = all.hist.add(&t.hist);
                    if all.first_err.is_none() {
                        all.first_err = t.first_err;
                    }
                }
                Ok(Err(e)) => {
                    all.errors += 1;
                    all.first_err.get_or_insert(format!("{e:#}"));
                }
                Err(e) => {
                    all.errors += 1;
                    all.first_err.get_or_insert(format!("task failed: {e}"));
                }
            }
        }
    })
    .await;
    tasks.abort_all();
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_self() {
        let s = sample("self").unwrap();
        assert!(s.rss_kb > 0);
    }
}
