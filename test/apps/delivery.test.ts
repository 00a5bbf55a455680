// The pure parts of apps: Slack's v0 signatures, event routing (who may see what,
// app_mention), the delivery state machine (order per channel, retries with their
// numbers, pausing), and the parsers of commands, webhook payloads and app answers.

import { describe, expect, it } from "vitest"
import { echoes } from "../../src/api/apps.ts"
import type { Attempt, ChannelView, Subscriber, Target } from "../../src/apps/EventDelivery.ts"
import { callbacksFor, Deliveries, envelope, mentions, Ticket } from "../../src/apps/EventDelivery.ts"
import * as SlackSignature from "../../src/apps/SlackSignature.ts"
import { parseAppMessage, parseCommand } from "../../src/apps/SlashCommands.ts"
import { answerFor, parsePayload } from "../../src/apps/Webhooks.ts"
import type { ChannelEvent } from "../../src/domain/ChannelEvents.ts"

describe("SlackSignature", () => {
  const secret = "8f742231b10e8888abcd99yyyzzz85a5"
  it("signs as Slack documents it (v0, HMAC-SHA256 over v0:ts:body)", () => {
    // Slack's documented example.
    const body = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c"
    expect(SlackSignature.sign(secret, 1531420618, body)).toBe("v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503")
  })
  it("verifies within the window, and refuses stale, altered or missing ones", () => {
    const now = 1_700_000_000_000
    const headers = SlackSignature.headers(secret, "{}", now)
    const base = { secret, body: "{}", timestamp: headers[SlackSignature.timestampHeader], signature: headers[SlackSignature.signatureHeader] }
    expect(SlackSignature.verify({ ...base, nowMs: now + 60_000 })).toEqual({ ok: true })
    expect(SlackSignature.verify({ ...base, nowMs: now + 301_000 })).toEqual({ ok: false, reason: "stale_timestamp" })
    expect(SlackSignature.verify({ ...base, body: "{ }", nowMs: now })).toEqual({ ok: false, reason: "invalid_signature" })
    expect(SlackSignature.verify({ ...base, secret: "other", nowMs: now })).toEqual({ ok: false, reason: "invalid_signature" })
    expect(SlackSignature.verify({ ...base, signature: undefined, nowMs: now })).toEqual({ ok: false, reason: "missing_headers" })
    expect(SlackSignature.verify({ ...base, timestamp: "12a", nowMs: now })).toEqual({ ok: false, reason: "invalid_timestamp" })
  })
})

const app = (scopes: ReadonlyArray<string>, events: ReadonlyArray<string>, bot = "UBOT"): Subscriber => ({
  id: "AAPP",
  teamId: "T1",
  botUserId: bot,
  scopes: new Set(scopes),
  events: new Set(events)
})
const channel = (type: ChannelView["type"], bots: ReadonlyArray<string> = []): ChannelView => ({ teamId: "T1", type, bots: new Set(bots) })
const message = (text: string, extra: Record<string, unknown> = {}): ChannelEvent => ({
  type: "message",
  channel: "C1",
  seq: 7,
  event_ts: "1700000000.000100",
  ts: "1700000000.000100",
  user: "UALICE",
  team: "T1",
  text,
  ...extra
})

describe("routing", () => {
  it("a public channel's messages reach channels:history apps without membership; private ones only members", () => {
    const reader = app(["channels:history", "groups:history"], ["message.channels", "message.groups"])
    expect(callbacksFor(reader, message("hi"), channel("public_channel"))).toHaveLength(1)
    expect(callbacksFor(reader, message("hi"), channel("private_channel"))).toHaveLength(0)
    expect(callbacksFor(reader, message("hi"), channel("private_channel", ["UBOT"]))).toHaveLength(1)
    // Without the scope, membership is not enough for messages.
    expect(callbacksFor(app(["chat:write"], ["message"]), message("hi"), channel("public_channel", ["UBOT"]))).toHaveLength(0)
    // Subscribed to other conversation types only.
    expect(callbacksFor(app(["channels:history"], ["message.im"]), message("hi"), channel("public_channel"))).toHaveLength(0)
    // Another workspace's channel.
    expect(callbacksFor(reader, message("hi"), { ...channel("public_channel"), teamId: "T2" })).toHaveLength(0)
  })

  it("a mention of the bot makes an app_mention for apps in the channel, with a stable event id", () => {
    const mentioned = app(["app_mentions:read"], ["app_mention"])
    const text = "hey <@UBOT> deploy"
    expect(mentions(text, "UBOT")).toBe(true)
    expect(mentions("<@UBOT|bot> hi", "UBOT")).toBe(true)
    expect(mentions("<@UBOTX> hi", "UBOT")).toBe(false)
    expect(callbacksFor(mentioned, message(text), channel("public_channel"))).toHaveLength(0) // not in the channel
    const [mention] = callbacksFor(mentioned, message(text), channel("public_channel", ["UBOT"]))
    expect(mention).toMatchObject({ eventId: "EvC1S7M", event: { type: "app_mention", user: "UALICE", text, channel: "C1", ts: "1700000000.000100" } })
    // Edits do not mention again.
    expect(callbacksFor(mentioned, message(text, { subtype: "message_changed" }), channel("public_channel", ["UBOT"]))).toHaveLength(0)
    const both = callbacksFor(app(["channels:history", "app_mentions:read"], ["message", "app_mention"]), message(text), channel("public_channel", ["UBOT"]))
    expect(both.map((c) => c.event["type"])).toEqual(["message", "app_mention"])
  })

  it("channel lifecycle events of public channels need channels:read; envelopes are Slack's", () => {
    const created: ChannelEvent = { type: "channel_created", channel: "C1", seq: 1, event_ts: "1700000000.000001", name: "general", creator: "UALICE", created: 1700000000 }
    const [cb] = callbacksFor(app(["channels:read"], ["channel_created"]), created, channel("public_channel"))
    expect(cb?.event).toEqual({ type: "channel_created", channel: { id: "C1", name: "general", created: 1700000000, creator: "UALICE" }, event_ts: "1700000000.000001", seq: 1 })
    const body = JSON.parse(envelope({ id: "AAPP", teamId: "T1", botUserId: "UBOT", verificationToken: "vt" }, cb!))
    expect(body).toMatchObject({ type: "event_callback", team_id: "T1", api_app_id: "AAPP", event_id: "EvC1S1", event_time: 1700000000, token: "vt" })
    expect(body.authorizations[0]).toMatchObject({ user_id: "UBOT", is_bot: true })
  })
})

/** A controllable `send`: every attempt waits until the test answers it. */
const harness = (options: Partial<ConstructorParameters<typeof Deliveries>[0]> = {}) => {
  const attempts: Array<{ body: string; retry: { num: number; reason: string } | undefined; resolve: (a: Attempt) => void }> = []
  const paused: Array<string> = []
  const acked: Array<string> = []
  const deliveries = new Deliveries(
    { retryDelaysMs: [10, 20, 30], maxInFlight: 8, pauseAfterMs: 60_000, maxPending: 1000, requestTimeoutMs: 1000, ...options },
    (_target, body, retry) => new Promise<Attempt>((resolve) => attempts.push({ body, retry, resolve })),
    (appId) => paused.push(appId)
  )
  const target: Target & { paused: boolean } = { id: "A1", requestUrl: "http://x", signingSecret: "s", paused: false }
  deliveries.setTargets([target])
  const send = (channel: string, body: string) => {
    const ticket = new Ticket(() => acked.push(body))
    deliveries.enqueue("A1", channel, ticket, body, Date.now())
    ticket.seal()
  }
  const tick = () => new Promise((r) => setTimeout(r, 0))
  return { deliveries, attempts, paused, acked, send, tick }
}

const ok: Attempt = { ok: true }
const failed: Attempt = { ok: false, reason: "http_error", status: 500, noRetry: false }

describe("Deliveries", () => {
  it("sends one event per channel at a time, in order, channels in parallel; acks when settled", async () => {
    const h = harness()
    h.send("C1", "c1-a")
    h.send("C1", "c1-b")
    h.send("C2", "c2-a")
    expect(h.attempts.map((a) => a.body)).toEqual(["c1-a", "c2-a"])
    h.attempts[0]!.resolve(ok)
    await h.tick()
    expect(h.attempts.map((a) => a.body)).toEqual(["c1-a", "c2-a", "c1-b"])
    expect(h.acked).toEqual(["c1-a"])
    h.attempts[1]!.resolve(ok)
    h.attempts[2]!.resolve(ok)
    await h.tick()
    expect(h.acked).toEqual(["c1-a", "c2-a", "c1-b"])
    expect(h.deliveries.takeFigures().get("A1")).toMatchObject({ sent: 3, failed: 0, retried: 0 })
  })

  it("retries a failed head with its retry number and reason, holding the channel's later events", async () => {
    const h = harness()
    h.send("C1", "first")
    h.send("C1", "second")
    h.attempts[0]!.resolve(failed)
    await new Promise((r) => setTimeout(r, 25))
    expect(h.attempts.map((a) => [a.body, a.retry?.num])).toEqual([["first", undefined], ["first", 1]])
    expect(h.attempts[1]!.retry).toEqual({ num: 1, reason: "http_error" })
    h.attempts[1]!.resolve({ ok: false, reason: "http_timeout", status: undefined, noRetry: false })
    await new Promise((r) => setTimeout(r, 40))
    expect(h.attempts[2]!.retry).toEqual({ num: 2, reason: "http_timeout" })
    h.attempts[2]!.resolve(ok)
    await h.tick()
    expect(h.attempts[3]!.body).toBe("second")
    h.attempts[3]!.resolve(ok)
    await h.tick()
    expect(h.acked).toEqual(["first", "second"])
    expect(h.deliveries.takeFigures().get("A1")).toMatchObject({ sent: 2, retried: 2, failed: 0 })
  })

  it("gives an event up after its last retry (or at once on X-Slack-No-Retry), and goes on", async () => {
    const h = harness({ retryDelaysMs: [1] })
    h.send("C1", "doomed")
    h.send("C1", "next")
    h.attempts[0]!.resolve(failed)
    await new Promise((r) => setTimeout(r, 10))
    h.attempts[1]!.resolve(failed)
    await h.tick()
    expect(h.attempts[2]!.body).toBe("next")
    h.attempts[2]!.resolve({ ok: false, reason: "http_error", status: 500, noRetry: true })
    await h.tick()
    expect(h.acked).toEqual(["doomed", "next"])
    expect(h.deliveries.takeFigures().get("A1")).toMatchObject({ sent: 0, failed: 2, retried: 1 })
  })

  it("pauses an app failing for too long: its backlog is dropped and acked, nothing more is queued", async () => {
    const h = harness({ retryDelaysMs: [5, 5, 5, 5, 5], pauseAfterMs: 30 })
    for (let i = 0; i < 5; i++) h.send("C1", `m${i}`)
    const failUntilPaused = async () => {
      while (h.paused.length === 0) {
        const pending = h.attempts.filter((a) => !(a as { done?: boolean }).done)
        for (const a of pending) {
          ;(a as { done?: boolean }).done = true
          a.resolve(failed)
        }
        await new Promise((r) => setTimeout(r, 5))
      }
    }
    await failUntilPaused()
    expect(h.paused).toEqual(["A1"])
    expect(h.acked).toHaveLength(5)
    expect(h.deliveries.accepts("A1")).toBe(false)
    const figures = h.deliveries.takeFigures().get("A1")!
    expect(figures.failed + figures.dropped).toBe(5)
    // Set again (apps.eventSubscriptions.set): it resumes.
    h.deliveries.setTargets([{ id: "A1", requestUrl: "http://x", signingSecret: "s", paused: false }])
    expect(h.deliveries.accepts("A1")).toBe(true)
  })

  it("pauses an app whose backlog passes its bound", () => {
    const h = harness({ maxPending: 3, maxInFlight: 1 })
    for (let i = 0; i < 5; i++) h.send("C1", `m${i}`)
    expect(h.paused).toEqual(["A1"])
    // Four were queued before the bound was passed; the in-flight one settles with its attempt.
    expect(h.acked.length).toBeGreaterThanOrEqual(3)
  })
})

describe("parsers", () => {
  it("slash commands", () => {
    expect(parseCommand("/Deploy  prod now")).toEqual({ command: "/deploy", text: "prod now" })
    expect(parseCommand("/echo")).toEqual({ command: "/echo", text: "" })
    expect(parseCommand("hello /echo")).toBeUndefined()
    expect(parseCommand("//x")).toBeUndefined()
  })

  it("app answers: plain text is ephemeral, JSON as Slack reads it", () => {
    expect(parseAppMessage("", "text/plain")).toBeUndefined()
    expect(parseAppMessage("done", "text/plain")).toMatchObject({ response_type: "ephemeral", text: "done" })
    expect(parseAppMessage(JSON.stringify({ response_type: "in_channel", text: "hi", replace_original: "true" }), "application/json")).toMatchObject({
      response_type: "in_channel",
      text: "hi",
      replace_original: true
    })
    expect(parseAppMessage("{nope", "application/json")).toBe("invalid")
  })

  it("webhook payloads and errors as Slack answers them", () => {
    expect(parsePayload("{nope", "application/json")).toEqual({ ok: false, answer: { status: 400, text: "invalid_payload" } })
    expect(parsePayload("{}", "application/json")).toEqual({ ok: false, answer: { status: 400, text: "no_text" } })
    expect(parsePayload(JSON.stringify({ text: "x", blocks: "not json" }), "application/json")).toEqual({ ok: false, answer: { status: 400, text: "invalid_blocks" } })
    const form = new URLSearchParams({ payload: JSON.stringify({ text: "hi", username: "ci", icon_emoji: ":rocket:" }) }).toString()
    expect(parsePayload(form, "application/x-www-form-urlencoded")).toMatchObject({ ok: true, text: "hi", username: "ci", icon_emoji: ":rocket:" })
    expect(answerFor("is_archived")).toEqual({ status: 410, text: "channel_is_archived" })
    expect(answerFor("not_in_channel")).toEqual({ status: 403, text: "action_prohibited" })
  })

  it("url_verification answers", () => {
    expect(echoes("abc", "abc")).toBe(true)
    expect(echoes(JSON.stringify({ challenge: "abc" }), "abc")).toBe(true)
    expect(echoes("challenge=abc", "abc")).toBe(true)
    expect(echoes("nope", "abc")).toBe(false)
  })
})
