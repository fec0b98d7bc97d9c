#!/usr/bin/env node
// Browser hub clients (LAN.md §3–4, §7) driven over NDJSON: each page is a Kibitz web client's
// hub link (hub-page.js, window.H), connected to `kibitz hub` with nothing but the blob. Driven
// by tests/tests/lan_pages.rs; bench/hub.sh uses the same pages (hub-bench.mjs).
//
// Protocol: one JSON object per line on stdin, one per line on stdout.
//   first line out:                               {"ready":true}
//   {"id":1,"op":"open","page":"a"}               a page (own browser context) in the shared Chromium
//   {"id":1,"op":"open","page":"k","own":true}    a page in a Chromium of its own (so "kill" can
//                                                 take that browser away whole)
//   {"id":2,"op":"close","page":"a"}              H.close() (pc.close(): SCTP ABORT), then the context
//   {"id":3,"op":"kill","page":"k"}               SIGKILL to the page's own Chromium process group:
//                                                 the browser vanishes mid-session, nothing is sent
//   {"id":4,"page":"a","call":"connect","args":[blob]}  awaits H.connect(...args) in the page
//                                        -> {"id":4,"ok":true,"value":<result>} | {"id":4,"ok":false,"error":"..."}
//   events (no id): {"ev":"frame","page":"a","text":"…"} every hub frame (or "binary":len),
//                   {"ev":"close","page":"a"} the hub channel closed, {"ev":"state",…},
//                   {"ev":"link"|"content"|"content-open"|"sig-error","page":"a","peer":N,…}
// Requests run concurrently; answers carry the request's id. Closing stdin closes everything
// and exits 0.
import { readFile } from "node:fs/promises";
import { createRequire } from "node:module";
import readline from "node:readline";
import { fileURLToPath, pathToFileURL } from "node:url";
import { oneLine, pageErrorMessage, startPageServer, withTimeout } from "./chromium.mjs";

const require = createRequire(import.meta.url);
const { chromium } = require("playwright-core");

// chromium.mjs's flags (loopback WebRTC: the hub is on 127.0.0.1) plus no throttling of pages
// Chromium thinks are in the background: many pages share one headless browser.
const ARGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--allow-loopback-in-peer-connection",
  "--disable-features=WebRtcHideLocalIpsWithMdns",
  "--disable-background-timer-throttling",
  "--disable-renderer-backgrounding",
  "--disable-backgrounding-occluded-windows",
];
const CALL_TIMEOUT_MS = 60_000;

/**
 * The shared machinery: a page server, one Chromium, and named pages whose events go to
 * `onEvent(ev)`. Used by this harness and by hub-bench.mjs.
 */
export async function startHubPages(onEvent) {
  const here = (f) => fileURLToPath(new URL(f, import.meta.url));
  const html = `<!doctype html>
<meta charset="utf-8">
<link rel="icon" href="data:,">
<title>kibitz hub client</title>
<script src="/hub-page.js"></script>
`;
  const server = await startPageServer({
    "/": { type: "text/html", body: html },
    "/hub-page.js": { type: "text/javascript", body: await readFile(here("./hub-page.js")) },
  });
  const url = `http://127.0.0.1:${server.address().port}/`;
  const launch = () => chromium.launch({ executablePath: "/usr/bin/chromium", headless: true, args: ARGS });
  const shared = await launch();
  const pages = new Map(); // name -> {page, context, errors, own?: BrowserServer}

  async function open(name, own) {
    if (pages.has(name)) throw new Error(`page ${name} is already open`);
    let browser = shared;
    let server = null;
    if (own) {
      // A browser server exposes its process: "kill" needs the pid of a browser of its own.
      server = await chromium.launchServer({ executablePath: "/usr/bin/chromium", headless: true, args: ARGS });
      browser = await chromium.connect(server.wsEndpoint());
    }
    const context = await browser.newContext();
    const page = await context.newPage();
    const entry = { page, context, errors: [], own: server, browser: own ? browser : null };
    pages.set(name, entry);
    page.on("console", (m) => m.type() === "error" && entry.errors.push(oneLine(m.text())));
    page.on("pageerror", (e) => entry.errors.push(`uncaught: ${oneLine(e.message)}`));
    await page.exposeFunction("kbzEvent", (ev) => onEvent({ ...ev, page: name }));
    await page.goto(url);
    return null;
  }
  function get(name) {
    const p = pages.get(name);
    if (!p) throw new Error(`no page ${name}`);
    return p;
  }
  async function close(name) {
    const p = get(name);
    pages.delete(name);
    await withTimeout(p.page.evaluate(() => window.H.close()), 5000, "close").catch(() => {});
    await p.context.close().catch(() => {});
    if (p.own) await p.own.close().catch(() => {});
    return null;
  }
  async function kill(name) {
    const p = get(name);
    if (!p.own) throw new Error(`page ${name} has no browser of its own (open it with "own": true)`);
    pages.delete(name);
    // Playwright starts Chromium as a process-group leader: the whole browser (browser,
    // renderer, network service) dies at once, so no SCTP ABORT or DTLS close_notify leaves.
    const pid = p.own.process().pid;
    process.kill(-pid, "SIGKILL");
    await new Promise((resolve) => (p.own.process().exitCode !== null || p.own.process().signalCode ? resolve() : p.own.process().once("exit", resolve)));
    return { pid };
  }
  async function call(name, method, args, timeoutMs) {
    const p = get(name);
    return withTimeout(
      p.page.evaluate(
        ([m, a]) => {
          if (typeof window.H[m] !== "function") throw new Error(`no method H.${m}`);
          return window.H[m](...a);
        },
        [method, Array.isArray(args) ? args : []],
      ),
      timeoutMs ?? CALL_TIMEOUT_MS,
      `${name}.${method}`,
    );
  }
  async function shutdown() {
    await withTimeout(Promise.allSettled([...pages.keys()].map((n) => close(n))), 10_000, "page close").catch(() => {});
    await withTimeout(shared.close(), 10_000, "browser close").catch(() => {});
    await new Promise((resolve) => {
      server.close(resolve);
      server.closeAllConnections();
    });
  }
  return { open, close, kill, call, get, shutdown, pages };
}

async function main() {
  const write = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
  const h = await startHubPages(write);
  async function handle(req) {
    if (req.op === "open") return h.open(req.page, !!req.own);
    if (req.op === "close") return h.close(req.page);
    if (req.op === "kill") return h.kill(req.page);
    if (req.op === "console") return h.get(req.page).errors.slice();
    if (typeof req.call === "string") return h.call(req.page, req.call, req.args, req.timeoutMs);
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
  await h.shutdown();
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().then(
    () => process.exit(0),
    (err) => {
      console.error("hub-pages crashed:", err);
      process.stdout.write(JSON.stringify({ fatal: oneLine(err?.stack ?? err) }) + "\n");
      process.exit(1);
    },
  );
}
