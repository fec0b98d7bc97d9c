//! `/api/turn` and `/api/room-grant` at the router: Kibitz's contract, gating, limits, and
//! the Cloudflare backend against a local stand-in that speaks Cloudflare's documented API.

#![allow(clippy::unwrap_used, clippy::expect_used)]
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use kibitz_proto::turn::{GrantPayload, sign_grant};
use kibitz_turn_api::config::{CloudflareConfig, Gating};
use kibitz_turn_api::{Backend, Config, Secret, TurnState, router};
use serde_json::{Value, json};
use tower::ServiceExt;

async fn call(
    app: &axum::Router,
    req: Request<Body>,
) -> (StatusCode, axum::http::HeaderMap, Value) {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    (status, headers, body)
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

fn app(config: Config) -> axum::Router {
    router(TurnState::new(config).unwrap())
}

fn unix_now() -> u64 {
    #[allow(clippy::disallowed_methods)]
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn kibitz_contract_cors_and_not_configured() {
    let app = app(Config::default());
    let (status, h, body) = call(&app, get("/api/turn")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"iceServers": null, "configured": false}));
    assert_eq!(h[header::CACHE_CONTROL], "public, max-age=30");
    assert_eq!(h[header::CONTENT_TYPE], "application/json");
    assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
    assert_eq!(h[header::ACCESS_CONTROL_ALLOW_METHODS], "GET, OPTIONS");
    assert_eq!(
        h[header::ACCESS_CONTROL_ALLOW_HEADERS],
        "authorization, content-type, x-kibitz-grant"
    );
    assert_eq!(h[header::ACCESS_CONTROL_MAX_AGE], "86400");
    let pre = Request::options("/api/turn")
        .header(header::ORIGIN, "https://app.example")
        .header(header::ACCESS_CONTROL_REQUEST_HEADERS, "x-kibitz-grant")
        .body(Body::empty())
        .unwrap();
    let (status, h, _) = call(&app, pre).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
}

#[tokio::test]
async fn hmac_credentials_have_both_shapes_and_no_store() {
    let mut cfg = Config::hmac(vec!["SOMESECRET".into()], "turn.example", 3478);
    cfg.ttl_secs = 600;
    let before = unix_now();
    let (status, h, body) = call(&app(cfg), get("/api/turn")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(h[header::CACHE_CONTROL], "no-store");
    assert_eq!(body["configured"], true);
    assert_eq!(body["tier"], "open");
    assert_eq!(body["ttl"], 600);
    let exp = body["expiresAt"].as_u64().unwrap();
    assert!(exp >= before + 600 && exp <= unix_now() + 600);
    let user = body["username"].as_str().unwrap();
    assert!(user.starts_with(&format!("{exp}:")));
    assert_eq!(
        body["password"],
        kibitz_proto::turn::rest_password(b"SOMESECRET", user)
    );
    let turn = &body["iceServers"][1];
    assert_eq!(turn["username"], body["username"]);
    assert_eq!(turn["credential"], body["password"]);
    assert_eq!(turn["urls"], body["uris"]);
    assert_eq!(
        body["iceServers"][0]["urls"],
        json!(["stun:turn.example:3478"])
    );
    // Each call mints a fresh opaque id.
    let cfg = Config::hmac(vec!["SOMESECRET".into()], "turn.example", 3478);
    let app = app(cfg);
    let (_, _, a) = call(&app, get("/api/turn")).await;
    let (_, _, b) = call(&app, get("/api/turn")).await;
    assert_ne!(a["username"], b["username"]);
    assert!(!a.to_string().contains("SOMESECRET"));
}

fn gated() -> Config {
    Config {
        gating: Some(Gating {
            grant_secret: Secret::new("grant-secret"),
            issuer_keys: vec![Secret::new("issuer-key")],
            grant_ttl_secs: 600,
        }),
        ..Config::hmac(vec!["s".into()], "h", 3478)
    }
}

fn with_grant(uri: &str, grant: &str) -> Request<Body> {
    Request::get(uri)
        .header("x-kibitz-grant", grant)
        .body(Body::empty())
        .unwrap()
}

#[tokio::test]
async fn gating_tiers_and_grant_verification() {
    let app = app(gated());
    let free = json!({"iceServers": null, "configured": true, "tier": "free"});
    let (_, h, body) = call(&app, get("/api/turn")).await;
    assert_eq!(body, free);
    assert_eq!(h[header::CACHE_CONTROL], "no-store");

    let good = |room: &str, exp: u64| {
        sign_grant(
            b"grant-secret",
            &GrantPayload {
                room: room.into(),
                sub: "t".into(),
                exp: Some(exp),
            },
        )
    };
    let now = unix_now();
    let (_, _, body) = call(&app, with_grant("/api/turn", &good("kbz-v1-a", now + 60))).await;
    assert_eq!(body["tier"], "room");
    assert!(body["iceServers"].is_array());
    let (_, _, body) = call(
        &app,
        with_grant("/api/turn?room=kbz-v1-a", &good("kbz-v1-a", now + 60)),
    )
    .await;
    assert_eq!(body["tier"], "room");
    // Wrong room, expired, tampered, forged with another secret: all free.
    let (_, _, body) = call(
        &app,
        with_grant("/api/turn?room=kbz-v1-b", &good("kbz-v1-a", now + 60)),
    )
    .await;
    assert_eq!(body, free);
    let (_, _, body) = call(&app, with_grant("/api/turn", &good("kbz-v1-a", now - 1))).await;
    assert_eq!(body, free);
    let mut tampered = good("kbz-v1-a", now + 60);
    tampered.insert(3, 'x');
    let (_, _, body) = call(&app, with_grant("/api/turn", &tampered)).await;
    assert_eq!(body, free);
    let forged = sign_grant(
        b"guess",
        &GrantPayload {
            room: "kbz-v1-a".into(),
            sub: "t".into(),
            exp: Some(now + 60),
        },
    );
    let (_, _, body) = call(&app, with_grant("/api/turn", &forged)).await;
    assert_eq!(body, free);
}

fn post_grant(auth: Option<&str>, body: &str) -> Request<Body> {
    let mut r = Request::post("/api/room-grant").header(header::CONTENT_TYPE, "application/json");
    if let Some(a) = auth {
        r = r.header(header::AUTHORIZATION, a);
    }
    r.body(Body::from(body.to_owned())).unwrap()
}

#[tokio::test]
async fn room_grants_are_minted_for_known_keys_and_then_work() {
    let app = app(gated());
    let (s, _, b) = call(&app, post_grant(None, r#"{"room":"kbz-v1-a"}"#)).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("missing key"))
    );
    let (s, _, _) = call(
        &app,
        post_grant(Some("Bearer nope"), r#"{"room":"kbz-v1-a"}"#),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _, _) = call(
        &app,
        post_grant(Some("Bearer issuer-key"), r#"{"room":"a b"}"#),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _, _) = call(&app, post_grant(Some("Bearer issuer-key"), "not json")).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, h, b) = call(
        &app,
        post_grant(Some("Bearer issuer-key"), r#"{"room":"kbz-v1-a"}"#),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h[header::ACCESS_CONTROL_ALLOW_METHODS], "POST, OPTIONS");
    assert!(b["exp"].as_u64().unwrap() > unix_now());
    let grant = b["grant"].as_str().unwrap();
    assert!(!grant.contains("issuer-key"));
    let (_, _, body) = call(&app, with_grant("/api/turn?room=kbz-v1-a", grant)).await;
    assert_eq!(body["tier"], "room");
    // Without gating the route says so.
    let (s, _, b) = call(
        &self::app(Config::default()),
        post_grant(Some("Bearer x"), "{}"),
    )
    .await;
    assert_eq!((s, b), (StatusCode::OK, json!({"configured": false})));
}

#[tokio::test]
async fn rate_limit_and_origin_allow_list() {
    let cfg = Config {
        rate_per_minute: 3,
        allowed_origins: vec!["https://ok.example".into()],
        ..Config::hmac(vec!["s".into()], "h", 3478)
    };
    let app = app(cfg);
    let from = |origin: &str| {
        Request::get("/api/turn")
            .header(header::ORIGIN, origin)
            .body(Body::empty())
            .unwrap()
    };
    let (s, h, _) = call(&app, from("https://evil.example")).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
    for _ in 0..3 {
        let (s, _, _) = call(&app, from("https://ok.example")).await;
        assert_eq!(s, StatusCode::OK);
    }
    let (s, h, b) = call(&app, get("/api/turn")).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = h[header::RETRY_AFTER].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait));
    assert_eq!(b["error"], "rate limited");
}

/// A stand-in for Cloudflare's `generate-ice-servers`: checks the bearer token and body, and
/// answers as the docs say (201 and a list), as the older endpoint did (a single object), or
/// with an error, depending on the key id.
async fn cloudflare_stand_in() -> String {
    use axum::extract::{Json, Path};
    use axum::routing::post;
    async fn generate(
        Path(key): Path<String>,
        headers: axum::http::HeaderMap,
        Json(body): Json<Value>,
    ) -> (StatusCode, Json<Value>) {
        if headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            != Some("Bearer cf-token")
        {
            return (StatusCode::UNAUTHORIZED, Json(json!({"error": "auth"})));
        }
        assert_eq!(body["ttl"], 900);
        match key.as_str() {
            "list" => (
                StatusCode::CREATED,
                Json(json!({"iceServers": [
                    {"urls": ["stun:stun.cloudflare.com:3478", "stun:stun.cloudflare.com:53"]},
                    {"urls": ["turn:turn.cloudflare.com:3478?transport=udp",
                              "turn:turn.cloudflare.com:53?transport=udp",
                              "turns:turn.cloudflare.com:443?transport=tcp"],
                     "username": "a1b2", "credential": "c3d4"}]})),
            ),
            "object" => (
                StatusCode::OK,
                Json(
                    json!({"iceServers": {"urls": "turn:turn.cloudflare.com:3478", "username": "u", "credential": "c"}}),
                ),
            ),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({}))),
        }
    }
    let app = axum::Router::new().route(
        "/v1/turn/keys/{key}/credentials/generate-ice-servers",
        post(generate),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

fn cloudflare(base: &str, key: &str, token: &str) -> Config {
    Config {
        backend: Backend::Cloudflare(CloudflareConfig {
            key_id: key.into(),
            api_token: Secret::new(token),
            base_url: base.into(),
        }),
        ttl_secs: 900,
        ..Config::default()
    }
}

#[tokio::test]
async fn cloudflare_backend_against_a_stand_in() {
    let base = cloudflare_stand_in().await;
    let (_, h, body) = call(
        &app(cloudflare(&base, "list", "cf-token")),
        get("/api/turn"),
    )
    .await;
    assert_eq!(h[header::CACHE_CONTROL], "no-store");
    assert_eq!(body["tier"], "open");
    assert_eq!(
        body["iceServers"][0]["urls"],
        json!(["stun:stun.cloudflare.com:3478"])
    );
    assert_eq!(
        body["iceServers"][1]["urls"],
        json!([
            "turn:turn.cloudflare.com:3478?transport=udp",
            "turns:turn.cloudflare.com:443?transport=tcp"
        ])
    );
    assert_eq!(
        (body["username"].as_str(), body["password"].as_str()),
        (Some("a1b2"), Some("c3d4"))
    );
    assert_eq!(body["ttl"], 900);

    let (_, _, body) = call(
        &app(cloudflare(&base, "object", "cf-token")),
        get("/api/turn"),
    )
    .await;
    assert_eq!(
        body["iceServers"][0]["urls"],
        json!(["turn:turn.cloudflare.com:3478"])
    );

    let (s, _, body) = call(
        &app(cloudflare(&base, "broken", "cf-token")),
        get("/api/turn"),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        body,
        json!({"iceServers": null, "configured": true, "error": "cf 500"})
    );

    let (_, _, body) = call(
        &app(cloudflare(&base, "list", "wrong-token")),
        get("/api/turn"),
    )
    .await;
    assert_eq!(body["error"], "cf 401");
    assert!(!body.to_string().contains("wrong-token"));
}

#[tokio::test]
async fn static_backend_serves_the_list() {
    let cfg = Config {
        backend: Backend::Static(json!([
            {"urls": "stun:stun.example:3478"},
            {"urls": ["turn:t.example:3478", "turn:t.example:53"], "username": "u", "credential": "p"}
        ])),
        ..Config::default()
    };
    let (_, _, body) = call(&app(cfg), get("/api/turn")).await;
    assert_eq!(body["tier"], "open");
    assert_eq!(
        body["iceServers"][1]["urls"],
        json!(["turn:t.example:3478"])
    );
    assert_eq!(body["username"], "u");
}

#[tokio::test]
async fn reload_swaps_secrets_and_keys_but_keeps_the_rate_limit_window() {
    use kibitz_proto::turn::rest_password;
    // The limit counts per clock minute: a run that straddles a minute is run again.
    loop {
        let minute = unix_now() / 60;
        let mut old = Config::hmac(vec!["old".into()], "turn.example", 3478);
        old.rate_per_minute = 4;
        let state = TurnState::new(old).unwrap();
        let app = router(state.clone());
        let (_, _, body) = call(&app, get("/api/turn")).await;
        let user = body["username"].as_str().unwrap();
        assert_eq!(body["password"], rest_password(b"old", user));

        let mut new = Config::hmac(vec!["new".into(), "old".into()], "turn.example", 3478);
        new.rate_per_minute = 4;
        new.gating = Some(Gating {
            grant_secret: Secret::new("g"),
            issuer_keys: vec![Secret::new("issuer")],
            grant_ttl_secs: 60,
        });
        state.reload(new).unwrap();
        // Gating came with the reload: no grant, no credentials.
        let (_, _, body) = call(&app, get("/api/turn")).await;
        assert_eq!(body["tier"], "free");
        let grant = sign_grant(
            b"g",
            &GrantPayload {
                room: "kbz-v1-a".into(),
                sub: "t".into(),
                exp: Some(unix_now() + 60),
            },
        );
        let req = Request::get("/api/turn")
            .header("x-kibitz-grant", grant)
            .body(Body::empty())
            .unwrap();
        let (status, _, body) = call(&app, req).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let user = body["username"].as_str().unwrap();
        assert_eq!(body["password"], rest_password(b"new", user));
        // The issuer key from the reload mints grants.
        let req = Request::post("/api/room-grant")
            .header(header::AUTHORIZATION, "Bearer issuer")
            .body(Body::from(r#"{"room":"kbz-v1-a"}"#))
            .unwrap();
        let (status, _, body) = call(&app, req).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(body["grant"].is_string());
        // The fifth request this minute: the window carried over the reload (limit 4).
        let (status, _, _) = call(&app, get("/api/turn")).await;
        if unix_now() / 60 != minute {
            continue;
        }
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        break;
    }
}
