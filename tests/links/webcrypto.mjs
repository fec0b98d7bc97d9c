// The platform side of the room-link crypto interop test (tests/tests/links_interop.rs): the
// formats of KIBITZ.md §3.5 done with WebCrypto, as the Kibitz web client does them, with no npm
// packages. Node 20+ (globalThis.crypto), falling back to node:crypto's webcrypto.
//
//   open BLOB PASSWORD            → the sealed plaintext; exit 1 if it does not open
//   verify TOKEN JWK              → the token's payload JSON; exit 1 if it does not verify
//   host-sign LINK PASSWORD JSON  → a token over JSON signed with the host key the link seals
//                                   under PASSWORD (checked against the link's gh); exit 1 if not
//   make PLAINTEXT PASSWORD JSON  → {"blob","token","jwk","link"}: PLAINTEXT sealed under
//                                   PASSWORD, JSON signed with a fresh key whose public JWK (as
//                                   WebCrypto exports it) is "jwk", and a room link committing a
//                                   fresh host key sealed under PASSWORD

import { EC, b64url, dec, enc, signToken as sign, subtle, unb64url, verifyToken as verify, webcrypto } from '../node/webcrypto.mjs'

const random = (n) => webcrypto.getRandomValues(new Uint8Array(n))

async function passKey(password, salt) {
  const base = await subtle.importKey('raw', enc.encode(password.normalize('NFKC')), 'PBKDF2', false, ['deriveKey'])
  return subtle.deriveKey(
    { name: 'PBKDF2', salt, iterations: 210_000, hash: 'SHA-256' },
    base,
    { name: 'AES-GCM', length: 256 },
    false,
    ['encrypt', 'decrypt'],
  )
}

async function seal(text, password) {
  const salt = random(16)
  const iv = random(12)
  const ct = new Uint8Array(await subtle.encrypt({ name: 'AES-GCM', iv }, await passKey(password, salt), enc.encode(text)))
  return b64url(new Uint8Array([1, ...salt, ...iv, ...ct]))
}

async function unseal(blob, password) {
  try {
    const raw = unb64url(blob)
    if (raw.length < 1 + 16 + 12 + 16 || raw[0] !== 1) return null
    const key = await passKey(password, raw.slice(1, 17))
    return dec.decode(await subtle.decrypt({ name: 'AES-GCM', iv: raw.slice(17, 29) }, key, raw.slice(29)))
  } catch {
    return null
  }
}

// The gate parameters of a link, as the app reads them: the fragment's after `#room?` when it
// has any gate key, else the query's.
const GATE_KEYS = ['g', 'gn', 'gk', 'gm', 'ge', 'gc', 'gt', 'gh', 'ghk', 'ghn', 'gho', 'gl', 'gd', 'd', 'ag', 'n']
function gateParams(link) {
  const url = new URL(link)
  const hash = url.hash.replace(/^#/, '')
  const q = hash.indexOf('?')
  const fragment = new URLSearchParams(q < 0 ? '' : hash.slice(q + 1))
  return GATE_KEYS.some((k) => fragment.has(k)) ? fragment : url.searchParams
}

async function hostSign(link, password, payload) {
  const p = gateParams(link)
  const pub = JSON.parse(dec.decode(unb64url(p.get('gh') ?? '')))
  const sealed = await unseal(p.get('ghk') ?? '', password)
  if (!sealed) return null
  const priv = await subtle.importKey('jwk', JSON.parse(sealed), EC, true, ['sign'])
  const token = await sign(priv, payload)
  return (await verify(token, pub)) ? token : null
}

async function make(plaintext, password, payload) {
  const signer = await subtle.generateKey(EC, true, ['sign', 'verify'])
  const host = await subtle.generateKey(EC, true, ['sign', 'verify'])
  const gate = new URLSearchParams()
  gate.set('gh', b64url(enc.encode(JSON.stringify(await subtle.exportKey('jwk', host.publicKey)))))
  gate.set('ghk', await seal(JSON.stringify(await subtle.exportKey('jwk', host.privateKey)), password))
  return {
    blob: await seal(plaintext, password),
    token: await sign(signer.privateKey, payload),
    jwk: await subtle.exportKey('jwk', signer.publicKey),
    link: `https://kibitz.chat/#webcrypto-room?${gate}`,
  }
}

const [cmd, ...args] = process.argv.slice(2)
let out = null
if (cmd === 'open') out = await unseal(args[0], args[1])
else if (cmd === 'verify') {
  const payload = await verify(args[0], JSON.parse(args[1]))
  out = payload && JSON.stringify(payload)
} else if (cmd === 'host-sign') out = await hostSign(args[0], args[1], JSON.parse(args[2]))
else if (cmd === 'make') out = JSON.stringify(await make(args[0], args[1], JSON.parse(args[2])))
else {
  console.error(`unknown command ${cmd}`)
  process.exit(2)
}
if (out === null) {
  console.log('null')
  process.exit(1)
}
console.log(out)
