//! `kibitz hub`: Kibitz's offline-mode LAN hub (LAN.md). Picks the identity and port, detects
//! the addresses to advertise, starts the hub, prints `BLOB …` and `LINK …` (harnesses parse
//! those two lines), writes relay-link.txt, shows the link as a QR code in the terminal and on
//! an HTTP page, answers mDNS for its own `kbz-….local` name, and runs until SIGINT/SIGTERM.

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use kibitz_lan_hub::{Hub, HubConfig, HubError, HubHandle, HubIdentity};
use kibitz_proto::lan::{self, TurnInfo};

/// Ports tried in order when neither `--port` nor a saved port decides (upstream's list).
const PORT_LIST: [u16; 5] = [lan::fixed::PORT, 4712, 4713, 9711, 19711];

/// Run Kibitz's offline-mode LAN hub.
#[derive(Debug, clap::Args)]
pub(crate) struct HubArgs {
    /// UDP port. Without it: the state file's saved port (pinned), else the first free of
    /// 4711, 4712, 4713, 9711, 19711. 0 lets the OS choose.
    #[arg(long, env = "KIBITZ_HUB_PORT")]
    port: Option<u16>,
    /// State file (identity and port, mode 0600); relay-link.txt is written beside it.
    #[arg(long, env = "KIBITZ_HUB_STATE", default_value = "relay-state.json")]
    state: PathBuf,
    /// Address to advertise instead of detection (IPv4 or a .local name); repeatable.
    /// Loopback only (e.g. 127.0.0.1) makes a hub bound to 127.0.0.1 for tests.
    #[arg(
        long = "advertise",
        env = "KIBITZ_HUB_ADVERTISE",
        value_delimiter = ','
    )]
    advertise: Vec<String>,
    /// The web app the link opens.
    #[arg(long, env = "KIBITZ_HUB_BASE", default_value = "https://kibitz.chat")]
    base: String,
    /// TCP port of the QR-code page on all interfaces (0 = off).
    #[arg(long, env = "KIBITZ_HUB_HTTP", default_value_t = 8080)]
    http: u16,
    /// Present upstream's well-known identity (discoverable on UDP 4711; the hub is then open
    /// to the whole LAN). false = the state file's own identity.
    #[arg(long, env = "KIBITZ_HUB_FIXED_ID", default_value_t = true, action = clap::ArgAction::Set)]
    fixed_id: bool,
    /// Run the embedded TURN relay for browser-to-browser media (g2 blob; default).
    #[arg(long, overrides_with = "no_turn")]
    turn: bool,
    /// No embedded TURN relay (g1 blob).
    #[arg(long, overrides_with = "turn")]
    no_turn: bool,
    /// Seconds without valid STUN from a browser before its session ends.
    #[arg(long, env = "KIBITZ_HUB_LIVENESS_SECS", default_value_t = 30)]
    liveness_secs: u64,
    /// Most browsers connected (or connecting) at once.
    #[arg(long, env = "KIBITZ_HUB_MAX_SESSIONS", default_value_t = 256)]
    max_sessions: usize,
    /// Answer mDNS for the hub's own kbz-….local name (skipped when UDP 5353 is taken).
    #[arg(long, env = "KIBITZ_HUB_MDNS", default_value_t = true, action = clap::ArgAction::Set)]
    mdns: bool,
}

pub(crate) async fn run(args: HubArgs) -> anyhow::Result<()> {
    // Handlers first: a supervisor may signal as soon as it reads the BLOB line.
    let stop = Stop::install()?;
    let loopback_only = !args.advertise.is_empty()
        && args
            .advertise
            .iter()
            .all(|a| a.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback()));
    let bind_ip: IpAddr = if loopback_only {
        Ipv4Addr::LOCALHOST.into()
    } else {
        Ipv4Addr::UNSPECIFIED.into()
    };

    let (identity, saved_port) = if args.fixed_id {
        // Upstream does not read the file in this mode (and never pins the port).
        (HubIdentity::fixed().context("the fixed identity")?, None)
    } else {
        HubIdentity::load_or_create(&args.state)
            .with_context(|| format!("hub state {}", args.state.display()))?
    };

    // Addresses: --advertise replaces detection.
    let mut ips: Vec<Ipv4Addr> = Vec::new();
    let mut names: Vec<String> = if args.advertise.is_empty() {
        ips = private_ipv4s();
        if ips.is_empty() {
            bail!(
                "no private LAN address found (join a Wi-Fi or hotspot first, or pass --advertise ADDR)"
            );
        }
        let mut names: Vec<String> = ips.iter().map(ToString::to_string).collect();
        if let Some(host) = short_hostname() {
            names.push(format!("{host}.local"));
        }
        names
    } else {
        for a in &args.advertise {
            if let Ok(ip) = a.parse::<Ipv4Addr>() {
                ips.push(ip);
            }
        }
        args.advertise.clone()
    };

    let mdns_name = lan::mdns_name(identity.ufrag());
    let mdns = if args.mdns && !loopback_only && !ips.is_empty() {
        start_mdns(&mdns_name, &ips).await
    } else {
        None
    };
    if mdns.is_some() && !names.contains(&mdns_name) {
        names.push(mdns_name.clone());
    }

    let relay = if args.no_turn {
        None
    } else {
        start_turn(&args, bind_ip, ips.first().copied(), loopback_only)
    };
    let turn = relay.as_ref().map(|(info, _)| info.clone());

    let mut config = HubConfig::new(identity.clone(), SocketAddr::new(bind_ip, 0));
    config.advertise = names;
    config.turn = turn;
    config.liveness = Duration::from_secs(args.liveness_secs.max(1));
    config.max_sessions = args.max_sessions;

    let ports: Vec<u16> = match (args.port, saved_port) {
        (Some(p), _) => vec![p],
        (None, Some(p)) => vec![p],
        (None, None) if args.fixed_id => vec![lan::fixed::PORT],
        (None, None) => PORT_LIST.to_vec(),
    };
    let hub = start_on_first_free(config, &ports).await?;
    let port = hub.local_addr().port();
    // Upstream writes the file in fixed mode too; we do so only when it holds no own identity,
    // which a fixed-mode run must not destroy.
    if !args.fixed_id || HubIdentity::read(&args.state).is_none() {
        identity
            .save(&args.state, Some(port))
            .with_context(|| format!("writing {}", args.state.display()))?;
    }

    let blob = hub.blob();
    let link = format!("{}/?galaxy={blob}", args.base.trim_end_matches('/'));
    let link_file = args
        .state
        .parent()
        .map(|d| d.join("relay-link.txt"))
        .unwrap_or_else(|| PathBuf::from("relay-link.txt"));
    std::fs::write(&link_file, format!("{link}\n"))
        .with_context(|| format!("writing {}", link_file.display()))?;

    let http = if args.http != 0 {
        start_http(args.http, link.clone()).await
    } else {
        None
    };

    print_banner(&hub, &args, &link, &link_file, http.is_some(), ips.first());

    stop.wait().await;
    tracing::info!("lan hub stopping");
    hub.shutdown().await;
    if let Some((_, relay)) = relay {
        relay.shutdown().await;
    }
    if let Some((stop, task)) = mdns {
        let _ = stop.send(());
        let _ = task.await;
    }
    if let Some(task) = http {
        task.abort();
    }
    Ok(())
}

fn print_banner(
    hub: &HubHandle,
    args: &HubArgs,
    link: &str,
    link_file: &Path,
    http: bool,
    first_ip: Option<&Ipv4Addr>,
) {
    let blob = hub.blob();
    let mut out = String::new();
    out.push_str(&format!(
        "kibitz hub on UDP {} ({} identity, {} TURN)\n",
        hub.local_addr().port(),
        if args.fixed_id { "fixed" } else { "own" },
        if blob.turn.is_some() { "with" } else { "no" },
    ));
    for ep in &blob.endpoints {
        out.push_str(&format!("  address {}:{}\n", ep.addr, ep.port));
    }
    out.push_str(&format!("BLOB {blob}\n"));
    out.push_str(&format!("LINK {link}\n"));
    out.push_str(&format!("link written to {}\n", link_file.display()));
    if let Ok(code) = qrcode::QrCode::new(link.as_bytes()) {
        let qr = code
            .render::<qrcode::render::unicode::Dense1x2>()
            .quiet_zone(true)
            .build();
        out.push_str(&qr);
        out.push('\n');
    }
    if http {
        let host = first_ip.map_or("<this-machine>".to_owned(), ToString::to_string);
        out.push_str(&format!("QR page: http://{host}:{}/\n", args.http));
    }
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(out.as_bytes());
    let _ = stdout.flush();
}

/// Tries each port in turn; the last error if none binds.
async fn start_on_first_free(config: HubConfig, ports: &[u16]) -> anyhow::Result<HubHandle> {
    let mut last: Option<HubError> = None;
    for &port in ports {
        let mut c = config.clone();
        c.bind.set_port(port);
        match Hub::start(c).await {
            Ok(h) => return Ok(h),
            Err(e @ HubError::Bind { .. }) => {
                tracing::info!(port, "hub port busy");
                last = Some(e);
            }
            Err(e) => return Err(e).context("starting the hub"),
        }
    }
    match last {
        Some(e) => {
            Err(e).context("no free hub port (a saved port is pinned: free it or pass --port)")
        }
        None => bail!("no port to try"),
    }
}

/// The embedded TURN relay for browser-to-browser media (LAN.md §5): realm `kibitz`, one user
/// (fixed `wblan` on 3478 with the fixed identity; else a fresh user and password on an
/// OS-chosen port each run), relayed addresses advertised as the first IPv4 endpoint. Best
/// effort: without a dotted-quad address or a free port the hub runs without it (g1).
fn start_turn(
    args: &HubArgs,
    bind_ip: IpAddr,
    first_ip: Option<Ipv4Addr>,
    loopback_only: bool,
) -> Option<(TurnInfo, kibitz_turn::TurnHandle)> {
    let Some(advertised) = first_ip else {
        tracing::warn!("no IPv4 address to advertise for the TURN relay; running without it (g1)");
        return None;
    };
    let (port, user, pass) = if args.fixed_id {
        (
            lan::fixed::TURN_PORT,
            lan::fixed::TURN_USER.to_owned(),
            lan::fixed::TURN_PASS.to_owned(),
        )
    } else {
        (
            0,
            kibitz_lan_hub::random_alnum(10),
            kibitz_lan_hub::random_alnum(18),
        )
    };
    let limits = kibitz_turn::TurnLimits {
        // A loopback hub (tests, one-machine demos) relays between loopback peers.
        allow_loopback_peers: loopback_only,
        ..kibitz_turn::TurnLimits::default()
    };
    let config = kibitz_turn::TurnConfig {
        listen: SocketAddr::new(bind_ip, port),
        relay_ip: bind_ip,
        advertised_ip: advertised.into(),
        realm: lan::TURN_REALM.to_owned(),
        auth: kibitz_turn::TurnAuth::Static {
            user: user.clone(),
            pass: kibitz_turn::Secret::new(pass.clone()),
        },
        limits,
    };
    match kibitz_turn::TurnServer::start(config) {
        Ok(relay) => {
            let port = relay.local_addr().port();
            tracing::info!(port, "embedded TURN relay up");
            Some((TurnInfo { port, user, pass }, relay))
        }
        Err(e) => {
            tracing::warn!(error = %e, port, "embedded TURN relay did not start; running without it (g1)");
            None
        }
    }
}

/// Every private IPv4 of every interface, ranked 192.168.* < 10.* < others (stable).
fn private_ipv4s() -> Vec<Ipv4Addr> {
    let mut ips: Vec<Ipv4Addr> = match if_addrs::get_if_addrs() {
        Ok(ifs) => ifs
            .into_iter()
            .filter_map(|i| match i.ip() {
                IpAddr::V4(v4) if v4.is_private() && !v4.is_loopback() => Some(v4),
                _ => None,
            })
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "listing interfaces");
            Vec::new()
        }
    };
    let mut seen = std::collections::BTreeSet::new();
    ips.retain(|ip| seen.insert(*ip));
    rank_ipv4s(&mut ips);
    ips
}

fn rank_ipv4s(ips: &mut [Ipv4Addr]) {
    ips.sort_by_key(|ip| match ip.octets() {
        [192, 168, ..] => 0,
        [10, ..] => 1,
        _ => 2,
    });
}

/// The host's short name, lower-case; none if empty or `localhost`.
fn short_hostname() -> Option<String> {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())?;
    let short = raw.trim().split('.').next()?.to_lowercase();
    (!short.is_empty() && short != "localhost").then_some(short)
}

/// SIGINT/SIGTERM, registered at once (tokio's `ctrl_c()` registers only when first polled).
struct Stop {
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
}

impl Stop {
    fn install() -> anyhow::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Stop {
                int: signal(SignalKind::interrupt()).context("SIGINT handler")?,
                term: signal(SignalKind::terminate()).context("SIGTERM handler")?,
            })
        }
        #[cfg(not(unix))]
        Ok(Stop {})
    }

    async fn wait(mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
        #[cfg(not(unix))]
        {
            let _ = &mut self;
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

type Task = (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
);

/// Our own responder on UDP 5353; quietly none when the port is taken (avahi) or multicast
/// is unavailable.
async fn start_mdns(name: &str, ips: &[Ipv4Addr]) -> Option<Task> {
    let std_sock = match std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 5353)) {
        Ok(s) => s,
        Err(e) => {
            tracing::info!(error = %e, "mDNS port 5353 taken; relying on the OS responder");
            return None;
        }
    };
    let group = *kibitz_lan_hub::mdns::GROUP.ip();
    if let Err(e) = std_sock.join_multicast_v4(&group, &Ipv4Addr::UNSPECIFIED) {
        tracing::info!(error = %e, "mDNS multicast unavailable");
        return None;
    }
    if std_sock.set_nonblocking(true).is_err() {
        return None;
    }
    let sock = tokio::net::UdpSocket::from_std(std_sock).ok()?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(kibitz_lan_hub::mdns::serve(
        sock,
        name.to_owned(),
        ips.to_vec(),
        kibitz_lan_hub::mdns::GROUP.into(),
        rx,
    ));
    tracing::info!(name, "mDNS responder started");
    Some((tx, task))
}

/// The QR page on all interfaces; best effort (a busy port is logged and skipped).
async fn start_http(port: u16, link: String) -> Option<tokio::task::JoinHandle<()>> {
    let listener = match tokio::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(port, error = %e, "QR page not started");
            return None;
        }
    };
    let app = qr_router(link);
    Some(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "QR page stopped");
        }
    }))
}

/// `GET /`: the link as a QR code (inline SVG) and text; `GET /link`: the link and a newline;
/// anything else 404.
fn qr_router(link: String) -> Router {
    let svg = qrcode::QrCode::new(link.as_bytes())
        .map(|c| {
            c.render::<qrcode::render::svg::Color<'_>>()
                .min_dimensions(320, 320)
                .build()
        })
        .unwrap_or_default();
    let escaped = html_escape(&link);
    let page = format!(
        "<!doctype html><meta charset=utf-8><meta name=viewport content=\"width=device-width\">\
         <title>Kibitz hub</title><h1>Kibitz offline hub</h1>\
         <p>Scan to open Kibitz on this network:</p>{svg}<p><a href=\"{escaped}\">{escaped}</a></p>\n"
    );
    let text = format!("{link}\n");
    Router::new()
        .route("/", get(move || async move { Html(page) }))
        .route(
            "/link",
            get(move || async move {
                ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text)
            }),
        )
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found").into_response() })
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ranking_is_stable_192_then_10_then_others() {
        let mut ips: Vec<Ipv4Addr> = [
            "172.16.0.2",
            "10.0.0.9",
            "192.168.1.7",
            "10.0.0.1",
            "192.168.0.2",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        rank_ipv4s(&mut ips);
        let got: Vec<String> = ips.iter().map(ToString::to_string).collect();
        assert_eq!(
            got,
            [
                "192.168.1.7",
                "192.168.0.2",
                "10.0.0.9",
                "10.0.0.1",
                "172.16.0.2"
            ]
        );
    }

    #[tokio::test]
    async fn qr_page_routes() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let link = "https://kibitz.chat/?galaxy=g1|a|b|c|1.2.3.4~4711".to_owned();
        let app = qr_router(link.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let client = reqwest::Client::new();
        let r = client
            .get(format!("http://{addr}/link"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/plain")
        );
        assert_eq!(r.text().await.unwrap(), format!("{link}\n"));
        let page = client
            .get(format!("http://{addr}/"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(page.contains("<svg"), "{page}");
        assert!(page.contains("galaxy=g1|a|b|c|1.2.3.4~4711"));
        let r = client
            .get(format!("http://{addr}/nope"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
        server.abort();
    }
}
