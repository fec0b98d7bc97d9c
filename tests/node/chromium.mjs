// Shared by the browser tests: Debian's Chromium under playwright-core, a page server on
// 127.0.0.1:0, and error/timeout helpers.
import { readFile } from "node:fs/promises";
import http from "node:http";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";

const require = createRequire(import.meta.url);
const { chromium } = require("playwright-core");

const CHROMIUM = "/usr/bin/chromium";
const CHROMIUM_ARGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  // Peers, brokers and coturn are all on 127.0.0.1: Chromium drops loopback candidates, hides
  // local IPs behind mDNS names, and gathers nothing on loopback-only hosts without these.
  "--allow-loopback-in-peer-connection",
  "--disable-features=WebRtcHideLocalIpsWithMdns",
];

/** Headless Debian Chromium with the flags loopback WebRTC needs. */
export function launchChromium() {
  return chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });
}

/** Serves `files` ({path: {type, body}}) on 127.0.0.1:0; resolves to the listening server. */
export async function startPageServer(files) {
  const server = http.createServer((req, res) => {
    const file = files[new URL(req.url, "http://x").pathname];
    res.writeHead(file ? 200 : 404, { "content-type": file?.type ?? "text/plain", "cache-control": "no-store" });
    res.end(file?.body ?? "not found");
  });
  await new Promise((resolve, reject) => server.once("error", reject).listen(0, "127.0.0.1", resolve));
  return server;
}

/**
 * Serves a page that loads the official peerjs build and `pageJs`, opens it in Chromium and
 * collects what the page logs as errors. Sets `state.server` and `state.browser` (closed by
 * runScenarios); resolves to `{ page, consoleErrors }`.
 */
export async function openPeerjsPage(state, title, pageJs) {
  const html = `<!doctype html>
<meta charset="utf-8">
<link rel="icon" href="data:,">
<title>${title}</title>
<script src="/peerjs.min.js"></script>
<script src="/page.js"></script>
`;
  const peerjs = await readFile(fileURLToPath(new URL("./node_modules/peerjs/dist/peerjs.min.js", import.meta.url)));
  state.server = await startPageServer({
    "/": { type: "text/html", body: html },
    "/peerjs.min.js": { type: "text/javascript", body: peerjs },
    "/page.js": { type: "text/javascript", body: pageJs },
  });
  state.browser = await launchChromium();
  const page = await (await state.browser.newContext()).newPage();
  const consoleErrors = [];
  page.on("console", (msg) => msg.type() === "error" && consoleErrors.push(oneLine(msg.text())));
  page.on("pageerror", (err) => consoleErrors.push(`uncaught: ${oneLine(err.message)}`));
  await page.goto(`http://127.0.0.1:${state.server.address().port}/`);
  return { page, consoleErrors };
}

export function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} timed out after ${ms / 1000} s`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

export function oneLine(text) {
  return String(text).replace(/\s+/g, " ").trim();
}

/** Playwright prefixes errors thrown in the page with its call and appends the page stack. */
export function pageErrorMessage(err) {
  const [first, ...rest] = String(err?.message ?? err).split("\n");
  const message = [first, ...rest.filter((line) => !/^\s+at /.test(line))].join(" ");
  return oneLine(message).replace(/^page\.evaluate: (Error: )?/, "");
}

async function closeAll(state) {
  const closeServer = () =>
    new Promise((resolve) => {
      if (!state.server) return resolve();
      state.server.close(resolve);
      state.server.closeAllConnections();
    });
  await Promise.allSettled([
    state.browser && withTimeout(state.browser.close(), 10_000, "browser close"),
    withTimeout(closeServer(), 5000, "page server close"),
  ]);
}

/**
 * The scenario harness every browser test shares: runs `main(state)` within `overallMs`;
 * `state.report(name, failure, detail?)` prints `ok - name` or `not ok - name: failure` once per
 * scenario; names that never reported are printed as not run; `state.browser` and
 * `state.server` are closed; then `N passed, M failed`, and the process exits 0 only if every
 * scenario passed.
 */
export async function runScenarios(names, overallMs, main) {
  const results = new Map();
  const state = {
    report(name, failure, detail) {
      if (results.has(name)) return;
      results.set(name, failure);
      console.log(failure === null ? `ok - ${name}${detail ? ` (${detail})` : ""}` : `not ok - ${name}: ${failure}`);
    },
  };
  let fatal = null;
  try {
    await withTimeout(main(state), overallMs, "whole run");
  } catch (err) {
    fatal = oneLine(err?.stack?.split("\n")[0] ?? err);
  }
  for (const name of names) {
    if (!results.has(name)) state.report(name, `not run (${fatal ?? "aborted"})`);
  }
  await closeAll(state);
  const failed = [...results.values()].filter((f) => f !== null).length;
  console.log(`${results.size - failed} passed, ${failed} failed`);
  process.exit(failed === 0 && fatal === null ? 0 : 1);
}
