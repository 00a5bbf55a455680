// The pure parts of the conversation reads: ts windows and their paging (by property:
// pages in either direction cover a window exactly, without duplicates or gaps),
// cursors as untrusted input, and the visibility rules of invariant 5.

import { FastCheck as fc, Option } from "effect"
import { describe, expect, it } from "vitest"
import * as Access from "../../src/domain/ConversationAccess.ts"
import * as Cursor from "../../src/domain/Cursor.ts"
import * as Range from "../../src/domain/HistoryRange.ts"
import { toSlackConversation, toUnixSeconds, type ChannelView } from "../../src/domain/SlackConversation.ts"

describe("HistoryRange.parse", () => {
  it("brings Slack's loose forms to the fixed width", () => {
    expect(Range.parse("0")).toEqual({ ts: "0000000000.000000", exact: true })
    expect(Range.parse("1700000000")).toEqual({ ts: "1700000000.000000", exact: true })
    expect(Range.parse("1700000000.5")).toEqual({ ts: "1700000000.500000", exact: true })
    expect(Range.parse("1700000000.123456")).toEqual({ ts: "1700000000.123456", exact: true })
    expect(Range.parse("1700000000.1234560")).toEqual({ ts: "1700000000.123456", exact: true })
    expect(Range.parse("1700000000.1234567")).toEqual({ ts: "1700000000.123456", exact: false })
    expect(Range.parse("00001700000000.")).toEqual({ ts: "1700000000.000000", exact: true })
    expect(Range.parse("99999999999")).toEqual({ ts: Range.maxTs, exact: false })
    for (const bad of ["", "-1", "1e9", "abc", "1.2.3", " . ", "0x10", "1,5"]) expect(Range.parse(bad)).toBeUndefined()
  })

  it("keeps bounds exact between two microseconds", () => {
    const between = Range.parse("1700000000.1234567")!
    // ts > 1700000000.1234567 ⇔ ts > 1700000000.123456, inclusive or not.
    expect(Range.lowerBound(between, true)).toEqual({ ts: "1700000000.123456", inclusive: false })
    // ts < 1700000000.1234567 ⇔ ts ≤ 1700000000.123456.
    expect(Range.upperBound(between, false)).toEqual({ ts: "1700000000.123456", inclusive: true })
  })

  it("reads Slack's window arguments", () => {
    expect(Range.window({ latest: undefined, oldest: undefined, inclusive: true }, "older")).toEqual({ lower: undefined, upper: undefined, direction: "older" })
    expect(Range.window({ latest: "5", oldest: "1", inclusive: false }, "older")).toEqual({
      lower: { ts: "0000000001.000000", inclusive: false },
      upper: { ts: "0000000005.000000", inclusive: false },
      direction: "older"
    })
    // Only `oldest`: the pages start at `oldest` and run forward.
    expect(Range.window({ latest: undefined, oldest: "1", inclusive: true }, "older")).toMatchObject({ direction: "newer" })
    expect(Range.window({ latest: "x", oldest: undefined, inclusive: false }, "older")).toBe("invalid_ts_latest")
    expect(Range.window({ latest: undefined, oldest: "x", inclusive: false }, "older")).toBe("invalid_ts_oldest")
  })
})

describe("HistoryRange paging", () => {
  const tsArb = fc.integer({ min: 0, max: 60 }).map((n) => `17000000${String(Math.floor(n / 4)).padStart(2, "0")}.00000${n % 4}`)
  const argArb = fc.option(fc.oneof(tsArb, fc.integer({ min: 1699999990, max: 1700000020 }).map(String)), { nil: undefined })

  /** What the store answers: the window's messages from its starting end, `limit` of them. */
  const page = (all: ReadonlyArray<string>, w: Range.Window, limit: number) => {
    const inside = all.filter((ts) => Range.contains(w, ts)).sort()
    return (w.direction === "older" ? inside.reverse() : inside).slice(0, limit)
  }

  it("pages through a window exactly: every message of it once, in order, then an end", () => {
    fc.assert(fc.property(
      fc.uniqueArray(tsArb, { maxLength: 40 }),
      argArb,
      argArb,
      fc.boolean(),
      fc.integer({ min: 1, max: 7 }),
      (messages, latest, oldest, inclusive, limit) => {
        const w0 = Range.window({ latest, oldest, inclusive }, "older")
        if (typeof w0 === "string") return
        const expected = messages.filter((ts) => {
          const lo = oldest === undefined ? undefined : Number(oldest)
          const hi = latest === undefined ? undefined : Number(latest)
          const t = Number(ts)
          return (lo === undefined || t > lo || (inclusive && t === lo)) && (hi === undefined || t < hi || (inclusive && t === hi))
        }).sort()
        const seen: Array<string> = []
        let w = w0
        for (let i = 0; i < 100; i++) {
          const rows = page(messages, w, limit + 1)
          const shown = rows.slice(0, limit)
          seen.push(...shown)
          if (rows.length <= limit) break
          w = Range.after(w, w0.direction, shown[shown.length - 1]!)
        }
        expect(w0.direction === "older" ? [...seen].reverse() : seen).toEqual(expected)
      }
    ), { numRuns: 500 })
  })

  it("takes the stricter bound", () => {
    const a = { ts: "1700000000.000005", inclusive: true }
    const b = { ts: "1700000000.000005", inclusive: false }
    expect(Range.minUpper(a, b)).toEqual(b)
    expect(Range.maxLower(a, b)).toEqual(b)
    expect(Range.minUpper(undefined, a)).toEqual(a)
    expect(Range.maxLower({ ts: "1700000000.000009", inclusive: true }, a)).toEqual({ ts: "1700000000.000009", inclusive: true })
  })
})

describe("Cursor", () => {
  const sample: Cursor.HistoryCursor = { k: "history", c: "C0123ABCD", d: "older", ts: "1700000000.000001" }

  it("round-trips and is opaque base64url", () => {
    const encoded = Cursor.encode(Cursor.HistoryCursor, sample)
    expect(encoded).toMatch(/^[A-Za-z0-9_-]+$/)
    expect(Cursor.decode(Cursor.HistoryCursor, encoded)).toEqual(Option.some(sample))
  })

  it("refuses anything else: garbage, wrong kind, extra fields, bad values, oversize", () => {
    const raw = (value: unknown) => Buffer.from(JSON.stringify(value)).toString("base64url")
    for (const bad of [
      "",
      "!!!",
      "not-json",
      raw([1, 2]),
      raw({ ...sample, k: "replies" }),
      raw({ ...sample, extra: 1 }),
      raw({ ...sample, ts: "1700000000.1" }),
      raw({ ...sample, ts: "1700000000.000001' OR 1=1" }),
      raw({ ...sample, c: "U0123ABCD" }),
      raw({ ...sample, d: "sideways" }),
      "A".repeat(Cursor.maxLength + 1)
    ]) expect(Option.isNone(Cursor.decode(Cursor.HistoryCursor, bad))).toBe(true)
    expect(Option.isNone(Cursor.decode(Cursor.ConversationsCursor, Cursor.encode(Cursor.HistoryCursor, sample)))).toBe(true)
  })
})

describe("ConversationAccess", () => {
  const member = { teamId: "T1", role: "member" as const }
  const guest = { teamId: "T1", role: "guest" as const }
  const flags = (kind: Access.ConversationType, team_id = "T1") => ({
    team_id,
    is_private: kind !== "public_channel",
    is_im: kind === "im",
    is_mpim: kind === "mpim"
  })

  it("shows a public channel to the workspace's members, not to its guests or other workspaces", () => {
    expect(Access.canSee(member, flags("public_channel"), false)).toBe(true)
    expect(Access.canSee(guest, flags("public_channel"), false)).toBe(false)
    expect(Access.canSee(guest, flags("public_channel"), true)).toBe(true)
    expect(Access.canSee(member, flags("public_channel", "T2"), false)).toBe(false)
    expect(Access.canSee(member, flags("public_channel", "T2"), true)).toBe(false)
  })

  it("shows private channels, group DMs and DMs to their members only", () => {
    for (const kind of ["private_channel", "mpim", "im"] as const) {
      expect(Access.canSee(member, flags(kind), false)).toBe(false)
      expect(Access.canSee({ teamId: "T1", role: "owner" }, flags(kind), false)).toBe(false)
      expect(Access.canSee(member, flags(kind), true)).toBe(true)
      expect(Access.canSee(member, flags(kind, "T2"), true)).toBe(false)
    }
  })

  it("names Slack's scopes and reads `types`", () => {
    expect(Access.scopeFor("public_channel", "read")).toBe("channels:read")
    expect(Access.scopeFor("private_channel", "history")).toBe("groups:history")
    expect(Access.scopeFor("mpim", "read")).toBe("mpim:read")
    expect(Access.scopeFor("im", "history")).toBe("im:history")
    expect(Access.parseTypes(undefined)).toEqual(["public_channel"])
    expect(Access.parseTypes(" im , public_channel,im")).toEqual(["public_channel", "im"])
    expect(Access.parseTypes("public_channel,channels")).toBeUndefined()
  })
})

describe("SlackConversation", () => {
  const view: ChannelView = {
    id: "D0001", team_id: "T1", name: null, is_private: true, is_im: true, is_mpim: false, dm_key: "k", creator: "U1",
    topic: "", topic_set_by: null, topic_set_at: null, purpose: "p", purpose_set_by: "U1", purpose_set_at: 1_700_000_123_456,
    is_archived: false, last_seq: 7, last_ts: null, created_at: 1_700_000_000_000,
    is_member: true, last_read: "1700000000.000001", last_read_seq: 3, im_user: "U2", num_members: null
  }

  it("builds Slack's DM object for its viewer", () => {
    expect(toSlackConversation(view, { unread_count: 2, unread_count_display: 1 })).toMatchObject({
      id: "D0001", is_im: true, is_channel: false, is_private: true, user: "U2", created: 1_700_000_000,
      purpose: { value: "p", creator: "U1", last_set: 1_700_000_123 }, last_read: "1700000000.000001",
      unread_count: 2, unread_count_display: 1, seq: 7
    })
    expect(toSlackConversation(view)).not.toHaveProperty("name")
    expect(toSlackConversation({ ...view, is_member: false, last_read: null })).not.toHaveProperty("last_read")
  })

  it("reads stored times in milliseconds or seconds", () => {
    expect(toUnixSeconds(1_700_000_000_999)).toBe(1_700_000_000)
    expect(toUnixSeconds(1_700_000_000)).toBe(1_700_000_000)
    expect(toUnixSeconds(null)).toBe(0)
  })
})
