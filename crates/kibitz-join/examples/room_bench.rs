//! A room of N Rust participants in one process against a running broker: time from launch
//! to full roster, idle CPU and memory per participant, chat fan-out latency p50/p99.
//! Run by `bench/room.sh`, which starts the broker and compares N against a 2-person room
//! in the same run.
//!
//! `room_bench <ws://host:port> <participants> <messages>`
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kibitz_client::{Event, Lane, RoomConfig};
use kibitz_join::select::broker_from;
use kibitz_join::{RoomHandle, RoomOptions};
use kibitz_proto::content::Content;
use kibitz_rtc::Identity;
use tokio::sync::mpsc;

fn proc_stat() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15 of the whole line; 12 and 13 after the `)`.
    let ticks = fields
        .get(11)
        .and_then(|x| x.parse::<u64>().ok())
        .unwrap_or(0)
        + fields
            .get(12)
            .and_then(|x| x.parse::<u64>().ok())
            .unwrap_or(0);
    (rss_kib, ticks)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let broker = broker_from(args.get(1).map_or("ws://127.0.0.1:9000", String::as_str))?;
    let n: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(20);
    let messages: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(50);
    let room = format!("bench-{}-{}", n, std::process::id());
    let (rss0, _) = proc_stat();

    let t0 = Instant::now();
    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, Instant, Event)>();
    let mut handles: Vec<RoomHandle> = Vec::new();
    for i in 0..n {
        let mut cfg = RoomConfig::new(&room, &format!("p{i}"), &format!("tok-{i}"));
        cfg.seed = i as u64 + 1;
        let opts = RoomOptions {
            media_relay: None,
            broker: broker.clone(),
            relay: None,
            identity: Identity::generate()?,
        };
        let (h, mut ev) = kibitz_join::start(cfg, opts);
        h.join();
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(e) = ev.recv().await {
                if tx.send((i, Instant::now(), e)).is_err() {
                    break;
                }
            }
        });
        handles.push(h);
        if i == 0 {
            // The first claims the room; the rest arrive together.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    let mut full = vec![false; n];
    let mut last_full = Instant::now();
    while full.iter().any(|f| !f) {
        let Ok(Some((i, at, e))) = tokio::time::timeout(Duration::from_secs(120), rx.recv()).await
        else {
            panic!("rosters did not converge: {full:?}");
        };
        if let Event::Participants(p) = e {
            full[i] = p.len() == n;
            last_full = at;
        }
    }
    let converge = last_full - t0;
    // The mesh is complete once everyone has both channels (sig and bulk) open to everyone
    // and a chat reaches them all.
    for (i, h) in handles.iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let links = h.mesh_links().await?;
            let open = |lane| links.iter().filter(|l| l.open && l.lane == lane).count();
            if open(Lane::Sig) == n - 1 && open(Lane::Bulk) == n - 1 {
                break;
            }
            assert!(Instant::now() < deadline, "mesh incomplete at p{i}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        while h.chat("warm-up", None).await? != Ok(n - 1) {
            assert!(Instant::now() < deadline, "mesh incomplete at p{i}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let mesh = t0.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    while rx.try_recv().is_ok() {}

    // Idle: heartbeats, roster ticks, re-announces.
    let (rss1, ticks0) = proc_stat();
    let idle = Duration::from_secs(10);
    let t_idle = Instant::now();
    let drain = async { while rx.recv().await.is_some() {} };
    let _ = tokio::time::timeout(idle, drain).await;
    let (rss2, ticks1) = proc_stat();
    let hz = 100.0;
    let cpu_pct = (ticks1 - ticks0) as f64 / hz / t_idle.elapsed().as_secs_f64() * 100.0;

    // Fan-out: each message from a rotating sender reaches the n - 1 others.
    let mut sent_at: BTreeMap<String, Instant> = BTreeMap::new();
    let mut lat = Vec::new();
    for m in 0..messages {
        let text = format!("m{m}");
        sent_at.insert(text.clone(), Instant::now());
        handles[m % n].chat(&text, None).await??;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let want = messages * (n - 1);
    let deadline = Instant::now() + Duration::from_secs(30);
    while lat.len() < want && Instant::now() < deadline {
        let Ok(Some((_, at, e))) = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await
        else {
            break;
        };
        if let Event::Message(msg) = e
            && let Content::Chat(c) = msg.content
            && let Some(t) = sent_at.get(&c.text)
        {
            lat.push((at - *t).as_secs_f64() * 1000.0);
        }
    }
    lat.sort_by(f64::total_cmp);
    println!(
        "participants={n} roster_full_ms={} mesh_full_ms={} rss_per_participant_kib={} idle_cpu_pct_per_participant={:.3} fanout_deliveries={}/{want} fanout_p50_ms={:.2} fanout_p99_ms={:.2}",
        converge.as_millis(),
        mesh.as_millis(),
        (rss2.max(rss1) - rss0) / n as u64,
        cpu_pct / n as f64,
        lat.len(),
        pct(&lat, 0.5),
        pct(&lat, 0.99),
    );
    for h in &handles {
        h.leave().await;
    }
    Ok(())
}
