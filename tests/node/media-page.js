"use strict";
// A Kibitz web-client room member with its media plane, in one page (window.M), on the official
// peerjs@1.5.5. Served by media-room.mjs. Mirrors KIBITZ.md §4.3–4.9 and MEDIA.md §1–5 in either
// build: `legacy` (the 0.1.0 bundle: PeerJS MediaConnections, no `t` frames on sig) or `owned`
// (417aa263: one RTCPeerConnection per peer negotiated over sig, `cap`/bulk, `mh`, recovery).
window.M = (() => {
  const HEARTBEAT_MS = 2000, PING_MS = 2500, ANNOUNCE_MS = 3000;
  const RECOVER_AFTER_MS = 9000, STUCK_MS = 8000, MAX_RECOVERIES = 3, DROP_GRACE_MS = 7000;
  const SIG_DEAD_MS = 8000, MESH_REDIAL_MS = 800;
  const PERCEIVE = ["see-screen", "hear-audio", "read-chat", "read-roster", "receive-directed", "read-media", "read-files"];
  const ACT = ["send-chat", "speak", "act"];
  const OWNED_LANES = [["mic", "audio"], ["cam", "video"], ["share", "video"], ["shareAudio", "audio"]];
  const LANE_NAMES = { owned: { audio: ["mic", "shareAudio"], video: ["cam", "share"] }, legacy: { audio: ["mic"], video: ["cam"] } };

  let opts = null, mediaPeer = null, presence = null, presenceConn = null, self = null;
  let members = [], rosterHost = "", joined = false, left = false;
  const timers = [];
  const links = { sig: new Map(), bulk: new Map() };
  const dialled = new Set(), bulkCapable = new Set();
  const peers = new Map(); // voiceId -> per-peer media state
  const overrides = new Map(), hostGrants = new Map();
  const chats = [], log = [];
  const msid = new MediaStream(); // owned: every sender names this one stream

  // Local media: what each lane would carry to a peer allowed everything.
  let audioCtx = null, phMic = null, phShareAudio = null, phCam = null, phShare = null;
  let gateAudio = null, gateShareAudio = null, gateVideo = null; // the gate's own placeholders
  let micTrack = null, camTrack = null, shareTrackObj = null, shareTimer = null;
  let camOn = false, sharing = false, presentAt = 0;

  const note = (s) => { log.push(Date.now() + " " + s); if (log.length > 300) log.shift(); };
  function withTimeout(p, ms, what) {
    let t;
    return Promise.race([p, new Promise((_, rej) => { t = setTimeout(() => rej(new Error("timed out waiting for " + what)), ms); })])
      .finally(() => clearTimeout(t));
  }
  function until(pred, ms, what) {
    return withTimeout(new Promise((res) => {
      const poll = () => { const v = pred(); if (v) res(v); else setTimeout(poll, 50); };
      poll();
    }), ms, what);
  }
  function opened(peer) {
    return withTimeout(new Promise((res, rej) => {
      peer.once("open", res);
      peer.once("error", (e) => rej(new Error("peer error: " + (e && e.type))));
    }), 15000, "peer open");
  }
  const every = (ms, f) => timers.push(setInterval(() => { try { f(); } catch (e) { note("tick: " + e); } }, ms));

  // --- placeholders -------------------------------------------------------------------------
  function silentAudio() {
    const osc = audioCtx.createOscillator();
    const gain = audioCtx.createGain();
    gain.gain.value = 0;
    const dest = audioCtx.createMediaStreamDestination();
    osc.connect(gain).connect(dest);
    osc.start();
    return dest.stream.getAudioTracks()[0];
  }
  // A canvas captured at `fps`; `paint` is called once, then `fps` times a second if `animate`.
  function canvasTrack(w, h, fps, animate, paint) {
    const c = document.createElement("canvas");
    c.width = w; c.height = h;
    const g = c.getContext("2d");
    let n = 0;
    const draw = () => paint(g, w, h, n++);
    draw();
    const track = c.captureStream(fps).getVideoTracks()[0];
    const timer = animate ? setInterval(draw, 1000 / fps) : null;
    track.addEventListener("ended", () => clearInterval(timer));
    const stop = track.stop.bind(track);
    track.stop = () => { clearInterval(timer); stop(); };
    return track;
  }
  // Painted once: Chromium sends a frame or two after a swap, then nothing (MEDIA.md §3).
  const blackVideo = () => canvasTrack(2, 2, 1, false, (g) => { g.fillStyle = "#000"; g.fillRect(0, 0, 2, 2); });

  // --- grants and the gate (MEDIA.md §4, KIBITZ.md §4.8) --------------------------------------
  const member = (id) => members.find((m) => m.id === id);
  const FULL = () => ({ perceive: PERCEIVE.slice(), act: ACT.slice() });
  function sanitize(g) {
    const p = Array.isArray(g && g.perceive) ? g.perceive.filter((x) => PERCEIVE.includes(x)) : [];
    const a = Array.isArray(g && g.act) ? g.act.filter((x) => ACT.includes(x)) : [];
    const out = { perceive: [...new Set(p)], act: [...new Set(a)] };
    if (g && typeof g.expiresAt === "number") out.expiresAt = g.expiresAt;
    return out;
  }
  function grantFor(id) {
    let g;
    if (overrides.has(id)) g = overrides.get(id);
    else if (opts && opts.cryptoHost && hostGrants.has(id)) g = hostGrants.get(id);
    else {
      const m = member(id);
      g = m && m.meta && m.meta.role === "agent"
        ? { perceive: ["read-chat", "read-roster", "receive-directed"], act: [] } : FULL();
    }
    if (typeof g.expiresAt === "number" && g.expiresAt * 1000 <= Date.now()) return { perceive: [], act: [] };
    return g;
  }
  // The track lane `lane` carries to peer `id`: the real one, or the gate's placeholder.
  function laneTrack(lane, id) {
    const may = (cap) => grantFor(id).perceive.includes(cap);
    if (opts.mode === "legacy") {
      if (lane === "mic") return may("hear-audio") ? (micTrack || phMic) : gateAudio;
      if (sharing) return may("see-screen") ? shareTrackObj : gateVideo;
      return camOn ? camTrack : phCam;
    }
    switch (lane) {
      case "mic": return may("hear-audio") ? (micTrack || phMic) : gateAudio;
      case "cam": return camOn ? camTrack : phCam;
      case "share": return may("see-screen") ? (sharing ? shareTrackObj : phShare) : gateVideo;
      case "shareAudio": return may("hear-audio") && may("see-screen") ? phShareAudio : gateShareAudio;
    }
    return null;
  }
  const isGate = (t) => t === gateAudio || t === gateShareAudio || t === gateVideo;
  function regate(why) {
    for (const [id, p] of peers) {
      for (const [sender, lane] of senders(p)) {
        const want = laneTrack(lane, id);
        if (sender.track !== want) {
          sender.replaceTrack(want).catch((e) => note("replaceTrack " + lane + ": " + e));
          note("gate " + id + " " + lane + " -> " + (isGate(want) ? "placeholder" : want && want.label) + " (" + why + ")");
        }
      }
    }
  }
  // [sender, lane] for every lane of the peer's current media connection.
  function senders(p) {
    const pc = currentPc(p);
    if (!pc) return [];
    return pc.getTransceivers().filter((t) => p.lanes.has(t)).map((t) => [t.sender, p.lanes.get(t)]);
  }
  function currentPc(p) { return opts.mode === "legacy" ? (p.call && p.call.peerConnection) : p.pc; }
  // Lane of each transceiver by its ordinal among m-lines of its kind (MEDIA.md §3).
  function labelLanes(p, pc) {
    const seen = { audio: 0, video: 0 };
    for (const t of pc.getTransceivers()) {
      const kind = t.receiver.track.kind;
      const lane = LANE_NAMES[opts.mode][kind][seen[kind]++];
      if (lane && !p.lanes.has(t)) p.lanes.set(t, lane);
    }
  }

  // --- peers --------------------------------------------------------------------------------
  function peerState(id) {
    let p = peers.get(id);
    if (!p) {
      p = {
        id, pc: null, call: null, pcs: 0, lanes: new Map(), polite: !(self < id), makingOffer: false, ignoreOffer: false,
        chain: Promise.resolve(), iceQueue: [], createdAt: 0, connected: false, everIn: false, lowSince: 0,
        recoveries: 0, stuck: 0, relay: false, remoteMh: null, lastBytes: null, kbps: { v: 0, a: 0, ov: 0, oa: 0 },
        sent: { "m-recreate": 0, "mh-dead": 0, "m-dial": 0 }, recv: { "m-recreate": 0, "mh-dead": 0, "m-dial": 0 },
        goneSince: 0, elements: new Map(), lastDeadAsk: 0, ctlReceived: 0, sigRedials: 0, bye: false,
      };
      peers.set(id, p);
    }
    return p;
  }
  function attachTrack(p, track) {
    if (p.elements.has(track.id)) return;
    const el = document.createElement(track.kind === "audio" ? "audio" : "video");
    el.autoplay = true;
    el.muted = track.kind === "video";
    el.playsInline = true;
    el.srcObject = new MediaStream([track]);
    el.dataset.peer = p.id;
    document.body.appendChild(el);
    el.play().catch((e) => note("play " + track.kind + ": " + e));
    p.elements.set(track.id, el);
  }
  function detachAll(p) {
    for (const el of p.elements.values()) { el.srcObject = null; el.remove(); }
    p.elements.clear();
  }

  // --- data mesh (KIBITZ.md §4.9) -----------------------------------------------------------
  const ctl = (id, frame) => {
    const l = links.sig.get(id);
    if (!l || !l.open || opts.mode !== "owned") return false;
    if (frame.t in (peers.get(id) || { sent: {} }).sent) peers.get(id).sent[frame.t]++;
    l.conn.send(frame);
    return true;
  };
  function wire(conn, lane) {
    const map = links[lane];
    const link = { conn, open: false, lastRecv: Date.now(), heardMh: false, ours: false, createdAt: Date.now() };
    map.set(conn.peer, link);
    conn.on("open", () => {
      link.open = true;
      link.lastRecv = Date.now();
      if (lane === "sig") {
        if (opts.mode === "owned") conn.send({ t: "cap", bulk: 1 });
        if (opts.mode === "owned") ensurePc(conn.peer);
      }
    });
    conn.on("data", (d) => {
      link.lastRecv = Date.now();
      if (map.get(conn.peer) !== link || !d || typeof d !== "object") return;
      if (lane === "sig" && typeof d.t === "string") {
        peerState(conn.peer).ctlReceived++;
        if (opts.mode === "owned") onCtl(conn.peer, d, link);
        return;
      }
      onContent(conn.peer, d);
    });
    conn.on("close", () => {
      if (map.get(conn.peer) !== link) return;
      map.delete(conn.peer);
      if (lane === "sig" && link.ours) redialSig(conn.peer, "closed");
    });
    conn.on("error", (e) => note(lane + " " + conn.peer + " error " + (e && e.type)));
    return link;
  }
  function dialSig(id) {
    dialled.add(id);
    wire(mediaPeer.connect(id, { reliable: true }), "sig").ours = true;
  }
  // The dialler's side of a sig link that closed, never opened, or went silent: drop it (and
  // the media that rides it) and dial again after MESH_REDIAL_MS, while the peer is a member.
  function redialSig(id, why) {
    const l = links.sig.get(id);
    if (l) { links.sig.delete(id); l.conn.close(); }
    const p = peerState(id);
    p.sigRedials++;
    note("sig to " + id + " " + why + "; re-dial");
    if (opts.mode === "owned") dropPc(p);
    setTimeout(() => { if (!left && !p.bye && member(id) && !links.sig.has(id)) dialSig(id); }, MESH_REDIAL_MS);
  }
  function meshWatchdog() {
    const now = Date.now();
    for (const [id, l] of [...links.sig]) {
      if (!l.ours) continue;
      if (!l.open && now - l.createdAt >= SIG_DEAD_MS) redialSig(id, "never opened");
      else if (opts.mode === "owned" && l.open && l.heardMh && now - l.lastRecv >= SIG_DEAD_MS) redialSig(id, "silent");
    }
  }
  function maybeDialBulk(id) {
    if (dialled.has(id) && bulkCapable.has(id) && !links.bulk.has(id)) wire(mediaPeer.connect(id, { reliable: true, label: "bulk" }), "bulk");
  }
  function onContent(from, d) {
    if (d.k === "chat" && typeof d.text === "string") chats.push({ from, text: d.text, dm: !!d.dm, at: Date.now() });
    else if (d.k === "caps" && d.grants && typeof d.grants === "object") {
      if (!opts.cryptoHost || !rosterHost || from !== rosterHost) { note("caps from " + from + " ignored"); return; }
      hostGrants.clear();
      for (const [id, g] of Object.entries(d.grants)) hostGrants.set(id, sanitize(g));
      regate("caps");
    }
  }
  function sendContent(id, msg) {
    const l = (links.bulk.get(id) && links.bulk.get(id).open) ? links.bulk.get(id) : links.sig.get(id);
    if (!l || !l.open) return false;
    l.conn.send(msg);
    return true;
  }

  // --- presence (KIBITZ.md §4.3) ------------------------------------------------------------
  function voice() {
    const meta = Object.assign({}, opts.meta || {});
    if (sharing || presentAt) { meta.presenting = sharing; meta.presentAt = presentAt; }
    return { t: "voice", on: true, cam: camOn || (opts.mode === "legacy" && sharing), name: opts.name, avatar: "", voiceId: self, token: "tok-" + opts.name, meta };
  }
  function announce() { if (presenceConn && presenceConn.open) presenceConn.send(voice()); }
  function onRoster(r) {
    const before = new Set(members.map((m) => m.id));
    members = Array.isArray(r.members) ? r.members : [];
    rosterHost = typeof r.host === "string" ? r.host : "";
    const now = new Set(members.map((m) => m.id));
    if (joined && !now.has(self)) announce();
    for (const m of members) {
      if (m.id === self) continue;
      const p = peerState(m.id);
      p.goneSince = 0;
      if (self < m.id && !dialled.has(m.id)) dialSig(m.id);
      if (opts.mode === "legacy" && self < m.id && !p.call) legacyCall(m.id);
      if (opts.mode === "owned") ensurePc(m.id);
    }
    for (const id of before) {
      if (id === self || now.has(id)) continue;
      const p = peers.get(id);
      if (!p) continue;
      if (opts.mode === "legacy") dropLegacy(p); // immediate teardown; re-called if it comes back
      else if (!p.goneSince) p.goneSince = Date.now();
    }
    regate("roster");
  }

  // --- legacy media (MEDIA.md §1–2, PeerJS MediaConnections) --------------------------------
  function streamFor(id) { return new MediaStream([laneTrack("mic", id), laneTrack("cam", id)]); }
  function legacyCall(id) {
    const p = peerState(id);
    const call = mediaPeer.call(id, streamFor(id), { constraints: { offerToReceiveAudio: true, offerToReceiveVideo: true } });
    if (!call) return;
    note("call " + id + " " + call.connectionId);
    adoptCall(p, call);
  }
  function adoptCall(p, call) {
    if (p.call && p.call !== call) { const old = p.call; p.call = null; old.close(); detachAll(p); }
    p.call = call;
    p.pcs++;
    p.lanes = new Map();
    const label = () => { if (call.peerConnection) labelLanes(p, call.peerConnection); };
    label();
    call.on("stream", (s) => { label(); if (p.call === call) for (const t of s.getTracks()) attachTrack(p, t); });
    call.on("close", () => { note("call closed " + p.id); if (p.call === call) { p.call = null; detachAll(p); } });
    call.on("error", (e) => note("call error " + p.id + " " + (e && e.type)));
  }
  function onIncomingCall(call) {
    if (opts.mode !== "legacy") { note("ignored a PeerJS call from " + call.peer); return; } // owned has no call handler
    const p = peerState(call.peer);
    adoptCall(p, call);
    call.answer(streamFor(call.peer));
    if (call.peerConnection) labelLanes(p, call.peerConnection);
  }
  function dropLegacy(p) {
    if (p.call) { const c = p.call; p.call = null; c.close(); }
    detachAll(p);
  }

  // --- owned media (MEDIA.md §1–2: one pc per peer, perfect negotiation over sig) ------------
  function sigOpen(id) { const l = links.sig.get(id); return !!(l && l.open); }
  function ensurePc(id) {
    if (opts.mode !== "owned" || left) return;
    const p = peerState(id);
    if (p.pc || p.polite || !sigOpen(id) || !member(id) || !phMic) return;
    createPc(p);
  }
  function dropPc(p) {
    if (!p.pc) return;
    const pc = p.pc;
    p.pc = null;
    p.lanes = new Map();
    p.iceQueue = [];
    p.makingOffer = false;
    pc.close();
    detachAll(p);
  }
  function createPc(p) {
    const id = p.id;
    const pc = new RTCPeerConnection({ iceServers: opts.iceServers || [], iceTransportPolicy: p.relay ? "relay" : "all" });
    p.pc = pc; p.pcs++; p.createdAt = Date.now(); p.connected = false; p.everIn = false; p.lowSince = 0;
    p.lanes = new Map(); p.lastBytes = null;
    note("pc#" + p.pcs + " to " + id + (p.polite ? " (answerer)" : " (initiator)") + (p.relay ? " relay" : ""));
    pc.onicecandidate = (e) => { if (e.candidate && p.pc === pc) ctl(id, { t: "m-ice", c: e.candidate.toJSON() }); };
    pc.ontrack = (e) => { if (p.pc === pc) attachTrack(p, e.track); };
    pc.onconnectionstatechange = () => {
      if (p.pc !== pc) return;
      note("pc " + id + " " + pc.connectionState);
      if (pc.connectionState === "connected") p.connected = true;
      if (pc.connectionState === "failed") onUnhealthy(p, "failed");
    };
    pc.onnegotiationneeded = async () => {
      if (p.pc !== pc) return;
      try {
        p.makingOffer = true;
        await pc.setLocalDescription();
        if (p.pc === pc) ctl(id, { t: "m-sdp", d: { type: pc.localDescription.type, sdp: pc.localDescription.sdp }, relay: p.relay });
      } catch (e) { note("offer: " + e); } finally { p.makingOffer = false; }
    };
    if (!p.polite) {
      for (const [lane, kind] of OWNED_LANES) {
        const t = pc.addTransceiver(laneTrack(lane, id) || kind, { direction: "sendrecv", streams: [msid] });
        p.lanes.set(t, lane);
      }
    }
    return pc;
  }
  function onCtl(from, d, link) {
    const p = peerState(from);
    if (d.t in p.recv) p.recv[d.t]++;
    switch (d.t) {
      case "cap": bulkCapable.add(from); maybeDialBulk(from); break;
      case "mh": link.heardMh = true; p.remoteMh = d; break;
      case "bye": note("bye from " + from); p.bye = true; dropPc(p); break;
      case "m-dial": onDial(p); break;
      case "mh-dead": if (!p.polite) recover(p, "mh-dead").catch((e) => note("recover: " + e)); break;
      case "m-recreate":
        p.relay = p.relay || !!d.relay;
        dropPc(p); // await a new offer; m-dial asks for it
        break;
      case "m-sdp": p.chain = p.chain.then(() => onSdp(p, d)).catch((e) => note("sdp: " + e)); break;
      case "m-ice": p.chain = p.chain.then(() => onIce(p, d.c)).catch((e) => note("ice: " + e)); break;
    }
  }
  function onDial(p) {
    if (p.polite) return;
    if (!p.pc) { ensurePc(p.id); return; }
    const pc = p.pc;
    if (pc.signalingState === "have-local-offer" && pc.localDescription && !p.makingOffer)
      ctl(p.id, { t: "m-sdp", d: { type: "offer", sdp: pc.localDescription.sdp }, relay: p.relay });
  }
  async function onSdp(p, m) {
    const d = m.d;
    if (!d || (d.type !== "offer" && d.type !== "answer") || typeof d.sdp !== "string") return;
    if (m.relay && !p.relay) { p.relay = true; if (p.pc) dropPc(p); }
    if (!p.pc) {
      if (d.type !== "offer") return;
      createPc(p);
    }
    const pc = p.pc;
    const collision = d.type === "offer" && (p.makingOffer || pc.signalingState !== "stable");
    p.ignoreOffer = !p.polite && collision;
    if (p.ignoreOffer) { note("ignored a colliding offer"); return; }
    await pc.setRemoteDescription(d);
    if (d.type === "offer") {
      labelLanes(p, pc);
      for (const [t, lane] of p.lanes) {
        if (t.currentDirection === "stopped" || t.stopped) continue;
        if (t.direction !== "sendrecv") t.direction = "sendrecv";
        const want = laneTrack(lane, p.id);
        if (t.sender.track !== want) await t.sender.replaceTrack(want);
        t.sender.setStreams(msid);
      }
      await pc.setLocalDescription();
      if (p.pc === pc) ctl(p.id, { t: "m-sdp", d: { type: pc.localDescription.type, sdp: pc.localDescription.sdp }, relay: p.relay });
    }
    const queued = p.iceQueue.splice(0);
    for (const c of queued) await pc.addIceCandidate(c).catch((e) => { if (!p.ignoreOffer) note("addIceCandidate: " + e); });
  }
  async function onIce(p, c) {
    if (!c || !p.pc) return;
    if (!p.pc.remoteDescription) { p.iceQueue.push(c); return; }
    await p.pc.addIceCandidate(c).catch((e) => { if (!p.ignoreOffer) note("addIceCandidate: " + e); });
  }
  // Recovery ladder, run by the initiator (MEDIA.md §1).
  async function recover(p, why) {
    await measure(p).catch(() => {}); // has it ever received a byte?
    if (!p.pc || !sigOpen(p.id)) return;
    if (p.recoveries >= MAX_RECOVERIES) return;
    const n = p.recoveries++;
    note("recover " + p.id + " n=" + n + " (" + why + ")");
    const neverReceived = p.connected && !p.everIn;
    if (n === 0 && !neverReceived) { p.lowSince = 0; p.pc.restartIce(); return; }
    const relay = n >= 2 || neverReceived;
    if (relay) p.relay = true;
    ctl(p.id, { t: "m-recreate", relay });
    dropPc(p);
    createPc(p);
  }
  function onUnhealthy(p, why) {
    if (p.polite) {
      if (Date.now() - p.lastDeadAsk >= RECOVER_AFTER_MS) { p.lastDeadAsk = Date.now(); ctl(p.id, { t: "mh-dead" }); }
      p.lowSince = 0;
    } else recover(p, why).catch((e) => note("recover: " + e));
  }
  // Inbound/outbound kbps per kind since the last beat, from getStats.
  async function measure(p) {
    const pc = p.pc;
    if (!pc) { p.kbps = { v: 0, a: 0, ov: 0, oa: 0 }; return; }
    const stats = await pc.getStats();
    const b = { v: 0, a: 0, ov: 0, oa: 0, at: Date.now() };
    stats.forEach((r) => {
      if (r.type === "inbound-rtp") b[r.kind === "video" ? "v" : "a"] += r.bytesReceived || 0;
      if (r.type === "outbound-rtp") b[r.kind === "video" ? "ov" : "oa"] += r.bytesSent || 0;
    });
    if (b.v + b.a > 0 && p.pc === pc) p.everIn = true;
    const last = p.lastBytes;
    p.lastBytes = b;
    if (!last || p.pc !== pc) return;
    const secs = Math.max(0.001, (b.at - last.at) / 1000);
    const k = (x) => Math.max(0, Math.round(((b[x] - last[x]) * 8) / 1000 / secs));
    p.kbps = { v: k("v"), a: k("a"), ov: k("ov"), oa: k("oa") };
  }
  async function beat() {
    const now = Date.now();
    for (const [id, p] of peers) {
      if (p.goneSince && now - p.goneSince > DROP_GRACE_MS) { dropPc(p); continue; }
      if (!sigOpen(id)) continue;
      await measure(p).catch((e) => note("stats: " + e));
      ctl(id, { t: "mh", v: p.kbps.v, a: p.kbps.a, ov: p.kbps.ov, oa: p.kbps.oa });
      if (!p.pc) {
        if (p.polite) ctl(id, { t: "m-dial" });
        else ensurePc(id);
        continue;
      }
      if (p.polite && !p.pc.remoteDescription) ctl(id, { t: "m-dial" });
      const pc = p.pc;
      const inKbps = p.kbps.v + p.kbps.a;
      if (pc.connectionState === "connected") {
        if (inKbps >= 1) p.lowSince = 0; else if (!p.lowSince) p.lowSince = now;
        const mh = p.remoteMh || {};
        if (inKbps >= 1 && (mh.a || 0) + (mh.v || 0) >= 1) p.recoveries = 0; // both directions flow
        const peerSends = (mh.ov || 0) + (mh.oa || 0) >= 1;
        if (p.lowSince && now - p.lowSince >= RECOVER_AFTER_MS && (peerSends || !p.everIn)) onUnhealthy(p, "no inbound media");
      } else if (!p.connected && now - p.createdAt >= STUCK_MS && p.stuck < MAX_RECOVERIES) {
        p.stuck++;
        note("pc to " + id + " stuck " + pc.connectionState + "; re-made");
        dropPc(p);
        if (!p.polite) createPc(p);
      }
    }
  }

  // --- controller ---------------------------------------------------------------------------
  async function join(o) {
    if (joined) throw new Error("already joined");
    opts = Object.assign({ host: window.KBZ_BROKER.host, port: window.KBZ_BROKER.port, mode: "owned", name: "Browser", meta: {}, cryptoHost: false }, o);
    if (opts.mode !== "legacy" && opts.mode !== "owned") throw new Error("mode must be legacy or owned");
    audioCtx = new AudioContext();
    if (audioCtx.state !== "running") await audioCtx.resume().catch(() => {});
    phMic = silentAudio(); phShareAudio = silentAudio(); gateAudio = silentAudio(); gateShareAudio = silentAudio();
    phCam = blackVideo(); phShare = blackVideo(); gateVideo = blackVideo();
    const peerOpts = { host: opts.host, port: Number(opts.port), path: opts.path || "/", secure: false, debug: 1, config: { iceServers: opts.iceServers || [] } };
    // `id`: a chosen voiceId (tests pick who initiates media: the smaller id does).
    mediaPeer = opts.id ? new Peer(opts.id, peerOpts) : new Peer(peerOpts);
    self = await opened(mediaPeer);
    mediaPeer.on("connection", (c) => wire(c, c.label === "bulk" ? "bulk" : "sig"));
    mediaPeer.on("call", onIncomingCall);
    mediaPeer.on("error", (e) => note("media peer error " + (e && e.type) + " " + (e && e.message)));
    presence = new Peer(peerOpts);
    await opened(presence);
    presence.on("error", (e) => note("presence error " + (e && e.type)));
    presenceConn = presence.connect("kbz-v1-" + opts.room, { reliable: true });
    presenceConn.on("open", () => {
      presenceConn.send({ t: "knock", name: opts.name, avatar: "", token: "tok-" + opts.name, voiceId: self });
      presenceConn.send(voice());
    });
    presenceConn.on("data", (d) => { if (d && d.t === "roster") onRoster(d); });
    every(PING_MS, () => { if (presenceConn.open) presenceConn.send({ t: "ping" }); });
    every(ANNOUNCE_MS, announce);
    every(HEARTBEAT_MS, meshWatchdog);
    if (opts.mode === "owned") timers.push(setInterval(() => beat().catch((e) => note("beat: " + e)), HEARTBEAT_MS));
    joined = true;
    await until(() => member(self), 20000, "a roster with me in it");
    return { voiceId: self };
  }
  async function toggleMic() {
    if (!micTrack) {
      const s = await navigator.mediaDevices.getUserMedia({ audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false } });
      micTrack = s.getAudioTracks()[0];
      regate("mic captured");
      return true;
    }
    micTrack.enabled = !micTrack.enabled;
    return micTrack.enabled;
  }
  async function toggleCam() {
    if (camOn) {
      camOn = false;
      regate("camera off");
      camTrack.stop();
      camTrack = null;
    } else {
      const s = await navigator.mediaDevices.getUserMedia({ video: { width: 320, height: 240, frameRate: 20 } });
      camTrack = s.getVideoTracks()[0];
      camOn = true;
      regate("camera on");
    }
    announce();
    return camOn;
  }
  function shareTrack(o) {
    const w = (o && o.width) || 640, h = (o && o.height) || 360;
    if (sharing) stopShare();
    const fps = (o && o.fps) || 15;
    // `noise`: every frame random pixels, which no encoder compresses: the highest rate
    // the sender's bandwidth estimate allows (a flood on the share lane).
    // A few frames made once and cycled: the page's own CPU stays free for the call.
    const noise = [];
    for (let k = 0; o && o.noise && k < 5; k++) {
      const img = new ImageData(w, h);
      const u = new Uint32Array(img.data.buffer);
      for (let i = 0; i < u.length; i++) u[i] = (Math.random() * 0x100000000) | 0xff000000;
      noise.push(img);
    }
    shareTrackObj = canvasTrack(w, h, fps, true, (g, W, H, n) => {
      if (noise.length) { g.putImageData(noise[n % noise.length], 0, 0); return; }
      g.fillStyle = "hsl(" + ((n * 7) % 360) + ",70%,50%)"; g.fillRect(0, 0, W, H);
      g.fillStyle = "#fff"; g.fillRect((n * 9) % W, H / 3, W / 8, H / 3);
    });
    sharing = true;
    presentAt = Math.max(0, ...members.map((m) => (m.meta && typeof m.meta.presentAt === "number" ? m.meta.presentAt : 0))) + 1;
    regate("share on");
    announce();
    return { width: w, height: h, presentAt };
  }
  function stopShare() {
    if (!sharing) return false;
    sharing = false;
    regate("share off");
    shareTrackObj.stop();
    shareTrackObj = null;
    announce();
    return true;
  }
  function setCapabilityGrant(id, grant) {
    if (grant === null || grant === undefined) overrides.delete(id);
    else overrides.set(id, sanitize(grant));
    regate("grant");
    return grantFor(id);
  }
  function chat(text, to) {
    let n = 0;
    for (const m of members) {
      if (m.id === self || (to && m.id !== to)) continue;
      const msg = { k: "chat", text, mid: self + "#" + Date.now(), ts: Date.now(), from: self, name: opts.name };
      if (to) msg.dm = true;
      if (sendContent(m.id, msg)) n++;
    }
    return n;
  }
  async function stats() {
    const out = { self, mode: opts && opts.mode, host: rosterHost, roster: members.map((m) => ({ id: m.id, name: m.name, cam: !!m.cam, meta: m.meta || null })), peers: {} };
    for (const [id, p] of peers) {
      const pc = currentPc(p);
      const s = {
        mode: opts.mode, pcs: p.pcs, state: pc ? pc.connectionState : "none", sig: sigOpen(id),
        bulk: !!(links.bulk.get(id) && links.bulk.get(id).open), ctlReceived: p.ctlReceived, sigRedials: p.sigRedials, relay: p.relay, kbps: p.kbps, remoteMh: p.remoteMh,
        audio: {}, video: {}, outbound: {}, sent: Object.assign({}, p.sent), recv: Object.assign({}, p.recv),
        grant: grantFor(id), senders: {},
      };
      if (pc) {
        const byMid = new Map();
        for (const [t, lane] of p.lanes) {
          if (t.mid !== null) byMid.set(t.mid, lane);
          const tr = t.sender.track;
          s.senders[lane] = isGate(tr) ? "gate" : tr === phMic || tr === phCam || tr === phShare || tr === phShareAudio ? "placeholder" : tr ? "live" : "none";
        }
        const r = await pc.getStats();
        r.forEach((x) => {
          const lane = byMid.get(x.mid) || x.mid;
          if (x.type === "inbound-rtp" && x.kind === "audio")
            s.audio[lane] = { packetsReceived: x.packetsReceived || 0, bytesReceived: x.bytesReceived || 0, totalAudioEnergy: x.totalAudioEnergy || 0, audioLevel: x.audioLevel || 0, totalSamplesDuration: x.totalSamplesDuration || 0 };
          if (x.type === "inbound-rtp" && x.kind === "video")
            s.video[lane] = { framesDecoded: x.framesDecoded || 0, frameWidth: x.frameWidth || 0, frameHeight: x.frameHeight || 0, bytesReceived: x.bytesReceived || 0 };
          if (x.type === "outbound-rtp")
            s.outbound[lane] = { kind: x.kind, packetsSent: x.packetsSent || 0, bytesSent: x.bytesSent || 0, frameWidth: x.frameWidth || 0, frameHeight: x.frameHeight || 0 };
        });
      }
      out.peers[id] = s;
    }
    return out;
  }
  // Test hook, not in the web client: run the recovery ladder for peer `id` now, as if its media
  // had stalled. The answerer asks with `mh-dead`; the initiator runs step `step` (default: the
  // next one): 0 restartIce, 1 `m-recreate` relay:false, 2 `m-recreate` relay:true.
  async function recoverNow(id, step) {
    const p = peers.get(id);
    if (!p || !p.pc) throw new Error("no media connection to " + id);
    if (opts.mode !== "owned") throw new Error("legacy media has no recovery");
    if (p.polite) { p.lastDeadAsk = Date.now(); ctl(id, { t: "mh-dead" }); return "mh-dead"; }
    if (typeof step === "number") p.recoveries = step;
    const n = p.recoveries;
    await recover(p, "asked");
    return n === 0 ? "restartIce" : "m-recreate";
  }
  // Test hook: re-announce voice with new meta (e.g. a human re-announced as an agent), as a
  // client that changes role after joining does.
  function setMeta(meta) {
    opts.meta = Object.assign({}, meta || {});
    announce();
    return opts.meta;
  }
  // Test hook: the ICE candidates of the media connection to `id`, from getStats (which kinds
  // the remote advertised, and the selected pair).
  async function candidates(id) {
    const p = peers.get(id);
    const pc = p && currentPc(p);
    if (!pc) return null;
    const r = await pc.getStats();
    const out = { local: [], remote: [], selected: null };
    const byId = new Map();
    r.forEach((x) => {
      if (x.type === "local-candidate" || x.type === "remote-candidate") {
        const c = { type: x.candidateType, address: x.address || x.ip || "", port: x.port || 0 };
        byId.set(x.id, c);
        (x.type === "local-candidate" ? out.local : out.remote).push(c);
      }
    });
    r.forEach((x) => {
      if (x.type === "transport" && x.selectedCandidatePairId) {
        const pair = r.get(x.selectedCandidatePairId);
        if (pair) out.selected = { local: byId.get(pair.localCandidateId) || null, remote: byId.get(pair.remoteCandidateId) || null };
      }
    });
    return out;
  }
  // Test hooks, not in the web client (bad input, MEDIA.md §2): send any control frame on the
  // sig channel to `id`, as it is.
  function sendRaw(id, frame) { return ctl(id, frame); }
  // A real Chromium offer (audio, audio, video, video) whose every codec is renamed to one
  // nobody knows (payload types kept).
  async function unknownCodecOffer() {
    const sdp = await scratchOffer(["audio", "audio", "video", "video"]);
    return sdp.replace(/^a=rtpmap:(\d+) [^/\r\n]+\//gm, "a=rtpmap:$1 X-NOPE-$1/");
  }
  // A real offer from a throwaway pc with these m-lines (its own ICE credentials and DTLS).
  async function scratchOffer(kinds) {
    const pc = new RTCPeerConnection();
    for (const k of kinds) pc.addTransceiver(k, { direction: "sendrecv" });
    const o = await pc.createOffer();
    pc.close();
    return o.sdp;
  }
  // A PeerJS client outside the roster: it opens a data connection to `id` (the default,
  // sig-like one) and sends `frames` once it is open; resolves whether it opened.
  async function strangerSend(id, frames) {
    const peer = new Peer({ host: opts.host, port: Number(opts.port), path: opts.path || "/", secure: false, debug: 1, config: { iceServers: [] } });
    try {
      await opened(peer);
      const conn = peer.connect(id, { reliable: true });
      const open = await withTimeout(new Promise((res) => conn.on("open", () => res(true))), 10000, "stranger's channel").catch(() => false);
      if (open) for (const f of frames) conn.send(f);
      await new Promise((r) => setTimeout(r, 1000));
      return open;
    } finally { peer.destroy(); }
  }
  function receivedChats() { return chats.slice(); }
  function debugLog() { return log.slice(); }
  async function leave() {
    if (!joined || left) return false;
    left = true;
    for (const id of links.sig.keys()) ctl(id, { t: "bye" });
    if (presenceConn && presenceConn.open) presenceConn.send({ t: "leave" });
    for (const t of timers) clearInterval(t);
    await new Promise((r) => setTimeout(r, 250));
    for (const p of peers.values()) { dropPc(p); dropLegacy(p); }
    for (const map of [links.sig, links.bulk]) for (const l of map.values()) l.conn.close();
    for (const peer of [mediaPeer, presence]) if (peer) peer.destroy();
    for (const t of [micTrack, camTrack, shareTrackObj]) if (t) t.stop();
    return true;
  }
  return { join, toggleMic, toggleCam, shareTrack, stopShare, setCapabilityGrant, chat, receivedChats, stats, leave, recoverNow, setMeta, candidates, sendRaw, unknownCodecOffer, scratchOffer, strangerSend, log: debugLog };
})();
