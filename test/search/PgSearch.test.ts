// The search contract on PostgreSQL full-text search (the default backend), and how it
// builds prefix queries from user input.
import type { SqlClient } from "@effect/sql"
import { Effect, Layer, ManagedRuntime, Redacted } from "effect"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import * as PgSearch from "../../src/search/PgSearch.ts"
import { estimatedRows, prefixQuery } from "../../src/search/PgSearch.ts"
import type { SearchRequest } from "../../src/search/Search.ts"
import { Search } from "../../src/search/Search.ts"
import * as SearchQuery from "../../src/search/SearchQuery.ts"
import * as Database from "../../src/store/Database.ts"
import { freshDatabase, type FreshDatabase } from "../support/services.ts"
import { searchContract } from "./contract.ts"

searchContract("search contract: PostgreSQL", () => PgSearch.layer)

describe("PostgreSQL tsquery building", () => {
  it("turns a prefix word into prefix lexemes of letters and digits only (no tsquery syntax from users)", () => {
    expect(prefixQuery("Rel")).toBe("'rel':*")
    expect(prefixQuery("v2.bet")).toBe("'v2':* & 'bet':*")
    expect(prefixQuery("a'|!(b")).toBe("'a':* & 'b':*")
    expect(prefixQuery("!!")).toBeUndefined()
  })

  it("reads the planner's row estimate from EXPLAIN (FORMAT JSON), as text or parsed", () => {
    expect(estimatedRows([{ Plan: { "Node Type": "Bitmap Heap Scan", "Plan Rows": 18405.4 } }])).toBe(18405)
    expect(estimatedRows("[{\"Plan\": {\"Plan Rows\": 7}}]")).toBe(7)
    expect(estimatedRows(undefined)).toBe(0)
  })
})

describe("PostgreSQL plan for broad queries (thresholds lowered to a few rows)", () => {
  let db: FreshDatabase
  let runtime: ManagedRuntime.ManagedRuntime<Search | SqlClient.SqlClient, unknown>
  const T = "TBROAD0001"
  const C = "CBROAD0001"
  const ts = (i: number) => `17000000${String(i).padStart(2, "0")}.000000`
  const find = (query: string, extra: Partial<SearchRequest> = {}) =>
    runtime.runPromise(Effect.flatMap(Search, (s) => {
      const q = SearchQuery.parse(query)
      return s.search({
        teamId: T, channels: [C], users: undefined, terms: q.terms, range: q.range, hasLink: false, isThread: false,
        sort: "timestamp", sortDir: "desc", offset: 0, limit: 2, highlight: false, ...extra
      })
    }))

  beforeAll(async () => {
    db = await freshDatabase({ prefix: "search_broad" })
    const sql = Database.layer({ url: Redacted.make(db.url), maxConnections: 2, applicationName: "chorus search broad" })
    runtime = ManagedRuntime.make(PgSearch.layerWith({ broadMatches: 0, countCap: 3, scoreWindow: 2 }).pipe(Layer.provideMerge(sql)))
    await runtime.runPromise(Database.migrate)
    const texts = ["wombat wombat wombat", "wombat", "wombat one", "wombat wombat", "wombat two", "wombat three", "rare wombat"]
    await runtime.runPromise(Effect.flatMap(Search, (s) =>
      s.apply(texts.map((text, i) => ({ _tag: "Upsert", doc: { teamId: T, channelId: C, ts: ts(i), userId: null, text, threadTs: null, version: 1 } })))))
  })
  afterAll(async () => {
    await runtime?.dispose()
    await db?.drop()
  })

  it("pages a broad query by time from the newest or the oldest, with a total of at least the cap", async () => {
    const newest = await find("wombat")
    expect(newest.hits.map((h) => h.ts)).toEqual([ts(6), ts(5)])
    expect(newest.total).toBeGreaterThan(3)
    expect((await find("wombat", { offset: 2 })).hits.map((h) => h.ts)).toEqual([ts(4), ts(3)])
    expect((await find("wombat", { sortDir: "asc" })).hits.map((h) => h.ts)).toEqual([ts(0), ts(1)])
  })

  it("ranks only the newest matches of a broad query (at least as many as the page reaches)", async () => {
    // The newest two are "rare wombat" and "wombat three": "wombat wombat wombat" is older.
    expect((await find("wombat", { sort: "score" })).hits.map((h) => h.ts).sort()).toEqual([ts(5), ts(6)])
    const deeper = await find("wombat", { sort: "score", limit: 7 })
    expect(deeper.hits[0]!.text).toBe("wombat wombat wombat")
    expect(deeper.hits).toHaveLength(7)
  })

  it("answers a query that is not broad after all exactly (the capped count settles it)", async () => {
    const few = await find("wombat one")
    expect(few.total).toBe(1)
    expect(few.hits.map((h) => h.text)).toEqual(["wombat one"])
  })
})
