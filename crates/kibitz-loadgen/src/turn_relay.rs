//! `turn-relay`: TURN relay throughput. Each pair is two TURN clients on 127.0.0.1 that
//! allocate a relay each (REST credentials from `--secret`, as `/api/turn` mints them) and bind
//! a channel to each other's relay; a sender thread blasts ChannelData from A to B (at
//! `--rate` in total, or as fast as it can with 0), B counts what arrives. One delivered
//! packet = two relay operations on the server (client -> relay -> peer, then relay ->
//! client). Reports delivered packets/s, loss, and the server's CPU per delivered packet.

// A load generator is all about wall-clock time: the clock bans are for engines.
#![allow(clippy::disallowed_methods)]

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use serde_json::{Map, Value, json};
use sha1::Sha1;

use crate::probe::{Probe, round2, window_figures};

#[derive(Debug, Args)]
pub struct TurnRelayArgs {
    /// The TURN server (UDP).
    #[arg(long, default_value = "127.0.0.1:3478")]
    server: SocketAddr,
    /// Shared secret for REST credentials (coturn `static-auth-secret`, `--turn-secret`).
    #[arg(long)]
    secret: String,
    /// Client pairs (each: one sender thread, one receiver thread).
    #[arg(long, default_value_t = 2)]
    pairs: usize,
    /// Packets per second offered in total; 0 = as fast as the senders can.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// ChannelData payload bytes.
    #[arg(long, default_value_t = 200)]
    size: usize,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 1.0)]
    warmup_secs: f64,
    /// Seconds measured.
    #[arg(long, default_value_t = 5.0)]
    secs: f64,
}

const MAGIC: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];
const A_USERNAME: u16 = 0x0006;
const A_MI: u16 = 0x0008;
const A_ERROR: u16 = 0x0009;
const A_CHANNEL: u16 = 0x000C;
const A_PEER: u16 = 0x0012;
const A_REALM: u16 = 0x0014;
const A_NONCE: u16 = 0x0015;
const A_RELAYED: u16 = 0x0016;
const A_TRANSPORT: u16 = 0x0019;
const CHANNEL: u16 = 0x4000;

fn msg(ty: u16, txid: &[u8; 12], attrs: &[(u16, &[u8])], key: Option<&[u8; 16]>) -> Vec<u8> {
    let mut b = Vec::with_capacity(128);
    b.extend_from_slice(&ty.to_be_bytes());
    b.extend_from_slice(&[0, 0]);
    b.extend_from_slice(&MAGIC);
    b.extend_from_slice(txid);
    for (t, v) in attrs {
        b.extend_from_slice(&t.to_be_bytes());
        b.extend_from_slice(&(v.len() as u16).to_be_bytes());
        b.extend_from_slice(v);
        while !b.len().is_multiple_of(4) {
            b.push(0);
        }
    }
    if let Some(key) = key {
        let len = (b.len() - 20 + 24) as u16;
        b[2..4].copy_from_slice(&len.to_be_bytes());
        let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(key) else {
            unreachable!("HMAC accepts keys of any length")
        };
        mac.update(&b);
        let tag = mac.finalize().into_bytes();
        b.extend_from_slice(&A_MI.to_be_bytes());
        b.extend_from_slice(&20u16.to_be_bytes());
        b.extend_from_slice(&tag);
    } else {
        let len = (b.len() - 20) as u16;
        b[2..4].copy_from_slice(&len.to_be_bytes());
    }
    b
}

fn attrs(b: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    let mut at = 20;
    while at + 4 <= b.len() {
        let t = u16::from_be_bytes([b[at], b[at + 1]]);
        let l = usize::from(u16::from_be_bytes([b[at + 2], b[at + 3]]));
        if at + 4 + l > b.len() {
            break;
        }
        out.push((t, &b[at + 4..at + 4 + l]));
        at += 4 + ((l + 3) & !3);
    }
    out
}

fn xor_addr(a: SocketAddr) -> Vec<u8> {
    let IpAddr::V4(ip) = a.ip() else {
        unreachable!("loopback IPv4 only")
    };
    let mut v = vec![0, 1];
    v.extend_from_slice(&(a.port() ^ 0x2112).to_be_bytes());
    for (i, o) in ip.octets().iter().enumerate() {
        v.push(o ^ MAGIC[i]);
    }
    v
}

fn unxor_addr(v: &[u8]) -> Option<SocketAddr> {
    if v.len() != 8 || v[1] != 1 {
        return None;
    }
    let port = u16::from_be_bytes([v[2], v[3]]) ^ 0x2112;
    let ip = [
        v[4] ^ MAGIC[0],
        v[5] ^ MAGIC[1],
        v[6] ^ MAGIC[2],
        v[7] ^ MAGIC[3],
    ];
    Some(SocketAddr::from((ip, port)))
}

/// One TURN client with its allocation.
struct Client {
    sock: UdpSocket,
    user: String,
    realm: String,
    nonce: String,
    key: [u8; 16],
    relay: SocketAddr,
    n: u8,
}

fn request(sock: &UdpSocket, req: &[u8], txid: &[u8; 12]) -> Result<Vec<u8>> {
    let mut buf = [0u8; 2048];
    for _ in 0..5 {
        sock.send(req)?;
        let deadline = Instant::now() + Duration::from_millis(500);
        while Instant::now() < deadline {
            match sock.recv(&mut buf) {
                Ok(n) if n >= 20 && &buf[8..20] == txid => return Ok(buf[..n].to_vec()),
                Ok(_) => {}
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    break;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    bail!("TURN server did not answer")
}

fn error_code(b: &[u8]) -> Option<u16> {
    attrs(b)
        .into_iter()
        .find(|(t, _)| *t == A_ERROR)
        .filter(|(_, v)| v.len() >= 4)
        .map(|(_, v)| u16::from(v[2] & 7) * 100 + u16::from(v[3]))
}

impl Client {
    fn allocate(server: SocketAddr, secret: &str, tag: usize) -> Result<Self> {
        let sock = UdpSocket::bind("127.0.0.1:0")?;
        sock.connect(server)?;
        sock.set_read_timeout(Some(Duration::from_millis(200)))?;
        let expiry = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs()
            + 3600;
        let user = format!("{expiry}:lg{tag}");
        let pass = kibitz_proto::turn::rest_password(secret.as_bytes(), &user);
        let transport: &[u8] = &[17, 0, 0, 0];
        let txid = [tag as u8, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11];
        let challenge = request(
            &sock,
            &msg(0x0003, &txid, &[(A_TRANSPORT, transport)], None),
            &txid,
        )?;
        let mut realm = String::new();
        let mut nonce = String::new();
        for (t, v) in attrs(&challenge) {
            match t {
                A_REALM => realm = String::from_utf8_lossy(v).into_owned(),
                A_NONCE => nonce = String::from_utf8_lossy(v).into_owned(),
                _ => {}
            }
        }
        if error_code(&challenge) != Some(401) || nonce.is_empty() {
            bail!(
                "expected a 401 challenge, got error {:?}",
                error_code(&challenge)
            );
        }
        let key: [u8; 16] = Md5::digest(format!("{user}:{realm}:{pass}").as_bytes()).into();
        let mut c = Client {
            sock,
            user,
            realm,
            nonce,
            key,
            relay: SocketAddr::from(([0, 0, 0, 0], 0)),
            n: 1,
        };
        let ok = c.signed(0x0003, &[(A_TRANSPORT, transport)])?;
        c.relay = attrs(&ok)
            .into_iter()
            .find(|(t, _)| *t == A_RELAYED)
            .and_then(|(_, v)| unxor_addr(v))
            .context("no XOR-RELAYED-ADDRESS")?;
        Ok(c)
    }

    fn signed(&mut self, ty: u16, extra: &[(u16, &[u8])]) -> Result<Vec<u8>> {
        self.n += 1;
        let txid = [0x5A, self.n, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9];
        let mut a: Vec<(u16, &[u8])> = extra.to_vec();
        a.push((A_USERNAME, self.user.as_bytes()));
        a.push((A_REALM, self.realm.as_bytes()));
        a.push((A_NONCE, self.nonce.as_bytes()));
        let resp = request(&self.sock, &msg(ty, &txid, &a, Some(&self.key)), &txid)?;
        if let Some(code) = error_code(&resp) {
            bail!("TURN request {ty:#06x} refused with {code}");
        }
        Ok(resp)
    }

    fn bind(&mut self, peer: SocketAddr) -> Result<()> {
        let number = [(CHANNEL >> 8) as u8, CHANNEL as u8, 0, 0];
        let peer = xor_addr(peer);
        self.signed(0x0009, &[(A_CHANNEL, &number), (A_PEER, &peer)])?;
        Ok(())
    }
}

pub fn run(a: &TurnRelayArgs, probe: &Probe) -> Result<Map<String, Value>> {
    if a.pairs == 0 || a.size == 0 || a.size > 1400 {
        bail!("--pairs must be >= 1 and --size 1..=1400");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let got = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    for p in 0..a.pairs {
        let mut x = Client::allocate(a.server, &a.secret, 2 * p).context("allocating")?;
        let mut y = Client::allocate(a.server, &a.secret, 2 * p + 1).context("allocating")?;
        x.bind(y.relay).context("channel bind")?;
        y.bind(x.relay).context("channel bind")?;
        // Receiver: counts ChannelData on the channel.
        let (stop_r, got_r) = (stop.clone(), got.clone());
        let ysock = y.sock.try_clone()?;
        threads.push(std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !stop_r.load(Ordering::Relaxed) {
                if let Ok(n) = ysock.recv(&mut buf)
                    && n >= 4
                    && buf[..2] == CHANNEL.to_be_bytes()
                {
                    got_r.fetch_add(1, Ordering::Relaxed);
                }
            }
            drop(y);
        }));
        // Sender.
        let (stop_s, sent_s) = (stop.clone(), sent.clone());
        let mut pkt = vec![0u8; 4 + a.size];
        pkt[..2].copy_from_slice(&CHANNEL.to_be_bytes());
        pkt[2..4].copy_from_slice(&(a.size as u16).to_be_bytes());
        let per_pair = a.rate as f64 / a.pairs as f64;
        threads.push(std::thread::spawn(move || {
            let start = Instant::now();
            let mut n: u64 = 0;
            while !stop_s.load(Ordering::Relaxed) {
                if per_pair > 0.0 {
                    let due = (start.elapsed().as_secs_f64() * per_pair) as u64;
                    if n >= due {
                        std::thread::sleep(Duration::from_micros(200));
                        continue;
                    }
                }
                // Full socket buffers drop (and may report ENOBUFS): counted as loss.
                let _ = x.sock.send(&pkt);
                n += 1;
                if n.is_multiple_of(64) {
                    sent_s.fetch_add(64, Ordering::Relaxed);
                }
            }
            drop(x);
        }));
    }
    std::thread::sleep(Duration::try_from_secs_f64(a.warmup_secs).context("--warmup-secs")?);
    let (s0, g0, p0, t0) = (
        sent.load(Ordering::Relaxed),
        got.load(Ordering::Relaxed),
        probe.snap(),
        Instant::now(),
    );
    std::thread::sleep(Duration::try_from_secs_f64(a.secs).context("--secs")?);
    let (s1, g1, p1, wall) = (
        sent.load(Ordering::Relaxed),
        got.load(Ordering::Relaxed),
        probe.snap(),
        t0.elapsed().as_secs_f64(),
    );
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    let (sent_n, got_n) = (s1 - s0, g1 - g0);
    let mut out = Map::new();
    out.insert("pairs".into(), json!(a.pairs));
    out.insert("size".into(), json!(a.size));
    out.insert("offered_pps".into(), json!(a.rate));
    out.insert("sent_pps".into(), json!(round2(sent_n as f64 / wall)));
    out.insert("delivered_pps".into(), json!(round2(got_n as f64 / wall)));
    let loss = if sent_n > 0 {
        100.0 * (1.0 - got_n as f64 / sent_n as f64).max(0.0)
    } else {
        0.0
    };
    out.insert("loss_pct".into(), json!(round2(loss)));
    window_figures(&p0, &p1, got_n, &mut out);
    println!(
        "turn-relay: {} pairs, {} B: sent {:.0}/s, delivered {:.0}/s ({:.1} % lost), server CPU {} µs per delivered packet",
        a.pairs,
        a.size,
        sent_n as f64 / wall,
        got_n as f64 / wall,
        loss,
        out.get("server_cpu_us_per_op")
            .map_or("?".into(), |v| v.to_string()),
    );
    Ok(out)
}
