// `npm start`: a local Chorus cluster, from a fresh machine in one step.
//
// 1. npm install when node_modules is missing or stale;
// 2. PostgreSQL and NATS (JetStream): use the configured ones, or provision them
//    (see scripts/provision.mjs);
// 3. CHORUS_NODES node processes (default 3) on consecutive ports from PORT (default
//    3000), NODE_ID=node-1..N, each line of their output prefixed with the node id,
//    one "node-N ready …" line when its /healthz answers, restarted with backoff when
//    one exits unexpectedly;
// 4. Ctrl-C / SIGTERM: SIGTERM the nodes, wait (then SIGKILL), stop what was provisioned.
//
// Environment (all optional): DATABASE_URL, NATS_URL, CHORUS_CLUSTER, CHORUS_OPERATOR_TOKEN,
// CHORUS_NODES, PORT, HOST, CHORUS_NODE_ENTRY (default: dist/main.mjs, built from src/
// at each start by scripts/build.mjs; a .ts entry such as src/main.ts runs through tsx),
// CHORUS_STOP_TIMEOUT_MS (default 20000), CHORUS_MAX_RESTARTS (default 10),
// CHORUS_READY_TIMEOUT_MS (warn after; default 120000). Everything else is passed to nodes.

import { spawn } from "node:child_process"
import fs from "node:fs"
import path from "node:path"
import readline from "node:readline"
import {
  ROOT,
  ensureDependencies,
  isPortFree,
  operatorToken,
  provisionServices,
  rel,
  say,
  sleep,
  stopProvisioned,
  stopProvisionedSync
} from "./provision.mjs"

const intEnv = (name, dflt) => {
  const v = process.env[name]
  if (v === undefined || v === "") return dflt
  const n = Number(v)
  if (!Number.isInteger(n) || n < 0) {
    console.error(`chorus: ${name} must be a non-negative integer, got "${v}"`)
    process.exit(2)
  }
  return n
}

const NODES = intEnv("CHORUS_NODES", 3)
const BASE_PORT = intEnv("PORT", 3000)
const HOST = process.env.HOST || "127.0.0.1"
const PROBE_HOST = HOST === "0.0.0.0" || HOST === "::" ? "127.0.0.1" : HOST
const ENTRY = process.env.CHORUS_NODE_ENTRY || "dist/main.mjs"
const STOP_TIMEOUT_MS = intEnv("CHORUS_STOP_TIMEOUT_MS", 20_000)
const MAX_RESTARTS = intEnv("CHORUS_MAX_RESTARTS", 10)
const READY_WARN_MS = intEnv("CHORUS_READY_TIMEOUT_MS", 120_000)
const STABLE_MS = 60_000 // a node up this long has its crash counter reset

/** @type {Map<string, NodeProc>} */
const nodes = new Map()
let shuttingDown = false
let exitCode = 0
/** @type {Promise<unknown>} */
let provisioning = Promise.resolve()

const fmtHost = (h) => (h.includes(":") ? `[${h}]` : h)

class NodeProc {
  /** @param {string} id @param {number} port @param {Record<string, string>} env */
  constructor(id, port, env) {
    this.id = id
    this.port = port
    this.env = env
    this.url = `http://${fmtHost(HOST)}:${port}`
    this.wsUrl = `ws://${fmtHost(HOST)}:${port}`
    /** @type {import("node:child_process").ChildProcess | undefined} */
    this.child = undefined
    this.starts = 0
    this.crashes = 0
    this.everReady = false
    this.gaveUp = false
    /** @type {NodeJS.Timeout | undefined} */
    this.restartTimer = undefined
    /** @type {Promise<void>} */
    this.exited = Promise.resolve()
  }

  start() {
    this.starts += 1
    const startedAt = Date.now()
    // A larger young generation: half the scavenges under load (decision 0019).
    const loader = /\.[cm]?ts$/.test(ENTRY) ? ["--import", "tsx"] : []
    const child = spawn(process.execPath, ["--max-semi-space-size=64", ...loader, ENTRY], {
      cwd: ROOT,
      env: this.env,
      stdio: ["ignore", "pipe", "pipe"],
      detached: true // own process group: a terminal Ctrl-C reaches only this script
    })
    this.child = child
    const prefix = (stream, out) =>
      readline.createInterface({ input: stream, crlfDelay: Infinity }).on("line", (line) => out.write(`${this.id} | ${line}\n`))
    if (child.stdout) prefix(child.stdout, process.stdout)
    if (child.stderr) prefix(child.stderr, process.stderr)

    let ready = false
    let alive = true
    this.exited = new Promise((resolve) => {
      child.on("error", (err) => {
        console.error(`${this.id} could not start: ${err.message}`)
      })
      child.on("close", (code, signal) => {
        alive = false
        resolve()
        this.onExit(code, signal, ready ? Date.now() - startedAt : 0)
      })
    })

    const poll = async () => {
      let warned = false
      while (alive && !shuttingDown) {
        if (await healthy(`http://${fmtHost(PROBE_HOST)}:${this.port}/healthz`)) {
          if (!alive) return
          ready = true
          if (!this.everReady) console.log(`${this.id} ready ${this.url} (${this.wsUrl})`)
          else console.log(`${this.id} back up ${this.url} (restart ${this.starts - 1})`)
          this.everReady = true
          onNodeReady()
          return
        }
        if (!warned && Date.now() - startedAt > READY_WARN_MS) {
          warned = true
          console.log(`${this.id} has not answered ${this.url}/healthz after ${READY_WARN_MS / 1000}s; still waiting`)
        }
        await sleep(200)
      }
    }
    void poll()
  }

  onExit(code, signal, upMs) {
    this.child = undefined
    if (shuttingDown) return
    const how = signal ? `signal ${signal}` : `code ${code}`
    if (upMs >= STABLE_MS) this.crashes = 0
    this.crashes += 1
    if (this.crashes > MAX_RESTARTS) {
      this.gaveUp = true
      console.log(`${this.id} exited unexpectedly (${how}); it crashed ${this.crashes} times in a row, not restarting it`)
      if ([...nodes.values()].every((n) => n.gaveUp)) {
        console.log("chorus: every node has given up")
        void shutdown("all nodes failed", 1)
      }
      return
    }
    const delay = Math.min(500 * 2 ** (this.crashes - 1), 30_000)
    console.log(`${this.id} exited unexpectedly (${how}); restarting in ${(delay / 1000).toFixed(1)}s (attempt ${this.crashes}/${MAX_RESTARTS})`)
    this.restartTimer = setTimeout(() => {
      this.restartTimer = undefined
      if (!shuttingDown) this.start()
    }, delay)
  }

  signal(sig) {
    const pid = this.child?.pid
    if (!pid) return
    try {
      process.kill(-pid, sig) // the node's whole process group
    } catch {
      try {
        process.kill(pid, sig)
      } catch {}
    }
  }
}

async function healthy(url) {
  try {
    const res = await fetch(url, { signal: AbortSignal.timeout(1000) })
    await res.arrayBuffer().catch(() => {})
    return res.status === 200
  } catch {
    return false
  }
}

let announcedAll = false
function onNodeReady() {
  if (announcedAll) return
  if ([...nodes.values()].every((n) => n.everReady)) {
    announcedAll = true
    console.log(`chorus: all ${nodes.size} nodes ready (Ctrl-C to stop)`)
  }
}

async function shutdown(reason, code = 0) {
  if (shuttingDown) return
  shuttingDown = true
  exitCode = code
  console.log(`chorus: shutting down (${reason})`)
  const running = [...nodes.values()]
  for (const n of running) {
    if (n.restartTimer) clearTimeout(n.restartTimer)
  }
  const live = running.filter((n) => n.child)
  for (const n of live) {
    n.signal("SIGCONT") // a paused node cannot handle SIGTERM
    n.signal("SIGTERM")
  }
  if (live.length > 0) {
    const all = Promise.all(live.map((n) => n.exited))
    const timedOut = await Promise.race([all.then(() => false), sleep(STOP_TIMEOUT_MS).then(() => true)])
    if (timedOut) {
      for (const n of live.filter((x) => x.child)) {
        console.log(`${n.id} did not exit within ${STOP_TIMEOUT_MS / 1000}s of SIGTERM; SIGKILL`)
        n.signal("SIGKILL")
      }
      await Promise.race([all, sleep(3000)])
    }
    console.log(`chorus: ${live.length} node${live.length === 1 ? "" : "s"} stopped`)
  }
  // A server being started right now registers itself when it is up: wait for it.
  await Promise.race([provisioning.catch(() => {}), sleep(90_000)])
  await stopProvisioned()
  console.log("chorus: stopped")
  process.exit(exitCode)
}

let signals = 0
for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"]) {
  process.on(sig, () => {
    signals += 1
    if (signals > 1) {
      console.log(`chorus: ${sig} again; killing everything now`)
      for (const n of nodes.values()) n.signal("SIGKILL")
      stopProvisionedSync()
      process.exit(130)
    }
    void shutdown(sig, 0)
  })
}
process.on("exit", () => {
  for (const n of nodes.values()) n.signal("SIGKILL")
  stopProvisionedSync()
})
process.on("uncaughtException", (err) => {
  console.error("chorus: internal error:", err)
  void shutdown("internal error", 1)
})

async function main() {
  if (NODES < 1) throw new Error("CHORUS_NODES must be at least 1")
  ensureDependencies()
  if (shuttingDown) return
  if (!process.env.CHORUS_NODE_ENTRY) {
    // Imported here: esbuild is one of the dependencies just ensured.
    const { buildNode } = await import("./build.mjs")
    say(`built ${await buildNode()}`)
  }
  const entryPath = path.resolve(ROOT, ENTRY)
  if (!fs.existsSync(entryPath)) throw new Error(`node entry point ${rel(entryPath)} does not exist (CHORUS_NODE_ENTRY)`)

  const ports = Array.from({ length: NODES }, (_, i) => BASE_PORT + i)
  const busy = []
  for (const p of ports) if (!(await isPortFree(p, PROBE_HOST))) busy.push(p)
  if (busy.length > 0) {
    throw new Error(`port${busy.length > 1 ? "s" : ""} ${busy.join(", ")} already in use on ${HOST}; set PORT to another base port`)
  }

  const pending = provisionServices({ createDatabase: true })
  provisioning = pending
  const services = await pending
  if (shuttingDown) return

  const tok = operatorToken()
  if (tok.generated) say(`operator token: ${tok.token} (generated; saved in ${rel(tok.file)})`)
  else if (tok.file) say(`operator token: ${tok.token} (from ${rel(tok.file)})`)
  else say("operator token: from CHORUS_OPERATOR_TOKEN")

  const cluster = process.env.CHORUS_CLUSTER || "chorus"
  say(`starting ${NODES} node${NODES === 1 ? "" : "s"} (cluster "${cluster}", entry ${ENTRY}) on ports ${ports[0]}-${ports[ports.length - 1]}`)
  ports.forEach((port, i) => {
    const id = `node-${i + 1}`
    const env = {
      // A local cluster is for development: apps (bots) on this machine may be called.
      CHORUS_APPS_EGRESS: "any",
      ...process.env,
      NODE_ID: id,
      PORT: String(port),
      HOST,
      DATABASE_URL: services.databaseUrl,
      NATS_URL: services.natsUrl,
      CHORUS_CLUSTER: cluster,
      CHORUS_OPERATOR_TOKEN: tok.token
    }
    const node = new NodeProc(id, port, env)
    nodes.set(id, node)
  })
  for (const n of nodes.values()) n.start()
}

main().catch(async (err) => {
  console.error(`chorus: ${err instanceof Error ? err.message : String(err)}`)
  await shutdown("start failed", 1)
})
