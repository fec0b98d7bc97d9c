#!/usr/bin/env node
// Browser members of an offline (LAN) room, driven step by step over NDJSON: one headless
// Chromium with fake camera and microphone; each page runs lan-page.js (window.L, the web
// client's LAN layer) against a `kibitz hub` given by blob. Driven by tests/tests/lan_join.rs.
//
// Protocol: one JSON object per line on stdin, one per line on stdout.
//   first line out:                               {"ready":true}
//   {"id":1,"op":"open","page":"alice"}           opens page "alice"      -> {"id":1,"ok":true,"value":null}
//   {"id":2,"op":"close","page":"alice","bye":b}  L.leave() first if b, then closes the page
//   {"id":3,"op":"log","page":"alice"}            page errors and L.log()
//   {"id":4,"page":"alice","call":"connect","args":[...]}  awaits L.connect(...args)
// Requests run concurrently; answers carry the request's id. Closing stdin closes Chromium.
import { readFile } from "node:fs/promises";
import { createRequire } from "node:module";
import readline from "node:readline";
import { fileURLToPath } from "node:url";
import { oneLine, pageErrorMessage, startPageServer, withTimeout } from "./chromium.mjs";

const require = createRequire(import.meta.url);
const { chromium } = require("playwright-core");

// chromium.mjs's loopback WebRTC flags, fake devices (browsers' LAN links carry audio and
// video), and no throttling of background pages' timers (the beacon is 2.5 s).
const CHROMIUM_ARGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--allow-loopback-in-peer-connection",
  "--disable-features=WebRtcHideLocalIpsWithMdns",
  "--use-fake-device-for-media-stream",
  "--use-fake-ui-for-media-stream",
  "--disable-background-timer-throttling",
  "--disable-renderer-backgrounding",
  "--disable-backgrounding-occluded-windows",
];
const CALL_TIMEOUT_MS = 60_000;

const write = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");

async function main() {
  const here = (f) => fileURLToPath(new URL(f, import.meta.url));
  const html = `<!doctype html>
<meta charset="utf-8">
<link rel="icon" href="data:,">
<title>kibitz lan member</title>
<script src="/lan-page.js"></script>
`;
  const server = await startPageServer({
    "/": { type: "text/html", body: html },
    "/lan-page.js": { type: "text/javascript", body: await readFile(here("./lan-page.js")) },
  });
  const url = `http://127.0.0.1:${server.address().port}/`;
  const browser = await chromium.launch({ executablePath: "/usr/bin/chromium", headless: true, args: CHROMIUM_ARGS });
  const pages = new Map(); // name -> {page, context, errors}

  async function open(name) {
    if (pages.has(name)) throw new Error(`page ${name} is already open`);
    const context = await browser.newContext({ permissions: ["microphone", "camera"] });
    const page = await context.newPage();
    const errors = [];
    page.on("console", (m) => m.type() === "error" && errors.push(oneLine(m.text())));
    page.on("pageerror", (e) => errors.push(`uncaught: ${oneLine(e.message)}`));
    pages.set(name, { page, context, errors });
    await page.goto(url);
    return null;
  }
  function get(name) {
    const p = pages.get(name);
    if (!p) throw new Error(`no page ${name}`);
    return p;
  }
  async function handle(req) {
    if (req.op === "open") return open(req.page);
    if (req.op === "close") {
      const p = get(req.page);
      pages.delete(req.page);
      if (req.bye) {
        try {
          await withTimeout(p.page.evaluate(() => window.L.leave()), 5000, "leave");
        } catch (e) {
          const log = await p.page.evaluate(() => window.L.log()).catch(() => []);
          throw new Error(`${pageErrorMessage(e)}; page log: ${JSON.stringify(log)}`);
        }
      }
      await p.context.close();
      return null;
    }
    if (req.op === "log") {
      const p = get(req.page);
      const log = await p.page.evaluate(() => window.L.log()).catch(() => []);
      return { errors: p.errors.slice(), log };
    }
    if (typeof req.call === "string") {
      const p = get(req.page);
      const callArgs = Array.isArray(req.args) ? req.args : [];
      return withTimeout(
        p.page.evaluate(([m, a]) => {
          if (typeof window.L[m] !== "function") throw new Error(`no method L.${m}`);
          return window.L[m](...a);
        }, [req.call, callArgs]),
        req.timeoutMs ?? CALL_TIMEOUT_MS,
        `${req.page}.${req.call}`,
      );
    }
    throw new Error(`unknown request ${JSON.stringify(req)}`);
  }

  write({ ready: true });
  const rl = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
  const inflight = new Set();
  for await (const line of rl) {
    if (!line.trim()) continue;
    let req;
    try {
      req = JSON.parse(line);
    } catch (e) {
      write({ id: null, ok: false, error: `bad JSON: ${e.message}` });
      continue;
    }
    const job = handle(req)
      .then((value) => write({ id: req.id, ok: true, value: value === undefined ? null : value }))
      .catch((err) => write({ id: req.id, ok: false, error: pageErrorMessage(err) }))
      .finally(() => inflight.delete(job));
    inflight.add(job);
  }
  await withTimeout(Promise.allSettled([...inflight]), 10_000, "requests in flight").catch(() => {});
  await withTimeout(browser.close(), 10_000, "browser close").catch(() => {});
  await new Promise((resolve) => {
    server.close(resolve);
    server.closeAllConnections();
  });
}

main().then(
  () => process.exit(0),
  (err) => {
    console.error("lan-room crashed:", err);
    write({ fatal: oneLine(err?.stack ?? err) });
    process.exit(1);
  },
);
