//! The LAN hub (`kibitz hub`, LAN.md) end to end: real headless Chromium connects the way the
//! web client does (its answer synthesised from the blob, `tests/node/hub-connect.mjs`) and
//! speaks the hub protocol, including a 256 KiB `echo`; and the `kibitz hub` CLI's outputs
//! (BLOB/LINK lines, relay-link.txt, the 0600 state file reused across restarts, the fixed
//! identity). Needs Chromium and the npm packages that `scripts/test` installs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt as _;
use std::time::Duration;

#[allow(dead_code)]
#[path = "../turn/coturn.rs"]
mod coturn;

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

/// `kibitz hub` for tests: loopback, own identity unless `fixed`, no HTTP page, no mDNS. The
/// fixed identity's relay would take UDP 3478 on the host, so it runs without TURN here (the
/// network-namespace test covers it).
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
    if fixed {
        args.push("--no-turn");
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
    assert!(
        blob.starts_with("g2|"),
        "with its embedded TURN relay: {blob}"
    );
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

    // Restarted without --port: the saved identity and the saved (pinned) port, so the same
    // blob but for the per-run TURN credentials (as upstream); and a browser gets through with
    // the identity read back from the file.
    let mut hub = spawn_hub("hub 2", &state, false, None);
    let (blob2, _) = blob_and_link(&mut hub).await;
    let without_turn = |b: &str| {
        let mut p = lan::parse_blob(b).unwrap();
        p.turn = None;
        p
    };
    assert_eq!(without_turn(&blob2), without_turn(&blob));
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
    // Like upstream, a fresh state file is written in this mode.
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    assert_eq!(saved["ufrag"], lan::fixed::UFRAG);
    assert_eq!(saved["port"], port);
    // The published key really signs the DTLS handshake browsers check against the fixed fp.
    if let Err(out) = kibitz_e2e::node_scenarios("node/hub-connect.mjs", &[&blob]).await {
        panic!("hub scenarios against the fixed-identity hub failed:\n{out}");
    }
    stop(hub).await;

    // --fixed-id false never adopts the public identity from that file: it makes its own.
    let mut hub = spawn_hub("own hub", &state, false, Some("0"));
    let (own, _) = blob_and_link(&mut hub).await;
    let own = lan::parse_blob(&own).unwrap();
    assert_ne!(own.ufrag, lan::fixed::UFRAG);
    assert_ne!(
        lan::fingerprint_b64(&own.fingerprint),
        lan::fixed::FINGERPRINT_B64
    );
    stop(hub).await;

    // And a fixed-mode run leaves that own identity alone.
    let before = std::fs::read_to_string(&state).unwrap();
    let mut hub = spawn_hub("fixed hub again", &state, true, Some("0"));
    let (again, _) = blob_and_link(&mut hub).await;
    assert!(again.starts_with(&format!("g1|{}|", lan::fixed::UFRAG)));
    stop(hub).await;
    assert_eq!(std::fs::read_to_string(&state).unwrap(), before);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Inside a network namespace of its own (the only place a test may use private LAN addresses
/// and UDP 5353): addresses are detected and ranked 192.168.* < 10.* < others, then
/// `<host>.local`, then the hub's own `kbz-….local`, whose A record its mDNS responder answers.
/// The test re-runs itself under `unshare -n` (root only; skipped, loudly, otherwise).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kibitz_hub_detects_lan_addresses_and_answers_mdns_in_a_netns() {
    if std::env::var_os("KIBITZ_LAN_HUB_NETNS_CHILD").is_some() {
        return netns_child().await;
    }
    let exe = std::env::current_exe().unwrap();
    let probe = std::process::Command::new("unshare")
        .args(["-n", "true"])
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        eprintln!("SKIPPED: unshare -n needs root (CI runs as root)");
        return;
    }
    let out = tokio::process::Command::new("unshare")
        .arg("-n")
        .arg(exe)
        .args([
            "kibitz_hub_detects_lan_addresses_and_answers_mdns_in_a_netns",
            "--exact",
            "--nocapture",
        ])
        .env("KIBITZ_LAN_HUB_NETNS_CHILD", "1")
        .env("KIBITZ_BIN", kibitz_e2e::kibitz_bin())
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), out)
        .await
        .expect("netns child within 120 s")
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.contains("netns child: ok"),
        "{text}"
    );
}

async fn netns_child() {
    let sh = |cmd: &str| {
        let st = std::process::Command::new("sh")
            .args(["-c", cmd])
            .status()
            .unwrap();
        assert!(st.success(), "{cmd}");
    };
    sh("ip link set lo up && ip link set lo multicast on && ip route add 224.0.0.0/4 dev lo");
    // Added out of rank order, to see the ranking.
    sh(
        "ip addr add 172.20.1.1/16 dev lo && ip addr add 10.1.2.3/8 dev lo && ip addr add 192.168.77.1/24 dev lo",
    );
    let dir = temp_dir("netns");
    let state = dir.join("relay-state.json");
    let state = state.to_str().unwrap();
    let mut hub = KibitzProc::spawn(
        "netns hub",
        &[
            "hub",
            "--fixed-id",
            "false",
            "--port",
            "0",
            "--state",
            state,
            "--http",
            "0",
        ],
    );
    let (blob, _) = blob_and_link(&mut hub).await;
    let parsed = lan::parse_blob(&blob).unwrap();
    let addrs: Vec<&str> = parsed.endpoints.iter().map(|e| e.addr.as_str()).collect();
    assert_eq!(
        &addrs[..3],
        ["192.168.77.1", "10.1.2.3", "172.20.1.1"],
        "{blob}"
    );
    let own = lan::mdns_name(&parsed.ufrag);
    assert_eq!(addrs.last().copied(), Some(own.as_str()), "{blob}");
    if addrs.len() == 5 {
        assert!(addrs[3].ends_with(".local"), "{blob}");
    }

    // A one-shot (legacy) mDNS query for the hub's own name, to the group.
    let mut q = vec![0x12, 0x34, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in own.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    let sock = tokio::net::UdpSocket::bind("0.0.0.0:0").await.unwrap();
    let mut buf = [0u8; 512];
    let mut answer = None;
    // UDP: the first query may race the responder's start; ask until answered (bounded).
    for _ in 0..50 {
        sock.send_to(&q, "224.0.0.251:5353").await.unwrap();
        if let Ok(Ok((n, _))) =
            tokio::time::timeout(Duration::from_millis(200), sock.recv_from(&mut buf)).await
        {
            answer = Some(buf[..n].to_vec());
            break;
        }
    }
    let answer = answer.expect("the hub's mDNS responder answers");
    assert_eq!(&answer[..2], &[0x12, 0x34], "legacy query id echoed");
    assert_eq!(
        u16::from_be_bytes([answer[6], answer[7]]),
        3,
        "one A per IPv4"
    );
    assert!(
        answer.windows(4).any(|w| w == [192, 168, 77, 1]),
        "{answer:?}"
    );
    stop(hub).await;

    // upstream turn_test, fixed identity: g2 with the published relay on 3478, which allocates
    // for coturn's client with exactly those credentials.
    let mut hub = KibitzProc::spawn(
        "netns fixed hub",
        &["hub", "--port", "0", "--state", state, "--http", "0"],
    );
    let (blob, _) = blob_and_link(&mut hub).await;
    let fields: Vec<&str> = blob.split('|').collect();
    assert_eq!(fields[0], "g2", "{blob}");
    assert_eq!(fields[1], lan::fixed::UFRAG);
    assert_eq!(fields[3], lan::fixed::FINGERPRINT_B64);
    assert_eq!(fields[4], "3478,wblan,Sp64SHsXMZOdzT6rgYcF");
    let r = coturn::uclient("192.168.77.1", 3478, false, "wblan", "Sp64SHsXMZOdzT6rgYcF").await;
    assert_allocates("fixed relay", &r);
    stop(hub).await;
    let _ = std::fs::remove_dir_all(&dir);
    println!("netns child: ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kibitz_hub_saved_port_is_pinned() {
    let dir = temp_dir("pinned");
    let state = dir.join("relay-state.json");
    let busy = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    HubIdentity::generate()
        .unwrap()
        .save(&state, Some(port))
        .unwrap();
    // Without --port the saved port is the only one tried: busy means a clear failure, not a
    // silently different port (which would break every link already shared).
    let out = tokio::process::Command::new(kibitz_e2e::kibitz_bin())
        .args(["hub", "--fixed-id", "false", "--advertise", "127.0.0.1"])
        .args(["--http", "0", "--mdns", "false", "--state"])
        .arg(&state)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), out)
        .await
        .expect("kibitz hub gives up at once")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("no free hub port"), "{stderr}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("BLOB "));
    drop(busy);
    let _ = std::fs::remove_dir_all(&dir);
}

/// coturn's `turnutils_uclient` allocated relays and relayed its messages both ways.
fn assert_allocates(what: &str, r: &coturn::Uclient) {
    assert_eq!(r.code, Some(0), "{what}: {}", r.tail());
    assert!(r.relay_ports().len() >= 2, "{what}: {}", r.tail());
    let (sent, recv) = r
        .messages()
        .unwrap_or_else(|| panic!("{what}: {}", r.tail()));
    assert!(
        sent > 0 && recv >= sent,
        "{what}: sent {sent} received {recv}"
    );
}

/// upstream turn_test, own identity: a hub started with a fresh state file prints a g2 blob
/// whose field 4 is `port,user,pass` (all non-empty); a TURN client on 127.0.0.1 allocates
/// with those credentials (realm `kibitz`) and relays; a wrong password is refused. The
/// credentials are per run: a restart with the same state file keeps ICE and DTLS but not them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kibitz_hub_turn_allocates_with_the_blob_credentials() {
    let dir = temp_dir("turn");
    let state = dir.join("relay-state.json");
    let mut hub = spawn_hub("turn hub", &state, false, Some("0"));
    let (blob, _) = blob_and_link(&mut hub).await;
    let parsed = lan::parse_blob(&blob).unwrap();
    let turn = parsed
        .turn
        .clone()
        .unwrap_or_else(|| panic!("g2 expected: {blob}"));
    assert!(blob.starts_with("g2|"), "{blob}");
    assert_eq!(turn.user.len(), 10, "{blob}");
    assert_eq!(turn.pass.len(), 18, "{blob}");
    assert_eq!(
        parsed.turn_urls(),
        vec![format!("turn:127.0.0.1:{}?transport=udp", turn.port)]
    );
    let (good, bad) = tokio::join!(
        coturn::uclient("127.0.0.1", turn.port, false, &turn.user, &turn.pass),
        coturn::uclient(
            "127.0.0.1",
            turn.port,
            false,
            &turn.user,
            "not-the-password"
        ),
    );
    assert_allocates("blob credentials", &good);
    assert_ne!(
        bad.code,
        Some(0),
        "wrong password must be refused: {}",
        bad.tail()
    );
    assert!(bad.relay_ports().is_empty(), "{}", bad.tail());
    stop(hub).await;

    let mut hub = spawn_hub("turn hub again", &state, false, Some("0"));
    let (again, _) = blob_and_link(&mut hub).await;
    let again = lan::parse_blob(&again).unwrap();
    assert_eq!(
        (again.ufrag.as_str(), again.fingerprint),
        (parsed.ufrag.as_str(), parsed.fingerprint)
    );
    assert_ne!(
        again.turn.unwrap().pass,
        turn.pass,
        "TURN credentials are per run"
    );
    stop(hub).await;
    let _ = std::fs::remove_dir_all(&dir);
}
