/**
 * bench:ingest-floor — the floor under bench:chat's ingest on this machine: the same
 * load (CHANNELS channels, one sender socket each, an open loop at rising rates, latency
 * from each message's due time, pass = p99 ack < 100 ms and no error) against the
 * leanest node the design allows (bench/ingestFloorServer.mjs: one plain-JavaScript
 * process, `ws` + group commit of Chorus's rows to PostgreSQL + the event through
 * JetStream back to the member's socket, and optionally the search index). Whatever
 * rate this misses, no Chorus node on this machine can meet: it is what is left of a
 * node once everything but the required I/O is taken away.
 *
 * CPU per acknowledged message is reported by side (the floor node, nats-server,
 * PostgreSQL, the generator), from /proc. The issue's budget: with the generator on a
 * core of its own, 10,000 msg/s leaves one core, 100 µs per message, for the rest.
 *
 * `--echo`: the node only parses each frame and acks it (nothing stored or published):
 * what the WebSocket side alone costs, the floor under the floor.
 *
 * Usage: npm run bench:ingest-floor [-- --channels 200 --rates 2500,5000,7500,10000,12500 --step 5 --no-index --echo]
 * Prints a table, then one JSON line.
 */
import { jetstreamManager, RetentionPolicy, StorageType, DiscardPolicy } from "@nats-io/jetstream"
import { connect } from "@nats-io/transport-node"
import { spawn } from "node:child_process"
import { randomUUID } from "node:crypto"
import { createServer } from "node:net"
import { performance } from "node:perf_hooks"
import { fileURLToPath } from "node:url"
import { parseArgs } from "node:util"
import pg from "pg"
import WebSocket from "ws"
import { freshDatabase, natsUrl } from "../test/support/services.ts"
import { cpuSince, cpuSnapshot, pidsOf, wakesSince, wakesSnapshot } from "./processCpu.ts"
import { percentile, printTable } from "./report.ts"

const { values } = parseArgs({
  options: {
    channels: { type: "string", default: "200" },
    rates: { type: "string", default: "2500,5000,7500,10000,12500" },
    step: { type: "string", default: "5" },
    "no-index": { type: "boolean", default: false },
    echo: { type: "boolean", default: false }
  }
})
const CHANNELS = Number(values.channels)
const RATES = values.rates!.split(",").map(Number)
const STEP = Number(values.step)
const INDEX = values["no-index"] !== true
const ECHO = values.echo === true

const freePort = () =>
  new Promise<number>((resolve, reject) => {
    const server = createServer()
    server.once("error", reject)
    server.listen(0, "127.0.0.1", () => {
      const address = server.address()
      server.close(() => (typeof address === "object" && address !== null ? resolve(address.port) : reject(new Error("no port"))))
    })
  })

const id = randomUUID().slice(0, 8)
const prefix = `ifloor${id}`
const stream = `IFLOOR_${id.toUpperCase()}`
const database = await freshDatabase({ prefix: "ingest_floor" })
const nc = await connect({ servers: natsUrl() })
const jsm = await jetstreamManager(nc)
let server: ReturnType<typeof spawn> | undefined
try {
  const db = new pg.Client({ connectionString: database.url })
  await db.connect()
  // Chorus's tables for a message, with their keys and indexes (src/store/migrations:
  // 0004, 0006, 0009); `channels` keeps only what the commit touches.
  await db.query(`
    CREATE TABLE channels (id text PRIMARY KEY, last_seq bigint NOT NULL DEFAULT 0);
    CREATE TABLE messages (
      channel_id text NOT NULL, ts text NOT NULL, seq bigint NOT NULL, team_id text NOT NULL, user_id text, bot_id text,
      subtype text, text text NOT NULL DEFAULT '', blocks jsonb, attachments jsonb, files jsonb, thread_ts text,
      reply_broadcast boolean NOT NULL DEFAULT false, reply_count integer NOT NULL DEFAULT 0, reply_users text[] NOT NULL DEFAULT '{}',
      latest_reply text, client_msg_id text, edited_ts text, edited_by text, deleted boolean NOT NULL DEFAULT false, extra jsonb,
      PRIMARY KEY (channel_id, ts));
    CREATE UNIQUE INDEX messages_client_msg_id ON messages (channel_id, client_msg_id) WHERE client_msg_id IS NOT NULL;
    CREATE INDEX messages_thread ON messages (channel_id, thread_ts, ts) WHERE thread_ts IS NOT NULL;
    CREATE INDEX messages_timeline ON messages (channel_id, ts) WHERE (thread_ts IS NULL OR thread_ts = ts OR reply_broadcast);
    CREATE TABLE channel_events (channel_id text NOT NULL, seq bigint NOT NULL, type text NOT NULL, event jsonb NOT NULL, created_at bigint NOT NULL, PRIMARY KEY (channel_id, seq));
    CREATE TABLE search_documents (
      channel_id text NOT NULL, ts text NOT NULL, team_id text NOT NULL, user_id text, thread_ts text, text text NOT NULL DEFAULT '',
      has_link boolean NOT NULL DEFAULT false, in_thread boolean NOT NULL DEFAULT false, deleted boolean NOT NULL DEFAULT false, version bigint NOT NULL,
      tsv tsvector GENERATED ALWAYS AS (to_tsvector('english'::regconfig, text)) STORED, PRIMARY KEY (channel_id, ts));
    CREATE INDEX search_documents_tsv ON search_documents USING GIN (tsv);
    CREATE INDEX search_documents_team_ts ON search_documents (team_id, ts) WHERE NOT deleted;
    CREATE INDEX search_documents_user ON search_documents (user_id, ts) WHERE NOT deleted;
  `)
  const channelIds = Array.from({ length: CHANNELS }, (_, i) => `C${String(i).padStart(6, "0")}`)
  await db.query(`INSERT INTO channels (id) SELECT unnest($1::text[])`, [channelIds])
  await jsm.streams.add({
    name: stream,
    subjects: [`${prefix}.evt.ch.>`],
    retention: RetentionPolicy.Limits,
    storage: StorageType.File,
    discard: DiscardPolicy.Old,
    max_age: 24 * 3600 * 1_000_000_000,
    max_bytes: 1024 * 1024 * 1024,
    num_replicas: 1
  })

  const port = await freePort()
  const child = spawn(process.execPath, [fileURLToPath(new URL("./ingestFloorServer.mjs", import.meta.url))], {
    env: { ...process.env, PORT: String(port), DATABASE_URL: database.url, NATS_URL: natsUrl(), PREFIX: prefix, STREAM: stream, INDEX: INDEX ? "1" : "0", ECHO: ECHO ? "1" : "0" },
    stdio: ["ignore", "pipe", "inherit"]
  })
  server = child
  await new Promise<void>((resolve, reject) => {
    child.once("exit", (code) => reject(new Error(`floor server exited (${code})`)))
    child.stdout!.on("data", (chunk: Buffer) => {
      if (chunk.toString().includes("ready")) resolve()
    })
  })

  const sockets = await Promise.all(channelIds.map((channel, i) => new Promise<{ channel: string; ws: WebSocket; replies: Map<number, (ok: boolean) => void> }>((resolve, reject) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/?user=U${i}`)
    const replies = new Map<number, (ok: boolean) => void>()
    ws.on("message", (data) => {
      const text = data.toString()
      const m = /"reply_to":(\d+)/.exec(text)
      if (m === null) return
      const reply = replies.get(Number(m[1]))
      replies.delete(Number(m[1]))
      reply?.(text.startsWith('{"ok":true'))
    })
    ws.once("open", () => resolve({ channel, ws, replies }))
    ws.once("error", reject)
  })))

  let frameId = 0
  let seq = 0
  const post = (ci: number) => {
    const s = sockets[ci]!
    const frame = frameId++
    const clientMsgId = `ingest-${ci}-${seq++}`
    return new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => {
        s.replies.delete(frame)
        resolve(false)
      }, 30_000)
      s.replies.set(frame, (ok) => {
        clearTimeout(timer)
        resolve(ok)
      })
      s.ws.send(JSON.stringify({ id: frame, type: "message", channel: s.channel, text: `ingest ${clientMsgId}`, client_msg_id: clientMsgId }))
    })
  }

  const serverPids = () => (child.pid === undefined ? [] : [child.pid])
  const mark = () => ({
    server: cpuSnapshot(serverPids()),
    nats: cpuSnapshot(pidsOf("nats-server")),
    pg: cpuSnapshot(pidsOf("postgres")),
    generator: process.cpuUsage(),
    wakes: { server: wakesSnapshot(serverPids()), nats: wakesSnapshot(pidsOf("nats-server")), pg: wakesSnapshot(pidsOf("postgres")) }
  })
  const perMessage = (before: ReturnType<typeof mark>, messages: number) => {
    const per = (seconds: number) => (seconds * 1e6) / Math.max(1, messages)
    const generator = process.cpuUsage(before.generator)
    return {
      server: per(cpuSince(before.server, serverPids())),
      nats: per(cpuSince(before.nats, pidsOf("nats-server"))),
      pg: per(cpuSince(before.pg, pidsOf("postgres"))),
      generator: per((generator.user + generator.system) / 1e6),
      wakes: (wakesSince(before.wakes.server, serverPids()) + wakesSince(before.wakes.nats, pidsOf("nats-server")) + wakesSince(before.wakes.pg, pidsOf("postgres"))) / Math.max(1, messages)
    }
  }

  // The same open loop as bench:chat (b): message k due at k/rate, round robin over the channels.
  const step = async (rate: number) => {
    const total = Math.round(rate * STEP)
    const latencies: Array<number> = []
    let errors = 0
    let outstanding = 0
    let drained: (() => void) | undefined
    const before = mark()
    const start = performance.now()
    let sent = 0
    while (sent < total) {
      const due = Math.min(total, Math.floor(((performance.now() - start) / 1000) * rate) + 1)
      for (; sent < due; sent++) {
        const dueAt = start + (sent / rate) * 1000
        outstanding++
        void post(sent % sockets.length).then((ok) => {
          if (ok) latencies.push(performance.now() - dueAt)
          else errors++
          if (--outstanding === 0) drained?.()
        })
      }
      await new Promise((resolve) => setTimeout(resolve, 1))
    }
    if (outstanding > 0) await new Promise<void>((resolve) => (drained = resolve))
    const elapsed = (performance.now() - start) / 1000
    return { rate, achieved: latencies.length / elapsed, p50: percentile(latencies, 50), p99: percentile(latencies, 99), errors, cpu: perMessage(before, latencies.length) }
  }

  // Warm-up: every channel once, then a short step.
  await Promise.all(sockets.map((_, ci) => post(ci)))
  await step(1_000)
  const results: Array<Awaited<ReturnType<typeof step>> & { pass: boolean }> = []
  for (const rate of RATES) {
    const result = await step(rate)
    const pass = result.errors === 0 && result.p99 < 100
    results.push({ ...result, pass })
    console.log(`${rate} msg/s: ${result.achieved.toFixed(0)}/s acknowledged, p50 ${result.p50.toFixed(1)} ms, p99 ${result.p99.toFixed(1)} ms, ${result.errors} errors`)
  }
  const stored = Number((await db.query<{ n: string }>("SELECT count(*) AS n FROM messages")).rows[0]!.n)
  const indexed = Number((await db.query<{ n: string }>("SELECT count(*) AS n FROM search_documents")).rows[0]!.n)
  await db.end()
  for (const s of sockets) s.ws.close()

  printTable(
    `bench:ingest-floor — the leanest node (bench/ingestFloorServer.mjs), ${CHANNELS} channels, ${STEP} s per step, ${ECHO ? "echo only (nothing stored or published)" : `search index ${INDEX ? "on" : "off"}`}; CPU µs per acknowledged message`,
    ["rate", "acked/s", "p50 ms", "p99 ms", "errors", "node", "NATS", "PG", "server total", "generator", "server wake-ups/msg", "pass"],
    results.map((r) => [r.rate, r.achieved, r.p50, r.p99, r.errors, Math.round(r.cpu.server), Math.round(r.cpu.nats), Math.round(r.cpu.pg), Math.round(r.cpu.server + r.cpu.nats + r.cpu.pg), Math.round(r.cpu.generator), r.cpu.wakes, r.pass])
  )
  console.log(`stored ${stored} messages, indexed ${indexed}`)
  const best = [...results].reverse().find((r) => r.pass)
  const top = results[results.length - 1]!
  const round = (n: number | undefined) => (n === undefined || Number.isNaN(n) ? null : Math.round(n * 10) / 10)
  console.log(JSON.stringify({
    floor_ingest_msgs_per_s: round(best?.achieved ?? 0),
    floor_ingest_p99_ms: round(best?.p99),
    floor_top_rate: top.rate,
    floor_top_acked_per_s: round(top.achieved),
    floor_top_p99_ms: round(top.p99),
    floor_server_cpu_us_per_msg: round(top.cpu.server + top.cpu.nats + top.cpu.pg),
    floor_node_cpu_us_per_msg: round(top.cpu.server),
    floor_nats_cpu_us_per_msg: round(top.cpu.nats),
    floor_pg_cpu_us_per_msg: round(top.cpu.pg),
    floor_generator_cpu_us_per_msg: round(top.cpu.generator),
    search_index: INDEX,
    echo_only: ECHO,
    stored,
    indexed
  }))
} finally {
  server?.kill("SIGTERM")
  await jsm.streams.delete(stream).catch(() => false)
  await nc.close()
  await new Promise((resolve) => setTimeout(resolve, 200))
  await database.drop()
}
