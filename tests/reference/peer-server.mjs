// Reference PeerJS broker for the conformance suite: the real `peer@1.0.2` library, embedded.
//
// Usage: node tests/reference/peer-server.mjs '<json options>'
//
// The JSON options are passed to `PeerServer()` (port, path, key, expire_timeout, alive_timeout,
// concurrent_limit, allow_discovery, corsOptions, cleanup_out_msgs, ...). The server always
// listens on 127.0.0.1; `port` defaults to 0 (an ephemeral port). Once listening it prints
// `LISTENING <port>` on stdout. It exits when stdin closes, so it never outlives the test harness.

const opts = JSON.parse(process.argv[2] ?? "{}");

// The library lives in tests/node/node_modules; ESM resolves bare specifiers relative to this
// file, so import the package entry point by path (its own imports then resolve from there).
const { PeerServer } = await import(
  new URL("../node/node_modules/peer/dist/module.mjs", import.meta.url)
);

const peer = PeerServer({ port: 0, ...opts, host: "127.0.0.1" }, (server) => {
  process.stdout.write(`LISTENING ${server.address().port}\n`);
});

// Without an 'error' listener, a non-JSON frame crashes the whole process (an unhandled 'error'
// event, PEERJS.md §1.4). Log it instead, like the CLI's uncaughtException logger.
peer.on("error", (err) => {
  process.stderr.write(`peer-server: error: ${err?.message ?? err}\n`);
});

process.stdin.on("end", () => process.exit(0));
process.stdin.on("error", () => process.exit(0));
process.stdin.resume();
