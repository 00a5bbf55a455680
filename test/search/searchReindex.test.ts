// `chorus search reindex`: the progress bar (pure), and the real command run against a
// fresh database, as an operator would run it.
import { SqlClient } from "@effect/sql"
import { Effect, ManagedRuntime, Redacted } from "effect"
import { spawn } from "node:child_process"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { progressLine } from "../../src/cli/searchReindex.ts"
import * as Database from "../../src/store/Database.ts"
import { REPO_ROOT } from "../support/processes.ts"
import { freshDatabase, type FreshDatabase } from "../support/services.ts"
import { insertChannel, insertMessages, tsOf } from "../store/conversationsSeed.ts"

describe("progress bar", () => {
  it("shows the fraction, counts, rate and time left", () => {
    expect(progressLine(250_000, 1_000_000, 10_000, 20)).toBe("[#####...............]  25%  250,000/1,000,000  25,000/s  ETA 30s")
    expect(progressLine(0, 1_000, 0, 10)).toBe("[..........]   0%  0/1,000  0/s  ETA --")
    expect(progressLine(1_000, 1_000, 500, 10)).toBe("[##########] 100%  1,000/1,000  2,000/s  ETA 0s")
  })

  it("copes with more done than counted (messages posted during the rebuild) and with nothing to do", () => {
    expect(progressLine(1_200, 1_000, 1_000, 10)).toBe("[##########] 100%  1,200/1,200  1,200/s  ETA 0s")
    expect(progressLine(0, 0, 10, 10)).toBe("[##########] 100%  0/0  0/s  ETA --")
  })

  it("shows long waits in minutes and hours", () => {
    expect(progressLine(1, 1_000, 1_000, 4)).toMatch(/ETA 16m39s$/)
    expect(progressLine(1, 100_000, 1_000, 4)).toMatch(/ETA 27h46m$/)
  })
})

describe("chorus search reindex", () => {
  let db: FreshDatabase
  let runtime: ManagedRuntime.ManagedRuntime<SqlClient.SqlClient, unknown>

  beforeAll(async () => {
    db = await freshDatabase({ prefix: "search_reindex" })
    runtime = ManagedRuntime.make(Database.layer({ url: Redacted.make(db.url), maxConnections: 2, applicationName: "chorus reindex test" }))
    await runtime.runPromise(Database.migrate)
    await runtime.runPromise(Effect.gen(function*() {
      yield* insertChannel({ id: "CREINDEX01", team_id: "TREINDEX01", creator: "UANN000001" })
      yield* insertMessages(Array.from({ length: 25 }, (_, i) => ({
        channel_id: "CREINDEX01",
        team_id: "TREINDEX01",
        ts: tsOf(i),
        user_id: "UANN000001",
        text: `numbat sighting ${i}`
      })))
    }))
  })
  afterAll(async () => {
    await runtime?.dispose()
    await db?.drop()
  })

  it("rebuilds the index from messages, with a progress bar on stderr and a summary on stdout", async () => {
    const { code, stderr, stdout } = await new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
      const child = spawn(process.execPath, ["--import", "tsx", "src/cli/main.ts", "search", "reindex", "--batch", "10", "--fresh"], {
        cwd: REPO_ROOT,
        env: { ...process.env, DATABASE_URL: db.url, TYPESENSE_URL: "" },
        stdio: ["ignore", "pipe", "pipe"]
      })
      let out = ""
      let err = ""
      child.stdout.on("data", (d) => (out += String(d)))
      child.stderr.on("data", (d) => (err += String(d)))
      child.on("exit", (c) => resolve({ code: c, stdout: out, stderr: err }))
    })
    expect(code, stderr).toBe(0)
    expect(stdout).toMatch(/reindexed 25 messages into postgres in [\d.]+ s/)
    expect(stderr).toMatch(/\[#+\] 100%  25\/25/)
    const rows = await runtime.runPromise(Effect.flatMap(SqlClient.SqlClient, (sql) =>
      sql<{ n: number }>`SELECT count(*)::int AS n FROM search_documents WHERE tsv @@ plainto_tsquery('english', 'numbat')`))
    expect(rows[0]!.n).toBe(25)
  })
})
