#!/usr/bin/env node
// The hub benchmark (bench/hub.sh runs it): `kibitz hub` on 127.0.0.1 with Chromium clients
// that connect exactly as the web does (hub-page.js). Measures
//   (a) connect: setRemoteDescription -> `id`, p50/p99 over --connects sequential connects
//       (one at a time, a fresh RTCPeerConnection each, closed after);
//   (b) sessions: --sessions held at once (spread over --session-pages pages, 100 per page at
//       most: Chromium caps peer connections per page), hub RSS before/after, per session;
//   (c) routing: --senders pages in one room each send --frames `to` the next one; frames
//       routed per second (first send to last arrival) and hub CPU (utime+stime) per frame.
// Prints a summary table. --quick: small counts, for scripts/test's smoke (no targets).
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import readline from "node:readline";
import { parseArgs } from "node:util";
import { startHubPages } from "./hub-pages.mjs";
import { withTimeout } from "./chromium.mjs";

const { values: opt } = parseArgs({
  options: {
    kibitz: { type: "string" },
    quick: { type: "boolean", default: false },
    connects: { type: "string" },
    sessions: { type: "string" },
    "session-pages": { type: "string" },
    senders: { type: "string" },
    frames: { type: "string" },
  },
});
if (!opt.kibitz) {
  console.error("usage: node tests/node/hub-bench.mjs --kibitz PATH [--quick] [--connects N] [--sessions N] [--senders N] [--frames N]");
  process.exit(2);
}
const num = (v, quick, full) => Number(v ?? (opt.quick ? quick : full));
const CONNECTS = num(opt.connects, 10, 100);
const SESSIONS = num(opt.sessions, 20, 400);
const SENDERS = num(opt.senders, 2, 4);
const FRAMES = num(opt.frames, 500, 20000);
const SESSION_PAGES = num(opt["session-pages"], 1, Math.ceil(SESSIONS / 100));
const TICK = Number(execFileSync("getconf", ["CLK_TCK"]).toString().trim()) || 100;

function startHub(stateDir) {
  const child = spawn(
    opt.kibitz,
    ["hub", "--port", "0", "--advertise", "127.0.0.1", "--http", "0", "--fixed-id", "false", "--no-turn", "--mdns", "false", "--max-sessions", "5000",
      "--state", path.join(stateDir, "relay-state.json")],
    { stdio: ["ignore", "pipe", "inherit"] },
  );
  const rl = readline.createInterface({ input: child.stdout });
  return withTimeout(
    new Promise((resolve, reject) => {
      child.once("exit", (code) => reject(new Error(`kibitz hub exited (${code}) before BLOB`)));
      rl.on("line", (line) => {
        if (line.startsWith("BLOB ")) resolve({ child, blob: line.slice(5).trim() });
      });
    }),
    20_000,
    "kibitz hub BLOB line",
  );
}

const rssKiB = (pid) => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))[1]);
function cpuSecs(pid) {
  // Fields after the parenthesised command name; utime and stime are the 14th and 15th overall.
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(f[11]) + Number(f[12])) / TICK;
}
function pct(sorted, p) {
  if (!sorted.length) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function main() {
  const stateDir = mkdtempSync(path.join(tmpdir(), "kibitz-hub-bench-"));
  const { child: hub, blob } = await startHub(stateDir);
  const pid = hub.pid;
  const h = await startHubPages(() => {});
  const rows = [];
  const load = () => readFileSync("/proc/loadavg", "utf8").split(" ").slice(0, 3).join(" ");
  console.log(`hub pid ${pid}, blob ${blob}\nload average before: ${load()}`);
  try {
    // (a) connect latency: sequential, one RTCPeerConnection at a time, closed after.
    await h.open("conn");
    const a = { ms: [], failures: [] };
    for (let i = 0; i < CONNECTS; i++) {
      const r = await h.call("conn", "openSessions", [blob, 1, 1]);
      a.ms.push(...r.ms);
      a.failures.push(...r.failures);
      await h.call("conn", "closeSessions", []);
    }
    const ms = a.ms.slice().sort((x, y) => x - y);
    rows.push([`(a) connect: setRemoteDescription -> id, ${CONNECTS} sequential`, `p50 ${pct(ms, 50).toFixed(1)} ms, p99 ${pct(ms, 99).toFixed(1)} ms, max ${ms[ms.length - 1].toFixed(1)} ms, failed ${a.failures.length}`]);
    rows.push(["(a) the fresh hub's first connect", `${a.ms[0]?.toFixed(1)} ms`]);
    await h.close("conn");

    // (b) sessions held at once, and the hub's memory for them. Let closed sessions go first.
    await sleep(1000);
    const rss0 = rssKiB(pid);
    const perPage = Math.ceil(SESSIONS / SESSION_PAGES);
    const held = [];
    const t0 = performance.now();
    const jobs = [];
    for (let p = 0; p < SESSION_PAGES; p++) {
      const name = `held${p}`;
      await h.open(name);
      const n = Math.min(perPage, SESSIONS - p * perPage);
      jobs.push(h.call(name, "openSessions", [blob, n, 8], 600_000).then((r) => held.push(r)));
    }
    await Promise.all(jobs);
    const setupSecs = (performance.now() - t0) / 1000;
    const got = held.reduce((n, r) => n + r.ids.length, 0);
    const failures = held.flatMap((r) => r.failures);
    const heldMs = held.flatMap((r) => r.ms).sort((x, y) => x - y);
    // Hold them a while (consent checks keep coming) before measuring.
    await sleep(2000);
    const rss1 = rssKiB(pid);
    const cpu0 = cpuSecs(pid);
    await sleep(5000);
    const idleCpu = (cpuSecs(pid) - cpu0) / 5;
    rows.push([`(b) sessions held at once (${SESSION_PAGES} pages, 8 connecting at a time)`, `${got} of ${SESSIONS} in ${setupSecs.toFixed(1)} s (failed ${failures.length}${failures.length ? `: ${failures[0]}` : ""}); id p50 ${pct(heldMs, 50).toFixed(0)} ms, p99 ${pct(heldMs, 99).toFixed(0)} ms`]);
    rows.push(["(b) hub RSS before / with them / per session", `${(rss0 / 1024).toFixed(1)} MiB / ${(rss1 / 1024).toFixed(1)} MiB / ${got ? ((rss1 - rss0) / got).toFixed(1) : "-"} KiB`]);
    rows.push(["(b) hub CPU holding them idle (consent checks)", `${(idleCpu * 100).toFixed(1)} % of a core`]);
    for (let p = 0; p < SESSION_PAGES; p++) await h.close(`held${p}`);

    // (c) routing: SENDERS pages in one room, each sends FRAMES `to` the next, all at once.
    await sleep(1000);
    const names = Array.from({ length: SENDERS }, (_, i) => `s${i}`);
    const ids = [];
    for (const n of names) {
      await h.open(n);
      ids.push((await h.call(n, "connect", [blob, { quiet: true }])).id);
      await h.call(n, "join", ["bench"]);
    }
    const peers = await h.call(names[0], "peers", []);
    if (peers.length !== SENDERS) throw new Error(`room has ${peers.length} members, not ${SENDERS}`);
    const c0 = cpuSecs(pid);
    const r0 = performance.now();
    await Promise.all(names.map((n, i) => h.call(n, "sendSeq", [ids[(i + 1) % SENDERS], FRAMES, "bench"], 600_000)));
    // Wait until every receiver has everything (or 60 s without progress).
    let done = false;
    let last = -1;
    let stall = performance.now();
    let counts = [];
    while (!done) {
      counts = await Promise.all(names.map((n, i) => h.call(n, "counts", []).then((c) => c.bySender[String(ids[(i + SENDERS - 1) % SENDERS])] ?? { n: 0, outOfOrder: 0 })));
      const total = counts.reduce((s, c) => s + c.n, 0);
      done = total === FRAMES * SENDERS;
      if (total !== last) {
        last = total;
        stall = performance.now();
      } else if (performance.now() - stall > 60_000) break;
      if (!done) await sleep(20);
    }
    const secs = (performance.now() - r0) / 1000;
    const cpu = cpuSecs(pid) - c0;
    const routed = counts.reduce((s, c) => s + c.n, 0);
    const disorder = counts.reduce((s, c) => s + c.outOfOrder, 0);
    rows.push([`(c) routing: ${SENDERS} senders in one room, ${FRAMES} frames each`, `${routed} of ${FRAMES * SENDERS} arrived (out of order ${disorder}) in ${secs.toFixed(2)} s: ${(routed / secs).toFixed(0)} frames/s`]);
    rows.push(["(c) hub CPU while routing", `${cpu.toFixed(2)} s = ${((cpu / routed) * 1e6).toFixed(1)} µs per frame, ${((cpu / secs) * 100).toFixed(0)} % of a core`]);
    rows.push(["hub RSS at the end", `${(rssKiB(pid) / 1024).toFixed(1)} MiB`]);
  } finally {
    await h.shutdown();
    hub.kill("SIGTERM");
    rmSync(stateDir, { recursive: true, force: true });
  }
  const w = Math.max(...rows.map((r) => r[0].length));
  console.log(`\n${"what".padEnd(w)}  figure\n${"-".repeat(w)}  ------`);
  for (const [k, v] of rows) console.log(`${k.padEnd(w)}  ${v}`);
  console.log(`load average after: ${load()} (2 cores: Chromium, the pages and the hub share them)`);
}

main().then(
  () => process.exit(0),
  (err) => {
    console.error("hub-bench failed:", err);
    process.exit(1);
  },
);
