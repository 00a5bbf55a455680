/**
 * `chorus search reindex`: rebuilds the search index of the configured backend
 * (PostgreSQL full-text, or Typesense when `TYPESENSE_URL` is set) from PostgreSQL's
 * `messages`, the record, in primary-key chunks, with a progress bar on stderr.
 *
 * Safe while nodes run and index live events: each chunk is written as of its
 * channels' `last_seq`, and the index keeps whichever version is newer (Search.ts).
 * `--fresh` empties the index first (searches miss messages until it finishes).
 * Reads DATABASE_URL, TYPESENSE_URL, … as a node does (ChorusConfig.ts).
 */
import { Command, Options } from "@effect/cli"
import { SqlClient } from "@effect/sql"
import { Console, Effect, Layer } from "effect"
import { ChorusConfig, layerFromEnv } from "../config/ChorusConfig.ts"
import type { ReindexCursor } from "../search/Search.ts"
import { Search } from "../search/Search.ts"
import * as SearchLive from "../search/SearchLive.ts"
import * as Database from "../store/Database.ts"

// ---- a tiny progress bar --------------------------------------------------------------

const formatCount = (n: number) => Math.round(n).toLocaleString("en-US")

const formatDuration = (seconds: number) => {
  if (!Number.isFinite(seconds)) return "--"
  const s = Math.max(0, Math.round(seconds))
  return s >= 3600 ? `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m` : s >= 60 ? `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s` : `${s}s`
}

/** One line of the bar: `[#####.....]  52%  520,000/1,000,000  41,250/s  ETA 12s`. Pure. */
export const progressLine = (done: number, total: number, elapsedMs: number, width = 30): string => {
  const fraction = total <= 0 ? 1 : Math.min(1, done / total)
  const filled = Math.round(fraction * width)
  const rate = elapsedMs > 0 ? (done * 1000) / elapsedMs : 0
  const eta = rate > 0 ? Math.max(0, total - done) / rate : Number.POSITIVE_INFINITY
  return `[${"#".repeat(filled)}${".".repeat(width - filled)}] ${String(Math.floor(fraction * 100)).padStart(3)}%  ` +
    `${formatCount(Math.min(done, Math.max(total, done)))}/${formatCount(Math.max(total, done))}  ${formatCount(rate)}/s  ETA ${formatDuration(eta)}`
}

export interface ProgressBar {
  readonly update: (done: number) => void
  readonly finish: (done: number) => void
}

/** Redraws in place on a terminal (at most every 100 ms); elsewhere, a line per 10 %. */
export const progressBar = (total: number, stream: NodeJS.WriteStream = process.stderr): ProgressBar => {
  const start = Date.now()
  let lastDraw = 0
  let lastDecile = -1
  const draw = (done: number, final: boolean) => {
    const line = progressLine(done, total, Date.now() - start)
    if (stream.isTTY === true) {
      stream.write(`\r${line}\u001b[K${final ? "\n" : ""}`)
      return
    }
    const decile = total <= 0 ? 10 : Math.floor((Math.min(done, total) / total) * 10)
    if (decile > lastDecile || (final && decile < 10)) stream.write(`${line}\n`)
    lastDecile = Math.max(lastDecile, decile)
  }
  return {
    update: (done) => {
      const now = Date.now()
      if (now - lastDraw < 100) return
      lastDraw = now
      draw(done, false)
    },
    finish: (done) => draw(done, true)
  }
}

// ---- the rebuild ----------------------------------------------------------------------

export interface ReindexReport {
  readonly backend: string
  readonly scanned: number
  readonly seconds: number
}

/** Rebuilds the index through `Search.reindex`, `batch` messages at a time. */
export const reindex = (options: { readonly batch: number; readonly fresh: boolean; readonly progress: boolean }) =>
  Effect.gen(function*() {
    const search = yield* Search
    const sql = yield* SqlClient.SqlClient
    const counted = yield* sql<{ total: number }>`SELECT count(*)::bigint AS total FROM messages`
    const total = Number(counted[0]?.total ?? 0)
    if (options.fresh) yield* search.clear
    const bar = options.progress ? progressBar(total) : undefined
    const start = Date.now()
    let cursor: ReindexCursor | undefined
    let scanned = 0
    for (;;) {
      const chunk = yield* search.reindex(cursor, options.batch)
      scanned += chunk.scanned
      bar?.update(scanned)
      if (chunk.next === undefined || chunk.scanned < options.batch) break
      cursor = chunk.next
    }
    bar?.finish(scanned)
    return { backend: search.backend, scanned, seconds: (Date.now() - start) / 1000 } satisfies ReindexReport
  })

/** A database pool and the configured backend, from the environment. */
const layer = Layer.unwrapEffect(
  Effect.map(ChorusConfig, (config) =>
    SearchLive.backend.pipe(
      Layer.provideMerge(Database.layer({ url: config.databaseUrl, maxConnections: 2, applicationName: "chorus search reindex" }))
    ))
).pipe(Layer.provideMerge(layerFromEnv))

const reindexCommand = Command.make("reindex", {
  batch: Options.integer("batch").pipe(
    Options.withDefault(10_000),
    Options.withDescription("Messages per chunk (one statement, or one import, each).")
  ),
  fresh: Options.boolean("fresh").pipe(Options.withDescription("Empty the index first."))
}, (options) =>
  Effect.gen(function*() {
    if (options.batch < 1) return yield* Effect.fail(new Error("--batch must be at least 1"))
    const report = yield* reindex({ batch: options.batch, fresh: options.fresh, progress: true })
    yield* Console.log(`reindexed ${formatCount(report.scanned)} messages into ${report.backend} in ${report.seconds.toFixed(1)} s`)
  }).pipe(Effect.provide(layer))).pipe(Command.withDescription("Rebuild the search index from PostgreSQL, with a progress bar."))

/** `chorus search …`; mount with `Command.withSubcommands([searchCommand])`. */
export const searchCommand = Command.make("search").pipe(
  Command.withDescription("Search index tools."),
  Command.withSubcommands([reindexCommand])
)
