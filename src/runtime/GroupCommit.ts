/**
 * Group commit across actors: every actor batch that wants to persist hands its row
 * writes to this node's committer; while one PostgreSQL transaction is in flight,
 * the next submissions queue up, and then go together in ONE transaction with ONE
 * multi-row statement per (table, shape). A transaction per actor batch tops out near
 * 1,000–1,400 commits/s on a small machine whatever the concurrency (PostgreSQL CPU per
 * statement); merging makes the statement count per commit independent of how many
 * actors wrote.
 *
 * Fencing is preserved: the transaction first reads the fence rows of every shard in
 * the group `FOR SHARE` (in shard order) and leaves out, with `FencedOut`, the
 * submissions whose epoch is stale. If the merged transaction fails (a constraint
 * violated by one submission), each submission is retried alone, so only the culprit
 * gets the error.
 *
 * The usual case, where every fence holds, goes as one multi-statement query (one
 * round trip, `oneTripText`); a moved fence sends the group the long way, which finds
 * out whose.
 */
import { SqlClient } from "@effect/sql"
import type { SqlError } from "@effect/sql/SqlError"
import { Context, Deferred, Effect, Exit, Layer, Option, Queue } from "effect"
import { performance } from "node:perf_hooks"
import { FencedOut } from "./RuntimeErrors.ts"
import { RuntimeMetrics } from "./RuntimeMetrics.ts"

/**
 * A string as an SQL literal, exactly as `pg`'s `escapeLiteral` makes it (quotes and
 * backslashes doubled, `E` prefix when there are backslashes), with native replaces
 * instead of its loop over every character: message texts are most of a commit's bytes.
 */
const escapeLiteral = (text: string): string => {
  const quoted = text.includes("'") ? text.replace(/'/g, "''") : text
  return text.includes("\\") ? ` E'${quoted.replace(/\\/g, "\\\\")}'` : `'${quoted}'`
}

export type Cell = string | number | boolean | null | ReadonlyArray<string> | { readonly json: unknown }

/** Insert rows; on a conflict on `target`, do nothing or update the `update` columns. */
export interface InsertWrite {
  readonly _tag: "insert"
  readonly table: string
  readonly rows: ReadonlyArray<Readonly<Record<string, Cell>>>
  readonly onConflict?: { readonly target: ReadonlyArray<string>; readonly update?: ReadonlyArray<string> }
}

/** Update existing rows matched by the `key` columns, setting every other column given. */
export interface UpdateWrite {
  readonly _tag: "update"
  readonly table: string
  readonly key: ReadonlyArray<string>
  readonly rows: ReadonlyArray<Readonly<Record<string, Cell>>>
  /** Postgres types of the columns, for the VALUES list (e.g. { last_seq: "bigint" }). */
  readonly types: Readonly<Record<string, string>>
}

export type Write = InsertWrite | UpdateWrite

export const insert = (table: string, rows: InsertWrite["rows"], onConflict?: InsertWrite["onConflict"]): InsertWrite =>
  onConflict === undefined ? { _tag: "insert", table, rows } : { _tag: "insert", table, rows, onConflict }

export const update = (table: string, key: ReadonlyArray<string>, rows: UpdateWrite["rows"], types: UpdateWrite["types"]): UpdateWrite => ({
  _tag: "update",
  table,
  key,
  rows,
  types
})

export interface GroupCommitShape {
  /** Commits `writes` (in order) under the fence of `shard` at `epoch`, with other actors' writes. */
  readonly commit: (
    cluster: string,
    shard: number,
    epoch: number,
    writes: ReadonlyArray<Write>
  ) => Effect.Effect<void, SqlError | FencedOut>
}

export class GroupCommit extends Context.Tag("chorus/runtime/GroupCommit")<GroupCommit, GroupCommitShape>() {}

interface Submission {
  readonly cluster: string
  readonly shard: number
  readonly epoch: number
  readonly writes: ReadonlyArray<Write>
  readonly done: Deferred.Deferred<void, SqlError | FencedOut>
}

const identifier = /^[a-z_][a-z0-9_]*$/
const checkName = (name: string) => {
  // Table and column names come from code, never from users; still, refuse anything odd.
  if (!identifier.test(name)) throw new Error(`invalid SQL identifier ${JSON.stringify(name)}`)
  return `"${name}"`
}

/** Rows of several writes of the same shape, merged into one statement's worth. */
interface Group {
  readonly signature: string
  readonly write: Write
  readonly columns: ReadonlyArray<string>
  rows: Array<Readonly<Record<string, Cell>>>
}

const signatureOf = (write: Write, columns: ReadonlyArray<string>) =>
  write._tag === "insert"
    ? `i|${write.table}|${columns.join(",")}|${write.onConflict?.target.join(",") ?? ""}|${write.onConflict?.update?.join(",") ?? "-"}`
    : `u|${write.table}|${columns.join(",")}|${write.key.join(",")}`

const toParam = (cell: Cell): unknown => {
  if (cell !== null && typeof cell === "object" && !Array.isArray(cell)) return JSON.stringify((cell as { json: unknown }).json)
  return cell
}

/** Merges writes by shape, in order of first appearance; later rows win on a repeated key. */
export const mergeWrites = (writes: ReadonlyArray<Write>): ReadonlyArray<Group> => {
  const groups = new Map<string, Group>()
  for (const write of writes) {
    if (write.rows.length === 0) continue
    const columns = Object.keys(write.rows[0]!).sort()
    const signature = signatureOf(write, columns)
    const group = groups.get(signature)
    if (group === undefined) groups.set(signature, { signature, write, columns, rows: [...write.rows] })
    else group.rows.push(...write.rows)
  }
  for (const group of groups.values()) {
    const key = group.write._tag === "insert" ? group.write.onConflict?.target : group.write.key
    if (key === undefined) continue
    // One statement may not touch a row twice: keep the last row per key.
    const byKey = new Map<string, Readonly<Record<string, Cell>>>()
    for (const row of group.rows) byKey.set(JSON.stringify(key.map((k) => row[k] ?? null)), row)
    group.rows = [...byKey.values()]
  }
  return [...groups.values()]
}

/** PostgreSQL accepts at most 65,535 bind parameters per statement. */
const maxParams = 60_000

/** How a cell gets into a statement's text: a bind parameter (pushed on `params`), or a literal. */
type Placeholder = (cell: Cell, type: string | undefined, params: Array<unknown>) => string

interface Statement {
  readonly text: string
  readonly params: ReadonlyArray<unknown>
}

/** The statements of one merged group, `rowsPerStatement` rows each. */
const statementsOf = (group: Group, rowsPerStatement: number, placeholder: Placeholder): Array<Statement> => {
  const cols = group.columns
  const write = group.write
  const statements: Array<Statement> = []
  for (let start = 0; start < group.rows.length; start += rowsPerStatement) {
    const params: Array<unknown> = []
    const tuples = group.rows.slice(start, start + rowsPerStatement).map((row) =>
      `(${cols.map((c) => placeholder(row[c] ?? null, write._tag === "update" ? write.types[c] : undefined, params)).join(", ")})`
    ).join(", ")
    if (write._tag === "insert") {
      const conflict = write.onConflict === undefined
        ? ""
        : write.onConflict.update === undefined || write.onConflict.update.length === 0
        ? ` ON CONFLICT (${write.onConflict.target.map(checkName).join(", ")}) DO NOTHING`
        : ` ON CONFLICT (${write.onConflict.target.map(checkName).join(", ")}) DO UPDATE SET ${write.onConflict.update.map((c) => `${checkName(c)} = EXCLUDED.${checkName(c)}`).join(", ")}`
      statements.push({ text: `INSERT INTO ${checkName(write.table)} (${cols.map(checkName).join(", ")}) VALUES ${tuples}${conflict}`, params })
    } else {
      const set = cols.filter((c) => !write.key.includes(c))
      statements.push({
        text: `UPDATE ${checkName(write.table)} AS t SET ${set.map((c) => `${checkName(c)} = v.${checkName(c)}`).join(", ")} FROM (VALUES ${tuples}) AS v (${cols.map(checkName).join(", ")}) WHERE ${write.key.map((k) => `t.${checkName(k)} = v.${checkName(k)}`).join(" AND ")}`,
        params
      })
    }
  }
  return statements
}

const bindParameter: Placeholder = (cell, type, params) => {
  params.push(toParam(cell))
  return type === undefined ? `$${params.length}` : `$${params.length}::${type}`
}

const runGroup = (sql: SqlClient.SqlClient, group: Group) =>
  Effect.forEach(
    statementsOf(group, Math.max(1, Math.floor(maxParams / Math.max(1, group.columns.length))), bindParameter),
    (statement) => sql.unsafe(statement.text, statement.params),
    { discard: true }
  )

/** A cell as an SQL literal; undefined for what only a bind parameter can carry. */
const literalOf = (cell: Cell): string | undefined => {
  if (cell === null) return "NULL"
  if (typeof cell === "string") return cell.includes("\u0000") ? undefined : escapeLiteral(cell)
  if (typeof cell === "number") return Number.isFinite(cell) ? String(cell) : undefined
  if (typeof cell === "boolean") return cell ? "TRUE" : "FALSE"
  if (Array.isArray(cell)) {
    if (cell.some((s) => s.includes("\u0000"))) return undefined
    return cell.length === 0 ? "'{}'" : `ARRAY[${cell.map((s) => escapeLiteral(s)).join(", ")}]`
  }
  // JSON text has no raw NUL (it escapes it; jsonb refuses the escape either way).
  const text = JSON.stringify((cell as { json: unknown }).json)
  return text === undefined ? undefined : escapeLiteral(text)
}

class NotLiteral extends Error {}

/** SQLSTATE raised by `chorus_fence_check` (migration 0012) when a fence moved. */
const fenceMoved = "CH001"

const sqlStateOf = (error: unknown): unknown => (error as { readonly cause?: { readonly code?: unknown } } | null)?.cause?.code

/**
 * The whole group as ONE simple-protocol query: the fence check, then every merged
 * statement with its values as literals. PostgreSQL runs a multi-statement query as
 * one implicit transaction (all or nothing), so this is the transaction of
 * `commitTogether` in one round trip instead of one per statement plus BEGIN and
 * COMMIT; on this kind of machine a round trip (two process wake-ups) costs more than
 * the statement. Undefined when a value cannot be a literal, or when two submissions
 * of one shard disagree on its epoch: then `commitTogether` does it the long way.
 */
const oneTripText = (batch: ReadonlyArray<Submission>): string | undefined => {
  const epochs = new Map<string, Map<number, number>>()
  for (const s of batch) {
    const shards = epochs.get(s.cluster) ?? new Map<number, number>()
    epochs.set(s.cluster, shards)
    const known = shards.get(s.shard)
    if (known !== undefined && known !== s.epoch) return undefined
    shards.set(s.shard, s.epoch)
  }
  const statements: Array<string> = []
  for (const [cluster, shards] of epochs) {
    const sorted = [...shards].sort((a, b) => a[0] - b[0])
    statements.push(`SELECT chorus_fence_check(${escapeLiteral(cluster)}, ARRAY[${sorted.map(([shard]) => shard).join(", ")}]::integer[], ARRAY[${sorted.map(([, epoch]) => epoch).join(", ")}]::bigint[])`)
  }
  const literal: Placeholder = (cell, type) => {
    const text = literalOf(cell)
    if (text === undefined) throw new NotLiteral()
    return type === undefined ? text : `${text}::${type}`
  }
  try {
    for (const group of mergeWrites(batch.flatMap((s) => s.writes))) {
      for (const statement of statementsOf(group, group.rows.length, literal)) statements.push(statement.text)
    }
  } catch (error) {
    if (error instanceof NotLiteral) return undefined
    throw error
  }
  return statements.join(";\n")
}

// Declared once (not an `Effect.gen(function*…)` per call): see decision 0021.
const fencedWrites = Effect.fnUntraced(function*(sql: SqlClient.SqlClient, batch: ReadonlyArray<Submission>) {
  const fenced = new Map<Submission, FencedOut>()
  const byCluster = new Map<string, Set<number>>()
  for (const s of batch) byCluster.set(s.cluster, (byCluster.get(s.cluster) ?? new Set()).add(s.shard))
  const epochs = new Map<string, number>()
  for (const [cluster, shards] of byCluster) {
    const sorted = [...shards].sort((a, b) => a - b)
    const rows = yield* sql<{ shard: number; epoch: number }>`
      SELECT shard, epoch FROM runtime_shard_fences
      WHERE cluster = ${cluster} AND shard IN ${sql.in(sorted)}
      ORDER BY shard FOR SHARE`
    for (const r of rows) epochs.set(`${cluster}/${r.shard}`, r.epoch)
  }
  const writes: Array<Write> = []
  for (const s of batch) {
    const current = epochs.get(`${s.cluster}/${s.shard}`)
    if (current !== s.epoch) {
      fenced.set(s, new FencedOut({ shard: s.shard, epoch: s.epoch, reason: `fence is at epoch ${current ?? "none"}` }))
    } else {
      writes.push(...s.writes)
    }
  }
  for (const group of mergeWrites(writes)) yield* runGroup(sql, group)
  return fenced
})

/**
 * Runs submissions in one transaction; returns, per submission, whether it was
 * committed (undefined) or left out as fenced.
 */
const commitTogether = (sql: SqlClient.SqlClient, batch: ReadonlyArray<Submission>) =>
  sql.withTransaction(fencedWrites(sql, batch))

export interface GroupCommitOptions {
  /** Most submissions merged into one transaction. */
  readonly maxGroup: number
  /** Transactions in flight at once (a second one overlaps the first's commit wait). */
  readonly committers: number
}

export const make = (options: GroupCommitOptions) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const queue = yield* Queue.unbounded<Submission>()

    const settle = (batch: ReadonlyArray<Submission>, fenced: ReadonlyMap<Submission, FencedOut>) =>
      Effect.forEach(batch, (s) => {
        const f = fenced.get(s)
        return Deferred.done(s.done, f === undefined ? Exit.void : Exit.fail(f))
      }, { discard: true })

    const metrics = Option.getOrUndefined(yield* Effect.serviceOption(RuntimeMetrics))
    const timed = <A, E>(path: "one_trip" | "long", effect: Effect.Effect<A, E>) =>
      metrics === undefined ? effect : Effect.suspend(() => {
        const started = performance.now()
        return Effect.ensuring(effect, Effect.sync(() => metrics.groupCommitSeconds.observe({ path }, (performance.now() - started) / 1000)))
      })

    /** One round trip when it can (`oneTripText`); the long way when a fence moved. */
    const commitBatch = (batch: ReadonlyArray<Submission>) =>
      Effect.suspend(() => {
        metrics?.groupCommitSize.observe(batch.length)
        const text = oneTripText(batch)
        const long = timed("long", commitTogether(sql, batch))
        if (text === undefined) return long
        return timed("one_trip", sql.unsafe(text)).pipe(
          Effect.as(new Map<Submission, FencedOut>()),
          Effect.catchIf((error) => sqlStateOf(error) === fenceMoved, () => long)
        )
      })

    const loop = Effect.gen(function*() {
      const batch = [...(yield* Queue.takeBetween(queue, 1, options.maxGroup))]
      const together = yield* commitBatch(batch).pipe(Effect.exit)
      if (Exit.isSuccess(together)) return yield* settle(batch, together.value)
      if (batch.length === 1) return yield* Deferred.done(batch[0]!.done, Exit.failCause(together.cause) as Exit.Exit<void, SqlError | FencedOut>)
      // One of them broke the merged transaction: commit each alone, so only it fails.
      yield* Effect.forEach(batch, (s) =>
        commitTogether(sql, [s]).pipe(
          Effect.exit,
          Effect.flatMap((alone) =>
            Exit.isSuccess(alone)
              ? settle([s], alone.value)
              : Deferred.done(s.done, Exit.failCause(alone.cause) as Exit.Exit<void, SqlError | FencedOut>)
          )
        ), { concurrency: 4, discard: true })
    }).pipe(Effect.forever)

    for (let i = 0; i < options.committers; i++) yield* Effect.forkScoped(loop)

    return {
      commit: (cluster, shard, epoch, writes) =>
        writes.every((w) => w.rows.length === 0)
          ? Effect.void
          : Effect.flatMap(Deferred.make<void, SqlError | FencedOut>(), (done) =>
            Effect.zipRight(Queue.offer(queue, { cluster, shard, epoch, writes, done }), Deferred.await(done)))
    } satisfies GroupCommitShape
  })

export const layer = (options: GroupCommitOptions = { maxGroup: 512, committers: 2 }) => Layer.scoped(GroupCommit, make(options))
