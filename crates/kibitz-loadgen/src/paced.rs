//! `paced`: open-loop OFFER relay at a fixed total rate.
//!
//! Every connection sends to its partner on a fixed schedule regardless of
//! replies. The timestamp in each message is its *scheduled* send time, so a
//! late sender (or a stalled server) shows up as latency instead of silently
//! lowering the rate (no coordinated omission).
//!
//! A pacer thread (sleeping with `nanosleep`, far more punctual than the
//! runtime's 1 ms timer wheel) hands batches of due messages to one dispatcher
//! task that owns every connection's write half; a reader task per connection
//! owns the read half. One cross-thread wake per batch keeps the load
//! generator's own CPU cost low.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until};

use tokio_tungstenite::tungstenite::Message;

use crate::net::{Event, OfferBuilder, Ws, classify, close_quietly, heartbeat, nanos_since};
use crate::probe::{new_hist, percentiles, record_us, round2, window_figures};
use crate::relay::{ConnOut, READ_BUF, Totals, directed_pairs, pair_ids};
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
    /// Heartbeat period per connection (0 = none).
    #[arg(long, default_value_t = 5000)]
    heartbeat_ms: u64,
    /// Shortest pacer sleep: larger batches, less load-generator CPU, later sends.
    #[arg(long, default_value_t = 50)]
    tick_us: u64,
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
    let template = new_hist()?;
    let ids = pair_ids(&ctx.id_prefix, "p", a.pairs);
    let (socks, conn_failures, conn_err) = ctx.open_many(&ids, READ_BUF).await;

    let base = Instant::now() + Duration::from_millis(50);
    let win_start = base + warmup;
    let win_end = win_start + window;
    let tl = Timeline {
        base,
        lo: nanos_since(base, win_start),
        hi: nanos_since(base, win_end),
        stop: win_end + drain,
    };
    let mut writers = Vec::new();
    let mut readers = JoinSet::new();
    let (directed, pairs_ok) = directed_pairs(socks, &ids);
    for (ws, dst) in directed {
        let (sink, stream) = ws.split();
        let k = writers.len();
        writers.push(Writer {
            sink,
            offer: OfferBuilder::new(dst, a.size),
            dead: false,
        });
        readers.spawn(reader(k, stream, tl, Histogram::new_from(&template)));
    }

    let mut totals = Totals::new(Histogram::new_from(&template));
    let mut sinks: Vec<Option<SplitSink<Ws, Message>>> = Vec::new();
    let mut s = (ctx.probe.snap(), ctx.probe.snap());
    if !writers.is_empty() {
        let (tx, rx) = mpsc::unbounded_channel();
        let pace = Pace {
            base,
            conns: writers.len(),
            rate: a.rate,
            end_ns: tl.hi,
            tick: Duration::from_micros(a.tick_us),
        };
        std::thread::Builder::new()
            .name("pacer".into())
            .spawn(move || pacer(&tx, pace))
            .context("spawn pacer thread")?;
        let hb = (a.heartbeat_ms > 0).then(|| Duration::from_millis(a.heartbeat_ms));
        let disp = tokio::spawn(dispatch(writers, rx, tl, hb, template));

        sleep_until(win_start).await;
        s.0 = ctx.probe.snap();
        sleep_until(win_end).await;
        s.1 = ctx.probe.snap();

        match disp.await {
            Ok(d) => {
                totals.sent = d.sent;
                totals.lag = Some(d.lag);
                for e in d.errors {
                    totals.error(e);
                }
                sinks = d.sinks.into_iter().map(Some).collect();
            }
            Err(e) => totals.error(format!("dispatcher failed: {e}")),
        }
    }
    // Readers stop by themselves at tl.stop; then close every socket politely.
    let mut closing = JoinSet::new();
    while let Some(r) = readers.join_next().await {
        match r {
            Ok((k, stream, out)) => {
                totals.add(out);
                if let Some(sink) = sinks.get_mut(k).and_then(Option::take)
                    && let Ok(ws) = stream.reunite(sink)
                {
                    closing.spawn(close_quietly(ws, Duration::from_secs(2)));
                }
            }
            Err(e) => totals.error(format!("reader failed: {e}")),
        }
    }
    closing.join_all().await;
    let t = totals;
    let (s1, s2) = s;

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
    if let Some(lag) = &t.lag {
        // How late the load generator itself was in sending (diagnostic).
        percentiles("send_lag", lag, &mut out);
    }
    window_figures(&s1, &s2, t.delivered, &mut out);
    if let Some(e) = conn_err.or(t.first_error) {
        out.insert("first_error".into(), json!(e));
    }
    Ok(out)
}

#[derive(Debug, Clone, Copy)]
struct Pace {
    base: Instant,
    conns: usize,
    rate: f64,
    end_ns: u64,
    tick: Duration,
}

/// One due message: connection index and scheduled time (ns since base).
type Due = (usize, u64);

/// Message `n` is due `n / rate` seconds after `base` and goes to connection
/// `n % conns`, so every connection sends at the same rate with start times
/// staggered evenly. Hands each batch of due messages to the dispatcher.
fn pacer(tx: &mpsc::UnboundedSender<Vec<Due>>, p: Pace) {
    let interval = 1e9 / p.rate;
    let at = |n: u64| (n as f64 * interval) as u64;
    let mut n: u64 = 0;
    std::thread::sleep(p.base.saturating_duration_since(Instant::now()));
    loop {
        let now = nanos_since(p.base, Instant::now());
        let mut batch = Vec::new();
        while at(n) <= now && at(n) < p.end_ns {
            let k = usize::try_from(n % p.conns as u64).unwrap_or(0);
            batch.push((k, at(n)));
            n += 1;
        }
        if !batch.is_empty() && tx.send(batch).is_err() {
            return;
        }
        let next = at(n);
        if next >= p.end_ns {
            return;
        }
        let now = nanos_since(p.base, Instant::now());
        std::thread::sleep(Duration::from_nanos(next.saturating_sub(now)).max(p.tick));
    }
}

#[derive(Debug)]
struct Writer {
    sink: SplitSink<Ws, Message>,
    offer: OfferBuilder,
    dead: bool,
}

#[derive(Debug)]
struct Dispatched {
    sinks: Vec<SplitSink<Ws, Message>>,
    sent: u64,
    lag: Histogram<u64>,
    errors: Vec<String>,
}

/// Writes every due message (and staggered heartbeats) until the pacer is done.
async fn dispatch(
    mut w: Vec<Writer>,
    mut rx: mpsc::UnboundedReceiver<Vec<Due>>,
    tl: Timeline,
    hb: Option<Duration>,
    mut lag: Histogram<u64>,
) -> Dispatched {
    let mut sent = 0;
    let mut errors = Vec::new();
    let mut dirty = Vec::new();
    // One heartbeat every hb / conns, round-robin, so each connection gets one per hb.
    let step = hb.map_or(Duration::from_secs(86_400), |hb| {
        hb / u32::try_from(w.len()).unwrap_or(u32::MAX).max(1)
    });
    let mut hb_tick = tokio::time::interval_at(tl.base + step, step.max(Duration::from_millis(1)));
    hb_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut hb_next = 0usize;
    loop {
        tokio::select! {
            batch = rx.recv() => {
                let Some(batch) = batch else { break };
                let now = Instant::now();
                for (k, t) in batch {
                    let Some(c) = w.get_mut(k) else { continue };
                    if c.dead {
                        continue;
                    }
                    if t >= tl.lo && t < tl.hi {
                        sent += 1;
                        record_us(&mut lag, nanos_since(tl.base + Duration::from_nanos(t), now));
                    }
                    if let Err(e) = c.sink.feed(c.offer.build(t)).await {
                        c.dead = true;
                        errors.push(format!("send: {e}"));
                    } else {
                        dirty.push(k);
                    }
                }
                for k in dirty.drain(..) {
                    if let Some(c) = w.get_mut(k)
                        && !c.dead
                        && let Err(e) = c.sink.flush().await
                    {
                        c.dead = true;
                        errors.push(format!("send: {e}"));
                    }
                }
            }
            _ = hb_tick.tick(), if hb.is_some() => {
                let k = hb_next % w.len().max(1);
                hb_next += 1;
                if let Some(c) = w.get_mut(k)
                    && !c.dead
                    && let Err(e) = c.sink.send(heartbeat()).await
                {
                    c.dead = true;
                    errors.push(format!("send: {e}"));
                }
            }
        }
    }
    Dispatched {
        sinks: w.into_iter().map(|c| c.sink).collect(),
        sent,
        lag,
        errors,
    }
}

/// Reads one connection until `tl.stop`, recording latency of measured messages.
async fn reader(
    k: usize,
    mut stream: SplitStream<Ws>,
    tl: Timeline,
    hist: Histogram<u64>,
) -> (usize, SplitStream<Ws>, ConnOut) {
    let mut out = ConnOut::new(hist);
    let stop = sleep_until(tl.stop);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            biased;
            _ = &mut stop => break,
            m = stream.next() => match classify(m) {
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
                Event::Closed(e) => {
                    out.error = Some(e);
                    break;
                }
            },
        }
    }
    (k, stream, out)
}
