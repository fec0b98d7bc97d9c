//! `/api/signal` against real broker processes that the test stops and starts: the verdict
//! follows broker health, rooms stay on their broker across a flap,
//! and 1000 concurrent callers for one room never see two answers.

#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};

/// A plain-HTTP test client (reqwest is built without a default TLS provider).
fn http() -> reqwest::ClientBuilder {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs `kibitz <args> --listen 127.0.0.1:<port>` and waits until it listens.
async fn kibitz(port: u16, args: &[&str]) -> Child {
    let child = Command::new(env!("CARGO_BIN_EXE_kibitz"))
        .args(args)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return child;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("kibitz {args:?} on {port} did not start");
}

async fn broker(port: u16) -> Child {
    kibitz(port, &["signal", "--drain-timeout-ms", "200"]).await
}

async fn stop(mut child: Child) {
    child.kill().await.unwrap();
    let _ = child.wait().await;
}

struct Api {
    base: String,
    client: reqwest::Client,
}

impl Api {
    async fn host(&self, room: Option<&str>) -> (Option<String>, String) {
        let url = match room {
            Some(r) => format!("{}/api/signal?room={r}", self.base),
            None => format!("{}/api/signal", self.base),
        };
        let resp = self.client.get(url).send().await.unwrap();
        let cache = resp.headers()["cache-control"].to_str().unwrap().to_owned();
        let body: serde_json::Value = resp.json().await.unwrap();
        (body["host"].as_str().map(str::to_owned), cache)
    }

    /// Polls until the plain answer is `want`, failing after `within`.
    async fn until(&self, want: Option<&str>, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let (got, _) = self.host(None).await;
            if got.as_deref() == want {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "still {got:?}, wanted {want:?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

const INTERVAL: Duration = Duration::from_millis(200);
/// How long a flip may take here. That it takes two probes is `health.rs`'s unit test, on
/// virtual time; on a loaded machine (1000 callers racing, a busy core) the real probes and
/// process starts behind it can take many intervals, and that is not what this test asserts.
const FLIP_WITHIN: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verdict_follows_real_brokers_and_rooms_stick() {
    let (pa, pb) = (free_port(), free_port());
    let (a, b) = (format!("127.0.0.1:{pa}"), format!("127.0.0.1:{pb}"));
    let broker_a = broker(pa).await;
    let broker_b = broker(pb).await;

    let config = kibitz_signal_config::Config {
        hosts: vec![a.clone(), b.clone()],
        fallback: Some("0.peerjs.com".into()),
        probe_interval: INTERVAL,
        probe_timeout: Duration::from_millis(500),
        probe_scheme: "http".into(),
        ..Default::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(kibitz_signal_config::serve(
        listener,
        config,
        std::future::pending(),
    ));
    let api = Api {
        base,
        client: http().build().unwrap(),
    };

    let (host, cache) = api.host(None).await;
    assert_eq!(host.as_deref(), Some(a.as_str()));
    assert_eq!(cache, "public, max-age=30");

    // A goes down: after two failed probes everyone is sent to B, and so is a new room.
    stop(broker_a).await;
    api.until(Some(&b), FLIP_WITHIN).await;
    assert_eq!(
        api.host(Some("standup")).await.0.as_deref(),
        Some(b.as_str())
    );
    assert_eq!(
        api.host(Some("Daily%20Sync")).await.0.as_deref(),
        Some(b.as_str())
    );

    // A comes back: new callers return to A; the room stays with B while B is up, even for
    // 1000 concurrent callers racing A's recovery.
    let broker_a = broker(pa).await;
    let racers: Vec<_> = (0..1000)
        .map(|_| {
            let client = api.client.clone();
            let url = format!("{}/api/signal?room=standup", api.base);
            tokio::spawn(async move {
                let v: serde_json::Value =
                    client.get(url).send().await.unwrap().json().await.unwrap();
                v["host"].as_str().map(str::to_owned)
            })
        })
        .collect();
    api.until(Some(&a), FLIP_WITHIN).await;
    for r in racers {
        assert_eq!(r.await.unwrap().as_deref(), Some(b.as_str()));
    }
    assert_eq!(
        api.host(Some("standup")).await.0.as_deref(),
        Some(b.as_str())
    );
    assert_eq!(api.host(Some("other")).await.0.as_deref(), Some(a.as_str()));
    // Rooms are keyed by their normalised id.
    assert_eq!(
        api.host(Some("daily-sync")).await.0.as_deref(),
        Some(b.as_str())
    );

    // Both down: the fallback, cached briefly so recovery is seen sooner.
    stop(broker_a).await;
    stop(broker_b).await;
    api.until(Some("0.peerjs.com"), FLIP_WITHIN).await;
    let (_, cache) = api.host(None).await;
    assert_eq!(cache, "public, max-age=10");
}

#[tokio::test]
async fn join_links_redirect_people_and_starve_bots() {
    let port = free_port();
    let mut child = kibitz(port, &["serve", "--link-origin", "https://kibitz.example"]).await;
    let client = http().build().unwrap();
    let url = format!("http://127.0.0.1:{port}/j/My%20Room?ag=av&n=hi");
    let person = client
        .get(&url)
        .header("user-agent", "Mozilla/5.0 (X11; Linux x86_64) Chrome/156.0")
        .send()
        .await
        .unwrap();
    assert_eq!(person.status(), 302);
    assert_eq!(
        person.headers()["location"],
        "https://kibitz.example/?ag=av&n=hi#My%20Room"
    );
    let bot = client
        .get(&url)
        .header("user-agent", "WhatsApp/2.23.20.0")
        .send()
        .await
        .unwrap();
    assert_eq!(bot.status(), 204);
    assert_eq!(bot.headers()["cache-control"], "no-store, max-age=0");
    // A link made by `kibitz link new` reads back through /api/room.
    let made = std::process::Command::new(env!("CARGO_BIN_EXE_kibitz"))
        .args(["link", "new", "--room", "Stand Up", "--host-name", "alice"])
        .args(["--lobby", "--origin", "https://kibitz.example"])
        .output()
        .unwrap();
    assert!(made.status.success());
    let link = String::from_utf8(made.stdout).unwrap().trim().to_owned();
    let v: serde_json::Value = client
        .get(format!("http://127.0.0.1:{port}/api/room"))
        .query(&[("link", &link)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["room"], "stand-up");
    assert_eq!(v["signalingId"], "kbz-v1-stand-up");
    assert_eq!(v["gate"]["hostName"], "alice");
    assert_eq!(v["gate"]["lobbyOnStart"], true);
    let bad = client
        .get(format!("http://127.0.0.1:{port}/api/room?link=%23privacy"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    // Not configured: Kibitz's "no broker" answer.
    let v: serde_json::Value = client
        .get(format!("http://127.0.0.1:{port}/api/signal"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v, serde_json::json!({"host": null}));
    child.kill().await.unwrap();
}
