/**
 * Slack's request signing, version `v0`: every request Chorus sends to an app (Events
 * API callbacks, the `url_verification` challenge, slash commands) carries
 *
 *   X-Slack-Request-Timestamp: <unix seconds>
 *   X-Slack-Signature: v0=<hex HMAC-SHA256(signing secret, "v0:" + timestamp + ":" + raw body)>
 *
 * and an app rejects a request whose timestamp is more than five minutes away from its
 * clock (replay protection). Pure functions, no I/O: the clock is an argument.
 */
import { createHmac, timingSafeEqual } from "node:crypto"

export const version = "v0"

/** How far a request's timestamp may be from the verifier's clock, as Slack's SDKs allow. */
export const defaultToleranceSeconds = 300

export const timestampHeader = "x-slack-request-timestamp"
export const signatureHeader = "x-slack-signature"

/** `v0=<hex>` of `body` sent at `timestampSeconds`. */
export const sign = (secret: string, timestampSeconds: number, body: string): string =>
  `${version}=${createHmac("sha256", secret).update(`${version}:${timestampSeconds}:${body}`, "utf8").digest("hex")}`

/** The two headers of a signed request, for `body` sent at `nowMs`. */
export const headers = (secret: string, body: string, nowMs: number): Record<string, string> => {
  const timestamp = Math.floor(nowMs / 1000)
  return { [timestampHeader]: String(timestamp), [signatureHeader]: sign(secret, timestamp, body) }
}

export type Verification =
  | { readonly ok: true }
  | { readonly ok: false; readonly reason: "missing_headers" | "invalid_timestamp" | "stale_timestamp" | "invalid_signature" }

/**
 * Whether a request really comes from the holder of `secret`: both headers present, a
 * timestamp within `toleranceSeconds` of `nowMs` (either side), and a signature equal,
 * in constant time, to the one computed over the raw body.
 */
export const verify = (input: {
  readonly secret: string
  readonly body: string
  readonly timestamp: string | undefined
  readonly signature: string | undefined
  readonly nowMs: number
  readonly toleranceSeconds?: number
}): Verification => {
  const { body, nowMs, secret, signature, timestamp } = input
  if (timestamp === undefined || signature === undefined) return { ok: false, reason: "missing_headers" }
  if (!/^\d{1,12}$/.test(timestamp)) return { ok: false, reason: "invalid_timestamp" }
  const seconds = Number(timestamp)
  if (Math.abs(nowMs / 1000 - seconds) > (input.toleranceSeconds ?? defaultToleranceSeconds)) return { ok: false, reason: "stale_timestamp" }
  const expected = Buffer.from(sign(secret, seconds, body), "utf8")
  const given = Buffer.from(signature, "utf8")
  if (given.length !== expected.length || !timingSafeEqual(given, expected)) return { ok: false, reason: "invalid_signature" }
  return { ok: true }
}
