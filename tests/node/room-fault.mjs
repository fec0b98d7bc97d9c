#!/usr/bin/env node
// A Kibitz room participant on the official peerjs@1.5.5 client in headless Chromium that stays
// in room --room through broker failures, for tests/tests/faults.rs. It behaves as KIBITZ.md
// describes the web client's participant (§1.3–1.4, §4.3–4.4, §4.9): a media peer (its id is
// the voiceId) and a presence peer joining `kbz-v1-<room>` with knock + voice, ping every 2.5 s,
// voice every 3 s; the keep-alive (peer.reconnect() with the same id and token whenever a peer is
// disconnected from the broker); the give-up rules (presence channel closed, EXPIRE /
// peer-unavailable, 12 s of authority silence) followed by a re-join 1.5 s later; and the data
// mesh's sig dial (the smaller id dials, `cap` on open, `mh` every 2 s). It never claims the room
// id itself (the `kibitz join` processes beside it do), so it is a participant only.
//
// It runs until its stdin closes, printing one line per change:
//   status <joining|connected|reconnecting (why)>
//   roster <names, sorted, comma-separated>
//   broker <up|down> <media|presence>
// and with --verbose, peerjs's own log as `console <time> <text>` lines.
import { parseArgs } from "node:util";
import { openPeerjsPage } from "./chromium.mjs";

const PAGE_JS = `"use strict";
window.M = (() => {
  const PING_MS = 2500, ANNOUNCE_MS = 3000, SILENCE_MS = 12000, RECLAIM_DELAY_MS = 1500, RETRY_MS = 2000, MH_MS = 2000;
  let opts = null, room = "", media = null, presence = null, link = null, self = null, gen = 0;
  const state = { status: "joining", names: [], broker: {} };
  const sig = new Map();
  const token = Math.random().toString(36).slice(2) + Math.random().toString(36).slice(2);

  function setStatus(s) { state.status = s; }
  // The keep-alive: a peer the broker dropped reconnects with the same id and token.
  function keepAlive(peer, which) {
    state.broker[which] = "down";
    peer.on("open", () => { state.broker[which] = "up"; });
    peer.on("disconnected", () => { state.broker[which] = "down"; });
    peer.on("error", (e) => {
      if (which === "presence" && e && e.type === "peer-unavailable") giveUp("authority gone (EXPIRE)");
    });
    setInterval(() => {
      if (peer.disconnected && !peer.destroyed) { try { peer.reconnect(); } catch (e) {} }
    }, 1000);
  }
  function voice() {
    return { t: "voice", on: true, cam: false, name: "Browser", avatar: "", voiceId: self, token };
  }
  function giveUp(why) {
    if (!link) return;
    const old = link;
    link = null;
    state.names = [];
    setStatus("reconnecting (" + why + ")");
    try { old.close(); } catch (e) {}
    const mine = ++gen;
    setTimeout(() => { if (mine === gen) dial(); }, RECLAIM_DELAY_MS);
  }
  function dial() {
    if (presence.disconnected || presence.destroyed || !presence.id) {
      setTimeout(dial, RETRY_MS);
      return;
    }
    const mine = ++gen;
    const c = presence.connect("kbz-v1-" + room, { reliable: true });
    const l = { conn: c, lastRecv: Date.now(), open: false };
    link = l;
    c.on("open", () => {
      l.open = true;
      l.lastRecv = Date.now();
      c.send({ t: "knock", name: "Browser", avatar: "", token, voiceId: self });
      c.send(voice());
      setStatus("connected");
    });
    c.on("data", (d) => {
      l.lastRecv = Date.now();
      if (d && d.t === "roster" && Array.isArray(d.members)) {
        state.names = d.members.map((m) => m.name).sort();
        if (!d.members.some((m) => m.id === self)) c.send(voice());
        for (const m of d.members) maybeDial(m.id);
      } else if (d && d.t === "kick") {
        giveUp("kicked");
      }
    });
    c.on("close", () => { if (link === l) giveUp("authority channel closed"); });
    c.on("error", () => { if (link === l) giveUp("authority channel failed"); });
    // Not open within 15 s: try again (saying how far the connection got).
    setTimeout(() => {
      if (link !== l || l.open || mine !== gen) return;
      const pc = c.peerConnection;
      giveUp("open timed out: " + (pc ? pc.signalingState + "/" + pc.iceConnectionState + "/" + pc.connectionState : "no peer connection") +
        ", presence " + (presence.open ? "open" : "not open"));
    }, 15000);
  }
  // The data mesh's sig lane, as the web client: the smaller id dials.
  function wireSig(conn) {
    sig.set(conn.peer, conn);
    conn.on("open", () => conn.send({ t: "cap", bulk: 1 }));
    conn.on("close", () => { if (sig.get(conn.peer) === conn) sig.delete(conn.peer); });
  }
  function maybeDial(id) {
    if (!self || id === self || !(self < id) || sig.has(id) || media.disconnected) return;
    wireSig(media.connect(id, { reliable: true }));
  }
  setInterval(() => {
    for (const c of sig.values()) if (c.open) c.send({ t: "mh", v: 0, a: 0, ov: 0, oa: 0 });
  }, MH_MS);
  setInterval(() => {
    if (!link || !link.open) return;
    if (Date.now() - link.lastRecv > SILENCE_MS) return giveUp("authority silent");
    link.conn.send({ t: "ping" });
  }, PING_MS);
  setInterval(() => { if (link && link.open) link.conn.send(voice()); }, ANNOUNCE_MS);

  function opened(peer) {
    return new Promise((res, rej) => {
      peer.once("open", res);
      peer.once("error", (e) => rej(new Error("peer error: " + (e && e.type))));
    });
  }
  async function join(o, r) {
    opts = o;
    room = r;
    media = new Peer(opts);
    keepAlive(media, "media");
    self = await opened(media);
    media.on("connection", (c) => { if (c.label !== "bulk") wireSig(c); });
    presence = new Peer(opts);
    keepAlive(presence, "presence");
    await opened(presence);
    dial();
    return self;
  }
  return { join, state: () => JSON.parse(JSON.stringify(state)) };
})();
`;

const { values: args } = parseArgs({
  options: { host: { type: "string" }, port: { type: "string" }, room: { type: "string" }, verbose: { type: "boolean" } },
});
if (!args.host || !args.port || !args.room) {
  console.error("usage: node tests/node/room-fault.mjs --host HOST --port PORT --room ROOM");
  process.exit(2);
}
const state = {};
let done = false;
process.stdin.on("end", () => { done = true; });
process.stdin.resume();
try {
  const { page, consoleErrors } = await openPeerjsPage(state, "kibitz room participant", PAGE_JS);
  // --verbose: peerjs's own log (every server message), stamped with the wall clock.
  if (args.verbose) page.on("console", (m) => console.log(`console ${new Date().toISOString()} ${m.text().replace(/\s+/g, " ").slice(0, 300)}`));
  const opts = { host: args.host, port: Number(args.port), path: "/", secure: false, debug: args.verbose ? 3 : 0, config: { iceServers: [] } };
  const id = await page.evaluate(([o, r]) => M.join(o, r), [opts, args.room]);
  console.log(`voice ${id}`);
  let last = {};
  while (!done) {
    const s = await page.evaluate(() => M.state());
    if (s.status !== last.status) console.log(`status ${s.status}`);
    const names = s.names.join(", ");
    if (names !== (last.names ?? []).join(", ")) console.log(`roster ${names}`);
    for (const [which, up] of Object.entries(s.broker)) {
      if (up !== (last.broker ?? {})[which]) console.log(`broker ${up} ${which}`);
    }
    last = s;
    await new Promise((r) => setTimeout(r, 100));
  }
  if (consoleErrors.length) console.error(`console errors: ${[...new Set(consoleErrors)].slice(0, 5).join(" | ")}`);
} catch (err) {
  console.log(`failed ${String(err?.message ?? err).split("\n")[0]}`);
} finally {
  await state.browser?.close().catch(() => {});
  state.server?.close();
  state.server?.closeAllConnections();
  process.exit(0);
}
