//! `attack`: many sockets each sending the largest allowed message at the allowed rate to a
//! few ids that are slow to read (bench/attack.sh measures the broker's memory meanwhile).
//!
//! Every attacker sends one prebuilt OFFER of `--size` bytes every 1/`--rate` s to target
//! `i % targets` and reads (and discards) whatever comes back (`EXPIRE`s). Each target reads
//! `--target-reads` messages per second; when the broker closes it (its send queue passed the
//! bound), it reconnects with the same id, so the attack keeps meeting a slow reader.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Args;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Map, Value, json};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior, interval, sleep};
use tokio_tungstenite::tungstenite::Message;

use crate::net::{Event, OfferBuilder, Target, Ws, classify};
use crate::probe::{round2, window_figures};
use crate::{Ctx, secs};

#[derive(Debug, Args)]
pub struct AttackArgs {
    /// Attacking connections.
    #[arg(long, default_value_t = 10_000)]
    conns: usize,
    /// Slow-reading target ids the attackers send to.
    #[arg(long, default_value_t = 10)]
    targets: usize,
    /// Size of each OFFER in bytes, the whole WebSocket message (the broker's
    /// `--max-frame-bytes` default).
    #[arg(long, default_value_t = 64 * 1024)]
    size: usize,
    /// Messages per second per attacker (the broker's `--msg-rate` default).
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// How long to attack once every attacker is open.
    #[arg(long, default_value_t = 30.0)]
    secs: f64,
    /// Messages each target reads per second.
    #[arg(long, default_value_t = 5.0)]
    target_reads: f64,
}

/// Small: a slow reader should not buffer much on our side either.
const READ_BUF: usize = 4096;

#[derive(Debug, Default)]
struct Counts {
    sent: AtomicU64,
    /// Attackers the broker closed (e.g. over its message rate).
    closed: AtomicU64,
    /// Times the broker closed a target.
    kicks: AtomicU64,
    reads: AtomicU64,
}

/// The OFFER to `dst` whose whole text is `size` bytes (or as close as the envelope allows).
fn offer(dst: &str, size: usize) -> Message {
    let probe = 100;
    let envelope = OfferBuilder::new(dst, probe).build(0).len() - probe;
    OfferBuilder::new(dst, size.saturating_sub(envelope).max(16)).build(0)
}

pub async fn run(ctx: &Ctx, a: &AttackArgs) -> Result<Map<String, Value>> {
    let dur = secs(a.secs, "--secs")?;
    if a.rate.is_nan() || a.rate <= 0.0 || a.targets == 0 || a.conns == 0 {
        bail!("--rate, --targets and --conns must be positive");
    }
    if a.target_reads.is_nan() || a.target_reads <= 0.0 {
        bail!("--target-reads must be positive");
    }
    let counts = Arc::new(Counts::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();

    let target_ids: Vec<String> = (0..a.targets)
        .map(|k| format!("{}t{k}", ctx.id_prefix))
        .collect();
    let (targets, failed, err) = ctx.open_many(&target_ids, READ_BUF).await;
    if failed > 0 {
        bail!(
            "{failed} targets failed to open: {}",
            err.unwrap_or_default()
        );
    }
    let read_every = Duration::from_secs_f64(1.0 / a.target_reads);
    for (k, ws) in targets.into_iter().flatten().enumerate() {
        let slot = TargetSlot {
            target: ctx.target.clone(),
            idx: a.conns + k,
            id: target_ids[k].clone(),
            open_timeout: ctx.open_timeout,
        };
        tasks.spawn(slow_target(
            slot,
            ws,
            read_every,
            counts.clone(),
            stop_rx.clone(),
        ));
    }

    let ids: Vec<String> = (0..a.conns)
        .map(|i| format!("{}x{i}", ctx.id_prefix))
        .collect();
    let t_open = Instant::now();
    let (socks, open_failures, open_err) = ctx.open_many(&ids, READ_BUF).await;
    let opened = socks.iter().filter(|s| s.is_some()).count();
    eprintln!(
        "attack: {opened} attackers open ({open_failures} failed) in {:.1}s, {} slow targets; \
         sending {} B at {}/s each for {dur:?}",
        t_open.elapsed().as_secs_f64(),
        a.targets,
        a.size,
        a.rate
    );
    let msgs: Vec<Message> = target_ids.iter().map(|t| offer(t, a.size)).collect();
    let size = msgs.first().map_or(0, Message::len);
    let period = Duration::from_secs_f64(1.0 / a.rate);
    let s1 = ctx.probe.snap();
    let t1 = Instant::now();
    for (i, ws) in socks.into_iter().enumerate() {
        if let Some(ws) = ws {
            let msg = msgs[i % msgs.len()].clone();
            tasks.spawn(attacker(ws, msg, period, counts.clone(), stop_rx.clone()));
        }
    }
    sleep(dur).await;
    let s2 = ctx.probe.snap();
    let wall = t1.elapsed().as_secs_f64();
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.abort_all();

    let sent = counts.sent.load(Ordering::Relaxed);
    let mut out = Map::new();
    out.insert("conns".into(), json!(a.conns));
    out.insert("opened".into(), json!(opened));
    out.insert("open_failures".into(), json!(open_failures));
    out.insert("targets".into(), json!(a.targets));
    out.insert("msg_bytes".into(), json!(size));
    out.insert("rate_per_conn".into(), json!(a.rate));
    out.insert("secs".into(), json!(round2(wall)));
    out.insert("sent".into(), json!(sent));
    out.insert("sent_per_s".into(), json!(round2(sent as f64 / wall)));
    out.insert(
        "sent_mib_per_s".into(),
        json!(round2(sent as f64 * size as f64 / wall / 1_048_576.0)),
    );
    out.insert(
        "allowed_per_s".into(),
        json!(round2(opened as f64 * a.rate)),
    );
    out.insert(
        "attackers_closed".into(),
        json!(counts.closed.load(Ordering::Relaxed)),
    );
    out.insert(
        "target_kicks".into(),
        json!(counts.kicks.load(Ordering::Relaxed)),
    );
    out.insert(
        "target_reads".into(),
        json!(counts.reads.load(Ordering::Relaxed)),
    );
    window_figures(&s1, &s2, sent, &mut out);
    if let Some(e) = open_err {
        out.insert("first_error".into(), json!(e));
    }
    Ok(out)
}

/// Sends `msg` every `period` until told to stop, reading and discarding replies.
async fn attacker(
    mut ws: Ws,
    msg: Message,
    period: Duration,
    counts: Arc<Counts>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = interval(period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {
                if ws.send(msg.clone()).await.is_err() {
                    counts.closed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                counts.sent.fetch_add(1, Ordering::Relaxed);
            }
            m = ws.next() => if let Event::Closed(_) = classify(m) {
                counts.closed.fetch_add(1, Ordering::Relaxed);
                return;
            },
        }
    }
}

#[derive(Debug)]
struct TargetSlot {
    target: Arc<Target>,
    idx: usize,
    id: String,
    open_timeout: Duration,
}

/// Reads one message per `every`; reconnects as the same id whenever the broker closes it.
async fn slow_target(
    slot: TargetSlot,
    ws: Ws,
    every: Duration,
    counts: Arc<Counts>,
    mut stop: watch::Receiver<bool>,
) {
    let mut ws = Some(ws);
    let mut tick = interval(every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {}
        }
        let Some(sock) = ws.as_mut() else {
            // Closed: the old registration may linger a moment, so retry on the next tick.
            ws = slot
                .target
                .open(slot.idx, &slot.id, READ_BUF, slot.open_timeout)
                .await
                .ok();
            continue;
        };
        match classify(sock.next().await) {
            Event::Closed(_) => {
                counts.kicks.fetch_add(1, Ordering::Relaxed);
                ws = None;
            }
            _ => {
                counts.reads.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
