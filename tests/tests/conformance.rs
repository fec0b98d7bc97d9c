//! Black-box PeerJS broker conformance suite: cases 1–23 of PEERJS.md §3.
//!
//! `KIBITZ_CONFORMANCE_TARGET=ours` (default) runs them against `kibitz_signal::serve`;
//! `KIBITZ_CONFORMANCE_TARGET=reference` against the real `peer@1.0.2` (needs `node` and
//! `tests/node/node_modules`), which proves the suite asserts the reference behaviour.

#[path = "../conformance/harness.rs"]
#[allow(dead_code)] // Not every helper is used by every case.
mod harness;

use std::time::Duration;

use harness::{Backend, OPEN, Opts, Peer, Upgrade, js, start};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

const APP_JSON: &str = r#"{"name":"PeerJS Server","description":"A server side element to broker connections between PeerJS clients.","website":"https://peerjs.com/"}"#;

const ERR_PARAMS: &str =
    r#"{"type":"ERROR","payload":{"msg":"No id, token, or key supplied to websocket server"}}"#;
const ERR_KEY: &str = r#"{"type":"ERROR","payload":{"msg":"Invalid key provided"}}"#;
const ERR_LIMIT: &str =
    r#"{"type":"ERROR","payload":{"msg":"Server has reached its concurrent user limit"}}"#;
const ID_TAKEN: &str = r#"{"type":"ID-TAKEN","payload":{"msg":"ID is taken"}}"#;

fn media_type(content_type: Option<&str>) -> String {
    content_type
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

fn is_uuid_v4(s: &str) -> bool {
    let b = s.as_bytes();
    s.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit() && !c.is_ascii_uppercase(),
        })
        && b[14] == b'4'
        && matches!(b[19], b'8' | b'9' | b'a' | b'b')
}

/// Connects with `query` and expects `error` then a status-less close.
async fn expect_refused(t: &harness::Target, query: &str, error: &str) {
    let mut peer = t.connect(query).await;
    peer.id = format!("<{query}>");
    peer.expect_text(error).await;
    peer.expect_close_1005().await;
}

// 1 -------------------------------------------------------------------------------------------

#[tokio::test]
async fn case_01_root_returns_app_json() {
    let t = start(Opts::default()).await;
    let r = t.get("/").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    assert_eq!(r.text(), APP_JSON);

    // Anything else is a 404.
    assert_eq!(t.get("/nope/x/y").await.status, 404);

    // With a base path, both `<base>` and `<base>/` serve it.
    let t = start(Opts {
        path: "/myapp".into(),
        ..Opts::default()
    })
    .await;
    for target in ["/myapp", "/myapp/"] {
        let r = t.get(target).await;
        assert_eq!(r.status, 200, "GET {target}");
        assert_eq!(
            r.header("content-type"),
            Some("application/json; charset=utf-8")
        );
        assert_eq!(r.text(), APP_JSON, "GET {target}");
    }
}

// 2 -------------------------------------------------------------------------------------------

#[tokio::test]
async fn case_02_id_is_a_fresh_uuid_for_any_key() {
    let t = start(Opts::default()).await;
    let mut seen = Vec::new();
    for target in [
        "/peerjs/id",
        "/wrongkey/id",
        "/peerjs/id?ts=17957884366630.9299303313697387&version=1.5.5",
    ] {
        let r = t.get(target).await;
        assert_eq!(r.status, 200, "GET {target}");
        assert_eq!(
            r.header("content-type"),
            Some("text/html; charset=utf-8"),
            "GET {target}"
        );
        let id = r.text();
        assert!(
            is_uuid_v4(&id),
            "GET {target}: {id:?} is not a lowercase v4 UUID"
        );
        assert!(!seen.contains(&id), "GET {target}: repeated id {id}");
        seen.push(id);
    }
    // The id is not reserved: it can be registered right away.
    t.open(&seen[0], "tok").await;
}

// 3 -------------------------------------------------------------------------------------------

#[tokio::test]
async fn case_03_peers_discovery() {
    let t = start(Opts::default()).await;
    let r = t.get("/peerjs/peers").await;
    assert_eq!(r.status, 401);
    assert_eq!(media_type(r.header("content-type")), "text/plain");
    assert_eq!(r.text(), "Unauthorized");

    let t = start(Opts {
        allow_discovery: true,
        ..Opts::default()
    })
    .await;
    let r = t.get("/peerjs/peers").await;
    assert_eq!(r.status, 200);
    assert_eq!(media_type(r.header("content-type")), "application/json");
    assert_eq!(r.text(), "[]");

    let _p1 = t.open("p1", "t1").await;
    let _p2 = t.open("p2", "t2").await;
    let _p3 = t.open("p3", "t3").await;
    // Any key works here too.
    for target in ["/peerjs/peers", "/otherkey/peers"] {
        let r = t.get(target).await;
        assert_eq!(r.status, 200, "GET {target}");
        assert_eq!(media_type(r.header("content-type")), "application/json");
        assert_eq!(
            r.text(),
            r#"["p1","p2","p3"]"#,
            "GET {target}: insertion order"
        );
    }
}

// 4 -------------------------------------------------------------------------------------------

#[tokio::test]
async fn case_04_cors() {
    const O1: &str = "http://o1.example";
    const O2: &str = "https://o2.example:8443";
    const O3: &str = "http://o3.example";

    // Default: reflect any Origin, with `Vary: Origin`.
    let t = start(Opts::default()).await;
    for target in ["/peerjs/id", "/"] {
        let r = t.http("GET", target, &[("Origin", O3)]).await;
        assert_eq!(r.status, 200, "GET {target}");
        assert_eq!(
            r.header("access-control-allow-origin"),
            Some(O3),
            "GET {target}"
        );
        assert!(
            r.header_tokens("vary")
                .iter()
                .any(|v| v.eq_ignore_ascii_case("origin")),
            "GET {target}: Vary {:?} lacks Origin",
            r.header_tokens("vary")
        );
    }
    // No Origin: no ACAO.
    let r = t.get("/peerjs/id").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), None);

    // Preflight.
    let r = t
        .http(
            "OPTIONS",
            "/peerjs/id",
            &[("Origin", O1), ("Access-Control-Request-Method", "GET")],
        )
        .await;
    assert_eq!(r.status, 204);
    assert_eq!(r.header("access-control-allow-origin"), Some(O1));
    assert_eq!(
        r.header("access-control-allow-methods"),
        Some("GET,HEAD,PUT,PATCH,POST,DELETE")
    );

    // Allow-list: listed origins are reflected, others get no ACAO.
    let t = start(Opts {
        cors_origins: vec![O1.into(), O2.into()],
        ..Opts::default()
    })
    .await;
    for origin in [O1, O2] {
        let r = t.http("GET", "/peerjs/id", &[("Origin", origin)]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("access-control-allow-origin"), Some(origin));
    }
    let r = t.http("GET", "/peerjs/id", &[("Origin", O3)]).await;
    assert_eq!(r.status, 200, "an unlisted origin is still served");
    assert_eq!(r.header("access-control-allow-origin"), None);
}

// 5 -------------------------------------------------------------------------------------------

#[tokio::test]
async fn case_05_wrong_ws_path_is_http_400() {
    let q = "key=peerjs&id=a&token=t";
    let t = start(Opts::default()).await;
    for path in [
        format!("/peerjs/?{q}"),
        format!("/peerjs/x?{q}"),
        format!("/foo?{q}"),
        format!("/?{q}"),
    ] {
        match t.upgrade_raw(&path).await {
            Upgrade::Refused(status) => assert_eq!(status, 400, "upgrade {path}"),
            Upgrade::Accepted(_) => panic!("upgrade {path}: accepted, expected HTTP 400"),
        }
    }

    let t = start(Opts {
        path: "/myapp".into(),
        ..Opts::default()
    })
    .await;
    for path in [
        format!("/peerjs?{q}"),
        format!("/myapp/peerjs/?{q}"),
        format!("/myapp?{q}"),
    ] {
        match t.upgrade_raw(&path).await {
            Upgrade::Refused(status) => assert_eq!(status, 400, "upgrade {path}"),
            Upgrade::Accepted(_) => panic!("upgrade {path}: accepted, expected HTTP 400"),
        }
    }
    match t.upgrade_raw(&format!("/myapp/peerjs?{q}")).await {
        Upgrade::Accepted(_) => {}
        Upgrade::Refused(status) => panic!("upgrade /myapp/peerjs: HTTP {status}"),
    }
    t.open("b", "t").await;
}

// 6 -------------------------------------------------------------------------------------------

#[tokio::test]
async fn case_06_missing_params_error_then_close() {
    let t = start(Opts::default()).await;
    for query in [
        "",
        "key=peerjs",
        "key=peerjs&id=a",
        "key=peerjs&token=t",
        "id=a&token=t",
        "key=peerjs&id=&token=t",
        "key=peerjs&id=a&token=",
        "key=&id=a&token=t",
        // Missing params win over a wrong key.
        "key=wrong&id=a",
        "version=1.5.5&ts=1",
    ] {
        expect_refused(&t, query, ERR_PARAMS).await;
    }
}

// 7 -------------------------------------------------------------------------------------------

#[tokio::test]
async fn case_07_wrong_key_error_then_close() {
    let t = start(Opts::default()).await;
    for key in ["nope", "PEERJS", "PeerJS", "peerj", "peerjs2"] {
        expect_refused(&t, &format!("key={key}&id=a&token=t"), ERR_KEY).await;
    }
    // The id was never registered by the refused attempts.
    t.open("a", "other").await;

    let t = start(Opts {
        key: "s3cret".into(),
        ..Opts::default()
    })
    .await;
    expect_refused(&t, "key=peerjs&id=a&token=t", ERR_KEY).await;
    t.open_with_key("s3cret", "a", "t").await;
}

// 8 -------------------------------------------------------------------------------------------

#[tokio::test]
async fn case_08_open_is_first_frame() {
    let t = start(Opts::default()).await;
    let mut a = t.connect_as("peerjs", "alice", "l8zjrlwprx").await;
    a.expect_text(OPEN).await;
    a.probe().await;

    // The real client's URL: a UUID id plus ignored `version` (and any other) parameters.
    let id = "36812455-8d3c-4a5b-9f1e-0123456789ab";
    let mut b = t
        .connect(&format!(
            "key=peerjs&id={id}&token=tok&version=1.5.5&ts=123&x=y"
        ))
        .await;
    b.id = id.into();
    b.expect_text(OPEN).await;
    b.probe().await;
}

// 9 -------------------------------------------------------------------------------------------

#[tokio::test]
async fn case_09_relay_rebuilds_frames() {
    let t = start(Opts::default()).await;
    let mut alice = t.open("alice", "ta").await;
    let mut bob = t.open("bob", "tb").await;
    let mut carol = t.open("carol", "tc").await;

    let sdp = r#"{"sdp":{"type":"offer","sdp":"v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n"},"type":"data","connectionId":"dc_d2cb53t9hla","metadata":{"hello":"world"},"label":"lbl","reliable":true,"serialization":"binary"}"#;
    // (what, delivered to carol instead of bob, sent by alice, relayed frame)
    let cases: Vec<(&str, bool, String, String)> = vec![
        // src injected, payload object preserved.
        (
            "OFFER",
            false,
            format!(r#"{{"type":"OFFER","payload":{sdp},"dst":"bob"}}"#),
            format!(r#"{{"type":"OFFER","src":"alice","dst":"bob","payload":{sdp}}}"#),
        ),
        // Spoofed src overwritten; string payload.
        (
            "ANSWER",
            false,
            r#"{"type":"ANSWER","src":"mallory","dst":"bob","payload":"just a string"}"#.into(),
            r#"{"type":"ANSWER","src":"alice","dst":"bob","payload":"just a string"}"#.into(),
        ),
        // Extra keys dropped, keys reordered to type, src, dst, payload; number payload.
        (
            "CANDIDATE",
            false,
            r#"{"extra":42,"payload":7,"dst":"bob","meta":{"x":1},"type":"CANDIDATE"}"#.into(),
            r#"{"type":"CANDIDATE","src":"alice","dst":"bob","payload":7}"#.into(),
        ),
        // Absent payload: the key is omitted.
        (
            "ANSWER without payload",
            false,
            r#"{"type":"ANSWER","dst":"bob"}"#.into(),
            r#"{"type":"ANSWER","src":"alice","dst":"bob"}"#.into(),
        ),
        // Array / nested / boolean payloads pass through.
        (
            "CANDIDATE array",
            true,
            r#"{"dst":"carol","type":"CANDIDATE","payload":[1,"x",true,{"a":[]},-2.5]}"#.into(),
            r#"{"type":"CANDIDATE","src":"alice","dst":"carol","payload":[1,"x",true,{"a":[]},-2.5]}"#.into(),
        ),
        (
            "CANDIDATE trickle",
            true,
            r#"{"type":"CANDIDATE","payload":{"candidate":{"candidate":"candidate:1 1 udp 2122260223 127.0.0.1 50001 typ host generation 0","sdpMid":"0","sdpMLineIndex":0,"usernameFragment":"ufrg"},"type":"data","connectionId":"dc_d2cb53t9hla"},"dst":"carol"}"#.into(),
            r#"{"type":"CANDIDATE","src":"alice","dst":"carol","payload":{"candidate":{"candidate":"candidate:1 1 udp 2122260223 127.0.0.1 50001 typ host generation 0","sdpMid":"0","sdpMLineIndex":0,"usernameFragment":"ufrg"},"type":"data","connectionId":"dc_d2cb53t9hla"}}"#.into(),
        ),
    ];
    for (what, to_carol, sent, expected) in cases {
        alice.send_text(&sent).await;
        let got = if to_carol {
            carol.recv_text().await
        } else {
            bob.recv_text().await
        };
        assert_eq!(got, expected, "{what}");
    }
    // Replies flow the other way with the replier's id.
    bob.send_text(r#"{"type":"ANSWER","dst":"alice","payload":{"ok":true}}"#)
        .await;
    alice
        .expect_text(r#"{"type":"ANSWER","src":"bob","dst":"alice","payload":{"ok":true}}"#)
        .await;

    // Nobody got anything else.
    alice.probe().await;
    bob.probe().await;
    carol.probe().await;
}

// 10 ------------------------------------------------------------------------------------------

#[tokio::test]
async fn case_10_json_in_binary_frame_is_accepted() {
    let t = start(Opts::default()).await;
    let mut alice = t.open("alice", "ta").await;
    let mut bob = t.open("bob", "tb").await;
    alice
        .send_binary(r#"{"type":"OFFER","dst":"bob","payload":{"s":"café"}}"#.as_bytes())
        .await;
    match bob.recv().await {
        Some(Message::Text(t)) => {
            assert_eq!(
                t.as_str(),
                r#"{"type":"OFFER","src":"alice","dst":"bob","payload":{"s":"café"}}"#
            )
        }
        other => panic!("expected the relayed OFFER as a text frame, got {other:?}"),
    }
    // HEARTBEAT in a binary frame is processed as well (and answered with nothing).
    alice.send_binary(br#"{"type":"HEARTBEAT"}"#).await;
    alice.probe().await;
    bob.probe().await;
}

// 11 ------------------------------------------------------------------------------------------

#[tokio::test]
async fn case_11_ignored_frames_produce_no_output() {
    let t = start(Opts::default()).await;
    let mut alice = t.open("alice", "ta").await;
    let mut bob = t.open("bob", "tb").await;
    for frame in [
        r#"{"type":"HEARTBEAT"}"#,
        r#"{"type":"HEARTBEAT","dst":"bob","payload":1}"#,
        r#"{"type":"FOO","dst":"bob","payload":1}"#,
        r#"{"type":"offer","dst":"bob","payload":1}"#,
        r#"{"type":"OPEN","dst":"bob"}"#,
        r#"{"type":"ERROR","dst":"bob","payload":{"msg":"x"}}"#,
        r#"{"type":"ID-TAKEN","dst":"bob","payload":{"msg":"ID is taken"}}"#,
        r#"{"dst":"bob","payload":1}"#,
        r#"{"type":["OFFER"],"dst":"bob","payload":1}"#,
        r#"{"type":7,"dst":"bob"}"#,
        r#"[{"type":"OFFER","dst":"bob"}]"#,
        r#"{}"#,
        // OFFERs with no / empty dst are dropped.
        r#"{"type":"OFFER","payload":1}"#,
        r#"{"type":"OFFER","dst":"","payload":1}"#,
        r#"{"type":"CANDIDATE","payload":{"candidate":{}}}"#,
    ] {
        alice.send_text(frame).await;
    }
    // The frame after all of those is the first thing bob sees...
    alice
        .send_text(r#"{"type":"OFFER","dst":"bob","payload":"marker"}"#)
        .await;
    bob.expect_text(r#"{"type":"OFFER","src":"alice","dst":"bob","payload":"marker"}"#)
        .await;
    // ...and alice got nothing back.
    alice.probe().await;
    bob.probe().await;
}

// 12 ------------------------------------------------------------------------------------------

#[tokio::test]
async fn case_12_self_addressed_offer_is_delivered() {
    let t = start(Opts::default()).await;
    let mut alice = t.open("alice", "ta").await;
    alice
        .send_text(r#"{"type":"OFFER","dst":"alice","payload":{"x":1}}"#)
        .await;
    alice
        .expect_text(r#"{"type":"OFFER","src":"alice","dst":"alice","payload":{"x":1}}"#)
        .await;
    alice
        .send_text(r#"{"type":"CANDIDATE","src":"zed","dst":"alice"}"#)
        .await;
    alice
        .expect_text(r#"{"type":"CANDIDATE","src":"alice","dst":"alice"}"#)
        .await;
}

// 13 ------------------------------------------------------------------------------------------

#[tokio::test]
async fn case_13_leave_and_expire_forwarded_or_dropped() {
    let t = start(Opts::default()).await;
    let mut alice = t.open("alice", "ta").await;
    let mut bob = t.open("bob", "tb").await;

    // To a connected peer: forwarded.
    alice.send_text(r#"{"type":"LEAVE","dst":"bob"}"#).await;
    bob.expect_text(r#"{"type":"LEAVE","src":"alice","dst":"bob"}"#)
        .await;
    alice
        .send_text(r#"{"type":"EXPIRE","dst":"bob","payload":{"why":"x"}}"#)
        .await;
    bob.expect_text(r#"{"type":"EXPIRE","src":"alice","dst":"bob","payload":{"why":"x"}}"#)
        .await;
    // A LEAVE does not unregister the sender or the recipient.
    bob.probe().await;
    alice.probe().await;

    // To an offline peer: dropped, not queued (unlike the OFFER after them).
    alice.send_text(r#"{"type":"LEAVE","dst":"ghost"}"#).await;
    alice.send_text(r#"{"type":"EXPIRE","dst":"ghost"}"#).await;
    alice
        .send_text(r#"{"type":"OFFER","dst":"ghost","payload":"queued"}"#)
        .await;
    alice
        .send_text(r#"{"type":"LEAVE","dst":"ghost","payload":1}"#)
        .await;
    t.settle(&mut alice).await; // The server has handled all of the above; alice got nothing back.
    let mut ghost = t.open("ghost", "tg").await;
    ghost
        .expect_text(r#"{"type":"OFFER","src":"alice","dst":"ghost","payload":"queued"}"#)
        .await;
    ghost.probe().await;
    bob.probe().await;
}

// 14 ------------------------------------------------------------------------------------------

#[tokio::test]
async fn case_14_id_taken_with_other_token() {
    let t = start(Opts::default()).await;
    let mut alice = t.open("alice", "t1").await;
    let mut thief = t.connect_as("peerjs", "alice", "t2").await;
    thief.expect_text(ID_TAKEN).await;
    thief.expect_close_1005().await;
    // The original owner is unaffected.
    alice.probe().await;
    let mut bob = t.open("bob", "tb").await;
    bob.send_text(r#"{"type":"OFFER","dst":"alice","payload":1}"#)
        .await;
    alice
        .expect_text(r#"{"type":"OFFER","src":"bob","dst":"alice","payload":1}"#)
        .await;
}

// 15 ------------------------------------------------------------------------------------------

#[tokio::test]
async fn case_15_same_token_reattach_without_open() {
    let t = start(Opts {
        allow_discovery: true,
        ..Opts::default()
    })
    .await;
    let mut old = t.open("alice", "t1").await;
    let mut bob = t.open("bob", "tb").await;

    let mut new = t.connect_as("peerjs", "alice", "t1").await;
    // No OPEN (and no error): the first frame is our own probe.
    new.probe().await;
    // Relays to the id go to the new socket only.
    bob.send_text(r#"{"type":"OFFER","dst":"alice","payload":"to-new"}"#)
        .await;
    new.expect_text(r#"{"type":"OFFER","src":"bob","dst":"alice","payload":"to-new"}"#)
        .await;
    old.ping_probe().await;

    // The old socket stays open and still acts as the id.
    old.send_text(r#"{"type":"CANDIDATE","dst":"bob","payload":"from-old"}"#)
        .await;
    bob.expect_text(r#"{"type":"CANDIDATE","src":"alice","dst":"bob","payload":"from-old"}"#)
        .await;

    // Closing the old socket does not unregister the id.
    old.close().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(t.get("/peerjs/peers").await.text(), r#"["alice","bob"]"#);
    bob.send_text(r#"{"type":"OFFER","dst":"alice","payload":"after-close"}"#)
        .await;
    new.expect_text(r#"{"type":"OFFER","src":"bob","dst":"alice","payload":"after-close"}"#)
        .await;
    new.probe().await;
    bob.probe().await;
}

/// Our opt-in `takeover` mode (peers/peerjs#1203): the new socket gets OPEN, the old one is closed.
#[tokio::test]
async fn case_15b_takeover_mode_ours_only() {
    let t = start(Opts {
        allow_discovery: true,
        takeover: true,
        ..Opts::default()
    })
    .await;
    if t.backend == Backend::Reference {
        eprintln!("case_15b: skipped: takeover is a kibitz-only option");
        return;
    }
    let mut old = t.open("alice", "t1").await;
    let mut bob = t.open("bob", "tb").await;

    let mut new = t.connect_as("peerjs", "alice", "t1").await;
    new.expect_text(OPEN).await;
    let frame = old.expect_close_any().await;
    eprintln!("case_15b: old socket closed with {frame:?}");

    // A different token is still refused.
    let mut thief = t.connect_as("peerjs", "alice", "t2").await;
    thief.expect_text(ID_TAKEN).await;
    thief.expect_close_1005().await;

    bob.send_text(r#"{"type":"OFFER","dst":"alice","payload":"to-new"}"#)
        .await;
    new.expect_text(r#"{"type":"OFFER","src":"bob","dst":"alice","payload":"to-new"}"#)
        .await;
    new.send_text(r#"{"type":"ANSWER","dst":"bob","payload":"from-new"}"#)
        .await;
    bob.expect_text(r#"{"type":"ANSWER","src":"alice","dst":"bob","payload":"from-new"}"#)
        .await;

    // The evicted socket's close did not unregister the id.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(t.get("/peerjs/peers").await.text(), r#"["alice","bob"]"#);
    new.probe().await;
    bob.probe().await;
}

// 16 ------------------------------------------------------------------------------------------

#[tokio::test]
async fn case_16_id_reusable_after_close() {
    let t = start(Opts::default()).await;
    let mut bob = t.open("bob", "tb").await;

    // Clean close, then a different token gets a fresh OPEN.
    t.open("alice", "t1").await.close().await;
    let mut alice = t.open_retry("alice", "t2").await;
    bob.send_text(r#"{"type":"OFFER","dst":"alice","payload":1}"#)
        .await;
    alice
        .expect_text(r#"{"type":"OFFER","src":"bob","dst":"alice","payload":1}"#)
        .await;

    // Abrupt drop (no close handshake), then the original token gets a fresh OPEN too.
    drop(alice);
    let mut alice = t.open_retry("alice", "t1").await;
    alice.probe().await;
    bob.probe().await;
}

// 17 ------------------------------------------------------------------------------------------

#[tokio::test]
async fn case_17_no_leave_broadcast_on_disconnect() {
    let t = start(Opts::default()).await;
    let mut bob = t.open("bob", "tb").await;
    let mut alice = t.open("alice", "ta").await;
    alice
        .send_text(r#"{"type":"OFFER","dst":"bob","payload":1}"#)
        .await;
    bob.expect_text(r#"{"type":"OFFER","src":"alice","dst":"bob","payload":1}"#)
        .await;
    bob.send_text(r#"{"type":"ANSWER","dst":"alice","payload":2}"#)
        .await;
    alice
        .expect_text(r#"{"type":"ANSWER","src":"bob","dst":"alice","payload":2}"#)
        .await;

    // Clean close: once the id is free again the server has processed it; bob got nothing.
    alice.close().await;
    let alice = t.open_retry("alice", "ta2").await;
    bob.probe().await;

    // Abrupt drop: same.
    drop(alice);
    let _alice = t.open_retry("alice", "ta3").await;
    bob.probe().await;
}

// 18 ------------------------------------------------------------------------------------------

#[tokio::test]
async fn case_18_offline_queue_delivered_in_order_after_open() {
    let t = start(Opts::default()).await;
    let mut alice = t.open("alice", "ta").await;
    let mut carol = t.open("carol", "tc").await;

    alice
        .send_text(r#"{"type":"OFFER","dst":"bob","payload":{"n":1}}"#)
        .await;
    t.settle(&mut alice).await;
    carol
        .send_text(r#"{"type":"OFFER","dst":"bob","payload":{"n":2},"extra":true}"#)
        .await;
    t.settle(&mut carol).await;
    alice
        .send_text(r#"{"type":"CANDIDATE","dst":"bob","payload":{"n":3}}"#)
        .await;
    alice.send_text(r#"{"type":"ANSWER","dst":"bob"}"#).await;
    t.settle(&mut alice).await;

    let mut bob = t.open("bob", "tb").await; // OPEN first...
    for expected in [
        r#"{"type":"OFFER","src":"alice","dst":"bob","payload":{"n":1}}"#,
        r#"{"type":"OFFER","src":"carol","dst":"bob","payload":{"n":2}}"#,
        r#"{"type":"CANDIDATE","src":"alice","dst":"bob","payload":{"n":3}}"#,
        r#"{"type":"ANSWER","src":"alice","dst":"bob"}"#,
    ] {
        bob.expect_text(expected).await; // ...then the queue, in order...
    }
    bob.probe().await; // ...and nothing else.

    // The queue was consumed: a reconnect gets nothing.
    bob.close().await;
    let mut bob = t.open_retry("bob", "tb2").await;
    bob.probe().await;
    alice.probe().await;
    carol.probe().await;
}

// 19 ------------------------------------------------------------------------------------------

#[tokio::test]
async fn case_19_expire_once_per_pair() {
    const EXPIRE_MS: u64 = 1500;
    let t = start(Opts {
        expire_timeout_ms: EXPIRE_MS,
        cleanup_out_msgs_ms: 200,
        ..Opts::default()
    })
    .await;
    let mut alice = t.open("alice", "ta").await;
    let mut carol = t.open("carol", "tc").await;

    let start_at = Instant::now();
    alice
        .send_text(r#"{"type":"OFFER","dst":"ghost","payload":1}"#)
        .await;
    alice
        .send_text(r#"{"type":"CANDIDATE","dst":"ghost","payload":2}"#)
        .await;
    carol
        .send_text(r#"{"type":"OFFER","dst":"ghost","payload":3}"#)
        .await;
    alice
        .send_text(r#"{"type":"CANDIDATE","dst":"ghost","payload":4}"#)
        .await;

    let wait = Duration::from_millis(EXPIRE_MS + 2500);
    let got = alice.recv_text_within(wait).await;
    let alice_at = start_at.elapsed();
    assert_eq!(got, r#"{"type":"EXPIRE","src":"ghost","dst":"alice"}"#);
    let got = carol.recv_text_within(wait).await;
    let carol_at = start_at.elapsed();
    assert_eq!(got, r#"{"type":"EXPIRE","src":"ghost","dst":"carol"}"#);
    for (who, at) in [("alice", alice_at), ("carol", carol_at)] {
        assert!(
            at >= Duration::from_millis(EXPIRE_MS - 200) && at <= wait,
            "{who}: EXPIRE after {at:?}, expected about {EXPIRE_MS} ms"
        );
    }

    // Exactly one per (src, dst): give later sweeps a chance, then prove nothing else came.
    tokio::time::sleep(Duration::from_millis(600)).await;
    alice.probe().await;
    carol.probe().await;

    // The queue is gone: a late connect gets nothing.
    let mut ghost = t.open("ghost", "tg").await;
    ghost.probe().await;
}

// 20 ------------------------------------------------------------------------------------------

#[tokio::test]
async fn case_20_concurrent_limit() {
    let t = start(Opts {
        concurrent_limit: 2,
        ..Opts::default()
    })
    .await;
    let mut p1 = t.open("p1", "t1").await;
    let p2 = t.open("p2", "t2").await;

    expect_refused(&t, "key=peerjs&id=p3&token=t3", ERR_LIMIT).await;
    // Param and key errors still come first.
    expect_refused(&t, "key=peerjs&id=p3", ERR_PARAMS).await;
    expect_refused(&t, "key=bad&id=p3&token=t3", ERR_KEY).await;
    // A taken id is ID-TAKEN, not the limit.
    expect_refused(&t, "key=peerjs&id=p1&token=zz", ID_TAKEN).await;

    // A same-token re-attach at the limit succeeds (silently, as in case 15).
    let mut p1b = t.connect_as("peerjs", "p1", "t1").await;
    p1b.probe().await;
    p1.ping_probe().await;

    // Freeing a slot admits a new id.
    p2.close().await;
    let mut p3 = t.open_retry("p3", "t3").await;
    p3.probe().await;
    expect_refused(&t, "key=peerjs&id=p4&token=t4", ERR_LIMIT).await;
}

// 21 ------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum Keepalive {
    Silent,
    Offers,
    WsPings,
    Heartbeats,
}

/// Runs `peer` with `mode` traffic every 300 ms until the server closes it or `until` passes.
/// Returns when (after OPEN) it was closed, and the close frame.
async fn keepalive_run(
    mut peer: Peer,
    mode: Keepalive,
    opened: Instant,
    until: Duration,
) -> (Peer, Option<(Duration, Message)>) {
    let mut tick = tokio::time::interval(Duration::from_millis(300));
    tick.tick().await;
    let deadline = opened + until;
    loop {
        tokio::select! {
            _ = tick.tick() => match mode {
                Keepalive::Silent => {}
                Keepalive::Offers => {
                    let (sent, _) = peer.probe_frames();
                    peer.send_text(&sent).await;
                }
                Keepalive::WsPings => peer.send_ping(b"ka").await,
                Keepalive::Heartbeats => peer.send_text(r#"{"type":"HEARTBEAT"}"#).await,
            },
            msg = peer.recv_within(until) => match msg {
                Some(Message::Close(frame)) => {
                    let at = opened.elapsed();
                    peer.expect_end().await;
                    return (peer, Some((at, Message::Close(frame))));
                }
                None => panic!("{mode:?}: stream ended without a close frame"),
                Some(Message::Pong(_)) if matches!(mode, Keepalive::WsPings) => {}
                Some(Message::Text(t)) if matches!(mode, Keepalive::Offers) && t.starts_with(r#"{"type":"OFFER""#) => {}
                Some(other) => panic!("{mode:?}: unexpected frame {other:?}"),
            },
            _ = tokio::time::sleep_until(deadline) => return (peer, None),
        }
    }
}

#[tokio::test]
async fn case_21_alive_timeout_needs_heartbeats() {
    const ALIVE_MS: u64 = 1500;
    let t = start(Opts {
        alive_timeout_ms: ALIVE_MS,
        ..Opts::default()
    })
    .await;
    let run_for = Duration::from_millis(ALIVE_MS * 2 + 300);
    let mut tasks = Vec::new();
    for (i, mode) in [
        Keepalive::Silent,
        Keepalive::Offers,
        Keepalive::WsPings,
        Keepalive::Heartbeats,
    ]
    .into_iter()
    .enumerate()
    {
        let peer = t.open(&format!("p{i}"), "tok").await;
        let opened = Instant::now();
        tasks.push((
            mode,
            tokio::spawn(keepalive_run(peer, mode, opened, run_for)),
        ));
    }
    for (mode, task) in tasks {
        let (mut peer, closed) = task.await.expect("keepalive task");
        match (mode, closed) {
            (Keepalive::Heartbeats, None) => peer.probe().await,
            (Keepalive::Heartbeats, Some((at, frame))) => {
                panic!("heartbeating socket was closed after {at:?} with {frame:?}")
            }
            (_, None) => panic!("{mode:?}: still open after {run_for:?}"),
            (_, Some((at, frame))) => {
                assert_eq!(
                    frame,
                    Message::Close(None),
                    "{mode:?}: expected close without status (1005)"
                );
                assert!(
                    at >= Duration::from_millis(ALIVE_MS - 200)
                        && at <= Duration::from_millis(ALIVE_MS + 1200),
                    "{mode:?}: closed after {at:?}, expected about {ALIVE_MS} ms"
                );
            }
        }
    }
    // The timed-out ids are free again.
    let mut p0 = t.open("p0", "new").await;
    p0.probe().await;
}

// 22 ------------------------------------------------------------------------------------------

#[tokio::test]
async fn case_22_query_decoding_and_last_duplicate_wins() {
    let t = start(Opts {
        allow_discovery: true,
        ..Opts::default()
    })
    .await;
    let mut bob = t.open("bob", "tb").await;

    // `+` is a space, `%2B` a plus, `%20` a space.
    let mut plus = t.connect("key=peerjs&id=a+b%2Bc&token=x+y").await;
    plus.id = "a b+c".into();
    plus.expect_text(OPEN).await;
    let mut pct = t.connect("key=peerjs&id=x%20y&token=t").await;
    pct.id = "x y".into();
    pct.expect_text(OPEN).await;

    // Last duplicate wins for key, id and token.
    let mut dup = t
        .connect("key=wrong&key=peerjs&id=first&id=second&token=t1&token=t2")
        .await;
    dup.id = "second".into();
    dup.expect_text(OPEN).await;

    assert_eq!(
        t.get("/peerjs/peers").await.text(),
        r#"["bob","a b+c","x y","second"]"#
    );

    for peer in [&mut plus, &mut pct, &mut dup] {
        let dst = js(&peer.id);
        bob.send_text(&format!(r#"{{"type":"OFFER","dst":{dst},"payload":1}}"#))
            .await;
        peer.expect_text(&format!(
            r#"{{"type":"OFFER","src":"bob","dst":{dst},"payload":1}}"#
        ))
        .await;
        peer.send_text(r#"{"type":"ANSWER","dst":"bob"}"#).await;
        bob.expect_text(&format!(r#"{{"type":"ANSWER","src":{dst},"dst":"bob"}}"#))
            .await;
        peer.probe().await;
    }

    // The registered token is the decoded last one.
    expect_refused(&t, "key=peerjs&id=second&token=t1", ID_TAKEN).await;
    expect_refused(&t, "key=peerjs&id=a+b%2Bc&token=x%2By", ID_TAKEN).await;
    let mut again = t.connect("key=peerjs&id=a%20b%2bc&token=x%20y").await;
    again.id = "a b+c".into();
    again.probe().await; // Same token: a silent re-attach, no OPEN.
    bob.probe().await;
}

// 23 ------------------------------------------------------------------------------------------

#[tokio::test]
async fn case_23_non_json_frame_does_not_kill_socket() {
    let t = start(Opts::default()).await;
    if t.backend == Backend::Reference {
        eprintln!(
            "case_23: skipped for the reference: a non-JSON frame wedges its socket (PEERJS.md §1.4)"
        );
        return;
    }
    let mut alice = t.open("alice", "ta").await;
    let mut bob = t.open("bob", "tb").await;
    alice.send_text("not json").await;
    alice.send_text("null").await;
    alice.send_text("{").await;
    alice.send_text("42").await;
    alice.send_text(r#""OFFER""#).await;
    alice.send_binary(&[0xff, 0xfe, 0xfd]).await;
    alice.send_binary(b"").await;
    // The socket keeps working...
    alice.probe().await;
    alice
        .send_text(r#"{"type":"OFFER","dst":"bob","payload":"still here"}"#)
        .await;
    bob.expect_text(r#"{"type":"OFFER","src":"alice","dst":"bob","payload":"still here"}"#)
        .await;
    // ...and so does the server.
    let mut carol = t.open("carol", "tc").await;
    carol.probe().await;
    bob.probe().await;
}
