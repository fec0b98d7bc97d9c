//! `connect`: closed-loop connects. Each worker opens a socket (TCP, optional PROXY header or
//! `X-Forwarded-For`, WebSocket upgrade, wait for OPEN), closes it, and starts the next:
//! the broker's connect throughput.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Args;
use serde_json::{Map, Value, json};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::net::close_quietly;
use crate::probe::{Tally, gather, percentiles, record_us, round2, window_figures};
use crate::{Ctx, secs};

#[derive(Debug, Args)]
pub struct ConnectArgs {
    /// Connections opened at once, each worker one after another.
    #[arg(long, default_value_t = 32)]
    workers: usize,
    /// The measured window.
    #[arg(long, default_value_t = 10.0)]
    secs: f64,
    /// Connect this long first, unmeasured.
    #[arg(long, default_value_t = 1.0)]
    warmup_secs: f64,
}

const READ_BUF: usize = 4096;

pub async fn run(ctx: &Ctx, a: &ConnectArgs) -> Result<Map<String, Value>> {
    if a.workers == 0 {
        bail!("--workers must be at least 1");
    }
    let dur = secs(a.secs, "--secs")?;
    let warmup = secs(a.warmup_secs, "--warmup-secs")?;
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks: JoinSet<Result<Tally>> = JoinSet::new();
    for _ in 0..a.workers {
        let (ctx, measuring, stop, next) =
            (ctx.clone(), measuring.clone(), stop.clone(), next.clone());
        tasks.spawn(async move {
            let mut t = Tally::new()?;
            while !stop.load(Ordering::Relaxed) {
                let idx = next.fetch_add(1, Ordering::Relaxed);
                let id = format!("{}k{idx}", ctx.id_prefix);
                let start = Instant::now();
                let r = ctx.target.open(idx, &id, READ_BUF, ctx.open_timeout).await;
                let nanos = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
                let counted = measuring.load(Ordering::Relaxed) && !stop.load(Ordering::Relaxed);
                match r {
                    Ok(ws) => {
                        if counted {
                            t.done += 1;
                            record_us(&mut t.hist, nanos);
                        }
                        close_quietly(ws, Duration::from_secs(2)).await;
                    }
                    Err(e) if counted => {
                        t.errors += 1;
                        t.first_err.get_or_insert_with(|| format!("{e:#}"));
                    }
                    Err(_) => {}
                }
            }
            Ok(t)
        });
    }
    tokio::time::sleep(warmup).await;
    let s1 = ctx.probe.snap();
    let t1 = Instant::now();
    measuring.store(true, Ordering::Relaxed);
    tokio::time::sleep(dur).await;
    stop.store(true, Ordering::Relaxed);
    let wall = t1.elapsed().as_secs_f64();
    let s2 = ctx.probe.snap();

    let all = gather(&mut tasks, ctx.open_timeout + Duration::from_secs(5)).await?;
    let opens = all.done;

    let mut out = Map::new();
    out.insert("workers".into(), json!(a.workers));
    out.insert("secs".into(), json!(a.secs));
    out.insert("opens".into(), json!(opens));
    out.insert("errors".into(), json!(all.errors));
    out.insert("opens_per_s".into(), json!(round2(opens as f64 / wall)));
    percentiles("open", &all.hist, &mut out);
    window_figures(&s1, &s2, opens, &mut out);
    if let Some(e) = all.first_err {
        out.insert("first_error".into(), json!(e));
    }
    Ok(out)
}
