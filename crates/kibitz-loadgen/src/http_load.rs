//! `http`: closed-loop HTTP GETs on one path (`/api/turn`), each worker on its own
//! connection, reconnecting every `--requests-per-conn` requests. Unlike `wrk`, it can open
//! every connection with a PROXY protocol header (`--proxied v1|v2`), so a new connection per
//! request measures what that header costs. The header goes out with the first request (the
//! server's cost of reading it) unless `--proxy-header-alone` (as HAProxy and nginx send it,
//! on connect, ahead of the client's bytes).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::{Map, Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::probe::{Tally, gather, percentiles, record_us, round2, window_figures};
use crate::{Ctx, secs};

#[derive(Debug, Args)]
pub struct HttpArgs {
    /// The path to GET.
    #[arg(long, default_value = "/api/turn")]
    path: String,
    /// Connections in use at once.
    #[arg(long, default_value_t = 32)]
    workers: usize,
    /// Requests on a connection before it is closed and a new one opened (1: a connection
    /// per request).
    #[arg(long, default_value_t = 1)]
    requests_per_conn: usize,
    /// The measured window.
    #[arg(long, default_value_t = 10.0)]
    secs: f64,
    /// Run this long first, unmeasured.
    #[arg(long, default_value_t = 1.0)]
    warmup_secs: f64,
}

/// One GET on `s`; `Ok(status)` once the whole response is read. With `close`, asks the
/// server to close after it.
async fn get(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
    path: &str,
    xff: Option<&str>,
    close: bool,
    first: &[u8],
) -> Result<u16> {
    let mut req = first.to_vec();
    req.extend_from_slice(format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n").as_bytes());
    if let Some(x) = xff {
        req.extend_from_slice(format!("X-Forwarded-For: {x}\r\n").as_bytes());
    }
    if close {
        req.extend_from_slice(b"Connection: close\r\n");
    }
    req.extend_from_slice(b"\r\n");
    s.write_all(&req).await.context("write")?;
    buf.clear();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 64 * 1024 {
            bail!("response head too long");
        }
        if s.read_buf(buf).await.context("read")? == 0 {
            bail!("connection closed mid-response");
        }
    };
    let head = std::str::from_utf8(&buf[..head_end]).context("response head")?;
    let status: u16 = head
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .context("status line")?;
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .context("no content-length")?;
    while buf.len() < head_end + len {
        if s.read_buf(buf).await.context("read body")? == 0 {
            bail!("connection closed mid-body");
        }
    }
    Ok(status)
}

pub async fn run(ctx: &Ctx, a: &HttpArgs) -> Result<Map<String, Value>> {
    if a.workers == 0 || a.requests_per_conn == 0 {
        bail!("--workers and --requests-per-conn must be at least 1");
    }
    let dur = secs(a.secs, "--secs")?;
    let warmup = secs(a.warmup_secs, "--warmup-secs")?;
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicUsize::new(0));
    let path: Arc<str> = a.path.as_str().into();
    let per_conn = a.requests_per_conn;
    let mut tasks: JoinSet<Result<Tally>> = JoinSet::new();
    for _ in 0..a.workers {
        let (ctx, measuring, stop, next, path) = (
            ctx.clone(),
            measuring.clone(),
            stop.clone(),
            next.clone(),
            path.clone(),
        );
        tasks.spawn(async move {
            let mut t = Tally::new()?;
            let mut buf = Vec::with_capacity(4096);
            while !stop.load(Ordering::Relaxed) {
                let idx = next.fetch_add(1, Ordering::Relaxed);
                let xff = ctx.target.forwarded_for(idx);
                let mut conn: Option<TcpStream> = None;
                for i in 0..per_conn {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let start = Instant::now();
                    let r = async {
                        let (s, first) = match conn.as_mut() {
                            Some(s) => (s, Vec::new()),
                            None => {
                                let (s, header) = ctx.target.tcp_deferred(idx).await?;
                                (conn.insert(s), header)
                            }
                        };
                        let close = i + 1 == per_conn;
                        get(s, &mut buf, &path, xff.as_deref(), close, &first).await
                    }
                    .await;
                    let nanos = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
                    let counted =
                        measuring.load(Ordering::Relaxed) && !stop.load(Ordering::Relaxed);
                    match r {
                        Ok(200) if counted => {
                            t.done += 1;
                            record_us(&mut t.hist, nanos);
                        }
                        Ok(200) => {}
                        Ok(status) => {
                            if counted {
                                t.errors += 1;
                                t.first_err.get_or_insert(format!("status {status}"));
                            }
                            break;
                        }
                        Err(e) => {
                            if counted {
                                t.errors += 1;
                                t.first_err.get_or_insert_with(|| format!("{e:#}"));
                            }
                            break;
                        }
                    }
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

    let all = gather(&mut tasks, Duration::from_secs(10)).await?;
    let ok = all.done;

    let mut out = Map::new();
    out.insert("path".into(), json!(a.path));
    out.insert("workers".into(), json!(a.workers));
    out.insert("requests_per_conn".into(), json!(a.requests_per_conn));
    out.insert("secs".into(), json!(a.secs));
    out.insert("requests".into(), json!(ok));
    out.insert("errors".into(), json!(all.errors));
    out.insert("rps".into(), json!(round2(ok as f64 / wall)));
    percentiles("req", &all.hist, &mut out);
    window_figures(&s1, &s2, ok, &mut out);
    if let Some(e) = all.first_err {
        out.insert("first_error".into(), json!(e));
    }
    Ok(out)
}
