// Token buckets: Slack's tiers per token and method, chat.postMessage per channel,
// anonymous calls per address, socket flood control, and the off switch.
import { describe, expect, it } from "vitest"
import type { Limits } from "../../src/transport/RateLimiter.ts"
import { makeUnsafe, take, tierOf } from "../../src/transport/RateLimiter.ts"

const limits: Limits = {
  tiers: [1, 20, 50, 100],
  minBurst: 5,
  overrides: { "conversations.history": 1 },
  post: { perSecond: 1, capacity: 3 },
  socket: { perSecond: 10, capacity: 5 },
  floodClose: 3
}

describe("rate limiter", () => {
  it("a bucket refills at its rate up to its capacity", () => {
    const bucket = { tokens: 2, at: 0 }
    const limit = { perSecond: 2, capacity: 2 }
    expect(take(bucket, limit, 0)).toBe(0)
    expect(take(bucket, limit, 0)).toBe(0)
    expect(take(bucket, limit, 0)).toBe(500)
    expect(take(bucket, limit, 500)).toBe(0)
    expect(take(bucket, limit, 10_000)).toBe(0)
    expect(bucket.tokens).toBe(1)
  })

  it("tiers per token and method; overrides; operator methods unlimited", () => {
    expect(tierOf("rtm.connect", {})).toBe(1)
    expect(tierOf("conversations.history", {})).toBe(3)
    expect(tierOf("conversations.history", limits.overrides)).toBe(1)
    expect(tierOf("chat.postMessage", {})).toBe("post")
    expect(tierOf("cluster.status", {})).toBe("none")
    let now = 0
    const l = makeUnsafe(limits, { now: () => now })
    const call = (token: string, method: string, channel?: string) => l.checkCall({ method, token, channel, address: "1.2.3.4" })
    // Tier 1: a burst of minBurst, then one a minute.
    for (let i = 0; i < 5; i++) expect(call("a", "rtm.connect").ok).toBe(true)
    expect(call("a", "rtm.connect")).toEqual({ ok: false, retryAfterSeconds: 60 })
    expect(call("b", "rtm.connect").ok).toBe(true) // another token is unaffected
    expect(call("a", "users.info").ok).toBe(true) // another method too
    now += 60_000
    expect(call("a", "rtm.connect").ok).toBe(true)
    // Posting: per channel.
    for (let i = 0; i < 3; i++) expect(call("a", "chat.postMessage", "C1").ok).toBe(true)
    expect(call("a", "chat.postMessage", "C1")).toEqual({ ok: false, retryAfterSeconds: 1 })
    expect(call("a", "chat.postMessage", "C2").ok).toBe(true)
    expect(l.checkPost("token-id", "C1").ok).toBe(true)
    for (let i = 0; i < 100; i++) expect(call("op", "cluster.status").ok).toBe(true)
  })

  it("calls without a token are limited per address at tier 4", () => {
    const l = makeUnsafe(limits, { now: () => 0 })
    for (let i = 0; i < 100; i++) expect(l.checkCall({ method: "auth.login", token: undefined, channel: undefined, address: "a" }).ok).toBe(true)
    expect(l.checkCall({ method: "auth.login", token: undefined, channel: undefined, address: "a" }).ok).toBe(false)
    expect(l.checkCall({ method: "auth.login", token: undefined, channel: undefined, address: "b" }).ok).toBe(true)
  })

  it("a flooding socket is refused, then closed; a pause resets it", () => {
    let now = 0
    const socket = makeUnsafe(limits, { now: () => now }).socket()
    for (let i = 0; i < 5; i++) expect(socket.frame()).toBe("ok")
    expect(socket.frame()).toBe("refused")
    now += 100
    expect(socket.frame()).toBe("ok")
    expect(socket.frame()).toBe("refused")
    expect(socket.frame()).toBe("refused")
    expect(socket.frame()).toBe("close")
  })

  it("off: nothing is ever refused", () => {
    const l = makeUnsafe(limits, { enabled: false })
    for (let i = 0; i < 1000; i++) expect(l.checkCall({ method: "rtm.connect", token: "t", channel: undefined, address: undefined }).ok).toBe(true)
    expect(l.socket().frame()).toBe("ok")
  })

  it("the bucket map is bounded", () => {
    const l = makeUnsafe(limits, { capacity: 100, now: () => 0 })
    for (let i = 0; i < 10_000; i++) l.checkCall({ method: "users.info", token: `t${i}`, channel: undefined, address: undefined })
    // Still answers; the oldest buckets were forgotten (a forgotten bucket is full).
    expect(l.checkCall({ method: "users.info", token: "t0", channel: undefined, address: undefined }).ok).toBe(true)
  })
})
