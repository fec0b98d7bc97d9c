//! `kibitz`: one binary for Kibitz Edge. `kibitz serve` hosts every service on one listener;
//! `kibitz signal` runs the broker alone.

mod acme;
mod config_file;
mod hub;
mod join;
mod lan_join;
mod link;
mod reload;
mod turn_embedded;

use anyhow::Context as _;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use kibitz_signal::{SignalArgs, SignalState};
use kibitz_signal_config::SignalConfigArgs;
use kibitz_turn_api::TurnArgs;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

// jemalloc rather than glibc malloc: in bench/soak.sh glibc kept the pages freed after each
// burst of connections (free-but-held memory grew 3 -> 9 MB in 25 minutes), so the broker's
// RSS only ever rose; jemalloc hands unused pages back within seconds, at the same ~2 KiB per
// idle connection (docs/operator.md, "Memory over time").
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Kibitz Edge: self-hosted helpers for Kibitz calls.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// TOML config file: any flag of the command as a key (flags and env win over it).
    #[arg(long, env = "KIBITZ_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Log format.
    #[arg(long, env = "KIBITZ_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run every service (the PeerJS broker, /api/turn, /api/signal and links) on one listener.
    Serve(Box<ServeArgs>),
    /// Run the PeerJS broker alone.
    Signal(SignalOnly),
    /// Run /api/turn alone.
    TurnApi(TurnOnly),
    /// Run /api/signal and the room-link routes alone.
    SignalConfig(SignalConfigOnly),
    /// Create or read Kibitz room links.
    Link(link::LinkArgs),
    /// Join a room from the terminal: typed lines go out as chat (/help for commands).
    Join(Box<join::JoinArgs>),
    /// Join a room as an agent speaking newline-delimited JSON on stdin/stdout.
    Agent(Box<join::AgentArgs>),
    /// Run the offline-mode LAN hub: browsers on this Wi-Fi reach each other with no internet.
    Hub(Box<hub::HubArgs>),
    /// Check a configuration.
    #[command(subcommand)]
    Config(ConfigCmd),
}

#[derive(Debug, Subcommand)]
enum ConfigCmd {
    /// Validate `kibitz serve`'s configuration (flags, env, --config file) and print it,
    /// secrets masked.
    Check(Box<ServeArgs>),
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    #[command(flatten)]
    listen: ListenArgs,
    #[command(flatten)]
    signal: SignalArgs,
    #[command(flatten)]
    turn: TurnArgs,
    #[command(flatten)]
    turn_embedded: turn_embedded::EmbeddedTurnArgs,
    #[command(flatten)]
    signal_config: SignalConfigArgs,
}

#[derive(Debug, clap::Args)]
struct SignalConfigOnly {
    #[command(flatten)]
    listen: ListenArgs,
    #[command(flatten)]
    signal_config: SignalConfigArgs,
}

#[derive(Debug, clap::Args)]
struct SignalOnly {
    #[command(flatten)]
    listen: ListenArgs,
    #[command(flatten)]
    signal: SignalArgs,
}

#[derive(Debug, clap::Args)]
struct TurnOnly {
    #[command(flatten)]
    listen: ListenArgs,
    #[command(flatten)]
    turn: TurnArgs,
}

#[derive(Debug, clap::Args)]
struct ListenArgs {
    /// Address to listen on. Kibitz clients reach brokers as wss://HOST:443/peerjs.
    #[arg(long, env = "KIBITZ_LISTEN", default_value = "127.0.0.1:9000")]
    listen: SocketAddr,
    /// PEM certificate chain: serve HTTPS/WSS (with --tls-key). Both are re-read on SIGHUP.
    #[arg(long, env = "KIBITZ_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "KIBITZ_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve HTTPS/WSS with a fresh self-signed certificate for localhost and 127.0.0.1.
    #[arg(long, env = "KIBITZ_TLS_SELF_SIGNED", conflicts_with = "tls_cert")]
    tls_self_signed: bool,
    /// Write --tls-self-signed's certificate (PEM, no key) to this file, for clients to
    /// trust: `kibitz join --ca-cert FILE`.
    #[arg(long, env = "KIBITZ_TLS_SELF_SIGNED_OUT", requires = "tls_self_signed")]
    tls_self_signed_out: Option<PathBuf>,
    /// Milliseconds to keep serving after SIGTERM or ctrl-c with /readyz answering 503, so
    /// load balancers stop sending work before the listener closes.
    #[arg(long, env = "KIBITZ_DRAIN_GRACE_MS", default_value_t = 2_000)]
    drain_grace_ms: u64,
    /// Milliseconds to wait, once the listener is closed and broker sockets have been sent
    /// 1001, for in-flight requests and those sockets to finish.
    #[arg(long, env = "KIBITZ_DRAIN_TIMEOUT_MS", default_value_t = 10_000)]
    drain_timeout_ms: u64,
    #[command(flatten)]
    acme: acme::AcmeArgs,
    /// --trusted-proxy, --client-ip-header, --proxy-protocol.
    #[command(flatten)]
    proxy: kibitz_http::ProxyArgs,
}

fn main() -> ExitCode {
    let mut cmd = Cli::command();
    cmd.build();
    let loaded = match config_file::load(&cmd, std::env::args_os().collect()) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("kibitz: {e:#}");
            return ExitCode::from(2);
        }
    };
    let matches = match cmd.clone().try_get_matches_from(&loaded.args) {
        Ok(m) => m,
        Err(e) => e.exit(),
    };
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    if let Cmd::Config(ConfigCmd::Check(args)) = &cli.cmd {
        print!(
            "{}",
            config_file::describe(&cmd, &matches, &loaded.from_file)
        );
        return match check(args) {
            Ok(()) => {
                println!("# configuration OK");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("kibitz: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    // A participant's terminal is for the room; its logs stay quiet unless asked for.
    let quiet = matches!(cli.cmd, Cmd::Join(_) | Cmd::Agent(_));
    init_logs(cli.log_format, if quiet { "warn" } else { "info" });
    match try_main(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("kibitz: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Everything `kibitz serve` would refuse at start-up, without starting it.
fn check(args: &ServeArgs) -> anyhow::Result<()> {
    args.signal.to_config().context("broker configuration")?;
    let turn = args.turn.to_config().context("/api/turn configuration")?;
    args.turn_embedded
        .to_config(&turn)
        .context("embedded TURN relay")?;
    args.signal_config.to_config().context("--link-origin")?;
    if let (Some(cert), Some(key)) = (&args.listen.tls_cert, &args.listen.tls_key) {
        kibitz_http::tls_from_pem(cert, key).context("loading the TLS certificate")?;
    }
    args.listen.acme.to_config()?;
    Ok(())
}

fn init_logs(format: LogFormat, default: &str) {
    use tracing_subscriber::EnvFilter;
    // Library crates that log frame contents at TRACE are capped: payloads never reach logs.
    let filter = EnvFilter::try_from_env("KIBITZ_LOG")
        .unwrap_or_else(|_| EnvFilter::new(default))
        .add_directive("hyper=info".parse().unwrap_or_default())
        .add_directive("h2=info".parse().unwrap_or_default())
        .add_directive("rustls=info".parse().unwrap_or_default());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // No `log` bridge is installed, so `log` records from dependencies are dropped.
    let _ = match format {
        LogFormat::Human => tracing::subscriber::set_global_default(builder.finish()),
        LogFormat::Json => tracing::subscriber::set_global_default(builder.json().finish()),
    };
}

fn try_main(cli: Cli) -> anyhow::Result<()> {
    if let Cmd::Link(args) = cli.cmd {
        return link::run(args);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let result = rt.block_on(async {
        match cli.cmd {
            Cmd::Serve(a) => {
                let a = *a;
                let services = Services {
                    signal: Some(a.signal),
                    turn: Some(a.turn),
                    turn_embedded: Some(a.turn_embedded),
                    signal_config: Some(a.signal_config),
                };
                run(a.listen, services, "serve").await
            }
            Cmd::Signal(a) => {
                let services = Services {
                    signal: Some(a.signal),
                    ..Services::default()
                };
                run(a.listen, services, "signal").await
            }
            Cmd::TurnApi(a) => {
                let services = Services {
                    turn: Some(a.turn),
                    ..Services::default()
                };
                run(a.listen, services, "turn-api").await
            }
            Cmd::Join(a) => join::run_join(*a).await,
            Cmd::Agent(a) => join::run_agent(*a).await,
            Cmd::Hub(a) => hub::run(*a).await,
            Cmd::Link(_) | Cmd::Config(_) => Ok(()),
            Cmd::SignalConfig(a) => {
                let services = Services {
                    signal_config: Some(a.signal_config),
                    ..Services::default()
                };
                run(a.listen, services, "signal-config").await
            }
        }
    });
    // A blocked stdin read (join, agent) must not keep the process alive.
    rt.shutdown_timeout(Duration::from_millis(500));
    result
}

/// Which services a command hosts, with their flags.
#[derive(Debug, Default)]
struct Services {
    signal: Option<SignalArgs>,
    turn: Option<TurnArgs>,
    turn_embedded: Option<turn_embedded::EmbeddedTurnArgs>,
    signal_config: Option<SignalConfigArgs>,
}

async fn run(listen: ListenArgs, services: Services, what: &'static str) -> anyhow::Result<()> {
    let Services {
        signal,
        turn,
        turn_embedded,
        signal_config,
    } = services;
    // First, so that a SIGHUP from now on reloads instead of ending the process.
    #[cfg(unix)]
    let hangups = reload::hangups().context("installing the SIGHUP handler")?;
    let mut reloader = reload::Reloader::default();
    let turn_args = turn.clone();
    let signal = signal
        .map(|a| a.to_config())
        .transpose()
        .context("broker configuration")?;
    let mut turn = turn
        .map(|a| a.to_config())
        .transpose()
        .context("/api/turn configuration")?;
    let mut relay = None;
    if let (Some(args), Some(api)) = (&turn_embedded, &mut turn)
        && let Some(config) = args.to_config(api).context("embedded TURN relay")?
    {
        let handle = kibitz_turn::TurnServer::start(config).context("embedded TURN relay")?;
        let bound = handle.local_addr();
        turn_embedded::point_api_at(api, bound);
        tracing::info!(turn_listen = %bound, "embedded TURN relay (UDP)");
        relay = Some((handle, bound));
    }
    let acme = listen.acme.to_config()?;
    let tls = match (&listen.tls_cert, &listen.tls_key) {
        (Some(cert), Some(key)) => {
            let pem =
                kibitz_http::PemTls::load(cert, key).context("loading the TLS certificate")?;
            let cfg = pem.config();
            reloader.tls = Some(pem);
            Some(cfg)
        }
        _ if listen.tls_self_signed => {
            let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
            let (cfg, pem) = kibitz_http::tls_self_signed(&names).context("self-signed TLS")?;
            if let Some(out) = &listen.tls_self_signed_out {
                std::fs::write(out, &pem)
                    .with_context(|| format!("writing --tls-self-signed-out {}", out.display()))?;
                tracing::info!(file = %out.display(), "self-signed certificate written (clients: --ca-cert)");
            }
            Some(cfg)
        }
        _ => None,
    };
    let scheme = if tls.is_some() || acme.is_some() {
        "https"
    } else {
        "http"
    };
    // Before any service resolves its metric handles.
    kibitz_http::install_metrics();
    let mut opts = kibitz_http::ServeOptions {
        tls,
        header_read_timeout: signal
            .as_ref()
            .map_or(Duration::from_secs(10), |c| c.limits.handshake_timeout),
        drain_timeout: Duration::from_millis(listen.drain_timeout_ms),
        drain_grace: Duration::from_millis(listen.drain_grace_ms),
        proxy: (&listen.proxy).into(),
    };
    // Every service's routes on one router; the services never import each other.
    let mut app = axum::Router::new();
    let mut status = kibitz_status::Config {
        metrics: Some(kibitz_http::install_metrics()),
        ..Default::default()
    };
    let mut broker = None;
    if let Some(config) = signal {
        tracing::info!(path = %config.path, "PeerJS broker at {}peerjs", config.path);
        let (path, key) = (config.path.clone(), config.key.clone());
        let state = SignalState::start(config);
        let probe = state.clone();
        status.broker = Some(kibitz_status::Broker {
            path,
            key,
            healthy: std::sync::Arc::new(move || probe.is_healthy()),
        });
        app = app.merge(kibitz_signal::router(state.clone()));
        broker = Some(state);
    }
    if let Some(config) = turn {
        tracing::info!(backend = backend_name(&config.backend), "/api/turn");
        status.turn = Some(kibitz_status::Turn {
            backend: backend_name(&config.backend),
            configured: !matches!(config.backend, kibitz_turn_api::Backend::None),
        });
        let state = kibitz_turn_api::TurnState::new(config).context("/api/turn")?;
        app = app.merge(kibitz_turn_api::router(state.clone()));
        reloader.turn = turn_args.map(|a| (a, state));
    }
    let mut selector = None;
    if let Some(args) = signal_config {
        let mut config = args.to_config().context("--link-origin")?;
        // The broker in this process is checked in-process, not over the network.
        if let (Some(_), Some(state)) = (&config.self_host, &broker) {
            let state: SignalState = state.clone();
            config.local_health = Some(std::sync::Arc::new(move || state.is_healthy()));
        }
        tracing::info!(hosts = ?config.hosts, "/api/signal");
        let state = kibitz_signal_config::SignalConfigState::start(config);
        app = app.merge(kibitz_signal_config::router(state.clone()));
        let probe = state.clone();
        status.signal = Some(std::sync::Arc::new(move || {
            let a = probe.current_answer();
            kibitz_status::SignalAnswer {
                host: a.host,
                healthy: a.healthy,
            }
        }));
        selector = Some(state);
    }
    // The status page answers browsers at `/`; everyone else still gets the banner there.
    let app = app
        .merge(kibitz_status::router(kibitz_status::StatusState::new(
            status,
        )))
        .layer(axum::middleware::from_fn(kibitz_status::html_root));
    let listener =
        kibitz_http::bind(listen.listen).with_context(|| format!("binding {}", listen.listen))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    // Ordering starts once the port is ours: the CA validates on it.
    let acme = match acme {
        Some(cfg) => {
            if addr.port() != 443 {
                tracing::warn!(%addr, "ACME validates on port 443 of each --acme-domain: it must reach this listener");
            }
            let manager = kibitz_http::acme::Acme::start(cfg)?;
            opts.tls = Some(manager.tls_config());
            Some(manager)
        }
        None => None,
    };
    tracing::info!(%addr, mode = what, "listening: {scheme}://{addr}/");
    reloader.relay = relay;
    let (stop_reload, reload_stopped) = tokio::sync::oneshot::channel::<()>();
    #[cfg(unix)]
    let reloads = tokio::spawn(reload::run(reloader, hangups, async move {
        let _ = reload_stopped.await;
    }));
    #[cfg(not(unix))]
    let reloads = {
        drop(reload_stopped);
        std::future::ready(Ok::<_, tokio::task::JoinError>(reloader))
    };
    if listen.proxy.proxy_protocol || !listen.proxy.trusted_proxies.is_empty() {
        tracing::info!(
            trusted_proxies = listen.proxy.trusted_proxies.len(),
            header = ?listen.proxy.client_ip_header,
            proxy_protocol = listen.proxy.proxy_protocol,
            "client addresses from proxies"
        );
    }
    let drain = opts.drain_timeout;
    let draining = broker.clone();
    kibitz_http::serve_with_ops(listener, app, opts, async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        // The in-process health checks (status page, /api/signal) turn with /readyz.
        if let Some(state) = draining {
            state.begin_drain();
        }
    })
    .await
    .context("serving")?;
    if let Some(state) = selector {
        state.stop();
    }
    if let Some(state) = broker {
        state.shutdown(drain).await;
    }
    let _ = stop_reload.send(());
    if let Ok(reload::Reloader {
        relay: Some((relay, _)),
        ..
    }) = reloads.await
    {
        relay.shutdown().await;
    }
    drop(acme);
    Ok(())
}

fn backend_name(b: &kibitz_turn_api::Backend) -> &'static str {
    match b {
        kibitz_turn_api::Backend::Hmac(_) => "hmac",
        kibitz_turn_api::Backend::Cloudflare(_) => "cloudflare",
        kibitz_turn_api::Backend::Static(_) => "static",
        _ => "not configured",
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
