//! A real coturn (`turnserver`, Debian package `coturn`) on 127.0.0.1 for the TURN tests, started
//! with the flags of `TURN.md` §2.2, and `turnutils_uclient` (same package) to try credentials.
//!
//! Each server gets a block of [`BLOCK`] consecutive ports below the kernel's ephemeral range:
//! the first is its UDP+TCP listening port, the rest its relay range. Blocks are probed before
//! use, start at a random offset and never repeat within a process, so parallel tests and test
//! binaries do not collide. The server and its temporary directory go away on drop.

use std::hash::{BuildHasher, Hasher};
use std::net::{Ipv4Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

/// Ports per server: 1 listening port + 63 relay ports.
pub const BLOCK: u16 = 64;
/// The realm coturn is started with (coturn answers 401 with an empty realm without one).
pub const REALM: &str = "kibitz.test";
const LOWEST_PORT: u16 = 10_240;
const READY_WITHIN: Duration = Duration::from_secs(5);
const UCLIENT_WITHIN: Duration = Duration::from_secs(30);

/// A running `turnserver`, killed (and its temporary directory removed) on drop.
#[derive(Debug)]
pub struct Coturn {
    /// UDP and TCP listening port on 127.0.0.1.
    pub port: u16,
    /// `--min-port..=--max-port`: every relay address is 127.0.0.1 and a port in here.
    pub relay_ports: RangeInclusive<u16>,
    child: Child,
    dir: PathBuf,
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Coturn {
    /// Starts coturn accepting REST credentials signed with any of `secrets`, and waits until
    /// it answers STUN over UDP and TCP. Retries on another port block if it does not.
    pub async fn start(secrets: &[&str]) -> Self {
        assert!(!secrets.is_empty(), "coturn needs at least one secret");
        let mut failures = Vec::new();
        for _ in 0..3 {
            let base = free_block();
            match Self::try_start(secrets, base).await {
                Ok(coturn) => return coturn,
                Err(why) => failures.push(why),
            }
        }
        panic!("coturn did not start:\n{}", failures.join("\n---\n"));
    }

    async fn try_start(secrets: &[&str], base: u16) -> Result<Self, String> {
        let dir = temp_dir();
        std::fs::create_dir_all(&dir).expect("create coturn temp dir");
        let log = std::fs::File::create(dir.join("turnserver.log")).expect("create coturn log");
        let log_err = log.try_clone().expect("clone log handle");
        let max = base + BLOCK - 1;
        let mut cmd = Command::new("turnserver");
        cmd.args([
            "-n",
            "-v",
            "--log-file=stdout",
            "--simple-log",
            "--no-cli",
            "--no-tls",
            "--no-dtls",
            "--listening-ip=127.0.0.1",
            "--relay-ip=127.0.0.1",
            "--use-auth-secret",
            "--allow-loopback-peers",
        ])
        .arg(format!("--realm={REALM}"))
        .arg(format!("--listening-port={base}"))
        .arg(format!("--min-port={}", base + 1))
        .arg(format!("--max-port={max}"))
        .arg(format!("--userdb={}", dir.join("turndb").display()))
        .arg(format!(
            "--pidfile={}",
            dir.join("turnserver.pid").display()
        ));
        for secret in secrets {
            cmd.arg(format!("--static-auth-secret={secret}"));
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .spawn()
            .expect("turnserver must be installed (Debian package `coturn`)");
        let mut coturn = Self {
            port: base,
            relay_ports: base + 1..=max,
            child,
            dir,
        };
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            if let Ok(Some(status)) = coturn.child.try_wait() {
                return Err(format!(
                    "turnserver exited with {status}:\n{}",
                    coturn.log()
                ));
            }
            let addr = coturn.addr();
            if stun_udp(addr).await && stun_tcp(addr).await {
                return Ok(coturn);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "turnserver not answering STUN on {addr} after {READY_WITHIN:?}:\n{}",
                    coturn.log()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// Everything coturn has logged so far (`-v`: one line per processed request).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("turnserver.log")).unwrap_or_default()
    }

    /// Waits up to `within` for a log line containing `needle`.
    pub async fn logged(&self, needle: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if self.log().contains(needle) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The log line coturn writes when `username` allocated.
    pub fn allocated_line(username: &str) -> String {
        format!("user <{username}>: incoming packet ALLOCATE processed, success")
    }

    /// The log line coturn writes when no secret verifies `username`'s MESSAGE-INTEGRITY
    /// (wrong secret, wrong password, expired timestamp: coturn 4.6 does not tell them apart).
    pub fn rejected_line(username: &str) -> String {
        format!("check_stun_auth: Cannot find credentials of user <{username}>")
    }
}

/// What one `turnutils_uclient` run did.
#[derive(Debug)]
pub struct Uclient {
    /// Exit code (`None` if killed by a signal).
    pub code: Option<i32>,
    /// stdout and stderr.
    pub output: String,
    /// How long it ran.
    pub elapsed: Duration,
}

impl Uclient {
    /// Relay ports from `Received relay addr: 127.0.0.1:PORT` lines.
    pub fn relay_ports(&self) -> Vec<u16> {
        self.output
            .lines()
            .filter_map(|l| {
                l.split_once("Received relay addr: ")?
                    .1
                    .trim()
                    .rsplit_once(':')
            })
            .filter_map(|(_, port)| port.parse().ok())
            .collect()
    }

    /// `(sent, received)` from `start_mclient: tot_send_msgs=N, tot_recv_msgs=M`.
    pub fn messages(&self) -> Option<(u32, u32)> {
        let line = self
            .output
            .lines()
            .rev()
            .find(|l| l.contains("start_mclient: tot_send_msgs="))?;
        let (_, rest) = line.split_once("tot_send_msgs=")?;
        let (sent, rest) = rest.split_once(", tot_recv_msgs=")?;
        Some((sent.trim().parse().ok()?, rest.trim().parse().ok()?))
    }

    /// The last lines of output, for failure messages.
    pub fn tail(&self) -> String {
        let lines: Vec<&str> = self.output.lines().collect();
        lines[lines.len().saturating_sub(6)..].join(" | ")
    }
}

/// `turnutils_uclient -v -y -c -n 3 [-t] -u USER -w PASS -p PORT HOST`: two clients allocate a
/// relay each and send 3 messages to each other through them (`-y`, which needs coturn's
/// `--allow-loopback-peers` on 127.0.0.1). Success takes about 3-5 s, refusal ~10 ms.
pub async fn uclient(host: &str, port: u16, tcp: bool, username: &str, password: &str) -> Uclient {
    let mut cmd = tokio::process::Command::new("turnutils_uclient");
    cmd.args(["-v", "-y", "-c", "-n", "3"]);
    if tcp {
        cmd.arg("-t");
    }
    cmd.args([
        "-u",
        username,
        "-w",
        password,
        "-p",
        &port.to_string(),
        host,
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    let started = Instant::now();
    let child = cmd
        .spawn()
        .expect("turnutils_uclient must be installed (Debian package `coturn`)");
    let out = tokio::time::timeout(UCLIENT_WITHIN, child.wait_with_output())
        .await
        .expect("turnutils_uclient timed out")
        .expect("turnutils_uclient ran");
    let mut output = String::from_utf8_lossy(&out.stdout).into_owned();
    output.push_str(&String::from_utf8_lossy(&out.stderr));
    Uclient {
        code: out.status.code(),
        output,
        elapsed: started.elapsed(),
    }
}

/// Parses `turn:HOST:PORT?transport=T` into `(HOST, PORT, T)`.
pub fn parse_turn_uri(uri: &str) -> Option<(String, u16, String)> {
    let rest = uri.strip_prefix("turn:")?;
    let (hostport, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (host, port) = hostport.rsplit_once(':')?;
    let transport = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("transport="))
        .unwrap_or("udp");
    Some((host.to_owned(), port.parse().ok()?, transport.to_owned()))
}

/// A STUN binding request with transaction id `txid`.
fn binding_request(txid: &[u8; 12]) -> [u8; 20] {
    let mut msg = [0u8; 20];
    msg[..2].copy_from_slice(&[0x00, 0x01]);
    msg[4..8].copy_from_slice(&0x2112_A442_u32.to_be_bytes());
    msg[8..].copy_from_slice(txid);
    msg
}

fn is_binding_success(resp: &[u8], txid: &[u8; 12]) -> bool {
    resp.len() >= 20 && resp[..2] == [0x01, 0x01] && resp[8..20] == txid[..]
}

async fn stun_udp(addr: SocketAddr) -> bool {
    let txid = *b"kibitz-ready";
    let Ok(sock) = tokio::net::UdpSocket::bind("127.0.0.1:0").await else {
        return false;
    };
    if sock.send_to(&binding_request(&txid), addr).await.is_err() {
        return false;
    }
    let mut buf = [0u8; 1500];
    matches!(
        tokio::time::timeout(Duration::from_millis(200), sock.recv(&mut buf)).await,
        Ok(Ok(n)) if is_binding_success(&buf[..n], &txid)
    )
}

async fn stun_tcp(addr: SocketAddr) -> bool {
    let txid = *b"kibitz-ready";
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(&binding_request(&txid)).await.ok()?;
        let mut head = [0u8; 20];
        s.read_exact(&mut head).await.ok()?;
        Some(is_binding_success(&head, &txid))
    };
    matches!(
        tokio::time::timeout(Duration::from_millis(500), attempt).await,
        Ok(Some(true))
    )
}

/// Base of a [`BLOCK`]-port block, all of it bindable on 127.0.0.1 over UDP and TCP right now.
fn free_block() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Ports the kernel hands out for port 0 must not land in a relay range.
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768)
        .min(65_536);
    let blocks = (ephemeral_low.saturating_sub(u32::from(LOWEST_PORT)) / u32::from(BLOCK)).max(1);
    let start = u32::try_from(random() % u64::from(blocks)).expect("fits");
    for _ in 0..blocks {
        let index = (start + NEXT.fetch_add(1, Ordering::Relaxed)) % blocks;
        let base = u16::try_from(u32::from(LOWEST_PORT) + index * u32::from(BLOCK)).expect("port");
        if block_is_free(base) {
            return base;
        }
    }
    panic!("no free block of {BLOCK} ports on 127.0.0.1 below {ephemeral_low}");
}

fn block_is_free(base: u16) -> bool {
    (base..base + BLOCK).all(|port| {
        std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
            && std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
    })
}

fn temp_dir() -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    std::env::temp_dir().join(format!(
        "kibitz-coturn-{}-{}-{:08x}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        random() as u32
    ))
}

/// A random number (std's per-process random hash keys; no `rand` dependency).
fn random() -> u64 {
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

/// Unix seconds now (for hand-built credentials).
#[allow(clippy::disallowed_methods)]
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}
