// The test helpers themselves: private NATS and PostgreSQL that survive restarts and
// pauses, fresh databases, and node processes (a stand-in entry, so these tests do not
// depend on src/main.ts).

import { jetstream, jetstreamManager, type JetStreamClient } from "@nats-io/jetstream"
import { connect } from "@nats-io/transport-node"
import fs from "node:fs"
import os from "node:os"
import path from "node:path"
import pg from "pg"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { startCluster } from "./cluster.ts"
import { postApi } from "./http.ts"
import { startNatsServer } from "./nats.ts"
import { startPostgresServer } from "./postgres.ts"
import { adminDatabaseUrl, freshDatabase, uniqueCluster } from "./services.ts"

async function query<R extends pg.QueryResultRow>(url: string, sql: string, params: unknown[] = [], timeoutMs = 10_000): Promise<R[]> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: timeoutMs, query_timeout: timeoutMs })
  client.on("error", () => undefined)
  await client.connect()
  try {
    return (await client.query<R>(sql, params)).rows
  } finally {
    await client.end().catch(() => undefined)
  }
}

describe("services", () => {
  it("uniqueCluster gives short, distinct, subject-safe names", () => {
    const names = new Set(Array.from({ length: 200 }, () => uniqueCluster()))
    expect(names.size).toBe(200)
    for (const n of names) expect(n).toMatch(/^t[a-z0-9]{5,11}$/)
  })

  it("freshDatabase creates a usable database and drops it", async () => {
    const db = await freshDatabase()
    expect(db.url).toContain(`/${db.name}`)
    await query(db.url, "create table t (x int)")
    await query(db.url, "insert into t values (42)")
    expect(await query<{ x: number }>(db.url, "select x from t")).toEqual([{ x: 42 }])
    const listed = async (): Promise<number> =>
      (await query(adminDatabaseUrl(), "select 1 from pg_database where datname = $1", [db.name])).length
    expect(await listed()).toBe(1)
    await db.drop()
    expect(await listed()).toBe(0)
    await db.drop() // idempotent
  })
})

/**
 * JetStream publish, retried: nats.js drops what is published while it is disconnected
 * (the request then times out), so a publish racing a reconnect must be retried.
 */
async function publishRetrying(js: JetStreamClient, subject: string, data: string, msgID: string): Promise<void> {
  const deadline = Date.now() + 15_000
  for (;;) {
    try {
      await js.publish(subject, data, { msgID, timeout: 1000 })
      return
    } catch (e) {
      if (Date.now() > deadline) throw e
    }
  }
}

describe("startNatsServer", () => {
  it("keeps JetStream data across kill/restart, pause/resume and stop/restart, on the same port", async () => {
    const nats = await startNatsServer()
    try {
      const port = nats.port
      const nc = await connect({ servers: nats.url, reconnectTimeWait: 100, maxReconnectAttempts: -1 })
      try {
        const stream = `S_${uniqueCluster()}`
        const jsm = await jetstreamManager(nc)
        await jsm.streams.add({ name: stream, subjects: [`${stream}.>`] })
        const js = jetstream(nc)
        await js.publish(`${stream}.a`, "one")

        await nats.kill("SIGKILL")
        expect(nats.running).toBe(false)
        await nats.restart()
        expect(nats.port).toBe(port)
        // The same client reconnects to the same port and finds the stream it stored.
        await publishRetrying(js, `${stream}.a`, "two", "m2")
        expect((await jsm.streams.info(stream)).state.messages).toBe(2)

        await nats.pause()
        const paused = await Promise.race([
          nc.request("$JS.API.INFO", "", { timeout: 500 }).then(() => "answered", () => "timed out"),
          new Promise<string>((r) => setTimeout(() => r("timed out"), 1500))
        ])
        expect(paused).toBe("timed out")
        nats.resume()
        await publishRetrying(js, `${stream}.a`, "three", "m3")

        await nats.stop()
        expect(nats.running).toBe(false)
        await nats.restart()
        await publishRetrying(js, `${stream}.a`, "four", "m4")
        expect((await jsm.streams.info(stream)).state.messages).toBe(4)
        expect(nats.logs()).toContain("Server is ready")
      } finally {
        await nc.close()
      }
    } finally {
      await nats.stop()
    }
  })
})

describe("startPostgresServer", () => {
  it("keeps committed data across stop/restart and a SIGKILL crash, and can be paused", async () => {
    const started = Date.now()
    const server = await startPostgresServer()
    const startupMs = Date.now() - started
    try {
      expect(startupMs).toBeLessThan(15_000)
      await query(server.url, "create table kept (v text)")
      await query(server.url, "insert into kept values ('before restart')")
      const port = server.port

      await server.stop()
      expect(server.running).toBe(false)
      await server.restart()
      expect(server.port).toBe(port)
      await query(server.url, "insert into kept values ('before crash')")

      await server.kill("SIGKILL")
      expect(server.running).toBe(false)
      await server.restart()
      const rows = await query<{ v: string }>(server.url, "select v from kept order by v")
      expect(rows.map((r) => r.v)).toEqual(["before crash", "before restart"])

      await server.pause()
      await expect(query(server.url, "select 1", [], 800)).rejects.toThrow()
      server.resume()
      expect(await query(server.url, "select 1 as one")).toEqual([{ one: 1 }])
    } finally {
      await server.stop()
    }
  })
})

describe("startCluster (stand-in node entry)", () => {
  let dir = ""
  let entry = ""
  let crashing = ""
  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), "chorus-standin-"))
    entry = path.join(dir, "standin.mjs")
    fs.writeFileSync(
      entry,
      `import http from "node:http"
const id = process.env.NODE_ID
const server = http.createServer((req, res) => {
  if (req.url === "/healthz") { res.writeHead(200); res.end(JSON.stringify({ ok: true, node: id, cluster: process.env.CHORUS_CLUSTER })); return }
  if (req.url === "/api/auth.test") {
    let body = ""
    req.on("data", (c) => (body += c))
    req.on("end", () => {
      res.writeHead(200, { "content-type": "application/json" })
      res.end(JSON.stringify({ ok: true, node: id, cluster: process.env.CHORUS_CLUSTER,
        databaseUrl: process.env.DATABASE_URL, token: process.env.CHORUS_OPERATOR_TOKEN,
        authorization: req.headers.authorization ?? null, args: JSON.parse(body || "{}") }))
    })
    return
  }
  res.writeHead(404); res.end()
})
server.listen(Number(process.env.PORT), process.env.HOST, () => console.log(id + " listening on " + process.env.PORT))
process.on("SIGTERM", () => { console.log(id + " draining"); server.close(() => process.exit(0)) })
`
    )
    crashing = path.join(dir, "crash.mjs")
    fs.writeFileSync(crashing, `console.error("boom: cannot start"); process.exit(3)\n`)
  })
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }))

  it("starts, kills, restarts and adds nodes, with logs per node", async () => {
    const cluster = await startCluster({ nodes: 2, env: {}, entry })
    try {
      expect(cluster.nodes.map((n) => n.id)).toEqual(["node-1", "node-2"])
      const [a, b] = cluster.nodes
      if (!a || !b) throw new Error("two nodes expected")
      expect(a.port).not.toBe(b.port)
      const res = await postApi(a.url, "auth.test", { hello: "world" }, "xoxb-1")
      expect(res).toMatchObject({
        ok: true,
        node: "node-1",
        cluster: cluster.name,
        databaseUrl: cluster.databaseUrl,
        token: cluster.operatorToken,
        authorization: "Bearer xoxb-1",
        args: { hello: "world" }
      })
      // No DATABASE_URL given: the cluster made its own database (dropped by stopAll).
      expect(cluster.databaseUrl).toContain(`/${cluster.name}_`)

      const oldPid = b.pid
      await b.kill("SIGKILL")
      expect(b.running).toBe(false)
      expect(b.exitSignal).toBe("SIGKILL")
      await b.restart()
      expect(b.running).toBe(true)
      expect(b.pid).not.toBe(oldPid)
      expect((await postApi(b.url, "auth.test")).node).toBe("node-2")

      await a.kill("SIGSTOP")
      await expect(fetch(`${a.url}/healthz`, { signal: AbortSignal.timeout(500) })).rejects.toThrow()
      await a.kill("SIGCONT")
      await a.waitReady(5_000)

      const c = await cluster.addNode()
      expect(c.id).toBe("node-3")
      expect(cluster.nodes).toHaveLength(3)
      expect(cluster.node("node-3").logs()).toContain("node-3 listening")
      expect(fs.existsSync(path.join(cluster.logDir, "node-2.log"))).toBe(true)
    } finally {
      await cluster.stopAll()
    }
    for (const n of cluster.nodes) {
      expect(n.running).toBe(false)
      expect(n.exitCode).toBe(0)
    }
    expect(cluster.node("node-1").logs()).toContain("node-1 draining")
    const dbName = decodeURIComponent(new URL(cluster.databaseUrl).pathname.slice(1))
    expect(await query(adminDatabaseUrl(), "select 1 from pg_database where datname = $1", [dbName])).toHaveLength(0)
  })

  it("reports the log tail when a node cannot start", async () => {
    const failure = startCluster({ nodes: 1, env: {}, entry: crashing, readyTimeoutMs: 10_000 })
    await expect(failure).rejects.toThrow(/node-1 .*exited \(code 3\)[\s\S]*boom: cannot start/)
  })
})
