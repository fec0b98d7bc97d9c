// Differential harness for the Rust BinaryPack codec against the reference JS one
// (peerjs-js-binarypack 2.1.0, installed in tests/node).
//
//   node tests/binarypack/diff.mjs <rust-cases.jsonl> <seed> <count>
//
// 1. Every line of <rust-cases.jsonl> is {"spec": S, "hex": H}: S describes a JS value
//    (see build()), H is what the Rust encoder wrote for it. Prints one line per case:
//    {"js_hex": pack(S) | "ERR:…", "canon": canon(unpack(H)) | "ERR:…"}.
// 2. Then makes <count> random JS values from <seed>, and prints {"hex": pack(v),
//    "canon": canon(unpack(pack(v))), "repack": pack(unpack(pack(v))) | "ERR:…"} for each.
import { createRequire } from "node:module";
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const require = createRequire(join(here, "..", "node", "package.json"));
const { pack, unpack } = require("peerjs-js-binarypack");

const hex = (buf) => Buffer.from(buf).toString("hex");
const fromHex = (h) => {
  const b = Buffer.from(h, "hex");
  return b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength);
};
const numBits = (x) => {
  const dv = new DataView(new ArrayBuffer(8));
  dv.setFloat64(0, x);
  return hex(new Uint8Array(dv.buffer));
};
const bitsNum = (h) => new DataView(fromHex(h)).getFloat64(0);

// Spec: null | true | false | ["u"] | ["n", f64 bits hex] | ["s", string] | ["b", hex]
//       | ["a", [spec…]] | ["m", [[key string, spec]…]]
function build(s) {
  if (s === null || s === true || s === false) return s;
  switch (s[0]) {
    case "u": return undefined;
    case "n": return bitsNum(s[1]);
    case "s": return s[1];
    case "b": return new Uint8Array(Buffer.from(s[1], "hex"));
    case "a": return s[1].map(build);
    case "m": {
      const o = {};
      for (const [k, v] of s[1]) o[k] = build(v);
      return o;
    }
  }
  throw new Error(`bad spec ${JSON.stringify(s)}`);
}

// Canonical text, computed identically on the Rust side.
function canon(v) {
  if (v === null) return "N";
  if (v === undefined) return "U";
  if (v === true) return "T";
  if (v === false) return "F";
  if (typeof v === "number") return `n${numBits(v)}`;
  if (typeof v === "string") return `s${Buffer.from(v, "utf8").toString("hex")}`;
  if (v instanceof ArrayBuffer) return `b${hex(new Uint8Array(v))}`;
  if (Array.isArray(v)) return `[${v.map(canon).join(",")}]`;
  return `{${Object.keys(v).map((k) => `${canon(k)}:${canon(v[k])}`).join(",")}}`;
}

const attempt = (f) => {
  try {
    return f();
  } catch (e) {
    return `ERR:${e.message}`;
  }
};

const out = [];
for (const line of readFileSync(process.argv[2], "utf8").split("\n")) {
  if (!line) continue;
  const { spec, hex: h } = JSON.parse(line);
  out.push(JSON.stringify({
    js_hex: attempt(() => hex(new Uint8Array(pack(build(spec))))),
    canon: attempt(() => canon(unpack(fromHex(h)))),
  }));
}

// mulberry32
let state = Number(process.argv[3]) >>> 0;
const rnd = () => {
  state = (state + 0x6d2b79f5) >>> 0;
  let t = state;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
};
const int = (n) => Math.floor(rnd() * n);
const pick = (a) => a[int(a.length)];

function number() {
  switch (int(8)) {
    case 0: return int(256) - 128;
    case 1: return int(70000) - 35000;
    case 2: return Math.floor(rnd() * 2 ** 32) * pick([1, -1]);
    case 3: return Math.floor(rnd() * 2 ** 53) * pick([1, -1]) * pick([1, 1, 2 ** 10]);
    case 4: return (rnd() - 0.5) * 10 ** (int(40) - 20);
    case 5: { // arbitrary finite bits
      const dv = new DataView(new ArrayBuffer(8));
      for (let i = 0; i < 8; i++) dv.setUint8(i, int(256));
      const x = dv.getFloat64(0);
      return Number.isFinite(x) && (Math.floor(x) !== x || Math.abs(x) <= 2 ** 63) ? x : 1.25;
    }
    case 6: { // at and a hair below powers of two
      const k = int(120) - 100;
      return pick([1, 1 - 2 ** -53, 1 + 2 ** -52, 1 - 2 ** -52]) * 2 ** k * pick([1, -1]);
    }
    default: return pick([0, -0, 2 ** 63, -(2 ** 63), 2 ** 31, -(2 ** 31) - 1, 2 ** 32, 0.5, 1e-310, 5e-324]);
  }
}
function string() {
  const n = pick([0, 1, 5, 15, 16, 40, int(300)]);
  let s = "";
  for (let i = 0; i < n; i++) {
    const c = pick([int(0x80), 0x80 + int(0x780), 0x800 + int(0xd000), 0x10000 + int(0x100000)]);
    s += String.fromCodePoint(c >= 0xd800 && c < 0xe000 ? 0x41 : c);
  }
  return s;
}
function key() {
  const s = string();
  // Index-like keys are reordered by JS objects and __proto__ is not an own property.
  return /^\d/.test(s) || s === "__proto__" ? `k${s}` : s;
}
function value(depth) {
  const r = int(depth > 3 ? 7 : 10);
  switch (r) {
    case 0: return null;
    case 1: return rnd() < 0.5;
    case 2: case 3: return number();
    case 4: case 5: return string();
    case 6: return new Uint8Array(pick([0, 3, 15, 16, 300])).map(() => int(256));
    case 7: return Array.from({ length: pick([0, 1, 15, 16, int(20)]) }, () => value(depth + 1));
    default: {
      const o = {};
      for (let i = pick([0, 1, 15, 16, int(20)]); i > 0; i--) o[key()] = value(depth + 1);
      return o;
    }
  }
}
const count = Number(process.argv[4]);
for (let i = 0; i < count; i++) {
  const v = value(0);
  const packed = pack(v);
  const back = unpack(packed);
  out.push(JSON.stringify({
    hex: hex(new Uint8Array(packed)),
    canon: canon(back),
    // pack(unpack(x)) is not always x: pack_double slips near powers of two and on subnormals.
    repack: attempt(() => hex(new Uint8Array(pack(back)))),
  }));
}
process.stdout.write(`${out.join("\n")}\n`);
