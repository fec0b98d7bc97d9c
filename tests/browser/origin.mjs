#!/usr/bin/env node
// The broker's Origin allow-list as browsers meet it: the official peerjs@1.5.5 client in
// headless Chromium, on a page from an allowed origin and on a page from another origin (the
// pages are served by the caller; an origin includes its port). Run by
// tests/tests/proxies.rs against `kibitz serve --cors-origin <allowed page's origin>`.
//
//   node tests/browser/origin.mjs --broker-port P --allowed http://127.0.0.1:A/ --other http://127.0.0.1:B/
import { parseArgs } from "node:util";
import { launchChromium, oneLine, pageErrorMessage, runScenarios, withTimeout } from "../node/chromium.mjs";

const { values } = parseArgs({
  options: {
    "broker-port": { type: "string" },
    allowed: { type: "string" },
    other: { type: "string" },
  },
});
const port = Number(values["broker-port"]);
if (!Number.isInteger(port) || !values.allowed || !values.other) {
  console.error("usage: node tests/browser/origin.mjs --broker-port P --allowed URL --other URL");
  process.exit(2);
}

const SCENARIO_MS = 20_000;
const NAMES = [
  "allowed origin: the official peerjs client opens",
  "allowed origin: a plain WebSocket opens",
  "other origin: the peerjs client gets an error and never opens",
  "other origin: a plain WebSocket is refused before it opens",
];

// In-page: opens a peer with an explicit id (no id fetch, so the WebSocket is the first
// request) and resolves to "open:<id>" or "error:<type>".
function peerOutcome({ port, id }) {
  return new Promise((resolve) => {
    const peer = new peerjs.Peer(id, {
      host: "127.0.0.1", port, path: "/", key: "peerjs", secure: false, debug: 0,
      config: { iceServers: [] },
    });
    const done = (what) => { resolve(what); peer.destroy(); };
    peer.on("open", (got) => done(`open:${got}`));
    peer.on("error", (err) => done(`error:${err.type}`));
    setTimeout(() => done("nothing within 15 s"), 15_000);
  });
}

// In-page: a bare WebSocket to the broker; resolves to "open" or "closed:<code>".
function socketOutcome({ port, id }) {
  return new Promise((resolve) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/peerjs?key=peerjs&id=${id}&token=t&version=1.5.5`);
    ws.onopen = () => { resolve("open"); ws.close(); };
    ws.onclose = (e) => resolve(`closed:${e.code}`);
    setTimeout(() => resolve("nothing within 15 s"), 15_000);
  });
}

async function openPage(browser, url) {
  const page = await (await browser.newContext()).newPage();
  const errors = [];
  page.on("pageerror", (err) => errors.push(oneLine(err.message)));
  await page.goto(url);
  await page.waitForFunction(() => typeof peerjs !== "undefined", null, { timeout: 10_000 });
  return { page, errors };
}

async function scenario(state, name, run) {
  try {
    const detail = await withTimeout(run(), SCENARIO_MS, name);
    state.report(name, null, detail);
  } catch (err) {
    state.report(name, pageErrorMessage(err));
  }
}

const tag = Math.random().toString(36).slice(2, 10);

runScenarios(NAMES, 90_000, async (state) => {
  state.browser = await launchChromium();
  const allowed = await openPage(state.browser, values.allowed);
  const other = await openPage(state.browser, values.other);

  await scenario(state, NAMES[0], async () => {
    const id = `origin-ok-${tag}`;
    const got = await allowed.page.evaluate(peerOutcome, { port, id });
    if (got !== `open:${id}`) throw new Error(`got ${got}`);
    return got;
  });
  await scenario(state, NAMES[1], async () => {
    const got = await allowed.page.evaluate(socketOutcome, { port, id: `origin-ws-${tag}` });
    if (got !== "open") throw new Error(`got ${got}`);
    return got;
  });
  await scenario(state, NAMES[2], async () => {
    const got = await other.page.evaluate(peerOutcome, { port, id: `origin-no-${tag}` });
    if (!got.startsWith("error:")) throw new Error(`got ${got}`);
    return got;
  });
  await scenario(state, NAMES[3], async () => {
    const got = await other.page.evaluate(socketOutcome, { port, id: `origin-ws-no-${tag}` });
    // A refused handshake is an abnormal closure (1006) without an open event.
    if (got !== "closed:1006") throw new Error(`got ${got}`);
    return got;
  });
}).catch((err) => {
  console.error("harness crashed:", err);
  process.exit(1);
});
