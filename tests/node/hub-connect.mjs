// A Chromium page connecting to a Kibitz LAN hub exactly as the web client does (LAN.md §3):
// an offer with one `hub` data channel, the hub's answer synthesised from the blob, then the
// hub channel protocol. Driven by tests/tests/lan_hub.rs.
//
// Usage: node hub-connect.mjs <blob>
// Scenarios: id, join-peers, echo-256k, bad-frames-ignored, to-self.
import { launchChromium, pageErrorMessage, runScenarios, startPageServer, withTimeout } from "./chromium.mjs";

const blob = process.argv[2];
if (!blob) {
  console.error("usage: hub-connect.mjs <blob>");
  process.exit(2);
}

// Runs in the page. Mirrors the web client's galaxy blob parser and answer builder.
const PAGE_JS = String.raw`
function b64urlToHexColons(s) {
  const bin = atob(s.replace(/-/g, "+").replace(/_/g, "/") + "=".repeat((4 - (s.length % 4)) % 4));
  if (bin.length !== 32) throw new Error("fingerprint is not 32 bytes");
  return [...bin].map((c) => c.charCodeAt(0).toString(16).toUpperCase().padStart(2, "0")).join(":");
}
function parseBlob(raw) {
  const parts = raw.trim().split("|");
  if (parts.length < 5 || (parts[0] !== "g1" && parts[0] !== "g2")) throw new Error("bad blob");
  const [, ufrag, pwd, fp] = parts;
  const eps = [];
  for (const s of parts.slice(parts[0] === "g2" ? 5 : 4)) {
    const at = s.lastIndexOf("~");
    const port = Number(s.slice(at + 1));
    if (at > 0 && Number.isInteger(port) && port >= 1 && port <= 65535) eps.push({ addr: s.slice(0, at), port });
  }
  if (!eps.length) throw new Error("no endpoint");
  return { ufrag, pwd, fp: b64urlToHexColons(fp), eps };
}
function answerFor(offerSdp, b) {
  const m = /^a=mid:(.*)$/m.exec(offerSdp);
  const mid = m ? m[1].trim() : "0";
  const lines = ["v=0", "o=- 1 1 IN IP4 127.0.0.1", "s=-", "t=0 0", "a=ice-lite", "a=group:BUNDLE " + mid,
    "a=msid-semantic: WMS", "m=application 9 UDP/DTLS/SCTP webrtc-datachannel", "c=IN IP4 0.0.0.0",
    "a=ice-ufrag:" + b.ufrag, "a=ice-pwd:" + b.pwd, "a=fingerprint:sha-256 " + b.fp, "a=setup:passive",
    "a=mid:" + mid, "a=sctp-port:5000", "a=max-message-size:262144"];
  b.eps.forEach((e, i) => lines.push("a=candidate:" + (i + 1) + " 1 udp " + (2130706431 - i) + " " + e.addr + " " + e.port + " typ host generation 0"));
  return lines.join("\r\n") + "\r\n";
}
// One hub connection: resolves with {id, send, next(pred, ms), close, timing}.
window.connectHub = async (raw) => {
  const b = parseBlob(raw);
  const t0 = performance.now();
  const pc = new RTCPeerConnection({ iceServers: [] });
  const dc = pc.createDataChannel("hub");
  const inbox = [];
  const waiters = [];
  dc.onmessage = (ev) => {
    if (typeof ev.data !== "string") return;
    inbox.push(JSON.parse(ev.data));
    for (const w of [...waiters]) w();
  };
  const next = (pred, ms) => new Promise((resolve, reject) => {
    const look = () => {
      const i = inbox.findIndex(pred);
      if (i < 0) return false;
      const [f] = inbox.splice(i, 1);
      waiters.splice(waiters.indexOf(look), 1);
      clearTimeout(timer);
      resolve(f);
      return true;
    };
    const timer = setTimeout(() => { waiters.splice(waiters.indexOf(look), 1); reject(new Error("no matching frame in " + ms + " ms; inbox " + JSON.stringify(inbox).slice(0, 200))); }, ms);
    waiters.push(look);
    look();
  });
  const offer = await pc.createOffer();
  await pc.setLocalDescription(offer);
  await pc.setRemoteDescription({ type: "answer", sdp: answerFor(offer.sdp, b) });
  const idFrame = await next((f) => f.t === "id", 6000);
  const idMs = performance.now() - t0;
  return {
    id: idFrame.id,
    idMs,
    maxMessageSize: pc.sctp ? pc.sctp.maxMessageSize : null,
    send: (obj) => dc.send(typeof obj === "string" ? obj : JSON.stringify(obj)),
    sendBinary: () => dc.send(new Uint8Array([1, 2, 3])),
    next,
    close: () => pc.close(),
  };
};
`;

const NAMES = ["id", "join-peers", "echo-256k", "bad-frames-ignored", "to-self"];

await runScenarios(NAMES, 60_000, async (state) => {
  state.server = await startPageServer({
    "/": { type: "text/html", body: "<!doctype html><meta charset=utf-8><link rel=icon href='data:,'><title>hub</title><script src=/page.js></script>" },
    "/page.js": { type: "text/javascript", body: PAGE_JS },
  });
  state.browser = await launchChromium();
  const page = await (await state.browser.newContext()).newPage();
  await page.goto(`http://127.0.0.1:${state.server.address().port}/`);
  const run = async (name, fn) => {
    try {
      state.report(name, null, await withTimeout(page.evaluate(fn, blob), 30_000, name));
    } catch (err) {
      state.report(name, pageErrorMessage(err));
    }
  };

  await run("id", async (raw) => {
    const h = await window.connectHub(raw);
    window.hub = h;
    if (!Number.isInteger(h.id) || h.id < 1) throw new Error("bad id " + h.id);
    return `id ${h.id} after ${Math.round(h.idMs)} ms`;
  });
  await run("join-peers", async () => {
    const h = window.hub;
    h.send({ t: "join", room: "lan-test" });
    h.send({ t: "peers" });
    const f = await h.next((f) => f.t === "peers", 5000);
    if (!Array.isArray(f.ids) || f.ids.length !== 1 || f.ids[0] !== h.id) throw new Error("peers " + JSON.stringify(f));
    return "peers [self]";
  });
  await run("echo-256k", async () => {
    const h = window.hub;
    // The whole frame must fit the advertised 262144: payload + {"t":"echo","x":""} (19 bytes).
    const x = "k".repeat(262144 - 19);
    const frame = JSON.stringify({ t: "echo", x });
    if (frame.length !== 262144) throw new Error("frame " + frame.length);
    const t0 = performance.now();
    h.send(frame);
    const f = await h.next((f) => f.t === "echo", 20000);
    if (f.x !== x) throw new Error("echo differs, length " + String(f.x).length);
    return `${frame.length} bytes round trip in ${Math.round(performance.now() - t0)} ms`;
  });
  await run("bad-frames-ignored", async () => {
    const h = window.hub;
    h.send("not json");
    h.send({ t: "dance" });
    h.send({ t: "to", id: "1", payload: 1 });
    h.sendBinary();
    h.send({ t: "echo", x: "still here" });
    const f = await h.next((f) => f.t === "echo", 5000);
    if (f.x !== "still here") throw new Error("echo " + JSON.stringify(f));
    return "session kept";
  });
  await run("to-self", async () => {
    const h = window.hub;
    h.send({ t: "to", id: h.id, payload: { k: "hi", n: [1, 2.5] } });
    const f = await h.next((f) => f.t === "from", 5000);
    if (f.id !== h.id || JSON.stringify(f.payload) !== '{"k":"hi","n":[1,2.5]}') throw new Error("from " + JSON.stringify(f));
    h.close();
    return "from self";
  });
});
