// A Kibitz web client's offline (LAN) layer, minimal and faithful to LAN.md §3–§7 and the web
// client's galaxyHub/lanRoom/lanMesh: the hub channel from the blob's synthesised answer, the
// LAN room (hi / present every 2.5 s / reap after 8 s / bye) and the mesh (the smaller id string
// dials, data channel `content` plus audio and video, offer/answer/trickle over `sig`, JSON text
// frames). Exposed as window.L for tests/node/lan-room.mjs.
"use strict";
(() => {
  const BEACON_MS = 2500;
  const REAP_MS = 8000;
  const log = [];
  const note = (s) => log.push(`${Math.round(performance.now())} ${s}`);

  function parseBlob(raw) {
    const parts = String(raw || "").trim().split("|");
    if (parts.length < 5 || (parts[0] !== "g1" && parts[0] !== "g2")) throw new Error("bad blob");
    const [, ufrag, pwd, fp] = parts;
    if (!ufrag || !pwd || !fp) throw new Error("bad blob");
    let turn = null;
    let rest = parts.slice(4);
    if (parts[0] === "g2") {
      const [port, user, pass] = parts[4].split(",");
      const p = Number(port);
      if (Number.isInteger(p) && p >= 1 && p <= 65535 && user && pass) turn = { port: p, user, pass };
      rest = parts.slice(5);
    }
    const endpoints = [];
    for (const ep of rest) {
      const at = ep.lastIndexOf("~");
      if (at <= 0) continue;
      const port = Number(ep.slice(at + 1));
      if (!Number.isInteger(port) || port < 1 || port > 65535) continue;
      endpoints.push({ addr: ep.slice(0, at), port });
    }
    if (!endpoints.length) throw new Error("bad blob: no endpoint");
    const bin = atob(fp.replace(/-/g, "+").replace(/_/g, "/"));
    if (bin.length !== 32) throw new Error("bad blob: fingerprint");
    const hex = [...bin].map((c) => c.charCodeAt(0).toString(16).padStart(2, "0").toUpperCase()).join(":");
    return { ufrag, pwd, hex, turn, endpoints };
  }

  function answerFor(offerSdp, b) {
    const mid = (offerSdp.match(/^a=mid:(\S+)/m) || [])[1] ?? "0";
    const lines = [
      "v=0", "o=- 1 1 IN IP4 127.0.0.1", "s=-", "t=0 0", "a=ice-lite", `a=group:BUNDLE ${mid}`,
      "a=msid-semantic: WMS", "m=application 9 UDP/DTLS/SCTP webrtc-datachannel", "c=IN IP4 0.0.0.0",
      `a=ice-ufrag:${b.ufrag}`, `a=ice-pwd:${b.pwd}`, `a=fingerprint:sha-256 ${b.hex}`, "a=setup:passive",
      `a=mid:${mid}`, "a=sctp-port:5000", "a=max-message-size:262144",
    ];
    b.endpoints.forEach((e, i) =>
      lines.push(`a=candidate:${i + 1} 1 udp ${2130706431 - i} ${e.addr} ${e.port} typ host generation 0`));
    return lines.join("\r\n") + "\r\n";
  }

  const normalizeRoom = (r) => String(r).toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-+|-+$/g, "").slice(0, 40);

  // --- the hub (galaxyHub) ---
  let blob = null;
  let hub = null; // {pc, ch, id}
  // One waiter, as the web client's galaxyHub: a newer peers() takes over from an older one.
  let peersWaiter = null;

  function connectHub() {
    return new Promise((resolve, reject) => {
      const pc = new RTCPeerConnection({ iceServers: [] });
      const ch = pc.createDataChannel("hub");
      const h = { pc, ch, id: null, closed: false };
      const timer = setTimeout(() => { pc.close(); reject(new Error("hub: no id in 6 s")); }, 6000);
      ch.onmessage = (e) => {
        let f;
        try { f = JSON.parse(e.data); } catch { return; }
        if (f.t === "id" && h.id === null) {
          h.id = f.id;
          clearTimeout(timer);
          resolve(h);
        } else if (f.t === "peers") {
          const w = peersWaiter;
          peersWaiter = null;
          w?.(Array.isArray(f.ids) ? f.ids : []);
        } else if (f.t === "from") {
          note(`from ${f.id} ${f.payload?.k}`);
          onFrame(f.id, f.payload);
        }
      };
      const lost = () => {
        if (h.closed) return;
        h.closed = true;
        if (h.id !== null) onHubClose(h);
      };
      ch.onclose = lost;
      pc.onconnectionstatechange = () => ["failed", "closed"].includes(pc.connectionState) && lost();
      (async () => {
        await pc.setLocalDescription(await pc.createOffer());
        await pc.setRemoteDescription({ type: "answer", sdp: answerFor(pc.localDescription.sdp, blob) });
      })().catch((e) => { clearTimeout(timer); reject(e); });
    });
  }
  const hubSend = (obj) => hub?.ch.readyState === "open" && hub.ch.send(JSON.stringify(obj));
  function peers() {
    return new Promise((resolve) => {
      peersWaiter = resolve;
      hubSend({ t: "peers" });
      setTimeout(() => {
        if (peersWaiter === resolve) {
          peersWaiter = null;
          note("peers timed out");
          resolve([]);
        }
      }, 3000);
    });
  }
  async function broadcast(payload) {
    const ids = await peers();
    note(`broadcast ${payload.k} to ${ids}`);
    for (const id of ids) if (hub && id !== hub.id) hubSend({ t: "to", id, payload });
  }
  const sendTo = (to, payload) => hubSend({ t: "to", id: Number(to), payload });

  // --- the room (lanRoom) ---
  let roomKey = "";
  let self = { on: false, name: "Guest" };
  const others = new Map(); // String(id) -> {name, seen}
  const chats = [];
  let beacon = null;
  let closed = false;
  const myId = () => (hub ? String(hub.id) : "");

  const announce = () => self.on && hub && void broadcast({ k: "present", name: self.name, cam: false, avatar: "" });
  function onFrame(from, raw) {
    if (closed || !raw || typeof raw !== "object") return;
    const fid = String(from);
    switch (raw.k) {
      case "hi": announce(); break;
      case "present":
        others.set(fid, { name: raw.name || "Guest", seen: Date.now() });
        setRoster();
        break;
      case "bye":
        if (others.delete(fid)) setRoster();
        break;
      case "sig": onSignal(fid, raw.payload); break;
    }
  }
  function onHubClose(h) {
    if (hub !== h) return;
    hub = null;
    note("hub lost");
    if (!closed) setTimeout(() => reconnect(), 2000);
  }
  async function reconnect() {
    try {
      hub = await connectHub();
      hubSend({ t: "join", room: roomKey });
      void broadcast({ k: "hi" });
      announce();
    } catch {
      if (!closed) setTimeout(() => reconnect(), 3000);
    }
  }

  // --- the mesh (lanMesh) ---
  const links = new Map(); // id -> pc
  const remoteTypes = []; // candidate types the peers trickled to us
  const dataChans = new Map(); // id -> channel
  let local = null;
  function wireData(remote, ch) {
    dataChans.set(remote, ch);
    ch.onopen = () => note(`content open ${remote}`);
    ch.onmessage = (e) => {
      if (dataChans.get(remote) !== ch) return;
      let m;
      try { m = JSON.parse(e.data); } catch { return; }
      if (m && m.k === "chat") chats.push({ from: remote, text: m.text });
    };
    const drop = () => dataChans.get(remote) === ch && dataChans.delete(remote);
    ch.onclose = drop;
    ch.onerror = drop;
  }
  function makeLink(remote) {
    const turn = blob.turn
      ? [...new Set(blob.endpoints.filter((e) => /^\d+\.\d+\.\d+\.\d+$/.test(e.addr)).map((e) => e.addr))]
          .map((ip) => ({ urls: `turn:${ip}:${blob.turn.port}?transport=udp`, username: blob.turn.user, credential: blob.turn.pass }))
      : [];
    const pc = new RTCPeerConnection(turn.length ? { iceServers: turn, iceTransportPolicy: "relay" } : { iceServers: [] });
    links.set(remote, pc);
    local?.getTracks().forEach((t) => pc.addTrack(t, local));
    pc.ondatachannel = (e) => wireData(remote, e.channel);
    pc.onicecandidate = (e) => e.candidate && sendTo(remote, { k: "sig", payload: { c: e.candidate.toJSON() } });
    pc.onconnectionstatechange = () => {
      note(`pc ${remote} ${pc.connectionState}`);
      if ((pc.connectionState === "failed" || pc.connectionState === "closed") && links.get(remote) === pc) {
        links.delete(remote);
        dataChans.delete(remote);
      }
    };
    return pc;
  }
  async function dial(remote) {
    note(`dial ${remote}`);
    const pc = makeLink(remote);
    wireData(remote, pc.createDataChannel("content"));
    try {
      await pc.setLocalDescription(await pc.createOffer());
      sendTo(remote, { k: "sig", payload: { d: pc.localDescription.toJSON() } });
    } catch (e) { note(`dial failed ${e}`); }
  }
  function onSignal(from, payload) {
    if (!payload || typeof payload !== "object") return;
    (async () => {
      if (payload.d?.type === "offer") {
        note(`offer from ${from}`);
        links.get(from)?.close();
        links.delete(from);
        dataChans.delete(from);
        const pc = makeLink(from);
        await pc.setRemoteDescription(payload.d);
        await pc.setLocalDescription(await pc.createAnswer());
        sendTo(from, { k: "sig", payload: { d: pc.localDescription.toJSON() } });
      } else if (payload.d) {
        await links.get(from)?.setRemoteDescription(payload.d);
      } else if (payload.c) {
        remoteTypes.push((/ typ (\S+)/.exec(payload.c.candidate || "") || [])[1] ?? "?");
        await links.get(from)?.addIceCandidate(payload.c);
      }
    })().catch((e) => note(`sig from ${from} failed: ${e}`));
  }
  function setRoster() {
    const me = myId();
    for (const [id, pc] of links) {
      if (!others.has(id)) {
        pc.close();
        links.delete(id);
        dataChans.delete(id);
      }
    }
    for (const id of others.keys()) {
      if (id === me || links.has(id)) continue;
      if (me < id) void dial(id);
    }
  }

  window.L = {
    /** Connects to the hub the blob names; resolves to our id. */
    async connect(rawBlob) {
      blob = parseBlob(rawBlob);
      try {
        local = await navigator.mediaDevices.getUserMedia({ audio: true, video: true });
      } catch (e) {
        note(`no media: ${e}`);
      }
      hub = await connectHub();
      return String(hub.id);
    },
    /** Joins the room as `name` (after connect). */
    join(room, name) {
      roomKey = normalizeRoom(room);
      self = { on: true, name };
      hubSend({ t: "join", room: roomKey });
      void broadcast({ k: "hi" });
      announce();
      beacon = setInterval(() => {
        if (closed) return;
        announce();
        const cutoff = Date.now() - REAP_MS;
        let changed = false;
        for (const [id, e] of others) if (e.seen < cutoff) (others.delete(id), (changed = true));
        if (changed) setRoster();
      }, BEACON_MS);
      return roomKey;
    },
    id: myId,
    roster: () => [...others.entries()].map(([id, e]) => ({ id, name: e.name })),
    openLinks: () => [...dataChans.entries()].filter(([, ch]) => ch.readyState === "open").map(([id]) => id),
    /** Sends a chat line over every open content channel; resolves to how many. */
    chat(text) {
      let n = 0;
      for (const ch of dataChans.values()) {
        if (ch.readyState !== "open") continue;
        ch.send(JSON.stringify({ k: "chat", text, mid: `${myId()}#${chats.length + 1}`, ts: Date.now() }));
        n++;
      }
      return n;
    },
    chats: () => chats.slice(),
    /** The types (host, relay, …) of every candidate a peer trickled to us. */
    remoteCandidateTypes: () => remoteTypes.slice(),
    /** Leaves: bye to everyone, then closes everything. */
    async leave() {
      if (closed) return;
      if (hub && self.on) await broadcast({ k: "bye" });
      closed = true;
      clearInterval(beacon);
      for (const pc of links.values()) pc.close();
      links.clear();
      dataChans.clear();
      hub?.pc.close();
    },
    log: () => log.slice(),
  };
})();
