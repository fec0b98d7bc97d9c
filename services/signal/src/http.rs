//! The broker's HTTP surface: the banner, id allocation, discovery, the WebSocket upgrade,
//! and CORS as the reference's `cors` middleware does it.

use crate::core::OpenParams;
use crate::hub::Hub;
use crate::{conn, ws};
use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::TokioIo;
use kibitz_http::ClientIp;
use kibitz_proto::peerjs;
use std::net::SocketAddr;
use std::sync::Arc;
use tower_http::cors::{AllowHeaders, AllowMethods, AllowOrigin, CorsLayer};
use tracing::Instrument;

const JSON: &str = "application/json; charset=utf-8";
const HTML: &str = "text/html; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

pub(crate) fn router(hub: Arc<Hub>) -> Router {
    let base = hub.config.path.clone();
    let ws_path = format!("{base}peerjs");
    let mut r = Router::new()
        .route(&base, get(banner))
        .route(&format!("{base}{{key}}/id"), get(new_id))
        .route(&format!("{base}{{key}}/peers"), get(peers))
        .route(&ws_path, get(upgrade));
    if base != "/" {
        r = r.route(base.trim_end_matches('/'), get(banner));
    }
    // The health probe Kibitz's /api/signal runs: `GET https://HOST/id` at the root.
    r = r.route("/id", get(new_id));
    r.fallback(not_found)
        .layer(cors(&hub.config.cors_origins))
        .layer(middleware::from_fn(cors_status_and_vary))
        .layer(middleware::from_fn_with_state(ws_path, upgrade_guard))
        .with_state(hub)
}

fn typed(ct: &'static str, status: StatusCode, body: impl Into<Body>) -> Response {
    let mut r = Response::new(body.into());
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    r
}

async fn banner() -> Response {
    typed(JSON, StatusCode::OK, peerjs::BANNER)
}

async fn new_id(State(hub): State<Arc<Hub>>) -> Response {
    // Cluster mode: a node that cannot reach the registry admits nobody, so it says so here,
    // where `/api/signal`'s prober (GET /id) and the PeerJS client's id fetch look.
    if hub.cluster.as_ref().is_some_and(|c| !c.is_up()) {
        return typed(
            TEXT,
            StatusCode::SERVICE_UNAVAILABLE,
            "Cluster registry unavailable",
        );
    }
    typed(HTML, StatusCode::OK, hub.fresh_id())
}

async fn peers(State(hub): State<Arc<Hub>>) -> Response {
    if !hub.config.allow_discovery {
        return typed(TEXT, StatusCode::UNAUTHORIZED, "Unauthorized");
    }
    let Some(ids) = hub.all_peer_ids().await else {
        return typed(
            TEXT,
            StatusCode::SERVICE_UNAVAILABLE,
            "Cluster registry unavailable",
        );
    };
    let body = serde_json::to_string(&ids).unwrap_or_else(|_| "[]".into());
    typed(JSON, StatusCode::OK, body)
}

async fn not_found(req: Request) -> Response {
    if is_upgrade(req.headers()) {
        return StatusCode::BAD_REQUEST.into_response();
    }
    typed(TEXT, StatusCode::NOT_FOUND, "Not Found")
}

fn is_upgrade(h: &HeaderMap) -> bool {
    h.get(header::UPGRADE).is_some()
}

/// WebSocket upgrades anywhere but the broker path get 400, as the reference's `ws` does.
async fn upgrade_guard(State(ws_path): State<String>, req: Request, next: Next) -> Response {
    if is_upgrade(req.headers()) && req.uri().path() != ws_path {
        return StatusCode::BAD_REQUEST.into_response();
    }
    next.run(req).await
}

/// CORS as the `cors` middleware with `{origin: true}` or an origin list: reflect an allowed
/// `Origin` (an empty list allows any); preflights (every `OPTIONS`) get the methods
/// Express lists and any requested headers mirrored.
fn cors(origins: &[String]) -> CorsLayer {
    let allow = if origins.is_empty() {
        AllowOrigin::mirror_request()
    } else {
        // A predicate, not `AllowOrigin::list`: that one panics on a `*` entry, which here is
        // just an origin nobody sends.
        let list = origins.to_vec();
        AllowOrigin::predicate(move |o: &HeaderValue, _| {
            o.to_str().is_ok_and(|o| list.iter().any(|a| a == o))
        })
    };
    CorsLayer::new()
        .allow_origin(allow)
        .allow_methods(AllowMethods::list([
            Method::GET,
            Method::HEAD,
            Method::PUT,
            Method::PATCH,
            Method::POST,
            Method::DELETE,
        ]))
        .allow_headers(AllowHeaders::mirror_request())
        .vary([])
}

/// The two things `cors` does that [`CorsLayer`] cannot say: preflights answer 204
/// (`CorsLayer` answers 200), and `Vary` names `Origin` on every response plus
/// `Access-Control-Request-Headers` on a preflight that sent them (`CorsLayer` has one fixed
/// `Vary` list for every response, in lower case).
async fn cors_status_and_vary(req: Request, next: Next) -> Response {
    let preflight = req.method() == Method::OPTIONS;
    let mirrored = preflight
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_HEADERS);
    let mut resp = next.run(req).await;
    if preflight {
        *resp.status_mut() = StatusCode::NO_CONTENT;
    }
    let h = resp.headers_mut();
    if mirrored {
        h.append(
            header::VARY,
            HeaderValue::from_static("Access-Control-Request-Headers"),
        );
    }
    h.append(header::VARY, HeaderValue::from_static("Origin"));
    resp
}

fn header_has_token(h: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    h.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// Query parameters as the reference reads them: form-urlencoded, the last repeat wins.
pub fn open_params(query: Option<&str>) -> OpenParams {
    let mut p = OpenParams::default();
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match &*k {
            "key" => p.key = Some(v.into_owned()),
            "id" => p.id = Some(v.into_owned()),
            "token" => p.token = Some(v.into_owned()),
            _ => {}
        }
    }
    p
}

/// What the broker makes of an upgrade request's headers before switching protocols.
#[derive(Debug, PartialEq, Eq)]
pub enum Handshake {
    /// No `Upgrade: websocket`: a plain GET on the socket path.
    NotWebSocket,
    /// An upgrade without a key, version 13 or `Connection: upgrade`.
    Bad,
    /// A valid handshake, with the `Sec-WebSocket-Accept` value to answer.
    Accept(String),
}

/// Reads an upgrade request's `Upgrade`, `Connection`, `Sec-WebSocket-Version` and
/// `Sec-WebSocket-Key` (RFC 6455 §4.2.1). Pure, so the fuzz target runs it as is.
pub fn read_handshake(h: &HeaderMap) -> Handshake {
    if !header_has_token(h, header::UPGRADE, "websocket") {
        return Handshake::NotWebSocket;
    }
    let version_ok = h
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v.as_bytes() == b"13");
    match h.get(header::SEC_WEBSOCKET_KEY) {
        Some(key) if version_ok && header_has_token(h, header::CONNECTION, "upgrade") => {
            Handshake::Accept(ws::accept_key(key.as_bytes()))
        }
        _ => Handshake::Bad,
    }
}

/// Whether the broker admits a WebSocket from this `Origin`. Browsers apply no CORS to
/// WebSockets, so the broker checks it itself; clients without one (not a browser) pass:
/// they could send any origin anyway.
pub fn origin_allowed(origins: &[String], h: &HeaderMap) -> bool {
    origins.is_empty()
        || h.get(header::ORIGIN).is_none_or(|origin| {
            origin
                .to_str()
                .is_ok_and(|o| origins.iter().any(|a| a == o))
        })
}

/// The 101 answering a valid handshake.
pub(crate) fn switching_protocols(accept: &str) -> Response {
    let mut r = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let h = r.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    r
}

async fn upgrade(State(hub): State<Arc<Hub>>, mut req: Request) -> Response {
    let h = req.headers();
    let accept = match read_handshake(h) {
        // A plain GET on the socket path, as Express would answer it.
        Handshake::NotWebSocket => return typed(TEXT, StatusCode::NOT_FOUND, "Not Found"),
        Handshake::Bad => {
            hub.reject("handshake");
            return typed(TEXT, StatusCode::BAD_REQUEST, "Bad WebSocket handshake");
        }
        Handshake::Accept(accept) => accept,
    };
    if !origin_allowed(&hub.config.cors_origins, h) {
        hub.reject("origin");
        tracing::debug!("WebSocket upgrade from an origin not allowed");
        return typed(TEXT, StatusCode::FORBIDDEN, "Origin not allowed");
    }
    let ip = ClientIp::of(req.extensions());
    if let Some(ip) = ip
        && let Err(wait) = hub.connect_rate.check(ip, crate::hub::now())
    {
        hub.reject("connect_rate");
        tracing::debug!(client = %ip, "WebSocket upgrade over --connect-rate");
        let mut r = typed(
            TEXT,
            StatusCode::TOO_MANY_REQUESTS,
            "Too many connections from this address; retry later",
        );
        let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        return r;
    }
    let Some(on_upgrade) = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() else {
        hub.reject("handshake");
        return typed(
            TEXT,
            StatusCode::BAD_REQUEST,
            "Connection cannot be upgraded",
        );
    };
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let params = open_params(req.uri().query());
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let (conn, outbox) = hub.open(ip, params);
        let span = tracing::debug_span!("ws", conn = conn.0);
        // The only place a client address is logged, at DEBUG: the limits' address and the
        // connection's own (the PROXY header's source, or the TCP peer).
        span.in_scope(|| {
            tracing::debug!(
                client = %ip.map_or_else(|| "-".to_owned(), |i| i.to_string()),
                peer = %peer.map_or_else(|| "-".to_owned(), |p| p.to_string()),
                "WebSocket open"
            );
        });
        conn::run(TokioIo::new(upgraded), hub, conn, outbox)
            .instrument(span)
            .await;
    });
    switching_protocols(&accept)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_decode_plus_and_percent_and_last_wins() {
        let p = open_params(Some("key=peerjs&id=a+b&id=x%2By+z&token=t&version=1.5.5"));
        assert_eq!(p.id.as_deref(), Some("x+y z"));
        assert_eq!(p.key.as_deref(), Some("peerjs"));
        assert_eq!(p.token.as_deref(), Some("t"));
    }
}
