// Shared by the browser tests: Debian's Chromium under playwright-core, a page server on
// 127.0.0.1:0, and error/timeout helpers.
import http from "node:http";
import { createRequire } from "node:module";

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
