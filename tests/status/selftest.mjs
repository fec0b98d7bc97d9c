#!/usr/bin/env node
// The status page's self-test in headless Chromium: each page is loaded at `/` (a browser
// navigation, so Accept prefers text/html), the "Run self-test" button clicked, and the result
// rows read back. --good must report TURN and the broker green; --refused (an /api/turn whose
// secret coturn refuses) must report the TURN failure as 401; --gone (coturn stopped) as
// unreachable. --refused and --gone are optional; scenarios without a URL are not run. Screenshots go to --artifacts (status-page.png is the green one).
//
//   node tests/status/selftest.mjs --good http://127.0.0.1:P/ --refused http://127.0.0.1:Q/ \
//        --gone http://127.0.0.1:R/ --artifacts target/test-artifacts
//
// Prints `ok - …` / `not ok - …: reason` per scenario and `N passed, M failed`; exit 0 only if
// everything passed.
import path from "node:path";
import { parseArgs } from "node:util";
import { launchChromium, oneLine, pageErrorMessage, runScenarios, withTimeout } from "../node/chromium.mjs";

const SCENARIO_TIMEOUT_MS = 40_000;
const OVERALL_TIMEOUT_MS = 150_000;

function parseCli() {
  const { values } = parseArgs({
    options: {
      good: { type: "string" },
      refused: { type: "string" },
      gone: { type: "string" },
      artifacts: { type: "string" },
    },
  });
  if (!values.good || !values.artifacts) {
    console.error("usage: node tests/status/selftest.mjs --good URL [--refused URL] [--gone URL] --artifacts DIR");
    process.exit(2);
  }
  return values;
}

const scenarios = (o) => allScenarios(o).filter((s) => s.url);

const allScenarios = (o) => [
  {
    name: "self-test is green for TURN (relay candidate via coturn) and the broker (OPEN)",
    url: o.good,
    shot: "status-page.png",
    check: (r) => {
      expect(r.turn.state === "ok", `TURN row: ${r.turn.state}: ${r.turn.text}`);
      expect(/TURN works/.test(r.turn.text), `TURN text: ${r.turn.text}`);
      expect(r.broker.state === "ok", `broker row: ${r.broker.state}: ${r.broker.text}`);
      expect(/OPEN/.test(r.broker.text), `broker text: ${r.broker.text}`);
      expect(r.services.turn === "configured" && r.services.broker === "up", `services: ${JSON.stringify(r.services)}`);
      return `${r.turn.text} | ${r.broker.text}`;
    },
  },
  {
    name: "coturn refuses the API's secret: TURN failed with 401, broker still green",
    url: o.refused,
    shot: "status-page-refused.png",
    check: (r) => {
      expect(r.turn.state === "fail", `TURN row: ${r.turn.state}: ${r.turn.text}`);
      expect(/\b401\b/.test(r.turn.text), `TURN text names no 401: ${r.turn.text}`);
      expect(r.broker.state === "ok", `broker row: ${r.broker.state}: ${r.broker.text}`);
      return r.turn.text;
    },
  },
  {
    name: "coturn stopped: TURN failed as unreachable",
    url: o.gone,
    shot: "status-page-unreachable.png",
    check: (r) => {
      expect(r.turn.state === "fail", `TURN row: ${r.turn.state}: ${r.turn.text}`);
      expect(/unreachable/i.test(r.turn.text), `TURN text does not say unreachable: ${r.turn.text}`);
      return r.turn.text;
    },
  },
];

function expect(cond, why) {
  if (!cond) throw new Error(why);
}

async function runScenario(context, s, artifacts) {
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (err) => errors.push(`uncaught: ${oneLine(err.message)}`));
  page.on("console", (msg) => msg.type() === "error" && errors.push(oneLine(msg.text())));
  try {
    const res = await page.goto(s.url);
    expect(res.ok(), `GET / answered ${res.status()}`);
    expect(/text\/html/.test(res.headers()["content-type"] ?? ""), `GET / is not the page: ${res.headers()["content-type"]}`);
    // Services table filled from /status.json.
    await page.waitForFunction(() => document.querySelector("#svc-broker .state").textContent !== "…");
    await page.click("#run");
    await page.waitForFunction(
      () => ["#test-turn", "#test-broker"].every((id) => {
        const s = document.querySelector(id).dataset.state;
        return s !== "idle" && s !== "running";
      }),
      null,
      { timeout: SCENARIO_TIMEOUT_MS },
    );
    const result = await page.evaluate(() => {
      const row = (id) => ({
        state: document.querySelector(id).dataset.state,
        text: document.querySelector(`${id} .detail`).textContent,
      });
      const svc = (id) => document.querySelector(`#svc-${id} .state`).textContent;
      return {
        turn: row("#test-turn"),
        broker: row("#test-broker"),
        services: { broker: svc("broker"), turn: svc("turn"), signal: svc("signal") },
      };
    });
    await page.screenshot({ path: path.join(artifacts, s.shot), fullPage: true });
    const detail = s.check(result);
    const uncaught = errors.filter((e) => e.startsWith("uncaught"));
    expect(uncaught.length === 0, uncaught.join(" | "));
    return detail;
  } finally {
    await page.close();
  }
}

async function main(opts, state) {
  state.browser = await launchChromium();
  const context = await state.browser.newContext({ viewport: { width: 900, height: 700 } });
  for (const s of scenarios(opts)) {
    const started = Date.now();
    try {
      const detail = await withTimeout(runScenario(context, s, opts.artifacts), SCENARIO_TIMEOUT_MS + 10_000, "scenario");
      state.report(s.name, null, `${detail}; ${((Date.now() - started) / 1000).toFixed(1)} s`);
    } catch (err) {
      state.report(s.name, pageErrorMessage(err));
    }
  }
}

const opts = parseCli();
runScenarios(scenarios(opts).map((s) => s.name), OVERALL_TIMEOUT_MS, (state) => main(opts, state)).catch((err) => {
  console.error("harness crashed:", err);
  process.exit(1);
});
