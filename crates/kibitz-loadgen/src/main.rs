//! `kibitz-loadgen`: a PeerJS signalling-broker load generator.
//!
//! Every scenario prints one human-readable line and one `RESULT {json}` line.

mod attack;
mod churn;
mod connect;
mod hello;
mod http_load;
mod idle;
mod net;
mod paced;
mod probe;
mod relay;
mod turn_relay;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use futures_util::StreamExt;
use serde_json::{Map, Value, json};

use crate::net::{Target, Ws};
use crate::probe::Probe;

#[derive(Debug, Parser)]
#[command(version, about = "PeerJS signalling-broker load generator")]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Args)]
struct Common {
    /// Broker WebSocket endpoint (loopback only).
    #[arg(long, global = true, default_value = "ws://127.0.0.1:9000/peerjs")]
    url: String,
    /// Shorthand for --url ws://127.0.0.1:PORT/peerjs.
    #[arg(long, global = true)]
    port: Option<u16>,
    /// PeerJS key.
    #[arg(long, global = true, default_value = "peerjs")]
    key: String,
    /// Server process(es) to sample for CPU and RSS (/proc/PID); several (comma-separated
    /// or repeated) are summed, e.g. every node of a cluster and its Redis.
    #[arg(long, global = true, value_delimiter = ',')]
    server_pid: Vec<u32>,
    /// A second node of the same broker cluster: `relay` then puts every odd pair across the
    /// two nodes and reports same-node and cross-node figures separately.
    #[arg(long, global = true)]
    alt_port: Option<u16>,
    /// Spread connections over source addresses 127.0.0.1..=127.0.0.K.
    #[arg(long, global = true, default_value_t = 16)]
    src_ips: u8,
    /// Name a synthetic client address (198.18.0.0/15) per connection as a proxy would:
    /// `xff` (X-Forwarded-For; broker with --trusted-proxy), `v1`/`v2` (a PROXY protocol
    /// header first; broker with --proxy-protocol).
    #[arg(long, global = true, value_enum, default_value_t = net::Proxied::None)]
    proxied: net::Proxied,
    /// Send the PROXY header in a segment of its own, as HAProxy and nginx do on connect
    /// (`http` otherwise sends it with the first request; `connect` always sends it alone).
    #[arg(long, global = true)]
    proxy_header_alone: bool,
    /// Maximum connection attempts in flight while opening.
    #[arg(long, global = true, default_value_t = 128)]
    concurrency: usize,
    /// Give up on a connection that has not seen OPEN after this many seconds.
    #[arg(long, global = true, default_value_t = 15.0)]
    open_timeout_secs: f64,
    /// Free-form label copied into the RESULT line (e.g. the server's name).
    #[arg(long, global = true)]
    label: Option<String>,
    /// Runtime worker threads (default: CPUs this process may run on).
    #[arg(long, global = true)]
    threads: Option<usize>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Hold many idle connections that only send heartbeats.
    Idle(idle::IdleArgs),
    /// Closed-loop relay between pairs; measures throughput and latency.
    Relay(relay::RelayArgs),
    /// Open-loop relay at a fixed total rate; measures latency and loss.
    Paced(paced::PacedArgs),
    /// Open and close connections at a fixed rate.
    Churn(churn::ChurnArgs),
    /// Many sockets sending the largest allowed message at the allowed rate to slow readers.
    Attack(attack::AttackArgs),
    /// Open and close connections as fast as N workers can (closed loop): connect throughput.
    Connect(connect::ConnectArgs),
    /// Closed-loop HTTP GETs (e.g. /api/turn), a new connection every N requests.
    Http(http_load::HttpArgs),
    /// Print a free TCP port on 127.0.0.1 and exit (for scripts).
    FreePort,
    /// Serve `GET /hello` -> "hello" with axum, the baseline for bench/turn.sh.
    HelloServer(hello::HelloArgs),
    /// TURN relay throughput: ChannelData between pairs of allocations (UDP).
    TurnRelay(turn_relay::TurnRelayArgs),
}

/// Everything a scenario needs besides its own arguments.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub target: Arc<Target>,
    pub probe: Probe,
    pub concurrency: usize,
    pub open_timeout: Duration,
    /// Unique per process, so ids never collide with an earlier run's.
    pub id_prefix: String,
}

impl Ctx {
    /// Opens one connection per id (index = position), `concurrency` at a time.
    /// Returns the sockets (None where opening failed), the failure count and
    /// the first error.
    pub async fn open_many(
        &self,
        ids: &[String],
        read_buf: usize,
    ) -> (Vec<Option<Ws>>, u64, Option<String>) {
        let results: Vec<(usize, Result<Ws>)> = futures_util::stream::iter(ids.iter().enumerate())
            .map(|(i, id)| async move {
                (
                    i,
                    self.target.open(i, id, read_buf, self.open_timeout).await,
                )
            })
            .buffer_unordered(self.concurrency.max(1))
            .collect()
            .await;
        let mut out: Vec<Option<Ws>> = ids.iter().map(|_| None).collect();
        let mut failures = 0;
        let mut first_err = None;
        for (i, r) in results {
            match r {
                Ok(ws) => {
                    if let Some(slot) = out.get_mut(i) {
                        *slot = Some(ws);
                    }
                }
                Err(e) => {
                    failures += 1;
                    first_err.get_or_insert_with(|| format!("{e:#}"));
                }
            }
        }
        (out, failures, first_err)
    }
}

fn secs(v: f64, what: &str) -> Result<Duration> {
    Duration::try_from_secs_f64(v).with_context(|| format!("bad {what}: {v}"))
}

fn run(cli: Cli) -> Result<()> {
    let c = cli.common;
    if matches!(cli.cmd, Cmd::FreePort) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").context("bind")?;
        println!("{}", l.local_addr().context("local_addr")?.port());
        return Ok(());
    }
    if let Cmd::HelloServer(a) = &cli.cmd {
        return hello::run(a);
    }
    if let Cmd::TurnRelay(a) = &cli.cmd {
        let mut out = Map::new();
        out.insert("scenario".into(), json!("turn-relay"));
        if let Some(l) = &c.label {
            out.insert("label".into(), json!(l));
        }
        out.extend(turn_relay::run(a, &Probe::new(&c.server_pid))?);
        probe::emit(out);
        return Ok(());
    }
    let url = match c.port {
        Some(p) => format!("ws://127.0.0.1:{p}/peerjs"),
        None => c.url.clone(),
    };
    let mut target =
        Target::new(&url, &c.key, c.src_ips)?.with_proxied(c.proxied, c.proxy_header_alone);
    if let Some(p) = c.alt_port {
        target = target.with_alt_port(p);
    }
    let ctx = Ctx {
        target: Arc::new(target),
        probe: Probe::new(&c.server_pid),
        concurrency: c.concurrency,
        open_timeout: secs(c.open_timeout_secs, "--open-timeout-secs")?,
        id_prefix: format!("lg{}", std::process::id()),
    };
    let threads = c
        .threads
        .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
        .unwrap_or(1)
        .max(1);
    let rt = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
    .context("tokio runtime")?;

    let mut out = Map::new();
    let scenario = match &cli.cmd {
        Cmd::Idle(_) => "idle",
        Cmd::Relay(_) => "relay",
        Cmd::Paced(_) => "paced",
        Cmd::Churn(_) => "churn",
        Cmd::Attack(_) => "attack",
        Cmd::Connect(_) => "connect",
        Cmd::Http(_) => "http",
        Cmd::FreePort => "free-port",
        Cmd::HelloServer(_) => "hello-server",
        Cmd::TurnRelay(_) => "turn-relay",
    };
    out.insert("scenario".into(), json!(scenario));
    if let Some(l) = &c.label {
        out.insert("label".into(), json!(l));
    }
    out.insert("url".into(), json!(ctx.target.base_url()));
    let figures: Map<String, Value> = rt.block_on(async {
        match &cli.cmd {
            Cmd::Idle(a) => idle::run(&ctx, a).await,
            Cmd::Relay(a) => relay::run(&ctx, a).await,
            Cmd::Paced(a) => paced::run(&ctx, a).await,
            Cmd::Churn(a) => churn::run(&ctx, a).await,
            Cmd::Attack(a) => attack::run(&ctx, a).await,
            Cmd::Connect(a) => connect::run(&ctx, a).await,
            Cmd::Http(a) => http_load::run(&ctx, a).await,
            Cmd::FreePort | Cmd::HelloServer(_) | Cmd::TurnRelay(_) => Ok(Map::new()),
        }
    })?;
    out.extend(figures);
    probe::emit(out);
    // Don't wait for stragglers (e.g. slow close handshakes).
    rt.shutdown_timeout(Duration::from_millis(500));
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kibitz-loadgen: {e:#}");
            ExitCode::FAILURE
        }
    }
}
