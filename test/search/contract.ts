// The contract every search backend passes (PgSearch.test.ts, TypesenseSearch.test.ts):
// words, phrases, exclusions, prefixes, each filter, both sorts, paging, highlights,
// edits and deletions (in any order, applied twice), conversations and workspaces
// outside the request never answering, and the rebuild from PostgreSQL's messages.

import type { SqlClient } from "@effect/sql"
import { Effect, Layer, ManagedRuntime, Redacted } from "effect"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import * as Database from "../../src/store/Database.ts"
import type { IndexOp, ReindexCursor, SearchDocument, SearchRequest, SearchResult } from "../../src/search/Search.ts"
import { highlightEnd, highlightStart, Search } from "../../src/search/Search.ts"
import * as SearchQuery from "../../src/search/SearchQuery.ts"
import { freshDatabase, type FreshDatabase } from "../support/services.ts"
import { insertChannel, insertMessages } from "../store/conversationsSeed.ts"

export type SearchLayer = (db: FreshDatabase) => Layer.Layer<Search, unknown, SqlClient.SqlClient>

/** A ts at `second` after 2024-03-01 00:00 UTC. */
const base = Date.UTC(2024, 2, 1) / 1000
const tsAt = (second: number, micro = 0) => `${base + second}.${String(micro).padStart(6, "0")}`
const day = 86_400

export const searchContract = (name: string, makeLayer: SearchLayer, options: { readonly timeoutMs?: number } = {}) =>
  describe(name, () => {
    let db: FreshDatabase
    let runtime: ManagedRuntime.ManagedRuntime<Search | SqlClient.SqlClient, unknown>
    const run = <A, E>(effect: Effect.Effect<A, E, Search | SqlClient.SqlClient>) => runtime.runPromise(effect)

    const T = "TCONTRACT1"
    const T2 = "TFOREIGN01"
    const general = "CGENERAL01"
    const random = "CRANDOM001"
    const secret = "CSECRET001"
    const foreign = "CFOREIGN01"
    const ann = "UANN000001"
    const ben = "UBEN000001"
    const visible = [general, random]

    let version = 1000
    const doc = (channelId: string, second: number, text: string, extra: Partial<SearchDocument> = {}): SearchDocument => ({
      teamId: channelId === foreign ? T2 : T,
      channelId,
      ts: tsAt(second),
      userId: ann,
      text,
      threadTs: null,
      version: ++version,
      ...extra
    })
    const apply = (ops: ReadonlyArray<IndexOp>) => run(Effect.flatMap(Search, (s) => s.apply(ops)))
    const upsert = (...docs: ReadonlyArray<SearchDocument>) => apply(docs.map((d) => ({ _tag: "Upsert", doc: d })))

    const request = (query: string, extra: Partial<SearchRequest> = {}): SearchRequest => {
      const q = SearchQuery.parse(query, new Date(Date.UTC(2024, 5, 1)))
      return {
        teamId: T,
        channels: visible,
        users: q.from.length === 0 ? undefined : q.from.flatMap((u) => (u._tag === "UserId" ? [u.id] : [])),
        terms: q.terms,
        range: q.range,
        hasLink: q.hasLink,
        isThread: q.isThread,
        sort: "timestamp",
        sortDir: "desc",
        offset: 0,
        limit: 20,
        highlight: false,
        ...extra
      }
    }
    const find = (query: string, extra: Partial<SearchRequest> = {}): Promise<SearchResult> =>
      run(Effect.flatMap(Search, (s) => s.search(request(query, extra))))
    const texts = async (query: string, extra: Partial<SearchRequest> = {}) => (await find(query, extra)).hits.map((h) => h.text)

    beforeAll(async () => {
      db = await freshDatabase({ prefix: "search_contract" })
      const sql = Database.layer({ url: Redacted.make(db.url), maxConnections: 4, applicationName: "chorus search contract" })
      runtime = ManagedRuntime.make(makeLayer(db).pipe(Layer.provideMerge(sql)))
      await run(Database.migrate)
      await run(Effect.flatMap(Search, (s) => s.clear))
      await upsert(
        doc(general, 10, "We deploy the API on Friday"),
        doc(general, 20, "Release notes for version 2 are out", { userId: ben }),
        doc(general, 30, "notes about the upcoming release", { userId: ben }),
        doc(random, 40, "deploying to staging first, then production"),
        doc(random, 50, "lunch: https://example.com/menu is the link", { userId: ben }),
        doc(general, 60 + day, "alpha beta adjacent"),
        doc(general, 70 + day, "alpha one two three four five six seven eight beta"),
        doc(secret, 80, "deploy the secret launch codes"),
        doc(foreign, 90, "deploy in another workspace"),
        // A foreign workspace's message under a visible channel id: the team still excludes it.
        doc(random, 95, "deploy smuggled across workspaces", { teamId: T2 })
      )
    }, options.timeoutMs ?? 60_000)

    afterAll(async () => {
      await runtime?.dispose()
      await db?.drop()
    })

    describe("text", () => {
      it("finds a word, with its inflections, in the requested conversations only", async () => {
        expect(await texts("deploy")).toEqual(["deploying to staging first, then production", "We deploy the API on Friday"])
      })

      it("requires every word", async () => {
        expect(await texts("deploy friday")).toEqual(["We deploy the API on Friday"])
        expect(await texts("deploy nonexistentword")).toEqual([])
      })

      it("matches a phrase only with its words together and in order", async () => {
        expect(await texts("\"release notes\"")).toEqual(["Release notes for version 2 are out"])
        expect(await texts("release notes")).toEqual(["notes about the upcoming release", "Release notes for version 2 are out"])
      })

      it("excludes words and phrases", async () => {
        expect(await texts("deploy -staging")).toEqual(["We deploy the API on Friday"])
        expect(await texts("notes -\"release notes\"")).toEqual(["notes about the upcoming release"])
      })

      it("matches a prefix", async () => {
        expect(await texts("produc*")).toEqual(["deploying to staging first, then production"])
      })

      it("lists what the filters match when there is no text, newest first", async () => {
        expect((await find("from:<@UBEN000001>")).hits.map((h) => h.ts)).toEqual([tsAt(50), tsAt(30), tsAt(20)])
      })
    })

    describe("filters", () => {
      it("looks only in the conversations of the request", async () => {
        expect(await texts("deploy", { channels: [general] })).toEqual(["We deploy the API on Friday"])
        expect(await texts("deploy", { channels: [] })).toEqual([])
      })

      it("never answers from a conversation outside the request (a private channel the caller cannot read)", async () => {
        expect(await texts("secret launch codes")).toEqual([])
        expect(await texts("secret launch codes", { channels: [...visible, secret] })).toEqual(["deploy the secret launch codes"])
      })

      it("never answers from another workspace, even under a listed channel id", async () => {
        const all = await texts("deploy", { channels: [...visible, foreign] })
        expect(all).not.toContain("deploy in another workspace")
        expect(all).not.toContain("deploy smuggled across workspaces")
        expect(await texts("deploy", { teamId: T2, channels: [foreign, random] })).toEqual(["deploy smuggled across workspaces", "deploy in another workspace"])
      })

      it("filters by author", async () => {
        expect(await texts("notes from:<@UBEN000001>")).toHaveLength(2)
        expect(await texts("notes from:<@UANN000001>")).toEqual([])
        expect(await texts("notes", { users: [] })).toEqual([])
      })

      it("filters by date", async () => {
        expect(await texts("alpha before:2024-03-02")).toEqual([])
        expect(await texts("alpha on:2024-03-02")).toHaveLength(2)
        expect(await texts("notes after:2024-02-29 before:2024-03-02")).toHaveLength(2)
        expect(await texts("notes", { range: { from: base + 25, to: undefined } })).toEqual(["notes about the upcoming release"])
        expect(await texts("notes", { range: { from: undefined, to: base + 25 } })).toEqual(["Release notes for version 2 are out"])
      })

      it("filters messages with a link", async () => {
        expect(await texts("has:link")).toEqual(["lunch: https://example.com/menu is the link"])
        expect(await texts("link has:link")).toEqual(["lunch: https://example.com/menu is the link"])
      })
    })

    describe("order and pages", () => {
      it("sorts by timestamp either way", async () => {
        const desc = (await find("notes")).hits.map((h) => h.ts)
        const asc = (await find("notes", { sortDir: "asc" })).hits.map((h) => h.ts)
        expect(desc).toEqual([tsAt(30), tsAt(20)])
        expect(asc).toEqual([tsAt(20), tsAt(30)])
      })

      it("sorts by score: words close together rank first; asc reverses", async () => {
        const best = await find("alpha beta", { sort: "score" })
        expect(best.hits.map((h) => h.ts)).toEqual([tsAt(60 + day), tsAt(70 + day)])
        expect(best.hits[0]!.score).toBeGreaterThan(best.hits[1]!.score)
        const worst = await find("alpha beta", { sort: "score", sortDir: "asc" })
        expect(worst.hits.map((h) => h.ts)).toEqual([tsAt(70 + day), tsAt(60 + day)])
      })

      it("pages with a stable total, and answers nothing past the end", async () => {
        const all = await find("", { limit: 100 })
        expect(all.total).toBe(7)
        expect(all.hits).toHaveLength(7)
        const pages = [await find("", { limit: 3 }), await find("", { limit: 3, offset: 3 }), await find("", { limit: 3, offset: 6 })]
        expect(pages.map((p) => p.hits.length)).toEqual([3, 3, 1])
        expect(pages.map((p) => p.total)).toEqual([7, 7, 7])
        expect(pages.flatMap((p) => p.hits.map((h) => h.ts))).toEqual(all.hits.map((h) => h.ts))
        const past = await find("", { limit: 3, offset: 9 })
        expect(past.hits).toEqual([])
        expect(past.total).toBe(7)
      })
    })

    describe("highlights", () => {
      it("marks the matched words in the whole text when asked", async () => {
        const [hit] = (await find("friday", { highlight: true })).hits
        expect(hit!.text).toBe(`We deploy the API on ${highlightStart}Friday${highlightEnd}`)
      })

      it("marks every word of a phrase and leaves the text otherwise as it is", async () => {
        const [hit] = (await find("\"release notes\"", { highlight: true })).hits
        expect(hit!.text).toContain(`${highlightStart}Release${highlightEnd}`)
        expect(hit!.text).toContain(`${highlightStart}notes${highlightEnd}`)
        expect(hit!.text.replaceAll(highlightStart, "").replaceAll(highlightEnd, "")).toBe("Release notes for version 2 are out")
      })

      it("leaves the text plain without highlight", async () => {
        expect(await texts("friday")).toEqual(["We deploy the API on Friday"])
      })
    })

    describe("edits and deletions", () => {
      it("shows the new text of an edit, and ignores an older version applied late or twice", async () => {
        const original = doc(general, 200, "the kangaroo memo")
        await upsert(original)
        const edited = { ...original, text: "the wombat memo", version: original.version + 5 }
        await upsert(edited)
        await upsert(original, edited, original)
        expect(await texts("kangaroo")).toEqual([])
        expect(await texts("wombat")).toEqual(["the wombat memo"])
      })

      it("applies the newest of several versions in one batch, whatever their order", async () => {
        const v1 = doc(general, 210, "platypus draft")
        await apply([
          { _tag: "Upsert", doc: { ...v1, text: "platypus final", version: v1.version + 2 } },
          { _tag: "Upsert", doc: v1 },
          { _tag: "Upsert", doc: { ...v1, text: "platypus second", version: v1.version + 1 } }
        ])
        expect(await texts("platypus")).toEqual(["platypus final"])
      })

      it("hides a deleted message for good: a late or repeated post does not bring it back", async () => {
        const post = doc(general, 220, "the narwhal announcement")
        await upsert(post)
        expect(await texts("narwhal")).toHaveLength(1)
        const removal: IndexOp = { _tag: "Remove", teamId: T, channelId: general, ts: post.ts, version: post.version + 1 }
        await apply([removal])
        await apply([{ _tag: "Upsert", doc: post }, removal])
        expect(await texts("narwhal")).toEqual([])
        expect((await find("", { limit: 100 })).hits.map((h) => h.ts)).not.toContain(post.ts)
      })

      it("removes a message whose post it never saw (deletion first)", async () => {
        const post = doc(general, 230, "the okapi rumour")
        await apply([{ _tag: "Remove", teamId: T, channelId: general, ts: post.ts, version: post.version + 1 }])
        await upsert(post)
        expect(await texts("okapi")).toEqual([])
      })
    })

    describe("threads", () => {
      it("is:thread finds replies and, once replied to, their parent", async () => {
        const parent = doc(random, 300, "quokka thread starter")
        await upsert(parent)
        expect(await texts("quokka is:thread")).toEqual([])
        const reply = doc(random, 301, "quokka reply", { threadTs: parent.ts, userId: ben })
        await apply([{ _tag: "Upsert", doc: reply }, { _tag: "MarkThread", channelId: random, ts: parent.ts }])
        const hits = (await find("quokka is:thread")).hits
        expect(hits.map((h) => h.text)).toEqual(["quokka reply", "quokka thread starter"])
        expect(hits.map((h) => h.threadTs)).toEqual([parent.ts, parent.ts])
        // A later edit of the parent keeps it in its thread.
        await upsert({ ...parent, text: "quokka thread starter (edited)", version: reply.version + 1 })
        expect(await texts("quokka is:thread")).toEqual(["quokka reply", "quokka thread starter (edited)"])
      })
    })

    describe("rebuild from PostgreSQL", () => {
      it("indexes messages in chunks, without system messages, deleted ones or older versions", async () => {
        const R = "CREBUILD01"
        await run(Effect.gen(function*() {
          yield* insertChannel({ id: R, team_id: T, creator: ann })
          yield* insertMessages([
            { channel_id: R, team_id: T, ts: tsAt(400), user_id: ann, text: "zebra crossing one" },
            { channel_id: R, team_id: T, ts: tsAt(401), user_id: ann, text: "zebra crossing two" },
            { channel_id: R, team_id: T, ts: tsAt(402), user_id: ann, text: "<@UANN000001> has joined zebra", subtype: "channel_join" },
            { channel_id: R, team_id: T, ts: tsAt(403), user_id: ann, text: "", deleted: true },
            { channel_id: R, team_id: T, ts: tsAt(404), user_id: ben, text: "zebra reply", thread_ts: tsAt(400) }
          ])
        }))
        // The deleted one was indexed live before its deletion; a live edit is newer than the rebuild's snapshot.
        await upsert(doc(R, 403, "zebra gone soon", { version: 1 }))
        await upsert(doc(R, 401, "zebra crossing two edited live", { version: 10_000_000 }))
        const searching = { channels: [R] }
        let cursor: ReindexCursor | undefined
        let scanned = 0
        for (;;) {
          const chunk = await run(Effect.flatMap(Search, (s) => s.reindex(cursor, 2)))
          scanned += chunk.scanned
          if (chunk.next === undefined) break
          cursor = chunk.next
        }
        expect(scanned).toBeGreaterThanOrEqual(5)
        expect(await texts("zebra", searching)).toEqual(["zebra reply", "zebra crossing two edited live", "zebra crossing one"])
        expect((await find("zebra is:thread", searching)).hits.map((h) => h.ts)).toEqual([tsAt(404), tsAt(400)])
      })
    })
  })
