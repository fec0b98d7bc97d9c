//! `relay`: closed-loop OFFER relay between pairs of connections.
//!
//! Each side starts with `window` messages in flight to its partner and sends
//! a new one for every message that arrives, so each direction keeps `window`
//! messages in flight. Latency is one-way: both ends share one `Instant` base.

use std::time::Duration;

use anyhow::Result;
use clap::Args;
use futures_util::{FutureExt, SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{Map, Value, json};
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior, interval_at, sleep_until};

use crate::net::{Event, OfferBuilder, Ws, classify, close_quietly, heartbeat, nanos_since};
use crate::probe::{new_hist, percentiles, record_us, round2, window_figures};
use crate::{Ctx, secs};

#[derive(Debug, Args)]
pub struct RelayArgs {
    /// Number of connection pairs.
    #[arg(long, default_value_t = 100)]
    pairs: usize,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 200)]
    size: usize,
    /// Messages in flight per direction.
    #[arg(long, default_value_t = 16)]
    window: usize,
    /// Measurement window length.
    #[arg(long, default_value_t = 15.0)]
    secs: f64,
    /// Run this long before measuring.
    #[arg(long, default_value_t = 2.0)]
    warmup_secs: f64,
    /// Heartbeat period (0 = none).
    #[arg(long, default_value_t = 5000)]
    heartbeat_ms: u64,
}

pub const READ_BUF: usize = 64 * 1024;

/// What one connection task measured.
#[derive(Debug)]
pub struct ConnOut {
    pub hist: Histogram<u64>,
    /// Messages received whose measurement counted.
    pub delivered: u64,
    /// Messages sent whose measurement counted (paced) / all sent (relay).
    pub sent: u64,
    pub bad: u64,
    pub error: Option<String>,
    /// Send lateness versus schedule (paced only).
    pub lag: Option<Histogram<u64>>,
}

impl ConnOut {
    pub fn new(hist: Histogram<u64>) -> Self {
        Self {
            hist,
            delivered: 0,
            sent: 0,
            bad: 0,
            error: None,
            lag: None,
        }
    }
}

/// Totals over all connection tasks.
#[derive(Debug)]
pub struct Totals {
    pub hist: Histogram<u64>,
    pub delivered: u64,
    pub sent: u64,
    pub bad: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub lag: Option<Histogram<u64>>,
}

impl Totals {
    pub fn new(hist: Histogram<u64>) -> Self {
        Self {
            hist,
            delivered: 0,
            sent: 0,
            bad: 0,
            errors: 0,
            first_error: None,
            lag: None,
        }
    }

    pub fn add(&mut self, o: ConnOut) {
        let _ = self.hist.add(&o.hist);
        self.delivered += o.delivered;
        self.sent += o.sent;
        self.bad += o.bad;
        match (&mut self.lag, o.lag) {
            (Some(all), Some(l)) => {
                let _ = all.add(&l);
            }
            (slot @ None, Some(l)) => *slot = Some(l),
            _ => {}
        }
        if let Some(e) = o.error {
            self.error(e);
        }
    }

    pub fn error(&mut self, e: String) {
        self.errors += 1;
        self.first_error.get_or_insert(e);
    }
}

pub async fn collect(mut tasks: JoinSet<ConnOut>, hist: Histogram<u64>) -> Totals {
    let mut t = Totals::new(hist);
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(o) => t.add(o),
            Err(e) => t.error(format!("task failed: {e}")),
        }
    }
    t
}

/// Ids for `pairs` pairs: index 2p and 2p+1 are partners.
pub fn pair_ids(prefix: &str, tag: &str, pairs: usize) -> Vec<String> {
    (0..pairs * 2)
        .map(|i| {
            format!(
                "{prefix}{tag}{}{}",
                i / 2,
                if i % 2 == 0 { 'a' } else { 'b' }
            )
        })
        .collect()
}

/// Both directions of every pair of connections (0,1), (2,3), … that both opened: each
/// socket with the id it sends to. Also returns how many pairs opened.
pub fn directed_pairs<T>(socks: Vec<Option<T>>, ids: &[String]) -> (Vec<(T, &str)>, usize) {
    let mut out = Vec::new();
    let mut it = socks.into_iter().zip(ids);
    while let (Some((x, xid)), Some((y, yid))) = (it.next(), it.next()) {
        if let (Some(x), Some(y)) = (x, y) {
            out.push((x, yid.as_str()));
            out.push((y, xid.as_str()));
        }
    }
    let pairs = out.len() / 2;
    (out, pairs)
}

pub fn hb_interval(ms: u64, start: Instant) -> tokio::time::Interval {
    // With heartbeats off, tick so rarely it never matters.
    let period = if ms == 0 {
        Duration::from_secs(86_400)
    } else {
        Duration::from_millis(ms)
    };
    let mut i = interval_at(start + period, period);
    i.set_missed_tick_behavior(MissedTickBehavior::Delay);
    i
}

#[derive(Debug, Clone, Copy)]
struct Timeline {
    base: Instant,
    win_start: Instant,
    end: Instant,
}

pub async fn run(ctx: &Ctx, a: &RelayArgs) -> Result<Map<String, Value>> {
    let window = secs(a.secs, "--secs")?;
    let warmup = secs(a.warmup_secs, "--warmup-secs")?;
    let template = new_hist()?;
    let ids = pair_ids(&ctx.id_prefix, "r", a.pairs);
    let (socks, conn_failures, conn_err) = ctx.open_many(&ids, READ_BUF).await;

    let base = Instant::now() + Duration::from_millis(50);
    let tl = Timeline {
        base,
        win_start: base + warmup,
        end: base + warmup + window,
    };
    // With a second node, odd pairs go across nodes and are measured apart.
    let cross: Vec<bool> = (0..a.pairs).map(|p| ctx.target.is_cross_pair(p)).collect();
    let mut tasks = JoinSet::new();
    let mut cross_tasks = JoinSet::new();
    let (directed, pairs_ok) = directed_pairs_indexed(socks, &ids);
    for (ws, dst, pair) in directed {
        let b = OfferBuilder::new(dst, a.size);
        let h = Histogram::new_from(&template);
        let set = if cross[pair] {
            &mut cross_tasks
        } else {
            &mut tasks
        };
        set.spawn(conn(ws, b, tl, a.window, a.heartbeat_ms, h));
    }

    sleep_until(tl.win_start).await;
    let s1 = ctx.probe.snap();
    sleep_until(tl.end).await;
    let s2 = ctx.probe.snap();
    let mut t = collect(tasks, Histogram::new_from(&template)).await;
    let x = collect(cross_tasks, Histogram::new_from(&template)).await;
    let split = ctx.target.has_alt();
    let (same_hist, same_delivered) = (Histogram::clone(&t.hist), t.delivered);
    let _ = t.hist.add(&x.hist);
    t.delivered += x.delivered;
    t.errors += x.errors;
    t.bad += x.bad;

    let mut out = Map::new();
    out.insert("pairs".into(), json!(a.pairs));
    out.insert("pairs_ok".into(), json!(pairs_ok));
    out.insert("size".into(), json!(a.size));
    out.insert("window".into(), json!(a.window));
    out.insert("secs".into(), json!(a.secs));
    out.insert("conn_failures".into(), json!(conn_failures));
    out.insert("errors".into(), json!(t.errors));
    out.insert("delivered".into(), json!(t.delivered));
    out.insert(
        "msg_per_s".into(),
        json!(round2(t.delivered as f64 / window.as_secs_f64())),
    );
    if t.bad > 0 {
        out.insert("bad_messages".into(), json!(t.bad));
    }
    percentiles("lat", &t.hist, &mut out);
    window_figures(&s1, &s2, t.delivered, &mut out);
    if split {
        let secs_f = window.as_secs_f64();
        out.insert(
            "same_msg_per_s".into(),
            json!(round2(same_delivered as f64 / secs_f)),
        );
        out.insert(
            "cross_msg_per_s".into(),
            json!(round2(x.delivered as f64 / secs_f)),
        );
        percentiles("same_lat", &same_hist, &mut out);
        percentiles("cross_lat", &x.hist, &mut out);
        out.insert("cross_errors".into(), json!(x.errors));
    }
    if let Some(e) = conn_err.or(t.first_error).or(x.first_error) {
        out.insert("first_error".into(), json!(e));
    }
    Ok(out)
}

/// [`directed_pairs`], with each socket's pair number.
fn directed_pairs_indexed<T>(
    socks: Vec<Option<T>>,
    ids: &[String],
) -> (Vec<(T, &str, usize)>, usize) {
    let mut out = Vec::new();
    let mut it = socks.into_iter().zip(ids);
    let mut pair = 0;
    while let (Some((x, xid)), Some((y, yid))) = (it.next(), it.next()) {
        if let (Some(x), Some(y)) = (x, y) {
            out.push((x, yid.as_str(), pair));
            out.push((y, xid.as_str(), pair));
        }
        pair += 1;
    }
    let pairs = out.len() / 2;
    (out, pairs)
}

async fn conn(
    mut ws: Ws,
    b: OfferBuilder,
    tl: Timeline,
    window: usize,
    heartbeat_ms: u64,
    hist: Histogram<u64>,
) -> ConnOut {
    let mut out = ConnOut::new(hist);
    if let Err(e) = run_conn(&mut ws, &b, tl, window, heartbeat_ms, &mut out).await {
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
    window: usize,
    heartbeat_ms: u64,
    out: &mut ConnOut,
) -> Result<(), String> {
    sleep_until(tl.base).await;
    for _ in 0..window {
        let now = Instant::now();
        ws.feed(b.build(nanos_since(tl.base, now)))
            .await
            .map_err(|e| e.to_string())?;
    }
    ws.flush().await.map_err(|e| e.to_string())?;
    out.sent += window as u64;

    let deadline = sleep_until(tl.end);
    tokio::pin!(deadline);
    let mut hb = hb_interval(heartbeat_ms, tl.base);
    let handle = |ev: Event, out: &mut ConnOut| -> Result<u64, String> {
        match ev {
            Event::Offer(t) => {
                let now = Instant::now();
                if now >= tl.win_start && now < tl.end {
                    let sent_at = tl.base + Duration::from_nanos(t);
                    record_us(&mut out.hist, nanos_since(sent_at, now));
                    out.delivered += 1;
                }
                Ok(1)
            }
            Event::Other => Ok(0),
            Event::Bad => {
                out.bad += 1;
                Ok(0)
            }
            Event::Closed(e) => Err(e),
        }
    };
    loop {
        let mut to_send = 0u64;
        tokio::select! {
            biased;
            _ = &mut deadline => return Ok(()),
            m = ws.next() => to_send += handle(classify(m), out)?,
            _ = hb.tick() => {
                ws.feed(heartbeat()).await.map_err(|e| e.to_string())?;
            }
        }
        // Take whatever else is already buffered, then answer in one write.
        while let Some(m) = ws.next().now_or_never() {
            to_send += handle(classify(m), out)?;
        }
        for _ in 0..to_send {
            let now = Instant::now();
            ws.feed(b.build(nanos_since(tl.base, now)))
                .await
                .map_err(|e| e.to_string())?;
        }
        out.sent += to_send;
        ws.flush().await.map_err(|e| e.to_string())?;
    }
}
