// Shared by the WebCrypto interop scripts: Kibitz's signed-token format done the way the web
// client does it (ES256 with raw r‖s over base64url JSON; base64url via btoa/atob, no padding
// out, padding optional in). Node 20+, no npm packages.

export const webcrypto = globalThis.crypto ?? (await import('node:crypto')).webcrypto
export const { subtle } = webcrypto
export const enc = new TextEncoder()
export const dec = new TextDecoder()

export const EC = { name: 'ECDSA', namedCurve: 'P-256' }
export const SIGN = { name: 'ECDSA', hash: 'SHA-256' }

export function b64url(bytes) {
  let bin = ''
  for (const b of bytes) bin += String.fromCharCode(b)
  return btoa(bin).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '')
}

export function unb64url(text) {
  const b64 = text.replace(/-/g, '+').replace(/_/g, '/')
  const bin = atob(b64 + '='.repeat((4 - (b64.length % 4)) % 4))
  return Uint8Array.from(bin, (c) => c.charCodeAt(0))
}

/** `base64url(JSON) "." base64url(raw r‖s)` signed with a WebCrypto ECDSA private key. */
export async function signToken(privateKey, payload) {
  const body = b64url(enc.encode(JSON.stringify(payload)))
  const sig = new Uint8Array(await subtle.sign(SIGN, privateKey, enc.encode(body)))
  return `${body}.${b64url(sig)}`
}

/** The payload if `token` is signed by the public `jwk`, else null (split at the first dot). */
export async function verifyToken(token, jwk) {
  const dot = token.indexOf('.')
  if (dot < 1 || dot === token.length - 1) return null
  const body = token.slice(0, dot)
  try {
    const payload = JSON.parse(dec.decode(unb64url(body)))
    const key = await subtle.importKey('jwk', jwk, EC, true, ['verify'])
    return (await subtle.verify(SIGN, key, unb64url(token.slice(dot + 1)), enc.encode(body))) ? payload : null
  } catch {
    return null
  }
}
