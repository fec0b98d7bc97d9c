//! The official `peerjs@1.5.5` client in headless Chromium against our broker: the scenarios
//! live in `tests/browser/peerjs-e2e.mjs`; this runs them against an in-process broker.
//! Needs Chromium and the npm packages that `scripts/test` installs.

#![allow(clippy::unwrap_used, clippy::expect_used)]
use kibitz_e2e::{Config, start};
use std::process::Stdio;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_peerjs_client_in_chromium() {
    let b = start(Config::default()).await;
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/browser/peerjs-e2e.mjs");
    let child = tokio::process::Command::new("node")
        .arg(root)
        .args(["--host", "127.0.0.1", "--port", &b.addr.port().to_string()])
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
    assert!(out.status.success(), "browser scenarios failed:\n{stdout}");
    assert!(
        stdout.contains(" passed, 0 failed"),
        "no summary line:\n{stdout}"
    );
}
