//! `/api/turn`: short-lived TURN credentials in the exact shape Kibitz clients read, from
//! coturn's shared secret (TURN REST), Cloudflare Realtime TURN, or a static list; plus
//! `POST /api/room-grant` for gated deployments.
//!
//! Responses follow Kibitz's contract: always 200 with CORS `*` (preflight 204), body
//! `{iceServers, configured, tier}`; minted credentials also carry the TURN REST fields
//! (`username`, `password`, `ttl`, `uris`) and `expiresAt`, with `Cache-Control: no-store`.
//! Secrets never appear in logs, errors or responses.

pub mod config;
mod limit;
mod mint;

pub use config::{Backend, Config, ConfigError, Gating, HmacConfig, Secret, TurnArgs};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use kibitz_http::ClientIp;
use kibitz_proto::turn::{GrantPayload, sign_grant, tag_of, valid_grant_room, verify_grant};
use serde_json::{Value, json};
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, PoisonError, RwLock};
use tokio::net::TcpListener;

/// Unix seconds: the one place this service reads the wall clock.
#[allow(clippy::disallowed_methods)]
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The running service: cheap to clone.
#[derive(Debug, Clone)]
pub struct TurnState(Arc<RwLock<Arc<Inner>>>);

/// One configuration's worth of state; [`TurnState::reload`] swaps it whole, and requests in
/// flight finish with the one they started with. The rate-limit windows, the id counter and
/// the metric handles carry over.
#[derive(Debug)]
struct Inner {
    config: Config,
    client: Option<reqwest::Client>,
    limiter: Arc<limit::PerIp>,
    /// The parts of every TURN REST answer that do not change, serialised once.
    template: Option<mint::Template>,
    ids: Arc<mint::OpaqueIds>,
    outcomes: Arc<Outcomes>,
}

/// `kibitz_turn_requests_total{outcome}` handles, resolved once.
#[derive(Debug)]
struct Outcomes {
    issued_open: metrics::Counter,
    issued_room: metrics::Counter,
    free: metrics::Counter,
    unconfigured: metrics::Counter,
    rate_limited: metrics::Counter,
    origin_denied: metrics::Counter,
    upstream_error: metrics::Counter,
}

impl Outcomes {
    fn new() -> Self {
        let c =
            |what: &'static str| metrics::counter!("kibitz_turn_requests_total", "outcome" => what);
        Self {
            issued_open: c("issued_open"),
            issued_room: c("issued_room"),
            free: c("free"),
            unconfigured: c("unconfigured"),
            rate_limited: c("rate_limited"),
            origin_denied: c("origin_denied"),
            upstream_error: c("upstream_error"),
        }
    }
}

impl TurnState {
    /// Builds the service (and, for Cloudflare, its HTTPS client).
    pub fn new(config: Config) -> Result<Self, ConfigError> {
        let limiter = Arc::new(limit::PerIp::new(config.rate_per_minute));
        let inner = Inner::new(
            config,
            limiter,
            Arc::new(mint::OpaqueIds::new()),
            Arc::new(Outcomes::new()),
        )?;
        Ok(Self(Arc::new(RwLock::new(Arc::new(inner)))))
    }

    /// Serves `config` from now on (secret rotation, new issuer keys or static list); requests
    /// in flight finish with the old one. On error nothing changes. The rate limit stays as
    /// built.
    pub fn reload(&self, config: Config) -> Result<(), ConfigError> {
        let now = self.current();
        let next = Inner::new(
            config,
            now.limiter.clone(),
            now.ids.clone(),
            now.outcomes.clone(),
        )?;
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(next);
        Ok(())
    }

    fn current(&self) -> Arc<Inner> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Inner {
    fn new(
        config: Config,
        limiter: Arc<limit::PerIp>,
        ids: Arc<mint::OpaqueIds>,
        outcomes: Arc<Outcomes>,
    ) -> Result<Self, ConfigError> {
        let client = match config.backend {
            Backend::Cloudflare(_) => Some(https_client()?),
            _ => None,
        };
        let template = match &config.backend {
            Backend::Hmac(cfg) => Some(mint::Template::new(cfg, config.ttl_secs)),
            _ => None,
        };
        Ok(Self {
            limiter,
            config,
            client,
            template,
            ids,
            outcomes,
        })
    }
}

fn https_client() -> Result<reqwest::Client, ConfigError> {
    let roots = rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| ConfigError::Invalid(format!("TLS: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(std::time::Duration::from_secs(5))
        .build()
        .map_err(|e| ConfigError::Invalid(format!("HTTP client: {e}")))
}

/// `GET/OPTIONS /api/turn` and `POST/OPTIONS /api/room-grant`.
pub fn router(state: TurnState) -> Router {
    Router::new()
        .route(
            "/api/turn",
            get(turn).options(|| async { preflight(Route::Turn) }),
        )
        .route(
            "/api/room-grant",
            post(room_grant).options(|| async { preflight(Route::Grant) }),
        )
        .with_state(state)
}

/// Runs `/api/turn` alone on `listener` until `shutdown`, with ops routes.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Resolve metric handles against the recorder before the state creates them.
    kibitz_http::install_metrics();
    let state = TurnState::new(config).map_err(std::io::Error::other)?;
    let opts = kibitz_http::ServeOptions::default();
    kibitz_http::serve_with_ops(listener, router(state), opts, shutdown).await
}

/// Which route a response belongs to: they differ in their CORS methods and headers.
#[derive(Debug, Clone, Copy)]
enum Route {
    Turn,
    Grant,
}

/// Kibitz's CORS set, on every response. By hand rather than tower-http's `CorsLayer` (the
/// broker uses it): Kibitz wants 204 preflights and the methods, headers and max-age on every
/// response with `", "` between items, which took a second layer beside `CorsLayer`, and the
/// pair cost `/api/turn` 8 % (33.3k → 36.2k instructions a request, measured alternately).
fn add_cors(h: &mut HeaderMap, route: Route) {
    let (methods, headers) = match route {
        Route::Turn => (
            "GET, OPTIONS",
            "authorization, content-type, x-kibitz-grant",
        ),
        Route::Grant => ("POST, OPTIONS", "authorization, content-type"),
    };
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static(methods),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static(headers),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("86400"),
    );
}

fn json_response(route: Route, status: StatusCode, cache: &'static str, body: String) -> Response {
    let mut r = Response::new(axum::body::Body::from(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.reserve(8);
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    add_cors(h, route);
    r
}

fn preflight(route: Route) -> Response {
    let mut r = StatusCode::NO_CONTENT.into_response();
    add_cors(r.headers_mut(), route);
    r
}

/// Origin allow-list and the per-IP rate limit, before any work.
fn guard(inner: &Inner, req: &Request, route: Route) -> Option<Response> {
    let allowed = &inner.config.allowed_origins;
    if !allowed.is_empty()
        && let Some(origin) = req.headers().get(header::ORIGIN)
        && !origin
            .to_str()
            .is_ok_and(|o| allowed.iter().any(|a| a == o))
    {
        inner.outcomes.origin_denied.increment(1);
        return Some(json_response(
            route,
            StatusCode::FORBIDDEN,
            "no-store",
            json!({"error": "origin not allowed"}).to_string(),
        ));
    }
    let ip = ClientIp::of(req.extensions()).unwrap_or(IpAddr::from([0, 0, 0, 0]));
    if let Err(retry_after) = inner.limiter.check(ip, unix_now()) {
        inner.outcomes.rate_limited.increment(1);
        tracing::debug!(client = %ip, "rate limited");
        let mut r = json_response(
            route,
            StatusCode::TOO_MANY_REQUESTS,
            "no-store",
            json!({"error": "rate limited"}).to_string(),
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
        return Some(r);
    }
    None
}

/// Which tier a caller is in, or `None` when gating refuses them. A grant is good for its own
/// room only: when the caller names a room (`?room=`), it must match.
fn tier(
    gating: Option<&Gating>,
    headers: &HeaderMap,
    room: Option<&str>,
    now: u64,
) -> Option<&'static str> {
    let Some(g) = gating else {
        return Some("open");
    };
    let grant = headers.get("x-kibitz-grant")?.to_str().ok()?;
    let payload = verify_grant(g.grant_secret.expose(), grant.trim(), now).ok()?;
    if room.is_some_and(|r| r != payload.room) {
        return None;
    }
    Some("room")
}

/// `?room=` from a query string, if present.
fn room_param(query: Option<&str>) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .filter(|(k, _)| k == "room")
        .map(|(_, v)| v.into_owned())
        .last()
}

async fn turn(State(state): State<TurnState>, req: Request) -> Response {
    let inner = &*state.current();
    if let Some(refused) = guard(inner, &req, Route::Turn) {
        return refused;
    }
    let now = unix_now();
    let ttl = inner.config.ttl_secs;
    if matches!(inner.config.backend, Backend::None) {
        inner.outcomes.unconfigured.increment(1);
        return json_response(
            Route::Turn,
            StatusCode::OK,
            "public, max-age=30",
            r#"{"iceServers":null,"configured":false}"#.into(),
        );
    }
    let room = room_param(req.uri().query());
    let Some(tier) = tier(
        inner.config.gating.as_ref(),
        req.headers(),
        room.as_deref(),
        now,
    ) else {
        inner.outcomes.free.increment(1);
        return json_response(
            Route::Turn,
            StatusCode::OK,
            "no-store",
            r#"{"iceServers":null,"configured":true,"tier":"free"}"#.into(),
        );
    };
    let minted = match (&inner.config.backend, &inner.template) {
        // Usernames are visible on the wire: an opaque id, never user data.
        (Backend::Hmac(_), Some(template)) => template.body(&inner.ids.next(), now, tier),
        (Backend::Cloudflare(cfg), _) => match &inner.client {
            Some(client) => mint::cloudflare(client, cfg, ttl, now)
                .await
                .map(|body| mint::with_tier(body, tier)),
            None => Err("no HTTP client".into()),
        },
        (Backend::Static(list), _) => Ok(mint::with_tier(
            mint::from_list(mint::clean_ice_servers(list.clone()), None, now),
            tier,
        )),
        _ => Err("not configured".into()),
    };
    match minted {
        Ok(body) => {
            if tier == "room" {
                inner.outcomes.issued_room.increment(1);
            } else {
                inner.outcomes.issued_open.increment(1);
            }
            json_response(Route::Turn, StatusCode::OK, "no-store", body)
        }
        Err(error) => {
            inner.outcomes.upstream_error.increment(1);
            tracing::warn!(%error, "minting TURN credentials failed");
            json_response(
                Route::Turn,
                StatusCode::OK,
                "no-store",
                json!({"iceServers": null, "configured": true, "error": error}).to_string(),
            )
        }
    }
}

/// Constant-time membership test for bearer keys (every key is compared).
fn known_key(keys: &[Secret], presented: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    keys.iter()
        .fold(subtle::Choice::from(0), |found, k| {
            found | k.expose().ct_eq(presented)
        })
        .into()
}

async fn room_grant(State(state): State<TurnState>, req: Request) -> Response {
    let inner = state.current();
    if let Some(refused) = guard(&inner, &req, Route::Grant) {
        return refused;
    }
    let (parts, body) = req.into_parts();
    let headers = parts.headers;
    // Grant requests are tiny; anything larger is not one.
    let Ok(body) = axum::body::to_bytes(body, 4096).await else {
        return json_response(
            Route::Grant,
            StatusCode::BAD_REQUEST,
            "no-store",
            r#"{"error":"missing or invalid room"}"#.into(),
        );
    };
    let body = String::from_utf8_lossy(&body);
    let Some(g) = inner
        .config
        .gating
        .as_ref()
        .filter(|g| !g.issuer_keys.is_empty())
    else {
        return json_response(
            Route::Grant,
            StatusCode::OK,
            "no-store",
            json!({"configured": false}).to_string(),
        );
    };
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|k| !k.is_empty());
    let Some(key) = bearer else {
        return json_response(
            Route::Grant,
            StatusCode::UNAUTHORIZED,
            "no-store",
            json!({"error": "missing key"}).to_string(),
        );
    };
    if !known_key(&g.issuer_keys, key.as_bytes()) {
        return json_response(
            Route::Grant,
            StatusCode::FORBIDDEN,
            "no-store",
            json!({"error": "unknown key"}).to_string(),
        );
    }
    let room = serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|v| v.get("room").and_then(Value::as_str).map(str::to_owned))
        .filter(|r| valid_grant_room(r));
    let Some(room) = room else {
        return json_response(
            Route::Grant,
            StatusCode::BAD_REQUEST,
            "no-store",
            json!({"error": "missing or invalid room"}).to_string(),
        );
    };
    let exp = unix_now().saturating_add(g.grant_ttl_secs);
    let payload = GrantPayload {
        room,
        sub: tag_of(key),
        exp: Some(exp),
    };
    let grant = sign_grant(g.grant_secret.expose(), &payload);
    json_response(
        Route::Grant,
        StatusCode::OK,
        "no-store",
        json!({"grant": grant, "exp": exp}).to_string(),
    )
}
