// A Kibitz web client's hub link (LAN.md §3–4, §7), as `window.H`, driven by hub-pages.mjs.
// It does exactly what galaxySignal does: RTCPeerConnection({iceServers: []}), one data
// channel "hub", an offer, and the hub's answer synthesised from the blob alone. On top, the
// LAN mesh's `sig` exchange (§7) so two pages can open their own peer connection via the hub.
// Events go out through `window.kbzEvent` (a Playwright binding): every hub frame received,
// channel close, peer connection states, `content` messages.
(() => {
  const emit = (ev) => {
    try {
      window.kbzEvent(ev);
    } catch {
      // the binding is gone while the page closes
    }
  };

  // parseGalaxyBlob (LAN.md §2), the web's rules.
  function parseBlob(raw) {
    const s = String(raw ?? "").trim();
    if (!s) throw new Error("empty blob");
    const parts = s.split("|");
    if (parts.length < 5) throw new Error("too few fields");
    if (parts[0] !== "g1" && parts[0] !== "g2") throw new Error("bad version");
    const [, ufrag, pwd, fp] = parts;
    if (!ufrag || !pwd || !fp) throw new Error("missing field");
    let turn = null;
    let first = 4;
    if (parts[0] === "g2") {
      first = 5;
      const [port, user, pass] = parts[4].split(",");
      const p = Number(port);
      if (Number.isInteger(p) && p >= 1 && p <= 65535 && user && pass) turn = { port: p, user, pass };
    }
    const endpoints = [];
    for (const ep of parts.slice(first)) {
      const at = ep.lastIndexOf("~");
      if (at <= 0) continue;
      const port = Number(ep.slice(at + 1));
      if (!Number.isInteger(port) || port < 1 || port > 65535) continue;
      endpoints.push({ addr: ep.slice(0, at), port });
    }
    if (!endpoints.length) throw new Error("no endpoint");
    const b64 = fp.replace(/-/g, "+").replace(/_/g, "/");
    const bin = atob(b64 + "=".repeat((4 - (b64.length % 4)) % 4));
    if (bin.length !== 32) throw new Error("fingerprint is not 32 bytes");
    const fpHex = [...bin].map((c) => c.charCodeAt(0).toString(16).toUpperCase().padStart(2, "0")).join(":");
    return { ufrag, pwd, fpHex, turn, endpoints };
  }

  // The synthesised answer, line for line as LAN.md §3 lists it.
  function answerSdp(offerSdp, b) {
    const m = /^a=mid:(.*)$/m.exec(offerSdp);
    const mid = m ? m[1].trim() : "0";
    const lines = [
      "v=0",
      "o=- 1 1 IN IP4 127.0.0.1",
      "s=-",
      "t=0 0",
      "a=ice-lite",
      `a=group:BUNDLE ${mid}`,
      "a=msid-semantic: WMS",
      "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
      "c=IN IP4 0.0.0.0",
      `a=ice-ufrag:${b.ufrag}`,
      `a=ice-pwd:${b.pwd}`,
      `a=fingerprint:sha-256 ${b.fpHex}`,
      "a=setup:passive",
      `a=mid:${mid}`,
      "a=sctp-port:5000",
      "a=max-message-size:262144",
    ];
    b.endpoints.forEach((ep, i) => {
      lines.push(`a=candidate:${i + 1} 1 udp ${2130706431 - i} ${ep.addr} ${ep.port} typ host generation 0`);
    });
    return lines.join("\r\n") + "\r\n";
  }

  let pc = null;
  let ch = null;
  let myId = null;
  let blob = null;
  let quiet = false; // bench mode: count frames instead of emitting each one
  const waiters = { peers: [], echo: [] };
  // Per sender: frames counted, the last `seq`, and how many arrived out of order (bench).
  const counts = { frames: 0, bytes: 0, bySender: {} };

  function send(text) {
    if (!ch || ch.readyState !== "open") throw new Error(`hub channel is ${ch?.readyState ?? "absent"}`);
    ch.send(text);
  }
  const sendTo = (id, payload) => send(JSON.stringify({ t: "to", id, payload }));

  // Waits until the channel's buffer drains below `low`, so floods do not overflow it (Chrome
  // closes the channel when more than 16 MiB is queued).
  function drained(low) {
    if (ch.bufferedAmount <= low) return Promise.resolve();
    ch.bufferedAmountLowThreshold = low;
    return new Promise((resolve) => ch.addEventListener("bufferedamountlow", resolve, { once: true }));
  }

  function onFrame(ev) {
    if (typeof ev.data !== "string") {
      emit({ ev: "frame", binary: ev.data.byteLength ?? ev.data.size ?? 0 });
      return;
    }
    counts.frames += 1;
    counts.bytes += ev.data.length;
    let f;
    try {
      f = JSON.parse(ev.data);
    } catch {
      emit({ ev: "frame", text: ev.data, invalid: true });
      return;
    }
    if (f && f.t === "from") {
      const key = String(f.id);
      const s = (counts.bySender[key] ??= { n: 0, lastSeq: -1, outOfOrder: 0 });
      s.n += 1;
      if (f.payload && typeof f.payload.seq === "number") {
        if (f.payload.seq !== s.lastSeq + 1) s.outOfOrder += 1;
        s.lastSeq = f.payload.seq;
      }
      if (f.payload && f.payload.k === "sig") onSig(f.id, f.payload.payload);
    }
    if (f && f.t === "peers") waiters.peers.shift()?.(f);
    if (f && f.t === "echo") waiters.echo.shift()?.(f);
    if (!quiet) emit({ ev: "frame", text: ev.data });
  }

  /** Connects to the hub the blob names; resolves to {id, ms, totalMs} when `id` arrives. */
  async function connect(rawBlob, opts = {}) {
    if (pc) throw new Error("already connected");
    quiet = !!opts.quiet;
    blob = parseBlob(rawBlob);
    const t0 = performance.now();
    pc = new RTCPeerConnection({ iceServers: [] });
    ch = pc.createDataChannel("hub");
    const gotId = new Promise((resolve, reject) => {
      ch.onmessage = (ev) => {
        if (myId === null && typeof ev.data === "string") {
          try {
            const f = JSON.parse(ev.data);
            if (f.t === "id" && Number.isInteger(f.id)) {
              myId = f.id;
              resolve(performance.now());
            }
          } catch {
            // not the id frame; onFrame reports it
          }
        }
        onFrame(ev);
      };
      ch.onclose = () => {
        emit({ ev: "close" });
        reject(new Error("hub channel closed before id"));
      };
    });
    gotId.catch(() => {});
    // When each stage finished, relative to setRemoteDescription: a slow `id` says where.
    const stages = {};
    let tRemote = 0;
    const mark = (name) => (stages[name] ??= Math.round(performance.now() - tRemote));
    pc.onconnectionstatechange = () => {
      mark(`pc-${pc.connectionState}`);
      emit({ ev: "state", state: pc.connectionState });
    };
    pc.oniceconnectionstatechange = () => mark(`ice-${pc.iceConnectionState}`);
    ch.onopen = () => mark("channel-open");
    const offer = await pc.createOffer();
    await pc.setLocalDescription(offer);
    const sdp = answerSdp(pc.localDescription.sdp, blob);
    tRemote = performance.now();
    await pc.setRemoteDescription({ type: "answer", sdp });
    const tId = await gotId;
    return { id: myId, ms: tId - tRemote, totalMs: tId - t0, stages };
  }

  /** Sends `{"t":"peers"}` and resolves to the ids of the next `peers` answer. */
  async function peers(waitMs = 5000) {
    const answer = new Promise((resolve, reject) => {
      waiters.peers.push(resolve);
      setTimeout(() => reject(new Error(`no peers answer within ${waitMs} ms`)), waitMs);
    });
    send(JSON.stringify({ t: "peers" }));
    return (await answer).ids;
  }

  async function echo(x, waitMs = 5000) {
    const answer = new Promise((resolve, reject) => {
      waiters.echo.push(resolve);
      setTimeout(() => reject(new Error(`no echo answer within ${waitMs} ms`)), waitMs);
    });
    send(JSON.stringify({ t: "echo", x }));
    return (await answer).x ?? null;
  }

  /** Sends every text in `texts`, `times` times over, pausing whenever 1 MiB is queued. */
  async function sendMany(texts, times = 1) {
    let n = 0;
    for (let r = 0; r < times; r++) {
      for (const t of texts) {
        send(t);
        n += 1;
        if (ch.bufferedAmount > 1 << 20) await drained(1 << 18);
      }
    }
    return n;
  }

  /** `count` frames `to` dst with payload {tag, seq}, seq from 0; flow-controlled. */
  async function sendSeq(dst, count, tag = "") {
    const t0 = performance.now();
    for (let seq = 0; seq < count; seq++) {
      send(JSON.stringify({ t: "to", id: dst, payload: { tag, seq } }));
      if (ch.bufferedAmount > 1 << 20) await drained(1 << 18);
    }
    await drained(0);
    return { sent: count, ms: performance.now() - t0 };
  }

  function sendBinary(len) {
    if (!ch || ch.readyState !== "open") throw new Error("hub channel not open");
    ch.send(new Uint8Array(len).fill(0x7b)); // '{' bytes: JSON-looking, still binary
    return len;
  }

  function close() {
    try {
      ch?.close();
    } catch {}
    pc?.close();
    for (const l of links.values()) l.pc.close();
    links.clear();
    closeSessions();
    pc = null;
    ch = null;
    myId = null;
    return null;
  }

  // ---- more sessions from one page (the benchmark): each its own RTCPeerConnection to the
  // hub, exactly as connect() makes it, held until closeSessions().
  const extras = [];

  /** Opens `n` more hub sessions, `parallel` at a time; their ids and setRemoteDescription→id ms. */
  async function openSessions(rawBlob, n, parallel = 1) {
    const b = parseBlob(rawBlob);
    const ids = [];
    const ms = [];
    const failures = [];
    async function one() {
      const xpc = new RTCPeerConnection({ iceServers: [] });
      extras.push(xpc);
      const xch = xpc.createDataChannel("hub");
      const got = new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error("no id within 10 s")), 10_000);
        xch.onmessage = (e) => {
          try {
            const f = JSON.parse(e.data);
            if (f.t === "id") {
              clearTimeout(timer);
              resolve([f.id, performance.now()]);
            }
          } catch {
            // only the id frame matters here
          }
        };
        xch.onclose = () => reject(new Error("channel closed before id"));
      });
      got.catch(() => {});
      await xpc.setLocalDescription(await xpc.createOffer());
      const t = performance.now();
      await xpc.setRemoteDescription({ type: "answer", sdp: answerSdp(xpc.localDescription.sdp, b) });
      const [id, tId] = await got;
      ids.push(id);
      ms.push(tId - t);
    }
    let next = 0;
    const worker = async () => {
      while (next < n) {
        next += 1;
        await one().catch((e) => failures.push(String(e?.message ?? e)));
      }
    };
    await Promise.all(Array.from({ length: Math.max(1, parallel) }, worker));
    return { ids, ms, failures };
  }

  function closeSessions() {
    for (const x of extras.splice(0)) x.close();
    return null;
  }

  // ---- LAN mesh over `sig` (LAN.md §7): a peer connection per other page, channel `content`.
  const links = new Map(); // peer hub id (number) -> {pc, dc, got: [], pending: []}
  let rtcConfig = { iceServers: [] };

  function newLink(peer) {
    links.get(peer)?.pc.close();
    const lpc = new RTCPeerConnection(rtcConfig);
    const link = { pc: lpc, dc: null, got: [], pending: [] };
    links.set(peer, link);
    lpc.onicecandidate = (e) => {
      if (!e.candidate) return; // trickle, no end marker
      const c = e.candidate;
      sendTo(peer, {
        k: "sig",
        payload: { c: { candidate: c.candidate, sdpMid: c.sdpMid, sdpMLineIndex: c.sdpMLineIndex, usernameFragment: c.usernameFragment } },
      });
    };
    lpc.onconnectionstatechange = () => emit({ ev: "link", peer, state: lpc.connectionState });
    return link;
  }

  function wire(peer, link, dc) {
    link.dc = dc;
    dc.onmessage = (e) => {
      link.got.push(String(e.data));
      emit({ ev: "content", peer, text: String(e.data) });
    };
    dc.onopen = () => emit({ ev: "content-open", peer });
  }

  async function addCandidates(link) {
    for (const c of link.pending.splice(0)) await link.pc.addIceCandidate(c).catch(() => {});
  }

  async function onSig(from, p) {
    try {
      if (p?.d?.type === "offer") {
        const link = newLink(from);
        link.pc.ondatachannel = (e) => wire(from, link, e.channel);
        await link.pc.setRemoteDescription(p.d);
        await addCandidates(link);
        const answer = await link.pc.createAnswer();
        await link.pc.setLocalDescription(answer);
        sendTo(from, { k: "sig", payload: { d: { type: "answer", sdp: link.pc.localDescription.sdp } } });
      } else if (p?.d?.type === "answer") {
        const link = links.get(from);
        if (!link) return;
        await link.pc.setRemoteDescription(p.d);
        await addCandidates(link);
      } else if (p?.c) {
        const link = links.get(from);
        if (!link) return;
        if (link.pc.remoteDescription) await link.pc.addIceCandidate(p.c).catch(() => {});
        else link.pending.push(p.c);
      }
    } catch (err) {
      emit({ ev: "sig-error", peer: from, error: String(err?.message ?? err) });
    }
  }

  /** Sets the RTCConfiguration every later link (dialled or answered) uses. */
  function setRtcConfig(config) {
    rtcConfig = config;
    return null;
  }

  /** Dials `peer` (LAN.md §7): data channel `content`, offer over `sig`. */
  async function dial(peer) {
    const link = newLink(peer);
    wire(peer, link, link.pc.createDataChannel("content"));
    const offer = await link.pc.createOffer();
    await link.pc.setLocalDescription(offer);
    sendTo(peer, { k: "sig", payload: { d: { type: "offer", sdp: link.pc.localDescription.sdp } } });
    return null;
  }

  function linkSend(peer, text) {
    const link = links.get(peer);
    if (!link?.dc || link.dc.readyState !== "open") throw new Error(`content channel to ${peer} is not open`);
    link.dc.send(text);
    return null;
  }

  /** The link's state, its channel's, and the selected pair's candidate types. */
  async function linkStats(peer) {
    const link = links.get(peer);
    if (!link) return null;
    const stats = await link.pc.getStats();
    let pair = null;
    stats.forEach((s) => {
      if (s.type === "transport" && s.selectedCandidatePairId) pair = stats.get(s.selectedCandidatePairId);
    });
    const cand = (id) => {
      const c = id ? stats.get(id) : null;
      return c ? { type: c.candidateType, address: c.address, port: c.port, protocol: c.protocol, relayProtocol: c.relayProtocol ?? null } : null;
    };
    return {
      state: link.pc.connectionState,
      channel: link.dc?.readyState ?? null,
      got: link.got.slice(),
      pair: pair ? { state: pair.state, local: cand(pair.localCandidateId), remote: cand(pair.remoteCandidateId) } : null,
    };
  }

  window.H = {
    parseBlob,
    answerSdp,
    connect,
    send: (text) => (send(text), null),
    sendMany,
    sendSeq,
    sendBinary,
    join: (room) => (send(JSON.stringify({ t: "join", room })), null),
    to: (id, payload) => (sendTo(id, payload), null),
    peers,
    echo,
    counts: () => JSON.parse(JSON.stringify(counts)),
    resetCounts: () => ((counts.frames = 0), (counts.bytes = 0), (counts.bySender = {}), null),
    info: () => ({ id: myId, pc: pc?.connectionState ?? null, channel: ch?.readyState ?? null }),
    close,
    openSessions,
    closeSessions,
    setRtcConfig,
    dial,
    linkSend,
    linkStats,
  };
})();
