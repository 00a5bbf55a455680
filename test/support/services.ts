// Isolation for tests that share the PostgreSQL and NATS that `npm test` provides:
// a fresh database per test file and a unique CHORUS_CLUSTER namespace.

import { randomBytes } from "node:crypto"
import pg from "pg"

export const DEFAULT_ADMIN_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/postgres"

/** The admin URL tests use (`npm test` exports DATABASE_URL pointing at database `postgres`). */
export function adminDatabaseUrl(): string {
  return process.env.DATABASE_URL ?? DEFAULT_ADMIN_DATABASE_URL
}

/** The NATS URL tests use (`npm test` exports NATS_URL, JetStream enabled). */
export function natsUrl(): string {
  return process.env.NATS_URL ?? "nats://127.0.0.1:4222"
}

/** `url` with its database replaced by `database`. */
export function databaseUrl(url: string, database: string): string {
  const u = new URL(url)
  u.pathname = `/${encodeURIComponent(database)}`
  return u.toString()
}

function randomSuffix(length: number): string {
  const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
  const bytes = randomBytes(length)
  let out = ""
  for (const b of bytes) out += alphabet[b % alphabet.length]
  return out
}

/**
 * A unique short namespace for CHORUS_CLUSTER, e.g. `tk3j9x2ab` (lower-case letters and
 * digits, starts with `t`, valid in NATS subjects, stream and bucket names).
 */
export function uniqueCluster(): string {
  return `t${Date.now().toString(36).slice(-3)}${randomSuffix(5)}`
}

export interface FreshDatabase {
  /** URL of the new database (same server and credentials as the admin URL). */
  readonly url: string
  readonly name: string
  /** Drop it (terminating any connections still open). Safe to call twice. */
  drop(): Promise<void>
}

async function withAdmin<A>(adminUrl: string, f: (client: pg.Client) => Promise<A>): Promise<A> {
  const client = new pg.Client({ connectionString: adminUrl, connectionTimeoutMillis: 10_000 })
  client.on("error", () => {
    // reported through the failing query instead
  })
  await client.connect()
  try {
    return await f(client)
  } finally {
    await client.end().catch(() => undefined)
  }
}

/**
 * Create a uniquely named database on the server of `process.env.DATABASE_URL`
 * (default postgres://postgres@127.0.0.1:5432/postgres).
 */
export async function freshDatabase(opts: { readonly adminUrl?: string; readonly prefix?: string } = {}): Promise<FreshDatabase> {
  const adminUrl = opts.adminUrl ?? adminDatabaseUrl()
  const prefix = (opts.prefix ?? "chorus_test").toLowerCase().replace(/[^a-z0-9_]/g, "_").slice(0, 30)
  const name = `${prefix}_${Date.now().toString(36)}_${randomSuffix(6)}`
  await withAdmin(adminUrl, (c) => c.query(`CREATE DATABASE "${name}"`))
  let dropped = false
  return {
    url: databaseUrl(adminUrl, name),
    name,
    async drop() {
      if (dropped) return
      await withAdmin(adminUrl, (c) => c.query(`DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`))
      dropped = true
    }
  }
}
