//! The official `peerjs@1.5.5` client in headless Chromium against our broker: the scenarios
//! live in `tests/browser/peerjs-e2e.mjs`; this runs them against an in-process broker.
//! Needs Chromium and the npm packages that `scripts/test` installs.

#![allow(clippy::unwrap_used, clippy::expect_used)]
use kibitz_e2e::{Config, start};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_peerjs_client_in_chromium() {
    let b = start(Config::default()).await;
    let port = b.addr.port().to_string();
    let args = ["--host", "127.0.0.1", "--port", &port];
    if let Err(out) = kibitz_e2e::node_scenarios("browser/peerjs-e2e.mjs", &args).await {
        panic!("browser scenarios failed:\n{out}");
    }
}
