/**
 * Rate limits (API.md, "Conventions"; docs/decisions/0014-presence-and-limits.md):
 * token buckets in this node's memory, checked before any work is done for a call —
 * before authentication, before a database or actor is asked — so that a flood from
 * one token costs a map lookup per call and never slows anyone else.
 *
 * - Web API: one bucket per token and method, sized by the method's Slack tier
 *   (calls per minute, configurable; a bucket holds a minute's worth, at least
 *   `rateLimitMinBurst`). Over it: HTTP 429, `Retry-After`, `{"ok":false,"error":"ratelimited"}`.
 * - `chat.postMessage` is Slack's "special" tier: one bucket per token and channel,
 *   `postRate` messages per second sustained with bursts of `postBurst`. Message
 *   frames on a socket draw from the same kind of bucket (per token id and channel).
 * - Calls without a token are limited per client address, at tier 4.
 * - WebSocket frames: one bucket per socket; a refused frame is answered with a
 *   `ratelimited` error, and a socket that keeps flooding (`socketFloodClose` refusals
 *   in a row) is closed.
 *
 * Limits are per node: a client spreading its calls over N nodes gets up to N times
 * the rate (as with Slack, the numbers are guidance, not a contract). The bucket map is
 * bounded; the least recently used buckets are forgotten first (a forgotten bucket is a
 * full one). `CHORUS_RATE_LIMITS=off` turns every check into a no-op.
 */
import { Context, Effect, Layer } from "effect"
import { createHash } from "node:crypto"
import type { ChorusConfigShape } from "../config/ChorusConfig.ts"
import { ChorusConfig } from "../config/ChorusConfig.ts"

// ---- the bucket (pure) ------------------------------------------------------------------

export interface Bucket {
  tokens: number
  /** When `tokens` was last brought up to date (ms). */
  at: number
}

/** A bucket's rate (tokens per second) and capacity. */
export interface Limit {
  readonly perSecond: number
  readonly capacity: number
}

export const fullBucket = (limit: Limit, now: number): Bucket => ({ tokens: limit.capacity, at: now })

/**
 * Takes one token from `bucket` (mutated) at time `now`: 0 when taken, else the
 * milliseconds until one will be there (nothing is taken).
 */
export const take = (bucket: Bucket, limit: Limit, now: number): number => {
  if (now > bucket.at) {
    bucket.tokens = Math.min(limit.capacity, bucket.tokens + ((now - bucket.at) / 1000) * limit.perSecond)
    bucket.at = now
  }
  if (bucket.tokens >= 1) {
    bucket.tokens -= 1
    return 0
  }
  return Math.ceil(((1 - bucket.tokens) / limit.perSecond) * 1000)
}

// ---- Slack's tiers ----------------------------------------------------------------------

export type Tier = 1 | 2 | 3 | 4 | "post" | "none"

/**
 * The tier of each method, as Slack documents it (methods not listed are tier 3).
 * `post`: per token and channel (chat.postMessage). `none`: not limited (operator methods).
 */
export const methodTiers: Readonly<Record<string, Tier>> = {
  "rtm.connect": 1,
  "team.create": 1,
  "apps.create": 1,
  "apps.uninstall": 1,
  "admin.users.invite": 2,
  "conversations.create": 2,
  "conversations.list": 2,
  "conversations.archive": 2,
  "conversations.unarchive": 2,
  "conversations.rename": 2,
  "users.list": 2,
  "users.setPresence": 2,
  "search.messages": 2,
  "users.info": 4,
  "files.getUploadURLExternal": 4,
  "files.completeUploadExternal": 4,
  "files.info": 4,
  "auth.test": 4,
  "chat.postEphemeral": 4,
  "chat.getPermalink": 4,
  "chat.postMessage": "post"
}

const isOperatorMethod = (method: string) => method.startsWith("cluster.")

/** The tier of `method`, with the configured overrides. */
export const tierOf = (method: string, overrides: Readonly<Record<string, number>>): Tier => {
  if (isOperatorMethod(method)) return "none"
  const override = overrides[method]
  if (override === 1 || override === 2 || override === 3 || override === 4) return override
  return methodTiers[method] ?? 3
}

export interface Limits {
  readonly tiers: readonly [number, number, number, number]
  readonly minBurst: number
  readonly overrides: Readonly<Record<string, number>>
  readonly post: Limit
  readonly socket: Limit
  readonly floodClose: number
}

export const limitsOf = (config: ChorusConfigShape): Limits => ({
  tiers: config.rateLimitTiers,
  minBurst: config.rateLimitMinBurst,
  overrides: config.rateLimitMethods,
  post: { perSecond: config.postRate, capacity: config.postBurst },
  socket: { perSecond: config.socketFrameRate, capacity: config.socketFrameBurst },
  floodClose: config.socketFloodClose
})

/** A tier's bucket: its calls per minute, a minute's worth of burst (at least `minBurst`). */
export const tierLimit = (limits: Limits, tier: 1 | 2 | 3 | 4): Limit => {
  const perMinute = limits.tiers[tier - 1] ?? limits.tiers[2]
  return { perSecond: perMinute / 60, capacity: Math.max(limits.minBurst, perMinute) }
}

// ---- the service ------------------------------------------------------------------------

export type Verdict = { readonly ok: true } | { readonly ok: false; readonly retryAfterSeconds: number }

export interface Call {
  readonly method: string
  /** The token as presented (never stored: buckets are keyed by its hash). */
  readonly token: string | undefined
  /** The `channel` argument (for per-channel limits). */
  readonly channel: string | undefined
  /** The client's address, for calls without a token. */
  readonly address: string | undefined
}

/** What a socket's frame limiter says about one frame. */
export type FrameVerdict = "ok" | "refused" | "close"

export interface SocketLimiter {
  readonly frame: (now?: number) => FrameVerdict
}

export interface RateLimiterShape {
  readonly enabled: boolean
  /** A Web API call, before any work: a token or address bucket of the method's tier. */
  readonly checkCall: (call: Call) => Verdict
  /** A message posted over a socket by the token `tokenId` (the ticket's) to `channel`. */
  readonly checkPost: (tokenId: string, channel: string) => Verdict
  /** A frame limiter for a new socket. */
  readonly socket: () => SocketLimiter
}

export class RateLimiter extends Context.Tag("chorus/transport/RateLimiter")<RateLimiter, RateLimiterShape>() {}

const allow: Verdict = { ok: true }
const unlimitedSocket: SocketLimiter = { frame: () => "ok" }

/** Buckets kept per node; past it the least recently used go. */
export const defaultCapacity = 200_000

const tokenKey = (token: string) => createHash("sha256").update(token, "utf8").digest("base64url").slice(0, 22)

/** The limiter over `limits`; `now` is injectable for tests. */
export const makeUnsafe = (
  limits: Limits,
  options: { readonly enabled?: boolean; readonly capacity?: number; readonly now?: () => number } = {}
): RateLimiterShape => {
  const now = options.now ?? Date.now
  const capacity = options.capacity ?? defaultCapacity
  if (options.enabled === false) {
    return { enabled: false, checkCall: () => allow, checkPost: () => allow, socket: () => unlimitedSocket }
  }
  const buckets = new Map<string, Bucket>()
  const tiers = [tierLimit(limits, 1), tierLimit(limits, 2), tierLimit(limits, 3), tierLimit(limits, 4)] as const

  const check = (key: string, limit: Limit): Verdict => {
    const at = now()
    let bucket = buckets.get(key)
    if (bucket === undefined) {
      bucket = fullBucket(limit, at)
      if (buckets.size >= capacity) {
        // Least recently used first: Map order is insertion order, refreshed on use.
        const drop = Math.max(1, Math.floor(capacity / 100))
        let n = 0
        for (const k of buckets.keys()) {
          if (n++ >= drop) break
          buckets.delete(k)
        }
      }
    } else {
      buckets.delete(key)
    }
    buckets.set(key, bucket)
    const wait = take(bucket, limit, at)
    return wait === 0 ? allow : { ok: false, retryAfterSeconds: Math.max(1, Math.ceil(wait / 1000)) }
  }

  const checkCall = (call: Call): Verdict => {
    const tier = tierOf(call.method, limits.overrides)
    if (tier === "none") return allow
    if (call.token === undefined) {
      return call.address === undefined ? allow : check(`a|${call.address}|${call.method}`, tiers[3])
    }
    const who = tokenKey(call.token)
    if (tier === "post") {
      return call.channel === undefined ? allow : check(`p|${who}|${call.channel}`, limits.post)
    }
    return check(`t|${who}|${call.method}`, tiers[tier - 1] ?? tiers[2])
  }

  const checkPost = (tokenId: string, channel: string): Verdict => check(`s|${tokenId}|${channel}`, limits.post)

  const socket = (): SocketLimiter => {
    const bucket = fullBucket(limits.socket, now())
    let refusedInARow = 0
    return {
      frame: (at = now()) => {
        if (take(bucket, limits.socket, at) === 0) {
          refusedInARow = 0
          return "ok"
        }
        refusedInARow++
        return refusedInARow >= limits.floodClose ? "close" : "refused"
      }
    }
  }

  return { enabled: true, checkCall, checkPost, socket }
}

export const make: Effect.Effect<RateLimiterShape, never, ChorusConfig> = Effect.map(ChorusConfig, (config) =>
  makeUnsafe(limitsOf(config), { enabled: config.rateLimits }))

export const layer: Layer.Layer<RateLimiter, never, ChorusConfig> = Layer.effect(RateLimiter, make)

/** Seconds as a `Retry-After` value. */
export const retryAfter = (verdict: { readonly retryAfterSeconds: number }): string => String(verdict.retryAfterSeconds)

/** For tests: a limiter with explicit limits. */
export const layerWith = (limits: Limits, enabled = true): Layer.Layer<RateLimiter> =>
  Layer.succeed(RateLimiter, makeUnsafe(limits, { enabled }))
