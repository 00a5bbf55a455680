/**
 * The search service on PostgreSQL full-text search (the default): the
 * `search_documents` table of migrations/0009_search.ts, an English `tsvector` under a
 * GIN index, `ts_rank_cd` for `sort=score`, `ts_headline` for highlights.
 *
 * One condition selects the matches: the text (a `tsquery` built from the terms with
 * PostgreSQL's own parsers, so user input is never tsquery syntax), the caller's
 * conversations (`channel_id = ANY(…)`) and workspace, and the filters. The planner's
 * estimate of their number (an `EXPLAIN`, no execution) picks the plan:
 *
 * - most queries visit every match through the GIN index, once: sorted by
 *   `ts_rank_cd` or by time, counted exactly by a window count, in one statement;
 * - a broad query (over `broadMatches`, confirmed by a count capped at `countCap`)
 *   walks `(team_id, ts)` newest first and stops at its page, ranking only the newest
 *   `scoreWindow` matches; its total is the estimate.
 *
 * Highlights (`ts_headline`) are computed for the page only.
 *
 * Writes are one multi-row upsert per batch guarded by `version` (Search.ts), in one
 * transaction with the thread marks, rows in key order so that two indexers writing
 * the same rows wait for each other rather than deadlock (the indexer retries anyway).
 */
import { SqlClient } from "@effect/sql"
import type { Fragment } from "@effect/sql/Statement"
import { Effect, Layer } from "effect"
import type { IndexOp, ReindexCursor, SearchHit, SearchRequest, SearchShape } from "./Search.ts"
import { coalesce, highlightEnd, highlightStart, indexedSubtypes, Search, SearchError } from "./Search.ts"
import type { Term } from "./SearchQuery.ts"
import { tsAt } from "./SearchQuery.ts"

/** The text-search configuration of the `tsv` column (migration 0009). */
const textConfig = "english"

/** `ts_headline` options: the whole text, Slack's markers around each match. */
const headlineOptions = `HighlightAll=true, StartSel="${highlightStart}", StopSel="${highlightEnd}"`

/** The SQL of `has:link`; the same rule as `Search.hasLink`. */
const linkSql = "text ~* 'https?://'"

/** A prefix word as tsquery text: each run of letters and digits, as a prefix, all required. */
export const prefixQuery = (text: string): string | undefined => {
  const parts = text.toLowerCase().match(/[\p{L}\p{N}]+/gu)
  return parts === null ? undefined : parts.map((p) => `'${p}':*`).join(" & ")
}

/** The plan thresholds (below); tests lower them to exercise the broad plan on a few rows. */
export interface PlanLimits {
  readonly broadMatches: number
  readonly scoreWindow: number
  readonly countCap: number
}

/**
 * A query the planner expects to match more than this is broad: rather than visit
 * every match (a common word can match a quarter of the index), its page comes from
 * walking the newest matches. Around 1M documents per workspace the two costs meet
 * near √(scoreWindow × documents).
 */
export const broadMatches = 40_000

/**
 * Relevance (`sort=score`) of a broad query ranks its newest this-many matches (at
 * least every reachable result when paging deep); other queries rank every match.
 */
export const scoreWindow = 1_000

/** Totals of broad queries are exact up to here (every result reachable through pages: 100 × 100), estimated beyond. */
export const countCap = 10_000

/** The top node's row estimate of an `EXPLAIN (FORMAT JSON)` answer. */
export const estimatedRows = (plan: unknown): number => {
  const parsed = typeof plan === "string" ? JSON.parse(plan) as unknown : plan
  const top = Array.isArray(parsed) ? (parsed[0] as { Plan?: { "Plan Rows"?: unknown } } | undefined) : undefined
  const rows = top?.Plan?.["Plan Rows"]
  return typeof rows === "number" ? Math.round(rows) : 0
}

interface Row {
  readonly channel_id: string
  readonly ts: string
  readonly user_id: string | null
  readonly thread_ts: string | null
  readonly text: string
  readonly score: number
  readonly total: number
}

export const defaultLimits: PlanLimits = { broadMatches, scoreWindow, countCap }

export const make = (limits: PlanLimits = defaultLimits): Effect.Effect<SearchShape, never, SqlClient.SqlClient> => Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  const { broadMatches, countCap, scoreWindow } = limits
  const fail = (operation: string) => (cause: unknown) => new SearchError({ operation, cause })

  /** One term as a tsquery expression (its parameters bound, never spliced). */
  const tsquery = (term: Term): Fragment | undefined => {
    if (term._tag === "Phrase") return sql`phraseto_tsquery(${sql.literal(`'${textConfig}'`)}, ${term.text})`
    if (term.prefix) {
      const q = prefixQuery(term.text)
      return q === undefined ? undefined : sql`to_tsquery('simple', ${q})`
    }
    return sql`plainto_tsquery(${sql.literal(`'${textConfig}'`)}, ${term.text})`
  }

  const combine = (terms: ReadonlyArray<Term>, operator: "&&" | "||"): Fragment | undefined => {
    const parts = terms.map(tsquery).filter((f): f is Fragment => f !== undefined)
    return parts.length === 0 ? undefined : sql.join(` ${operator} `, true)(parts)
  }

  const search: SearchShape["search"] = (r: SearchRequest) =>
    Effect.gen(function*() {
      if (r.channels.length === 0 || r.limit <= 0 || (r.users !== undefined && r.users.length === 0)) return { total: 0, hits: [] }
      const positive = combine(r.terms.filter((t) => !t.negated), "&&")
      const negative = combine(r.terms.filter((t) => t.negated), "||")
      // `team_id` and `NOT deleted` as in the partial indexes' predicates.
      const where: Array<Fragment> = [
        sql`d.team_id = ${r.teamId}`,
        sql.literal("NOT d.deleted"),
        sql`d.channel_id = ANY(${[...r.channels]}::text[])`
      ]
      if (positive !== undefined) where.push(sql`d.tsv @@ ${positive}`)
      if (negative !== undefined) where.push(sql`NOT (d.tsv @@ ${negative})`)
      if (r.users !== undefined) where.push(sql`d.user_id = ANY(${[...r.users]}::text[])`)
      if (r.range.from !== undefined) where.push(sql`d.ts >= ${tsAt(r.range.from)}`)
      if (r.range.to !== undefined) where.push(sql`d.ts < ${tsAt(r.range.to)}`)
      if (r.hasLink) where.push(sql.literal("d.has_link"))
      if (r.isThread) where.push(sql.literal("d.in_thread"))
      const matching = sql.and(where)
      const dir = r.sortDir === "asc" ? "ASC" : "DESC"
      const byScore = positive !== undefined && r.sort === "score"
      const score = byScore ? sql`ts_rank_cd(d.tsv, ${positive})` : sql.literal("0::real")
      const orderOf = (t: string) => sql.literal(byScore ? `${t}.score ${dir}, ${t}.ts ${dir}` : `${t}.ts ${dir}`)
      const text = r.highlight && positive !== undefined
        ? sql`ts_headline(${sql.literal(`'${textConfig}'`)}, d.text, ${positive}, ${headlineOptions})`
        : sql.literal("d.text")
      /**
       * The page of `source` (keys and `score`): sorted, cut, then its rows read by key
       * and highlighted. A materialized source is planned on its own: for every match,
       * the cheapest way to find them all (the GIN index), not an index walk in the
       * page's order; and it holds keys only, so it stays in memory.
       */
      const pageOf = (source: Fragment, all: boolean) =>
        sql<Row>`
          WITH source AS ${sql.literal(all ? "MATERIALIZED" : "NOT MATERIALIZED")} (${source})
          SELECT d.channel_id, d.ts, d.user_id, CASE WHEN d.in_thread THEN COALESCE(d.thread_ts, d.ts) END AS thread_ts,
                 ${text} AS text, p.score, p.total
          FROM (
            SELECT s.*, ${all ? sql.literal("count(*) OVER ()") : sql.literal("0")} AS total
            FROM source s
            ORDER BY ${orderOf("s")}
            LIMIT ${r.limit} OFFSET ${r.offset}
          ) p
          JOIN search_documents d ON d.channel_id = p.channel_id AND d.ts = p.ts
          ORDER BY ${orderOf("p")}`
      /** Every match, sorted and counted: the GIN index's matches, one heap visit each. */
      const exhaustive = Effect.map(
        pageOf(sql`SELECT d.channel_id, d.ts, ${score} AS score FROM search_documents d WHERE ${matching}`, true),
        (rows) => ({ rows, total: rows[0]?.total ?? (r.offset > 0 ? undefined : 0) })
      )
      /** The newest matches only, walking `(team_id, ts)` and stopping early: for broad queries. */
      const recent = (window: number) =>
        pageOf(sql`
          SELECT d.channel_id, d.ts, ${score} AS score FROM (
            SELECT d.channel_id, d.ts, d.tsv FROM search_documents d WHERE ${matching} ORDER BY d.ts DESC LIMIT ${window}
          ) d`, false)
      const cappedCount = Effect.map(
        sql<{ n: number }>`SELECT count(*)::int AS n FROM (SELECT 1 FROM search_documents d WHERE ${matching} LIMIT ${countCap + 1}) s`,
        (rows) => Number(rows[0]?.n ?? 0)
      )

      const result = Effect.gen(function*() {
        // JIT compilation costs more than any of these statements saves by it.
        yield* sql`SET LOCAL jit = off`
        const plan = yield* sql<{ "QUERY PLAN": unknown }>`EXPLAIN (FORMAT JSON) SELECT 1 FROM search_documents d WHERE ${matching}`
        const estimate = estimatedRows(plan[0]?.["QUERY PLAN"])
        if (estimate <= broadMatches) {
          const all = yield* exhaustive
          // Past the last page the window count saw no row: count on its own.
          return { rows: all.rows, total: all.total ?? (yield* cappedCount) }
        }
        // Broad, if the estimate is right: a capped count settles it before the walk.
        const counted = yield* cappedCount
        if (counted <= countCap) {
          const all = yield* exhaustive
          return { rows: all.rows, total: counted }
        }
        const window = byScore ? Math.max(scoreWindow, r.offset + r.limit) : r.sortDir === "desc" ? r.offset + r.limit : undefined
        if (window === undefined) {
          // Oldest first over a broad match: the planner walks the index forwards.
          const rows = yield* pageOf(sql`SELECT d.channel_id, d.ts, 0::real AS score FROM search_documents d WHERE ${matching}`, false)
          return { rows, total: Math.max(estimate, counted) }
        }
        return { rows: yield* recent(window), total: Math.max(estimate, counted) }
      })
      const { rows, total } = yield* sql.withTransaction(result).pipe(Effect.mapError(fail("query")))
      const hits: Array<SearchHit> = rows.map((row) => ({
        channelId: row.channel_id,
        ts: row.ts,
        userId: row.user_id,
        threadTs: row.thread_ts,
        text: row.text,
        score: Number(row.score)
      }))
      return { total, hits }
    })

  const apply: SearchShape["apply"] = (ops: ReadonlyArray<IndexOp>) => {
    const { threads, writes } = coalesce(ops)
    if (writes.length === 0 && threads.length === 0) return Effect.void
    const rows = writes
      .map(({ deleted, doc }) => ({
        channel_id: doc.channelId,
        ts: doc.ts,
        team_id: doc.teamId,
        user_id: doc.userId,
        thread_ts: doc.threadTs,
        text: deleted ? "" : doc.text,
        deleted,
        version: doc.version
      }))
      .sort((a, b) => (a.channel_id < b.channel_id ? -1 : a.channel_id > b.channel_id ? 1 : a.ts < b.ts ? -1 : a.ts > b.ts ? 1 : 0))
    const marks = [...threads].sort((a, b) => (a.channelId < b.channelId ? -1 : a.channelId > b.channelId ? 1 : a.ts < b.ts ? -1 : 1))
    return sql.withTransaction(Effect.gen(function*() {
      if (rows.length > 0) {
        yield* sql`
          INSERT INTO search_documents AS d (channel_id, ts, team_id, user_id, thread_ts, text, has_link, in_thread, deleted, version)
          SELECT channel_id, ts, team_id, user_id, thread_ts, text, ${sql.literal(linkSql)}, thread_ts IS NOT NULL, deleted, version
          FROM jsonb_to_recordset(${JSON.stringify(rows)}::jsonb)
            AS r(channel_id text, ts text, team_id text, user_id text, thread_ts text, text text, deleted boolean, version bigint)
          ORDER BY channel_id, ts
          ON CONFLICT (channel_id, ts) DO UPDATE SET
            team_id = CASE WHEN EXCLUDED.team_id = '' THEN d.team_id ELSE EXCLUDED.team_id END,
            user_id = COALESCE(EXCLUDED.user_id, d.user_id),
            thread_ts = EXCLUDED.thread_ts,
            text = EXCLUDED.text,
            has_link = EXCLUDED.has_link,
            in_thread = EXCLUDED.in_thread OR d.in_thread,
            deleted = EXCLUDED.deleted,
            version = EXCLUDED.version
          WHERE d.version < EXCLUDED.version`
      }
      if (marks.length > 0) {
        yield* sql`
          UPDATE search_documents AS d SET in_thread = true
          FROM jsonb_to_recordset(${JSON.stringify(marks.map((m) => ({ channel_id: m.channelId, ts: m.ts })))}::jsonb)
            AS r(channel_id text, ts text)
          WHERE d.channel_id = r.channel_id AND d.ts = r.ts AND NOT d.in_thread`
      }
    })).pipe(Effect.mapError(fail("write")))
  }

  const reindex: SearchShape["reindex"] = (after: ReindexCursor | undefined, limit: number) => {
    const cursor = after === undefined ? sql.literal("true") : sql`(m.channel_id, m.ts) > (${after.channelId}, ${after.ts})`
    // One statement, so the messages and their channel's last_seq are one snapshot.
    return sql<{ channel_id: string; ts: string; scanned: number }>`
      WITH chunk AS (
        SELECT m.channel_id, m.ts, m.team_id, m.user_id, m.thread_ts, m.text, m.deleted, m.subtype, c.last_seq
        FROM messages m JOIN channels c ON c.id = m.channel_id
        WHERE ${cursor}
        ORDER BY m.channel_id, m.ts
        LIMIT ${limit}
      ), written AS (
        INSERT INTO search_documents AS d (channel_id, ts, team_id, user_id, thread_ts, text, has_link, in_thread, deleted, version)
        SELECT channel_id, ts, team_id, user_id, thread_ts, CASE WHEN deleted THEN '' ELSE text END,
               NOT deleted AND ${sql.literal(linkSql)}, thread_ts IS NOT NULL, deleted, last_seq
        FROM chunk
        WHERE subtype IS NULL OR subtype = ANY(${[...indexedSubtypes]}::text[])
        ORDER BY channel_id, ts
        ON CONFLICT (channel_id, ts) DO UPDATE SET
          team_id = EXCLUDED.team_id, user_id = EXCLUDED.user_id, thread_ts = EXCLUDED.thread_ts, text = EXCLUDED.text,
          has_link = EXCLUDED.has_link, in_thread = EXCLUDED.in_thread, deleted = EXCLUDED.deleted, version = EXCLUDED.version
        WHERE d.version <= EXCLUDED.version
        RETURNING 1
      )
      SELECT l.channel_id, l.ts, (SELECT count(*) FROM chunk)::int AS scanned, (SELECT count(*) FROM written)::int AS written
      FROM (SELECT channel_id, ts FROM chunk ORDER BY channel_id DESC, ts DESC LIMIT 1) l`.pipe(
      Effect.map((rows) => {
        const last = rows[0]
        return last === undefined
          ? { next: undefined, scanned: 0 }
          : { next: { channelId: last.channel_id, ts: last.ts }, scanned: last.scanned }
      }),
      Effect.mapError(fail("reindex"))
    )
  }

  const clear: SearchShape["clear"] = sql`TRUNCATE search_documents`.pipe(Effect.asVoid, Effect.mapError(fail("clear")))

  return { backend: "postgres", apply, search, reindex, clear } satisfies SearchShape
})

/** The PostgreSQL search service (its table comes from `Database.migrate`). */
export const layer: Layer.Layer<Search, never, SqlClient.SqlClient> = Layer.effect(Search, make())

/** With other plan thresholds (tests). */
export const layerWith = (limits: PlanLimits): Layer.Layer<Search, never, SqlClient.SqlClient> => Layer.effect(Search, make(limits))
