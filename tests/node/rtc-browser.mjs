#!/usr/bin/env node
// The official peerjs@1.5.5 client in headless Chromium against a Rust peer (kibitz-rtc),
// through the broker at --host/--port: BinaryPack and JSON DataConnections in both offer
// directions, including a message large enough to be chunked. Run by tests/tests/rtc_browser.rs,
// which starts the broker and the Rust peer (--rust ID). The Rust peer echoes what a browser-
// offered connection carries; asked to `call`, it offers a connection, sends a known set of
// messages, checks the echoes and sends "ok" (or what differed). With --turn-url, --turn-user
// and --turn-pass the page is relay-only (iceTransportPolicy "relay") and every scenario also
// checks that the selected candidate pair is relayed on the browser's side.
import { parseArgs } from "node:util";
import { openPeerjsPage, pageErrorMessage, runScenarios, withTimeout } from "./chromium.mjs";

// In-page helpers (window.R).
const PAGE_JS = `"use strict";
window.R = (() => {
  let peer = null;
  const waiting = [];
  const arrived = [];
  const ctrl = {};

  function withTimeout(p, ms, what) {
    let t;
    return Promise.race([p, new Promise((_, rej) => { t = setTimeout(() => rej(new Error("timed out waiting for " + what)), ms); })])
      .finally(() => clearTimeout(t));
  }
  function once(em, ev, what) {
    return withTimeout(new Promise((res, rej) => {
      em.once(ev, res);
      em.once("error", (e) => rej(new Error("error while waiting for " + what + ": " + (e && e.type ? e.type + ": " : "") + (e && e.message))));
    }), 15000, what);
  }
  function pattern(n) {
    const b = new Uint8Array(n);
    for (let i = 0; i < n; i++) b[i] = (i * 31 + (i >> 8)) & 0xff;
    return b;
  }
  function expected(serialization) {
    const base = ["hello from rust \\u2713", { n: 42, f: -1.5, t: true, nil: null, list: [1, "two"] }];
    return serialization === "binary" ? [...base, pattern(40000)] : base;
  }
  function bytes(x) {
    if (x instanceof ArrayBuffer) return new Uint8Array(x);
    if (ArrayBuffer.isView(x)) return new Uint8Array(x.buffer, x.byteOffset, x.byteLength);
    return null;
  }
  function same(a, b) {
    const ba = bytes(a), bb = bytes(b);
    if (ba || bb) return !!ba && !!bb && ba.length === bb.length && ba.every((v, i) => v === bb[i]);
    if (Array.isArray(a)) return Array.isArray(b) && a.length === b.length && a.every((v, i) => same(v, b[i]));
    if (a && typeof a === "object") {
      if (!b || typeof b !== "object") return false;
      const ka = Object.keys(a), kb = Object.keys(b);
      return ka.length === kb.length && ka.every((k) => same(a[k], b[k]));
    }
    return a === b;
  }
  function show(x) {
    const b = bytes(x);
    if (b) return "<" + b.length + " bytes>";
    const s = JSON.stringify(x);
    return s && s.length > 80 ? s.slice(0, 80) + "..." : s;
  }
  function inbox(conn) {
    const items = [], takers = [];
    conn.on("data", (d) => { const t = takers.shift(); if (t) t(d); else items.push(d); });
    return {
      next: (what) => items.length ? Promise.resolve(items.shift())
        : withTimeout(new Promise((res) => takers.push(res)), 15000, what),
    };
  }
  function nextConnection() {
    if (arrived.length) return Promise.resolve(arrived.shift());
    return withTimeout(new Promise((res) => waiting.push(res)), 15000, "incoming connection");
  }
  async function open(id, opts) {
    peer = new peerjs.Peer(id, opts);
    peer.on("connection", (c) => { const w = waiting.shift(); if (w) w(c); else arrived.push(c); });
    await once(peer, "open", "peer open");
  }
  async function browserOffers(rustId, serialization) {
    const conn = peer.connect(rustId, { serialization, reliable: true });
    const t0 = performance.now();
    await once(conn, "open", serialization + " connection open");
    const openMs = performance.now() - t0;
    const box = inbox(conn);
    conn.box = box;
    const msgs = expected(serialization);
    for (const m of msgs) {
      conn.send(m);
      const got = await box.next("echo of " + show(m));
      if (!same(got, m)) throw new Error("echo differs: sent " + show(m) + ", got " + show(got));
    }
    ctrl[serialization] = conn;
    return "open " + openMs.toFixed(0) + " ms" + (await checkRelay(conn));
  }
  async function rustOffers(serialization) {
    const via = ctrl[serialization];
    if (!via) throw new Error("no control connection (the browser-offers scenario failed)");
    const incoming = nextConnection();
    via.send({ cmd: "call", serialization });
    const conn = await incoming;
    if (conn.serialization !== serialization) throw new Error("offer came with serialization " + conn.serialization);
    const box = inbox(conn);
    if (!conn.open) await once(conn, "open", "rust-offered connection open");
    for (const want of expected(serialization)) {
      const got = await box.next("rust message " + show(want));
      if (!same(got, want)) throw new Error("rust sent " + show(got) + ", expected " + show(want));
      conn.send(got);
    }
    const verdict = await box.next("rust verdict");
    if (verdict !== "ok") throw new Error("rust says: " + show(verdict));
    return "label " + conn.label + (await checkRelay(conn));
  }
  // "local/remote" candidate types of the selected pair. Data can flow before getStats reports
  // the selection (seen under load), so poll until the transport names its selected pair.
  async function pairTypes(conn) {
    const deadline = performance.now() + 15000;
    for (;;) {
      const stats = await conn.peerConnection.getStats();
      let pair = null;
      stats.forEach((r) => { if (r.type === "transport" && r.selectedCandidatePairId) pair = stats.get(r.selectedCandidatePairId) || pair; });
      if (!pair) stats.forEach((r) => { if (r.type === "candidate-pair" && r.state === "succeeded" && r.nominated) pair = r; });
      if (pair) {
        const l = stats.get(pair.localCandidateId), r = stats.get(pair.remoteCandidateId);
        return (l && l.candidateType) + "/" + (r && r.candidateType);
      }
      if (performance.now() > deadline) return "no pair";
      await new Promise((res) => setTimeout(res, 50));
    }
  }
  async function checkRelay(conn) {
    if (!window.RELAY) return "";
    const types = await pairTypes(conn);
    if (!types.startsWith("relay/")) throw new Error("selected pair is " + types + ", not relayed");
    return ", pair " + types;
  }
  function destroy() { if (peer) peer.destroy(); }
  return { open, browserOffers, rustOffers, destroy };
})();
`;

const SCENARIOS = [
  ["browser offers binary: string, object, 40000-byte Uint8Array (chunked) echoed", (p) => p.evaluate(() => R.browserOffers(window.RUST, "binary"))],
  ["browser offers json: string and object echoed", (p) => p.evaluate(() => R.browserOffers(window.RUST, "json"))],
  ["rust offers binary: string, object, 40000-byte binary (chunked) both ways", (p) => p.evaluate(() => R.rustOffers("binary"))],
  ["rust offers json: string and object both ways", (p) => p.evaluate(() => R.rustOffers("json"))],
];

async function main(args, state) {
  const { page, consoleErrors } = await openPeerjsPage(state, "kibitz-rtc interop", PAGE_JS);
  const browserId = `browser-${Math.random().toString(36).slice(2, 10)}`;
  await page.evaluate(([rust, relay]) => { window.RUST = rust; window.RELAY = relay; }, [args.rust, !!args["turn-url"]]);
  const config = args["turn-url"]
    ? { iceServers: [{ urls: [args["turn-url"]], username: args["turn-user"], credential: args["turn-pass"] }], iceTransportPolicy: "relay" }
    : { iceServers: [] };
  await withTimeout(
    page.evaluate(([id, opts]) => R.open(id, opts), [browserId, {
      host: args.host, port: Number(args.port), path: "/", secure: false, debug: 1, config,
    }]),
    15000,
    "browser peer open",
  );
  for (const [name, run] of SCENARIOS) {
    const firstError = consoleErrors.length;
    try {
      const detail = await withTimeout(run(page), 30000, name);
      state.report(name, null, detail);
    } catch (err) {
      const logged = [...new Set(consoleErrors.slice(firstError))].slice(0, 3);
      state.report(name, pageErrorMessage(err) + (logged.length ? ` [console: ${logged.join(" | ")}]` : ""));
    }
  }
  await withTimeout(page.evaluate(() => R.destroy()), 5000, "teardown").catch(() => {});
}

const { values } = parseArgs({
  options: {
    host: { type: "string" }, port: { type: "string" }, rust: { type: "string" },
    "turn-url": { type: "string" }, "turn-user": { type: "string" }, "turn-pass": { type: "string" },
  },
});
if (!values.host || !values.port || !values.rust) {
  console.error("usage: node tests/node/rtc-browser.mjs --host HOST --port PORT --rust RUST_PEER_ID");
  process.exit(2);
}
runScenarios(SCENARIOS.map(([n]) => n), 150_000, (state) => main(values, state)).catch((err) => {
  console.error("harness crashed:", err);
  process.exit(1);
});
