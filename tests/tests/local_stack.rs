//! `deploy/local-stack` end to end: the script starts coturn and `kibitz serve` natively on free
//! 127.0.0.1 ports from an `.env` file (two secrets, newest first, as while rotating), then
//! - the official peerjs client in headless Chromium runs its scenarios through the stack's
//!   broker (`tests/browser/peerjs-e2e.mjs`),
//! - two relay-only Chromium peers connect through the stack's coturn with credentials from the
//!   stack's `/api/turn`, and credentials signed with a secret coturn does not know fail closed
//!   (`tests/turn/relay.mjs`; the refused ones come from an in-process API with a wrong secret),
//! - the status page's self-test (`tests/status/selftest.mjs`) reports TURN and the broker green,
//! - `deploy/local-stack stop` stops everything and the script exits 0.
//!
//! Needs the `kibitz` binary next to this test's target dir (`cargo test --workspace` builds it;
//! otherwise `cargo build -p kibitz-cli`, or set `KIBITZ_BIN`), and what `scripts/test`
//! installs: coturn, Chromium, Node.js and the npm packages in `tests/node`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)]
#[path = "../turn/api.rs"]
mod api;

use kibitz_e2e::kibitz_bin;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};

const NEW_SECRET: &str = "kibitz-local-stack-newest-secret";
const OLD_SECRET: &str = "kibitz-local-stack-older-secret";
const OTHER_SECRET: &str = "kibitz-local-stack-secret-coturn-never-heard-of";
const REALM: &str = "local-stack.test";
// The script itself gives each attempt 20 s and tries three port sets.
const START_WITHIN: Duration = Duration::from_secs(90);
const STOP_WITHIN: Duration = Duration::from_secs(25);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The running script; `deploy/local-stack stop` on drop, so a failed test leaves nothing behind.
struct Stack {
    child: Child,
    stdout: Option<BufReader<ChildStdout>>,
    /// The test's temporary directory (env file, and `state/` = `LOCAL_STACK_DIR`).
    root: PathBuf,
    dir: PathBuf,
    http_port: u16,
    turn_port: u16,
    relay_ports: String,
    stopped: bool,
}

impl Drop for Stack {
    fn drop(&mut self) {
        if !self.stopped {
            let _ = std::process::Command::new("bash")
                .arg(repo_root().join("deploy/local-stack"))
                .arg("stop")
                .env("LOCAL_STACK_DIR", &self.dir)
                .stdin(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

impl Stack {
    /// The tails of the stack's own logs, for a failure message.
    fn logs(&self) -> String {
        ["kibitz.log", "coturn.log"]
            .iter()
            .map(|f| {
                let text = std::fs::read_to_string(self.dir.join(f)).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                format!("\n--- {f} (last lines)\n{}", tail.join("\n"))
            })
            .collect()
    }

    async fn start() -> Self {
        let dir =
            std::env::temp_dir().join(format!("kibitz-local-stack-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("state dir");
        // The same shape as deploy/.env.example: the script reads it as compose would.
        let env_file = dir.join("test.env");
        std::fs::write(
            &env_file,
            format!(
                "# written by tests/tests/local_stack.rs\n\
                 KIBITZ_TURN_SECRETS={NEW_SECRET},{OLD_SECRET}\n\
                 TURN_REALM=\"{REALM}\"\n\
                 KIBITZ_LOG_FORMAT=json\n"
            ),
        )
        .expect("write env file");
        let mut child = Command::new("bash")
            .arg(repo_root().join("deploy/local-stack"))
            .args(["start", "--free-ports", "--env-file"])
            .arg(&env_file)
            .env("LOCAL_STACK_DIR", dir.join("state"))
            .env("KIBITZ_BIN", kibitz_bin())
            .env_remove("KIBITZ_TURN_SECRETS")
            .env_remove("TURN_PORT")
            .env_remove("TURN_MIN_PORT")
            .env_remove("TURN_MAX_PORT")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("bash runs deploy/local-stack");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut stack = Self {
            child,
            stdout: None,
            root: dir.clone(),
            dir: dir.join("state"),
            http_port: 0,
            turn_port: 0,
            relay_ports: String::new(),
            stopped: false,
        };
        let ready = tokio::time::timeout(START_WITHIN, async {
            let mut line = String::new();
            loop {
                line.clear();
                if stdout.read_line(&mut line).await.expect("read stdout") == 0 {
                    return None;
                }
                print!("{line}");
                if let Some((_, rest)) = line.split_once("ready: ") {
                    return Some(rest.to_owned());
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("local-stack not ready in {START_WITHIN:?}{}", stack.logs()))
        .unwrap_or_else(|| panic!("local-stack exited before it was ready{}", stack.logs()));
        let field = |name: &str| {
            ready
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                .unwrap_or_else(|| panic!("no {name}= in {ready:?}"))
                .to_owned()
        };
        stack.http_port = field("http").parse().expect("http port");
        stack.turn_port = field("turn").parse().expect("turn port");
        stack.relay_ports = field("relay");
        stack.stdout = Some(stdout);
        stack
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name)).unwrap_or_default()
    }

    /// `deploy/local-stack stop`, then the foreground script must exit 0 with both servers gone.
    async fn stop(mut self) {
        let pids: Vec<u32> = ["kibitz.pid", "turnserver.pid"]
            .iter()
            .map(|f| self.log(f).trim().parse().expect("pid file"))
            .collect();
        let status = Command::new("bash")
            .arg(repo_root().join("deploy/local-stack"))
            .arg("stop")
            .env("LOCAL_STACK_DIR", &self.dir)
            .stdin(Stdio::null())
            .status()
            .await
            .expect("local-stack stop ran");
        assert!(status.success(), "local-stack stop: {status}");
        self.stopped = true;
        let exit = tokio::time::timeout(STOP_WITHIN, self.child.wait())
            .await
            .expect("local-stack did not exit after stop")
            .expect("wait");
        let mut rest = String::new();
        if let Some(out) = self.stdout.as_mut() {
            let _ = tokio::io::AsyncReadExt::read_to_string(out, &mut rest).await;
        }
        print!("{rest}");
        assert!(exit.success(), "local-stack exited with {exit}");
        for pid in pids {
            assert!(
                !Path::new(&format!("/proc/{pid}")).exists(),
                "process {pid} survived local-stack stop"
            );
        }
        for f in ["stack.env", "turnserver.conf", "local-stack.pid"] {
            assert!(!self.dir.join(f).exists(), "{f} left behind");
        }
    }
}

async fn node(args: &[String]) {
    let (script, rest) = args.split_first().expect("a script");
    let script = script
        .strip_prefix("tests/")
        .expect("a script under tests/");
    let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
    if let Err(out) = kibitz_e2e::node_scenarios(script, &rest).await {
        panic!("{script} failed:\n{out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_stack_serves_peerjs_and_relays_through_its_coturn() {
    let stack = Stack::start().await;
    let http = stack.http_port.to_string();
    let api_url = format!("http://127.0.0.1:{http}/api/turn");
    // Credentials coturn must refuse: same TURN server, a secret it never heard of.
    let bad = api::start(&[OTHER_SECRET], stack.turn_port).await;

    let peerjs = [
        "tests/browser/peerjs-e2e.mjs".to_owned(),
        "--host".to_owned(),
        "127.0.0.1".to_owned(),
        "--port".to_owned(),
        http.clone(),
    ];
    let relay = [
        "tests/turn/relay.mjs".to_owned(),
        "--api".to_owned(),
        api_url,
        "--bad-api".to_owned(),
        bad.url(),
        "--relay-ports".to_owned(),
        stack.relay_ports.clone(),
    ];
    tokio::join!(node(&peerjs), node(&relay));
    // The operator's view: the status page's own self-test is green against the stack.
    let selftest = [
        "tests/status/selftest.mjs".to_owned(),
        "--good".to_owned(),
        format!("http://127.0.0.1:{http}/"),
        "--artifacts".to_owned(),
        // The workspace's target/, not one under tests/ (node runs with tests/ as its cwd).
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../target/test-artifacts/local-stack"
        )
        .to_owned(),
    ];
    node(&selftest).await;

    // The relayed data went through the stack's coturn, with the stack's credentials.
    let coturn = stack.log("coturn.log");
    for line in [
        "ALLOCATE processed, success",
        "CREATE_PERMISSION processed, success",
    ] {
        assert!(
            coturn.contains(line),
            "coturn never logged {line:?}:\n{coturn}"
        );
    }
    let addr = format!("127.0.0.1:{http}").parse().expect("addr");
    let (status, metrics) = api::get(addr, "/metrics").await;
    assert_eq!(status, 200);
    let issued = metrics
        .lines()
        .find_map(|l| l.strip_prefix(r#"kibitz_turn_requests_total{outcome="issued_open"} "#))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no issued_open counter:\n{metrics}"));
    assert!(issued >= 2.0, "the stack issued {issued} credentials");

    stack.stop().await;
}
