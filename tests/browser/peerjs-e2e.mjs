#!/usr/bin/env node
// Browser interop test: the unmodified official peerjs@1.5.5 client, running in headless
// Chromium, against the PeerJS signaling broker at --host/--port. See README.md.
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

const SCENARIO_TIMEOUT_MS = 20_000;
const OVERALL_TIMEOUT_MS = 120_000;

const PAGE_HTML = `<!doctype html>
<meta charset="utf-8">
<link rel="icon" href="data:,">
<title>peerjs e2e</title>
<script src="/peerjs.min.js"></script>
<script src="/harness.js"></script>
`;

function parseCli() {
  const { values } = parseArgs({
    options: {
      host: { type: "string" },
      port: { type: "string" },
      path: { type: "string", default: "/" },
      key: { type: "string", default: "peerjs" },
    },
  });
  const port = Number(values.port);
  if (!values.host || !Number.isInteger(port) || port <= 0) {
    console.error("usage: node tests/browser/peerjs-e2e.mjs --host HOST --port PORT [--path /] [--key peerjs]");
    process.exit(2);
  }
  return { host: values.host, port, path: values.path, key: values.key };
}

// Each scenario body runs inside the page (page.evaluate), so it may only use page globals (H).
const SCENARIOS = [
  {
    name: "two peers open (server-assigned id and explicit id)",
    run: async () => {
      const explicitId = `e2e-b-${Math.random().toString(36).slice(2, 10)}`;
      // allSettled so both failures are reported and neither leaks log lines into the next scenario.
      const settled = await Promise.allSettled([H.openPeer(undefined), H.openPeer(explicitId)]);
      const failures = settled.filter((r) => r.status === "rejected").map((r) => r.reason.message);
      if (failures.length) throw new Error(failures.join("; "));
      const [a, b] = settled.map((r) => r.value);
      if (!a.id) throw new Error("server-assigned id is empty");
      if (b.id !== explicitId) throw new Error(`explicit peer opened as ${b.id}, expected ${explicitId}`);
      Object.assign(H.peers, { a, b });
    },
  },
  {
    name: "binary DataConnection round-trips string, object and 40000-byte Uint8Array",
    run: async () => {
      const { a, b } = H.requireOpenPeers();
      const nested = {
        n: 42, f: -1.5, big: 2 ** 40, t: true, f2: false, nil: null,
        list: [1, "two", [3, { four: 4 }]], deep: { x: { y: [null, true] } },
      };
      await H.exchange(a, b, "binary", ["hello, peer ✓", nested, H.patternBytes(40_000)]);
    },
  },
  {
    name: "json DataConnection round-trips string and object",
    run: async () => {
      const { a, b } = H.requireOpenPeers();
      const nested = { n: 7, f: 0.25, t: true, f2: false, nil: null, list: [1, "two", [3, { four: 4 }]] };
      await H.exchange(a, b, "json", ["hello, json ✓", nested]);
    },
  },
  {
    name: "taking an id in use fails with unavailable-id",
    run: async () => {
      const { b } = H.requireOpenPeers();
      const intruder = H.newPeer(b.id);
      try {
        await H.expectPeerError(intruder, "unavailable-id", 10_000);
      } finally {
        intruder.destroy();
      }
    },
  },
  {
    name: "connecting to an absent id fails with peer-unavailable",
    run: async () => {
      const { a } = H.requireOpenPeers();
      const ghost = `e2e-ghost-${Math.random().toString(36).slice(2, 10)}`;
      const conn = a.connect(ghost);
      try {
        // The broker reports EXPIRE only after its expire_timeout (reference: 5 s, checked every 1 s).
        const err = await H.expectPeerError(a, "peer-unavailable", 15_000);
        if (!err.message.includes(ghost)) throw new Error(`error does not name ${ghost}: ${err.message}`);
      } finally {
        conn.close();
      }
    },
  },
  {
    name: "disconnect() then reconnect() reopens with the same id",
    run: async () => {
      const { a } = H.requireOpenPeers();
      const originalId = a.id;
      const disconnected = H.once(a, "disconnected", { what: "disconnected event" });
      a.disconnect();
      await disconnected;
      if (!a.disconnected || a.open) throw new Error("peer does not report itself disconnected");
      // peer@1.0.2 silently re-attaches (no OPEN, so no 'open' event) a same-id+token socket that
      // arrives before it has processed the old socket's close (peers/peerjs-server#462).
      await H.sleep(1000);
      const reopened = H.once(a, "open", { what: "open after reconnect()" });
      a.reconnect();
      const openedId = await reopened;
      if (openedId !== originalId || a.id !== originalId) {
        throw new Error(`reopened as ${openedId} (peer.id ${a.id}), expected ${originalId}`);
      }
      if (a.disconnected || !a.open) throw new Error("peer does not report itself open after reconnect");
    },
  },
];

async function startPageServer() {
  const files = {
    "/": { type: "text/html", body: PAGE_HTML },
    "/peerjs.min.js": { type: "text/javascript", body: await readFile(here("../node/node_modules/peerjs/dist/peerjs.min.js")) },
    "/harness.js": { type: "text/javascript", body: await readFile(here("./harness.js")) },
  };
  return servePages(files);
}

async function main(broker, state) {
  state.server = await startPageServer();
  const pageUrl = `http://127.0.0.1:${state.server.address().port}/`;
  state.browser = await launchChromium();
  const context = await state.browser.newContext();
  const page = await context.newPage();

  const consoleErrors = [];
  page.on("console", (msg) => msg.type() === "error" && consoleErrors.push(oneLine(msg.text())));
  page.on("pageerror", (err) => consoleErrors.push(`uncaught: ${oneLine(err.message)}`));

  await page.goto(pageUrl);
  await page.evaluate((opts) => H.configure(opts), {
    ...broker,
    secure: false,
    debug: 1, // peerjs logs its own errors to console.error, which we attach to failures
    config: { iceServers: [] },
  });

  for (const scenario of SCENARIOS) {
    const firstError = consoleErrors.length;
    try {
      await withTimeout(page.evaluate(scenario.run), SCENARIO_TIMEOUT_MS, "scenario");
      state.report(scenario.name, null);
    } catch (err) {
      const logged = [...new Set(consoleErrors.slice(firstError))].slice(0, 3);
      const console_ = logged.length ? ` [console: ${logged.join(" | ")}]` : "";
      state.report(scenario.name, pageErrorMessage(err) + console_);
    }
  }

  await withTimeout(page.evaluate(() => H.destroyAll()), 5000, "peer teardown").catch(() => {});
}

const opts = parseCli();
runScenarios(SCENARIOS.map((s) => s.name), OVERALL_TIMEOUT_MS, (state) => main(opts, state)).catch((err) => {
  console.error("harness crashed:", err);
  process.exit(1);
});
