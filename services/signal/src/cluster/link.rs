//! Node links: TCP connections that carry direct copies of messages (see `direct`) from the
//! node that took them to the node holding their receiver. The thin async layer only: the
//! wire format, the handshake, and the tasks.
//!
//! A node listens on its link address (`--cluster-link`) and dials the others'; each
//! connection carries frames one way, from the dialler. Handshake: the listener sends 32
//! random bytes; the dialler answers with its node id and an HMAC-SHA256 over the
//! challenge and both node ids, keyed with the cluster's link key (random, kept in Redis, so
//! only what can reach the registry can speak on a link). Every copy is best effort: a link
//! that is down, slow or refused only means the Redis copy delivers the message.

use super::direct::DirectMsg;
use super::handle::Cluster;
use crate::metrics::Metrics;
use crate::outbox::{Attention, Outbox};
use hmac::{Hmac, Mac};
use kibitz_proto::peerjs::MessageType;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The largest frame a link takes (a message is at most `--max-frame-bytes` plus ids).
const MAX_FRAME: usize = 4 << 20;
/// Bytes waiting for one outgoing link (beyond it the link is dropped and dialled again),
/// and received batches waiting for the driver (beyond it copies are dropped); either way
/// the Redis copies deliver.
const OUT_BYTES: usize = 4 << 20;
pub(crate) const IN_BATCHES: usize = 1024;
/// How long a handshake may take, and the pause before dialling a node again.
const HANDSHAKE: Duration = Duration::from_secs(2);
const REDIAL: Duration = Duration::from_secs(1);
/// How often the link key is read again (it changes only if the registry lost its data).
const KEY_EVERY: Duration = Duration::from_secs(10);

type HmacSha256 = Hmac<Sha256>;

/// Why a frame or handshake was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum LinkError {
    #[error("truncated link frame")]
    Truncated,
    #[error("link frame field is not UTF-8")]
    NotUtf8,
    #[error("unknown message type on a link")]
    Kind,
    #[error("link frame too large")]
    TooLarge,
    #[error("link handshake refused")]
    Refused,
}

fn kind_code(k: MessageType) -> u8 {
    match k {
        MessageType::Offer => 1,
        MessageType::Answer => 2,
        MessageType::Candidate => 3,
        MessageType::Leave => 4,
        MessageType::Expire => 5,
        _ => 0,
    }
}

fn kind_of(c: u8) -> Option<MessageType> {
    Some(match c {
        1 => MessageType::Offer,
        2 => MessageType::Answer,
        3 => MessageType::Candidate,
        4 => MessageType::Leave,
        5 => MessageType::Expire,
        _ => return None,
    })
}

/// Appends one frame: length (u32), shard (u32), n, prev (u64), type (u8), src and dst
/// (u16 length each), the text (the rest). `None` if it cannot be framed (never sent).
pub(crate) fn encode(m: &DirectMsg, out: &mut Vec<u8>) -> Option<()> {
    let code = kind_code(m.kind);
    let (src_len, dst_len) = (
        u16::try_from(m.src.len()).ok()?,
        u16::try_from(m.dst.len()).ok()?,
    );
    let len = 4 + 8 + 8 + 1 + 2 + m.src.len() + 2 + m.dst.len() + m.text.len();
    if code == 0 || len > MAX_FRAME {
        return None;
    }
    out.extend_from_slice(&u32::try_from(len).ok()?.to_be_bytes());
    out.extend_from_slice(&m.shard.to_be_bytes());
    out.extend_from_slice(&m.n.to_be_bytes());
    out.extend_from_slice(&m.prev.to_be_bytes());
    out.push(code);
    out.extend_from_slice(&src_len.to_be_bytes());
    out.extend_from_slice(m.src.as_bytes());
    out.extend_from_slice(&dst_len.to_be_bytes());
    out.extend_from_slice(m.dst.as_bytes());
    out.extend_from_slice(m.text.as_bytes());
    Some(())
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], LinkError> {
        if self.0.len() < n {
            return Err(LinkError::Truncated);
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u16(&mut self) -> Result<u16, LinkError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, LinkError> {
        let mut a = [0; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_be_bytes(a))
    }
    fn u64(&mut self) -> Result<u64, LinkError> {
        let mut a = [0; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(a))
    }
    fn text(&mut self, n: usize) -> Result<String, LinkError> {
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| LinkError::NotUtf8)
    }
}

/// One frame's body (after its length).
pub(crate) fn decode(body: &[u8]) -> Result<DirectMsg, LinkError> {
    let mut r = Reader(body);
    let shard = r.u32()?;
    let n = r.u64()?;
    let prev = r.u64()?;
    let kind = kind_of(r.take(1)?[0]).ok_or(LinkError::Kind)?;
    let src_len = usize::from(r.u16()?);
    let src = r.text(src_len)?;
    let dst_len = usize::from(r.u16()?);
    let dst = r.text(dst_len)?;
    let text = r.text(r.0.len())?;
    Ok(DirectMsg {
        shard,
        n,
        prev,
        kind,
        src,
        dst,
        text,
    })
}

/// Splits whole frames off the front of `buf`: the messages, or an error for a stream that
/// cannot be trusted any more.
pub(crate) fn split_frames(buf: &mut Vec<u8>) -> Result<Vec<DirectMsg>, LinkError> {
    let mut out = Vec::new();
    let mut at = 0;
    while buf.len() - at >= 4 {
        let len = u32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]) as usize;
        if len > MAX_FRAME {
            return Err(LinkError::TooLarge);
        }
        if buf.len() - at - 4 < len {
            break;
        }
        out.push(decode(&buf[at + 4..at + 4 + len])?);
        at += 4 + len;
    }
    buf.drain(..at);
    Ok(out)
}

/// The handshake's proof: HMAC(key, challenge | dialler | listener).
pub(crate) fn proof(key: &[u8; 32], challenge: &[u8], from: &str, to: &str) -> [u8; 32] {
    let Ok(mut mac) = HmacSha256::new_from_slice(key) else {
        return [0; 32];
    };
    mac.update(challenge);
    mac.update(&(from.len() as u32).to_be_bytes());
    mac.update(from.as_bytes());
    mac.update(to.as_bytes());
    mac.finalize().into_bytes().into()
}

fn verify(key: &[u8; 32], challenge: &[u8], from: &str, to: &str, tag: &[u8]) -> bool {
    let Ok(mut mac) = HmacSha256::new_from_slice(key) else {
        return false;
    };
    mac.update(challenge);
    mac.update(&(from.len() as u32).to_be_bytes());
    mac.update(from.as_bytes());
    mac.update(to.as_bytes());
    mac.verify_slice(tag).is_ok()
}

fn random32() -> [u8; 32] {
    let mut out = [0; 32];
    out[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    out[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    out
}

/// The cluster's link key as last read from Redis (`None` until then).
#[derive(Clone, Default)]
pub(crate) struct Key(Arc<RwLock<Option<[u8; 32]>>>);

impl Key {
    fn get(&self) -> Option<[u8; 32]> {
        self.0.read().ok().and_then(|k| *k)
    }
    fn set(&self, k: [u8; 32]) {
        if let Ok(mut w) = self.0.write() {
            *w = Some(k);
        }
    }
}

/// Reads (creating it if missing) the link key every [`KEY_EVERY`].
async fn keep_key(c: Arc<Cluster>, key: Key, stop: CancellationToken) {
    loop {
        let wait = match c.link_key(&random_hex()).await {
            Ok(k) => {
                key.set(Sha256::digest(k.as_bytes()).into());
                KEY_EVERY
            }
            Err(e) => {
                tracing::debug!(error = %e, "reading the cluster link key failed");
                REDIAL
            }
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

fn random_hex() -> String {
    random32().iter().map(|b| format!("{b:02x}")).collect()
}

/// Received copies, for the driver: (sending node, messages).
pub(crate) type Inbound = mpsc::Receiver<(Arc<str>, Vec<DirectMsg>)>;

/// Starts the listener and the key reader; returns the driver's end of received copies.
pub(crate) fn start(
    c: &Arc<Cluster>,
    listener: std::net::TcpListener,
    key: Key,
    stop: CancellationToken,
) -> Option<Inbound> {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "cluster link listener unusable: direct copies are off");
            return None;
        }
    };
    let (tx, rx) = mpsc::channel(IN_BATCHES);
    tokio::spawn(keep_key(c.clone(), key.clone(), stop.clone()));
    let me: Arc<str> = Arc::from(c.node.as_str());
    let metrics = c.metrics.clone();
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = stop.cancelled() => return,
                a = listener.accept() => a,
            };
            match accepted {
                Ok((s, _)) => {
                    tokio::spawn(serve(
                        s,
                        me.clone(),
                        key.clone(),
                        tx.clone(),
                        metrics.clone(),
                        stop.clone(),
                    ));
                }
                // Out of descriptors or similar: pause rather than spin.
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    Some(rx)
}

/// One incoming link: handshake, then frames to the driver until it closes.
async fn serve(
    mut s: TcpStream,
    me: Arc<str>,
    key: Key,
    tx: mpsc::Sender<(Arc<str>, Vec<DirectMsg>)>,
    metrics: Metrics,
    stop: CancellationToken,
) {
    let _ = s.set_nodelay(true);
    let Ok(Ok(from)) = tokio::time::timeout(HANDSHAKE, accept_hello(&mut s, &me, &key)).await
    else {
        metrics.cluster_link_refused.increment(1);
        return;
    };
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = tokio::select! {
            () = stop.cancelled() => return,
            r = s.read(&mut chunk) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
        };
        buf.extend_from_slice(&chunk[..n]);
        match split_frames(&mut buf) {
            Ok(msgs) if msgs.is_empty() => {}
            Ok(msgs) => {
                let count = msgs.len() as u64;
                if tx.try_send((from.clone(), msgs)).is_err() {
                    metrics.cluster_direct_dropped.increment(count);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cluster link closed");
                return;
            }
        }
    }
}

async fn accept_hello(s: &mut TcpStream, me: &str, key: &Key) -> Result<Arc<str>, LinkError> {
    let challenge = random32();
    s.write_all(&challenge)
        .await
        .map_err(|_| LinkError::Refused)?;
    let len = s.read_u16().await.map_err(|_| LinkError::Refused)?;
    if len == 0 || len > 512 {
        return Err(LinkError::Refused);
    }
    let mut from = vec![0u8; usize::from(len)];
    s.read_exact(&mut from)
        .await
        .map_err(|_| LinkError::Refused)?;
    let mut tag = [0u8; 32];
    s.read_exact(&mut tag)
        .await
        .map_err(|_| LinkError::Refused)?;
    let from = String::from_utf8(from).map_err(|_| LinkError::Refused)?;
    let key = key.get().ok_or(LinkError::Refused)?;
    if !verify(&key, &challenge, &from, me, &tag) {
        return Err(LinkError::Refused);
    }
    Ok(Arc::from(from))
}

/// One outgoing link: the driver writes its frames straight to the socket when it takes
/// them (no task in between); the link's task handshakes, then drives stalled writes.
struct OutLink {
    outbox: Arc<Outbox>,
    alive: Arc<AtomicBool>,
}

/// The links this node dials, and the copies gathered for them during one drain.
pub(crate) struct Outgoing {
    me: Arc<str>,
    key: Key,
    metrics: Metrics,
    links: HashMap<Arc<str>, OutLink>,
    /// Nodes whose link failed, and when they may be dialled again.
    wait: HashMap<Arc<str>, Instant>,
    pending: HashMap<Arc<str>, Vec<u8>>,
    up: Arc<std::sync::atomic::AtomicUsize>,
}

impl Outgoing {
    pub(crate) fn new(me: &str, key: Key, metrics: Metrics) -> Self {
        Self {
            me: Arc::from(me),
            key,
            metrics,
            links: HashMap::new(),
            wait: HashMap::new(),
            pending: HashMap::new(),
            up: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        }
    }

    /// Queues a copy for node `to` (sent at the next [`Outgoing::flush`]).
    pub(crate) fn push(&mut self, to: Arc<str>, m: &DirectMsg) {
        let buf = self.pending.entry(to).or_default();
        if buf.len() < MAX_FRAME {
            let _ = encode(m, buf);
        }
    }

    /// Hands the gathered copies to their links, dialling nodes not linked yet.
    pub(crate) fn flush(&mut self, now: Instant) {
        if self.pending.is_empty() {
            return;
        }
        for (to, buf) in std::mem::take(&mut self.pending) {
            if buf.is_empty() {
                continue;
            }
            let alive = self
                .links
                .get(&to)
                .is_some_and(|l| l.alive.load(std::sync::atomic::Ordering::Relaxed));
            if !alive {
                self.links.remove(&to);
                if self.wait.get(&to).is_some_and(|t| *t > now) {
                    continue;
                }
                let Some(addr) = super::direct::link_addr(&to) else {
                    continue;
                };
                if self.links.len() >= 4096 {
                    continue;
                }
                self.wait.insert(to.clone(), now + REDIAL);
                let outbox = Arc::new(Outbox::new(
                    OUT_BYTES,
                    self.metrics.cluster_link_bytes.clone(),
                ));
                let alive = Arc::new(AtomicBool::new(true));
                tokio::spawn(dial(
                    addr.to_owned(),
                    self.me.clone(),
                    to.clone(),
                    self.key.clone(),
                    outbox.clone(),
                    alive.clone(),
                    self.metrics.clone(),
                    self.up.clone(),
                ));
                self.links.insert(to.clone(), OutLink { outbox, alive });
            }
            if let Some(l) = self.links.get(&to) {
                // Past the bound the outbox aborts the link: the Redis copies deliver these.
                l.outbox.push(|b| b.extend_from_slice(&buf));
                l.outbox.flush();
            }
        }
        if self.wait.len() > 4096 {
            self.wait.retain(|_, t| *t > now);
        }
    }
}

/// Dials node `to` at `addr`, handshakes, then hands the socket's write half to `outbox`
/// and drives its stalled writes until either side closes; `alive` is cleared at the end.
#[allow(clippy::too_many_arguments)]
async fn dial(
    addr: String,
    me: Arc<str>,
    to: Arc<str>,
    key: Key,
    outbox: Arc<Outbox>,
    alive: Arc<AtomicBool>,
    metrics: Metrics,
    up: Arc<std::sync::atomic::AtomicUsize>,
) {
    run_link(&addr, &me, &to, &key, &outbox, &metrics, &up).await;
    alive.store(false, std::sync::atomic::Ordering::Relaxed);
}

async fn run_link(
    addr: &str,
    me: &str,
    to: &str,
    key: &Key,
    outbox: &Outbox,
    metrics: &Metrics,
    up: &std::sync::atomic::AtomicUsize,
) {
    let Ok(Ok(mut s)) = tokio::time::timeout(HANDSHAKE, TcpStream::connect(addr)).await else {
        tracing::debug!(node = %to, "cluster link dial failed");
        return;
    };
    let _ = s.set_nodelay(true);
    let hello = async {
        let mut challenge = [0u8; 32];
        s.read_exact(&mut challenge).await.ok()?;
        let k = key.get()?;
        let mut hello = Vec::with_capacity(2 + me.len() + 32);
        hello.extend_from_slice(&u16::try_from(me.len()).ok()?.to_be_bytes());
        hello.extend_from_slice(me.as_bytes());
        hello.extend_from_slice(&proof(&k, &challenge, me, to));
        s.write_all(&hello).await.ok()
    };
    if !matches!(tokio::time::timeout(HANDSHAKE, hello).await, Ok(Some(()))) {
        tracing::debug!(node = %to, "cluster link handshake failed");
        return;
    }
    let (mut read, write) = s.into_split();
    outbox.install(Box::new(write));
    let n = up.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
    metrics.cluster_links.set(n as f64);
    let mut scratch = [0u8; 64];
    loop {
        tokio::select! {
            a = std::future::poll_fn(|cx| outbox.poll_attention(cx)) => {
                let Attention::Close(_) = a;
                break;
            }
            // The other node sends nothing: a read that ends means the link is gone.
            r = read.read(&mut scratch) => {
                if !matches!(r, Ok(n) if n > 0) {
                    break;
                }
            }
        }
    }
    let n = up
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed)
        .saturating_sub(1);
    metrics.cluster_links.set(n as f64);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(n: u64) -> DirectMsg {
        DirectMsg {
            shard: 3,
            n,
            prev: n - 1,
            kind: MessageType::Candidate,
            src: "a".into(),
            dst: "bé".into(),
            text: "{\"type\":\"CANDIDATE\"}".into(),
        }
    }

    #[test]
    fn frames_round_trip_in_pieces_and_bad_ones_are_refused() {
        let mut wire = Vec::new();
        encode(&msg(7), &mut wire).unwrap();
        encode(&msg(8), &mut wire).unwrap();
        let mut buf = Vec::new();
        let mut got = Vec::new();
        for b in &wire {
            buf.push(*b);
            got.extend(split_frames(&mut buf).unwrap());
        }
        assert_eq!(got, vec![msg(7), msg(8)]);
        assert!(buf.is_empty());
        let mut huge = (MAX_FRAME as u32 + 1).to_be_bytes().to_vec();
        assert_eq!(split_frames(&mut huge), Err(LinkError::TooLarge));
        let mut bad = wire.clone();
        bad[4 + 4 + 16] = 9;
        assert_eq!(split_frames(&mut bad), Err(LinkError::Kind));
        let mut short = vec![0, 0, 0, 3, 1, 2, 3];
        assert_eq!(split_frames(&mut short), Err(LinkError::Truncated));
    }

    #[test]
    fn a_proof_binds_the_key_the_challenge_and_both_nodes() {
        let k = [7u8; 32];
        let c = [1u8; 32];
        let p = proof(&k, &c, "a@h:1", "b@h:2");
        assert!(verify(&k, &c, "a@h:1", "b@h:2", &p));
        assert!(!verify(&[8u8; 32], &c, "a@h:1", "b@h:2", &p));
        assert!(!verify(&k, &[2u8; 32], "a@h:1", "b@h:2", &p));
        assert!(!verify(&k, &c, "c@h:1", "b@h:2", &p));
        assert!(!verify(&k, &c, "a@h:1", "c@h:2", &p));
    }
}
