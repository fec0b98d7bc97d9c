//! `hub_load`: many cheap hub clients for bench/hub.sh. Each session is what a browser does
//! (LAN.md §3): a str0m offerer with one data channel `hub`, the hub's answer synthesised from
//! the blob ([`kibitz_proto::lan::synthesize_answer`]), its own UDP socket on 127.0.0.1.
//! Chromium caps peer connections per page and each costs far more, so this is how the
//! benchmark holds hundreds of sessions and drives the hub harder than pages can.
//!
//! Phases: (b) open `--sessions` (`--concurrency` at a time; setRemoteDescription-equivalent
//! → `id` latency), hold them `--hold-secs` (hub RSS per session, idle CPU); (c) the first
//! `--senders` join one room and each sends `--frames` `to` the next (frames/s, hub CPU per
//! frame). Prints a table and one `RESULT {json}` line.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use kibitz_proto::lan::{Blob, parse_blob, synthesize_answer};
use serde_json::{Value, json};
use str0m::change::SdpAnswer;
use str0m::channel::ChannelId;
use str0m::crypto::CryptoProvider;
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, sleep, sleep_until, timeout};

#[derive(Debug, Parser)]
#[command(about = "Hub sessions on str0m for bench/hub.sh")]
struct Args {
    /// The hub's blob (its `BLOB` line).
    #[arg(long)]
    blob: String,
    /// The hub's pid, sampled in /proc for RSS and CPU.
    #[arg(long)]
    hub_pid: u32,
    /// Sessions to open and hold at once.
    #[arg(long, default_value_t = 500)]
    sessions: usize,
    /// Sessions connecting at a time.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// How long to hold them all (the idle-CPU window).
    #[arg(long, default_value_t = 10.0)]
    hold_secs: f64,
    /// Sessions that join one room and send (the routing phase; 0 skips it).
    #[arg(long, default_value_t = 4)]
    senders: usize,
    /// Frames each sender sends `to` the next sender.
    #[arg(long, default_value_t = 50_000)]
    frames: u64,
}

/// What a session is told to do.
#[derive(Debug)]
enum Cmd {
    /// Send a text frame.
    Text(String),
    /// Send `count` `to` frames with `{seq}` payloads to `dst`, then report on the oneshot.
    Seq {
        dst: u64,
        count: u64,
        done: oneshot::Sender<()>,
    },
    /// Ask `peers`; the count of ids in the answer on the oneshot.
    Peers(oneshot::Sender<usize>),
    /// Report (frames from `src` received, out of order) on the oneshot.
    Count {
        src: u64,
        reply: oneshot::Sender<(u64, u64)>,
    },
}

/// A connected session: its hub id and the way to command it.
struct Session {
    id: u64,
    tx: mpsc::UnboundedSender<Cmd>,
}

/// Connects one session; resolves once `id` arrives with (id, ms from accepting the answer).
async fn connect(
    blob: Arc<Blob>,
    provider: Arc<CryptoProvider>,
    ready: oneshot::Sender<Result<(u64, f64)>>,
    cmds: mpsc::UnboundedReceiver<Cmd>,
) {
    let r = run_session(&blob, provider, ready, cmds).await;
    if let Err(e) = r {
        eprintln!("session ended: {e:#}");
    }
}

async fn run_session(
    blob: &Blob,
    provider: Arc<CryptoProvider>,
    ready: oneshot::Sender<Result<(u64, f64)>>,
    mut cmds: mpsc::UnboundedReceiver<Cmd>,
) -> Result<()> {
    let sock = UdpSocket::bind("127.0.0.1:0").await.context("bind")?;
    let local = sock.local_addr()?;
    let mut rtc = Rtc::builder()
        .set_crypto_provider(provider)
        .build(wall_now());
    rtc.add_local_candidate(Candidate::host(local, "udp").context("candidate")?);
    let mut api = rtc.sdp_api();
    let cid: ChannelId = api.add_channel("hub".into());
    let (offer, pending) = api.apply().context("no offer")?;
    let answer = synthesize_answer(&offer.to_sdp_string(), blob);
    let answer = SdpAnswer::from_sdp_string(&answer).context("answer")?;
    let t0 = Instant::now();
    rtc.sdp_api()
        .accept_answer(pending, answer)
        .context("accept answer")?;

    let mut ready = Some(ready);
    let mut my_id: Option<u64> = None;
    let mut open = false;
    // Outgoing frames waiting for SCTP buffer room, and the pending numbered run.
    let mut queue: std::collections::VecDeque<String> = Default::default();
    let mut seq: Option<(u64, u64, u64, oneshot::Sender<()>)> = None; // dst, next, count, done
    let mut got: std::collections::BTreeMap<u64, (u64, i64, u64)> = Default::default(); // src -> n, last, disorder
    let mut peers_waiting: std::collections::VecDeque<oneshot::Sender<usize>> = Default::default();
    let mut buf = vec![0u8; 2000];
    let deadline = t0 + Duration::from_secs(15);
    loop {
        // Write what SCTP takes.
        if open {
            while let Some(mut ch) = rtc.channel(cid) {
                if ch.buffered_amount() > 256 * 1024 {
                    break;
                }
                let text = match queue.pop_front() {
                    Some(t) => t,
                    None => match seq.as_mut() {
                        Some((dst, next, count, _)) if *next < *count => {
                            *next += 1;
                            format!(
                                r#"{{"t":"to","id":{dst},"payload":{{"seq":{}}}}}"#,
                                *next - 1
                            )
                        }
                        _ => break,
                    },
                };
                if !ch.write(false, text.as_bytes())? {
                    queue.push_front(text);
                    break;
                }
            }
            if let Some((_, next, count, _)) = seq.as_ref()
                && next >= count
                && queue.is_empty()
                && rtc
                    .channel(cid)
                    .is_some_and(|mut c| c.buffered_amount() == 0)
                && let Some((_, _, _, done)) = seq.take()
            {
                let _ = done.send(());
            }
        }
        let wake = loop {
            match rtc.poll_output()? {
                Output::Timeout(t) => break t,
                Output::Transmit(t) => {
                    let _ = sock.send_to(&t.contents, t.destination).await;
                }
                Output::Event(Event::ChannelOpen(..)) => open = true,
                Output::Event(Event::ChannelData(d)) => {
                    open = true;
                    let Ok(v) = serde_json::from_slice::<Value>(&d.data) else {
                        continue;
                    };
                    if my_id.is_none() && v["t"] == "id" {
                        my_id = v["id"].as_u64();
                        if let (Some(id), Some(r)) = (my_id, ready.take()) {
                            let _ = r.send(Ok((id, t0.elapsed().as_secs_f64() * 1000.0)));
                        }
                    } else if v["t"] == "peers" {
                        if let Some(r) = peers_waiting.pop_front() {
                            let _ = r.send(v["ids"].as_array().map_or(0, Vec::len));
                        }
                    } else if v["t"] == "from"
                        && let Some(src) = v["id"].as_u64()
                    {
                        let e = got.entry(src).or_insert((0, -1, 0));
                        e.0 += 1;
                        if let Some(s) = v["payload"]["seq"].as_i64() {
                            if s != e.1 + 1 {
                                e.2 += 1;
                            }
                            e.1 = s;
                        }
                    }
                }
                Output::Event(Event::ChannelClose(_)) | Output::Event(Event::Closed) => {
                    bail!("hub closed the session")
                }
                Output::Event(_) => {}
            }
        };
        if my_id.is_none() && Instant::now() > deadline {
            if let Some(r) = ready.take() {
                let _ = r.send(Err(anyhow::anyhow!("no id within 15 s")));
            }
            bail!("no id");
        }
        let wake = Instant::from_std(wake);
        tokio::select! {
            r = sock.recv_from(&mut buf) => {
                let (n, source): (usize, SocketAddr) = r?;
                if let Ok(rcv) = Receive::new(Protocol::Udp, source, local, &buf[..n]) {
                    rtc.handle_input(Input::Receive(wall_now(), rcv))?;
                }
            }
            _ = sleep_until(wake) => {
                rtc.handle_input(Input::Timeout(wall_now()))?;
            }
            c = cmds.recv() => match c {
                None => return Ok(()),
                Some(Cmd::Text(t)) => queue.push_back(t),
                Some(Cmd::Peers(r)) => {
                    peers_waiting.push_back(r);
                    queue.push_back(r#"{"t":"peers"}"#.into());
                }
                Some(Cmd::Seq { dst, count, done }) => seq = Some((dst, 0, count, done)),
                Some(Cmd::Count { src, reply }) => {
                    let e = got.get(&src).copied().unwrap_or((0, -1, 0));
                    let _ = reply.send((e.0, e.2));
                }
            },
        }
    }
}

/// str0m's clock: this is a driver, not an engine, so it reads the real one.
#[allow(clippy::disallowed_methods)]
fn wall_now() -> std::time::Instant {
    std::time::Instant::now()
}

fn proc_sample(pid: u32) -> Result<(u64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("VmRSS")?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rfind(')').context("stat")?;
    let f: Vec<&str> = stat[after + 2..].split(' ').collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Linux's USER_HZ is 100 on every architecture we run on.
    Ok((rss, ticks / 100.0))
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[i.clamp(1, sorted.len()) - 1]
}

async fn run(a: Args) -> Result<()> {
    let blob = Arc::new(parse_blob(&a.blob).context("--blob")?);
    let provider = Arc::new(str0m::crypto::from_feature_flags());
    let mut rows: Vec<(String, String)> = Vec::new();
    let (rss0, _) = proc_sample(a.hub_pid)?;

    // (b) open and hold.
    let t0 = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(a.concurrency.max(1)));
    let mut waits = Vec::new();
    for _ in 0..a.sessions {
        let permit = sem.clone().acquire_owned().await?;
        let (rtx, rrx) = oneshot::channel();
        let (tx, crx) = mpsc::unbounded_channel();
        tokio::spawn(connect(blob.clone(), provider.clone(), rtx, crx));
        waits.push(tokio::spawn(async move {
            let r = rrx.await;
            drop(permit);
            (r, tx)
        }));
    }
    let mut sessions: Vec<Session> = Vec::new();
    let mut ms = Vec::new();
    let mut failed = 0;
    let mut first_err = None;
    for w in waits {
        match w.await? {
            (Ok(Ok((id, t))), tx) => {
                ms.push(t);
                sessions.push(Session { id, tx });
            }
            (Ok(Err(e)), _) => {
                failed += 1;
                first_err.get_or_insert(format!("{e:#}"));
            }
            (Err(_), _) => failed += 1,
        }
    }
    let setup = t0.elapsed().as_secs_f64();
    ms.sort_by(f64::total_cmp);
    rows.push((
        format!("(b) str0m sessions opened ({} at a time)", a.concurrency),
        format!(
            "{} of {} in {setup:.1} s (failed {failed}{}); id p50 {:.1} ms, p99 {:.1} ms",
            sessions.len(),
            a.sessions,
            first_err.map(|e| format!(": {e}")).unwrap_or_default(),
            pct(&ms, 50.0),
            pct(&ms, 99.0)
        ),
    ));
    sleep(Duration::from_secs(1)).await;
    let (rss1, c0) = proc_sample(a.hub_pid)?;
    let hold = Duration::from_secs_f64(a.hold_secs.max(0.5));
    sleep(hold).await;
    let (rss2, c1) = proc_sample(a.hub_pid)?;
    let per = if sessions.is_empty() {
        0.0
    } else {
        (rss2 as f64 - rss0 as f64) / sessions.len() as f64
    };
    rows.push((
        "(b) hub RSS before / holding them / per session".into(),
        format!(
            "{:.1} MiB / {:.1} MiB (after {:.0} s: {:.1} MiB) / {per:.1} KiB",
            rss0 as f64 / 1024.0,
            rss1 as f64 / 1024.0,
            hold.as_secs_f64(),
            rss2 as f64 / 1024.0
        ),
    ));
    rows.push((
        "(b) hub CPU holding them idle".into(),
        format!("{:.1} % of a core", (c1 - c0) / hold.as_secs_f64() * 100.0),
    ));

    // (c) routing among the first `senders`.
    let mut routed_json = json!(null);
    let k = a.senders.min(sessions.len());
    if k >= 2 {
        for s in &sessions[..k] {
            let _ =
                s.tx.send(Cmd::Text(r#"{"t":"join","room":"bench"}"#.into()));
        }
        // `join` has no reply; a `peers` after it is answered after it, so every session seeing
        // the whole room means every join has landed.
        for s in &sessions[..k] {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let (ptx, prx) = oneshot::channel();
                let _ = s.tx.send(Cmd::Peers(ptx));
                let n = timeout(Duration::from_secs(10), prx).await??;
                if n == k {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("room has {n} members, not {k}");
                }
                sleep(Duration::from_millis(20)).await;
            }
        }
        let (_, c0) = proc_sample(a.hub_pid)?;
        let r0 = Instant::now();
        let mut dones = Vec::new();
        for i in 0..k {
            let (dtx, drx) = oneshot::channel();
            let dst = sessions[(i + 1) % k].id;
            let _ = sessions[i].tx.send(Cmd::Seq {
                dst,
                count: a.frames,
                done: dtx,
            });
            dones.push(drx);
        }
        let want = a.frames * k as u64;
        let mut last = 0;
        let mut stall = Instant::now();
        let (routed, disorder) = loop {
            let mut total = 0;
            let mut disorder = 0;
            for i in 0..k {
                let (rtx, rrx) = oneshot::channel();
                let src = sessions[(i + k - 1) % k].id;
                let _ = sessions[i].tx.send(Cmd::Count { src, reply: rtx });
                if let Ok(Ok((n, d))) = timeout(Duration::from_secs(5), rrx).await {
                    total += n;
                    disorder += d;
                }
            }
            if total >= want || stall.elapsed() > Duration::from_secs(30) {
                break (total, disorder);
            }
            if total != last {
                last = total;
                stall = Instant::now();
            }
            sleep(Duration::from_millis(10)).await;
        };
        let secs = r0.elapsed().as_secs_f64();
        let (_, c1) = proc_sample(a.hub_pid)?;
        let cpu = c1 - c0;
        rows.push((
            format!("(c) routing: {k} str0m senders in one room, {} frames each", a.frames),
            format!(
                "{routed} of {want} arrived (out of order {disorder}) in {secs:.2} s: {:.0} frames/s",
                routed as f64 / secs
            ),
        ));
        rows.push((
            "(c) hub CPU while routing".into(),
            format!(
                "{cpu:.2} s = {:.1} µs per frame, {:.0} % of a core",
                cpu / routed.max(1) as f64 * 1e6,
                cpu / secs * 100.0
            ),
        ));
        routed_json = json!({"senders": k, "frames": want, "routed": routed, "secs": secs,
            "hub_cpu_secs": cpu, "out_of_order": disorder});
    }
    let w = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    for (k, v) in &rows {
        println!("{k:w$}  {v}");
    }
    println!(
        "RESULT {}",
        json!({"sessions": sessions.len(), "failed": failed, "id_ms_p50": pct(&ms, 50.0),
            "id_ms_p99": pct(&ms, 99.0), "rss_kib_before": rss0, "rss_kib_held": rss2,
            "routing": routed_json})
    );
    Ok(())
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hub_load: runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hub_load: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
