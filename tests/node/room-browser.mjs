#!/usr/bin/env node
// A browser room member next to a Rust participant (kibitz-join), through the broker at
// --host/--port, in room --room. The page runs the official peerjs@1.5.5 client and speaks the
// room as KIBITZ.md describes the web client: presence (§4.3–4.4: knock, voice with its
// voiceId, ping every 2.5 s) and the data mesh (§4.9): the smaller id dials `sig`, `cap` on sig
// open, the dialler opens `bulk` on the other's cap, content on bulk, an `mh` keepalive every
// 2 s, and the web client's watchdog rule (a sig channel silent for 8 s is dead). It checks
// what a web client would see of the Rust member: both channels, chat both ways on bulk, a
// keepalive that never lets the watchdog trip, and `bye` when the Rust member leaves.
// Run by tests/tests/room_rust.rs, whose Rust member answers "hello rust" with "hello browser"
// and leaves on "please leave".
import { parseArgs } from "node:util";
import { openPeerjsPage, pageErrorMessage, runScenarios, withTimeout } from "./chromium.mjs";

const PAGE_JS = `"use strict";
window.M = (() => {
  const KEEPALIVE_MS = 2000, SIG_DEAD_MS = 8000, PING_MS = 2500, ANNOUNCE_MS = 3000;
  let media = null, presence = null, self = null, members = [];
  const links = { sig: new Map(), bulk: new Map() };
  const dialled = new Set(), bulkCapable = new Set();
  const events = [];
  let watchdogTrips = 0, replaced = 0;

  function withTimeout(p, ms, what) {
    let t;
    return Promise.race([p, new Promise((_, rej) => { t = setTimeout(() => rej(new Error("timed out waiting for " + what)), ms); })])
      .finally(() => clearTimeout(t));
  }
  function until(pred, ms, what) {
    return withTimeout(new Promise((res) => {
      const poll = () => { const v = pred(); if (v) res(v); else setTimeout(poll, 50); };
      poll();
    }), ms, what);
  }
  function opened(peer) {
    return withTimeout(new Promise((res, rej) => {
      peer.once("open", res);
      peer.once("error", (e) => rej(new Error("peer error: " + (e && e.type))));
    }), 15000, "peer open");
  }
  const other = () => { const m = members.find((m) => m.id !== self); return m && m.id; };

  function wire(conn, lane) {
    const map = links[lane];
    if (map.has(conn.peer)) replaced++;
    const link = { conn, open: false, lastRecv: Date.now() };
    map.set(conn.peer, link);
    conn.on("open", () => {
      link.open = true;
      link.lastRecv = Date.now();
      events.push({ kind: "open", lane, from: conn.peer });
      if (lane === "sig") conn.send({ t: "cap", bulk: 1 });
    });
    conn.on("data", (d) => {
      link.lastRecv = Date.now();
      if (map.get(conn.peer) !== link) return;
      if (lane === "sig" && d && typeof d === "object" && typeof d.t === "string") {
        events.push({ kind: "ctl", t: d.t, from: conn.peer, at: Date.now() });
        if (d.t === "cap") { bulkCapable.add(conn.peer); maybeDialBulk(conn.peer); }
        return;
      }
      events.push({ kind: "content", lane, from: conn.peer, frame: d });
    });
    conn.on("close", () => {
      if (map.get(conn.peer) === link) { map.delete(conn.peer); events.push({ kind: "close", lane, from: conn.peer }); }
    });
  }
  function maybeDialBulk(id) {
    if (dialled.has(id) && bulkCapable.has(id) && !links.bulk.has(id)) wire(media.connect(id, { reliable: true, label: "bulk" }), "bulk");
  }
  function onRoster(r) {
    members = Array.isArray(r.members) ? r.members : [];
    for (const m of members) {
      if (m.id === self || !(self < m.id) || dialled.has(m.id)) continue;
      dialled.add(m.id);
      wire(media.connect(m.id, { reliable: true }), "sig");
    }
  }
  // The keepalive, and the web client's watchdog on the channels it dialled.
  setInterval(() => {
    for (const [id, l] of links.sig) {
      if (!l.open) continue;
      if (dialled.has(id) && Date.now() - l.lastRecv > SIG_DEAD_MS) watchdogTrips++;
      l.conn.send({ t: "mh", v: 0, a: 0, ov: 0, oa: 0 });
    }
  }, KEEPALIVE_MS);

  async function join(opts, room) {
    media = new Peer(opts);
    self = await opened(media);
    media.on("connection", (c) => wire(c, c.label === "bulk" ? "bulk" : "sig"));
    presence = new Peer(opts);
    await opened(presence);
    const p = presence.connect("kbz-v1-" + room, { reliable: true });
    const voice = () => ({ t: "voice", on: true, cam: false, name: "Browser", avatar: "", voiceId: self, token: "tok-browser" });
    p.on("open", () => {
      p.send({ t: "knock", name: "Browser", avatar: "", token: "tok-browser", voiceId: self });
      p.send(voice());
    });
    p.on("data", (d) => { if (d && d.t === "roster") onRoster(d); });
    setInterval(() => { if (p.open) p.send({ t: "ping" }); }, PING_MS);
    setInterval(() => { if (p.open) p.send(voice()); }, ANNOUNCE_MS);
    await until(() => members.length === 2 && other(), 20000, "a roster of two");
    return "roster " + members.map((m) => m.name).sort().join(", ");
  }

  function chat(text) {
    const id = other();
    const l = links.bulk.get(id);
    if (!l || !l.open) throw new Error("no open bulk channel");
    l.conn.send({ k: "chat", text, mid: self + "#" + Date.now(), ts: Date.now(), from: self, name: "Browser" });
  }

  async function channels() {
    const id = await until(other, 5000, "the Rust member");
    await until(() => links.sig.get(id) && links.sig.get(id).open, 15000, "sig open");
    await until(() => links.bulk.get(id) && links.bulk.get(id).open, 15000, "bulk open").catch((e) => {
      throw new Error(e.message + " (" + (dialled.has(id) ? "browser" : "rust") + " dialled; bulk " +
        (links.bulk.has(id) ? "dialled, not open" : "never offered") + "; cap " + (bulkCapable.has(id) ? "heard" : "not heard") +
        "; events " + JSON.stringify(events.filter((e) => e.t !== "mh").map((e) => e.kind + ":" + (e.lane || e.t))) + ")");
    });
    chat("hello rust");
    const got = await until(() => events.find((e) => e.kind === "content" && e.frame && e.frame.k === "chat" && e.frame.text === "hello browser"), 15000, "the Rust member's chat");
    if (got.lane !== "bulk") throw new Error("chat arrived on " + got.lane);
    if (got.from !== id) throw new Error("chat from " + got.from);
    return (dialled.has(id) ? "browser" : "rust") + " dialled; chat both ways on bulk";
  }

  async function keepalive(ms) {
    const id = other();
    const start = Date.now();
    await new Promise((r) => setTimeout(r, ms));
    const beats = events.filter((e) => e.kind === "ctl" && e.t === "mh" && e.from === id && e.at >= start).map((e) => e.at);
    if (beats.length < Math.floor(ms / KEEPALIVE_MS) - 1) throw new Error(beats.length + " mh in " + ms + " ms");
    let gap = beats[0] - start;
    for (let i = 1; i < beats.length; i++) gap = Math.max(gap, beats[i] - beats[i - 1]);
    if (gap > 3000) throw new Error("keepalive gap of " + gap + " ms");
    if (watchdogTrips) throw new Error("the watchdog found the sig channel dead " + watchdogTrips + " times");
    if (replaced) throw new Error(replaced + " channels replaced");
    const closed = events.filter((e) => e.kind === "close");
    if (closed.length) throw new Error("channels closed: " + JSON.stringify(closed));
    return beats.length + " mh in " + ms + " ms, longest gap " + gap + " ms, nothing re-dialled";
  }

  async function bye() {
    const id = other();
    const t0 = Date.now();
    chat("please leave");
    await until(() => events.find((e) => e.kind === "ctl" && e.t === "bye" && e.from === id), 10000, "bye");
    const took = Date.now() - t0;
    await until(() => !links.sig.has(id) && !links.bulk.has(id), 10000, "both channels closed");
    return "bye " + took + " ms after asking, then both channels closed";
  }

  function destroy() { for (const p of [media, presence]) if (p) p.destroy(); }
  return { join, channels, keepalive, bye, destroy };
})();
`;

const NAMES = [
  "joins the room a Rust member holds",
  "sig and bulk channels open; chat both ways on bulk",
  "the Rust member's mh keeps sig alive: the web client's 8 s watchdog never trips",
  "the Rust member leaves: bye on sig, then its channels close",
];

async function main(args, state) {
  const { page, consoleErrors } = await openPeerjsPage(state, "kibitz room member", PAGE_JS);
  const opts = { host: args.host, port: Number(args.port), path: "/", secure: false, debug: 1, config: { iceServers: [] } };
  const runs = [
    () => page.evaluate(([o, room]) => M.join(o, room), [opts, args.room]),
    () => page.evaluate(() => M.channels()),
    () => page.evaluate(() => M.keepalive(12000)),
    () => page.evaluate(() => M.bye()),
  ];
  for (const [i, name] of NAMES.entries()) {
    const run = runs[i];
    const firstError = consoleErrors.length;
    try {
      state.report(name, null, await withTimeout(run(), 40000, name));
    } catch (err) {
      const logged = [...new Set(consoleErrors.slice(firstError))].slice(0, 3);
      state.report(name, pageErrorMessage(err) + (logged.length ? ` [console: ${logged.join(" | ")}]` : ""));
      break;
    }
  }
  await withTimeout(page.evaluate(() => M.destroy()), 5000, "teardown").catch(() => {});
}

const { values } = parseArgs({ options: { host: { type: "string" }, port: { type: "string" }, room: { type: "string" } } });
if (!values.host || !values.port || !values.room) {
  console.error("usage: node tests/node/room-browser.mjs --host HOST --port PORT --room ROOM");
  process.exit(2);
}
runScenarios(NAMES, 150_000, (state) => main(values, state)).catch((err) => {
  console.error("harness crashed:", err);
  process.exit(1);
});
