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
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use kibitz_proto::turn::{GrantPayload, sign_grant, tag_of, valid_grant_room, verify_grant};
use serde_json::{Value, json};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
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
pub struct TurnState(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    config: Config,
    client: Option<reqwest::Client>,
    limiter: limit::PerIp,
}

impl TurnState {
    /// Builds the service (and, for Cloudflare, its HTTPS client).
    pub fn new(config: Config) -> Result<Self, ConfigError> {
        let client = match config.backend {
            Backend::Cloudflare(_) => Some(https_client()?),
            _ => None,
        };
        Ok(Self(Arc::new(Inner {
            limiter: limit::PerIp::new(config.rate_per_minute),
            config,
            client,
        })))
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
        .route("/api/turn", get(turn).options(preflight))
        .route("/api/room-grant", post(room_grant).options(preflight))
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .layer(middleware::from_fn(cors))
        .with_state(state)
}

/// Runs `/api/turn` alone on `listener` until `shutdown`, with ops routes.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let metrics = kibitz_http::install_metrics();
    let state = TurnState::new(config).map_err(std::io::Error::other)?;
    let readiness = kibitz_http::Readiness::ready();
    let app = router(state).merge(kibitz_http::ops_router(metrics, readiness.clone()));
    kibitz_http::serve(
        listener,
        app,
        kibitz_http::ServeOptions::default(),
        async move {
            shutdown.await;
            readiness.set_draining();
        },
    )
    .await
}

fn outcome(what: &'static str) {
    metrics::counter!("kibitz_turn_requests_total", "outcome" => what).increment(1);
}

fn json_response(status: StatusCode, cache: &'static str, body: Value) -> Response {
    let mut r = (status, body.to_string()).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    r
}

/// Kibitz's CORS set on every response (the grant route allows POST and no grant header).
async fn cors(req: Request, next: Next) -> Response {
    let grant_route = req.uri().path() == "/api/room-grant";
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    let (methods, headers) = if grant_route {
        ("POST, OPTIONS", "authorization, content-type")
    } else {
        (
            "GET, OPTIONS",
            "authorization, content-type, x-kibitz-grant",
        )
    };
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
    resp
}

async fn preflight() -> StatusCode {
    StatusCode::NO_CONTENT
}

/// Origin allow-list and the per-IP rate limit, before any work.
async fn guard(State(state): State<TurnState>, req: Request, next: Next) -> Response {
    if req.method() == Method::OPTIONS {
        return next.run(req).await;
    }
    let allowed = &state.0.config.allowed_origins;
    if !allowed.is_empty()
        && let Some(origin) = req.headers().get(header::ORIGIN)
        && !origin
            .to_str()
            .is_ok_and(|o| allowed.iter().any(|a| a == o))
    {
        outcome("origin_denied");
        return json_response(
            StatusCode::FORBIDDEN,
            "no-store",
            json!({"error": "origin not allowed"}),
        );
    }
    let ip = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0.ip());
    if let Err(retry_after) = state.0.limiter.check(ip, unix_now()) {
        outcome("rate_limited");
        let mut r = json_response(
            StatusCode::TOO_MANY_REQUESTS,
            "no-store",
            json!({"error": "rate limited"}),
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
        return r;
    }
    next.run(req).await
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

#[derive(Debug, serde::Deserialize)]
struct TurnQuery {
    room: Option<String>,
}

async fn turn(
    State(state): State<TurnState>,
    Query(query): Query<TurnQuery>,
    headers: HeaderMap,
) -> Response {
    let inner = &state.0;
    let now = unix_now();
    let ttl = inner.config.ttl_secs;
    if matches!(inner.config.backend, Backend::None) {
        outcome("unconfigured");
        return json_response(
            StatusCode::OK,
            "public, max-age=30",
            json!({"iceServers": null, "configured": false}),
        );
    }
    let Some(tier) = tier(
        inner.config.gating.as_ref(),
        &headers,
        query.room.as_deref(),
        now,
    ) else {
        outcome("free");
        return json_response(
            StatusCode::OK,
            "no-store",
            json!({"iceServers": null, "configured": true, "tier": "free"}),
        );
    };
    // An opaque per-credential id: usernames are visible on the wire, so no user data.
    let user = uuid::Uuid::new_v4().simple().to_string()[..16].to_owned();
    let minted = match &inner.config.backend {
        Backend::Hmac(cfg) => mint::hmac(cfg, ttl, now, &user),
        Backend::Cloudflare(cfg) => match &inner.client {
            Some(client) => mint::cloudflare(client, cfg, ttl, now).await,
            None => Err("no HTTP client".into()),
        },
        Backend::Static(list) => Ok(mint::from_list(
            mint::clean_ice_servers(list.clone()),
            None,
            now,
        )),
        Backend::None => Err("not configured".into()),
    };
    match minted {
        Ok(mut body) => {
            outcome(if tier == "room" {
                "issued_room"
            } else {
                "issued_open"
            });
            body.insert("configured".into(), true.into());
            body.insert("tier".into(), tier.into());
            json_response(StatusCode::OK, "no-store", Value::Object(body))
        }
        Err(error) => {
            outcome("upstream_error");
            tracing::warn!(%error, "minting TURN credentials failed");
            json_response(
                StatusCode::OK,
                "no-store",
                json!({"iceServers": null, "configured": true, "error": error}),
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

async fn room_grant(State(state): State<TurnState>, headers: HeaderMap, body: String) -> Response {
    let Some(g) = state
        .0
        .config
        .gating
        .as_ref()
        .filter(|g| !g.issuer_keys.is_empty())
    else {
        return json_response(StatusCode::OK, "no-store", json!({"configured": false}));
    };
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|k| !k.is_empty());
    let Some(key) = bearer else {
        return json_response(
            StatusCode::UNAUTHORIZED,
            "no-store",
            json!({"error": "missing key"}),
        );
    };
    if !known_key(&g.issuer_keys, key.as_bytes()) {
        return json_response(
            StatusCode::FORBIDDEN,
            "no-store",
            json!({"error": "unknown key"}),
        );
    }
    let room = serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|v| v.get("room").and_then(Value::as_str).map(str::to_owned))
        .filter(|r| valid_grant_room(r));
    let Some(room) = room else {
        return json_response(
            StatusCode::BAD_REQUEST,
            "no-store",
            json!({"error": "missing or invalid room"}),
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
        StatusCode::OK,
        "no-store",
        json!({"grant": grant, "exp": exp}),
    )
}
