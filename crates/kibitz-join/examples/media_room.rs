//! The media benchmark: a room of N Rust participants with audio on every member (each
//! sends one Opus stream, a tone, to the N - 1 others and receives N - 1), one process per
//! participant against a `kibitz signal` broker, all on 127.0.0.1. Prints, for a 2-person
//! baseline and the N-person room in the same run: CPU per participant (% of one core over
//! the window, from /proc/PID/stat), RSS per participant (VmRSS), the broker's CPU, and
//! mouth-to-ear latency: a click injected at a rotating sender about once a second, found in
//! every other member's decoded PCM.
//!
//! Latency is `(receiver's wall time when the decoded frame came out of the jitter buffer +
//! the click's sample offset in it / 48 kHz) - (sender's wall time of the click request)`,
//! both `SystemTime` on one machine. It is made of: the wait for the sender's next 20 ms
//! frame (0-20 ms, what a capture buffer costs), encode, SRTP and UDP on loopback, the
//! receiver's jitter-buffer target delay (30 ms), the receiver's 10 ms playout tick
//! (0-10 ms), decode, and Opus's own algorithmic delay (a few ms of sample offset).
//!
//!   media_room [--participants N] [--baseline B] [--secs S] [--clicks C] [--kibitz PATH]
//!              [--runtime multi|current]   the members' tokio runtime (multi: as `kibitz join`)
//!   media_room --smoke            N=3 only, 4 s, 4 clicks: it runs and prints figures
//!
//! `bench/media.sh` builds and runs it in release mode. The participants are this same
//! binary in `member` mode (`media_room member PORT ROOM INDEX`), talking JSON lines on
//! stdin/stdout to the coordinator.
#![allow(clippy::disallowed_methods)] // a benchmark reads the clock

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kibitz_client::{MediaLane, RoomConfig};
use kibitz_join::RoomOptions;
use kibitz_join::media::{MediaConfig, PcmFrame};
use kibitz_media::{AudioSource, SAMPLE_RATE, find_click};
use kibitz_rtc::{BrokerConfig, Identity};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Clock ticks per second of /proc/PID/stat (USER_HZ, 100 on every Linux we run on).
const HZ: f64 = 100.0;
/// How long a room may take from launch to every link open with audio flowing.
const WARMUP_LIMIT: Duration = Duration::from_secs(120);
/// A click heard later than this after it was sent is not that click (clicks come about 1 s
/// apart, from a rotating sender).
const MATCH_WINDOW_US: u64 = 1_000_000;

fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("member") {
        // Members run on what `kibitz join` runs on (a multi-thread runtime), unless the
        // coordinator was given `--runtime current`.
        let rt = if std::env::var("MEDIA_ROOM_RUNTIME").as_deref() == Ok("current") {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
        } else {
            tokio::runtime::Runtime::new()?
        };
        let port: u16 = args.get(1).ok_or("member PORT")?.parse()?;
        let room = args.get(2).ok_or("member ROOM")?.clone();
        let index: usize = args.get(3).ok_or("member INDEX")?.parse()?;
        return rt.block_on(member(port, room, index));
    }
    tokio::runtime::Runtime::new()?.block_on(coordinator(args))
}

// ---------------------------------------------------------------------------------------
// A member: one participant, unmuted, sending a tone; reports clicks it hears.

#[derive(Default)]
struct Heard {
    /// Decoded mic frames per sender voiceId.
    frames: BTreeMap<String, u64>,
    /// When each sender's last click was found (one click spans two frames at most).
    last_click: BTreeMap<String, Instant>,
}

async fn member(port: u16, room: String, index: usize) -> Res<()> {
    let mut cfg = RoomConfig::new(&room, &format!("m{index}"), &format!("tok-{index}"));
    cfg.seed = index as u64 + 1;
    cfg.media = true;
    let (pcm_tx, mut pcm_rx) = mpsc::channel::<PcmFrame>(1024);
    let media = MediaConfig {
        // A distinct tone each, at 0.3 of full scale: far below the click's threshold.
        audio_in: AudioSource::tone(300.0 + 40.0 * index as f32),
        muted: false,
        record: None,
        pcm: Some(pcm_tx),
        video: None,
    };
    let opts = RoomOptions {
        media_relay: None,
        broker: BrokerConfig::plain("127.0.0.1", port),
        relay: None,
        identity: Identity::generate()?,
    };
    let (h, mut events) = kibitz_join::start_with_media(cfg, opts, media);
    h.join();
    tokio::spawn(async move { while events.recv().await.is_some() {} });

    let heard = Arc::new(Mutex::new(Heard::default()));
    let heard2 = heard.clone();
    tokio::spawn(async move {
        while let Some(f) = pcm_rx.recv().await {
            // The frame leaves the jitter buffer now: this is when it would reach the ear.
            let at = unix_us();
            if f.lane != MediaLane::Mic {
                continue;
            }
            let Ok(mut s) = heard2.lock() else { return };
            *s.frames.entry(f.from.clone()).or_default() += 1;
            if let Some(off) = find_click(&f.samples) {
                let now = Instant::now();
                let fresh = s
                    .last_click
                    .get(&f.from)
                    .is_none_or(|t| now.duration_since(*t) > Duration::from_millis(300));
                s.last_click.insert(f.from.clone(), now);
                if fresh {
                    let at_us = at + off as u64 * 1_000_000 / u64::from(SAMPLE_RATE);
                    println!("{}", json!({"t": "heard", "from": f.from, "at_us": at_us}));
                }
            }
        }
    });

    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        match line.trim() {
            "click" => {
                let at_us = unix_us();
                h.inject_click();
                println!("{}", json!({"t": "click", "at_us": at_us}));
            }
            "status" => {
                let links = h.media_links().await?;
                let open = links.iter().filter(|l| l.open).count();
                let voice_id = h.voice_id().await?;
                let frames = heard.lock().map(|s| s.frames.clone()).unwrap_or_default();
                println!(
                    "{}",
                    json!({"t": "status", "voice_id": voice_id, "open": open,
                           "links": links.len(), "frames": frames})
                );
            }
            "quit" => break,
            _ => {}
        }
    }
    h.leave().await;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The coordinator: a broker, N members, warm-up, the window, the table.

struct Opts {
    participants: usize,
    baseline: usize,
    secs: u64,
    clicks: usize,
    smoke: bool,
    kibitz: PathBuf,
    /// The members' tokio runtime: `multi` (as `kibitz join`) or `current`.
    runtime: String,
}

fn parse(args: &[String]) -> Res<Opts> {
    let mut o = Opts {
        participants: 10,
        baseline: 2,
        secs: 30,
        clicks: 30,
        smoke: false,
        runtime: "multi".to_owned(),
        kibitz: std::env::var_os("KIBITZ_BIN").map_or_else(
            || {
                // target/<profile>/examples/media_room -> target/<profile>/kibitz
                std::env::current_exe()
                    .ok()
                    .and_then(|e| Some(e.parent()?.parent()?.join("kibitz")))
                    .unwrap_or_else(|| PathBuf::from("kibitz"))
            },
            PathBuf::from,
        ),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--participants" => o.participants = val()?.parse()?,
            "--baseline" => o.baseline = val()?.parse()?,
            "--secs" => o.secs = val()?.parse()?,
            "--clicks" => o.clicks = val()?.parse()?,
            "--kibitz" => o.kibitz = PathBuf::from(val()?),
            "--runtime" => match val()?.as_str() {
                r @ ("current" | "multi") => o.runtime = r.to_owned(),
                other => return Err(format!("--runtime current|multi, not {other}").into()),
            },
            "--smoke" => o.smoke = true,
            "-h" | "--help" => {
                println!(
                    "media_room [--participants N] [--baseline B] [--secs S] [--clicks C] [--kibitz PATH] [--runtime multi|current] [--smoke]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    if o.smoke {
        o.participants = 3;
        o.secs = 4;
        o.clicks = 4;
    }
    if o.participants < 2 || o.baseline < 2 || o.secs == 0 {
        return Err("a room needs at least 2 participants and a window of 1 s".into());
    }
    Ok(o)
}

/// utime + stime (clock ticks) and VmRSS (KiB) of a process.
fn proc_figures(pid: u32) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let f: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15 of the line; 12 and 13 after the `)`.
    let num = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    (num(11) + num(12), rss)
}

fn free_port() -> Res<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn pct(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    sorted
        .get(((sorted.len() as f64 - 1.0) * p).round() as usize)
        .copied()
}

struct Member {
    child: Child,
    stdin: ChildStdin,
    pid: u32,
}

impl Member {
    async fn say(&mut self, what: &str) -> Res<()> {
        self.stdin.write_all(format!("{what}\n").as_bytes()).await?;
        self.stdin.flush().await?;
        Ok(())
    }
}

/// What one room measured.
#[derive(Debug, Default)]
struct Figures {
    n: usize,
    warmup_s: f64,
    window_s: f64,
    cpu: Vec<f64>,
    rss_mib: Vec<f64>,
    broker_cpu: f64,
    broker_rss_mib: f64,
    lat_ms: Vec<f64>,
    clicks: usize,
    expected: usize,
    spurious: usize,
    spurious_after_ms: Vec<i64>,
    frames_per_stream_s: f64,
}

async fn coordinator(args: Vec<String>) -> Res<()> {
    let o = parse(&args)?;
    let exe = std::env::current_exe()?;
    if !o.kibitz.is_file() {
        return Err(format!(
            "{} missing: build kibitz-cli (cargo build -p kibitz-cli) or pass --kibitz",
            o.kibitz.display()
        )
        .into());
    }
    println!("load average before: {}", load_average());
    let sizes = if o.smoke {
        vec![o.participants]
    } else {
        vec![o.baseline, o.participants]
    };
    let mut all = Vec::new();
    for n in sizes {
        let f = run_room(&exe, &o, n).await?;
        println!("RESULT {}", result_json(&f));
        all.push(f);
    }
    println!("load average after: {}", load_average());
    print_table(&all);
    Ok(())
}

async fn run_room(exe: &std::path::Path, o: &Opts, n: usize) -> Res<Figures> {
    let port = free_port()?;
    let mut broker = Command::new(&o.kibitz)
        .args(["signal", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--per-ip-connections", "0", "--msg-rate", "1000000"])
        .args(["--msg-burst", "1000000", "--concurrent-limit", "100000"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let broker_pid = broker.id().ok_or("broker exited")?;
    let listening = async {
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(15), listening)
        .await
        .map_err(|_| "the broker did not listen")?;

    let room = format!("media-bench-{n}-{}", std::process::id());
    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, Value)>();
    let mut members = Vec::new();
    let t_launch = Instant::now();
    for i in 0..n {
        let mut child = Command::new(exe)
            .args(["member", &port.to_string(), &room, &i.to_string()])
            .env("MEDIA_ROOM_RUNTIME", &o.runtime)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let pid = child.id().ok_or("member exited")?;
        let stdin = child.stdin.take().ok_or("member stdin")?;
        let stdout = child.stdout.take().ok_or("member stdout")?;
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                if let Ok(v) = serde_json::from_str::<Value>(&l)
                    && tx.send((i, v)).is_err()
                {
                    break;
                }
            }
        });
        members.push(Member { child, stdin, pid });
        if i == 0 {
            // The first claims the room; the rest arrive together.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    // Warm-up: every link open, and audio from every other member still arriving.
    let mut last: Vec<Option<Value>> = vec![None; n];
    let mut voice: BTreeMap<String, usize> = BTreeMap::new();
    loop {
        if t_launch.elapsed() > WARMUP_LIMIT {
            let open: Vec<_> = last
                .iter()
                .map(|s| s.as_ref().map(|s| &s["open"]))
                .collect();
            return Err(format!("N={n}: links still not all open: {open:?}").into());
        }
        let prev = last.clone();
        let st = status_round(&mut members, &mut rx).await?;
        for (i, s) in st.iter().enumerate() {
            if let Some(v) = s["voice_id"].as_str() {
                voice.insert(v.to_owned(), i);
            }
            last[i] = Some(s.clone());
        }
        let flowing = (0..n).all(|i| {
            let (Some(now), Some(Some(before))) = (&last[i], prev.get(i)) else {
                return false;
            };
            let grew = now["frames"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .filter(|(k, v)| {
                            v.as_u64().unwrap_or(0)
                                >= before["frames"][k.as_str()].as_u64().unwrap_or(0) + 10
                        })
                        .count()
                })
                .unwrap_or(0);
            now["open"].as_u64() == Some(n as u64 - 1) && grew == n - 1
        });
        if flowing && voice.len() == n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let warmup = t_launch.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = status_round(&mut members, &mut rx).await?;
    let t_before = Instant::now();

    // The window: CPU over all of it; a click from a rotating sender every secs/clicks.
    let t0 = Instant::now();
    let ticks0: Vec<u64> = members.iter().map(|m| proc_figures(m.pid).0).collect();
    let broker0 = proc_figures(broker_pid).0;
    let window = Duration::from_secs(o.secs);
    let every = window / o.clicks.max(1) as u32;
    let mut clicks: Vec<(usize, u64)> = Vec::new();
    let mut heard: Vec<(usize, String, u64)> = Vec::new();
    let mut next_click = t0 + every / 2;
    let mut sent = 0;
    while t0.elapsed() < window {
        if sent < o.clicks && Instant::now() >= next_click {
            members[sent % n].say("click").await?;
            sent += 1;
            next_click += every;
        }
        let wake = if sent < o.clicks {
            next_click.min(t0 + window)
        } else {
            t0 + window
        };
        let until = tokio::time::Instant::from_std(wake);
        tokio::select! {
            m = rx.recv() => collect(m.ok_or("members gone")?, &mut clicks, &mut heard),
            () = tokio::time::sleep_until(until) => {}
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let ticks1: Vec<u64> = members.iter().map(|m| proc_figures(m.pid).0).collect();
    let (broker1, broker_rss) = proc_figures(broker_pid);
    let rss: Vec<u64> = members.iter().map(|m| proc_figures(m.pid).1).collect();
    // Late detections of the last click.
    let grace = tokio::time::Instant::now() + Duration::from_millis(500);
    while let Ok(Some(m)) = tokio::time::timeout_at(grace, rx.recv()).await {
        collect(m, &mut clicks, &mut heard);
    }
    let after = status_round(&mut members, &mut rx).await?;
    let span = t_before.elapsed().as_secs_f64();

    // Each click counts once per receiver: the first detection of that sender there within
    // MATCH_WINDOW after it. Detections matching no click are counted as spurious.
    let mut lat = Vec::new();
    let mut used = vec![false; heard.len()];
    for &(s, c) in &clicks {
        for r in (0..n).filter(|&r| r != s) {
            let first = heard
                .iter()
                .enumerate()
                .filter(|(k, (hr, from, at))| {
                    !used[*k]
                        && *hr == r
                        && voice.get(from) == Some(&s)
                        && *at >= c
                        && at - c < MATCH_WINDOW_US
                })
                .min_by_key(|(_, (_, _, at))| *at);
            if let Some((k, (_, _, at))) = first {
                used[k] = true;
                lat.push((at - c) as f64 / 1000.0);
            }
        }
    }
    let spurious = used.iter().filter(|u| !**u).count();
    // For a look at the unmatched ones: how long after its sender's latest click each came.
    let mut spurious_after_ms: Vec<i64> = heard
        .iter()
        .zip(&used)
        .filter(|(_, u)| !**u)
        .filter_map(|((_, from, at), _)| {
            let s = voice.get(from)?;
            let c = clicks
                .iter()
                .filter(|(cs, c)| cs == s && c <= at)
                .map(|(_, c)| *c)
                .max()?;
            Some(((at - c) / 1000) as i64)
        })
        .collect();
    spurious_after_ms.truncate(8);
    lat.sort_by(f64::total_cmp);
    let mut frames = 0u64;
    for (b, a) in before.iter().zip(&after) {
        if let Some(m) = a["frames"].as_object() {
            for (k, v) in m {
                frames += v.as_u64().unwrap_or(0) - b["frames"][k.as_str()].as_u64().unwrap_or(0);
            }
        }
    }
    let figures = Figures {
        n,
        warmup_s: warmup.as_secs_f64(),
        window_s: elapsed,
        cpu: ticks0
            .iter()
            .zip(&ticks1)
            .map(|(a, b)| (b - a) as f64 / HZ / elapsed * 100.0)
            .collect(),
        rss_mib: rss.iter().map(|k| *k as f64 / 1024.0).collect(),
        broker_cpu: (broker1 - broker0) as f64 / HZ / elapsed * 100.0,
        broker_rss_mib: broker_rss as f64 / 1024.0,
        clicks: lat.len(),
        expected: clicks.len() * (n - 1),
        spurious,
        spurious_after_ms,
        lat_ms: lat,
        frames_per_stream_s: frames as f64 / (n * (n - 1)) as f64 / span,
    };

    for m in &mut members {
        let _ = m.say("quit").await;
    }
    for m in &mut members {
        if tokio::time::timeout(Duration::from_secs(5), m.child.wait())
            .await
            .is_err()
        {
            let _ = m.child.kill().await;
        }
    }
    let _ = broker.kill().await;
    Ok(figures)
}

fn collect(
    (i, v): (usize, Value),
    clicks: &mut Vec<(usize, u64)>,
    heard: &mut Vec<(usize, String, u64)>,
) {
    let at = v["at_us"].as_u64().unwrap_or(0);
    match v["t"].as_str() {
        Some("click") => clicks.push((i, at)),
        Some("heard") => heard.push((i, v["from"].as_str().unwrap_or("").to_owned(), at)),
        _ => {}
    }
}

/// Asks every member for its status; returns them in order (other lines are set aside).
async fn status_round(
    members: &mut [Member],
    rx: &mut mpsc::UnboundedReceiver<(usize, Value)>,
) -> Res<Vec<Value>> {
    for m in members.iter_mut() {
        m.say("status").await?;
    }
    let mut got: Vec<Option<Value>> = vec![None; members.len()];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while got.iter().any(Option::is_none) {
        let (i, v) = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .map_err(|_| "a member did not answer")?
            .ok_or("members gone")?;
        if v["t"] == "status" {
            got[i] = Some(v);
        }
    }
    Ok(got.into_iter().flatten().collect())
}

fn result_json(f: &Figures) -> Value {
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    let r = |x: f64| (x * 100.0).round() / 100.0;
    json!({
        "participants": f.n,
        "streams_in_per_participant": f.n - 1,
        "warmup_s": r(f.warmup_s),
        "window_s": r(f.window_s),
        "cpu_pct_mean": r(mean(&f.cpu)),
        "cpu_pct_max": r(max(&f.cpu)),
        "rss_mib_mean": r(mean(&f.rss_mib)),
        "rss_mib_max": r(max(&f.rss_mib)),
        "broker_cpu_pct": r(f.broker_cpu),
        "broker_rss_mib": r(f.broker_rss_mib),
        "latency_p50_ms": pct(&f.lat_ms, 0.5).map(r),
        "latency_p95_ms": pct(&f.lat_ms, 0.95).map(r),
        "latency_max_ms": f.lat_ms.last().copied().map(r),
        "clicks_heard": f.clicks,
        "clicks_expected": f.expected,
        "clicks_spurious": f.spurious,
        "spurious_ms_after_last_click": f.spurious_after_ms,
        "frames_per_stream_s": r(f.frames_per_stream_s),
    })
}

fn print_table(all: &[Figures]) {
    let res: Vec<Value> = all.iter().map(result_json).collect();
    let rows = [
        ("participants", "participants"),
        (
            "Opus streams received per participant",
            "streams_in_per_participant",
        ),
        ("launch to all links open + audio flowing (s)", "warmup_s"),
        ("measured window (s)", "window_s"),
        ("CPU per participant, mean (% of one core)", "cpu_pct_mean"),
        ("CPU per participant, max (% of one core)", "cpu_pct_max"),
        ("RSS per participant, mean (MiB)", "rss_mib_mean"),
        ("RSS per participant, max (MiB)", "rss_mib_max"),
        ("broker CPU (% of one core)", "broker_cpu_pct"),
        ("broker RSS (MiB)", "broker_rss_mib"),
        ("mouth-to-ear p50 (ms)", "latency_p50_ms"),
        ("mouth-to-ear p95 (ms)", "latency_p95_ms"),
        ("mouth-to-ear max (ms)", "latency_max_ms"),
        ("clicks heard", "clicks_heard"),
        ("clicks expected (clicks x receivers)", "clicks_expected"),
        ("detections matching no click", "clicks_spurious"),
        (
            "decoded frames per stream per s (50 = all)",
            "frames_per_stream_s",
        ),
    ];
    println!();
    let head: Vec<String> = all.iter().map(|f| format!("N={}", f.n)).collect();
    println!("| figure | {} |", head.join(" | "));
    println!("|---|{}", "---:|".repeat(all.len()));
    for (label, key) in rows {
        let cells: Vec<String> = res
            .iter()
            .map(|r| match &r[key] {
                Value::Null => "-".to_owned(),
                v => v.to_string(),
            })
            .collect();
        println!("| {label} | {} |", cells.join(" | "));
    }
    println!(
        "\nlatency = sender's wait for its next 20 ms frame (0-20) + encode + SRTP/UDP on loopback \
         + jitter-buffer target 30 + receiver's 10 ms playout tick (0-10) + decode + Opus delay; \
         targets: CPU <= 2 % of one core per participant, p95 <= 80 ms"
    );
}
