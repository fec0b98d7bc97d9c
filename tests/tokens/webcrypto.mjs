// The platform side of the token interop test (tests/tests/tokens_interop.rs): host commands
// (KIBITZ.md §4.6), agent assertions and thumbprints (§4.7) and RS256 credit JWTs done with
// WebCrypto, as the Kibitz web client and an issuer would, with no npm packages. Node 20+.
//
//   sign JSON                        → {"jwk","token"}: JSON signed (ES256, raw r‖s) with a fresh
//                                      P-256 key whose public JWK is exported as WebCrypto does
//   verify-host TOKEN JWK ROOM FP NOW → the payload JSON if it is a valid host command for ROOM
//                                      from FP at NOW (unix s); exit 1 if not
//   verify-agent TOKEN JWK ROOM FP NOW → the payload JSON if it is a valid agent assertion; exit 1
//   thumbprint JWK                   → base64url SHA-256 of {"crv","kty","x","y"} JSON
//   credit JSON KID                  → {"jwt","jwks"}: JSON as RS256 JWT claims signed with a fresh
//                                      2048-bit RSASSA-PKCS1-v1_5 key, and its JWKS

import { EC, b64url, enc, signToken, subtle, verifyToken as verify } from '../node/webcrypto.mjs'

const RSA = { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' }

const canonicalFp = (fp) => String(fp ?? '').trim().toLowerCase()
const OPS = ['claim', 'lobbyon', 'lobbyoff', 'admit', 'deny', 'lock', 'unlock', 'reset', 'kick']

// The coordinator's checks (hostKey.ts): signature, kind, room, op, fp binding, iat, age, jti.
async function verifyHost(token, jwk, room, fp, now) {
  if (token.length > 8192) return null
  const p = await verify(token, jwk)
  if (!p || p.k !== 'kbz-host-cmd.v1' || p.room !== room || !OPS.includes(p.op)) return null
  if (canonicalFp(p.fp) !== canonicalFp(fp)) return null
  if (typeof p.iat !== 'number' || p.iat > now + 60 || now - p.iat > 120) return null
  if (typeof p.jti !== 'string' || !/^[0-9a-f]{24}$/.test(p.jti)) return null
  return p
}

// agentKey.ts: signature by a manifest key, kind, room, fp, age ≤ 300 s, iat ≤ now + 60.
async function verifyAgent(token, jwk, room, fp, now) {
  if (token.length > 2048) return null
  const p = await verify(token, jwk)
  if (!p || p.k !== 'kbz-agent-key.v1' || p.room !== room) return null
  if (canonicalFp(p.fp) !== canonicalFp(fp)) return null
  if (typeof p.iat !== 'number' || p.iat > now + 60 || now - p.iat > 300) return null
  return p
}

async function thumbprint(jwk) {
  const json = JSON.stringify({ crv: jwk.crv, kty: jwk.kty, x: jwk.x, y: jwk.y })
  return b64url(new Uint8Array(await subtle.digest('SHA-256', enc.encode(json))))
}

async function sign(payload) {
  const pair = await subtle.generateKey(EC, true, ['sign', 'verify'])
  return { jwk: await subtle.exportKey('jwk', pair.publicKey), token: await signToken(pair.privateKey, payload) }
}

async function credit(claims, kid) {
  const pair = await subtle.generateKey(
    { ...RSA, modulusLength: 2048, publicExponent: new Uint8Array([1, 0, 1]) },
    true,
    ['sign', 'verify'],
  )
  const header = { alg: 'RS256', typ: 'JWT', kid }
  const input = `${b64url(enc.encode(JSON.stringify(header)))}.${b64url(enc.encode(JSON.stringify(claims)))}`
  const sig = new Uint8Array(await subtle.sign(RSA, pair.privateKey, enc.encode(input)))
  const jwk = { ...(await subtle.exportKey('jwk', pair.publicKey)), kid, use: 'sig' }
  return { jwt: `${input}.${b64url(sig)}`, jwks: { keys: [jwk] } }
}

const [cmd, ...args] = process.argv.slice(2)
let out = null
if (cmd === 'sign') out = JSON.stringify(await sign(JSON.parse(args[0])))
else if (cmd === 'verify-host' || cmd === 'verify-agent') {
  const check = cmd === 'verify-host' ? verifyHost : verifyAgent
  const p = await check(args[0], JSON.parse(args[1]), args[2], args[3], Number(args[4]))
  out = p && JSON.stringify(p)
} else if (cmd === 'thumbprint') out = await thumbprint(JSON.parse(args[0]))
else if (cmd === 'credit') out = JSON.stringify(await credit(JSON.parse(args[0]), args[1]))
else {
  console.error(`unknown command ${cmd}`)
  process.exit(2)
}
if (out === null) {
  console.log('null')
  process.exit(1)
}
console.log(out)
