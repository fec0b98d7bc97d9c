//! The registry's Lua scripts (the `.lua` files beside this one) and how each [`Call`]
//! becomes a Redis command.

use super::protocol::{Call, INBOX_BLOCK_MS, INBOX_COUNT, Script, Settings};

/// Inbox streams are trimmed to about this many entries.
const INBOX_MAXLEN: usize = 100_000;

/// A script and its SHA (scripts are loaded on every (re)connect, then called by SHA).
pub(crate) struct Lua {
    sha: String,
}

impl Lua {
    fn new(src: &'static str) -> Self {
        Self {
            sha: redis::Script::new(src).get_hash().to_owned(),
        }
    }

    /// `EVALSHA` without arguments yet. The shard's key prefix is the one declared key: it
    /// lies in the shard's hash slot (its hash tag is the shard), as does every key the
    /// script builds from it, so a Redis Cluster runs the script on the right master.
    pub(crate) fn cmd(&self, prefix: &str) -> redis::Cmd {
        let mut c = redis::cmd("EVALSHA");
        c.arg(&self.sha).arg(1).arg(prefix);
        c
    }

    /// `args[0]` is the shard's key prefix (declared as the key, and passed as `ARGV[1]`).
    pub(crate) fn call<A: redis::ToRedisArgs + AsRef<str>>(&self, args: &[A]) -> redis::Cmd {
        let prefix = args.first().map_or("", AsRef::as_ref);
        let mut c = self.cmd(prefix);
        for a in args {
            c.arg(a);
        }
        c
    }
}

/// Every script, by SHA.
pub(crate) struct Scripts([Lua; 13]);

impl Scripts {
    pub(crate) fn new() -> Self {
        Self(Script::ALL.map(|s| Lua::new(source(s))))
    }

    pub(crate) fn get(&self, s: Script) -> &Lua {
        // `ALL` lists every variant once, so the position always exists.
        let i = Script::ALL.iter().position(|x| *x == s).unwrap_or(0);
        &self.0[i]
    }
}

fn source(s: Script) -> &'static str {
    match s {
        Script::Claim => include_str!("claim.lua"),
        Script::Release => include_str!("release.lua"),
        Script::Route => include_str!("route.lua"),
        Script::Sweep => include_str!("sweep.lua"),
        Script::Hello => include_str!("hello.lua"),
        Script::Reassert => include_str!("reassert.lua"),
        Script::ReassertDone => include_str!("reassert_done.lua"),
        Script::Reap => include_str!("reap.lua"),
        Script::List => include_str!("list.lua"),
        Script::Leave => include_str!("leave.lua"),
        Script::Stats => include_str!("stats.lua"),
        Script::Probe => include_str!("probe.lua"),
        Script::Renew => include_str!("renew.lua"),
    }
}

/// A message's number as receivers see it: unique per sending node over all its shards.
fn mid(s: &Settings, seq: u64) -> String {
    if s.shards > 1 {
        format!("{}.{}.{seq}", s.node, s.shard)
    } else {
        format!("{}.{seq}", s.node)
    }
}

/// What every call needs besides its own arguments.
pub(crate) struct Ctx<'a> {
    /// The shard's key prefix.
    pub prefix: &'a str,
    /// Where the shard count is kept (shared by all shards on one Redis, per shard on a
    /// Redis Cluster).
    pub shards_key: &'a str,
    pub settings: &'a Settings,
    pub scripts: &'a Scripts,
}

impl Ctx<'_> {
    fn script(&self, s: Script, args: &[&str]) -> redis::Cmd {
        let mut all = vec![self.prefix, self.settings.node.as_str()];
        all.extend_from_slice(args);
        self.scripts.get(s).call(&all)
    }

    fn inbox(&self, node: &str) -> String {
        format!("{}inbox:{node}", self.prefix)
    }

    /// `call` as a Redis command.
    pub(crate) fn command(&self, call: &Call) -> redis::Cmd {
        let s = self.settings;
        match call {
            Call::Load(script) => {
                let mut c = redis::cmd("SCRIPT");
                c.arg("LOAD").arg(source(*script));
                c
            }
            Call::Hello {
                known,
                fresh,
                force,
            } => {
                let lease = s.lease.as_millis().to_string();
                let force = if *force { "1" } else { "0" };
                let shards = s.shards.to_string();
                self.script(
                    Script::Hello,
                    &[&lease, known, fresh, force, &shards, self.shards_key],
                )
            }
            Call::Claim { id, token, limit } => {
                let limit = limit.to_string();
                self.script(Script::Claim, &[id, token, &limit])
            }
            Call::Probe { id } => self.scripts.get(Script::Probe).call(&[self.prefix, id]),
            Call::Release { id, reg } => self.script(Script::Release, &[id, &reg.to_string()]),
            Call::Route(msgs) => {
                let mut c = self.scripts.get(Script::Route).cmd(self.prefix);
                c.arg(self.prefix)
                    .arg(&s.node)
                    .arg(s.max_queued_per_dst)
                    .arg(s.max_queued_total);
                for (fwd, seq) in msgs {
                    c.arg(fwd.kind.as_str())
                        .arg(&*fwd.src)
                        .arg(&fwd.dst)
                        .arg(&fwd.text)
                        .arg(fwd.ttl.as_millis() as u64)
                        .arg(if fwd.requeue { "1" } else { "0" })
                        .arg(if fwd.notice { "1" } else { "0" })
                        .arg(mid(s, *seq));
                }
                c
            }
            Call::Sweep => self.scripts.get(Script::Sweep).call(&[self.prefix]),
            Call::ReassertBegin => {
                let mut c = redis::cmd("DEL");
                c.arg(format!("{}ids:{}:new", self.prefix, s.node));
                c
            }
            Call::Reassert(regs) => {
                let mut args: Vec<String> = vec![self.prefix.to_owned(), s.node.clone()];
                for (id, token, reg) in regs {
                    args.push(id.to_string());
                    args.push(token.clone());
                    args.push(reg.to_string());
                }
                self.scripts.get(Script::Reassert).call(&args)
            }
            Call::ReassertDone => self.script(Script::ReassertDone, &[]),
            Call::Renew => {
                let lease = s.lease.as_millis().to_string();
                self.script(Script::Renew, &[&lease])
            }
            Call::Stats => self.scripts.get(Script::Stats).call(&[self.prefix]),
            Call::Reap => self.script(Script::Reap, &[]),
            Call::Leave => self.script(Script::Leave, &[]),
            Call::Read { last } => {
                let mut c = redis::cmd("XREAD");
                c.arg("COUNT")
                    .arg(INBOX_COUNT)
                    .arg("BLOCK")
                    .arg(INBOX_BLOCK_MS)
                    .arg("STREAMS")
                    .arg(self.inbox(&s.node))
                    .arg(last);
                c
            }
            Call::Ack { to, id } => {
                let mut c = redis::cmd("XADD");
                c.arg(self.inbox(to))
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(INBOX_MAXLEN)
                    .arg("*")
                    .arg("t")
                    .arg("a")
                    .arg("d")
                    .arg(id);
                c
            }
            Call::Trim { upto } => {
                // Everything up to and including `upto` (read and handed to the core): what
                // is left is unread, which the reaper routes again if this node's lease lapses.
                let mut c = redis::cmd("XTRIM");
                c.arg(self.inbox(&s.node)).arg("MINID").arg(after(upto));
                c
            }
        }
    }
}

/// The stream id right after `id` ("ms-seq" → "ms-(seq+1)"); `id` itself if it is not one.
fn after(id: &str) -> String {
    match id.split_once('-') {
        Some((ms, seq)) => match seq.parse::<u64>() {
            Ok(n) => format!("{ms}-{}", n.saturating_add(1)),
            Err(_) => id.to_owned(),
        },
        None => id.to_owned(),
    }
}
