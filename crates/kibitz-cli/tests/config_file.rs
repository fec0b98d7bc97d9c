//! The TOML config file: keys are flags, flags and env win over it, unknown keys are errors,
//! and `kibitz config check` prints the effective configuration with secrets masked.

#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::process::Command;

fn kibitz(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kibitz"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn file(body: &str) -> tempfile_path::Path {
    tempfile_path::write(body)
}

/// A config file in the system temp folder, removed on drop.
mod tempfile_path {
    pub struct Path(pub std::path::PathBuf);
    impl Drop for Path {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    pub fn write(body: &str) -> Path {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("kibitz-config-{}-{n}.toml", std::process::id()));
        std::fs::write(&p, body).unwrap();
        Path(p)
    }
}

#[test]
fn file_values_flags_and_env_in_that_order() {
    let f = file(
        r#"
listen = "127.0.0.1:9999"
turn-secret = ["s3cr3t-new", "s3cr3t-old"]
turn_host = "turn.example.org"
allow-discovery = true
msg-rate = 500
expire-timeout-ms = 1234
"#,
    );
    let path = f.0.to_str().unwrap();
    let (ok, out, err) = kibitz(
        &["config", "check", "--config", path, "--msg-rate", "300"],
        &[("KIBITZ_EXPIRE_TIMEOUT_MS", "777")],
    );
    assert!(ok, "{err}");
    assert!(out.contains("listen = \"127.0.0.1:9999\"  # file"), "{out}");
    assert!(out.contains("msg-rate = \"300\"  # flag"), "{out}");
    assert!(out.contains("expire-timeout-ms = \"777\"  # env"), "{out}");
    assert!(out.contains("allow-discovery = \"true\"  # file"), "{out}");
    assert!(out.contains("turn-secret = \"***\"  # file"), "{out}");
    assert!(out.contains("key = \"peerjs\"  # default"), "{out}");
    assert!(!out.contains("s3cr3t"), "a secret was printed");
    assert!(out.contains("# configuration OK"));
}

#[test]
fn unknown_keys_and_bad_values_are_refused() {
    let f = file("listen = \"127.0.0.1:9999\"\nlisten-port = 1\n");
    let (ok, _, err) = kibitz(&["config", "check", "--config", f.0.to_str().unwrap()], &[]);
    assert!(!ok);
    assert!(err.contains("unknown key `listen-port`"), "{err}");

    let f = file("turn-ttl-secs = \"soon\"\n");
    let (ok, _, err) = kibitz(&["config", "check", "--config", f.0.to_str().unwrap()], &[]);
    assert!(!ok);
    assert!(err.contains("turn-ttl-secs"), "{err}");

    // Valid syntax, invalid configuration: a TURN secret without a host.
    let f = file("turn-secret = \"x\"\n");
    let (ok, _, err) = kibitz(&["config", "check", "--config", f.0.to_str().unwrap()], &[]);
    assert!(!ok);
    assert!(err.contains("--turn-host"), "{err}");
}
