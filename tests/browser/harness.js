// In-page helpers for peerjs-e2e.mjs (classic script, loaded after peerjs.min.js).
// Everything hangs off window.H; scenarios passed to page.evaluate() only use H.
"use strict";

window.H = (() => {
  let brokerOptions = null;
  const allPeers = [];

  function configure(opts) {
    brokerOptions = opts;
  }

  // Passing undefined as the id makes peerjs fetch one from the broker (GET <path><key>/id).
  function newPeer(id) {
    const peer = new peerjs.Peer(id, { ...brokerOptions });
    allPeers.push(peer);
    return peer;
  }

  function withTimeout(promise, ms, what) {
    let timer;
    const timeout = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
    });
    return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
  }

  function sleep(ms) {
    return new Promise((resolve) => setTimeout(resolve, ms));
  }

  function errorText(err) {
    return err && err.type ? `${err.type}: ${err.message}` : String(err);
  }

  // Resolves with the first argument of `event`; rejects if `failOn` fires first.
  function once(emitter, event, { failOn = "error", ms = 15000, what = event } = {}) {
    const waiting = new Promise((resolve, reject) => {
      const cleanup = () => {
        emitter.off(event, onEvent);
        if (failOn) emitter.off(failOn, onFail);
      };
      const onEvent = (value) => { cleanup(); resolve(value); };
      const onFail = (err) => { cleanup(); reject(new Error(`${failOn} while waiting for ${what}: ${errorText(err)}`)); };
      emitter.on(event, onEvent);
      if (failOn) emitter.on(failOn, onFail);
    });
    return withTimeout(waiting, ms, what);
  }

  async function openPeer(id) {
    const peer = newPeer(id);
    const openedId = await once(peer, "open", { what: `peer ${id ?? "(server-assigned id)"} to open` });
    if (openedId !== peer.id) throw new Error(`open fired with id ${openedId} but peer.id is ${peer.id}`);
    return peer;
  }

  async function expectPeerError(peer, type, ms) {
    const err = await once(peer, "error", { failOn: "open", ms, what: `peer error ${type}` });
    if (err.type !== type) throw new Error(`expected error type ${type}, got ${errorText(err)}`);
    return err;
  }

  function whenOpen(conn, what) {
    return conn.open ? Promise.resolve() : once(conn, "open", { what });
  }

  // a dials b; resolves with both ends once their data channels are open.
  async function connectPair(a, b, serialization) {
    const incoming = once(b, "connection", { what: `${b.id} to receive a connection` });
    const connA = a.connect(b.id, { serialization, reliable: true });
    const connB = await incoming;
    if (connB.peer !== a.id) throw new Error(`connection came from ${connB.peer}, expected ${a.id}`);
    if (connB.serialization !== serialization) {
      throw new Error(`remote end negotiated serialization ${connB.serialization}, expected ${serialization}`);
    }
    await Promise.all([whenOpen(connA, "dialer side to open"), whenOpen(connB, "answerer side to open")]);
    return [connA, connB];
  }

  // Buffers 'data' events so nothing is lost between sends and awaits.
  function inbox(conn) {
    const queue = [];
    const waiters = [];
    conn.on("data", (data) => {
      const waiter = waiters.shift();
      if (waiter) waiter(data);
      else queue.push(data);
    });
    return {
      next(ms, what) {
        if (queue.length) return Promise.resolve(queue.shift());
        return withTimeout(new Promise((resolve) => waiters.push(resolve)), ms, what);
      },
    };
  }

  function isBinary(v) {
    return v instanceof ArrayBuffer || ArrayBuffer.isView(v);
  }

  function bytesOf(v) {
    return v instanceof ArrayBuffer ? new Uint8Array(v) : new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
  }

  function describe(v) {
    if (isBinary(v)) return `${v.constructor.name}(${v.byteLength} bytes)`;
    const json = JSON.stringify(v);
    return json && json.length > 120 ? `${json.slice(0, 120)}…` : String(json);
  }

  // Returns null when equal, otherwise where/how they differ. Binary payloads may come back as
  // ArrayBuffer instead of Uint8Array (binarypack), so only the bytes are compared.
  function difference(expected, actual, where = "value") {
    if (isBinary(expected)) {
      if (!isBinary(actual)) return `${where}: expected binary, got ${describe(actual)}`;
      const e = bytesOf(expected);
      const a = bytesOf(actual);
      if (e.length !== a.length) return `${where}: expected ${e.length} bytes, got ${a.length}`;
      const i = e.findIndex((byte, idx) => byte !== a[idx]);
      return i < 0 ? null : `${where}: byte ${i} is ${a[i]}, expected ${e[i]}`;
    }
    if (expected === null || typeof expected !== "object") {
      return Object.is(expected, actual) ? null : `${where}: expected ${describe(expected)}, got ${describe(actual)}`;
    }
    if (Array.isArray(expected) !== Array.isArray(actual) || actual === null || typeof actual !== "object") {
      return `${where}: expected ${describe(expected)}, got ${describe(actual)}`;
    }
    const keys = new Set([...Object.keys(expected), ...Object.keys(actual)]);
    for (const key of keys) {
      const diff = difference(expected[key], actual[key], `${where}.${key}`);
      if (diff) return diff;
    }
    return null;
  }

  // Sends all messages on `from`, then checks they arrive in order and intact on `to`.
  async function sendAndCheck(from, to, messages, label) {
    for (const msg of messages) from.send(msg);
    for (const [i, msg] of messages.entries()) {
      const got = await to.next(10000, `${label} message #${i} (${describe(msg)})`);
      const diff = difference(msg, got, `${label} message #${i}`);
      if (diff) throw new Error(diff);
    }
  }

  async function exchange(a, b, serialization, messages) {
    const [connA, connB] = await connectPair(a, b, serialization);
    try {
      const inboxA = inbox(connA);
      const inboxB = inbox(connB);
      await sendAndCheck(connA, inboxB, messages, "A->B");
      await sendAndCheck(connB, inboxA, messages, "B->A");
    } finally {
      connA.close();
    }
  }

  // Deterministic pattern so a corrupted or reordered chunk is detectable.
  function patternBytes(n) {
    const bytes = new Uint8Array(n);
    for (let i = 0; i < n; i++) bytes[i] = (i * 31 + (i >> 8)) & 0xff;
    return bytes;
  }

  // Scenarios after the first reuse its two peers.
  function requireOpenPeers() {
    const { a, b } = H.peers;
    if (!a?.open || !b?.open) throw new Error("peers from the first scenario are not open");
    return { a, b };
  }

  function destroyAll() {
    for (const peer of allPeers) peer.destroy();
  }

  return {
    peers: {}, // filled by the first scenario: { a, b }
    configure, sleep, newPeer, openPeer, once, expectPeerError,
    exchange, patternBytes, requireOpenPeers, destroyAll,
  };
})();
