// The conversation read repository on real PostgreSQL: timeline windows in both
// directions, threads, deleted messages, reactions, listings with the visibility rules
// of invariant 5, members, unread counts, and query plans that use indexes (no scan of
// a workspace or of a channel's threads).

import { SqlClient } from "@effect/sql"
import { Effect, Layer, ManagedRuntime, Option, Redacted } from "effect"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import type { Window } from "../../src/domain/HistoryRange.ts"
import * as Database from "../../src/store/Database.ts"
import * as Store from "../../src/store/ConversationsRead.ts"
import { ConversationsRead } from "../../src/store/ConversationsRead.ts"
import { freshDatabase, type FreshDatabase } from "../support/services.ts"
import { insertChannel, insertMembers, insertMessages, insertReaction, markRead, tsOf } from "./conversationsSeed.ts"

let db: FreshDatabase
let runtime: ManagedRuntime.ManagedRuntime<ConversationsRead | SqlClient.SqlClient, unknown>
const run = <A, E>(effect: Effect.Effect<A, E, ConversationsRead | SqlClient.SqlClient>) => runtime.runPromise(effect)
const store = <A, E>(f: (s: Store.ConversationsReadShape) => Effect.Effect<A, E>) => run(Effect.flatMap(ConversationsRead, f))

const T = "TNORTH0001"
const T2 = "TSOUTH0001"
const ann = "UANN000001"
const ben = "UBEN000001"
const cat = "UCAT000001"

// Channel CMAIN: top-level messages at seconds 1..10 (7 deleted), a thread on 3 with
// replies 3.000001, 3.000002 and a broadcast reply 3.000003 (deleted reply 3.000004).
const main = "CMAIN00001"
const other = "COTHER0001"
const topLevel = [tsOf(10), tsOf(9), tsOf(8), tsOf(6), tsOf(5), tsOf(4), tsOf(3, 3), tsOf(3), tsOf(2), tsOf(1)]

const older = (w: Partial<Window> = {}): Window => ({ lower: undefined, upper: undefined, direction: "older", ...w })
const newer = (w: Partial<Window> = {}): Window => ({ lower: undefined, upper: undefined, direction: "newer", ...w })

beforeAll(async () => {
  db = await freshDatabase({ prefix: "convread_store" })
  const sql = Database.layer({ url: Redacted.make(db.url), maxConnections: 4, applicationName: "chorus convread test" })
  runtime = ManagedRuntime.make(Store.layer.pipe(Layer.provideMerge(sql)))
  await run(Database.migrate)
  await run(Effect.gen(function*() {
    yield* insertChannel({ id: main, team_id: T, creator: ann })
    yield* insertChannel({ id: other, team_id: T, creator: ann })
    yield* insertMembers(main, [ann, ben])
    const m = (ts: string, extra: Partial<Parameters<typeof insertMessages>[0][number]> = {}) => ({ channel_id: main, team_id: T, ts, user_id: ann, ...extra })
    yield* insertMessages([
      m(tsOf(1)), m(tsOf(2)), m(tsOf(3)),
      m(tsOf(3, 1), { thread_ts: tsOf(3), user_id: ben }),
      m(tsOf(3, 2), { thread_ts: tsOf(3) }),
      m(tsOf(3, 3), { thread_ts: tsOf(3), reply_broadcast: true, user_id: ben }),
      m(tsOf(3, 4), { thread_ts: tsOf(3), deleted: true }),
      m(tsOf(4)), m(tsOf(5), { user_id: ben }), m(tsOf(6)), m(tsOf(7), { deleted: true }), m(tsOf(8)), m(tsOf(9), { user_id: ben }), m(tsOf(10))
    ])
    // The same ts in another channel never leak into CMAIN.
    yield* insertMessages([tsOf(4), tsOf(11)].map((ts) => ({ channel_id: other, team_id: T, ts })))
  }))
})
afterAll(async () => {
  await runtime?.dispose()
  await db?.drop()
})

const tsList = (rows: ReadonlyArray<{ ts: string }>) => rows.map((r) => r.ts)

describe("history", () => {
  it("answers the top-level timeline newest first: thread replies only when broadcast, never deleted messages", async () => {
    expect(tsList(await store((s) => s.history(main, older(), 100)))).toEqual(topLevel)
  })

  it("answers oldest first when the window runs forward", async () => {
    expect(tsList(await store((s) => s.history(main, newer(), 100)))).toEqual([...topLevel].reverse())
  })

  it("cuts the window with exclusive and inclusive bounds", async () => {
    const exclusive = older({ lower: { ts: tsOf(2), inclusive: false }, upper: { ts: tsOf(6), inclusive: false } })
    expect(tsList(await store((s) => s.history(main, exclusive, 100)))).toEqual([tsOf(5), tsOf(4), tsOf(3, 3), tsOf(3)])
    const inclusive = older({ lower: { ts: tsOf(2), inclusive: true }, upper: { ts: tsOf(6), inclusive: true } })
    expect(tsList(await store((s) => s.history(main, inclusive, 100)))).toEqual([tsOf(6), tsOf(5), tsOf(4), tsOf(3, 3), tsOf(3), tsOf(2)])
  })

  it("takes `limit` from the window's starting end", async () => {
    expect(tsList(await store((s) => s.history(main, older(), 3)))).toEqual(topLevel.slice(0, 3))
    expect(tsList(await store((s) => s.history(main, newer({ lower: { ts: tsOf(3), inclusive: false } }), 2)))).toEqual([tsOf(3, 3), tsOf(4)])
  })

  it("returns rows as SlackMessage expects them (thread parent fields, arrays, numbers)", async () => {
    const [parent] = await store((s) => s.history(main, older({ upper: { ts: tsOf(3), inclusive: true } }), 1))
    expect(parent).toMatchObject({ ts: tsOf(3), thread_ts: tsOf(3), reply_count: 4, reply_users: [ben, ann], deleted: false })
    expect(typeof parent?.seq).toBe("number")
  })
})

describe("replies and messages", () => {
  it("answers a thread's replies oldest first, without the parent or deleted replies", async () => {
    expect(tsList(await store((s) => s.replies(main, tsOf(3), newer(), 100)))).toEqual([tsOf(3, 1), tsOf(3, 2), tsOf(3, 3)])
    const after = newer({ lower: { ts: tsOf(3, 1), inclusive: false } })
    expect(tsList(await store((s) => s.replies(main, tsOf(3), after, 1)))).toEqual([tsOf(3, 2)])
    expect(await store((s) => s.replies(main, tsOf(5), newer(), 100))).toEqual([])
  })

  it("finds one message by ts in its channel only, deleted ones included", async () => {
    expect(Option.map(await store((s) => s.message(main, tsOf(7))), (m) => m.deleted)).toEqual(Option.some(true))
    expect(Option.isNone(await store((s) => s.message(main, tsOf(11))))).toBe(true)
    expect(Option.isSome(await store((s) => s.message(other, tsOf(11))))).toBe(true)
  })
})

describe("reactions", () => {
  it("groups by name in the order reactions were first added, users in the order they reacted", async () => {
    await run(Effect.gen(function*() {
      yield* insertReaction(main, tsOf(5), "wave", cat, 30)
      yield* insertReaction(main, tsOf(5), "tada", ben, 10)
      yield* insertReaction(main, tsOf(5), "wave", ann, 20)
      yield* insertReaction(main, tsOf(5), "tada", ann, 40)
      yield* insertReaction(main, tsOf(6), "eyes", ann, 50)
      yield* insertReaction(other, tsOf(4), "eyes", ann, 60)
    }))
    const byTs = await store((s) => s.reactions(main, [tsOf(5), tsOf(6), tsOf(4)]))
    expect(byTs.get(tsOf(5))).toEqual([
      { name: "tada", users: [ben, ann], count: 2 },
      { name: "wave", users: [ann, cat], count: 2 }
    ])
    expect(byTs.get(tsOf(6))).toEqual([{ name: "eyes", users: [ann], count: 1 }])
    expect(byTs.has(tsOf(4))).toBe(false)
    expect((await store((s) => s.reactions(main, []))).size).toBe(0)
  })
})

describe("conversations, members and unread counts", () => {
  // Workspace T: public CPUB1 (ann), CPUB2 (nobody), archived CPUB3 (ben); private CPRIV (ann, ben);
  // DM DANNBEN (ann, ben); DM DBENCAT (ben, cat); group DM CMPIM (ann, ben, cat). Workspace T2: CSOUTH (ann).
  beforeAll(async () => {
    await run(Effect.gen(function*() {
      yield* insertChannel({ id: "CPUB1", team_id: T, creator: ann })
      yield* insertChannel({ id: "CPUB2", team_id: T, creator: ann })
      yield* insertChannel({ id: "CPUB3", team_id: T, creator: ben, is_archived: true })
      yield* insertChannel({ id: "CPRIV", team_id: T, creator: ann, is_private: true })
      yield* insertChannel({ id: "DANNBEN", team_id: T, creator: ann, name: null, is_im: true, is_private: true })
      yield* insertChannel({ id: "DBENCAT", team_id: T, creator: ben, name: null, is_im: true, is_private: true })
      yield* insertChannel({ id: "CMPIM", team_id: T, creator: ann, is_mpim: true, is_private: true })
      yield* insertChannel({ id: "CSOUTH", team_id: T2, creator: ann })
      yield* insertMembers("CPUB1", [ann])
      yield* insertMembers("CPUB3", [ben])
      yield* insertMembers("CPRIV", [ann, ben])
      yield* insertMembers("DANNBEN", [ann, ben])
      yield* insertMembers("DBENCAT", [ben, cat])
      yield* insertMembers("CMPIM", [ann, ben, cat])
      yield* insertMembers("CSOUTH", [ann])
    }))
  })

  const query = (q: Partial<Store.ConversationsQuery>): Store.ConversationsQuery => ({
    teamId: T,
    viewerId: ann,
    memberOf: undefined,
    types: ["public_channel", "private_channel", "mpim", "im"],
    publicToNonMembers: true,
    excludeArchived: false,
    after: undefined,
    limit: 100,
    numMembers: true,
    ...q
  })
  const ids = (rows: ReadonlyArray<{ id: string }>) => rows.map((r) => r.id)

  it("lists every public channel of the workspace and the other conversations the viewer is in, by id", async () => {
    const rows = await store((s) => s.conversations(query({})))
    expect(ids(rows)).toEqual(["CMAIN00001", "CMPIM", "COTHER0001", "CPRIV", "CPUB1", "CPUB2", "CPUB3", "DANNBEN"])
    const byId = new Map(rows.map((r) => [r.id, r]))
    expect(byId.get("CPUB1")).toMatchObject({ is_member: true, num_members: 1, last_read: "0000000000.000000" })
    expect(byId.get("CPUB2")).toMatchObject({ is_member: false, num_members: 0, last_read: null })
    expect(byId.get("DANNBEN")).toMatchObject({ is_member: true, im_user: ben, num_members: 2 })
  })

  it("filters by type and archived state", async () => {
    expect(ids(await store((s) => s.conversations(query({ types: ["public_channel"], excludeArchived: true }))))).toEqual([
      "CMAIN00001", "COTHER0001", "CPUB1", "CPUB2"
    ])
    expect(ids(await store((s) => s.conversations(query({ types: ["im", "mpim"] }))))).toEqual(["CMPIM", "DANNBEN"])
    expect(ids(await store((s) => s.conversations(query({ viewerId: cat, types: ["private_channel", "im"] }))))).toEqual(["DBENCAT"])
    expect(await store((s) => s.conversations(query({ types: [] })))).toEqual([])
  })

  it("shows a viewer without the right to see public channels (a guest) only the ones they are in", async () => {
    expect(ids(await store((s) => s.conversations(query({ publicToNonMembers: false, types: ["public_channel"] }))))).toEqual(["CMAIN00001", "CPUB1"])
  })

  it("pages by id with `after`", async () => {
    const first = await store((s) => s.conversations(query({ limit: 3 })))
    expect(ids(first)).toEqual(["CMAIN00001", "CMPIM", "COTHER0001"])
    const second = await store((s) => s.conversations(query({ limit: 3, after: "COTHER0001" })))
    expect(ids(second)).toEqual(["CPRIV", "CPUB1", "CPUB2"])
  })

  it("lists another user's conversations only as far as the viewer may see them", async () => {
    // ben is in CMAIN, CPUB3, CPRIV, DANNBEN, DBENCAT, CMPIM; cat sees the public ones, and what cat is in.
    expect(ids(await store((s) => s.conversations(query({ viewerId: cat, memberOf: ben }))))).toEqual([
      "CMAIN00001", "CMPIM", "CPUB3", "DBENCAT"
    ])
    const asGuest = await store((s) => s.conversations(query({ viewerId: cat, memberOf: ben, publicToNonMembers: false })))
    expect(ids(asGuest)).toEqual(["CMPIM", "DBENCAT"])
    expect(asGuest.find((r) => r.id === "DBENCAT")).toMatchObject({ im_user: ben, is_member: true })
    // Never another workspace's, even the viewer's own there.
    expect(ids(await store((s) => s.conversations(query({ memberOf: ann }))))).not.toContain("CSOUTH")
  })

  it("reads one conversation with the viewer's membership", async () => {
    const priv = await store((s) => s.channel("CPRIV", cat, { numMembers: true }))
    expect(Option.getOrThrow(priv)).toMatchObject({ id: "CPRIV", is_private: true, is_member: false, num_members: 2 })
    expect(Option.getOrThrow(await store((s) => s.channel("DANNBEN", ben)))).toMatchObject({ im_user: ann, num_members: null })
    expect(Option.isNone(await store((s) => s.channel("CNOPE", ann)))).toBe(true)
  })

  it("pages members by id", async () => {
    expect(await store((s) => s.members("CMPIM", { after: undefined, limit: 2 }))).toEqual([ann, ben])
    expect(await store((s) => s.members("CMPIM", { after: ben, limit: 2 }))).toEqual([cat])
  })

  it("counts unread top-level messages after the read marker, and those by others", async () => {
    await run(markRead(main, ben, tsOf(5), 0))
    // After 5: 6, 8, 9 (ben's), 10.
    expect(await store((s) => s.unread(main, ben, tsOf(5)))).toEqual({ unread_count: 4, unread_count_display: 3 })
    expect(await store((s) => s.unread(main, ben, tsOf(10)))).toEqual({ unread_count: 0, unread_count_display: 0 })
  })
})

describe("query plans", () => {
  // Enough rows that a sequential scan would be the planner's choice if no index served.
  beforeAll(async () => {
    await run(Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      yield* sql`
        INSERT INTO channels (id, team_id, name, is_private, is_im, creator, created_at)
        SELECT 'CBULK' || g, CASE WHEN g % 2 = 0 THEN ${T} ELSE ${T2} END, 'bulk-' || g, g % 3 = 0, g % 5 = 0, ${ann}, 0
        FROM generate_series(1, 3000) g`
      yield* sql`
        INSERT INTO channel_members (channel_id, user_id, joined_seq)
        SELECT 'CBULK' || g, 'UBULK' || (g % 400), 0 FROM generate_series(1, 3000) g`
      // One long channel: 4,000 top-level messages, each with 5 replies.
      yield* sql`
        INSERT INTO messages (channel_id, ts, seq, team_id, user_id, thread_ts, reply_count)
        SELECT 'CLONG', to_char(1700000000 + g, 'FM0000000000') || '.000000', g * 6, ${T}, ${ann},
               to_char(1700000000 + g, 'FM0000000000') || '.000000', 5
        FROM generate_series(1, 4000) g`
      yield* sql`
        INSERT INTO messages (channel_id, ts, seq, team_id, user_id, thread_ts)
        SELECT 'CLONG', to_char(1700000000 + g, 'FM0000000000') || '.00000' || r, g * 6 + r, ${T}, ${ben},
               to_char(1700000000 + g, 'FM0000000000') || '.000000'
        FROM generate_series(1, 4000) g, generate_series(1, 5) r`
      // Many other channels' messages.
      yield* sql`
        INSERT INTO messages (channel_id, ts, seq, team_id, user_id)
        SELECT 'CBULK' || (g % 3000 + 1), to_char(1700000000 + g, 'FM0000000000') || '.000000', g, ${T}, ${ann}
        FROM generate_series(1, 30000) g`
      yield* sql`
        INSERT INTO reactions (channel_id, message_ts, name, user_id, created_at)
        SELECT 'CLONG', to_char(1700000000 + g, 'FM0000000000') || '.000000', 'emoji' || (g % 7), 'U' || r, g
        FROM generate_series(1, 4000) g, generate_series(1, 5) r`
      yield* sql`ANALYZE`
    }))
  })

  const plan = (statement: (s: ReturnType<typeof Store.statements>) => unknown) =>
    run(Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const stmt = statement(Store.statements(sql))
      const rows = yield* sql<{ "QUERY PLAN": unknown }>`EXPLAIN (FORMAT JSON) ${stmt as never}`
      return JSON.stringify(rows[0]?.["QUERY PLAN"])
    }))

  const seqScans = (planJson: string) => [...planJson.matchAll(/"Node Type":"Seq Scan"[^}]*?"Relation Name":"(\w+)"/g)].map((m) => m[1])

  it("reads a history page from messages_timeline, not by scanning the channel or its threads", async () => {
    for (const w of [older(), newer({ lower: { ts: tsOf(100), inclusive: false } }), older({ upper: { ts: tsOf(2000), inclusive: true } })]) {
      const p = await plan((s) => s.history("CLONG", w, 101))
      expect(seqScans(p)).toEqual([])
      expect(p).toContain("messages_timeline")
    }
  })

  it("reads a thread page from messages_thread", async () => {
    const p = await plan((s) => s.replies("CLONG", "1700001000.000000", newer(), 101))
    expect(seqScans(p)).toEqual([])
    expect(p).toContain("messages_thread")
  })

  it("reads unread counts, single messages and reactions by index", async () => {
    for (const p of [
      await plan((s) => s.unread("CLONG", ann, "1700003000.000000")),
      await plan((s) => s.message("CLONG", "1700003000.000000")),
      await plan((s) => s.reactions("CLONG", ["1700003000.000000", "1700003001.000000"])),
      await plan((s) => s.members("CBULK2", undefined, 101)),
      await plan((s) => s.channel("CBULK2", ann, true))
    ]) expect(seqScans(p)).toEqual([])
  })

  it("lists a workspace's public channels from channels_team_public and a user's from their memberships", async () => {
    const q: Store.ConversationsQuery = {
      teamId: T,
      viewerId: "UBULK7",
      memberOf: undefined,
      types: ["public_channel", "private_channel", "mpim", "im"],
      publicToNonMembers: true,
      excludeArchived: true,
      after: "CBULK1500",
      limit: 101,
      numMembers: true
    }
    const list = await plan((s) => s.conversations(q))
    expect(seqScans(list)).toEqual([])
    expect(list).toContain("channels_team_public")
    const ofUser = await plan((s) => s.conversations({ ...q, memberOf: "UBULK9", publicToNonMembers: false }))
    expect(seqScans(ofUser)).toEqual([])
  })
})
