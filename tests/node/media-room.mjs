#!/usr/bin/env node
// Browser room members with media, driven step by step over NDJSON (MEDIA.md §7): one headless
// Chromium with a fake camera and the --wav file as its fake microphone; each page is a Kibitz
// web-client member (media-page.js, window.M) on the official peerjs@1.5.5 against the broker
// at --host/--port. Driven by tests/tests/media_support (Rust).
//
// Protocol: one JSON object per line on stdin, one per line on stdout.
//   first line out:                      {"ready":true}
//   {"id":1,"op":"open","page":"alice"}  opens page "alice"         -> {"id":1,"ok":true,"value":null}
//   {"id":2,"op":"close","page":"alice"} closes it (M.leave() first) -> {"id":2,"ok":true,"value":null}
//   {"id":3,"op":"console","page":"alice"} what the page logged as errors, and M.log()
//   {"id":4,"page":"alice","call":"join","args":[{...}]}  awaits M.join(...args) in the page
//                                        -> {"id":4,"ok":true,"value":<result>} | {"id":4,"ok":false,"error":"..."}
// Requests run concurrently; answers carry the request's id. Closing stdin closes Chromium and
// exits 0.
import { readFile } from "node:fs/promises";
import { createRequire } from "node:module";
import readline from "node:readline";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { oneLine, pageErrorMessage, startPageServer, withTimeout } from "./chromium.mjs";

const require = createRequire(import.meta.url);
const { chromium } = require("playwright-core");

// chromium.mjs's flags (loopback WebRTC) plus MEDIA.md §7's fake devices; timers of pages that
// Chromium thinks are in the background must not be throttled (the heartbeats are 2 s).
const chromiumArgs = (wav) => [
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
  `--use-file-for-fake-audio-capture=${wav}`,
  "--autoplay-policy=no-user-gesture-required",
  "--disable-background-timer-throttling",
  "--disable-renderer-backgrounding",
  "--disable-backgrounding-occluded-windows",
];

const CALL_TIMEOUT_MS = 60_000;

const { values: args } = parseArgs({ options: { host: { type: "string" }, port: { type: "string" }, wav: { type: "string" } } });
if (!args.host || !args.port || !args.wav) {
  console.error("usage: node tests/node/media-room.mjs --host HOST --port PORT --wav FILE");
  process.exit(2);
}

const write = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");

async function main() {
  const here = (f) => fileURLToPath(new URL(f, import.meta.url));
  const html = `<!doctype html>
<meta charset="utf-8">
<link rel="icon" href="data:,">
<title>kibitz media member</title>
<script>window.KBZ_BROKER = ${JSON.stringify({ host: args.host, port: Number(args.port) })};</script>
<script src="/peerjs.min.js"></script>
<script src="/media-page.js"></script>
`;
  const server = await startPageServer({
    "/": { type: "text/html", body: html },
    "/peerjs.min.js": { type: "text/javascript", body: await readFile(here("./node_modules/peerjs/dist/peerjs.min.js")) },
    "/media-page.js": { type: "text/javascript", body: await readFile(here("./media-page.js")) },
  });
  const url = `http://127.0.0.1:${server.address().port}/`;
  const browser = await chromium.launch({ executablePath: "/usr/bin/chromium", headless: true, args: chromiumArgs(args.wav) });
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
      await withTimeout(p.page.evaluate(() => window.M.leave()), 5000, "leave").catch(() => {});
      await p.context.close();
      return null;
    }
    if (req.op === "console") {
      const p = get(req.page);
      const log = await p.page.evaluate(() => window.M.log()).catch(() => []);
      return { errors: p.errors.slice(), log };
    }
    if (typeof req.call === "string") {
      const p = get(req.page);
      const callArgs = Array.isArray(req.args) ? req.args : [];
      return withTimeout(
        p.page.evaluate(([m, a]) => {
          if (typeof window.M[m] !== "function") throw new Error(`no method M.${m}`);
          return window.M[m](...a);
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
  // stdin closed: finish what is running, leave every room, close everything.
  await withTimeout(Promise.allSettled([...inflight]), 10_000, "requests in flight").catch(() => {});
  await withTimeout(
    Promise.allSettled([...pages.values()].map((p) => p.page.evaluate(() => window.M.leave()))),
    5000,
    "leave",
  ).catch(() => {});
  await withTimeout(browser.close(), 10_000, "browser close").catch(() => {});
  await new Promise((resolve) => {
    server.close(resolve);
    server.closeAllConnections();
  });
}

main().then(
  () => process.exit(0),
  (err) => {
    console.error("media-room crashed:", err);
    write({ fatal: oneLine(err?.stack ?? err) });
    process.exit(1);
  },
);
