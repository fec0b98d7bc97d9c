//! `kibitz join` against TLS servers, every connection it makes (the broker's wss://,
//! /api/signal, /api/turn): `kibitz serve --tls-self-signed` trusted with `--ca-cert` (the
//! certificate `--tls-self-signed-out` wrote) or with `--insecure`; a clear refusal without
//! either, and of `--insecure` towards public addresses; a server whose certificate comes from
//! a CA in the system's store. Servers and clients on 127.0.0.1 only.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kibitz_e2e::{KibitzProc as Proc, kibitz_bin};
use tokio::io::AsyncBufReadExt as _;
use tokio::time::{Instant, timeout};

const WAIT: Duration = Duration::from_secs(30);
/// Debian's bundle, where update-ca-certificates puts every trusted CA.
const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kibitz-join-tls-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_owned()
}

/// A `kibitz` server on 127.0.0.1:0 and the address it reported.
struct Server {
    _child: tokio::process::Child,
    addr: SocketAddr,
}

async fn server(args: &[&str]) -> Server {
    let mut child = tokio::process::Command::new(kibitz_bin())
        .args(["--log-format", "json"])
        .args(args)
        .args(["--listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    let addr = timeout(WAIT, async {
        while let Ok(Some(line)) = lines.next_line().await {
            seen.push(line.clone());
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if v["fields"]["mode"].is_string()
                && let Some(a) = v["fields"]["addr"].as_str()
            {
                return a.parse().ok();
            }
        }
        None
    })
    .await;
    let Ok(Some(addr)) = addr else {
        panic!("kibitz {args:?} did not report its address: {seen:#?}");
    };
    // Keep draining stderr so the server never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Server {
        _child: child,
        addr,
    }
}

/// `kibitz join` with stderr kept (for the warnings `--insecure` must log).
fn join_with_stderr(
    name: &str,
    mut cmd: tokio::process::Command,
) -> (Proc, Arc<Mutex<Vec<String>>>) {
    cmd.stderr(Stdio::piped());
    let mut p = Proc::spawn_with(name, cmd);
    let err = Arc::new(Mutex::new(Vec::new()));
    let mut lines = tokio::io::BufReader::new(p.child.stderr.take().unwrap()).lines();
    let sink = err.clone();
    tokio::spawn(async move {
        while let Ok(Some(l)) = lines.next_line().await {
            sink.lock().unwrap().push(l);
        }
    });
    (p, err)
}

/// Runs `cmd` (a `kibitz join` that must fail) to its end; its stderr.
async fn fails(what: &str, cmd: &mut tokio::process::Command) -> String {
    let out = timeout(WAIT, cmd.stdin(Stdio::null()).output())
        .await
        .unwrap_or_else(|_| panic!("{what}: still running after {WAIT:?}"))
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "{what}: succeeded\n{}\n{stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    stderr
}

fn kibitz(args: &[&str]) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(kibitz_bin());
    c.args(args)
        .env_remove("SSL_CERT_FILE")
        .env_remove("SSL_CERT_DIR");
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_a_self_signed_server_with_ca_cert_and_with_insecure() {
    let dir = temp_dir("self-signed");
    let (a_pem, b_pem) = (dir.join("a.pem"), dir.join("b.pem"));
    // A: the broker, /api/turn and its embedded relay; B: /api/signal naming A. Each its own
    // self-signed certificate, so a participant needs both.
    let a = server(&[
        "serve",
        "--tls-self-signed",
        "--tls-self-signed-out",
        &s(&a_pem),
        "--turn-secret",
        "tls-test-secret",
        "--turn-host",
        "127.0.0.1",
        "--turn-rate-per-minute",
        "0",
        "--turn-embedded",
        "--turn-embedded-port",
        "0",
        "--turn-embedded-bind",
        "127.0.0.1",
        "--turn-embedded-allow-loopback",
    ])
    .await;
    let pa = a.addr.port();
    let a_host = format!("localhost:{pa}");
    // Its prober (webpki roots) fails on A's certificate, but one failed probe flips nothing
    // and the next is an hour away.
    let b = server(&[
        "signal-config",
        "--tls-self-signed",
        "--tls-self-signed-out",
        &s(&b_pem),
        "--signal-host",
        &a_host,
        "--signal-probe-interval-ms",
        "3600000",
    ])
    .await;
    let pb = b.addr.port();
    assert!(
        std::fs::read_to_string(&a_pem)
            .unwrap()
            .starts_with("-----BEGIN CERTIFICATE-----")
    );
    let link = format!("https://localhost:{pb}/#tls-room");
    let common = ["--relay-only", "--no-media"];

    // Alice: both certificates by flag. Carol: by the env list. Bob: --insecure, by address.
    let mut alice = Proc::spawn_with("alice", {
        let mut c = kibitz(&["join", &link, "--name", "Alice", "--turn-host", &a_host]);
        c.args(common)
            .args(["--ca-cert", &s(&a_pem), "--ca-cert", &s(&b_pem)]);
        c
    });
    let mut carol = Proc::spawn_with("carol", {
        let mut c = kibitz(&["join", &link, "--name", "Carol", "--turn-host", &a_host]);
        c.args(common)
            .env("KIBITZ_CA_CERT", format!("{},{}", s(&a_pem), s(&b_pem)));
        c
    });
    let (mut bob, bob_err) = join_with_stderr("bob", {
        let mut c = kibitz(&[
            "join",
            &format!("https://127.0.0.1:{pb}/#tls-room"),
            "--name",
            "Bob",
            "--turn-host",
            &format!("127.0.0.1:{pa}"),
            "--insecure",
        ]);
        c.args(common);
        c
    });
    for p in [&mut alice, &mut bob, &mut carol] {
        p.expect(WAIT, |l| {
            l.starts_with("* in the room:")
                && l.contains("Alice")
                && l.contains("Bob")
                && l.contains("Carol")
        })
        .await;
    }
    // Chat crosses the relay-only mesh; it may need a moment, so retry until both heard it.
    let deadline = Instant::now() + WAIT;
    let mut heard = [false, false];
    while heard != [true, true] {
        alice.line("hello over tls").await;
        for (i, p) in [&mut bob, &mut carol].into_iter().enumerate() {
            heard[i] = heard[i]
                || timeout(
                    Duration::from_secs(2),
                    p.expect(WAIT, |l| l == "<Alice> hello over tls"),
                )
                .await
                .is_ok();
        }
        assert!(Instant::now() < deadline, "not heard: {heard:?}");
    }
    // --insecure said so, and said which server it let through.
    let err = bob_err.lock().unwrap().join("\n");
    assert!(err.contains("insecure TLS"), "{err}");
    assert!(
        err.contains("accepting a TLS certificate that does not verify"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_certificates_and_insecure_to_public_addresses_are_refused_clearly() {
    let dir = temp_dir("refused");
    let a_pem = dir.join("a.pem");
    let a = server(&[
        "serve",
        "--tls-self-signed",
        "--tls-self-signed-out",
        &s(&a_pem),
    ])
    .await;
    let wss = format!("wss://localhost:{}", a.addr.port());
    let origin = format!("https://localhost:{}/#r", a.addr.port());
    // Some other certificate: trusting it must not make A's acceptable.
    let other = dir.join("other.pem");
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    std::fs::write(&other, ck.cert.pem()).unwrap();

    for (what, args) in [
        ("broker", vec!["join", "r", "--signal-host", &wss]),
        ("/api/signal", vec!["join", &origin]),
        (
            "another CA",
            vec![
                "join",
                "r",
                "--signal-host",
                &wss,
                "--ca-cert",
                other.to_str().unwrap(),
            ],
        ),
    ] {
        let err = fails(what, kibitz(&args).arg("--no-media")).await;
        assert!(
            err.contains("TLS certificate is not trusted")
                && err.contains("invalid peer certificate")
                && err.contains("--ca-cert")
                && err.contains("--insecure"),
            "{what}: {err}"
        );
    }
    // --insecure never reaches for a public address (192.0.2.1: TEST-NET-1, refused before
    // any packet is sent), for the broker or for /api/signal.
    for args in [
        vec!["join", "r", "--signal-host", "wss://192.0.2.1"],
        vec!["join", "https://192.0.2.1/#r"],
    ] {
        let err = fails(
            "insecure to 192.0.2.1",
            kibitz(&args).args(["--insecure", "--no-media"]),
        )
        .await;
        assert!(
            err.contains("only allowed to loopback and private addresses, not 192.0.2.1"),
            "{err}"
        );
    }
    // A --ca-cert that is not a certificate.
    let missing = dir.join("missing.pem");
    let err = fails(
        "missing --ca-cert",
        &mut kibitz(&[
            "join",
            "r",
            "--signal-host",
            &wss,
            "--ca-cert",
            &s(&missing),
        ]),
    )
    .await;
    assert!(err.contains("CA certificate file"), "{err}");

    // A name resolving to a public address is refused too, once resolved: /etc/hosts says
    // so in a mount namespace of the process's own (the real file is untouched).
    let hosts = dir.join("hosts");
    std::fs::write(
        &hosts,
        "127.0.0.1 localhost\n::1 localhost\n203.0.113.7 public.kibitz.test\n",
    )
    .unwrap();
    for args in [
        vec!["join", "r", "--signal-host", "wss://public.kibitz.test"],
        vec!["join", "https://public.kibitz.test/#r"],
    ] {
        let Some(mut cmd) = in_mount_ns(&[(&hosts, Path::new("/etc/hosts"))], &args) else {
            break;
        };
        let err = fails(
            "insecure to public.kibitz.test",
            cmd.args(["--insecure", "--no-media"]),
        )
        .await;
        assert!(
            err.contains(
                "only allowed to loopback and private addresses, not public.kibitz.test (203.0.113.7)"
            ),
            "{err}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `kibitz <args>` with `binds` (file over file) in a private mount namespace, or `None`
/// (skipped, loudly) where `unshare -m` is not allowed (CI runs as root).
fn in_mount_ns(binds: &[(&Path, &Path)], args: &[&str]) -> Option<tokio::process::Command> {
    let ok = std::process::Command::new("unshare")
        .args(["-m", "true"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("SKIPPED: unshare -m needs root (CI runs as root)");
        return None;
    }
    // unshare -m makes every mount private: nothing here is seen outside.
    let mut script = String::new();
    for (i, _) in binds.iter().enumerate() {
        script.push_str(&format!(
            "mount --bind \"${}\" \"${}\" && ",
            2 * i + 1,
            2 * i + 2
        ));
    }
    script.push_str(&format!("shift {} && exec \"$@\"", 2 * binds.len()));
    let mut cmd = tokio::process::Command::new("unshare");
    cmd.args(["-m", "sh", "-c", &script, "sh"]);
    for (src, dst) in binds {
        cmd.arg(src).arg(dst);
    }
    cmd.arg(kibitz_bin()).args(args);
    cmd.env_remove("SSL_CERT_FILE").env_remove("SSL_CERT_DIR");
    Some(cmd)
}

/// A CA and a certificate for localhost/127.0.0.1 it signed: (ca.pem, cert.pem, key.pem).
fn test_ca(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "Kibitz test company CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let paths = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&paths.0, ca.pem()).unwrap();
    std::fs::write(&paths.1, leaf.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    (paths.0, paths.1, paths.2)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_a_server_whose_ca_is_in_the_system_store() {
    let dir = temp_dir("system-store");
    let (ca, cert, key) = test_ca(&dir);
    let a = server(&["serve", "--tls-cert", &s(&cert), "--tls-key", &s(&key)]).await;
    let wss = format!("wss://localhost:{}", a.addr.port());

    // Not trusted as things are.
    let err = fails(
        "CA not installed",
        &mut kibitz(&["join", "r", "--signal-host", &wss, "--no-media"]),
    )
    .await;
    assert!(err.contains("TLS certificate is not trusted"), "{err}");

    // The system's bundle with the CA added (what update-ca-certificates would write).
    let bundle = dir.join("ca-certificates.crt");
    let mut pem = std::fs::read_to_string(SYSTEM_BUNDLE).unwrap_or_default();
    pem.push_str(&std::fs::read_to_string(&ca).unwrap());
    std::fs::write(&bundle, pem).unwrap();

    // 1. SSL_CERT_FILE names that bundle (OpenSSL's override of the system store, honoured
    //    by rustls-native-certs).
    let mut p = Proc::spawn_with("ssl-cert-file", {
        let mut c = kibitz(&["join", "store-env", "--signal-host", &wss, "--no-media"]);
        c.env("SSL_CERT_FILE", &bundle);
        c
    });
    p.expect(WAIT, |l| l == "* connected (you coordinate the room)")
        .await;
    drop(p);

    // 2. The bundle at the system's own path, in a mount namespace of its own.
    if Path::new(SYSTEM_BUNDLE).is_file()
        && let Some(cmd) = in_mount_ns(
            &[(&bundle, Path::new(SYSTEM_BUNDLE))],
            &["join", "store-system", "--signal-host", &wss, "--no-media"],
        )
    {
        let mut p = Proc::spawn_with("system store", cmd);
        p.expect(WAIT, |l| l == "* connected (you coordinate the room)")
            .await;
    } else if !Path::new(SYSTEM_BUNDLE).is_file() {
        panic!("{SYSTEM_BUNDLE} missing: install ca-certificates (scripts/test does)");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
