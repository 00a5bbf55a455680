// The gateway's pure parts: client frame parsing and validation, server frames, and
// the ticket book.

import { describe, expect, it } from "vitest"
import * as Protocol from "../../src/transport/GatewayProtocol.ts"
import * as Tickets from "../../src/transport/GatewayTickets.ts"

const parse = (frame: unknown) => Protocol.parseClientFrame(typeof frame === "string" ? frame : JSON.stringify(frame))
const errorOf = (frame: unknown) => {
  const r = parse(frame)
  if (r.ok) throw new Error(`parsed: ${JSON.stringify(r.frame)}`)
  return r.error
}

describe("client frames", () => {
  it("parses a message with its optional fields", () => {
    expect(parse({ id: 1, type: "message", channel: "C123", text: "hi", thread_ts: "1700000000.000100", client_msg_id: "5f1c-aa", reply_broadcast: true })).toEqual({
      ok: true,
      frame: { type: "message", id: 1, channel: "C123", text: "hi", thread_ts: "1700000000.000100", client_msg_id: "5f1c-aa", reply_broadcast: true }
    })
    expect(parse({ id: "a", type: "message", channel: "D9", text: "x" })).toMatchObject({ ok: true, frame: { id: "a", thread_ts: undefined, client_msg_id: undefined } })
  })

  it("refuses bad messages with Slack's codes, answering the frame's id", () => {
    expect(errorOf({ type: "message", channel: "C1", text: "x" })).toMatchObject({ id: undefined, code: "invalid_arguments" })
    expect(errorOf({ id: 2, type: "message", text: "x" })).toMatchObject({ id: 2, code: "invalid_arguments" })
    expect(errorOf({ id: 2, type: "message", channel: "general", text: "x" })).toMatchObject({ id: 2, code: "channel_not_found" })
    expect(errorOf({ id: 2, type: "message", channel: "U123", text: "x" })).toMatchObject({ code: "channel_not_found" })
    expect(errorOf({ id: 2, type: "message", channel: "C1", text: "  " })).toMatchObject({ code: "no_text" })
    expect(errorOf({ id: 2, type: "message", channel: "C1" })).toMatchObject({ code: "no_text" })
    expect(errorOf({ id: 2, type: "message", channel: "C1", text: 5 })).toMatchObject({ code: "invalid_arguments" })
    expect(errorOf({ id: 2, type: "message", channel: "C1", text: "x".repeat(40_001) })).toMatchObject({ code: "msg_too_long" })
    expect(errorOf({ id: 2, type: "message", channel: "C1", text: "x", thread_ts: "yesterday" })).toMatchObject({ code: "invalid_thread_ts" })
    expect(errorOf({ id: 2, type: "message", channel: "C1", text: "x", client_msg_id: "a b" })).toMatchObject({ code: "invalid_arguments" })
    expect(errorOf({ id: 2, type: "message", channel: "C1", text: "x", client_msg_id: "a\nb" })).toMatchObject({ code: "invalid_arguments" })
    expect(errorOf({ id: 2, type: "message", channel: "C1", text: "x", reply_broadcast: "yes" })).toMatchObject({ code: "invalid_arguments" })
  })

  it("counts characters, not UTF-16 units, against the text limit", () => {
    const emoji = "😀".repeat(40_000) // 80,000 UTF-16 units, 40,000 characters
    expect(parse({ id: 1, type: "message", channel: "C1", text: emoji }).ok).toBe(true)
    expect(errorOf({ id: 1, type: "message", channel: "C1", text: `${emoji}!` }).code).toBe("msg_too_long")
  })

  it("parses ping (echoing its other fields), typing, resume and presence_sub", () => {
    expect(parse({ id: 3, type: "ping", time: 5 })).toEqual({ ok: true, frame: { type: "ping", id: 3, extra: { time: 5 } } })
    expect(parse({ type: "typing", channel: "C1" })).toEqual({ ok: true, frame: { type: "typing", id: undefined, channel: "C1" } })
    expect(parse({ id: 4, type: "resume", channels: { C1: 0, D2: 17 } })).toEqual({
      ok: true,
      frame: { type: "resume", id: 4, channels: [["C1", 0], ["D2", 17]] }
    })
    expect(parse({ type: "presence_sub", ids: ["U1", "U2"] })).toEqual({ ok: true, frame: { type: "presence_sub", id: undefined, ids: ["U1", "U2"] } })
  })

  it("refuses bad resume frames", () => {
    expect(errorOf({ type: "resume", channels: {} }).code).toBe("invalid_arguments")
    expect(errorOf({ id: 1, type: "resume" }).code).toBe("invalid_arguments")
    expect(errorOf({ id: 1, type: "resume", channels: [] }).code).toBe("invalid_arguments")
    expect(errorOf({ id: 1, type: "resume", channels: { general: 1 } }).code).toBe("invalid_arguments")
    expect(errorOf({ id: 1, type: "resume", channels: { C1: -1 } }).code).toBe("invalid_arguments")
    expect(errorOf({ id: 1, type: "resume", channels: { C1: 1.5 } }).code).toBe("invalid_arguments")
    expect(errorOf({ id: 1, type: "resume", channels: { C1: "3" } }).code).toBe("invalid_arguments")
    const many = Object.fromEntries(Array.from({ length: Protocol.maxResumeChannels + 1 }, (_, i) => [`C${i}`, 0]))
    expect(errorOf({ id: 1, type: "resume", channels: many }).code).toBe("invalid_arguments")
  })

  it("refuses what is not a frame, never throwing", () => {
    for (const text of ["", "{", "null", "[]", "42", "\"ping\"", "{\"type\":\"ping\"", "\u0000"]) {
      expect(errorOf(text)).toMatchObject({ id: undefined, code: "invalid_json" })
    }
    expect(errorOf({ id: 1 })).toMatchObject({ id: 1, code: "invalid_type" })
    expect(errorOf({ id: 1, type: "dance" })).toMatchObject({ id: 1, code: "unknown_type" })
    expect(errorOf({ id: 1, type: 7 })).toMatchObject({ id: 1, code: "unknown_type" })
    expect(errorOf({ id: { x: 1 }, type: "ping" })).toMatchObject({ id: undefined, code: "invalid_id" })
    expect(errorOf({ id: "x".repeat(65), type: "ping" })).toMatchObject({ id: undefined, code: "invalid_id" })
    expect(errorOf({ id: 1.5, type: "ping" })).toMatchObject({ id: undefined, code: "invalid_id" })
    expect(errorOf({ type: "presence_sub", ids: ["C1"] }).code).toBe("invalid_arguments")
    expect(errorOf({ type: "typing", channel: "x" }).code).toBe("invalid_channel")
  })
})

describe("server frames", () => {
  it("are Slack's shapes", () => {
    expect(Protocol.hello).toBe(`{"type":"hello"}`)
    expect(Protocol.goodbye).toBe(`{"type":"goodbye"}`)
    expect(JSON.parse(Protocol.pong(2, { time: 9 }))).toEqual({ type: "pong", reply_to: 2, time: 9 })
    expect(JSON.parse(Protocol.pong(2, { type: "evil", reply_to: 5 }))).toEqual({ type: "pong", reply_to: 2 })
    expect(JSON.parse(Protocol.replyOk(1, { ts: "1.000001" }))).toEqual({ ok: true, reply_to: 1, ts: "1.000001" })
    expect(JSON.parse(Protocol.replyError("a", "no_text", "m"))).toEqual({ ok: false, reply_to: "a", error: { code: "no_text", msg: "m" } })
    expect(JSON.parse(Protocol.frameError({ id: undefined, code: "invalid_json", msg: "m" }))).toEqual({ type: "error", error: { code: "invalid_json", msg: "m" } })
  })

  it("reads an event's seq and a user event's channel", () => {
    const event = Protocol.parseEvent(new TextEncoder().encode(`{"type":"message","channel":"C1","seq":4}`))
    expect(event === undefined ? undefined : Protocol.seqOf(event)).toBe(4)
    expect(Protocol.parseEvent("nope")).toBeUndefined()
    expect(Protocol.seqOf({ seq: 0 })).toBeUndefined()
    expect(Protocol.seqOf({ seq: "4" })).toBeUndefined()
    expect(Protocol.channelOf({ channel: "C1" })).toBe("C1")
    expect(Protocol.channelOf({ channel: { id: "C2", name: "x" } })).toBe("C2")
    expect(Protocol.channelOf({ channel: { id: "C2" }, channel_id: "C3" })).toBe("C3")
    expect(Protocol.channelOf({ channel: "general" })).toBeUndefined()
  })
})

describe("tickets", () => {
  const claims = { userId: "U1", teamId: "T1", tokenId: "k" }

  it("are single-use", () => {
    const book = Tickets.makeUnsafe()
    const ticket = book.issue(claims)
    expect(ticket).toMatch(/^[A-Za-z0-9_-]{43}$/)
    expect(book.redeem(ticket)).toEqual(claims)
    expect(book.redeem(ticket)).toBeUndefined()
    expect(book.redeem("unknown")).toBeUndefined()
  })

  it("expire after their TTL, and expired ones are swept", () => {
    let now = 1_000
    const book = Tickets.makeUnsafe({ ttl: "30 seconds" }, () => now)
    const a = book.issue(claims)
    const b = book.issue(claims)
    now += 29_999
    expect(book.redeem(a)).toEqual(claims)
    now += 2
    expect(book.redeem(b)).toBeUndefined()
    for (let i = 0; i < 5; i++) book.issue(claims)
    now += 30_001
    book.issue(claims)
    expect(book.size()).toBe(1)
  })

  it("hold at most their capacity, forgetting the oldest", () => {
    const book = Tickets.makeUnsafe({ capacity: 3 })
    const first = book.issue(claims)
    for (let i = 0; i < 3; i++) book.issue(claims)
    expect(book.size()).toBe(3)
    expect(book.redeem(first)).toBeUndefined()
  })
})
