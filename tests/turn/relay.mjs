#!/usr/bin/env node
// TURN relay test in headless Chromium (TURN.md §3): a page on its own origin fetches
// iceServers from /api/turn (--api, cross-origin, so the API's CORS matters) and connects two
// relay-only RTCPeerConnections through a TURN server (coturn, or the embedded relay with
// `--transports udp`); with credentials it refuses (each --bad-api) it must see
// icecandidateerror 401 and never connect. Page helpers: page.js (window.T).
//
//   node tests/turn/relay.mjs --api http://127.0.0.1:P/api/turn \
//        --bad-api http://127.0.0.1:Q/api/turn --relay-ports MIN-MAX [--transports udp]
//
// Prints `ok - …` / `not ok - …: reason` per scenario and `N passed, M failed`; exit 0 only if
// everything passed.
import { readFile } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import {
  launchChromium,
  oneLine,
  pageErrorMessage,
  startPageServer as servePages,
  runScenarios,
  withTimeout,
} from "../node/chromium.mjs";

const here = (rel) => fileURLToPath(new URL(rel, import.meta.url));

const SCENARIO_TIMEOUT_MS = 30_000;
const OVERALL_TIMEOUT_MS = 120_000;
// How long the bad-credential peers are watched after gathering, for a connection that must not come.
const SETTLE_MS = 3_000;

const PAGE_HTML = `<!doctype html>
<meta charset="utf-8">
<link rel="icon" href="data:,">
<title>kibitz turn relay</title>
<script src="/page.js"></script>
`;

function parseCli() {
  const { values } = parseArgs({
    options: {
      api: { type: "string" },
      "bad-api": { type: "string", multiple: true },
      "relay-ports": { type: "string" },
      transports: { type: "string" },
    },
  });
  const range = /^(\d+)-(\d+)$/.exec(values["relay-ports"] ?? "");
  if (!values.api || !values["bad-api"]?.length || !range) {
    console.error("usage: node tests/turn/relay.mjs --api URL --bad-api URL [--bad-api URL…] --relay-ports MIN-MAX [--transports udp,tcp]");
    process.exit(2);
  }
  const transports = (values.transports ?? "udp,tcp").split(",");
  return { api: values.api, badApis: values["bad-api"], relayPorts: [Number(range[1]), Number(range[2])], transports };
}

// Each runs T[fn](args) in the page.
const scenarios = (opts) => [
  {
    name: `page fetches /api/turn cross-origin and gathers only relay candidates, via ${opts.transports.map((t) => `TURN/${t.toUpperCase()}`).join(" and ")}`,
    fn: "gather",
    args: { apiUrl: opts.api, relayPorts: opts.relayPorts, transports: opts.transports },
  },
  {
    name: "two relay-only peers connect through the TURN server, exchange data-channel messages, selected pair relay<->relay",
    fn: "connect",
    args: { apiUrl: opts.api, relayPorts: opts.relayPorts },
  },
  ...opts.badApis.map((badApi, i) => ({
    name: `credentials the TURN server refuses${opts.badApis.length > 1 ? ` (#${i + 1})` : ""}: icecandidateerror 401 per TURN URL, no candidates, never connects`,
    fn: "failClosed",
    args: { apiUrl: badApi, settleMs: SETTLE_MS },
  })),
];

async function startPageServer() {
  const files = {
    "/": { type: "text/html", body: PAGE_HTML },
    "/page.js": { type: "text/javascript", body: await readFile(here("./page.js")) },
  };
  return servePages(files);
}

async function main(opts, state) {
  state.server = await startPageServer();
  const pageUrl = `http://127.0.0.1:${state.server.address().port}/`;
  state.browser = await launchChromium();
  const page = await (await state.browser.newContext()).newPage();

  const consoleErrors = [];
  page.on("console", (msg) => msg.type() === "error" && consoleErrors.push(oneLine(msg.text())));
  page.on("pageerror", (err) => consoleErrors.push(`uncaught: ${oneLine(err.message)}`));
  await page.goto(pageUrl);

  for (const { name, fn, args } of scenarios(opts)) {
    const firstError = consoleErrors.length;
    const started = Date.now();
    try {
      const detail = await withTimeout(
        page.evaluate(([f, a]) => window.T[f](a), [fn, args]),
        SCENARIO_TIMEOUT_MS,
        "scenario",
      );
      state.report(name, null, `${detail}; ${((Date.now() - started) / 1000).toFixed(1)} s`);
    } catch (err) {
      const logged = [...new Set(consoleErrors.slice(firstError))].slice(0, 3);
      const console_ = logged.length ? ` [console: ${logged.join(" | ")}]` : "";
      state.report(name, pageErrorMessage(err) + console_);
    }
  }
}

const opts = parseCli();
runScenarios(scenarios(opts).map((s) => s.name), OVERALL_TIMEOUT_MS, (state) => main(opts, state)).catch((err) => {
  console.error("harness crashed:", err);
  process.exit(1);
});
