// Kibitz Edge status page: shows /status.json and runs a self-test from this browser.
// Result rows carry data-state="idle|running|ok|fail|skip" for people and for tests.
"use strict";

// How long TURN gets to produce a relay candidate, and the broker to answer OPEN.
const TURN_TIMEOUT_MS = 10000;
const BROKER_TIMEOUT_MS = 5000;

let status = null;

const $ = (sel) => document.querySelector(sel);

function setRow(id, cls, state, detail) {
  const row = $(`#svc-${id}`);
  const cell = row.querySelector(".state");
  cell.textContent = state;
  cell.className = `state ${cls}`;
  row.querySelector(".detail").textContent = detail;
}

function show(s) {
  const b = s.services.broker;
  if (!b.mounted) setRow("broker", "off", "not served here", "");
  else {
    let detail = `WebSocket at ${b.path}peerjs`;
    if (b.cluster) {
      const c = b.cluster;
      const shape = c.registryMode === "cluster"
        ? `registry in ${c.registryShards} shard(s) on a Redis Cluster of ${c.registryMasters} master(s)`
        : `registry in ${c.registryShards} shard(s) on one Redis`;
      detail += c.registryUp
        ? `; cluster node: ${c.nodes} nodes, ${c.peersOnline} peers in the cluster, ${shape}, cross-node ` +
          `${c.crossNodeOutPerSecond} msg/s out, ${c.crossNodeInPerSecond} msg/s in`
        : `; cluster node: ${shape}, ${c.registryShardsUp} of ${c.registryShards} shard(s) answer` +
          (c.registryShardsDown.length ? ` (down: ${c.registryShardsDown.join(", ")})` : "");
    }
    setRow("broker", b.healthy ? "good" : "bad", b.healthy ? "up" : "down", detail);
  }
  const t = s.services.turn;
  if (!t.mounted) setRow("turn", "off", "not served here", "");
  else if (!t.configured) setRow("turn", "bad", "not configured", "answers configured:false: clients get no TURN");
  else setRow("turn", "good", "configured", `backend: ${t.backend}`);
  const g = s.services.signal;
  if (!g.mounted) setRow("signal", "off", "not served here", "");
  else {
    const host = g.host === null ? "null (clients use their default broker)" : g.host;
    setRow("signal", g.healthy ? "good" : "bad", g.healthy ? "answering" : "no healthy broker", `host: ${host}`);
  }
  $("#count-peers").textContent = s.counts.peersOnline;
  $("#count-messages").textContent = s.counts.messagesRelayed;
  $("#count-credentials").textContent = s.counts.credentialsMinted;
}

async function refresh() {
  try {
    const r = await fetch("/status.json", { cache: "no-store" });
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    status = await r.json();
    show(status);
    $("#refreshed").textContent = `Updated ${new Date().toLocaleTimeString()}; refreshes every 5 s.`;
  } catch (e) {
    $("#refreshed").textContent = `Could not load /status.json: ${e.message}`;
  }
}

function report(which, state, text) {
  const li = $(`#test-${which}`);
  li.dataset.state = state;
  const badge = { idle: "not run", running: "running", ok: "ok", fail: "failed", skip: "skipped" };
  li.querySelector(".badge").textContent = badge[state];
  li.querySelector(".detail").textContent = text;
}

function random(bytes) {
  const a = crypto.getRandomValues(new Uint8Array(bytes));
  return Array.from(a, (b) => b.toString(16).padStart(2, "0")).join("");
}

const ok = (text) => ({ state: "ok", text });
const fail = (text) => ({ state: "fail", text });

/** Fetch credentials, then gather relay-only candidates with them. */
async function testTurn() {
  let res;
  try {
    res = await fetch("/api/turn", { cache: "no-store" });
  } catch (e) {
    return fail(`could not reach /api/turn: ${e.message}`);
  }
  if (!res.ok) return fail(`/api/turn answered HTTP ${res.status}`);
  let body;
  try {
    body = await res.json();
  } catch {
    return fail("/api/turn did not answer JSON");
  }
  if (body.configured === false || !Array.isArray(body.iceServers)) {
    return fail("TURN is not configured: /api/turn answers configured:false");
  }
  const isTurn = (s) => [].concat(s.urls ?? []).some((u) => /^turns?:/.test(u));
  if (!body.iceServers.some(isTurn)) {
    return fail(body.tier === "free"
      ? 'no TURN credentials for this caller (tier "free": a room grant is needed)'
      : "/api/turn lists no turn: server");
  }
  let pc;
  try {
    pc = new RTCPeerConnection({ iceServers: body.iceServers, iceTransportPolicy: "relay" });
  } catch (e) {
    return fail(`the browser refused the iceServers: ${e.message}`);
  }
  const errors = [];
  try {
    return await new Promise((resolve) => {
      const settle = () => resolve(turnFailure(errors, pc.iceGatheringState === "complete"));
      const timer = setTimeout(settle, TURN_TIMEOUT_MS);
      pc.onicecandidate = (e) => {
        if (e.candidate && e.candidate.type === "relay") {
          clearTimeout(timer);
          const via = e.candidate.url ? ` via ${e.candidate.url}` : "";
          resolve(ok(`TURN works: got a relay candidate${via}`));
        } else if (!e.candidate) {
          // Gathering complete without a relay candidate.
          clearTimeout(timer);
          settle();
        }
      };
      pc.onicecandidateerror = (e) => {
        errors.push({ url: e.url, code: e.errorCode, text: e.errorText });
      };
      pc.createDataChannel("kibitz-self-test");
      pc.createOffer()
        .then((offer) => pc.setLocalDescription(offer))
        .catch((e) => {
          clearTimeout(timer);
          resolve(fail(`could not start ICE gathering: ${e.message}`));
        });
    });
  } finally {
    pc.close();
  }
}

function turnFailure(errors, complete) {
  const list = errors.map((e) => `${e.url}: ${e.code} ${e.text || ""}`.trim()).join("; ");
  if (errors.some((e) => e.code === 401)) {
    return fail(`the TURN server refused the credentials (401): /api/turn's secret is not coturn's static-auth-secret. ${list}`);
  }
  if (errors.some((e) => e.code === 701)) {
    return fail(`TURN server unreachable (701). ${list}`);
  }
  if (errors.length) return fail(`TURN errors. ${list}`);
  const seconds = TURN_TIMEOUT_MS / 1000;
  return fail(complete
    ? "unreachable: gathering finished without a relay candidate"
    : `unreachable: no relay candidate within ${seconds} s`);
}

/** Open a broker WebSocket with a fresh id and expect {"type":"OPEN"}. */
function testBroker() {
  const b = status?.services.broker;
  if (!b || !b.mounted) return Promise.resolve({ state: "skip", text: "no broker in this process" });
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const q = new URLSearchParams({ key: b.key, id: `status-${random(8)}`, token: random(8) });
  const url = `${scheme}//${location.host}${b.path}peerjs?${q}`;
  return new Promise((resolve) => {
    let done = false;
    let ws;
    const finish = (result) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      try { ws.close(1000); } catch { /* already closed */ }
      resolve(result);
    };
    const timer = setTimeout(() => finish(fail(`no OPEN within ${BROKER_TIMEOUT_MS / 1000} s`)), BROKER_TIMEOUT_MS);
    try {
      ws = new WebSocket(url);
    } catch (e) {
      finish(fail(`could not open ${scheme}//…/peerjs: ${e.message}`));
      return;
    }
    ws.onmessage = (ev) => {
      let m;
      try { m = JSON.parse(ev.data); } catch { m = {}; }
      if (m.type === "OPEN") finish(ok(`broker OK: ${scheme}//${location.host}${b.path}peerjs answered OPEN`));
      else if (m.type === "ERROR") finish(fail(`broker refused: ${m.payload?.msg ?? "ERROR"}`));
      else finish(fail(`unexpected first message: ${String(m.type)}`));
    };
    ws.onclose = (ev) => finish(fail(`connection closed before OPEN (code ${ev.code})`));
  });
}

async function selfTest() {
  const button = $("#run");
  button.disabled = true;
  report("turn", "running", "fetching /api/turn and gathering relay candidates…");
  report("broker", "running", "opening a WebSocket…");
  if (!status) await refresh();
  const [turn, broker] = await Promise.all([
    testTurn().catch((e) => fail(String(e))),
    testBroker().catch((e) => fail(String(e))),
  ]);
  report("turn", turn.state, turn.text);
  report("broker", broker.state, broker.text);
  button.disabled = false;
  refresh();
}

$("#run").addEventListener("click", selfTest);
refresh();
setInterval(refresh, 5000);
