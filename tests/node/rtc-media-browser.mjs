#!/usr/bin/env node
// Media between the official peerjs@1.5.5 client in headless Chromium and a Rust peer
// (kibitz-rtc), through the broker at --host/--port. Run by tests/tests/rtc_media.rs, which
// starts the broker and the Rust peer (--rust ID) and writes the 440 Hz WAV the fake mic plays
// (--wav). The fake camera gives 320x240. Scenarios:
// 1. the browser calls Rust (peer.call); Rust reports over a JSON control DataConnection that
//    it decoded 440 Hz and saw 320x240 VP8 keyframes; the page hears Rust's 660 Hz
//    (inbound-rtp totalAudioEnergy rises with the stream on an <audio>); the page closes the
//    call's "undefined" data channel and Rust reports the call closed;
// 2. Rust calls the browser (asked on the control connection), answered with the stream; same
//    checks; Rust hangs up and the page's MediaConnection closes;
// 3. owned: the page's own RTCPeerConnection (mic + camera from one stream) signalled with
//    {t:'m-sdp'} / {t:'m-ice'} BinaryPack frames on a binary DataConnection; same checks;
//    then restartIce(): Rust answers the re-offer on the same pc and audio keeps flowing;
// 4. owned with Rust offering (asked with {t:'m-dial'}): 2 audio + 2 video m-lines in one msid
//    stream, the page answers with mic + camera; same checks; then Rust restarts ICE
//    (asked with {t:'restart'}) and audio keeps flowing.
// With --turn-url/--turn-user/--turn-pass every pc is relay-only and the selected pair must be
// relayed on the browser's side.
import { readFile } from "node:fs/promises";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { pageErrorMessage, runScenarios, startPageServer, withTimeout, oneLine } from "./chromium.mjs";

const require = createRequire(import.meta.url);
const { chromium } = require("playwright-core");

const PAGE_JS = `"use strict";
window.M = (() => {
  let peer = null, ctrl = null, stream = null;
  const calls = [], callWaiters = [];
  const ctrlItems = [], ctrlWaiters = [];

  function withTimeout(p, ms, what) {
    let t;
    return Promise.race([p, new Promise((_, rej) => { t = setTimeout(() => rej(new Error("timed out waiting for " + what)), ms); })])
      .finally(() => clearTimeout(t));
  }
  function once(em, ev, what) {
    return withTimeout(new Promise((res, rej) => {
      em.once(ev, res);
      em.once("error", (e) => rej(new Error("error while waiting for " + what + ": " + (e && e.message))));
    }), 15000, what);
  }
  // Waits for a control message matching pred (messages are kept until taken).
  function ctrlNext(pred, what) {
    const i = ctrlItems.findIndex(pred);
    if (i >= 0) return Promise.resolve(ctrlItems.splice(i, 1)[0]);
    return withTimeout(new Promise((res) => ctrlWaiters.push({ pred, res })), 20000, what);
  }
  function onCtrl(m) {
    const i = ctrlWaiters.findIndex((w) => w.pred(m));
    if (i >= 0) ctrlWaiters.splice(i, 1)[0].res(m); else ctrlItems.push(m);
  }
  async function open(id, opts, rust) {
    stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: { width: 320, height: 240, frameRate: 20 } });
    peer = new peerjs.Peer(id, opts);
    peer.on("call", (c) => {
      c.streamP = new Promise((res) => c.on("stream", res));
      c.answer(stream);
      const w = callWaiters.shift(); if (w) w(c); else calls.push(c);
    });
    await once(peer, "open", "peer open");
    ctrl = peer.connect(rust, { serialization: "json", reliable: true });
    ctrl.on("data", onCtrl);
    await once(ctrl, "open", "control connection open");
  }
  function attach(s) {
    const el = document.createElement("audio");
    el.autoplay = true;
    el.srcObject = s;
    document.body.appendChild(el);
    el.play().catch(() => {});
    return el;
  }
  async function inboundAudio(pc) {
    const stats = await pc.getStats();
    let r = null;
    stats.forEach((s) => { if (s.type === "inbound-rtp" && s.kind === "audio") r = s; });
    return r;
  }
  // Waits for inbound audio energy to rise by a clear margin over about a second.
  async function energyRises(pc) {
    const deadline = performance.now() + 15000;
    let first = null;
    for (;;) {
      const r = await inboundAudio(pc);
      if (r && r.totalAudioEnergy > 0 && r.packetsReceived > 10) {
        if (!first) first = { e: r.totalAudioEnergy, p: r.packetsReceived, t: performance.now() };
        else if (performance.now() - first.t > 1000 && r.totalAudioEnergy > first.e * 1.05 && r.packetsReceived > first.p + 25) {
          const pps = (r.packetsReceived - first.p) / ((performance.now() - first.t) / 1000);
          return "page energy " + first.e.toFixed(3) + " -> " + r.totalAudioEnergy.toFixed(3) + ", " + pps.toFixed(0) + " packets/s";
        }
      }
      if (performance.now() > deadline) throw new Error("inbound audio energy did not rise: " + JSON.stringify(r && { e: r.totalAudioEnergy, p: r.packetsReceived }));
      await new Promise((res) => setTimeout(res, 200));
    }
  }
  async function pairTypes(pc) {
    const deadline = performance.now() + 15000;
    for (;;) {
      const stats = await pc.getStats();
      let pair = null;
      stats.forEach((r) => { if (r.type === "transport" && r.selectedCandidatePairId) pair = stats.get(r.selectedCandidatePairId) || pair; });
      if (pair) {
        const l = stats.get(pair.localCandidateId), r = stats.get(pair.remoteCandidateId);
        return (l && l.candidateType) + "/" + (r && r.candidateType);
      }
      if (performance.now() > deadline) return "no pair";
      await new Promise((res) => setTimeout(res, 50));
    }
  }
  async function checkRelay(pc) {
    if (!window.RELAY) return "";
    const types = await pairTypes(pc);
    if (!types.startsWith("relay/")) throw new Error("selected pair is " + types + ", not relayed");
    return ", pair " + types;
  }
  function streamShape(s) {
    return s.getAudioTracks().length + " audio + " + s.getVideoTracks().length + " video tracks";
  }

  async function browserCalls() {
    const call = peer.call(window.RUST, stream);
    const remote = await withTimeout(new Promise((res) => call.on("stream", res)), 15000, "remote stream");
    attach(remote);
    const energy = await energyRises(call.peerConnection);
    const v = await ctrlNext((m) => m.kind === "answered", "rust verdict");
    if (v.verdict !== "ok") throw new Error("rust says " + JSON.stringify(v));
    const relay = await checkRelay(call.peerConnection);
    // Chromium offered opus, red, G722, PCMU, …, VP8, H264, VP9, AV1, rtx, ulpfec: Rust
    // answers Opus and VP8 (with VP8's rtx) only.
    const answered = [...new Set([...call.peerConnection.remoteDescription.sdp.matchAll(/a=rtpmap:\\d+ ([^/]+)\\//g)].map((m) => m[1]))];
    if (answered.some((c) => !["opus", "VP8", "rtx"].includes(c))) throw new Error("rust answered codecs " + answered.join(","));
    const dc = call.dataChannel;
    if (!dc || dc.label !== "undefined") throw new Error("no 'undefined' data channel on the call");
    const closed = new Promise((res) => call.on("close", res));
    dc.close();
    const c = await ctrlNext((m) => m.closed === v.conn, "rust to see the hang-up");
    await withTimeout(closed, 5000, "page call close");
    return v.detail + "; " + energy + "; remote " + streamShape(remote) + "; rust answered " + answered.join(",") + "; rust closed: " + c.reason + relay;
  }

  async function rustCalls() {
    const incoming = calls.length ? Promise.resolve(calls.shift())
      : withTimeout(new Promise((res) => callWaiters.push(res)), 15000, "incoming call");
    ctrl.send({ cmd: "call" });
    const call = await incoming;
    const remote = await withTimeout(call.streamP, 15000, "remote stream");
    attach(remote);
    const energy = await energyRises(call.peerConnection);
    const v = await ctrlNext((m) => m.kind === "called", "rust verdict");
    if (v.verdict !== "ok") throw new Error("rust says " + JSON.stringify(v));
    const relay = await checkRelay(call.peerConnection);
    const closed = new Promise((res) => call.on("close", res));
    ctrl.send({ cmd: "hangup" });
    await withTimeout(closed, 15000, "the call to close after rust hung up");
    await ctrlNext((m) => m.closed === v.conn, "rust to report its call closed");
    return v.detail + "; " + energy + "; remote " + streamShape(remote) + relay;
  }

  async function owned(config) {
    const sig = peer.connect(window.RUST, { serialization: "binary", reliable: true });
    await once(sig, "open", "sig connection open");
    const pc = new RTCPeerConnection(config);
    const items = [], waiters = [];
    const next = (t, what) => {
      const i = items.findIndex((m) => m.t === t);
      if (i >= 0) return Promise.resolve(items.splice(i, 1)[0]);
      return withTimeout(new Promise((res) => waiters.push({ t, res })), 20000, what);
    };
    let queued = [];
    let remoteSet = false;
    let failure = null;
    sig.on("data", async (m) => {
      try {
        if (m.t === "m-sdp") {
          await pc.setRemoteDescription(m.d);
          remoteSet = true;
          for (const c of queued) await pc.addIceCandidate(c);
          queued = [];
        } else if (m.t === "m-ice") {
          if (remoteSet) await pc.addIceCandidate(m.c); else queued.push(m.c);
        } else {
          const i = waiters.findIndex((w) => w.t === m.t);
          if (i >= 0) waiters.splice(i, 1)[0].res(m); else items.push(m);
        }
      } catch (e) { failure = e; }
    });
    pc.onicecandidate = (e) => { if (e.candidate) sig.send({ t: "m-ice", c: e.candidate.toJSON() }); };
    pc.onnegotiationneeded = async () => {
      try {
        await pc.setLocalDescription();
        sig.send({ t: "m-sdp", d: { type: pc.localDescription.type, sdp: pc.localDescription.sdp }, relay: !!window.RELAY });
      } catch (e) { failure = e; }
    };
    const remote = new MediaStream();
    pc.ontrack = (e) => { remote.addTrack(e.track); };
    for (const t of stream.getTracks()) pc.addTrack(t, stream);
    const v = await next("verdict", "rust verdict");
    if (failure) throw failure;
    attach(remote);
    const energy = await energyRises(pc);
    const relay = await checkRelay(pc);
    const ufrag = (sdp) => (/a=ice-ufrag:(\\S+)/.exec(sdp) || [])[1];
    const before = ufrag(pc.remoteDescription.sdp);
    pc.restartIce();
    const re = await next("reoffered", "rust to answer the re-offer");
    if (!/true$/.test(re.detail)) throw new Error(re.detail);
    const deadline = performance.now() + 10000;
    while (pc.signalingState !== "stable" || ufrag(pc.remoteDescription.sdp) === before) {
      if (failure) throw failure;
      if (performance.now() > deadline) throw new Error("no new answer after restartIce (" + pc.signalingState + ")");
      await new Promise((res) => setTimeout(res, 50));
    }
    const after = await energyRises(pc);
    const lines = (pc.localDescription.sdp.match(/^m=(audio|video)/gm) || []).map((l) => l.slice(2)).join(",");
    pc.close();
    sig.close();
    return v.detail + "; " + energy + "; m-lines " + lines + relay + "; after restartIce (ufrag " + before + " -> " + ufrag(pc.remoteDescription.sdp) + "): " + re.detail + ", " + after;
  }
  // Rust offers (as an owned initiator whose id is smaller): 2 audio + 2 video m-lines, one
  // msid stream; the page answers with mic + camera on the first of each, as a browser does.
  async function rustOffersOwned(config) {
    const sig = peer.connect(window.RUST, { serialization: "binary", reliable: true });
    await once(sig, "open", "sig connection open");
    let pc = null;
    const items = [], waiters = [];
    const next = (t, what) => {
      const i = items.findIndex((m) => m.t === t);
      if (i >= 0) return Promise.resolve(items.splice(i, 1)[0]);
      return withTimeout(new Promise((res) => waiters.push({ t, res })), 20000, what);
    };
    let queued = [];
    let failure = null;
    const remote = new MediaStream();
    const streamIds = new Set();
    const offers = [];
    const ufragOf = (sdp) => (/a=ice-ufrag:(\\S+)/.exec(sdp) || [])[1];
    sig.on("data", async (m) => {
      try {
        if (m.t === "m-sdp" && m.d.type === "offer") {
          offers.push(ufragOf(m.d.sdp));
          if (!pc) {
            pc = new RTCPeerConnection(config);
            pc.onicecandidate = (e) => { if (e.candidate) sig.send({ t: "m-ice", c: e.candidate.toJSON() }); };
            pc.ontrack = (e) => { remote.addTrack(e.track); for (const st of e.streams) streamIds.add(st.id); };
            await pc.setRemoteDescription(m.d);
            for (const t of stream.getTracks()) pc.addTrack(t, stream);
          } else {
            await pc.setRemoteDescription(m.d);
          }
          await pc.setLocalDescription();
          sig.send({ t: "m-sdp", d: { type: "answer", sdp: pc.localDescription.sdp }, relay: !!window.RELAY });
          for (const c of queued) await pc.addIceCandidate(c);
          queued = [];
        } else if (m.t === "m-ice") {
          if (pc && pc.remoteDescription) await pc.addIceCandidate(m.c); else queued.push(m.c);
        } else {
          const i = waiters.findIndex((w) => w.t === m.t);
          if (i >= 0) waiters.splice(i, 1)[0].res(m); else items.push(m);
        }
      } catch (e) { failure = e; }
    });
    sig.send({ t: "m-dial" });
    const v = await next("verdict", "rust verdict");
    if (failure) throw failure;
    attach(remote);
    const energy = await energyRises(pc);
    const relay = await checkRelay(pc);
    const kinds = pc.getTransceivers().map((t) => t.receiver.track.kind).join(",");
    if (streamIds.size !== 1) throw new Error("rust tracks came in " + streamIds.size + " streams");
    const ufrag = (sdp) => (/a=ice-ufrag:(\\S+)/.exec(sdp) || [])[1];
    const before = ufrag(pc.remoteDescription.sdp);
    sig.send({ t: "restart" });
    const deadline = performance.now() + 10000;
    while (pc.signalingState !== "stable" || ufrag(pc.remoteDescription.sdp) === before) {
      if (failure) throw failure;
      if (performance.now() > deadline) throw new Error("no ICE-restart offer from rust (offers " + offers.join(",") + ", state " + pc.signalingState + ", remote ufrag " + ufrag(pc.remoteDescription.sdp) + ")");
      await new Promise((res) => setTimeout(res, 50));
    }
    const after = await energyRises(pc);
    pc.close();
    sig.close();
    return v.detail + "; " + energy + "; transceivers " + kinds + ", one stream " + [...streamIds][0] + relay +
      "; after rust's ICE restart (ufrag " + before + " -> " + ufrag(pc.remoteDescription.sdp) + "): " + after;
  }
  function destroy() { if (peer) peer.destroy(); }
  return { open, browserCalls, rustCalls, owned, rustOffersOwned, destroy };
})();
`;

const SCENARIOS = [
  ["legacy, browser calls rust: 440 Hz and 320x240 VP8 in, 660 Hz heard, data-channel close hangs up both", (p) => p.evaluate(() => M.browserCalls())],
  ["legacy, rust calls browser: same media checks, rust hangs up and the page's call closes", (p) => p.evaluate(() => M.rustCalls())],
  ["owned pc over a binary DataConnection: media both ways, restartIce answered on the same pc", (p) => p.evaluate((c) => M.owned(c), p.iceConfig)],
  ["owned, rust offers 2 audio + 2 video in one stream: media both ways, rust's ICE restart answered", (p) => p.evaluate((c) => M.rustOffersOwned(c), p.iceConfig)],
];

function chromiumArgs(wav) {
  return [
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
  ];
}

async function main(args, state) {
  const html = `<!doctype html>
<meta charset="utf-8">
<link rel="icon" href="data:,">
<title>kibitz-rtc media interop</title>
<script src="/peerjs.min.js"></script>
<script src="/page.js"></script>
`;
  const peerjs = await readFile(fileURLToPath(new URL("./node_modules/peerjs/dist/peerjs.min.js", import.meta.url)));
  state.server = await startPageServer({
    "/": { type: "text/html", body: html },
    "/peerjs.min.js": { type: "text/javascript", body: peerjs },
    "/page.js": { type: "text/javascript", body: PAGE_JS },
  });
  state.browser = await chromium.launch({ executablePath: "/usr/bin/chromium", headless: true, args: chromiumArgs(args.wav) });
  const page = await (await state.browser.newContext()).newPage();
  const consoleErrors = [];
  page.on("console", (msg) => msg.type() === "error" && consoleErrors.push(oneLine(msg.text())));
  page.on("pageerror", (err) => consoleErrors.push(`uncaught: ${oneLine(err.message)}`));
  await page.goto(`http://127.0.0.1:${state.server.address().port}/`);

  const browserId = `browser-${Math.random().toString(36).slice(2, 10)}`;
  await page.evaluate(([rust, relay]) => { window.RUST = rust; window.RELAY = relay; }, [args.rust, !!args["turn-url"]]);
  const config = args["turn-url"]
    ? { iceServers: [{ urls: [args["turn-url"]], username: args["turn-user"], credential: args["turn-pass"] }], iceTransportPolicy: "relay" }
    : { iceServers: [] };
  page.iceConfig = config;
  await withTimeout(
    page.evaluate(([id, opts, rust]) => M.open(id, opts, rust), [browserId, {
      host: args.host, port: Number(args.port), path: "/", secure: false, debug: 1, config,
    }, args.rust]),
    15000,
    "browser peer open",
  );
  for (const [name, run] of SCENARIOS) {
    const firstError = consoleErrors.length;
    try {
      const detail = await withTimeout(run(page), 30000, name);
      state.report(name, null, detail);
    } catch (err) {
      const logged = [...new Set(consoleErrors.slice(firstError))].slice(0, 3);
      state.report(name, pageErrorMessage(err) + (logged.length ? ` [console: ${logged.join(" | ")}]` : ""));
    }
  }
  await withTimeout(page.evaluate(() => M.destroy()), 5000, "teardown").catch(() => {});
}

const { values } = parseArgs({
  options: {
    host: { type: "string" }, port: { type: "string" }, rust: { type: "string" }, wav: { type: "string" },
    "turn-url": { type: "string" }, "turn-user": { type: "string" }, "turn-pass": { type: "string" },
  },
});
if (!values.host || !values.port || !values.rust || !values.wav) {
  console.error("usage: node tests/node/rtc-media-browser.mjs --host HOST --port PORT --rust RUST_PEER_ID --wav TONE.wav");
  process.exit(2);
}
runScenarios(SCENARIOS.map(([n]) => n), 120_000, (state) => main(values, state)).catch((err) => {
  console.error("harness crashed:", err);
  process.exit(1);
});
