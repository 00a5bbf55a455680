// GroupCommit against a real PostgreSQL: submissions from many actors merged into one
// transaction (one round trip when every fence holds), values written exactly as given
// whatever their characters, a stale epoch left out with FencedOut while the others
// commit, and a constraint violated by one submission failing only that one.
import { SqlClient } from "@effect/sql"
import { Effect, Exit, Layer, ManagedRuntime, Redacted } from "effect"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import * as GroupCommit from "../../src/runtime/GroupCommit.ts"
import * as RuntimeMetrics from "../../src/runtime/RuntimeMetrics.ts"
import * as ShardFence from "../../src/runtime/ShardFence.ts"
import * as Database from "../../src/store/Database.ts"
import { freshDatabase, type FreshDatabase } from "../support/services.ts"

const cluster = "gctest"
let db: FreshDatabase
let runtime: ManagedRuntime.ManagedRuntime<SqlClient.SqlClient | GroupCommit.GroupCommit | RuntimeMetrics.RuntimeMetrics, unknown>

beforeAll(async () => {
  db = await freshDatabase({ prefix: "groupcommit" })
  const sql = Database.layer({ url: Redacted.make(db.url), maxConnections: 4, applicationName: "chorus group commit test" })
  runtime = ManagedRuntime.make(
    GroupCommit.layer({ maxGroup: 64, committers: 1 }).pipe(Layer.provideMerge(sql), Layer.provideMerge(RuntimeMetrics.layer("gc-test")))
  )
  await runtime.runPromise(Database.migrate)
  await runtime.runPromise(Effect.flatMap(SqlClient.SqlClient, (sql) => sql.unsafe(`
    CREATE TABLE gc_rows (
      id text PRIMARY KEY, n bigint, x double precision, flag boolean, tags text[], doc jsonb, note text)`)))
  for (const shard of [1, 2, 3]) await runtime.runPromise(ShardFence.raise(cluster, shard, 1, "node-a"))
}, 60_000)

afterAll(async () => {
  await runtime?.dispose()
  await db?.drop()
})

const commit = (shard: number, epoch: number, rows: ReadonlyArray<Record<string, GroupCommit.Cell>>) =>
  runtime.runPromiseExit(Effect.flatMap(GroupCommit.GroupCommit, (gc) => gc.commit(cluster, shard, epoch, [GroupCommit.insert("gc_rows", rows)])))

/** Group commits so far by path: one round trip, or the long way (fences checked one by one). */
const commitsByPath = async () => {
  const metric = await runtime.runPromise(Effect.flatMap(RuntimeMetrics.RuntimeMetrics, (m) => Effect.promise(() => m.groupCommitSeconds.get())))
  const count = (path: string) => metric.values.find((v) => v.metricName === "chorus_group_commit_seconds_count" && v.labels["path"] === path)?.value ?? 0
  return { oneTrip: count("one_trip"), long: count("long") }
}

const stored = (ids: ReadonlyArray<string>) =>
  runtime.runPromise(Effect.flatMap(SqlClient.SqlClient, (sql) =>
    sql<{ id: string; n: string | number | null; x: number | null; flag: boolean | null; tags: Array<string> | null; doc: unknown; note: string | null }>`
      SELECT id, n, x, flag, tags, doc, note FROM gc_rows WHERE id IN ${sql.in(ids)} ORDER BY id`))

describe("GroupCommit", () => {
  it("writes every value exactly as given, whatever its characters", async () => {
    const awkward = [
      "it's", "back\\slash", "\\'", "E'x'", "'); DROP TABLE gc_rows; --", "$$dollar$$", "tab\tnew\nline", "é ✓ 🎉", "", "\\\\u0000 as text"
    ]
    const rows = awkward.map((note, i) => ({
      id: `v${i}`,
      n: i === 0 ? 9_007_199_254_740_991 : -i,
      x: i + 0.25,
      flag: i % 2 === 0,
      tags: i === 1 ? [] : [note, "plain", "with,comma", "{brace}", "\"quote\""],
      doc: { json: { note, nested: [1, null, { k: note }] } },
      note: i === 2 ? null : note
    }))
    const before = await commitsByPath()
    const exits = await Promise.all(rows.map((row, i) => commit(1 + (i % 3), 1, [row])))
    expect(exits.every(Exit.isSuccess)).toBe(true)
    // Every fence held: each group went as one query, none the long way.
    const after = await commitsByPath()
    expect(after.oneTrip).toBeGreaterThan(before.oneTrip)
    expect(after.long).toBe(before.long)
    const back = await stored(rows.map((r) => r.id))
    expect(back).toHaveLength(rows.length)
    for (const row of rows) {
      const got = back.find((b) => b.id === row.id)!
      expect(Number(got.n)).toBe(row.n)
      expect(got.x).toBe(row.x)
      expect(got.flag).toBe(row.flag)
      expect(got.tags).toEqual(row.tags)
      expect(got.doc).toEqual(row.doc.json)
      expect(got.note).toBe(row.note)
    }
  })

  it("leaves out a stale epoch with FencedOut and commits the rest of the group", async () => {
    await runtime.runPromise(ShardFence.raise(cluster, 3, 2, "node-b"))
    const before = await commitsByPath()
    const [ok1, stale, ok2, current] = await Promise.all([
      commit(1, 1, [{ id: "f1", note: "a" }]),
      commit(3, 1, [{ id: "f2", note: "zombie" }]),
      commit(2, 1, [{ id: "f3", note: "b" }]),
      commit(3, 2, [{ id: "f4", note: "successor" }])
    ])
    expect(Exit.isSuccess(ok1) && Exit.isSuccess(ok2) && Exit.isSuccess(current)).toBe(true)
    expect(Exit.isFailure(stale) && JSON.stringify(stale.cause)).toContain("FencedOut")
    expect((await stored(["f1", "f2", "f3", "f4"])).map((r) => r.id)).toEqual(["f1", "f3", "f4"])
    // The stale epoch sent its group the long way, which found out whose it was.
    expect((await commitsByPath()).long).toBeGreaterThan(before.long)
  })

  it("fails only the submission that breaks a constraint", async () => {
    await commit(1, 1, [{ id: "dup", note: "first" }])
    const [good, clash, nul] = await Promise.all([
      commit(1, 1, [{ id: "u1", note: "fine" }]),
      commit(2, 1, [{ id: "dup", note: "second" }]),
      // PostgreSQL refuses NUL in text: not a literal, so the long way, and its error.
      commit(1, 1, [{ id: "u2", note: "nul\u0000byte" }])
    ])
    expect(Exit.isSuccess(good)).toBe(true)
    expect(Exit.isFailure(clash) && JSON.stringify(clash.cause)).toContain("23505")
    expect(Exit.isFailure(nul)).toBe(true)
    expect((await stored(["u1", "u2", "dup"])).map((r) => [r.id, r.note])).toEqual([["dup", "first"], ["u1", "fine"]])
  })
})
