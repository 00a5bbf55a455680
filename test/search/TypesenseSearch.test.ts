// The search contract on Typesense, which runs only when TYPESENSE_URL (and
// TYPESENSE_API_KEY) point at a server: none can run on the CI machine, so there it is
// reported as skipped. The request building is pure and tested here either way.
import { Effect, Redacted } from "effect"
import { Client } from "typesense"
import { afterAll, describe, expect, it } from "vitest"
import type { SearchRequest } from "../../src/search/Search.ts"
import * as SearchQuery from "../../src/search/SearchQuery.ts"
import * as TypesenseSearch from "../../src/search/TypesenseSearch.ts"
import { filterBy, queryText, searchParams, toTypesense, tsMicros } from "../../src/search/TypesenseSearch.ts"
import { searchContract } from "./contract.ts"

const url = process.env.TYPESENSE_URL
const apiKey = process.env.TYPESENSE_API_KEY ?? ""
const collection = `chorus_contract_${Date.now().toString(36)}`

if (url === undefined) {
  console.info("search contract: Typesense skipped — TYPESENSE_URL is not set (set TYPESENSE_URL and TYPESENSE_API_KEY to run it)")
}

describe.skipIf(url === undefined)("Typesense server (TYPESENSE_URL)", () => {
  searchContract("search contract: Typesense", () => TypesenseSearch.layer({ url: url ?? "", apiKey: Redacted.make(apiKey), collection }), { timeoutMs: 120_000 })
  afterAll(async () => {
    await Effect.runPromise(Effect.promise(() =>
      new Client({ nodes: [{ url: url ?? "" }], apiKey }).collections(collection).delete().catch(() => undefined)
    ))
  })
})

const parsed = (query: string) => SearchQuery.parse(query, new Date(Date.UTC(2024, 5, 1)))
const request = (query: string, extra: Partial<SearchRequest> = {}): SearchRequest => {
  const q = parsed(query)
  return {
    teamId: "T1",
    channels: ["C1", "C2"],
    users: undefined,
    terms: q.terms,
    range: q.range,
    hasLink: q.hasLink,
    isThread: q.isThread,
    sort: "score",
    sortDir: "desc",
    offset: 40,
    limit: 20,
    highlight: false,
    ...extra
  }
}

describe("Typesense requests", () => {
  it("always filters by workspace, conversations and tombstones, quoting every value", () => {
    expect(filterBy(request("x"))).toBe("team_id:=`T1` && channel_id:=[`C1`,`C2`] && deleted:=false")
    expect(filterBy(request("x", { teamId: "T`1 || team_id:=T2", channels: ["C`1]"] }))).toBe(
      "team_id:=`T1 || team_id:=T2` && channel_id:=[`C1]`] && deleted:=false"
    )
  })

  it("adds authors, dates in microseconds, links and threads", () => {
    const r = request("has:link is:thread after:2024-03-01", { users: ["U1", "U2"], range: { from: 100, to: 200 } })
    expect(filterBy(r)).toBe(
      "team_id:=`T1` && channel_id:=[`C1`,`C2`] && deleted:=false && user_id:=[`U1`,`U2`] && ts_num:>=100000000 && ts_num:<200000000 && has_link:=true && in_thread:=true"
    )
  })

  it("writes words, phrases, exclusions and a last prefix word into q", () => {
    expect(queryText(parsed("deploy \"release notes\" -draft -\"dry run\" rel*").terms)).toEqual({
      q: "deploy \"release notes\" -draft -\"dry run\" rel",
      prefix: true
    })
    expect(queryText(parsed("a\"b `c*` d").terms).q).not.toMatch(/[`*]/)
    expect(queryText(parsed("-only in:#x").terms)).toEqual({ q: "*", prefix: false })
  })

  it("asks for exact words (no typos, no dropped words), the page, and the sort", () => {
    const p = searchParams("msgs", request("deploy"))
    expect(p).toMatchObject({
      collection: "msgs",
      q: "deploy",
      query_by: "text",
      num_typos: 0,
      drop_tokens_threshold: 0,
      offset: 40,
      limit: 20,
      sort_by: "_text_match:desc,ts_num:desc",
      highlight_fields: "none"
    })
    expect(searchParams("msgs", request("", { sort: "score", sortDir: "asc" })).sort_by).toBe("ts_num:asc")
    expect(searchParams("msgs", request("deploy", { sort: "timestamp" })).sort_by).toBe("ts_num:desc")
    expect(searchParams("msgs", request("deploy", { highlight: true }))).toMatchObject({
      highlight_full_fields: "text",
      highlight_start_tag: "\ue000",
      highlight_end_tag: "\ue001"
    })
  })

  it("stores documents with a sortable time, links and threads, and empties tombstones", () => {
    expect(tsMicros("1700000000.000123")).toBe(1_700_000_000_000_123)
    const doc = { teamId: "T1", channelId: "C1", ts: "1700000000.000001", userId: "U1", text: "see https://x.y", threadTs: null, version: 7 }
    expect(toTypesense(doc, false)).toEqual({
      id: "C1-1700000000.000001",
      team_id: "T1",
      channel_id: "C1",
      ts: "1700000000.000001",
      ts_num: 1_700_000_000_000_001,
      user_id: "U1",
      text: "see https://x.y",
      has_link: true,
      deleted: false,
      version: 7
    })
    expect(toTypesense({ ...doc, threadTs: "1699999999.000000" }, false).in_thread).toBe(true)
    expect(toTypesense(doc, true)).toMatchObject({ text: "", has_link: false, deleted: true })
  })
})
