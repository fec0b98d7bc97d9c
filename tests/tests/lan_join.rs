//! `kibitz join --hub` (offline mode, LAN.md §7) with real Chromium: a `kibitz hub` in process
//! on 127.0.0.1:0, pages running the web client's LAN layer (`node/lan-room.mjs`), and the
//! `kibitz` binary as a terminal participant. They see each other, chat both ways over the
//! `content` channel whichever side dials (ids are handed out in connect order and the
//! smaller id string dials), and the terminal prints a page's leaving (`bye` or silence).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../turn/coturn.rs"]
#[allow(dead_code)]
mod coturn;

use std::process::Stdio;
use std::time::Duration;

use kibitz_e2e::KibitzProc;
use kibitz_lan_hub::{Hub, HubConfig, HubHandle, HubIdentity};
use kibitz_proto::lan::TurnInfo;
use kibitz_proto::turn::{rest_password, rest_username};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::time::{Instant, timeout};

const WAIT: Duration = Duration::from_secs(30);

/// The NDJSON driver of `node/lan-room.mjs`.
struct LanPages {
    _child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    next_id: u64,
}

impl LanPages {
    async fn start() -> Self {
        let script = format!("{}/node/lan-room.mjs", env!("CARGO_MANIFEST_DIR"));
        let mut child = Command::new("node")
            .arg(&script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("node must be installed (scripts/test installs it)");
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut me = LanPages {
            _child: child,
            stdin,
            lines,
            next_id: 0,
        };
        let first = me.line().await;
        assert_eq!(
            first["ready"],
            json!(true),
            "lan-room.mjs did not start: {first}"
        );
        me
    }

    async fn line(&mut self) -> Value {
        let line = timeout(Duration::from_secs(90), self.lines.next_line())
            .await
            .expect("lan-room.mjs said nothing for 90 s")
            .expect("reading lan-room.mjs")
            .expect("lan-room.mjs exited");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad line ({e}): {line}"))
    }

    async fn request(&mut self, mut req: Value) -> Result<Value, String> {
        self.next_id += 1;
        let id = self.next_id;
        req["id"] = json!(id);
        self.stdin
            .write_all(format!("{req}\n").as_bytes())
            .await
            .unwrap();
        loop {
            let v = self.line().await;
            assert!(v.get("fatal").is_none(), "lan-room.mjs crashed: {v}");
            if v["id"] != json!(id) {
                continue;
            }
            return if v["ok"] == json!(true) {
                Ok(v["value"].clone())
            } else {
                Err(v["error"].as_str().unwrap_or("?").to_owned())
            };
        }
    }

    async fn open(&mut self, page: &str) {
        self.request(json!({"op": "open", "page": page}))
            .await
            .unwrap();
    }

    async fn close(&mut self, page: &str, bye: bool) {
        self.request(json!({"op": "close", "page": page, "bye": bye}))
            .await
            .unwrap();
    }

    async fn call(&mut self, page: &str, method: &str, args: Value) -> Value {
        match self
            .request(json!({"page": page, "call": method, "args": args}))
            .await
        {
            Ok(v) => v,
            Err(e) => {
                let log = self.request(json!({"op": "log", "page": page})).await;
                panic!("{page}.{method}: {e}; page log: {log:?}")
            }
        }
    }

    /// Polls `L.<method>()` in `page` until `pred` holds.
    async fn wait(&mut self, page: &str, method: &str, what: &str, pred: impl Fn(&Value) -> bool) {
        let deadline = Instant::now() + WAIT;
        loop {
            let v = self.call(page, method, json!([])).await;
            if pred(&v) {
                return;
            }
            if Instant::now() > deadline {
                let log = self.request(json!({"op": "log", "page": page})).await;
                panic!(
                    "{page}: {what} not within {WAIT:?} (last {method}: {v}); page log: {log:?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn hub() -> HubHandle {
    hub_with(None).await
}

/// A hub whose blob names `turn` (g2) or none (g1).
async fn hub_with(turn: Option<TurnInfo>) -> HubHandle {
    let mut cfg = HubConfig::new(
        HubIdentity::generate().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    );
    cfg.turn = turn;
    Hub::start(cfg).await.unwrap()
}

/// A hub link as the web's create flow makes it: the blob percent-encoded
/// (`encodeURIComponent`; a raw `+` would read back as a space, as `URLSearchParams` reads it,
/// and TURN passwords in base64 have them).
fn link(hub: &HubHandle, room: &str) -> String {
    let blob: String = hub
        .blob()
        .to_string()
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'!' | b'~' | b'*' => {
                char::from(b).to_string()
            }
            b => format!("%{b:02X}"),
        })
        .collect();
    format!("https://kibitz.chat/?galaxy={blob}#{room}")
}

fn id_of(line: &str) -> String {
    line.trim_start_matches("* connected (id ")
        .trim_end_matches(')')
        .to_owned()
}

fn has_name(v: &Value, name: &str) -> bool {
    v.as_array()
        .is_some_and(|a| a.iter().any(|m| m["name"] == json!(name)))
}

/// Chat both ways once the content channel is open; `term_id` is the terminal's member id.
async fn chat_both_ways(pages: &mut LanPages, term: &mut KibitzProc, term_id: &str) {
    pages
        .wait("alice", "openLinks", "the content channel", |v| {
            v.as_array().is_some_and(|a| a.contains(&json!(term_id)))
        })
        .await;
    term.expect(WAIT, |l| l == "* chat open with Alice").await;
    term.line("hello from the terminal").await;
    pages
        .wait("alice", "chats", "the terminal's line", |v| {
            v.as_array().is_some_and(|a| {
                a.iter().any(|c| {
                    c["text"] == json!("hello from the terminal") && c["from"] == json!(term_id)
                })
            })
        })
        .await;
    let n = pages
        .call("alice", "chat", json!(["hello from the page"]))
        .await;
    assert_eq!(n, json!(1), "the page's line went to one member");
    term.expect(WAIT, |l| l == "<Alice> hello from the page")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminal_first_dials_the_page_chats_and_sees_its_bye() {
    let hub = hub().await;
    let mut pages = LanPages::start().await;
    // Connected first, the terminal has id 1 and dials the page (id 2): "1" < "2".
    let l = link(&hub, "Ember Lan");
    let mut term = KibitzProc::spawn("terminal", &["join", "--hub", &l, "--name", "Terminal"]);
    term.expect(WAIT, |l| l == "* room ember-lan (offline, via the hub)")
        .await;
    let term_id = id_of(
        &term
            .expect(WAIT, |l| l.starts_with("* connected (id "))
            .await,
    );
    pages.open("alice").await;
    let page_id = pages
        .call("alice", "connect", json!([hub.blob().to_string()]))
        .await;
    let page_id = page_id.as_str().unwrap().to_owned();
    assert!(
        term_id < page_id,
        "the terminal must dial: {term_id} vs {page_id}"
    );
    pages
        .call("alice", "join", json!(["ember-lan", "Alice"]))
        .await;
    term.expect(WAIT, |l| l == "* Alice joined").await;
    pages
        .wait("alice", "roster", "the terminal in the roster", |v| {
            has_name(v, "Terminal")
        })
        .await;
    chat_both_ways(&mut pages, &mut term, &term_id).await;
    // The page leaves with `bye`: a leave notice at once, long before the 8 s reap.
    let t = Instant::now();
    pages.close("alice", true).await;
    term.expect(WAIT, |l| l == "* Alice left").await;
    assert!(t.elapsed() < Duration::from_secs(7), "bye, not the reap");
    term.line("/quit").await;
    term.expect(WAIT, |l| l == "* left the room").await;
    let status = timeout(WAIT, term.child.wait()).await.unwrap().unwrap();
    assert!(status.success());
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_first_dials_the_terminal_chats_and_silence_is_reaped() {
    let hub = hub().await;
    let mut pages = LanPages::start().await;
    // Connected first, the page has id 1 and dials the terminal (id 2), whose answer takes
    // the browser's audio + video m-lines besides `content`.
    pages.open("alice").await;
    let page_id = pages
        .call("alice", "connect", json!([hub.blob().to_string()]))
        .await;
    let page_id = page_id.as_str().unwrap().to_owned();
    pages
        .call("alice", "join", json!(["ember-lan", "Alice"]))
        .await;
    // The room as an argument, the blob bare.
    let blob = hub.blob().to_string();
    let mut term = KibitzProc::spawn(
        "terminal",
        &["join", "--hub", &blob, "Ember LAN", "--name", "Terminal"],
    );
    let term_id = id_of(
        &term
            .expect(WAIT, |l| l.starts_with("* connected (id "))
            .await,
    );
    assert!(
        page_id < term_id,
        "the page must dial: {page_id} vs {term_id}"
    );
    pages
        .wait("alice", "roster", "the terminal in the roster", |v| {
            has_name(v, "Terminal")
        })
        .await;
    term.expect(WAIT, |l| l == "* Alice joined").await;
    chat_both_ways(&mut pages, &mut term, &term_id).await;
    // The terminal's `/quit` sends `bye`: the page drops it well before its 8 s reap.
    // First the page closes without a word: the terminal reaps it after 8 s of silence.
    pages.close("alice", false).await;
    term.expect(Duration::from_secs(20), |l| {
        l == "* Alice left (gone silent)"
    })
    .await;
    term.line("/quit").await;
    term.expect(WAIT, |l| l == "* left the room").await;
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_terminals_quit_says_bye_to_the_page() {
    let hub = hub().await;
    let mut pages = LanPages::start().await;
    pages.open("alice").await;
    pages
        .call("alice", "connect", json!([hub.blob().to_string()]))
        .await;
    pages
        .call("alice", "join", json!(["ember-lan", "Alice"]))
        .await;
    let l = link(&hub, "ember-lan");
    let mut term = KibitzProc::spawn("terminal", &["join", "--hub", &l, "--name", "Terminal"]);
    pages
        .wait("alice", "roster", "the terminal in the roster", |v| {
            has_name(v, "Terminal")
        })
        .await;
    term.expect(WAIT, |l| l == "* Alice joined").await;
    let t = Instant::now();
    term.line("/quit").await;
    term.expect(WAIT, |l| l == "* left the room").await;
    pages
        .wait("alice", "roster", "the terminal gone", |v| {
            !has_name(v, "Terminal")
        })
        .await;
    assert!(t.elapsed() < Duration::from_secs(7), "bye, not the reap");
    pages.close("alice", true).await;
    hub.shutdown().await;
}

/// A g2 blob (LAN.md §5): both sides go relay-only through the TURN server it names (a local
/// coturn standing in for the hub's embedded relay), and chat still flows both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_turn_in_the_blob_both_sides_relay_through_it() {
    let secret = "lan-join-secret";
    let turn = coturn::Coturn::start(&[secret]).await;
    // A password with a `+` every time: the link must carry it percent-encoded (a bare `+`
    // reads back as a space and coturn refuses the terminal's Allocate).
    let expiry = coturn::unix_now() + 3600;
    let (user, pass) = (0..)
        .map(|i| {
            let user = rest_username(expiry, &format!("lan{i}"));
            let pass = rest_password(secret.as_bytes(), &user);
            (user, pass)
        })
        .find(|(_, p)| p.contains('+'))
        .unwrap();
    let hub = hub_with(Some(TurnInfo {
        port: turn.port,
        user: user.clone(),
        pass,
    }))
    .await;
    let blob = hub.blob().to_string();
    assert!(blob.starts_with("g2|"), "{blob}");
    let mut pages = LanPages::start().await;
    pages.open("alice").await;
    pages.call("alice", "connect", json!([blob])).await;
    pages
        .call("alice", "join", json!(["ember-lan", "Alice"]))
        .await;
    let l = link(&hub, "ember-lan");
    let mut term = KibitzProc::spawn("terminal", &["join", "--hub", &l, "--name", "Terminal"]);
    let term_id = id_of(
        &term
            .expect(WAIT, |l| l.starts_with("* connected (id "))
            .await,
    );
    term.expect(WAIT, |l| l == "* Alice joined").await;
    let chat = tokio::spawn(async move {
        chat_both_ways(&mut pages, &mut term, &term_id).await;
        (pages, term)
    });
    let (mut pages, mut term) = match chat.await {
        Ok(v) => v,
        Err(e) => panic!("{e}; coturn's log: {}", turn.log()),
    };
    // The terminal offered the page nothing but relay candidates (the page is relay-only by
    // policy), and both allocated with the blob's credentials.
    let types = pages.call("alice", "remoteCandidateTypes", json!([])).await;
    let types = types.as_array().unwrap();
    assert!(
        !types.is_empty() && types.iter().all(|t| t == "relay"),
        "the terminal trickled {types:?}"
    );
    assert!(
        turn.logged(&coturn::Coturn::allocated_line(&user), WAIT)
            .await,
        "no allocation in coturn's log: {}",
        turn.log()
    );
    let allocations = turn
        .log()
        .matches(&coturn::Coturn::allocated_line(&user))
        .count();
    assert!(
        allocations >= 2,
        "{allocations} allocation(s): one side went direct"
    );
    pages.close("alice", true).await;
    term.expect(WAIT, |l| l == "* Alice left").await;
    hub.shutdown().await;
}

/// The hub goes away and comes back (same identity and port, as a restarted `kibitz hub`): the
/// terminal notices, reconnects with a new id, joins the room again and meets a page there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_hub_is_reconnected_and_the_room_rejoined() {
    let identity = HubIdentity::generate().unwrap();
    let first = Hub::start(HubConfig::new(
        identity.clone(),
        "127.0.0.1:0".parse().unwrap(),
    ))
    .await
    .unwrap();
    let addr = first.local_addr();
    let l = link(&first, "ember-lan");
    let mut term = KibitzProc::spawn("terminal", &["join", "--hub", &l, "--name", "Terminal"]);
    term.expect(WAIT, |l| l == "* connected (id 1)").await;
    first.shutdown().await;
    term.expect(WAIT, |l| l == "* reconnecting (lost the hub)…")
        .await;
    let second = Hub::start(HubConfig::new(identity, addr)).await.unwrap();
    // Ids restart with the hub; the terminal is its first session again.
    term.expect(WAIT, |l| l == "* reconnected (id 1)").await;
    let term_id = "1".to_owned();
    let mut pages = LanPages::start().await;
    pages.open("alice").await;
    pages
        .call("alice", "connect", json!([second.blob().to_string()]))
        .await;
    pages
        .call("alice", "join", json!(["ember-lan", "Alice"]))
        .await;
    pages
        .wait("alice", "roster", "the terminal in the roster", |v| {
            has_name(v, "Terminal")
        })
        .await;
    chat_both_ways(&mut pages, &mut term, &term_id).await;
    pages.close("alice", true).await;
    second.shutdown().await;
}

/// The real thing: the `kibitz hub` binary with its embedded TURN relay (g2, the default), a
/// page and the terminal relay-only through it, chatting both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_kibitz_hub_and_its_own_turn_relay() {
    let dir = std::env::temp_dir().join(format!("kibitz-lan-join-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let state = dir.join("relay-state.json");
    let mut hub = KibitzProc::spawn(
        "hub",
        &[
            "hub",
            "--port",
            "0",
            "--advertise",
            "127.0.0.1",
            "--state",
            state.to_str().unwrap(),
            "--http",
            "0",
            "--fixed-id",
            "false",
            "--mdns",
            "false",
        ],
    );
    let blob = hub.expect(WAIT, |l| l.starts_with("BLOB ")).await["BLOB ".len()..].to_owned();
    let link = hub.expect(WAIT, |l| l.starts_with("LINK ")).await["LINK ".len()..].to_owned();
    assert!(
        blob.starts_with("g2|"),
        "the hub's relay did not start: {blob}"
    );
    let mut pages = LanPages::start().await;
    pages.open("alice").await;
    pages.call("alice", "connect", json!([blob])).await;
    pages
        .call("alice", "join", json!(["ember-lan", "Alice"]))
        .await;
    let mut term = KibitzProc::spawn(
        "terminal",
        &["join", "--hub", &link, "ember-lan", "--name", "Terminal"],
    );
    let term_id = id_of(
        &term
            .expect(WAIT, |l| l.starts_with("* connected (id "))
            .await,
    );
    term.expect(WAIT, |l| l == "* Alice joined").await;
    chat_both_ways(&mut pages, &mut term, &term_id).await;
    let types = pages.call("alice", "remoteCandidateTypes", json!([])).await;
    let types = types.as_array().unwrap();
    assert!(
        !types.is_empty() && types.iter().all(|t| t == "relay"),
        "the terminal trickled {types:?}"
    );
    pages.close("alice", true).await;
    term.expect(WAIT, |l| l == "* Alice left").await;
    term.line("/quit").await;
    term.expect(WAIT, |l| l == "* left the room").await;
    let _ = hub.child.start_kill();
    let _ = std::fs::remove_dir_all(&dir);
}
