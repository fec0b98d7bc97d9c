//! `paced`: open-loop OFFER relay at a fixed total rate.
//!
//! Every connection sends to its partner on a fixed schedule regardless of
//! replies. The timestamp in each message is its *scheduled* send time, so a
//! late sender (or a stalled server) shows up as latency instead of silently
//! lowering the rate (no coordinated omission).

use std::time::Duration;

use anyhow::{Result, bail};
use clap::Args;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{Map, Value, json};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until};

use crate::net::{Event, OfferBuilder, Ws, classify, close_quietly, heartbeat, nanos_since};
use crate::probe::{new_hist, percentiles, record_us, round2, window_figures};
use crate::relay::{ConnOut, READ_BUF, collect, hb_interval, pair_ids};
use crate::{Ctx, secs};

#[derive(Debug, Args)]
pub struct PacedArgs {
    /// Number of connection pairs.
    #[arg(long, default_value_t = 100)]
    pairs: usize,
    /// Total messages per second, over all pairs and both directions.
    #[arg(long, default_value_t = 10_000.0)]
    rate: f64,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 200)]
    size: usize,
    /// Measurement window length.
    #[arg(long, default_value_t = 15.0)]
    secs: f64,
    /// Send on schedule this long before measuring.
    #[arg(long, default_value_t = 2.0)]
    warmup_secs: f64,
    /// After the window, wait this long for in-flight messages; later ones count as lost.
    #[arg(long, default_value_t = 1.0)]
    drain_secs: f64,
    /// Heartbeat period (0 = none).
    #[arg(long, default_value_t = 5000)]
    heartbeat_ms: u64,
}

#[derive(Debug, Clone, Copy)]
struct Timeline {
    base: Instant,
    /// Nanoseconds since base: measured messages are those scheduled in [lo, hi).
    lo: u64,
    hi: u64,
    stop: Instant,
}

pub async fn run(ctx: &Ctx, a: &PacedArgs) -> Result<Map<String, Value>> {
    let window = secs(a.secs, "--secs")?;
    let warmup = secs(a.warmup_secs, "--warmup-secs")?;
    let drain = secs(a.drain_secs, "--drain-secs")?;
    if a.rate.is_nan() || a.rate <= 0.0 || a.pairs == 0 {
        bail!("--rate and --pairs must be positive");
    }
    let conns = a.pairs * 2;
    let interval_ns = 1e9 * conns as f64 / a.rate;
    let template = new_hist()?;
    let ids = pair_ids(&ctx.id_prefix, "p", a.pairs);
    let (mut socks, conn_failures, conn_err) = ctx.open_many(&ids, READ_BUF).await;

    let base = Instant::now() + Duration::from_millis(50);
    let win_start = base + warmup;
    let win_end = win_start + window;
    let tl = Timeline {
        base,
        lo: nanos_since(base, win_start),
        hi: nanos_since(base, win_end),
        stop: win_end + drain,
    };
    let mut tasks = JoinSet::new();
    let mut pairs_ok = 0;
    for p in 0..a.pairs {
        let (i, j) = (2 * p, 2 * p + 1);
        let (Some(Some(x)), Some(Some(y))) = (
            socks.get_mut(i).map(Option::take),
            socks.get_mut(j).map(Option::take),
        ) else {
            continue;
        };
        pairs_ok += 1;
        for (k, ws, dst) in [(i, x, &ids[j]), (j, y, &ids[i])] {
            let sched = Schedule {
                // Stagger connections evenly across one interval.
                offset_ns: interval_ns * k as f64 / conns as f64,
                interval_ns,
            };
            let b = OfferBuilder::new(dst, a.size);
            let h = Histogram::new_from(&template);
            tasks.spawn(conn(ws, b, tl, sched, a.heartbeat_ms, h));
        }
    }
    drop(socks);

    sleep_until(win_start).await;
    let s1 = ctx.probe.snap();
    sleep_until(win_end).await;
    let s2 = ctx.probe.snap();
    let t = collect(tasks, template).await;

    let w = window.as_secs_f64();
    let mut out = Map::new();
    out.insert("pairs".into(), json!(a.pairs));
    out.insert("pairs_ok".into(), json!(pairs_ok));
    out.insert("size".into(), json!(a.size));
    out.insert("secs".into(), json!(a.secs));
    out.insert("target_rate".into(), json!(a.rate));
    out.insert("conn_failures".into(), json!(conn_failures));
    out.insert("errors".into(), json!(t.errors));
    out.insert("sent".into(), json!(t.sent));
    out.insert("sent_per_s".into(), json!(round2(t.sent as f64 / w)));
    out.insert("delivered".into(), json!(t.delivered));
    out.insert(
        "delivered_per_s".into(),
        json!(round2(t.delivered as f64 / w)),
    );
    out.insert("lost".into(), json!(t.sent.saturating_sub(t.delivered)));
    if t.bad > 0 {
        out.insert("bad_messages".into(), json!(t.bad));
    }
    percentiles("lat", &t.hist, &mut out);
    window_figures(&s1, &s2, t.delivered, &mut out);
    if let Some(e) = conn_err.or(t.first_error) {
        out.insert("first_error".into(), json!(e));
    }
    Ok(out)
}

#[derive(Debug, Clone, Copy)]
struct Schedule {
    offset_ns: f64,
    interval_ns: f64,
}

impl Schedule {
    fn at(&self, k: u64) -> u64 {
        (self.offset_ns + self.interval_ns * k as f64) as u64
    }
}

async fn conn(
    mut ws: Ws,
    b: OfferBuilder,
    tl: Timeline,
    sched: Schedule,
    heartbeat_ms: u64,
    hist: Histogram<u64>,
) -> ConnOut {
    let mut out = ConnOut::new(hist);
    if let Err(e) = run_conn(&mut ws, &b, tl, sched, heartbeat_ms, &mut out).await {
        out.error = Some(e);
        return out;
    }
    close_quietly(ws, Duration::from_secs(2)).await;
    out
}

async fn run_conn(
    ws: &mut Ws,
    b: &OfferBuilder,
    tl: Timeline,
    sched: Schedule,
    heartbeat_ms: u64,
    out: &mut ConnOut,
) -> Result<(), String> {
    let stop = sleep_until(tl.stop);
    tokio::pin!(stop);
    let mut k = 0u64;
    let mut next = sched.at(0);
    let mut sending = true;
    let wake = sleep_until(tl.base + Duration::from_nanos(next));
    tokio::pin!(wake);
    let mut hb = hb_interval(heartbeat_ms, tl.base);
    loop {
        tokio::select! {
            biased;
            _ = &mut stop => return Ok(()),
            m = ws.next() => match classify(m) {
                Event::Offer(t) => {
                    if t >= tl.lo && t < tl.hi {
                        let now = Instant::now();
                        let scheduled = tl.base + Duration::from_nanos(t);
                        record_us(&mut out.hist, nanos_since(scheduled, now));
                        out.delivered += 1;
                    }
                }
                Event::Other => {}
                Event::Bad => out.bad += 1,
                Event::Closed(e) => return Err(e),
            },
            _ = &mut wake, if sending => {
                let now = nanos_since(tl.base, Instant::now());
                // Send everything that is due (catching up in one write if late).
                while next <= now && next < tl.hi {
                    ws.feed(b.build(next)).await.map_err(|e| e.to_string())?;
                    if next >= tl.lo {
                        out.sent += 1;
                    }
                    k += 1;
                    next = sched.at(k);
                }
                ws.flush().await.map_err(|e| e.to_string())?;
                if next >= tl.hi {
                    sending = false;
                } else {
                    wake.as_mut().reset(tl.base + Duration::from_nanos(next));
                }
            }
            _ = hb.tick() => {
                ws.send(heartbeat()).await.map_err(|e| e.to_string())?;
            }
        }
    }
}
