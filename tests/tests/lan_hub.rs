//! The LAN hub (`kibitz hub`, LAN.md) end to end: real headless Chromium connects the way the
//! web client does (its answer synthesised from the blob, `tests/node/hub-connect.mjs`) and
//! speaks the hub protocol, including a 256 KiB `echo`; and the `kibitz hub` CLI's outputs
//! (BLOB/LINK lines, relay-link.txt, the 0600 state file reused across restarts, the fixed
//! identity). Needs Chromium and the npm packages that `scripts/test` installs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt as _;
use std::time::Duration;

use kibitz_e2e::KibitzProc;
use kibitz_lan_hub::{Hub, HubConfig, HubIdentity, HubStats};
use kibitz_proto::lan;

async fn wait_stats(
    hub: &kibitz_lan_hub::HubHandle,
    what: &str,
    pred: impl Fn(&HubStats) -> bool,
) -> HubStats {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let s = hub.stats();
        if pred(&s) {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: stats now {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_connects_through_the_synthesised_answer() {
    let mut config = HubConfig::new(
        HubIdentity::generate().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    );
    config.advertise = vec!["127.0.0.1".into()];
    let hub = Hub::start(config).await.unwrap();
    let blob = hub.blob().to_string();
    assert!(blob.starts_with("g1|"), "{blob}");
    let res = kibitz_e2e::node_scenarios("node/hub-connect.mjs", &[&blob]).await;
    if let Err(out) = res {
        panic!("hub scenarios failed:\n{out}");
    }
    // The page closed its peer connection: the session ends at once (SCTP abort / DTLS
    // close), long before the liveness window.
    let s = wait_stats(&hub, "session gone after the page closed", |s| {
        s.sessions == 0 && s.sources == 0
    })
    .await;
    assert_eq!(s.sessions_total, 1);
    assert_eq!(s.frames_routed, 1, "the to-self frame");
    assert_eq!(s.bad_frames, 4, "bad JSON, unknown t, string id, binary");
    assert_eq!(s.sources_expired, 0);
    hub.shutdown().await;
}

/// `kibitz hub` for tests: loopback, own identity unless `fixed`, no HTTP page, no mDNS.
fn spawn_hub(name: &str, state: &std::path::Path, fixed: bool, port: Option<&str>) -> KibitzProc {
    let state = state.to_str().unwrap();
    let mut args = vec![
        "hub",
        "--fixed-id",
        if fixed { "true" } else { "false" },
        "--advertise",
        "127.0.0.1",
        "--state",
        state,
        "--http",
        "0",
        "--mdns",
        "false",
    ];
    if let Some(p) = port {
        args.extend(["--port", p]);
    }
    KibitzProc::spawn(name, &args)
}

/// The BLOB and LINK lines.
async fn blob_and_link(hub: &mut KibitzProc) -> (String, String) {
    let wait = Duration::from_secs(30);
    let blob = hub.expect(wait, |l| l.starts_with("BLOB ")).await;
    let link = hub.expect(wait, |l| l.starts_with("LINK ")).await;
    (
        blob["BLOB ".len()..].to_owned(),
        link["LINK ".len()..].to_owned(),
    )
}

/// SIGTERM, then a clean exit.
async fn stop(mut hub: KibitzProc) {
    let pid = hub.child.id().expect("running").to_string();
    let st = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(st.success());
    let status = tokio::time::timeout(Duration::from_secs(20), hub.child.wait())
        .await
        .expect("kibitz hub exits on SIGTERM")
        .unwrap();
    assert!(status.success(), "{status:?}");
}

fn temp_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("kibitz-lan-hub-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kibitz_hub_cli_outputs_state_and_restart() {
    let dir = temp_dir("cli");
    let state = dir.join("relay-state.json");
    let mut hub = spawn_hub("hub 1", &state, false, Some("0"));
    let (blob, link) = blob_and_link(&mut hub).await;
    assert_eq!(link, format!("https://kibitz.chat/?galaxy={blob}"));
    let parsed = lan::parse_blob(&blob).unwrap();
    assert!(blob.starts_with("g1|"), "TURN is not wired yet: {blob}");
    assert_eq!(parsed.ufrag.len(), 8);
    assert_eq!(parsed.pwd.len(), 24);
    assert_eq!(parsed.endpoints.len(), 1);
    assert_eq!(parsed.endpoints[0].addr, "127.0.0.1");
    assert_ne!(parsed.endpoints[0].port, 0);
    assert_eq!(
        std::fs::read_to_string(dir.join("relay-link.txt")).unwrap(),
        format!("{link}\n")
    );
    let mode = std::fs::metadata(&state).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    assert_eq!(saved["ufrag"], parsed.ufrag.as_str());
    assert_eq!(saved["port"], parsed.endpoints[0].port);
    assert!(saved["keyPem"].as_str().unwrap().contains("EC PRIVATE KEY"));
    stop(hub).await;

    // Restarted without --port: the saved identity and the saved (pinned) port, so the very
    // same blob; and a browser gets through with the identity read back from the file.
    let mut hub = spawn_hub("hub 2", &state, false, None);
    let (blob2, _) = blob_and_link(&mut hub).await;
    assert_eq!(blob2, blob);
    if let Err(out) = kibitz_e2e::node_scenarios("node/hub-connect.mjs", &[&blob2]).await {
        panic!("hub scenarios against the restarted CLI hub failed:\n{out}");
    }
    stop(hub).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kibitz_hub_cli_fixed_identity() {
    let dir = temp_dir("fixed");
    let state = dir.join("relay-state.json");
    // A state file of another identity is neither read nor trusted in fixed mode.
    HubIdentity::generate()
        .unwrap()
        .save(&state, Some(1))
        .unwrap();
    let mut hub = spawn_hub("fixed hub", &state, true, Some("0"));
    let (blob, _) = blob_and_link(&mut hub).await;
    let parsed = lan::parse_blob(&blob).unwrap();
    assert_eq!(parsed.ufrag, lan::fixed::UFRAG);
    assert_eq!(parsed.pwd, lan::fixed::PWD);
    assert_eq!(
        lan::fingerprint_b64(&parsed.fingerprint),
        lan::fixed::FINGERPRINT_B64
    );
    let port = parsed.endpoints[0].port;
    assert_ne!(port, 1);
    // Upstream still writes the file in this mode.
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    assert_eq!(saved["ufrag"], lan::fixed::UFRAG);
    assert_eq!(saved["port"], port);
    stop(hub).await;
    let _ = std::fs::remove_dir_all(&dir);
}
