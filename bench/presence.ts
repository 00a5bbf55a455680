/**
 * bench:presence — how many connected users a 2-node cluster keeps the presence of
 * current, how fast a presence change reaches a subscriber, and what it costs.
 *
 * USERS users, each with one WebSocket, spread over the two nodes (the sockets are
 * held by worker processes: one process may not open 20,000 sockets here), pinging
 * every 30 s as clients do. Observer sockets (in this process) subscribe to every user
 * (`presence_sub`, 500 ids each) and count who is reported active: `connected_users`.
 * Then, while everyone stays connected, sampled users change presence at RATE changes
 * per second for SECONDS — their socket closes (→ away), opens again (→ active), or they
 * call users.setPresence away/auto — and each change is timed from the moment it was
 * made to the observer's `presence_change`: p50/p99. Server CPU is that of the two node
 * processes over the change phase (% of one core) less what the same two nodes cost
 * with nobody connected (heartbeats, leases, shard consumers), per 10,000 connected
 * users; NATS and PostgreSQL are shared with other work on this machine and reported
 * apart.
 *
 * Usage: npm run bench:presence [-- --users 20000 --rate 20 --seconds 30]
 * Prints a table, then one JSON line.
 */
import { fork } from "node:child_process"
import type { ChildProcess } from "node:child_process"
import { randomBytes } from "node:crypto"
import { fileURLToPath } from "node:url"
import { parseArgs } from "node:util"
import pg from "pg"
import WebSocket from "ws"
import * as Tokens from "../src/auth/Tokens.ts"
import * as Ids from "../src/domain/Ids.ts"
import { cpuSecondsOf, cpuSince, cpuSnapshot, pidsOf } from "./processCpu.ts"
import { percentile, printTable } from "./report.ts"

const { values } = parseArgs({
  options: {
    users: { type: "string", default: "20000" },
    rate: { type: "string", default: "20" },
    seconds: { type: "string", default: "30" },
    worker: { type: "boolean", default: false },
    "per-worker": { type: "string", default: "9000" }
  }
})

const now = () => performance.timeOrigin + performance.now()
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

interface Member {
  readonly id: string
  readonly token: string
  readonly node: number
}

type ToWorker =
  | { readonly cmd: "connect"; readonly urls: ReadonlyArray<string>; readonly members: ReadonlyArray<Member> }
  | { readonly cmd: "close"; readonly index: number }
  | { readonly cmd: "open"; readonly index: number }
  | { readonly cmd: "stop" }

type FromWorker =
  | { readonly event: "connected"; readonly ok: number; readonly failed: number; readonly ms: number }
  | { readonly event: "changed"; readonly user: string; readonly presence: "active" | "away"; readonly at: number }

const rtmConnect = async (url: string, token: string): Promise<string> => {
  const res = await fetch(`${url}/api/rtm.connect`, { method: "POST", headers: { authorization: `Bearer ${token}`, "content-type": "application/json" }, body: "{}" })
  const body = (await res.json()) as { ok: boolean; url?: string; error?: string }
  if (!body.ok || body.url === undefined) throw new Error(`rtm.connect: ${body.error}`)
  return body.url
}

/** Opens a socket and resolves at `hello`; `onFrame` gets every later frame. */
const openSocket = async (url: string, token: string, onFrame?: (text: string) => void): Promise<WebSocket> => {
  const ws = new WebSocket(await rtmConnect(url, token))
  await new Promise<void>((resolve, reject) => {
    ws.once("error", reject)
    ws.once("close", () => reject(new Error("closed before hello")))
    ws.on("message", (data) => {
      const text = String(data)
      if (text === '{"type":"hello"}') return resolve()
      onFrame?.(text)
    })
  })
  ws.on("error", () => undefined)
  return ws
}

// ---- worker: holds a slice of the sockets ----------------------------------------------

const runWorker = () => {
  let urls: ReadonlyArray<string> = []
  let members: ReadonlyArray<Member> = []
  const sockets: Array<WebSocket | undefined> = []
  const send = (message: FromWorker) => process.send?.(message)
  // Pings every 30 s, spread over the period.
  const pinger = setInterval(() => {
    const slot = Math.floor(Date.now() / 1000) % 30
    for (let i = slot; i < sockets.length; i += 30) {
      const ws = sockets[i]
      if (ws?.readyState === WebSocket.OPEN) ws.send('{"type":"ping"}')
    }
  }, 1_000)
  process.on("message", (message: ToWorker) => {
    switch (message.cmd) {
      case "connect": {
        urls = message.urls
        members = message.members
        const started = Date.now()
        let ok = 0
        let failed = 0
        let next = 0
        const lane = async () => {
          while (next < members.length) {
            const i = next++
            const m = members[i]!
            for (let attempt = 0; attempt < 5; attempt++) {
              try {
                sockets[i] = await openSocket(urls[m.node]!, m.token)
                ok++
                break
              } catch {
                if (attempt === 4) failed++
                await sleep(200)
              }
            }
          }
        }
        void Promise.all(Array.from({ length: 64 }, lane)).then(() => send({ event: "connected", ok, failed, ms: Date.now() - started }))
        return
      }
      case "close": {
        const ws = sockets[message.index]
        if (ws === undefined) return
        sockets[message.index] = undefined
        const at = now()
        ws.close()
        send({ event: "changed", user: members[message.index]!.id, presence: "away", at })
        return
      }
      case "open": {
        const m = members[message.index]!
        const at = now()
        void openSocket(urls[m.node]!, m.token).then((ws) => {
          sockets[message.index] = ws
          send({ event: "changed", user: m.id, presence: "active", at })
        }, () => undefined)
        return
      }
      case "stop":
        clearInterval(pinger)
        for (const ws of sockets) ws?.terminate()
        process.exit(0)
    }
  })
}

// ---- main ------------------------------------------------------------------------------


const runMain = async () => {
  const USERS = Number(values.users)
  const RATE = Number(values.rate)
  const SECONDS = Number(values.seconds)
  const PER_WORKER = Number(values["per-worker"])
  const { startCluster } = await import("../test/support/cluster.ts")
  const { workspace } = await import("../test/support/chat.ts")
  const { waitConverged } = await import("../test/support/runtime.ts")

  const cluster = await startCluster({
    nodes: 2,
    env: { CHORUS_LOG_LEVEL: "WARN", CHORUS_RATE_LIMITS: "off", CHORUS_DB_POOL: "12" },
    readyTimeoutMs: 120_000
  })
  const workers: Array<ChildProcess> = []
  const observers: Array<WebSocket> = []
  try {
    const urls = cluster.nodes.map((n) => n.url)
    await waitConverged(urls[0]!, cluster.operatorToken, ["node-1", "node-2"], 60_000)
    const nodePids = cluster.nodes.map((n) => n.pid!).filter(Boolean)
    const nodeCpu = () => nodePids.reduce((sum, pid) => sum + cpuSecondsOf(pid), 0)
    // What the two nodes cost with nobody connected (heartbeats, leases, consumers).
    const emptyWindow = 10
    await sleep(3_000)
    const emptyBefore = nodeCpu()
    await sleep(emptyWindow * 1_000)
    const emptyCpuPct = ((nodeCpu() - emptyBefore) / emptyWindow) * 100
    const { team, users } = await workspace(urls[0]!, [])
    const owner = users["owner"]!

    // Users straight into the store: 20,000 signups would spend an hour in scrypt.
    const seedStarted = Date.now()
    const members: Array<Member> = []
    const db = new pg.Client({ connectionString: cluster.databaseUrl })
    await db.connect()
    for (let start = 0; start < USERS; start += 5_000) {
      const batch = Array.from({ length: Math.min(5_000, USERS - start) }, (_, k) => {
        const token = Tokens.generate("user")
        return { id: Ids.make("U"), token, n: start + k }
      })
      await db.query(
        `INSERT INTO accounts (id, email, name, handle, password_hash)
         SELECT id, 'p' || n || '-' || lower(id) || '@bench.test', 'Presence ' || n, 'p' || n, NULL
         FROM unnest($1::text[], $2::int[]) AS x(id, n)`,
        [batch.map((b) => b.id), batch.map((b) => b.n)]
      )
      await db.query(
        `INSERT INTO workspace_members (team_id, user_id, role) SELECT $1, unnest($2::text[]), 'member'`,
        [team.id, batch.map((b) => b.id)]
      )
      await db.query(
        `INSERT INTO tokens (id, hash, user_id, team_id, kind)
         SELECT id, decode(hash, 'hex'), user_id, $1, 'user' FROM unnest($2::text[], $3::text[], $4::text[]) AS x(id, hash, user_id)`,
        [team.id, batch.map((b) => b.token.id), batch.map((b) => b.token.hash.toString("hex")), batch.map((b) => b.id)]
      )
      for (const b of batch) members.push({ id: b.id, token: b.token.secret, node: b.n % 2 })
    }
    await db.end()
    console.log(`seeded ${USERS} users in ${Date.now() - seedStarted} ms`)

    // ---- workers connect the users' sockets -------------------------------------------
    const changes: Array<{ user: string; presence: "active" | "away"; at: number }> = []
    const slices: Array<ReadonlyArray<Member>> = []
    for (let i = 0; i < members.length; i += PER_WORKER) slices.push(members.slice(i, i + PER_WORKER))
    const connected = await Promise.all(slices.map((slice) =>
      new Promise<{ ok: number; failed: number; ms: number }>((resolve) => {
        const worker = fork(fileURLToPath(import.meta.url), ["--worker"], { execArgv: ["--import", "tsx"] })
        workers.push(worker)
        worker.on("message", (message: FromWorker) => {
          if (message.event === "connected") resolve(message)
          else changes.push(message)
        })
        worker.send({ cmd: "connect", urls, members: slice } satisfies ToWorker)
      })
    ))
    const open = connected.reduce((n, c) => n + c.ok, 0)
    const connectMs = Math.max(...connected.map((c) => c.ms))
    console.log(`${open} sockets open (${connected.reduce((n, c) => n + c.failed, 0)} failed) in ${connectMs} ms`)

    // ---- observers subscribe to everyone ---------------------------------------------
    await sleep(3_000)
    const told = new Map<string, "active" | "away">()
    const receipts: Array<{ user: string; presence: "active" | "away"; at: number }> = []
    let recording = false
    const onFrame = (text: string) => {
      if (!text.includes('"presence_change"')) return
      const at = now()
      const frame = JSON.parse(text) as { user?: string; users?: Array<string>; presence: "active" | "away" }
      for (const user of frame.users ?? (frame.user === undefined ? [] : [frame.user])) {
        told.set(user, frame.presence)
        if (recording) receipts.push({ user, presence: frame.presence, at })
      }
    }
    const subscribeStarted = Date.now()
    for (let i = 0; i < members.length; i += 500) {
      const ws = await openSocket(urls[observers.length % 2]!, owner.token, onFrame)
      observers.push(ws)
      const ids = members.slice(i, i + 500).map((m) => m.id)
      await new Promise<void>((resolve) => {
        const id = observers.length
        ws.on("message", (data) => {
          if (String(data).includes(`"reply_to":${id}`)) resolve()
        })
        ws.send(JSON.stringify({ id, type: "presence_sub", ids }))
      })
    }
    const activeUsers = [...told.values()].filter((p) => p === "active").length
    console.log(`observers: ${activeUsers} of ${members.length} users reported active (${Date.now() - subscribeStarted} ms to subscribe)`)
    const observerPinger = setInterval(() => {
      for (const ws of observers) if (ws.readyState === WebSocket.OPEN) ws.send('{"type":"ping"}')
    }, 20_000)

    // ---- steady state, then changes ----------------------------------------------------
    const sharedPids = () => [...pidsOf("nats-server"), ...pidsOf("postgres")]
    const idleWindow = 10
    const idleBefore = nodeCpu()
    await sleep(idleWindow * 1_000)
    const idleCpuPct = ((nodeCpu() - idleBefore) / idleWindow) * 100

    recording = true
    const sample = Math.min(members.length, Math.max(10, RATE * 4))
    const state = new Map<number, "open" | "closed">()
    const manual: Array<{ user: string; presence: "active" | "away"; at: number }> = []
    const manualAway = new Set<number>()
    const cpuBefore = nodeCpu()
    const sharedBefore = cpuSnapshot(sharedPids())
    const started = Date.now()
    let made = 0
    while (Date.now() - started < SECONDS * 1_000) {
      const due = Math.floor(((Date.now() - started) / 1000) * RATE)
      for (; made < due; made++) {
        const k = (made * 7919) % sample // a user changes again only after `sample / RATE` seconds
        const index = Math.floor((k * members.length) / sample)
        const member = members[index]!
        const worker = workers[Math.floor(index / PER_WORKER)]!
        const indexInSlice = index % PER_WORKER
        const setPresence = (presence: "away" | "auto") => {
          manual.push({ user: member.id, presence: presence === "away" ? "away" : "active", at: now() })
          void fetch(`${urls[index % 2]}/api/users.setPresence`, {
            method: "POST",
            headers: { authorization: `Bearer ${member.token}`, "content-type": "application/json" },
            body: JSON.stringify({ presence })
          })
        }
        // Manual away and back, over HTTP, while connected; else the socket closes or opens.
        if (manualAway.delete(index)) {
          setPresence("auto")
          continue
        }
        if (made % 5 === 4 && state.get(index) !== "closed") {
          manualAway.add(index)
          setPresence("away")
          continue
        }
        if (state.get(index) === "closed") {
          state.set(index, "open")
          worker.send({ cmd: "open", index: indexInSlice } satisfies ToWorker)
        } else {
          state.set(index, "closed")
          worker.send({ cmd: "close", index: indexInSlice } satisfies ToWorker)
        }
      }
      await sleep(5)
    }
    const elapsed = (Date.now() - started) / 1000
    const cpuPct = ((nodeCpu() - cpuBefore) / elapsed) * 100
    const sharedPct = (cpuSince(sharedBefore, sharedPids()) / elapsed) * 100
    await sleep(3_000)
    recording = false
    clearInterval(observerPinger)

    // A change's latency: from when it was made to the first matching presence_change after it.
    const byUser = new Map<string, Array<{ presence: string; at: number }>>()
    for (const r of receipts) {
      const list = byUser.get(r.user) ?? []
      list.push(r)
      byUser.set(r.user, list)
    }
    const latencies: Array<number> = []
    let lost = 0
    const made_ = [...changes, ...manual].sort((a, b) => a.at - b.at)
    const used = new Set<object>()
    for (const change of made_) {
      const hit = (byUser.get(change.user) ?? []).find((r) => r.presence === change.presence && r.at >= change.at - 1 && !used.has(r))
      if (hit === undefined) {
        lost++
        continue
      }
      used.add(hit)
      latencies.push(hit.at - change.at)
    }
    const p50 = percentile(latencies, 50)
    const p99 = percentile(latencies, 99)
    // The users' share: node CPU during the changes, less what the empty cluster costs.
    const perTenK = Math.max(0, cpuPct - emptyCpuPct) / (Math.max(1, activeUsers) / 10_000)

    printTable("bench:presence (2 nodes)", ["metric", "value"], [
      ["users (sockets) opened", open],
      ["time to open them, ms", connectMs],
      ["reported active to observers (connected_users)", activeUsers],
      ["presence changes made", made_.length],
      ["changes seen by the observer", latencies.length],
      ["changes not seen", lost],
      ["change latency p50, ms", p50],
      ["change latency p99, ms", p99],
      ["node CPU, nobody connected, % of a core", emptyCpuPct],
      ["node CPU, users connected, no changes, %", idleCpuPct],
      [`node CPU, users connected, ${RATE} changes/s, %`, cpuPct],
      ["node CPU per 10k users (less the empty cluster), %", perTenK],
      ["NATS + PostgreSQL CPU (shared machine), %", sharedPct]
    ])
    console.log(JSON.stringify({
      bench: "presence",
      connected_users: activeUsers,
      presence_p50_ms: Number(p50.toFixed(1)),
      presence_p99_ms: Number(p99.toFixed(1)),
      server_cpu_pct_per_10k_users: Number(perTenK.toFixed(2)),
      sockets: open,
      changes: made_.length,
      changes_lost: lost,
      change_rate_per_s: RATE,
      node_cpu_pct: Number(cpuPct.toFixed(1)),
      node_cpu_idle_pct: Number(idleCpuPct.toFixed(1)),
      node_cpu_empty_pct: Number(emptyCpuPct.toFixed(1)),
      nats_pg_cpu_pct: Number(sharedPct.toFixed(1)),
      run: randomBytes(3).toString("hex")
    }))
  } finally {
    for (const ws of observers) ws.terminate()
    for (const w of workers) {
      w.send({ cmd: "stop" } satisfies ToWorker)
    }
    await sleep(500)
    for (const w of workers) if (w.exitCode === null) w.kill("SIGKILL")
    await cluster.stopAll()
  }
}

if (values.worker) runWorker()
else await runMain()
