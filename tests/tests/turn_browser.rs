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
use std::process::Stdio;
use std::time::Duration;

const SECRET: &str = "kibitz-e2e-browser-secret";
const OTHER: &str = "kibitz-e2e-secret-coturn-never-heard-of";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_relays_through_coturn_with_api_credentials() {
    let turn = Coturn::start(&[SECRET]).await;
    let good = api::start(&[SECRET], turn.port).await;
    let bad = api::start(&[OTHER], turn.port).await;

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/turn/relay.mjs");
    let relay_ports = format!("{}-{}", turn.relay_ports.start(), turn.relay_ports.end());
    let child = tokio::process::Command::new("node")
        .arg(script)
        .args(["--api", &good.url(), "--bad-api", &bad.url()])
        .args(["--relay-ports", &relay_ports])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node must be installed (scripts/test installs it)");
    let out = tokio::time::timeout(Duration::from_secs(180), child.wait_with_output())
        .await
        .expect("browser test timed out")
        .expect("browser test ran");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        println!("--- coturn log ---\n{}", turn.log());
    }
    assert!(out.status.success(), "browser scenarios failed:\n{stdout}");
    assert!(
        stdout.contains(" passed, 0 failed"),
        "no summary line:\n{stdout}"
    );
    // The relayed data really went through this coturn.
    let log = turn.log();
    for line in [
        "ALLOCATE processed, success",
        "CREATE_PERMISSION processed, success",
    ] {
        assert!(log.contains(line), "coturn never logged {line:?}");
    }
}
