//! `/api/turn` in headless Chromium (TURN.md §3): a page on another origin fetches the
//! `iceServers` and two relay-only peers talk through a real coturn; credentials coturn refuses
//! fail closed with `icecandidateerror` 401. The scenarios live in `tests/turn/relay.mjs`.
//! Needs the Debian packages `coturn` and `chromium`, and the npm packages `scripts/test`
//! installs (playwright-core).

#![allow(clippy::unwrap_used, clippy::expect_used)]

// Shared with turn_coturn.rs; not every helper is used here.
#[allow(dead_code)]
#[path = "../turn/api.rs"]
mod api;
#[allow(dead_code)]
#[path = "../turn/coturn.rs"]
mod coturn;

use coturn::Coturn;

const SECRET: &str = "kibitz-e2e-browser-secret";
const OTHER: &str = "kibitz-e2e-secret-coturn-never-heard-of";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_relays_through_coturn_with_api_credentials() {
    let turn = Coturn::start(&[SECRET]).await;
    let good = api::start(&[SECRET], turn.port).await;
    let bad = api::start(&[OTHER], turn.port).await;

    let relay_ports = format!("{}-{}", turn.relay_ports.start(), turn.relay_ports.end());
    let (good_url, bad_url) = (good.url(), bad.url());
    let args = [
        "--api",
        &good_url,
        "--bad-api",
        &bad_url,
        "--relay-ports",
        &relay_ports,
    ];
    if let Err(out) = kibitz_e2e::node_scenarios("turn/relay.mjs", &args).await {
        panic!(
            "browser scenarios failed:\n{out}\n--- coturn log ---\n{}",
            turn.log()
        );
    }
    // The relayed data really went through this coturn.
    let log = turn.log();
    for line in [
        "ALLOCATE processed, success",
        "CREATE_PERMISSION processed, success",
    ] {
        assert!(log.contains(line), "coturn never logged {line:?}");
    }
}
