//! `churn`: open (connect, wait for OPEN) and close connections at a fixed rate.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Args;
use serde_json::{Map, Value, json};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep};

use crate::net::close_quietly;
use crate::probe::{new_hist, percentiles, record_us, round2, window_figures};
use crate::{Ctx, secs};

#[derive(Debug, Args)]
pub struct ChurnArgs {
    /// New connections per second.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// How long to keep opening connections (the measurement window).
    #[arg(long, default_value_t = 10.0)]
    secs: f64,
    /// Churn at the same rate this long first, unmeasured (lets a JIT warm up).
    #[arg(long, default_value_t = 1.0)]
    warmup_secs: f64,
    /// Connections allowed in flight at once; starts beyond it count as errors.
    #[arg(long, default_value_t = 8000)]
    max_inflight: usize,
}

const READ_BUF: usize = 4096;

/// Whether the attempt was in the measured window, and its open latency.
type Outcome = (bool, Result<u64, String>);

pub async fn run(ctx: &Ctx, a: &ChurnArgs) -> Result<Map<String, Value>> {
    let dur = secs(a.secs, "--secs")?;
    if a.rate.is_nan() || a.rate <= 0.0 {
        bail!("--rate must be positive");
    }
    let warmup = secs(a.warmup_secs, "--warmup-secs")?;
    let warm = (a.rate * warmup.as_secs_f64()).round() as u64;
    let total = warm + (a.rate * dur.as_secs_f64()).round() as u64;
    let mut hist = new_hist()?;
    let inflight = Arc::new(AtomicUsize::new(0));
    let mut tasks: JoinSet<Outcome> = JoinSet::new();
    let (mut opens, mut errors, mut skipped) = (0u64, 0u64, 0u64);
    let mut first_err: Option<String> = None;
    let mut tally = |r: Result<Outcome, tokio::task::JoinError>| match r {
        Ok((false, _)) => {}
        Ok((true, Ok(nanos))) => {
            opens += 1;
            record_us(&mut hist, nanos);
        }
        Ok((true, Err(e))) => {
            errors += 1;
            first_err.get_or_insert(e);
        }
        Err(e) => {
            errors += 1;
            first_err.get_or_insert(format!("task failed: {e}"));
        }
    };

    let mut s1 = ctx.probe.snap();
    let t0 = Instant::now();
    let mut t1 = t0;
    let mut started = 0u64;
    while started < total {
        let due = ((t0.elapsed().as_secs_f64() * a.rate) as u64).min(total);
        while started < due {
            let idx = started as usize;
            let measured = started >= warm;
            if started == warm {
                s1 = ctx.probe.snap();
                t1 = Instant::now();
            }
            started += 1;
            if inflight.load(Ordering::Relaxed) >= a.max_inflight {
                if measured {
                    skipped += 1;
                }
                continue;
            }
            inflight.fetch_add(1, Ordering::Relaxed);
            let target = ctx.target.clone();
            let id = format!("{}c{idx}", ctx.id_prefix);
            let timeout = ctx.open_timeout;
            let inflight = inflight.clone();
            tasks.spawn(async move {
                let t = Instant::now();
                let r = target.open(idx, &id, READ_BUF, timeout).await;
                let out = match r {
                    Ok(ws) => {
                        let nanos = u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX);
                        close_quietly(ws, Duration::from_secs(2)).await;
                        Ok(nanos)
                    }
                    Err(e) => Err(format!("{e:#}")),
                };
                inflight.fetch_sub(1, Ordering::Relaxed);
                (measured, out)
            });
        }
        while let Some(r) = tasks.try_join_next() {
            tally(r);
        }
        sleep(Duration::from_millis(1)).await;
    }
    let spawn_secs = t1.elapsed().as_secs_f64();
    let grace = ctx.open_timeout + Duration::from_secs(5);
    let _ = tokio::time::timeout(grace, async {
        while let Some(r) = tasks.join_next().await {
            tally(r);
        }
    })
    .await;
    let unfinished = tasks.len() as u64;
    tasks.abort_all();
    let s2 = ctx.probe.snap();
    let wall = t1.elapsed().as_secs_f64();

    let mut out = Map::new();
    out.insert("rate".into(), json!(a.rate));
    out.insert("secs".into(), json!(a.secs));
    out.insert("attempted".into(), json!(total - warm));
    out.insert("opens".into(), json!(opens));
    out.insert("errors".into(), json!(errors + skipped + unfinished));
    if skipped > 0 {
        out.insert("skipped_inflight_cap".into(), json!(skipped));
    }
    if unfinished > 0 {
        out.insert("unfinished".into(), json!(unfinished));
    }
    out.insert(
        "opens_per_s".into(),
        json!(round2(opens as f64 / spawn_secs)),
    );
    out.insert("wall_secs".into(), json!(round2(wall)));
    percentiles("open", &hist, &mut out);
    window_figures(&s1, &s2, opens, &mut out);
    if let Some(e) = first_err {
        out.insert("first_error".into(), json!(e));
    }
    Ok(out)
}
