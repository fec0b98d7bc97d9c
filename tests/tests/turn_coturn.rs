//! `/api/turn` credentials against a real coturn (`use-auth-secret`, TURN.md §2): what the API
//! mints allocates a relay with `turnutils_uclient`, over UDP and TCP, across a secret rotation;
//! a foreign secret, an expired timestamp and tampering are refused with 401. Needs the Debian
//! package `coturn` (`turnserver`, `turnutils_uclient`).
//!
//! One coturn (secrets NEW and OLD) and one test function: the cases run concurrently, since a
//! successful `turnutils_uclient` run takes 3-5 s.

#![allow(clippy::unwrap_used, clippy::expect_used)]

// Shared with turn_browser.rs; not every helper is used here.
#[allow(dead_code)]
#[path = "../turn/api.rs"]
mod api;
#[allow(dead_code)]
#[path = "../turn/coturn.rs"]
mod coturn;

use coturn::{Coturn, parse_turn_uri, uclient, unix_now};
use kibitz_proto::turn::{rest_password, rest_username};
use std::time::Duration;

const NEW: &str = "kibitz-e2e-new-secret";
const OLD: &str = "kibitz-e2e-old-secret";
const UNKNOWN: &str = "kibitz-e2e-secret-coturn-never-heard-of";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Allocates,
    Rejected,
}

#[derive(Debug)]
struct Case {
    name: &'static str,
    host: String,
    port: u16,
    tcp: bool,
    username: String,
    password: String,
    expect: Expect,
}

impl Case {
    /// A case using the API's own `turn:` URI for the transport.
    fn from_api(name: &'static str, cred: &api::Credential, tcp: bool, expect: Expect) -> Self {
        let want = if tcp { "tcp" } else { "udp" };
        let (host, port, _) = cred
            .turn_urls
            .iter()
            .filter_map(|u| parse_turn_uri(u))
            .find(|(_, _, t)| t == want)
            .unwrap_or_else(|| panic!("no turn: URI with transport={want}: {:?}", cred.turn_urls));
        Self {
            name,
            host,
            port,
            tcp,
            username: cred.username.clone(),
            password: cred.password.clone(),
            expect,
        }
    }

    /// A hand-built credential signed with `secret`, expiring at `expiry`.
    fn built(name: &'static str, turn: &Coturn, expiry: u64, user: &str, secret: &str) -> Self {
        let username = rest_username(expiry, user);
        Self {
            name,
            host: "127.0.0.1".into(),
            port: turn.port,
            tcp: false,
            password: rest_password(secret.as_bytes(), &username),
            username,
            expect: if expiry >= unix_now() {
                Expect::Allocates
            } else {
                Expect::Rejected
            },
        }
    }
}

async fn run(turn: &Coturn, case: &Case) -> Result<String, String> {
    let r = uclient(
        &case.host,
        case.port,
        case.tcp,
        &case.username,
        &case.password,
    )
    .await;
    let took = format!("{:.1} s", r.elapsed.as_secs_f64());
    let log_wait = Duration::from_secs(3);
    match case.expect {
        Expect::Allocates => {
            if r.code != Some(0) {
                return Err(format!("uclient exit {:?}: {}", r.code, r.tail()));
            }
            let relays = r.relay_ports();
            if relays.is_empty() {
                return Err(format!("no 'Received relay addr': {}", r.tail()));
            }
            if let Some(p) = relays.iter().find(|p| !turn.relay_ports.contains(p)) {
                return Err(format!("relay port {p} outside {:?}", turn.relay_ports));
            }
            match r.messages() {
                Some((sent, recv)) if sent > 0 && recv > 0 => {}
                other => return Err(format!("nothing relayed (sent, received) = {other:?}")),
            }
            if !turn
                .logged(&Coturn::allocated_line(&case.username), log_wait)
                .await
            {
                return Err("coturn did not log a successful ALLOCATE for it".into());
            }
            Ok(format!("relays {relays:?}, {took}"))
        }
        Expect::Rejected => {
            if r.code == Some(0) || !r.relay_ports().is_empty() {
                return Err(format!("allocated (exit {:?}): {}", r.code, r.tail()));
            }
            if !r.output.contains("Cannot complete Allocation") {
                return Err(format!("not an allocation refusal: {}", r.tail()));
            }
            if !turn
                .logged(&Coturn::rejected_line(&case.username), log_wait)
                .await
            {
                return Err("coturn did not log a 401 for its username".into());
            }
            if turn.log().contains(&Coturn::allocated_line(&case.username)) {
                return Err("coturn logged a successful ALLOCATE for it".into());
            }
            Ok(format!("401, {took}"))
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coturn_accepts_api_credentials_and_refuses_bad_ones() {
    let turn = Coturn::start(&[NEW, OLD]).await;
    let rotated = api::start(&[NEW, OLD], turn.port).await;
    let old_only = api::start(&[OLD], turn.port).await;
    let stranger = api::start(&[UNKNOWN], turn.port).await;

    let mut checks: Vec<(String, Result<String, String>)> = Vec::new();

    // What the API hands out points at this coturn and is signed with the newest secret.
    let cred = rotated.fetch().await;
    let want_urls = vec![
        format!("turn:127.0.0.1:{}?transport=udp", turn.port),
        format!("turn:127.0.0.1:{}?transport=tcp", turn.port),
    ];
    checks.push((
        "API turn: URIs name this coturn (udp and tcp)".into(),
        if cred.turn_urls == want_urls {
            Ok(String::new())
        } else {
            Err(format!("{:?}, expected {want_urls:?}", cred.turn_urls))
        },
    ));
    checks.push((
        "rotation: API with [NEW, OLD] signs with NEW".into(),
        if cred.password == rest_password(NEW.as_bytes(), &cred.username) {
            Ok(String::new())
        } else {
            Err(format!(
                "password {} is not HMAC(NEW, {})",
                cred.password, cred.username
            ))
        },
    ));

    let mut tampered_password = rotated.fetch().await;
    let first = tampered_password.password.remove(0);
    tampered_password
        .password
        .insert(0, if first == 'A' { 'B' } else { 'A' });
    let mut tampered_username = rotated.fetch().await;
    let (expiry, user) = tampered_username
        .username
        .split_once(':')
        .expect("username is EXPIRY:USER");
    let later: u64 = expiry.parse::<u64>().expect("numeric expiry") + 3600;
    tampered_username.username = format!("{later}:{user}");

    let now = unix_now();
    let cases = [
        Case::from_api(
            "API credential allocates over UDP",
            &cred,
            false,
            Expect::Allocates,
        ),
        Case::from_api(
            "API credential allocates over TCP",
            &rotated.fetch().await,
            true,
            Expect::Allocates,
        ),
        Case::from_api(
            "rotation: credential from an API still on [OLD] allocates",
            &old_only.fetch().await,
            false,
            Expect::Allocates,
        ),
        Case::from_api(
            "credential from an API whose secret coturn does not know is refused",
            &stranger.fetch().await,
            false,
            Expect::Rejected,
        ),
        Case::from_api(
            "tampered password is refused",
            &tampered_password,
            false,
            Expect::Rejected,
        ),
        Case::from_api(
            "tampered username (expiry pushed 1 h later) is refused",
            &tampered_username,
            false,
            Expect::Rejected,
        ),
        Case::built(
            "expired credential (expiry 60 s ago, secret NEW) is refused",
            &turn,
            now - 60,
            "expired",
            NEW,
        ),
        Case::built(
            "control: the same but expiring in 10 min allocates",
            &turn,
            now + 600,
            "unexpired",
            NEW,
        ),
    ];
    let outcomes = futures_util::future::join_all(cases.iter().map(|case| run(&turn, case))).await;
    for (case, outcome) in cases.iter().zip(outcomes) {
        checks.push((case.name.into(), outcome));
    }

    let mut failed = 0;
    for (name, outcome) in &checks {
        match outcome {
            Ok(note) if note.is_empty() => println!("ok - {name}"),
            Ok(note) => println!("ok - {name} ({note})"),
            Err(why) => {
                failed += 1;
                println!("not ok - {name}: {why}");
            }
        }
    }
    println!("{} passed, {failed} failed", checks.len() - failed);
    if failed > 0 {
        println!("--- coturn log ---\n{}", turn.log());
    }
    assert_eq!(failed, 0, "TURN credential checks failed (see above)");
}
