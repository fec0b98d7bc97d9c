//! Cluster mode: the shared registry on Redis, and this node's driver for it.
//!
//! # Model
//! Every node has a random node id and a *node lease*: the key `{p}node:{node}` with a
//! `PX` expiry of `lease`, renewed every `lease / 3`. An id is held when its record
//! `{p}id:{id}` (a hash: `node`, `token`, `reg`) names a node whose lease is alive. Claims,
//! releases and routing are Lua scripts, so each is atomic against every other node:
//!
//! * claim: held by another token → `ID-TAKEN`; held with the same token → re-attach (the
//!   record moves here and the old node is told through its inbox); free → a new
//!   registration numbered from `{p}seq`, refused when the live nodes' id sets
//!   (`{p}ids:{node}`) already hold `concurrent_limit` ids. Queued messages come back in
//!   the claim's answer, so OPEN is followed by them in order, as on one node.
//! * release (socket closed, liveness timeout): deletes the record if it is still this
//!   registration's.
//! * route: a message for an id held elsewhere is appended to the holder's inbox, the stream
//!   `{p}inbox:{node}` that the holder reads with a blocking `XREAD`; a message for an id not
//!   held goes to the offline queue `{p}q:{id}` (src, frame pairs) whose deadline is in the
//!   sorted set `{p}qd`, with the same bounds as one node has. Every node sweeps due queues
//!   (an atomic pop, so each queue is expired by exactly one node) and relays one `EXPIRE`
//!   per sender.
//!
//! A node that dies stops renewing: within `lease` its ids are free (claims check the
//! holder's lease, not just the record) and any live node reaps its records later.
//!
//! # Outages
//! All registry traffic runs in order on one connection, in pipelined batches. When Redis
//! cannot be reached, claims are refused with an in-band `ERROR` (never granted locally, so
//! an id never gets two owners) and messages for other nodes wait here, bounded, until their
//! queue deadline, when their senders get `EXPIRE`. A message whose route command got no
//! answer is sent again after reconnecting (at least once). On reconnect the node renews
//! its lease and re-asserts every id it still holds; an id another client took meanwhile is
//! closed here. If the registry lost its data (its `{p}epoch` changed), claims are refused
//! cluster-wide for one lease period (`{p}settle`), so every live node can re-assert first.
//! A node keeps every message it handed to Redis for that message's queue lifetime (bounded
//! by `max_queued_total`); when it finds the registry lost its data it hands them again,
//! numbered, and receivers drop numbers they have seen, so unread inbox entries and offline
//! queues that died with Redis are not lost.

use crate::core::{Claim, ConnId, Forward};
use crate::hub::Hub;
use crate::metrics::Metrics;
use kibitz_proto::peerjs::MessageType;
use redis::Value;
use redis::aio::MultiplexedConnection;
use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The driver's clock: the broker's one audited clock read, as a Tokio instant.
fn now() -> Instant {
    Instant::from_std(crate::hub::now())
}

/// How a broker node joins a cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// `redis://host:port/db` (or `redis+unix:///path`).
    pub redis_url: String,
    /// How long a node's ids outlive its last lease renewal.
    pub lease: Duration,
    /// Key prefix, so several clusters can share one Redis.
    pub prefix: String,
}

/// The error a client gets when a claim cannot be decided.
pub const MSG_UNAVAILABLE: &str = "Cluster registry unavailable, try again";
/// The error a client gets while the registry recovers from losing its data.
pub const MSG_RECOVERING: &str = "Cluster registry is recovering, try again";

/// Commands per pipelined batch.
const BATCH: usize = 512;
/// Entries read from the inbox per `XREAD`.
const INBOX_COUNT: usize = 1024;
/// How often due offline queues are swept.
const SWEEP_EVERY: Duration = Duration::from_millis(100);
/// Ids re-asserted per script call.
const REASSERT_BATCH: usize = 500;
/// Message numbers each node remembers for dropping repeats.
const SEEN_CAP: usize = 200_000;
/// How long a cross-node re-attach waits for the old node to confirm.
const ACK_WAIT: Duration = Duration::from_secs(1);

/// A command for the registry, in the order the core produced it.
#[derive(Debug)]
pub(crate) enum Cmd {
    Claim {
        conn: ConnId,
        id: Arc<str>,
        token: String,
    },
    Release {
        id: Arc<str>,
        reg: u64,
    },
    /// A message, and its number on this node (0 until the driver numbers it): receivers
    /// drop a number they have seen, so handing a message to Redis twice delivers it once.
    Forward(Forward, u64),
}

/// A message waiting for the registry.
#[derive(Debug)]
struct Waiting {
    fwd: Forward,
    seq: u64,
    deadline: Instant,
}

/// This node's handle on the cluster: the command queue and what the status page shows.
pub(crate) struct Cluster {
    pub(crate) cfg: ClusterConfig,
    /// This node's id (random per process).
    pub(crate) node: String,
    tx: mpsc::UnboundedSender<Cmd>,
    rx: Mutex<Option<mpsc::UnboundedReceiver<Cmd>>>,
    up: AtomicBool,
    /// `None` only for a URL that does not parse (the config check refuses those first):
    /// such a node never reaches the registry, so it refuses every claim.
    client: Option<redis::Client>,
    scripts: Scripts,
    /// Re-attaches from another node, answered once that node confirms it stopped
    /// delivering to its socket: (id, socket, answer, give up at).
    acks: Mutex<Vec<(String, ConnId, Claim, Instant)>>,
    /// Message numbers delivered here lately (set, and its order for eviction): a message
    /// handed to Redis again is delivered once.
    seen: Mutex<(HashSet<String>, VecDeque<String>)>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

/// Whether `url` is a Redis URL this node can use (checked when the config is built).
pub fn check_url(url: &str) -> Result<(), String> {
    redis::Client::open(url)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

impl Cluster {
    pub(crate) fn new(cfg: ClusterConfig) -> Self {
        let client = match redis::Client::open(cfg.redis_url.as_str()) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::error!(error = %e, "unusable redis url: every claim will be refused");
                None
            }
        };
        let (tx, rx) = mpsc::unbounded_channel();
        Self {
            cfg,
            node: uuid::Uuid::new_v4().simple().to_string(),
            tx,
            rx: Mutex::new(Some(rx)),
            up: AtomicBool::new(false),
            client,
            scripts: Scripts::new(),
            acks: Mutex::new(Vec::new()),
            seen: Mutex::new((HashSet::new(), VecDeque::new())),
        }
    }

    /// Whether message number `mid` is new here (and remembers it).
    fn fresh(&self, mid: &str) -> bool {
        if mid.is_empty() {
            return true;
        }
        let mut guard = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let (set, order) = &mut *guard;
        if !set.insert(mid.to_owned()) {
            return false;
        }
        order.push_back(mid.to_owned());
        if order.len() > SEEN_CAP
            && let Some(old) = order.pop_front()
        {
            set.remove(&old);
        }
        true
    }

    fn acks(&self) -> std::sync::MutexGuard<'_, Vec<(String, ConnId, Claim, Instant)>> {
        self.acks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The old node confirmed the move of `id`: answer the waiting claim.
    fn acked(&self, id: &str) -> Option<(ConnId, Claim)> {
        let mut acks = self.acks();
        let i = acks.iter().position(|a| a.0 == id)?;
        let (_, conn, claim, _) = acks.remove(i);
        Some((conn, claim))
    }

    /// Claims whose old node never confirmed (it stalled or lost the registry): answered anyway.
    fn overdue_acks(&self) -> Vec<(ConnId, Claim)> {
        let t = now();
        let mut acks = self.acks();
        let (due, keep): (Vec<_>, Vec<_>) = acks.drain(..).partition(|a| a.3 <= t);
        *acks = keep;
        due.into_iter().map(|(_, c, cl, _)| (c, cl)).collect()
    }

    /// Queues a command for the driver (never blocks; called under the broker lock).
    pub(crate) fn send(&self, cmd: Cmd) {
        // The driver only stops with the broker; a command after that has nobody to serve.
        let _ = self.tx.send(cmd);
    }

    /// Whether the registry answered the last time this node asked.
    pub(crate) fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    fn set_up(&self, up: bool, metrics: &Metrics) {
        self.up.store(up, Ordering::Relaxed);
        metrics.registry_up.set(if up { 1.0 } else { 0.0 });
    }

    fn p(&self) -> &str {
        &self.cfg.prefix
    }

    async fn connect(
        &self,
        response_timeout: Option<Duration>,
    ) -> redis::RedisResult<MultiplexedConnection> {
        let cfg = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(response_timeout);
        let Some(client) = &self.client else {
            return Err(redis::RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "unusable redis url",
            )));
        };
        client
            .get_multiplexed_async_connection_with_config(&cfg)
            .await
    }

    /// Registered ids over the whole cluster, in registration order (for discovery).
    pub(crate) async fn peer_ids(&self) -> Option<Vec<String>> {
        let mut con = self.connect(Some(Duration::from_secs(2))).await.ok()?;
        let v: Value = self
            .scripts
            .list
            .call(&[self.p()])
            .query_async(&mut con)
            .await
            .ok()?;
        let mut ids: Vec<(u64, String)> = items(v)
            .into_iter()
            .filter_map(|pair| {
                let mut it = items(pair).into_iter();
                let reg = text(it.next()?)?.parse().unwrap_or(0);
                Some((reg, text(it.next()?)?))
            })
            .collect();
        ids.sort();
        Some(ids.into_iter().map(|(_, id)| id).collect())
    }
}

/// The Lua scripts, by SHA; loaded on every (re)connect.
struct Scripts {
    claim: Lua,
    release: Lua,
    route: Lua,
    sweep: Lua,
    hello: Lua,
    reassert: Lua,
    reassert_done: Lua,
    reap: Lua,
    list: Lua,
    leave: Lua,
    stats: Lua,
}

struct Lua {
    src: &'static str,
    sha: String,
}

impl Lua {
    fn new(src: &'static str) -> Self {
        Self {
            src,
            sha: redis::Script::new(src).get_hash().to_owned(),
        }
    }

    fn call<A: redis::ToRedisArgs>(&self, args: &[A]) -> redis::Cmd {
        let mut c = redis::cmd("EVALSHA");
        c.arg(&self.sha).arg(0);
        for a in args {
            c.arg(a);
        }
        c
    }
}

impl Scripts {
    fn new() -> Self {
        Self {
            claim: Lua::new(CLAIM),
            release: Lua::new(RELEASE),
            route: Lua::new(ROUTE),
            sweep: Lua::new(SWEEP),
            hello: Lua::new(HELLO),
            reassert: Lua::new(REASSERT),
            reassert_done: Lua::new(REASSERT_DONE),
            reap: Lua::new(REAP),
            list: Lua::new(LIST),
            leave: Lua::new(LEAVE),
            stats: Lua::new(STATS),
        }
    }

    fn all(&self) -> [&Lua; 11] {
        [
            &self.claim,
            &self.release,
            &self.route,
            &self.sweep,
            &self.hello,
            &self.reassert,
            &self.reassert_done,
            &self.reap,
            &self.list,
            &self.leave,
            &self.stats,
        ]
    }
}

const CLAIM: &str = r#"
local p, me, id, token, limit = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
if redis.call('EXISTS', p..'node:'..me) == 0 then return {'stale'} end
if redis.call('EXISTS', p..'settle') == 1 then return {'settle'} end
local key = p..'id:'..id
local rec = redis.call('HMGET', key, 'node', 'token', 'reg')
local function pop(r)
  local q = p..'q:'..id
  local msgs = redis.call('LRANGE', q, 0, -1)
  if #msgs > 0 then
    redis.call('DEL', q)
    redis.call('ZREM', p..'qd', id)
    redis.call('DECRBY', p..'queued', #msgs / 3)
  end
  for _, m in ipairs(msgs) do r[#r + 1] = m end
  return r
end
if rec[1] and redis.call('EXISTS', p..'node:'..rec[1]) == 1 then
  if rec[2] ~= token then return {'taken'} end
  local from = ''
  if rec[1] ~= me then
    from = rec[1]
    redis.call('SREM', p..'ids:'..rec[1], id)
    redis.call('SADD', p..'ids:'..me, id)
    redis.call('HSET', key, 'node', me)
    redis.call('XADD', p..'inbox:'..rec[1], 'MAXLEN', '~', 100000, '*', 't', 'v', 'd', id, 'n', me)
  end
  return pop({'reattach', rec[3], from})
end
if rec[1] then redis.call('SREM', p..'ids:'..rec[1], id) end
local n = 0
for _, node in ipairs(redis.call('SMEMBERS', p..'nodes')) do
  if redis.call('EXISTS', p..'node:'..node) == 1 then
    n = n + redis.call('SCARD', p..'ids:'..node)
  end
end
if n >= limit then return {'limit'} end
local reg = redis.call('INCR', p..'seq')
redis.call('HSET', key, 'node', me, 'token', token, 'reg', reg)
redis.call('SADD', p..'ids:'..me, id)
return pop({'new', tostring(reg), ''})
"#;

const RELEASE: &str = r#"
local p, me, id, reg = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local key = p..'id:'..id
local rec = redis.call('HMGET', key, 'node', 'reg')
if rec[1] == me and rec[2] == reg then
  redis.call('DEL', key)
  redis.call('SREM', p..'ids:'..me, id)
  return 1
end
return 0
"#;

const ROUTE: &str = r#"
local p, me, kind, src, dst, text = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local ttl, requeue, notice = tonumber(ARGV[7]), ARGV[8] == '1', ARGV[9] == '1'
local function held(id)
  local owner = redis.call('HGET', p..'id:'..id, 'node')
  if owner and redis.call('EXISTS', p..'node:'..owner) == 1 then return owner end
  return nil
end
if notice and held(src) then return 'held' end
local owner = held(dst)
if owner and not (requeue and owner == me) then
  redis.call('XADD', p..'inbox:'..owner, 'MAXLEN', '~', 100000, '*',
    't', 'm', 'k', kind, 's', src, 'd', dst, 'm', text, 'i', ARGV[12])
  return 'sent'
end
if kind == 'LEAVE' or kind == 'EXPIRE' then return 'dropped' end
if tonumber(redis.call('GET', p..'queued') or '0') >= tonumber(ARGV[11]) then return 'full' end
local q = p..'q:'..dst
local len = redis.call('LLEN', q)
if len >= 3 * tonumber(ARGV[10]) then return 'full' end
if len == 0 then
  local t = redis.call('TIME')
  redis.call('ZADD', p..'qd', t[1] * 1000 + math.floor(t[2] / 1000) + ttl, dst)
end
redis.call('RPUSH', q, src, text, ARGV[12])
redis.call('INCR', p..'queued')
return 'queued'
"#;

const SWEEP: &str = r#"
local p = ARGV[1]
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local due = redis.call('ZRANGEBYSCORE', p..'qd', '-inf', now, 'LIMIT', 0, 100)
local out = {}
for _, dst in ipairs(due) do
  local q = p..'q:'..dst
  local msgs = redis.call('LRANGE', q, 0, -1)
  redis.call('DEL', q)
  redis.call('ZREM', p..'qd', dst)
  if #msgs > 0 then redis.call('DECRBY', p..'queued', #msgs / 3) end
  local seen, r = {}, {dst}
  for i = 1, #msgs, 3 do
    if not seen[msgs[i]] then
      seen[msgs[i]] = true
      r[#r + 1] = msgs[i]
    end
  end
  out[#out + 1] = r
end
return out
"#;

const HELLO: &str = r#"
local p, me, lease, known, fresh = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
redis.call('SET', p..'node:'..me, '1', 'PX', lease)
redis.call('SADD', p..'nodes', me)
local epoch = redis.call('GET', p..'epoch')
if not epoch then
  epoch = fresh
  redis.call('SET', p..'epoch', epoch)
end
if known ~= '' and known ~= epoch then
  redis.call('SET', p..'settle', '1', 'PX', lease)
end
return epoch
"#;

const REASSERT: &str = r#"
local p, me = ARGV[1], ARGV[2]
local out = {}
for i = 3, #ARGV, 3 do
  local id, token, reg = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local key = p..'id:'..id
  local owner = redis.call('HGET', key, 'node')
  if owner and owner ~= me and redis.call('EXISTS', p..'node:'..owner) == 1 then
    out[#out + 1] = {'lost', id}
  else
    if owner and owner ~= me then redis.call('SREM', p..'ids:'..owner, id) end
    redis.call('HSET', key, 'node', me, 'token', token, 'reg', reg)
    redis.call('SADD', p..'ids:'..me..':new', id)
    local q = p..'q:'..id
    local msgs = redis.call('LRANGE', q, 0, -1)
    if #msgs > 0 then
      redis.call('DEL', q)
      redis.call('ZREM', p..'qd', id)
      redis.call('DECRBY', p..'queued', #msgs / 3)
      local r = {'queued', id}
      for _, m in ipairs(msgs) do r[#r + 1] = m end
      out[#out + 1] = r
    end
  end
end
return out
"#;

const REASSERT_DONE: &str = r#"
local p, me = ARGV[1], ARGV[2]
local cur, new = p..'ids:'..me, p..'ids:'..me..':new'
for _, id in ipairs(redis.call('SDIFF', cur, new)) do
  if redis.call('HGET', p..'id:'..id, 'node') == me then redis.call('DEL', p..'id:'..id) end
end
if redis.call('EXISTS', new) == 1 then
  redis.call('RENAME', new, cur)
else
  redis.call('DEL', cur)
end
return 1
"#;

const REAP: &str = r#"
local p, me = ARGV[1], ARGV[2]
local n = 0
for _, node in ipairs(redis.call('SMEMBERS', p..'nodes')) do
  if node ~= me and redis.call('EXISTS', p..'node:'..node) == 0 then
    local set = p..'ids:'..node
    local ids = redis.call('SPOP', set, 1000)
    for _, id in ipairs(ids) do
      if redis.call('HGET', p..'id:'..id, 'node') == node then redis.call('DEL', p..'id:'..id) end
    end
    n = n + #ids
    if redis.call('SCARD', set) == 0 then
      redis.call('SREM', p..'nodes', node)
      redis.call('DEL', p..'inbox:'..node)
    end
  end
end
return n
"#;

const LIST: &str = r#"
local p = ARGV[1]
local out = {}
for _, node in ipairs(redis.call('SMEMBERS', p..'nodes')) do
  if redis.call('EXISTS', p..'node:'..node) == 1 then
    for _, id in ipairs(redis.call('SMEMBERS', p..'ids:'..node)) do
      out[#out + 1] = {redis.call('HGET', p..'id:'..id, 'reg') or '0', id}
    end
  end
end
return out
"#;

const STATS: &str = r#"
local p = ARGV[1]
local nodes, ids = 0, 0
for _, node in ipairs(redis.call('SMEMBERS', p..'nodes')) do
  if redis.call('EXISTS', p..'node:'..node) == 1 then
    nodes = nodes + 1
    ids = ids + redis.call('SCARD', p..'ids:'..node)
  end
end
return {nodes, ids}
"#;

const LEAVE: &str = r#"
local p, me = ARGV[1], ARGV[2]
for _, id in ipairs(redis.call('SMEMBERS', p..'ids:'..me)) do
  if redis.call('HGET', p..'id:'..id, 'node') == me then redis.call('DEL', p..'id:'..id) end
end
redis.call('DEL', p..'ids:'..me, p..'node:'..me, p..'inbox:'..me)
redis.call('SREM', p..'nodes', me)
return 1
"#;

fn items(v: Value) -> Vec<Value> {
    match v {
        Value::Array(a) | Value::Set(a) => a,
        _ => Vec::new(),
    }
}

fn text(v: Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        Value::Int(i) => Some(i.to_string()),
        Value::Okay => Some("OK".into()),
        _ => None,
    }
}

/// Queued messages `[src, frame, number, …]` → (src, frame), without numbers this node has
/// already delivered.
fn queued(rest: impl Iterator<Item = Value>, c: &Cluster) -> Vec<(String, String)> {
    let flat: Vec<String> = rest.filter_map(text).collect();
    flat.chunks_exact(3)
        .filter(|m| c.fresh(&m[2]))
        .map(|m| (m[0].clone(), m[1].clone()))
        .collect()
}

/// The claim's answer, and the node the id was re-attached from (if another one).
fn parse_claim(v: Value, c: &Cluster) -> (Claim, Option<String>) {
    let mut it = items(v).into_iter();
    let tag = it.next().and_then(text).unwrap_or_default();
    let claim = match tag.as_str() {
        "new" | "reattach" => {
            let reg = it
                .next()
                .and_then(text)
                .and_then(|r| r.parse().ok())
                .unwrap_or(0);
            let from = it.next().and_then(text).filter(|n| !n.is_empty());
            let queued = queued(it, c);
            return (
                if tag == "new" {
                    Claim::New { reg, queued }
                } else {
                    Claim::Reattach { reg, queued }
                },
                from,
            );
        }
        "taken" => Claim::Taken,
        "limit" => Claim::Limit,
        "settle" => Claim::Unavailable(MSG_RECOVERING),
        _ => Claim::Unavailable(MSG_UNAVAILABLE),
    };
    (claim, None)
}

fn kind_of(s: &str) -> MessageType {
    match s {
        "ANSWER" => MessageType::Answer,
        "CANDIDATE" => MessageType::Candidate,
        "LEAVE" => MessageType::Leave,
        "EXPIRE" => MessageType::Expire,
        _ => MessageType::Offer,
    }
}

/// Why the driver's connection loop ended.
enum Broken {
    /// The connection failed: reconnect.
    Io,
    /// This node's lease lapsed (the registry restarted or the node stalled): say hello again.
    Stale,
}

/// The driver: owns the command connection, the lease, the sweeper and the waiting messages.
pub(crate) async fn run(hub: Arc<Hub>, stop: CancellationToken) {
    let Some(cluster) = hub.cluster.clone() else {
        return;
    };
    let Some(mut rx) = cluster.rx.lock().ok().and_then(|mut r| r.take()) else {
        return;
    };
    tokio::spawn(inbox(hub.clone(), stop.clone()));
    hub.metrics.cluster_mode.set(1.0);
    let mut d = Driver {
        hub: hub.clone(),
        cluster: cluster.clone(),
        waiting: VecDeque::new(),
        epoch: String::new(),
        recent: VecDeque::new(),
        lost_data: false,
        replay_at: None,
        next_seq: 0,
    };
    let mut backoff = Duration::from_millis(50);
    loop {
        if stop.is_cancelled() {
            break;
        }
        let con = tokio::select! {
            c = cluster.connect(Some(cluster.cfg.lease / 3)) => c,
            () = stop.cancelled() => break,
        };
        let mut con = match con {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cluster registry unreachable");
                cluster.set_up(false, &hub.metrics);
                d.offline(&mut rx);
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = stop.cancelled() => break,
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        match d.session(&mut con, &mut rx, &stop).await {
            Ok(()) => {
                // Stopping: give the ids back at once rather than after the lease.
                let _: redis::RedisResult<Value> = cluster
                    .scripts
                    .leave
                    .call(&[cluster.p(), &cluster.node])
                    .query_async(&mut con)
                    .await;
                break;
            }
            Err(Broken::Stale) => {
                tracing::warn!("cluster lease lapsed; re-asserting this node's ids");
                backoff = Duration::from_millis(50);
            }
            Err(Broken::Io) => {
                tracing::warn!("cluster registry connection lost");
                cluster.set_up(false, &hub.metrics);
                d.offline(&mut rx);
            }
        }
    }
    cluster.set_up(false, &hub.metrics);
}

/// A message the registry accepted.
#[derive(Debug)]
struct Recent {
    /// When it was handed over.
    at: Instant,
    /// Its queue deadline.
    until: Instant,
    seq: u64,
    fwd: Forward,
    /// It went into an offline queue (rather than a node's inbox).
    queued: bool,
}

impl Recent {
    /// As a command, with what is left of its queue lifetime.
    fn again(&self, t: Instant) -> Cmd {
        let mut f = self.fwd.clone();
        f.ttl = self
            .until
            .saturating_duration_since(t)
            .max(Duration::from_millis(1));
        Cmd::Forward(f, self.seq)
    }
}

struct Driver {
    hub: Arc<Hub>,
    cluster: Arc<Cluster>,
    /// Messages for the registry sent while it could not be reached, oldest first.
    waiting: VecDeque<Waiting>,
    /// The registry's epoch as this node last saw it ("" before the first hello).
    epoch: String,
    /// Messages handed to the registry within their queue lifetime, oldest first, kept to
    /// hand again if the registry loses its data.
    recent: VecDeque<Recent>,
    /// Set by a hello that found the registry's data lost.
    lost_data: bool,
    /// After the registry lost its data: when to hand the delivered part of `recent` again,
    /// and the time of the loss (later messages are not repeated).
    replay_at: Option<(Instant, Instant)>,
    /// The last message number given out.
    next_seq: u64,
}

impl Driver {
    /// Registry down: refuse claims, keep messages (bounded) until their deadline.
    fn offline(&mut self, rx: &mut mpsc::UnboundedReceiver<Cmd>) {
        while let Ok(cmd) = rx.try_recv() {
            match cmd {
                Cmd::Claim { conn, .. } => self
                    .hub
                    .claim_result(conn, Claim::Unavailable(MSG_UNAVAILABLE)),
                // Re-asserting after the outage replaces this node's id set wholesale.
                Cmd::Release { .. } => {}
                Cmd::Forward(fwd, seq) => {
                    let seq = self.number(seq);
                    self.wait(fwd, seq);
                }
            }
        }
        self.expire_waiting();
    }

    /// Keeps a message handed to the registry for its queue lifetime (bounded).
    fn remember(&mut self, fwd: Forward, seq: u64, queued: bool) {
        let t = now();
        while self.recent.front().is_some_and(|r| r.until <= t)
            || self.recent.len() >= self.hub.config.limits.max_queued_total
        {
            self.recent.pop_front();
        }
        self.recent.push_back(Recent {
            at: t,
            until: t + fwd.ttl,
            seq,
            fwd,
            queued,
        });
    }

    /// Numbers a message the first time the driver sees it.
    fn number(&mut self, seq: u64) -> u64 {
        if seq != 0 {
            return seq;
        }
        self.next_seq += 1;
        self.next_seq
    }

    fn wait(&mut self, fwd: Forward, seq: u64) {
        if self.waiting.len() >= self.hub.config.limits.max_queued_total {
            self.hub.metrics.rejected("queue_full");
            return;
        }
        let deadline = now() + fwd.ttl;
        self.waiting.push_back(Waiting { fwd, seq, deadline });
        self.hub
            .metrics
            .cluster_pending
            .set(self.waiting.len() as f64);
    }

    /// Messages whose deadline passed while the registry was away: one EXPIRE per
    /// (dst, sender), as an offline queue would have produced.
    fn expire_waiting(&mut self) {
        let now = now();
        let mut due: Vec<(String, Vec<String>)> = Vec::new();
        self.waiting.retain(|w| {
            if w.deadline > now {
                return true;
            }
            if !matches!(w.fwd.kind, MessageType::Leave | MessageType::Expire) {
                let src = w.fwd.src.to_string();
                match due.iter_mut().find(|(d, _)| *d == w.fwd.dst) {
                    Some((_, s)) if s.contains(&src) => {}
                    Some((_, s)) => s.push(src),
                    None => due.push((w.fwd.dst.clone(), vec![src])),
                }
            }
            false
        });
        self.hub
            .metrics
            .cluster_pending
            .set(self.waiting.len() as f64);
        if !due.is_empty() {
            self.hub.expired(&due);
        }
    }

    /// One connected stretch: hello, re-assert, then serve commands until the connection
    /// breaks (Err) or the broker stops (Ok).
    async fn session(
        &mut self,
        con: &mut MultiplexedConnection,
        rx: &mut mpsc::UnboundedReceiver<Cmd>,
        stop: &CancellationToken,
    ) -> Result<(), Broken> {
        let c = self.cluster.clone();
        let mut load = redis::pipe();
        for s in c.scripts.all() {
            load.cmd("SCRIPT").arg("LOAD").arg(s.src);
        }
        let _: Vec<Value> = load.query_async(con).await.map_err(|_| Broken::Io)?;
        self.hello(con).await?;
        self.reassert(con).await?;
        c.set_up(true, &self.hub.metrics);
        tracing::info!(node = %c.node, "cluster registry connected");
        // If Redis lost its data, what this node handed it within one queue lifetime may be
        // gone (unread inbox entries, offline queues): hand it again (receivers drop
        // repeats). Then the messages that waited for the registry, in order.
        let t = now();
        let mut again: Vec<Cmd> = Vec::new();
        if std::mem::take(&mut self.lost_data) {
            // Offline queues died with Redis: their messages go back at once (still within
            // their deadline, which they keep). Delivered ones go again after one lease, when
            // every live node has re-asserted its ids, so they meet their receiver's inbox,
            // which drops what it already had, rather than a queue.
            self.replay_at = Some((t + c.cfg.lease, t));
            again.extend(
                self.recent
                    .iter()
                    .filter(|r| r.queued && r.until > t)
                    .map(|r| r.again(t)),
            );
            // Queues whose deadline passed while Redis was away: their senders get the
            // EXPIRE the sweep would have sent.
            let mut due: Vec<(String, Vec<String>)> = Vec::new();
            for r in self.recent.iter().filter(|r| r.queued && r.until <= t) {
                let src = r.fwd.src.to_string();
                match due.iter_mut().find(|(d, _)| *d == r.fwd.dst) {
                    Some((_, senders)) if senders.contains(&src) => {}
                    Some((_, senders)) => senders.push(src),
                    None => due.push((r.fwd.dst.clone(), vec![src])),
                }
            }
            if !due.is_empty() {
                self.hub.expired(&due);
            }
            self.recent.retain(|r| !r.queued);
        }
        // They keep their original deadline: an outage does not extend a queue's lifetime.
        again.extend(self.waiting.drain(..).map(|mut w| {
            w.fwd.ttl = w
                .deadline
                .saturating_duration_since(t)
                .max(Duration::from_millis(1));
            Cmd::Forward(w.fwd, w.seq)
        }));
        self.hub.metrics.cluster_pending.set(0.0);
        let mut again = again.into_iter().peekable();
        while again.peek().is_some() {
            let batch: Vec<Cmd> = again.by_ref().take(BATCH).collect();
            if let Err(e) = self.exec(con, batch).await {
                // Whatever was not tried yet waits for the next connection too.
                for cmd in again {
                    if let Cmd::Forward(f, seq) = cmd {
                        self.wait(f, seq);
                    }
                }
                return Err(e);
            }
        }
        let mut renew = tokio::time::interval(c.cfg.lease / 3);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reap_at = now() + c.cfg.lease;
        loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => return Ok(()),
                _ = renew.tick() => {
                    let renewed: i64 = redis::cmd("PEXPIRE")
                        .arg(format!("{}node:{}", c.p(), c.node))
                        .arg(c.cfg.lease.as_millis() as u64)
                        .query_async(con)
                        .await
                        .map_err(|_| Broken::Io)?;
                    if renewed == 0 {
                        return Err(Broken::Stale);
                    }
                    self.hub.metrics.lease_renewals.increment(1);
                    let stats: Vec<i64> = c.scripts.stats.call(&[c.p()])
                        .query_async(con).await.map_err(|_| Broken::Io)?;
                    if let [nodes, ids] = stats[..] {
                        self.hub.metrics.cluster_nodes.set(nodes as f64);
                        self.hub.metrics.cluster_peers.set(ids as f64);
                    }
                    if now() >= reap_at {
                        reap_at = now() + c.cfg.lease;
                        let _: Value = c.scripts.reap.call(&[c.p(), &c.node])
                            .query_async(con).await.map_err(|_| Broken::Io)?;
                    }
                }
                _ = sweep.tick() => {
                    for (conn, claim) in c.overdue_acks() {
                        self.hub.claim_result(conn, claim);
                    }
                    self.sweep(con).await?;
                    if let Some((_, lost)) = self.replay_at.take_if(|(at, _)| *at <= now()) {
                        let t = now();
                        let again: Vec<Cmd> = self
                            .recent
                            .iter()
                            .filter(|r| r.at <= lost && r.until > t)
                            .map(|r| r.again(t))
                            .collect();
                        tracing::warn!(
                            messages = again.len(),
                            "handing recent messages to the registry again"
                        );
                        let mut again = again.into_iter().peekable();
                        while again.peek().is_some() {
                            self.exec(con, again.by_ref().take(BATCH).collect()).await?;
                        }
                    }
                }
                first = rx.recv() => {
                    let Some(first) = first else { return Ok(()) };
                    let mut batch = vec![first];
                    while batch.len() < BATCH {
                        match rx.try_recv() {
                            Ok(cmd) => batch.push(cmd),
                            Err(_) => break,
                        }
                    }
                    for cmd in &mut batch {
                        if let Cmd::Forward(_, seq) = cmd {
                            *seq = self.number(*seq);
                        }
                    }
                    self.exec(con, batch).await?;
                }
            }
        }
    }

    async fn hello(&mut self, con: &mut MultiplexedConnection) -> Result<(), Broken> {
        let c = &self.cluster;
        let fresh = uuid::Uuid::new_v4().simple().to_string();
        let lease = c.cfg.lease.as_millis().to_string();
        let epoch: String = c
            .scripts
            .hello
            .call(&[c.p(), &c.node, &lease, &self.epoch, &fresh])
            .query_async(con)
            .await
            .map_err(|_| Broken::Io)?;
        if !self.epoch.is_empty() && self.epoch != epoch {
            tracing::warn!("cluster registry lost its data; claims pause for one lease");
            self.lost_data = true;
        }
        self.epoch = epoch;
        Ok(())
    }

    /// Writes every live registration of this node back into the registry.
    async fn reassert(&mut self, con: &mut MultiplexedConnection) -> Result<(), Broken> {
        let c = self.cluster.clone();
        let regs = self.hub.registrations();
        self.hub.metrics.reasserts.increment(1);
        let _: Value = redis::cmd("DEL")
            .arg(format!("{}ids:{}:new", c.p(), c.node))
            .query_async(con)
            .await
            .map_err(|_| Broken::Io)?;
        for chunk in regs.chunks(REASSERT_BATCH) {
            let mut args: Vec<String> = vec![c.p().to_owned(), c.node.clone()];
            for (id, token, reg) in chunk {
                args.push(id.to_string());
                args.push(token.clone());
                args.push(reg.to_string());
            }
            let v: Value = c
                .scripts
                .reassert
                .call(&args)
                .query_async(con)
                .await
                .map_err(|_| Broken::Io)?;
            for r in items(v) {
                let mut it = items(r).into_iter();
                let tag = it.next().and_then(text).unwrap_or_default();
                let Some(id) = it.next().and_then(text) else {
                    continue;
                };
                if tag == "lost" {
                    self.hub.metrics.leases_lost.increment(1);
                    tracing::warn!("an id held here was taken elsewhere during a registry outage");
                    self.hub.lost(&id);
                } else {
                    let msgs = queued(it, &c);
                    self.hub.remote(
                        msgs.into_iter()
                            .map(|(src, text)| (MessageType::Offer, src, id.clone(), text))
                            .collect(),
                    );
                }
            }
        }
        let _: Value = c
            .scripts
            .reassert_done
            .call(&[c.p(), &c.node])
            .query_async(con)
            .await
            .map_err(|_| Broken::Io)?;
        Ok(())
    }

    async fn sweep(&mut self, con: &mut MultiplexedConnection) -> Result<(), Broken> {
        let c = &self.cluster;
        let v: Value = c
            .scripts
            .sweep
            .call(&[c.p()])
            .query_async(con)
            .await
            .map_err(|_| Broken::Io)?;
        let due: Vec<(String, Vec<String>)> = items(v)
            .into_iter()
            .filter_map(|q| {
                let mut it = items(q).into_iter();
                let dst = it.next().and_then(text)?;
                Some((dst, it.filter_map(text).collect()))
            })
            .collect();
        if !due.is_empty() {
            self.hub.expired(&due);
        }
        Ok(())
    }

    /// Runs a batch in one pipeline. On a broken connection, messages whose fate is unknown
    /// wait for the next connection and unanswered claims are refused.
    async fn exec(
        &mut self,
        con: &mut MultiplexedConnection,
        batch: Vec<Cmd>,
    ) -> Result<(), Broken> {
        let c = self.cluster.clone();
        let limits = &self.hub.config.limits;
        let limit = self.hub.config.concurrent_limit.to_string();
        let per_dst = limits.max_queued_per_dst.to_string();
        let total = limits.max_queued_total.to_string();
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for cmd in &batch {
            match cmd {
                Cmd::Claim { id, token, .. } => {
                    pipe.add_command(c.scripts.claim.call(&[c.p(), &c.node, id, token, &limit]));
                }
                Cmd::Release { id, reg } => {
                    pipe.add_command(c.scripts.release.call(&[
                        c.p(),
                        &c.node,
                        id,
                        &reg.to_string(),
                    ]));
                }
                Cmd::Forward(f, seq) => {
                    let ttl = f.ttl.as_millis().to_string();
                    let mid = format!("{}.{seq}", c.node);
                    pipe.add_command(c.scripts.route.call(&[
                        c.p(),
                        &c.node,
                        f.kind.as_str(),
                        &f.src,
                        &f.dst,
                        &f.text,
                        &ttl,
                        if f.requeue { "1" } else { "0" },
                        if f.notice { "1" } else { "0" },
                        &per_dst,
                        &total,
                        &mid,
                    ]));
                }
            }
        }
        let results: Result<Vec<redis::RedisResult<Value>>, _> = pipe.query_async(con).await;
        let results = match results {
            Ok(r) if r.len() == batch.len() => r,
            _ => {
                for cmd in batch {
                    match cmd {
                        Cmd::Claim { conn, .. } => self
                            .hub
                            .claim_result(conn, Claim::Unavailable(MSG_UNAVAILABLE)),
                        Cmd::Release { .. } => {}
                        Cmd::Forward(f, seq) => self.wait(f, seq),
                    }
                }
                return Err(Broken::Io);
            }
        };
        let mut broken = false;
        for (cmd, r) in batch.into_iter().zip(results) {
            match (cmd, r) {
                (Cmd::Claim { conn, id, .. }, Ok(v)) => {
                    if matches!(text_tag(&v).as_deref(), Some("stale")) {
                        broken = true;
                    }
                    match parse_claim(v, &c) {
                        // Re-attached from another node: answer once that node stopped
                        // delivering to its socket, so no relay reaches the old socket after
                        // the new one is in use.
                        (claim, Some(_from)) => {
                            c.acks()
                                .push((id.to_string(), conn, claim, now() + ACK_WAIT))
                        }
                        (claim, None) => self.hub.claim_result(conn, claim),
                    }
                }
                (Cmd::Claim { conn, .. }, Err(_)) => {
                    broken = true;
                    self.hub
                        .claim_result(conn, Claim::Unavailable(MSG_UNAVAILABLE));
                }
                (Cmd::Forward(f, seq), Ok(v)) => {
                    let outcome = text(v);
                    if matches!(outcome.as_deref(), Some("sent")) {
                        self.hub.metrics.cluster_out.increment(1);
                    }
                    match outcome.as_deref() {
                        Some("sent") => self.remember(f, seq, false),
                        Some("queued") => self.remember(f, seq, true),
                        _ => {}
                    }
                }
                (Cmd::Forward(f, seq), Err(e)) => {
                    tracing::debug!(error = %e, "route failed; the message waits");
                    broken = true;
                    self.wait(f, seq);
                }
                (Cmd::Release { .. }, _) => {}
            }
        }
        if broken {
            // A script error (NOSCRIPT after a registry restart, or a lapsed lease): start
            // over with hello and re-assert on a fresh connection.
            return Err(Broken::Stale);
        }
        Ok(())
    }
}

fn text_tag(v: &Value) -> Option<String> {
    match v {
        Value::Array(a) => a.first().cloned().and_then(text),
        _ => None,
    }
}

/// Reads this node's inbox and hands what arrives to the broker.
async fn inbox(hub: Arc<Hub>, stop: CancellationToken) {
    let Some(c) = hub.cluster.clone() else {
        return;
    };
    let key = format!("{}inbox:{}", c.p(), c.node);
    let mut last = "0".to_owned();
    'connect: loop {
        let con = tokio::select! {
            // Blocking reads: no response timeout; XREAD's own BLOCK bounds each call.
            c = c.connect(None) => c,
            () = stop.cancelled() => return,
        };
        let Ok(mut con) = con else {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
                () = stop.cancelled() => return,
            }
            continue;
        };
        loop {
            let mut xread = redis::cmd("XREAD");
            xread
                .arg("COUNT")
                .arg(INBOX_COUNT)
                .arg("BLOCK")
                .arg(500)
                .arg("STREAMS")
                .arg(&key)
                .arg(&last);
            let read = xread.query_async::<Value>(&mut con);
            let v = tokio::select! {
                v = tokio::time::timeout(Duration::from_secs(3), read) => v,
                () = stop.cancelled() => return,
            };
            let Ok(Ok(v)) = v else {
                continue 'connect;
            };
            let mut msgs = Vec::new();
            let mut moved = Vec::new();
            let mut acked = Vec::new();
            for stream in items(v) {
                let mut s = items(stream).into_iter();
                let _name = s.next();
                for entry in s.next().map(items).unwrap_or_default() {
                    let mut e = items(entry).into_iter();
                    if let Some(id) = e.next().and_then(text) {
                        last = id;
                    }
                    let fields: Vec<String> = e
                        .next()
                        .map(items)
                        .unwrap_or_default()
                        .into_iter()
                        .filter_map(text)
                        .collect();
                    let get = |k: &str| {
                        fields
                            .chunks_exact(2)
                            .find(|f| f[0] == k)
                            .map(|f| f[1].clone())
                    };
                    match get("t").as_deref() {
                        Some("m") => {
                            if get("i").is_some_and(|i| !c.fresh(&i)) {
                                continue;
                            }
                            if let (Some(k), Some(s), Some(d), Some(m)) =
                                (get("k"), get("s"), get("d"), get("m"))
                            {
                                msgs.push((kind_of(&k), s, d, m));
                            }
                        }
                        Some("v") => {
                            if let (Some(d), Some(n)) = (get("d"), get("n")) {
                                moved.push((d, n));
                            }
                        }
                        Some("a") => {
                            if let Some(d) = get("d") {
                                acked.push(d);
                            }
                        }
                        _ => {}
                    }
                }
            }
            if msgs.is_empty() && moved.is_empty() && acked.is_empty() {
                continue;
            }
            for id in acked {
                if let Some((conn, claim)) = c.acked(&id) {
                    hub.claim_result(conn, claim);
                }
            }
            for (id, node) in moved {
                hub.moved(&id);
                // Tell the new holder this node no longer delivers to its socket.
                let _: redis::RedisResult<Value> = redis::cmd("XADD")
                    .arg(format!("{}inbox:{node}", c.p()))
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(100_000)
                    .arg("*")
                    .arg("t")
                    .arg("a")
                    .arg("d")
                    .arg(&id)
                    .query_async(&mut con)
                    .await;
            }
            if !msgs.is_empty() {
                hub.remote(msgs);
            }
            // Entries up to the last one read are done with.
            let _: redis::RedisResult<Value> = redis::cmd("XTRIM")
                .arg(&key)
                .arg("MINID")
                .arg(&last)
                .query_async(&mut con)
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn cluster() -> Cluster {
        Cluster::new(ClusterConfig {
            redis_url: "redis://127.0.0.1:1/".into(),
            lease: Duration::from_secs(1),
            prefix: "t:".into(),
        })
    }

    #[test]
    fn claim_answers_parse_and_drop_repeated_messages() {
        let c = cluster();
        assert!(c.fresh("n.1"));
        let v = Value::Array(vec![
            bulk("new"),
            Value::Int(7),
            bulk(""),
            bulk("a"),
            bulk("frame-1"),
            bulk("n.1"),
            bulk("b"),
            bulk("frame-2"),
            bulk("n.2"),
        ]);
        assert_eq!(
            parse_claim(v, &c),
            (
                Claim::New {
                    reg: 7,
                    queued: vec![("b".into(), "frame-2".into())]
                },
                None
            )
        );
        let v = Value::Array(vec![bulk("reattach"), bulk("3"), bulk("node-b")]);
        assert_eq!(
            parse_claim(v, &c),
            (
                Claim::Reattach {
                    reg: 3,
                    queued: vec![]
                },
                Some("node-b".into())
            )
        );
        for (tag, want) in [
            ("taken", Claim::Taken),
            ("limit", Claim::Limit),
            ("settle", Claim::Unavailable(MSG_RECOVERING)),
            ("stale", Claim::Unavailable(MSG_UNAVAILABLE)),
        ] {
            assert_eq!(parse_claim(Value::Array(vec![bulk(tag)]), &c).0, want);
        }
        // Garbage from the wire never panics.
        assert_eq!(
            parse_claim(Value::Nil, &c).0,
            Claim::Unavailable(MSG_UNAVAILABLE)
        );
        assert_eq!(
            parse_claim(Value::Array(vec![bulk("new"), bulk("x"), bulk("")]), &c).0,
            Claim::New {
                reg: 0,
                queued: vec![]
            }
        );
    }

    #[test]
    fn repeats_are_forgotten_only_beyond_the_cap() {
        let c = cluster();
        for i in 0..SEEN_CAP + 1 {
            assert!(c.fresh(&i.to_string()));
        }
        assert!(c.fresh("0"), "the oldest number was evicted");
        assert!(!c.fresh(&SEEN_CAP.to_string()));
        assert!(c.fresh(""), "unnumbered messages always pass");
        assert!(c.fresh(""));
    }
}
