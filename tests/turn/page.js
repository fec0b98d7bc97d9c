// In-page helpers for relay.mjs (window.T). Every peer connection here is relay-only
// (iceTransportPolicy: 'relay'), so the only way two of them can talk is through TURN.
"use strict";

window.T = (() => {
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  function withTimeout(promise, ms, what) {
    let timer;
    const timeout = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what}: no result after ${ms / 1000} s`)), ms);
    });
    return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
  }

  const urlsOf = (server) => [].concat(server.urls ?? []);

  // GET the API from this page's origin (a different port, so CORS must allow it).
  async function fetchIceServers(apiUrl) {
    let res;
    try {
      res = await fetch(apiUrl, { cache: "no-store" });
    } catch (err) {
      throw new Error(`fetch ${apiUrl} failed (CORS or network): ${err.message}`);
    }
    if (!res.ok) throw new Error(`GET ${apiUrl}: HTTP ${res.status}`);
    const body = await res.json();
    if (!Array.isArray(body.iceServers)) throw new Error(`no iceServers list: ${JSON.stringify(body)}`);
    const turn = body.iceServers.filter((s) => urlsOf(s).some((u) => u.startsWith("turn:")));
    if (!turn.length) throw new Error(`no turn: server in ${JSON.stringify(body.iceServers)}`);
    for (const s of turn) {
      if (!s.username || !s.credential) throw new Error(`turn server without credentials: ${JSON.stringify(s)}`);
    }
    return body.iceServers;
  }

  // A relay-only RTCPeerConnection that records its candidates and candidate errors.
  function relayPeer(iceServers) {
    const pc = new RTCPeerConnection({ iceServers, iceTransportPolicy: "relay" });
    const seen = { pc, candidates: [], errors: [], states: [] };
    seen.gathered = new Promise((resolve) => {
      pc.addEventListener("icegatheringstatechange", () => pc.iceGatheringState === "complete" && resolve());
    });
    pc.addEventListener("icecandidate", (e) => {
      if (!e.candidate?.candidate) return;
      const c = e.candidate;
      // Which TURN server URL it came from. (Chromium leaves relayProtocol null on TURN/UDP ones.)
      const url = c.url ?? e.url ?? null;
      const transport = c.type !== "relay" ? null : url ? (/[?&]transport=(\w+)/.exec(url)?.[1] ?? "udp") : c.relayProtocol;
      seen.candidates.push({ type: c.type, address: c.address, port: c.port, url, relayProtocol: transport });
    });
    pc.addEventListener("icecandidateerror", (e) => {
      seen.errors.push({ url: e.url, errorCode: e.errorCode, errorText: e.errorText });
    });
    pc.addEventListener("connectionstatechange", () => seen.states.push(pc.connectionState));
    return seen;
  }

  const fmt = (c) => `${c.type} ${c.address}:${c.port}${c.relayProtocol ? ` (via TURN/${c.relayProtocol})` : ""}`;

  function checkRelayCandidate(c, [min, max], who) {
    if (c.type !== "relay") throw new Error(`${who}: non-relay candidate ${fmt(c)}`);
    if (c.address !== "127.0.0.1" || !(c.port >= min && c.port <= max)) {
      throw new Error(`${who}: relay candidate ${fmt(c)} is not in the TURN server's relay range 127.0.0.1:${min}-${max}`);
    }
  }

  // Offer/answer without trickle: each side's description carries all its candidates.
  async function negotiate(a, b, gatherMs) {
    await a.pc.setLocalDescription(await a.pc.createOffer());
    await withTimeout(a.gathered, gatherMs, "offerer's ICE gathering");
    await b.pc.setRemoteDescription(a.pc.localDescription);
    await b.pc.setLocalDescription(await b.pc.createAnswer());
    await withTimeout(b.gathered, gatherMs, "answerer's ICE gathering");
    await a.pc.setRemoteDescription(b.pc.localDescription);
  }

  // Gathering alone: relay candidates only, through each TURN transport (default UDP and TCP),
  // all from the TURN server.
  async function gather({ apiUrl, relayPorts, transports = ["udp", "tcp"] }) {
    const iceServers = await fetchIceServers(apiUrl);
    const p = relayPeer(iceServers);
    try {
      p.pc.createDataChannel("probe");
      await p.pc.setLocalDescription(await p.pc.createOffer());
      await withTimeout(p.gathered, 10_000, "ICE gathering");
      if (p.errors.length) throw new Error(`icecandidateerror: ${JSON.stringify(p.errors)}`);
      if (!p.candidates.length) throw new Error("no candidates gathered");
      for (const c of p.candidates) checkRelayCandidate(c, relayPorts, "gatherer");
      const via = new Set(p.candidates.map((c) => c.relayProtocol));
      for (const t of transports) {
        if (!via.has(t)) throw new Error(`no relay candidate via TURN/${t}: ${JSON.stringify(p.candidates)}`);
      }
      const turnUrls = iceServers.flatMap(urlsOf).filter((u) => u.startsWith("turn:"));
      for (const c of p.candidates) {
        if (!turnUrls.includes(c.url)) throw new Error(`candidate ${fmt(c)} from ${c.url}, not one of ${turnUrls}`);
      }
      return p.candidates.map(fmt).join(", ");
    } finally {
      p.pc.close();
    }
  }

  // Data can flow before getStats reports the selection (seen under load): poll until it does.
  async function selectedPair(pc) {
    const deadline = performance.now() + 15_000;
    let stats, pair;
    for (;;) {
      stats = await pc.getStats();
      stats.forEach((r) => {
        if (r.type === "transport" && r.selectedCandidatePairId) pair = stats.get(r.selectedCandidatePairId);
      });
      if (pair && pair.state === "succeeded") break;
      if (performance.now() > deadline) break;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    if (!pair) throw new Error("no selected candidate pair in getStats()");
    const local = stats.get(pair.localCandidateId);
    const remote = stats.get(pair.remoteCandidateId);
    const side = (c) => ({ type: c.candidateType, address: c.address, port: c.port, relayProtocol: c.relayProtocol });
    return { state: pair.state, bytesSent: pair.bytesSent, local: side(local), remote: side(remote) };
  }

  // Two relay-only peers in this page connect and talk over a data channel.
  async function connect({ apiUrl, relayPorts }) {
    const iceServers = await fetchIceServers(apiUrl);
    const a = relayPeer(iceServers);
    const b = relayPeer(iceServers);
    try {
      const channel = a.pc.createDataChannel("kibitz-turn");
      const opened = new Promise((resolve) => channel.addEventListener("open", resolve, { once: true }));
      const remote = new Promise((resolve) => b.pc.addEventListener("datachannel", (e) => resolve(e.channel), { once: true }));
      await negotiate(a, b, 10_000);
      for (const [name, p] of [["a", a], ["b", b]]) {
        if (p.errors.length) throw new Error(`${name}: icecandidateerror: ${JSON.stringify(p.errors)}`);
        if (!p.candidates.length) throw new Error(`${name} gathered no candidates`);
      }
      await withTimeout(opened, 15_000, `data channel open (states a=${a.states} b=${b.states})`);
      const theirs = await withTimeout(remote, 5_000, "datachannel event");
      const nextMessage = (ch) => new Promise((resolve) => ch.addEventListener("message", (e) => resolve(e.data), { once: true }));
      const got = nextMessage(theirs);
      channel.send("hello via TURN");
      const heard = await withTimeout(got, 5_000, "message a -> b");
      if (heard !== "hello via TURN") throw new Error(`b received ${JSON.stringify(heard)}`);
      const back = nextMessage(channel);
      theirs.send("and back");
      const reply = await withTimeout(back, 5_000, "message b -> a");
      if (reply !== "and back") throw new Error(`a received ${JSON.stringify(reply)}`);

      const pairs = [];
      for (const [name, p] of [["a", a], ["b", b]]) {
        if (p.pc.connectionState !== "connected") throw new Error(`${name} is ${p.pc.connectionState}`);
        for (const c of p.candidates) checkRelayCandidate(c, relayPorts, name);
        const pair = await selectedPair(p.pc);
        if (pair.state !== "succeeded") throw new Error(`${name}'s selected pair is ${pair.state}`);
        checkRelayCandidate(pair.local, relayPorts, `${name}'s selected local candidate`);
        checkRelayCandidate(pair.remote, relayPorts, `${name}'s selected remote candidate`);
        pairs.push(`${name}: ${fmt(pair.local)} <-> ${fmt(pair.remote)}`);
      }
      return pairs.join("; ");
    } finally {
      a.pc.close();
      b.pc.close();
    }
  }

  // Bad credentials: every TURN URL answers 401, nothing is gathered and nothing connects,
  // not even after waiting (relay-only means no fallback to host candidates).
  async function failClosed({ apiUrl, settleMs }) {
    const iceServers = await fetchIceServers(apiUrl);
    const turnUrls = iceServers.flatMap(urlsOf).filter((u) => u.startsWith("turn:"));
    const a = relayPeer(iceServers);
    const b = relayPeer(iceServers);
    let opened = false;
    try {
      const channel = a.pc.createDataChannel("kibitz-turn");
      channel.addEventListener("open", () => (opened = true));
      b.pc.addEventListener("datachannel", () => (opened = true));
      await negotiate(a, b, 15_000);
      await sleep(settleMs);
      for (const [name, p] of [["a", a], ["b", b]]) {
        if (p.candidates.length) throw new Error(`${name} gathered candidates: ${p.candidates.map(fmt).join(", ")}`);
        for (const url of turnUrls) {
          if (!p.errors.some((e) => e.url === url && e.errorCode === 401)) {
            throw new Error(`${name}: no icecandidateerror 401 for ${url}: ${JSON.stringify(p.errors)}`);
          }
        }
        if (p.states.includes("connected") || p.pc.connectionState === "connected") {
          throw new Error(`${name} connected (states ${p.states})`);
        }
      }
      if (opened) throw new Error("the data channel opened");
      const e = a.errors[0];
      return `${a.errors.length} + ${b.errors.length} errors, e.g. ${e.url} ${e.errorCode} ${e.errorText}; states a=[${a.states}] b=[${b.states}]`;
    } finally {
      a.pc.close();
      b.pc.close();
    }
  }

  return { gather, connect, failClosed };
})();
