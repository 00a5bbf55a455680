/**
 * The search service on Typesense (`typesense` client), used when `TYPESENSE_URL` is
 * set. One collection per cluster (`<cluster>_messages` unless configured), created on
 * start when missing; documents are keyed `<channel>-<ts>`.
 *
 * The request is built by pure functions (`searchParams`, `filterBy`, `queryText`),
 * tested without a server: words must all match (no typo tolerance, no dropped words,
 * as PostgreSQL does), a phrase is quoted, an excluded word is `-word`, and the filter
 * always holds the workspace and the caller's conversations (invariant 5), each value
 * quoted in backticks.
 *
 * Typesense has no conditional write, so the version guard of Search.ts is a read of
 * the stored versions before each batch: exact for one indexer; with competing
 * indexers a race between two deliveries of the same message within milliseconds could
 * leave the older one, which the next event of that message or a reindex repairs
 * (PostgreSQL, the default, guards in the statement itself).
 */
import { SqlClient } from "@effect/sql"
import { Effect, Layer, Redacted } from "effect"
import { Client, Errors } from "typesense"
import type { IndexOp, ReindexCursor, SearchDocument, SearchHit, SearchRequest, SearchShape } from "./Search.ts"
import { coalesce, documentId, hasLink, highlightEnd, highlightStart, indexedSubtypes, Search, SearchError } from "./Search.ts"
import type { Term } from "./SearchQuery.ts"

export interface TypesenseOptions {
  readonly url: string
  readonly apiKey: Redacted.Redacted
  readonly collection: string
}

/** A document as stored in Typesense. */
export interface TypesenseDocument {
  readonly id: string
  readonly team_id: string
  readonly channel_id: string
  readonly ts: string
  /** `ts` in microseconds, for sorting and ranges. */
  readonly ts_num: number
  readonly user_id?: string
  readonly thread_ts?: string
  readonly text: string
  readonly has_link: boolean
  /** Present (true) once the message is in a thread; absent otherwise, so that a partial write never clears it. */
  readonly in_thread?: boolean
  readonly deleted: boolean
  readonly version: number
}

export const collectionSchema = (name: string) => ({
  name,
  fields: [
    { name: "team_id", type: "string" as const },
    { name: "channel_id", type: "string" as const },
    { name: "ts", type: "string" as const, index: false, optional: true },
    { name: "ts_num", type: "int64" as const },
    { name: "user_id", type: "string" as const, optional: true },
    { name: "thread_ts", type: "string" as const, index: false, optional: true },
    { name: "text", type: "string" as const, stem: true },
    { name: "has_link", type: "bool" as const },
    { name: "in_thread", type: "bool" as const, optional: true },
    { name: "deleted", type: "bool" as const },
    { name: "version", type: "int64" as const }
  ],
  default_sorting_field: "ts_num"
})

/** Microseconds of a ts (`"1700000000.000123"` → 1700000000000123). */
export const tsMicros = (ts: string): number => {
  const [seconds = "0", micros = "0"] = ts.split(".")
  return Number(seconds) * 1_000_000 + Number(micros.padEnd(6, "0").slice(0, 6))
}

export const toTypesense = (doc: SearchDocument, deleted: boolean, inThread = false): TypesenseDocument => ({
  id: documentId(doc.channelId, doc.ts),
  team_id: doc.teamId,
  channel_id: doc.channelId,
  ts: doc.ts,
  ts_num: tsMicros(doc.ts),
  ...(doc.userId === null ? {} : { user_id: doc.userId }),
  ...(doc.threadTs === null ? {} : { thread_ts: doc.threadTs }),
  text: deleted ? "" : doc.text,
  has_link: !deleted && hasLink(doc.text),
  ...(inThread || doc.threadTs !== null ? { in_thread: true } : {}),
  deleted,
  version: doc.version
})

/** A filter value, quoted (backticks) so that no input can change the filter's meaning. */
export const quote = (value: string): string => `\`${value.replace(/`/g, "")}\``

const list = (values: ReadonlyArray<string>) => `[${values.map(quote).join(",")}]`

/** Typesense's `filter_by` of a request: always the workspace and the conversations. */
export const filterBy = (r: SearchRequest): string => {
  const parts = [`team_id:=${quote(r.teamId)}`, `channel_id:=${list(r.channels)}`, "deleted:=false"]
  if (r.users !== undefined) parts.push(`user_id:=${list(r.users)}`)
  if (r.range.from !== undefined) parts.push(`ts_num:>=${r.range.from * 1_000_000}`)
  if (r.range.to !== undefined) parts.push(`ts_num:<${r.range.to * 1_000_000}`)
  if (r.hasLink) parts.push("has_link:=true")
  if (r.isThread) parts.push("in_thread:=true")
  return parts.join(" && ")
}

/** Letters, digits and inner punctuation of a word; quotes and operators are dropped. */
const clean = (text: string) => text.replace(/["`*]/g, " ").replace(/\s+/g, " ").trim().replace(/^-+/, "")

/**
 * Typesense's `q`: words, then `"phrases"`, then `-excluded` ones, then the prefix word
 * (Typesense treats only the last word as a prefix); `*` when nothing is to match, in
 * which case Typesense cannot exclude words (PostgreSQL can: a known difference).
 */
export const queryText = (terms: ReadonlyArray<Term>): { readonly q: string; readonly prefix: boolean } => {
  const words: Array<string> = []
  const excluded: Array<string> = []
  let prefixWord: string | undefined
  for (const term of terms) {
    const text = clean(term.text)
    if (text.length === 0) continue
    const piece = term._tag === "Phrase" ? `"${text}"` : text
    if (term.negated) excluded.push(`-${piece}`)
    else if (term._tag === "Word" && term.prefix && prefixWord === undefined) prefixWord = text
    else words.push(piece)
  }
  const positive = [...words, ...(prefixWord === undefined ? [] : [prefixWord])]
  if (positive.length === 0) return { q: "*", prefix: false }
  return { q: [...words, ...excluded, ...(prefixWord === undefined ? [] : [prefixWord])].join(" "), prefix: prefixWord !== undefined }
}

export const searchParams = (collection: string, r: SearchRequest) => {
  const { prefix, q } = queryText(r.terms)
  const dir = r.sortDir === "asc" ? "asc" : "desc"
  const byScore = r.sort === "score" && q !== "*"
  return {
    collection,
    q,
    query_by: "text",
    filter_by: filterBy(r),
    sort_by: byScore ? `_text_match:${dir},ts_num:${dir}` : `ts_num:${dir}`,
    prefix,
    num_typos: 0,
    typo_tokens_threshold: 0,
    drop_tokens_threshold: 0,
    offset: r.offset,
    limit: r.limit,
    include_fields: "channel_id,ts,user_id,thread_ts,in_thread,text",
    ...(r.highlight && q !== "*"
      ? { highlight_fields: "text", highlight_full_fields: "text", highlight_start_tag: highlightStart, highlight_end_tag: highlightEnd }
      : { highlight_fields: "none" })
  }
}

interface Hit {
  readonly document: Partial<TypesenseDocument>
  readonly text_match?: number
  readonly highlight?: { readonly text?: { readonly value?: string } }
}

interface Result {
  readonly found?: number
  readonly hits?: ReadonlyArray<Hit>
  readonly error?: string
  readonly code?: number
}

export const make = (options: TypesenseOptions): Effect.Effect<SearchShape, SearchError, SqlClient.SqlClient> =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const client = new Client({
      nodes: [{ url: options.url }],
      apiKey: Redacted.value(options.apiKey),
      connectionTimeoutSeconds: 5,
      timeoutSeconds: 10,
      numRetries: 2,
      logLevel: "warn"
    })
    const call = <A>(operation: string, f: () => Promise<A>) =>
      Effect.tryPromise({ try: f, catch: (cause) => new SearchError({ operation, cause }) })
    const documents = () => client.collections<TypesenseDocument>(options.collection).documents()

    // The collection, created on first start (concurrent starts: the loser finds it made).
    yield* call("collection", async () => {
      try {
        await client.collections(options.collection).retrieve()
      } catch (error) {
        if (!(error instanceof Errors.ObjectNotFound)) throw error
        await client.collections().create(collectionSchema(options.collection)).catch((e: unknown) => {
          if (!(e instanceof Errors.ObjectAlreadyExists)) throw e
        })
      }
    })

    /** Stored versions of `ids` (absent ids are new). */
    const versions = (ids: ReadonlyArray<string>) =>
      call("versions", async () => {
        const found = new Map<string, number>()
        for (let i = 0; i < ids.length; i += 250) {
          const slice = ids.slice(i, i + 250)
          const answer = (await client.multiSearch.perform({
            searches: [{
              collection: options.collection,
              q: "*",
              filter_by: `id:${list(slice)}`,
              include_fields: "id,version",
              per_page: 250
            }]
          })) as unknown as { readonly results: ReadonlyArray<Result> }
          const result = answer.results[0]
          if (result?.error !== undefined) throw new Error(result.error)
          for (const hit of result?.hits ?? []) {
            if (typeof hit.document.id === "string" && typeof hit.document.version === "number") found.set(hit.document.id, hit.document.version)
          }
        }
        return found
      })

    const write = (docs: ReadonlyArray<TypesenseDocument>) =>
      docs.length === 0 ? Effect.void : call("import", async () => {
        const results = await documents().import([...docs], { action: "emplace", throwOnFail: false })
        const failed = results.filter((r) => !r.success)
        if (failed.length > 0) throw new Error(`${failed.length} documents refused: ${failed[0]?.error ?? "?"}`)
      })

    const apply: SearchShape["apply"] = (ops: ReadonlyArray<IndexOp>) =>
      Effect.gen(function*() {
        const { threads, writes } = coalesce(ops)
        if (writes.length > 0) {
          const stored = yield* versions(writes.map((w) => documentId(w.doc.channelId, w.doc.ts)))
          const threaded = new Set(threads.map((t) => documentId(t.channelId, t.ts)))
          yield* write(writes
            .filter((w) => (stored.get(documentId(w.doc.channelId, w.doc.ts)) ?? -1) < w.doc.version)
            .map((w) => toTypesense(w.doc, w.deleted, threaded.has(documentId(w.doc.channelId, w.doc.ts)))))
        }
        if (threads.length > 0) {
          yield* call("threads", () =>
            documents().update({ in_thread: true } as unknown as TypesenseDocument, {
              filter_by: `id:${list(threads.map((t) => documentId(t.channelId, t.ts)))}`
            }))
        }
      })

    const search: SearchShape["search"] = (r: SearchRequest) =>
      Effect.gen(function*() {
        if (r.channels.length === 0 || r.limit <= 0 || (r.users !== undefined && r.users.length === 0)) return { total: 0, hits: [] }
        const answer = yield* call("query", () =>
          client.multiSearch.perform({ searches: [searchParams(options.collection, r)] }) as unknown as Promise<{ readonly results: ReadonlyArray<Result> }>)
        const result = answer.results[0]
        if (result === undefined || result.error !== undefined) {
          return yield* new SearchError({ operation: "query", cause: result?.error ?? "no result" })
        }
        const hits: Array<SearchHit> = (result.hits ?? []).map((hit) => {
          const d = hit.document
          const ts = d.ts ?? ""
          return {
            channelId: d.channel_id ?? "",
            ts,
            userId: d.user_id ?? null,
            threadTs: d.in_thread === true ? (d.thread_ts ?? ts) : null,
            text: r.highlight ? (hit.highlight?.text?.value ?? d.text ?? "") : (d.text ?? ""),
            score: hit.text_match ?? 0
          }
        })
        return { total: result.found ?? hits.length, hits }
      })

    const reindex: SearchShape["reindex"] = (after: ReindexCursor | undefined, limit: number) =>
      Effect.gen(function*() {
        const cursor = after === undefined ? sql.literal("true") : sql`(m.channel_id, m.ts) > (${after.channelId}, ${after.ts})`
        const rows = yield* sql<{
          channel_id: string
          ts: string
          team_id: string
          user_id: string | null
          thread_ts: string | null
          text: string
          deleted: boolean
          subtype: string | null
          last_seq: number
        }>`
          SELECT m.channel_id, m.ts, m.team_id, m.user_id, m.thread_ts, m.text, m.deleted, m.subtype, c.last_seq
          FROM messages m JOIN channels c ON c.id = m.channel_id
          WHERE ${cursor}
          ORDER BY m.channel_id, m.ts
          LIMIT ${limit}`.pipe(Effect.mapError((cause) => new SearchError({ operation: "reindex read", cause })))
        const ops: Array<IndexOp> = rows
          .filter((row) => row.subtype === null || indexedSubtypes.has(row.subtype))
          .map((row) => {
            const doc: SearchDocument = {
              teamId: row.team_id,
              channelId: row.channel_id,
              ts: row.ts,
              userId: row.user_id,
              text: row.text,
              threadTs: row.thread_ts,
              version: Number(row.last_seq)
            }
            return row.deleted
              ? { _tag: "Remove", teamId: doc.teamId, channelId: doc.channelId, ts: doc.ts, version: doc.version }
              : { _tag: "Upsert", doc }
          })
        yield* apply(ops)
        const last = rows[rows.length - 1]
        return { next: last === undefined ? undefined : { channelId: last.channel_id, ts: last.ts }, scanned: rows.length }
      })

    const clear: SearchShape["clear"] = call("clear", () => documents().delete({ filter_by: "ts_num:>=0" })).pipe(Effect.asVoid)

    return { backend: "typesense", apply, search, reindex, clear } satisfies SearchShape
  })

export const layer = (options: TypesenseOptions): Layer.Layer<Search, SearchError, SqlClient.SqlClient> =>
  Layer.effect(Search, make(options))
