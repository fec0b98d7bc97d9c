//! The status page: `GET /` from a browser gets a small HTML page with a live self-test
//! (TURN through `/api/turn` and a relay-only `RTCPeerConnection`, the broker through a
//! WebSocket that must answer `OPEN`); every other `GET /` is left to the routes below
//! (the PeerJS banner JSON). `GET /status.json` reports which services this process mounts,
//! their health and content-blind counts read from the process's Prometheus metrics.
//!
//! The crate imports no service: the host hands it what it knows as plain values and
//! callbacks ([`Config`]). Mount [`router`] next to the services and wrap the whole app with
//! [`html_root`] (`axum::middleware::from_fn(kibitz_status::html_root)`), which answers only a
//! `GET /` whose `Accept` prefers `text/html` over `application/json`.
//! The page, its script and its style are embedded; it loads nothing from elsewhere.

mod accept;
mod prom;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::{Value, json};
use std::sync::Arc;

const PAGE_HTML: &str = include_str!("page/index.html");
const PAGE_JS: &str = include_str!("page/status.js");
const PAGE_CSS: &str = include_str!("page/status.css");

/// The page runs only its own script and style and talks only to its own origin.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                   connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; \
                   frame-ancestors 'none'";

/// A value the host computes on demand (a health check, a current answer).
pub type Probe<T> = Arc<dyn Fn() -> T + Send + Sync>;

/// The PeerJS broker, when this process serves it.
#[derive(Clone)]
pub struct Broker {
    /// Its base path (`--path`, e.g. `/`); the WebSocket is at `{path}peerjs`.
    pub path: String,
    /// Its client key (`--key`); public, every PeerJS client carries it.
    pub key: String,
    /// Whether it is serving.
    pub healthy: Probe<bool>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// `/api/turn`, when this process serves it.
#[derive(Debug, Clone)]
pub struct Turn {
    /// Backend name (`hmac`, `cloudflare`, `static`, or `none`).
    pub backend: &'static str,
    /// Whether a backend is configured (otherwise `/api/turn` answers `configured: false`).
    pub configured: bool,
}

/// What `/api/signal` answers right now (without `?room=`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignalAnswer {
    /// The broker host, or `None` (`{"host":null}`).
    pub host: Option<String>,
    /// Whether a configured broker is healthy.
    pub healthy: bool,
}

/// Everything the page reports, from the host that mounts the services.
#[derive(Clone, Default)]
pub struct Config {
    /// The broker, if mounted.
    pub broker: Option<Broker>,
    /// `/api/turn`, if mounted.
    pub turn: Option<Turn>,
    /// `/api/signal`'s current answer, if mounted.
    pub signal: Option<Probe<SignalAnswer>>,
    /// The process's Prometheus handle, for the counts.
    pub metrics: Option<PrometheusHandle>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("broker", &self.broker.as_ref().map(|b| &b.path))
            .field("turn", &self.turn)
            .field("signal", &self.signal.is_some())
            .finish_non_exhaustive()
    }
}

/// The running page: cheap to clone.
#[derive(Debug, Clone)]
pub struct StatusState(Arc<Config>);

impl StatusState {
    /// Wraps the host's configuration.
    pub fn new(config: Config) -> Self {
        Self(Arc::new(config))
    }
}

/// `GET /status.json`, `GET /status.js` and `GET /status.css`. The page itself is served at
/// `/` by [`html_root`], which the host layers over its whole app.
pub fn router(state: StatusState) -> Router {
    Router::new()
        .route("/status.json", get(status_json))
        .route(
            "/status.js",
            get(|| async { asset("text/javascript", PAGE_JS) }),
        )
        .route("/status.css", get(|| async { asset("text/css", PAGE_CSS) }))
        .with_state(state)
}

/// Middleware: answers `GET /` with the status page when `Accept` prefers `text/html`;
/// passes every other request (including every other `GET /`) through untouched.
pub async fn html_root(req: Request, next: Next) -> Response {
    let wants_page = req.method() == Method::GET
        && req.uri().path() == "/"
        && req.headers().get(header::UPGRADE).is_none()
        && accept::prefers_html(
            req.headers()
                .get_all(header::ACCEPT)
                .iter()
                .filter_map(|v| v.to_str().ok()),
        );
    if !wants_page {
        return next.run(req).await;
    }
    let mut r = asset("text/html; charset=utf-8", PAGE_HTML);
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::VARY, HeaderValue::from_static("Accept"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut r = (StatusCode::OK, body).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

async fn status_json(State(state): State<StatusState>) -> Response {
    let body = report(&state.0).to_string();
    let mut r = (StatusCode::OK, body).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// The `/status.json` body. Counts only: never ids, addresses or payloads.
fn report(config: &Config) -> Value {
    let text = config
        .metrics
        .as_ref()
        .map(PrometheusHandle::render)
        .unwrap_or_default();
    let m = prom::Samples::parse(&text);
    let peers = m.sum("kibitz_signal_peers", &[]);
    let relayed = m.sum_except("kibitz_signal_messages_total", ("type", "HEARTBEAT"));
    let minted = m.sum("kibitz_turn_requests_total", &[("outcome", "issued_open")])
        + m.sum("kibitz_turn_requests_total", &[("outcome", "issued_room")]);
    // A cluster node (the broker's `--redis-url`): its peers are this node's; the cluster's
    // figures come from the registry as of the node's last lease renewal.
    let cluster = (m.sum("kibitz_signal_cluster_mode", &[]) > 0).then(|| {
        json!({
            "registryUp": m.sum("kibitz_signal_cluster_registry_up", &[]) > 0,
            "nodes": m.sum("kibitz_signal_cluster_nodes", &[]),
            "peersOnline": m.sum("kibitz_signal_cluster_peers", &[]),
            "registryShards": m.sum("kibitz_signal_cluster_registry_shards", &[]),
            // The registry's shape: one Redis or a Redis Cluster, its shards (each one hash
            // slot) and the masters holding them, and which shards do not answer.
            "registryMode": if m.sum("kibitz_signal_cluster_redis_cluster", &[]) > 0 { "cluster" } else { "single" },
            "registryShardsUp": m.sum("kibitz_signal_cluster_registry_shards_up", &[]),
            "registryMasters": m.sum("kibitz_signal_cluster_registry_masters", &[]),
            "registryShardsDown": m.zero_labels("kibitz_signal_cluster_shard_up", "shard"),
            "crossNodeOutPerSecond": m.sum("kibitz_signal_cluster_messages_per_second", &[("direction", "out")]),
            "crossNodeInPerSecond": m.sum("kibitz_signal_cluster_messages_per_second", &[("direction", "in")]),
            "requestsInFlight": m.sum("kibitz_signal_cluster_requests_in_flight", &[]),
        })
    });
    let broker = match &config.broker {
        Some(b) => json!({
            "mounted": true,
            "healthy": (b.healthy)(),
            "path": b.path,
            "key": b.key,
            "peersOnline": peers,
            "cluster": cluster,
        }),
        None => json!({ "mounted": false }),
    };
    let turn = match &config.turn {
        Some(t) => json!({
            "mounted": true,
            "configured": t.configured,
            "backend": t.backend,
        }),
        None => json!({ "mounted": false }),
    };
    let signal = match &config.signal {
        Some(answer) => {
            let a = answer();
            json!({ "mounted": true, "host": a.host, "healthy": a.healthy })
        }
        None => json!({ "mounted": false }),
    };
    json!({
        "services": { "broker": broker, "turn": turn, "signal": signal },
        "counts": {
            "peersOnline": peers,
            "messagesRelayed": relayed,
            "credentialsMinted": minted,
        },
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    fn app() -> Router {
        let config = Config {
            broker: Some(Broker {
                path: "/".into(),
                key: "peerjs".into(),
                healthy: Arc::new(|| true),
            }),
            turn: None,
            signal: Some(Arc::new(|| SignalAnswer {
                host: Some("signal.example.org".into()),
                healthy: true,
            })),
            metrics: None,
        };
        Router::new()
            .route("/", get(|| async { "banner" }))
            .merge(router(StatusState::new(config)))
            .layer(axum::middleware::from_fn(html_root))
    }

    async fn get_body(accept: Option<&str>, path: &str) -> (Option<String>, String) {
        let mut req = Request::get(path);
        if let Some(a) = accept {
            req = req.header(header::ACCEPT, a);
        }
        let r = app()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let ct = r
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned());
        let body = r.into_body().collect().await.unwrap().to_bytes();
        (ct, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn browsers_get_the_page_everyone_else_the_route_below() {
        let chrome = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
        let (ct, body) = get_body(Some(chrome), "/").await;
        assert_eq!(ct.as_deref(), Some("text/html; charset=utf-8"));
        assert!(body.contains("<title>"));
        for accept in [None, Some("*/*"), Some("application/json"), Some("text/*")] {
            let (_, body) = get_body(accept, "/").await;
            assert_eq!(body, "banner", "Accept: {accept:?}");
        }
    }

    #[tokio::test]
    async fn status_json_reports_services_without_metrics() {
        let (ct, body) = get_body(None, "/status.json").await;
        assert_eq!(ct.as_deref(), Some("application/json"));
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["services"]["broker"]["healthy"], true);
        assert_eq!(v["services"]["turn"]["mounted"], false);
        assert_eq!(v["services"]["signal"]["host"], "signal.example.org");
        assert_eq!(v["counts"]["messagesRelayed"], 0);
    }
}
