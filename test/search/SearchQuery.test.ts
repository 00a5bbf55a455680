// The pure parser of Slack's search syntax: words, phrases, exclusions, prefixes, every
// filter and its value forms, dates as UTC periods (and their intersection), and what
// falls back to text.
import { describe, expect, it } from "vitest"
import type { Term } from "../../src/search/SearchQuery.ts"
import { hasText, parse, parsePeriod, parsePlace, parseUserRef, tsAt } from "../../src/search/SearchQuery.ts"

/** Wednesday 2024-03-13 15:30 UTC. */
const now = new Date(Date.UTC(2024, 2, 13, 15, 30))
const at = (y: number, m: number, d = 1) => Date.UTC(y, m - 1, d) / 1000
const word = (text: string, extra: Partial<{ negated: boolean; prefix: boolean }> = {}): Term => ({ _tag: "Word", text, negated: false, prefix: false, ...extra })
const phrase = (text: string, negated = false): Term => ({ _tag: "Phrase", text, negated })

describe("text", () => {
  it("splits words on any whitespace and keeps their case and punctuation for the backend", () => {
    expect(parse("  Deploy\tthe\nAPI-v2  ", now).terms).toEqual([word("Deploy"), word("the"), word("API-v2")])
  })

  it("reads a quoted phrase as one term, collapsing its inner whitespace", () => {
    expect(parse("ship \"release   notes\" today", now).terms).toEqual([word("ship"), phrase("release notes"), word("today")])
  })

  it("ends an unterminated phrase at the end of the query", () => {
    expect(parse("\"half open", now).terms).toEqual([phrase("half open")])
  })

  it("excludes a word or a phrase with a leading minus", () => {
    expect(parse("deploy -staging -\"dry run\"", now).terms).toEqual([word("deploy"), word("staging", { negated: true }), phrase("dry run", true)])
  })

  it("reads a trailing star as a prefix of two characters or more", () => {
    expect(parse("rel* a* x", now).terms).toEqual([word("rel", { prefix: true }), word("a"), word("x")])
  })

  it("drops tokens with nothing to search (punctuation, empty quotes, a lone minus)", () => {
    expect(parse("- ... \"\" \"  \" *", now).terms).toEqual([])
  })

  it("keeps non-Latin words", () => {
    expect(parse("привет 東京 \"café crème\"", now).terms).toEqual([word("привет"), word("東京"), phrase("café crème")])
  })

  it("says whether anything is to be matched (exclusions alone are not)", () => {
    expect(hasText(parse("deploy", now))).toBe(true)
    expect(hasText(parse("-deploy in:#general", now))).toBe(false)
    expect(hasText(parse("from:@alice", now))).toBe(false)
  })

  it("parses the empty query as no terms and no filters", () => {
    expect(parse("", now)).toEqual({
      terms: [],
      in: [],
      from: [],
      range: { from: undefined, to: undefined },
      hasLink: false,
      isThread: false,
      impossible: false
    })
  })
})

describe("in:", () => {
  it("takes a channel by #name or bare name, lower-cased", () => {
    expect(parse("in:#General in:random", now).in).toEqual([{ _tag: "ChannelName", name: "general" }, { _tag: "ChannelName", name: "random" }])
  })

  it("takes a channel link or id", () => {
    expect(parse("in:<#C0ABC12345|general> in:<#C0XYZ98765> in:D0DM123456", now).in).toEqual([
      { _tag: "ChannelId", id: "C0ABC12345" },
      { _tag: "ChannelId", id: "C0XYZ98765" },
      { _tag: "ChannelId", id: "D0DM123456" }
    ])
  })

  it("takes the DM with a user by @handle or mention", () => {
    expect(parse("in:@Bob in:<@U0BOB12345>", now).in).toEqual([
      { _tag: "DirectMessage", user: { _tag: "Handle", handle: "bob" } },
      { _tag: "DirectMessage", user: { _tag: "UserId", id: "U0BOB12345" } }
    ])
  })

  it("reads a malformed place as text", () => {
    expect(parse("in:#a/b in:@", now)).toMatchObject({ in: [], terms: [word("in:#a/b"), word("in:@")] })
  })

  it("parses places on their own", () => {
    expect(parsePlace("#dev-ops_2")).toEqual({ _tag: "ChannelName", name: "dev-ops_2" })
    expect(parsePlace("<#G0PRIV1234|secret>")).toEqual({ _tag: "ChannelId", id: "G0PRIV1234" })
    expect(parsePlace("@me")).toEqual({ _tag: "DirectMessage", user: { _tag: "Me" } })
    expect(parsePlace("")).toBeUndefined()
  })
})

describe("from:", () => {
  it("takes @handle, a bare handle, a mention (with or without a label), an id, and me", () => {
    expect(parse("from:@Alice from:bob from:<@U0ALI12345> from:<@U0CAR12345|carol> from:U0DAV12345 from:me", now).from).toEqual([
      { _tag: "Handle", handle: "alice" },
      { _tag: "Handle", handle: "bob" },
      { _tag: "UserId", id: "U0ALI12345" },
      { _tag: "UserId", id: "U0CAR12345" },
      { _tag: "UserId", id: "U0DAV12345" },
      { _tag: "Me" }
    ])
  })

  it("keeps handles with dots, dashes and underscores", () => {
    expect(parseUserRef("@jean.luc-picard_1")).toEqual({ _tag: "Handle", handle: "jean.luc-picard_1" })
  })

  it("reads a malformed author as text", () => {
    expect(parse("from:@a/b", now)).toMatchObject({ from: [], terms: [word("from:@a/b")] })
  })

  it("accepts filter names in any case", () => {
    expect(parse("FROM:@alice In:#general", now)).toMatchObject({ from: [{ _tag: "Handle", handle: "alice" }], in: [{ _tag: "ChannelName", name: "general" }] })
  })
})

describe("dates", () => {
  it("reads a day, a month and a year as UTC periods", () => {
    expect(parsePeriod("2024-02-29", now)).toEqual({ start: at(2024, 2, 29), end: at(2024, 3, 1) })
    expect(parsePeriod("2024-2-3", now)).toEqual({ start: at(2024, 2, 3), end: at(2024, 2, 4) })
    expect(parsePeriod("2023-12", now)).toEqual({ start: at(2023, 12), end: at(2024, 1) })
    expect(parsePeriod("2023", now)).toEqual({ start: at(2023, 1), end: at(2024, 1) })
  })

  it("reads today and yesterday from now, in UTC", () => {
    expect(parsePeriod("today", now)).toEqual({ start: at(2024, 3, 13), end: at(2024, 3, 14) })
    expect(parsePeriod("Yesterday", now)).toEqual({ start: at(2024, 3, 12), end: at(2024, 3, 13) })
    const newYear = new Date(Date.UTC(2024, 0, 1, 0, 5))
    expect(parsePeriod("yesterday", newYear)).toEqual({ start: at(2023, 12, 31), end: at(2024, 1, 1) })
  })

  it("reads a month name as the latest such month that has begun", () => {
    expect(parsePeriod("march", now)).toEqual({ start: at(2024, 3), end: at(2024, 4) })
    expect(parsePeriod("Jan", now)).toEqual({ start: at(2024, 1), end: at(2024, 2) })
    expect(parsePeriod("december", now)).toEqual({ start: at(2023, 12), end: at(2024, 1) })
    expect(parsePeriod("sept", now)).toEqual({ start: at(2023, 9), end: at(2023, 10) })
  })

  it("refuses what is not a date", () => {
    for (const value of ["2024-02-30", "2023-02-29", "2024-13", "2024-00", "2024-01-00", "1969", "24-01-01", "someday", "2024/01/01", ""]) {
      expect(parsePeriod(value, now), value).toBeUndefined()
    }
  })

  it("before: ends where the period starts; after: begins where it ends", () => {
    expect(parse("before:2024-03-05", now).range).toEqual({ from: undefined, to: at(2024, 3, 5) })
    expect(parse("after:2024-03-05", now).range).toEqual({ from: at(2024, 3, 6), to: undefined })
    expect(parse("after:2023", now).range).toEqual({ from: at(2024, 1), to: undefined })
  })

  it("on: and during: are the period itself", () => {
    expect(parse("on:2024-03-05", now).range).toEqual({ from: at(2024, 3, 5), to: at(2024, 3, 6) })
    expect(parse("during:2024-02", now).range).toEqual({ from: at(2024, 2), to: at(2024, 3) })
    expect(parse("during:yesterday", now).range).toEqual({ from: at(2024, 3, 12), to: at(2024, 3, 13) })
  })

  it("intersects several date filters", () => {
    expect(parse("after:2024-01-10 before:2024-02 during:2024", now).range).toEqual({ from: at(2024, 1, 11), to: at(2024, 2) })
    expect(parse("during:2024-02 on:2024-02-10", now).range).toEqual({ from: at(2024, 2, 10), to: at(2024, 2, 11) })
  })

  it("knows when the dates contradict each other", () => {
    expect(parse("after:2024 before:2023", now).impossible).toBe(true)
    expect(parse("after:2024-03-05 before:2024-03-06", now).impossible).toBe(true)
    expect(parse("after:2024-03-04 before:2024-03-06", now).impossible).toBe(false)
  })

  it("reads an invalid date filter as text", () => {
    expect(parse("before:someday", now)).toMatchObject({ range: { from: undefined, to: undefined }, terms: [word("before:someday")] })
  })

  it("formats a second as a message ts for range comparisons", () => {
    expect(tsAt(at(2024, 3, 5))).toBe("1709596800.000000")
    expect(tsAt(42)).toBe("0000000042.000000")
  })
})

describe("has: and is:", () => {
  it("sets has:link and is:thread", () => {
    expect(parse("has:link is:thread", now)).toMatchObject({ hasLink: true, isThread: true, terms: [] })
    expect(parse("HAS:LINK", now).hasLink).toBe(true)
  })

  it("reads other has:/is: values as text", () => {
    expect(parse("has:pin is:saved", now)).toMatchObject({ hasLink: false, isThread: false, terms: [word("has:pin"), word("is:saved")] })
  })
})

describe("everything together", () => {
  it("parses a realistic query", () => {
    expect(parse("deploy \"release notes\" -draft in:#eng from:@alice after:2024-01-31 has:link is:thread", now)).toEqual({
      terms: [word("deploy"), phrase("release notes"), word("draft", { negated: true })],
      in: [{ _tag: "ChannelName", name: "eng" }],
      from: [{ _tag: "Handle", handle: "alice" }],
      range: { from: at(2024, 2, 1), to: undefined },
      hasLink: true,
      isThread: true,
      impossible: false
    })
  })

  it("searches unknown modifiers and URLs as text", () => {
    expect(parse("https://example.com/x foo:bar", now).terms).toEqual([word("https://example.com/x"), word("foo:bar")])
  })

  it("never throws, whatever the input", () => {
    const alphabet = ["a", " ", "\"", "-", "*", ":", "#", "@", "<", ">", "|", "in", "from", "before", "2024-01-01", "U0ALI12345", "é", "\u0000"]
    // mulberry32: a seeded generator in 32-bit integer arithmetic.
    let seed = 7
    const random = () => {
      seed = (seed + 0x6d2b79f5) | 0
      let t = Math.imul(seed ^ (seed >>> 15), 1 | seed)
      t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t
      return ((t ^ (t >>> 14)) >>> 0) / 4294967296
    }
    for (let i = 0; i < 2000; i++) {
      const query = Array.from({ length: Math.floor(random() * 12) }, () => alphabet[Math.floor(random() * alphabet.length)]).join("")
      expect(() => parse(query, now)).not.toThrow()
    }
  })
})
