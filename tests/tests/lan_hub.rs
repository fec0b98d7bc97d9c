//! The LAN hub (`kibitz hub`, LAN.md) end to end: real headless Chromium connects the way the
//! web client does (its answer synthesised from the blob, `tests/node/hub-connect.mjs`) and
//! speaks the hub protocol, including a 256 KiB `echo`; and the `kibitz hub` CLI's outputs
//! (BLOB/LINK lines, relay-link.txt, the 0600 state file reused across restarts, the fixed
//! identity). Needs Chromium and the npm packages that `scripts/test` installs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use kibitz_lan_hub::{Hub, HubConfig, HubIdentity, HubStats};

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
