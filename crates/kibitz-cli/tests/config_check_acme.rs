//! `kibitz config check` validates the ACME flags as `kibitz serve` would, without contacting
//! the CA: a missing cache, a bad name, a non-https directory, an unreadable CA root and
//! conflicting TLS sources are refused with a clear message.

#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::process::Command;

fn check(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kibitz"))
        .args(["config", "check"])
        .args(args)
        .env_remove("KIBITZ_CONFIG")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn acme_flags_are_checked() {
    let dir = std::env::temp_dir().join(format!("kibitz-acme-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cache = dir.join("cache");
    let cache = cache.to_str().unwrap();
    let root = dir.join("root.pem");
    std::fs::write(&root, ca_pem()).unwrap();
    let root = root.to_str().unwrap();

    let (ok, out, err) = check(&[
        "--acme-domain",
        "kibitz.example.org",
        "--acme-cache",
        cache,
        "--acme-email",
        "ops@example.org",
        "--acme-ca-root",
        root,
    ]);
    assert!(ok, "{out}\n{err}");
    assert!(
        out.contains("acme-domain") && out.contains("kibitz.example.org"),
        "{out}"
    );

    let refused = [
        (vec!["--acme-domain", "kibitz.example.org"], "--acme-cache"),
        (
            vec!["--acme-domain", "*.example.org", "--acme-cache", cache],
            "wildcard",
        ),
        (
            vec!["--acme-domain", "203.0.113.7", "--acme-cache", cache],
            "IP address",
        ),
        (
            vec![
                "--acme-domain",
                "kibitz.example.org",
                "--acme-cache",
                cache,
                "--acme-directory",
                "http://ca.example/dir",
            ],
            "https://",
        ),
        (
            vec![
                "--acme-domain",
                "kibitz.example.org",
                "--acme-cache",
                cache,
                "--acme-ca-root",
                "/nonexistent/root.pem",
            ],
            "/nonexistent/root.pem",
        ),
        (
            vec![
                "--acme-domain",
                "kibitz.example.org",
                "--acme-cache",
                cache,
                "--acme-email",
                "ops",
            ],
            "e-mail",
        ),
        (
            vec!["--acme-domain", "kibitz.example.org", "--tls-self-signed"],
            "cannot be used with",
        ),
    ];
    for (args, why) in refused {
        let (ok, out, err) = check(&args);
        assert!(!ok, "{args:?} accepted:\n{out}");
        assert!(err.contains(why), "{args:?}: expected {why:?} in:\n{err}");
    }
    // Nothing was created by checking.
    assert!(!std::path::Path::new(cache).exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A CA certificate as PEM.
fn ca_pem() -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.self_signed(&key).unwrap().pem()
}
