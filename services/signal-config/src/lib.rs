//! `/api/signal`: one shared broker verdict, so every participant of a room meets on the same
//! broker; and the room-link routes (`/j/<room>`).
//!
//! Health is probed in the background (`GET https://HOST/id`, 2.5 s timeout), never per
//! request; [`health::Verdicts`] adds hysteresis and per-room stickiness. A broker served by
//! this same process is checked in-process through a [`LocalHealth`] callback.

pub mod health;
mod links;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use health::Verdicts;
use serde::Deserialize;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The one place this service reads the clock.
#[allow(clippy::disallowed_methods)]
pub(crate) fn now() -> Instant {
    Instant::now()
}

/// Health of a broker served by this process, asked instead of probing over the network.
pub type LocalHealth = Arc<dyn Fn() -> bool + Send + Sync>;

/// Everything the service needs, validated.
#[derive(Clone)]
pub struct Config {
    /// Broker hosts in preference order (no scheme, no path).
    pub hosts: Vec<String>,
    /// Answer when no broker is healthy (e.g. `0.peerjs.com`); `None` answers `null`.
    pub fallback: Option<String>,
    /// How often each broker is probed.
    pub probe_interval: Duration,
    /// Probe timeout.
    pub probe_timeout: Duration,
    /// `https` (brokers serve `wss://HOST:443`), or `http` for local tests.
    pub probe_scheme: String,
    /// The host served by this process, checked with `local_health` instead of a probe.
    pub self_host: Option<String>,
    /// In-process health of `self_host`.
    pub local_health: Option<LocalHealth>,
    /// Origin `/j/<room>` redirects to (e.g. `https://kibitz.chat`); `None` uses the request's
    /// `Host` over https.
    pub link_origin: Option<String>,
    /// The hosts are nodes of one broker cluster (`--redis-url`): any healthy node will do, so
    /// rooms are spread over them instead of pinned.
    pub cluster: bool,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("hosts", &self.hosts)
            .field("fallback", &self.fallback)
            .field("probe_interval", &self.probe_interval)
            .field("self_host", &self.self_host)
            .field("link_origin", &self.link_origin)
            .finish_non_exhaustive()
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            hosts: Vec::new(),
            fallback: None,
            probe_interval: Duration::from_secs(5),
            probe_timeout: Duration::from_millis(2500),
            probe_scheme: "https".into(),
            self_host: None,
            local_health: None,
            link_origin: None,
            cluster: false,
        }
    }
}

/// A host as Kibitz normalises it: trimmed, no `http(s)://`, no trailing `/`.
pub fn normalize_host(h: &str) -> String {
    let h = h.trim();
    let h = h
        .strip_prefix("https://")
        .or_else(|| h.strip_prefix("http://"))
        .unwrap_or(h);
    h.trim_end_matches('/').to_owned()
}

/// Flags for `/api/signal` and the link routes, shared by `kibitz serve` and
/// `kibitz signal-config`; each also reads a `KIBITZ_*` environment variable.
#[derive(Debug, Clone, clap::Args)]
pub struct SignalConfigArgs {
    /// Broker host, in preference order (repeat, or comma-separated in the env). Clients reach
    /// it as wss://HOST:443/peerjs.
    #[arg(
        long = "signal-host",
        env = "KIBITZ_SIGNAL_HOSTS",
        value_delimiter = ','
    )]
    pub signal_hosts: Vec<String>,
    /// Host to answer when no broker is healthy (older Kibitz clients would otherwise fall back
    /// to the public PeerJS cloud on their own; newer ones never fall back).
    #[arg(long, env = "KIBITZ_SIGNAL_FALLBACK")]
    pub signal_fallback: Option<String>,
    /// Milliseconds between health probes of each broker.
    #[arg(long, env = "KIBITZ_SIGNAL_PROBE_INTERVAL_MS", default_value_t = 5000)]
    pub signal_probe_interval_ms: u64,
    /// The broker host this process serves itself (checked in-process, not over the network).
    #[arg(long, env = "KIBITZ_SIGNAL_SELF_HOST")]
    pub signal_self_host: Option<String>,
    /// Origin that /j/<room> links redirect to; default: https:// + the request's Host.
    #[arg(long, env = "KIBITZ_LINK_ORIGIN")]
    pub link_origin: Option<String>,
    /// The --signal-host brokers are nodes of one cluster (kibitz --redis-url): any healthy
    /// node will do, so rooms are spread over the healthy nodes instead of pinned to one.
    #[arg(long, env = "KIBITZ_SIGNAL_CLUSTER")]
    pub signal_cluster: bool,
}

impl SignalConfigArgs {
    /// The validated configuration (without a local health callback; the host adds it).
    pub fn to_config(&self) -> Result<Config, kibitz_proto::link::LinkError> {
        let link_origin = self
            .link_origin
            .as_deref()
            .map(kibitz_proto::link::normalize_origin)
            .transpose()?;
        let hosts: Vec<String> = self
            .signal_hosts
            .iter()
            .map(|h| normalize_host(h))
            .filter(|h| !h.is_empty())
            .collect();
        Ok(Config {
            hosts,
            fallback: self
                .signal_fallback
                .as_deref()
                .map(normalize_host)
                .filter(|h| !h.is_empty()),
            probe_interval: Duration::from_millis(self.signal_probe_interval_ms.max(100)),
            self_host: self.signal_self_host.as_deref().map(normalize_host),
            link_origin,
            cluster: self.signal_cluster,
            ..Config::default()
        })
    }
}

/// The running service: cheap to clone.
#[derive(Clone)]
pub struct SignalConfigState {
    verdicts: Arc<Mutex<Verdicts>>,
    config: Arc<Config>,
    stop: CancellationToken,
}

impl std::fmt::Debug for SignalConfigState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignalConfigState").finish_non_exhaustive()
    }
}

impl SignalConfigState {
    /// Starts the background prober on the current Tokio runtime.
    pub fn start(config: Config) -> Self {
        let verdicts = Arc::new(Mutex::new(
            Verdicts::new(config.hosts.clone(), config.fallback.clone())
                .with_cluster(config.cluster),
        ));
        let state = Self {
            verdicts,
            config: Arc::new(config),
            stop: CancellationToken::new(),
        };
        if !state.config.hosts.is_empty() {
            tokio::spawn(state.clone().probe_loop());
        }
        state
    }

    /// Stops the prober.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// What `GET /api/signal` without `?room=` answers right now (for a status page).
    pub fn current_answer(&self) -> health::Answer {
        self.lock().answer(None, now())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Verdicts> {
        self.verdicts.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn probe_loop(self) {
        let client = match probe_client(self.config.probe_timeout) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot build the probe client; brokers stay as configured");
                return;
            }
        };
        let mut tick = tokio::time::interval(self.config.probe_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = self.stop.cancelled() => return,
            }
            let probes = self.config.hosts.iter().map(|h| self.probe(&client, h));
            let results = futures_util::future::join_all(probes).await;
            let mut v = self.lock();
            for (i, ok) in results.into_iter().enumerate() {
                if v.record(i, ok) {
                    tracing::info!(host = %v.hosts()[i], up = ok, "broker health changed");
                }
            }
            v.sweep(now());
        }
    }

    async fn probe(&self, client: &reqwest::Client, host: &str) -> bool {
        if self.config.self_host.as_deref() == Some(host)
            && let Some(local) = &self.config.local_health
        {
            return local();
        }
        let url = format!("{}://{host}/id", self.config.probe_scheme);
        matches!(client.get(url).send().await, Ok(r) if r.status().is_success())
    }
}

fn probe_client(timeout: Duration) -> Result<reqwest::Client, String> {
    let mut roots =
        rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    // The platform store too, as `kibitz join` trusts it: a broker with a company-CA
    // certificate installed there must not be marked down.
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::warn!(error = %e, "reading the platform's certificate store");
    }
    roots.add_parsable_certificates(native.certs);
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| e.to_string())
}

/// `GET /api/signal`, `GET /j/{room}` and `GET /api/room?link=`.
pub fn router(state: SignalConfigState) -> Router {
    Router::new()
        .route("/api/signal", get(signal))
        .route("/j/{room}", get(links::join))
        .route("/api/room", get(links::room))
        .with_state(state)
}

/// Runs the service alone on `listener` until `shutdown`, with ops routes.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let state = SignalConfigState::start(config);
    let opts = kibitz_http::ServeOptions::default();
    let r = kibitz_http::serve_with_ops(listener, router(state.clone()), opts, shutdown).await;
    state.stop();
    r
}

#[derive(Debug, Deserialize)]
struct SignalQuery {
    room: Option<String>,
}

async fn signal(State(state): State<SignalConfigState>, Query(q): Query<SignalQuery>) -> Response {
    // Rooms are keyed as their signaling ids are: "My Room" and "my-room" are one room.
    let room = q
        .room
        .as_deref()
        .map(kibitz_proto::room::normalize_room)
        .filter(|r| !r.is_empty());
    let answer = state.lock().answer(room.as_deref(), now());
    let cache = if answer.healthy {
        "public, max-age=30"
    } else {
        "public, max-age=10"
    };
    metrics::counter!("kibitz_signal_config_answers_total", "healthy" => if answer.healthy { "true" } else { "false" })
        .increment(1);
    let body = serde_json::json!({ "host": answer.host }).to_string();
    let mut r = (StatusCode::OK, body).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    r
}
