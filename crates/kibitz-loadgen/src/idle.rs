//! `idle`: many connections that only send heartbeats.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Map, Value, json};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior, interval_at, sleep, sleep_until};

use crate::net::{Event, Target, classify, close_quietly, heartbeat};
use crate::probe::{round2, window_figures};
use crate::{Ctx, secs};

#[derive(Debug, Args)]
pub struct IdleArgs {
    /// Number of connections to open and hold.
    #[arg(long, default_value_t = 1000)]
    conns: usize,
    /// Heartbeat period per connection (start times are spread over one period).
    #[arg(long, default_value_t = 5000)]
    heartbeat_ms: u64,
    /// How long to hold all connections once open (the measurement window).
    #[arg(long, default_value_t = 20.0)]
    hold_secs: f64,
    /// Cap on new connections per second (0 = only --concurrency bounds it).
    #[arg(long, default_value_t = 0.0)]
    open_rate: f64,
}

const READ_BUF: usize = 4096;

pub async fn run(ctx: &Ctx, a: &IdleArgs) -> Result<Map<String, Value>> {
    let hold = secs(a.hold_secs, "--hold-secs")?;
    let hb = Duration::from_millis(a.heartbeat_ms.max(1));
    let baseline = ctx.probe.snap();

    let (stop_tx, stop_rx) = watch::channel(false);
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Result<(), String>>();
    let dropped = Arc::new(AtomicU64::new(0));
    let sem = Arc::new(Semaphore::new(ctx.concurrency.max(1)));
    let mut tasks = JoinSet::new();

    let t0 = Instant::now();
    for i in 0..a.conns {
        if a.open_rate > 0.0 {
            sleep_until(t0 + Duration::from_secs_f64(i as f64 / a.open_rate)).await;
        }
        let permit = sem.clone().acquire_owned().await.context("semaphore")?;
        // Spread first heartbeats evenly over one period (golden-ratio sequence).
        let jitter = hb.mul_f64((i as f64 * 0.618_033_988_749_895).fract());
        tasks.spawn(conn(
            ConnSetup {
                target: ctx.target.clone(),
                idx: i,
                id: format!("{}i{i}", ctx.id_prefix),
                open_timeout: ctx.open_timeout,
                hb,
                jitter,
            },
            permit,
            done_tx.clone(),
            stop_rx.clone(),
            dropped.clone(),
        ));
    }
    drop(done_tx);

    let (mut opened, mut failed, mut first_err) = (0u64, 0u64, None);
    while let Some(r) = done_rx.recv().await {
        match r {
            Ok(()) => opened += 1,
            Err(e) => {
                failed += 1;
                first_err.get_or_insert(e);
            }
        }
        if opened + failed == a.conns as u64 {
            break;
        }
    }
    let open_secs = t0.elapsed().as_secs_f64();
    let opened_snap = ctx.probe.snap();
    eprintln!("idle: {opened} open, {failed} failed in {open_secs:.2}s; holding {hold:?}");

    // Measurement window: just hold.
    let s1 = ctx.probe.snap();
    sleep(hold).await;
    let s2 = ctx.probe.snap();
    let dropped_in_hold = dropped.load(Ordering::Relaxed);

    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(30), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;

    let mut out = Map::new();
    out.insert("conns".into(), json!(a.conns));
    out.insert("opened".into(), json!(opened));
    out.insert("failed".into(), json!(failed));
    out.insert("dropped".into(), json!(dropped_in_hold));
    out.insert("open_secs".into(), json!(round2(open_secs)));
    if open_secs > 0.0 {
        out.insert(
            "open_per_s".into(),
            json!(round2(opened as f64 / open_secs)),
        );
    }
    out.insert("hold_secs".into(), json!(a.hold_secs));
    out.insert("heartbeat_ms".into(), json!(a.heartbeat_ms));
    let heartbeats = (opened as f64 * hold.as_secs_f64() / hb.as_secs_f64()) as u64;
    window_figures(&s1, &s2, heartbeats, &mut out);
    if let (Some(b), Some(o), Some(e)) = (baseline.server, opened_snap.server, s2.server) {
        out.insert("server_rss_base_kb".into(), json!(b.rss_kb));
        out.insert("server_rss_open_kb".into(), json!(o.rss_kb));
        if opened > 0 {
            let per = (e.rss_kb as f64 - b.rss_kb as f64) / opened as f64;
            out.insert("server_rss_per_conn_kb".into(), json!(round2(per)));
        }
    }
    if let Some(e) = first_err {
        out.insert("first_error".into(), json!(e));
    }
    Ok(out)
}

#[derive(Debug)]
struct ConnSetup {
    target: Arc<Target>,
    idx: usize,
    id: String,
    open_timeout: Duration,
    hb: Duration,
    jitter: Duration,
}

async fn conn(
    s: ConnSetup,
    permit: OwnedSemaphorePermit,
    done: mpsc::UnboundedSender<Result<(), String>>,
    mut stop: watch::Receiver<bool>,
    dropped: Arc<AtomicU64>,
) {
    let res = s.target.open(s.idx, &s.id, READ_BUF, s.open_timeout).await;
    drop(permit);
    let mut ws = match res {
        Ok(ws) => {
            let _ = done.send(Ok(()));
            ws
        }
        Err(e) => {
            let _ = done.send(Err(format!("{e:#}")));
            return;
        }
    };
    drop(done);
    let mut tick = interval_at(Instant::now() + s.jitter, s.hb);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        if *stop.borrow() {
            break;
        }
        tokio::select! {
            r = stop.changed() => if r.is_err() { break },
            _ = tick.tick() => {
                if ws.send(heartbeat()).await.is_err() {
                    dropped.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
            m = ws.next() => {
                if let Event::Closed(_) = classify(m) {
                    dropped.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }
    }
    close_quietly(ws, Duration::from_secs(10)).await;
}
