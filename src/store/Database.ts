/**
 * PostgreSQL: the connection pool layer and the migrations that run at start.
 */
import { Migrator } from "@effect/sql"
import { PgClient, PgMigrator } from "@effect/sql-pg"
import { NodeContext } from "@effect/platform-node"
import { Effect, Redacted, Schedule } from "effect"
import Pg from "pg"
import { migrations } from "./migrations/index.ts"

export interface DatabaseOptions {
  readonly url: Redacted.Redacted
  readonly maxConnections: number
  readonly applicationName: string
}

/**
 * Session settings for every pooled connection. A node frozen in mid-transaction
 * (SIGSTOP, a stalled event loop) must not hold row locks, above all the shard fence
 * rows, for longer than a failover: PostgreSQL aborts such sessions.
 */
const sessionOptions = "-c idle_in_transaction_session_timeout=2000"

const withSessionOptions = (url: Redacted.Redacted): Redacted.Redacted => {
  const parsed = new URL(Redacted.value(url))
  if (!parsed.searchParams.has("options")) parsed.searchParams.set("options", sessionOptions)
  return Redacted.make(parsed.toString())
}

export const layer = (options: DatabaseOptions) =>
  PgClient.layer({
    url: withSessionOptions(options.url),
    maxConnections: options.maxConnections,
    applicationName: options.applicationName,
    connectTimeout: "5 seconds",
    // BIGINT arrives as string from pg; our counters and seqs fit in a JS number.
    // BIGINT (oid 20) arrives as a string by default; seqs, epochs and counts stay far
    // below 2^53, so numbers are both safe and what every caller wants.
    types: {
      getTypeParser: ((oid: number, format?: "text" | "binary") =>
        oid === 20 && format !== "binary" ? (value: string) => Number(value) : Pg.types.getTypeParser(oid, format ?? "text")) as Pg.CustomTypesConfig["getTypeParser"]
    }
  })

/**
 * Runs pending migrations. Several nodes start at once: the migrator locks its table,
 * and the node that loses the race to create that table first retries and then finds
 * the work done.
 */
export const migrate = Effect.gen(function*() {
  const ran = yield* PgMigrator.run({ loader: Migrator.fromRecord(migrations) }).pipe(
    Effect.retry({ times: 5, schedule: Schedule.spaced("300 millis") })
  )
  if (ran.length > 0) yield* Effect.logInfo("migrations applied", { migrations: ran.map(([id, name]) => `${id}_${name}`) })
}).pipe(Effect.provide(NodeContext.layer), Effect.withLogSpan("migrate"))
