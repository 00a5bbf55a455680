// Real Chorus node processes for integration tests: `node dist/main.mjs` (the bundle
// `npm start` runs, built on first use in each process; decision 0023), each on its own
// port, its output in .chorus/logs/<cluster>/<node>.log.
//
//   const db = await freshDatabase()
//   const cluster = await startCluster({ nodes: 3, env: { DATABASE_URL: db.url } })
//   … cluster.nodes[0].url …
//   await cluster.stopAll(); await db.drop()

import { jetstreamManager } from "@nats-io/jetstream"
import { connect } from "@nats-io/transport-node"
import { spawn, type ChildProcess } from "node:child_process"
import { randomBytes } from "node:crypto"
import fs from "node:fs"
import path from "node:path"
import { exitOf, freePort, isPortFree, readTextFile, REPO_ROOT, signalGroup, sleep, STATE_DIR, stopGroup, tail, TERMINATING, track, untrack, waitExit } from "./processes.ts"
import { freshDatabase, natsUrl, uniqueCluster, type FreshDatabase } from "./services.ts"
import { buildNode } from "../../scripts/build.mjs"

export interface StartClusterOptions {
  /** How many nodes to start (node-1 … node-N). */
  readonly nodes: number
  /**
   * Environment for every node, on top of the inherited one (DATABASE_URL, NATS_URL, …).
   * Without DATABASE_URL the cluster gets a fresh database of its own, dropped by stopAll().
   */
  readonly env: Readonly<Record<string, string>>
  /** Consecutive ports from here; default: a free port per node. */
  readonly basePort?: number
  /** Entry module relative to the repo (default $CHORUS_NODE_ENTRY or the built dist/main.mjs). */
  readonly entry?: string
  /** How long waitReady() waits by default (default 60 s). */
  readonly readyTimeoutMs?: number
  /** Wait until every node answers /healthz before resolving (default true). */
  readonly waitReady?: boolean
}

export interface ChorusNode {
  /** node-1, node-2, … (its NODE_ID) */
  readonly id: string
  readonly port: number
  /** http://127.0.0.1:<port> */
  readonly url: string
  /** ws://127.0.0.1:<port> */
  readonly wsUrl: string
  /** Current pid (changes on restart; undefined while not running). */
  readonly pid: number | undefined
  readonly running: boolean
  /** Exit code / signal of the last exit, if it exited. */
  readonly exitCode: number | null
  readonly exitSignal: NodeJS.Signals | null
  readonly logFile: string
  /**
   * Send a signal (default SIGKILL) to the node's process group. Terminating signals
   * (SIGKILL, SIGTERM, SIGINT, …) resolve once it has exited (SIGTERM may take the
   * node's drain time); SIGSTOP once the node is really stopped; others at once.
   */
  kill(signal?: NodeJS.Signals): Promise<void>
  /** SIGTERM (after SIGCONT if paused) and wait for exit; SIGKILL after `timeoutMs` (default 20 s). */
  stop(timeoutMs?: number): Promise<void>
  /** Resolves when GET /healthz answers 200; rejects (with the log tail) if it exits first or times out. */
  waitReady(timeoutMs?: number): Promise<void>
  /** Stop (if running), start again on the same port, and wait until ready (unless told not to). */
  restart(opts?: { readonly env?: Readonly<Record<string, string>>; readonly waitReady?: boolean }): Promise<void>
  /** Everything the node printed, across restarts. */
  logs(): string
}

export interface ChorusCluster {
  /** The CHORUS_CLUSTER namespace of this cluster. */
  readonly name: string
  readonly operatorToken: string
  /** The DATABASE_URL the nodes use. */
  readonly databaseUrl: string
  readonly nodes: ReadonlyArray<ChorusNode>
  readonly logDir: string
  node(id: string): ChorusNode
  /** Start one more node (node-N+1) with the same environment (plus `env`) and wait until ready. */
  addNode(opts?: { readonly env?: Readonly<Record<string, string>>; readonly waitReady?: boolean }): Promise<ChorusNode>
  /**
   * Stop every node (SIGTERM in parallel, then SIGKILL stragglers), then drop the
   * database if startCluster created it.
   */
  stopAll(timeoutMs?: number): Promise<void>
}

const LOG_TAIL_LINES = 60

/** Deletes every stream and KV bucket of cluster namespace `cluster`. */
export async function deleteNatsFootprint(url: string, cluster: string): Promise<void> {
  const nc = await connect({ servers: url, timeout: 5_000 })
  try {
    const jsm = await jetstreamManager(nc)
    const upper = `${cluster.toUpperCase()}_`
    const kv = `KV_${cluster}-`
    for await (const info of jsm.streams.list()) {
      const stream = info.config.name
      if (stream.startsWith(upper) || stream.startsWith(kv)) await jsm.streams.delete(stream)
    }
  } finally {
    await nc.close()
  }
}

function inheritedEnv(): Record<string, string> {
  const env: Record<string, string> = {}
  for (const [k, v] of Object.entries(process.env)) {
    if (v === undefined) continue
    if (k.startsWith("VITEST") || k === "TINYPOOL_WORKER_ID") continue // the test runner's own
    env[k] = v
  }
  return env
}

class NodeProcess implements ChorusNode {
  readonly logFile: string
  private child: ChildProcess | undefined
  private paused = false
  private starts = 0
  private startOffset = 0
  private lastExit: { code: number | null; signal: NodeJS.Signals | null } = { code: null, signal: null }

  constructor(
    readonly id: string,
    private portNumber: number,
    private env: Record<string, string>,
    private readonly entry: string,
    logDir: string,
    private readonly readyTimeoutMs: number
  ) {
    this.logFile = path.join(logDir, `${id}.log`)
  }

  get port(): number {
    return this.portNumber
  }
  get url(): string {
    return `http://127.0.0.1:${this.portNumber}`
  }
  get wsUrl(): string {
    return `ws://127.0.0.1:${this.portNumber}`
  }
  get pid(): number | undefined {
    return this.running ? this.child?.pid : undefined
  }
  get running(): boolean {
    return this.child !== undefined && this.child.exitCode === null && this.child.signalCode === null
  }
  get exitCode(): number | null {
    return this.lastExit.code
  }
  get exitSignal(): NodeJS.Signals | null {
    return this.lastExit.signal
  }

  logs(): string {
    return readTextFile(this.logFile)
  }

  private logsSinceStart(): string {
    return this.logs().slice(this.startOffset)
  }

  /** Spawn the process (does not wait for readiness). */
  spawnProcess(): void {
    this.starts += 1
    fs.mkdirSync(path.dirname(this.logFile), { recursive: true })
    this.startOffset = fs.existsSync(this.logFile) ? fs.statSync(this.logFile).size : 0
    fs.appendFileSync(this.logFile, `===== ${this.id} start #${this.starts} on port ${this.port} at ${new Date().toISOString()} =====\n`)
    const fd = fs.openSync(this.logFile, "a")
    const env = { ...this.env, NODE_ID: this.id, PORT: String(this.port) }
    try {
      // CHORUS_NODE_FLAGS: extra Node flags for node processes (e.g. --cpu-prof, which NODE_OPTIONS refuses).
      const flags = (process.env.CHORUS_NODE_FLAGS ?? "").split(" ").filter((f) => f.length > 0)
      // As `npm start` runs nodes: a larger young generation (decision 0019).
      // A TypeScript entry (CHORUS_NODE_ENTRY=src/main.ts) runs through tsx.
      const loader = /\.[cm]?ts$/.test(this.entry) ? ["--import", "tsx"] : []
      this.child = spawn(process.execPath, ["--max-semi-space-size=64", ...flags, ...loader, this.entry], {
        cwd: REPO_ROOT,
        env,
        stdio: ["ignore", fd, fd],
        detached: true
      })
    } finally {
      fs.closeSync(fd)
    }
    this.paused = false
    this.lastExit = { code: null, signal: null }
    const child = this.child
    const pid = child.pid
    if (pid !== undefined) {
      track(pid, "chorus-node", this.entry)
      child.once("exit", (code, signal) => {
        untrack(pid)
        this.lastExit = { code, signal }
      })
    }
    child.once("error", (err) => {
      fs.appendFileSync(this.logFile, `[cluster.ts] spawn error: ${err.message}\n`)
    })
  }

  private failure(reason: string): Error {
    const text = `${this.id} (${this.url}) ${reason}\n--- last ${LOG_TAIL_LINES} lines of ${path.relative(REPO_ROOT, this.logFile)} ---\n${tail(this.logsSinceStart(), LOG_TAIL_LINES)}`
    console.error(text)
    return new Error(text)
  }

  private answersAsItself(body: string): boolean {
    try {
      const parsed = JSON.parse(body) as { readonly node?: unknown; readonly cluster?: unknown }
      return parsed.node === this.id && parsed.cluster === this.env["CHORUS_CLUSTER"]
    } catch {
      return false
    }
  }

  async waitReady(timeoutMs = this.readyTimeoutMs): Promise<void> {
    const deadline = Date.now() + timeoutMs
    const healthz = `${this.url}/healthz`
    for (;;) {
      const child = this.child
      if (!child || child.exitCode !== null || child.signalCode !== null) {
        const how = child?.signalCode ? `signal ${child.signalCode}` : `code ${child?.exitCode ?? "?"}`
        throw this.failure(`exited (${how}) before answering /healthz`)
      }
      try {
        const res = await fetch(healthz, { signal: AbortSignal.timeout(1000) })
        const body = await res.text().catch(() => "")
        // Only this node counts: another test's node may hold the port for a moment
        // (ours then exits with EADDRINUSE and is moved to another port).
        if (res.status === 200 && this.answersAsItself(body)) return
      } catch {
        // not listening yet
      }
      if (Date.now() > deadline) throw this.failure(`did not answer ${healthz} with 200 within ${timeoutMs} ms`)
      await sleep(100)
    }
  }

  /** Spawn and wait until ready, moving to another port when an auto-chosen one was taken. */
  async startAndWait(waitReady: boolean, fixedPort: boolean): Promise<void> {
    for (let attempt = 0; ; attempt++) {
      this.spawnProcess()
      if (!waitReady) return
      try {
        await this.waitReady()
        return
      } catch (e) {
        const inUse = !this.running && /EADDRINUSE|address already in use/i.test(this.logsSinceStart())
        if (!inUse || attempt >= 5) throw e
        if (fixedPort) await sleep(500)
        else this.portNumber = await freePort()
      }
    }
  }

  async kill(signal: NodeJS.Signals = "SIGKILL"): Promise<void> {
    const child = this.child
    if (!child?.pid || !this.running) return
    if (signal === "SIGSTOP") {
      this.paused = true
      await stopGroup(child.pid)
      return
    }
    if (TERMINATING.has(signal) && signal !== "SIGKILL" && this.paused) signalGroup(child.pid, "SIGCONT")
    signalGroup(child.pid, signal)
    if (signal === "SIGCONT") this.paused = false
    if (TERMINATING.has(signal)) {
      await exitOf(child)
      this.paused = false
    }
  }

  async stop(timeoutMs = 20_000): Promise<void> {
    const child = this.child
    if (!child?.pid || !this.running) return
    if (this.paused) signalGroup(child.pid, "SIGCONT")
    signalGroup(child.pid, "SIGTERM")
    if (!(await waitExit(child, timeoutMs))) {
      fs.appendFileSync(this.logFile, `[cluster.ts] no exit ${timeoutMs} ms after SIGTERM: SIGKILL\n`)
      signalGroup(child.pid, "SIGKILL")
      await exitOf(child)
    }
    this.paused = false
  }

  async restart(opts: { readonly env?: Readonly<Record<string, string>>; readonly waitReady?: boolean } = {}): Promise<void> {
    await this.stop()
    if (opts.env) this.env = { ...this.env, ...opts.env }
    await this.startAndWait(opts.waitReady ?? true, true)
  }
}

/**
 * Start `nodes` Chorus nodes and (by default) wait until each answers /healthz.
 * Every node gets the inherited environment, then HOST=127.0.0.1, NATS_URL (from the
 * environment), CHORUS_CLUSTER (opts.env's, else a unique one), CHORUS_OPERATOR_TOKEN
 * (opts.env's, else a generated one), then `opts.env`, then NODE_ID and PORT.
 */
let bundle: Promise<string> | undefined
/** The node bundle, built once per process (a failed build is tried again next time). */
const builtNode = (): Promise<string> => {
  bundle ??= buildNode().catch((error: unknown) => {
    bundle = undefined
    throw error
  })
  return bundle
}

export async function startCluster(opts: StartClusterOptions): Promise<ChorusCluster> {
  if (!Number.isInteger(opts.nodes) || opts.nodes < 1) throw new Error("startCluster: nodes must be a positive integer")
  const entry = opts.entry ?? process.env.CHORUS_NODE_ENTRY ?? (await builtNode())
  const name = opts.env.CHORUS_CLUSTER ?? uniqueCluster()
  const operatorToken = opts.env.CHORUS_OPERATOR_TOKEN ?? `op-${randomBytes(18).toString("base64url")}`
  const logDir = path.join(STATE_DIR, "logs", name)
  fs.mkdirSync(logDir, { recursive: true })
  const readyTimeoutMs = opts.readyTimeoutMs ?? 60_000
  // Never let nodes fall back to the inherited DATABASE_URL: under `npm test` that is the
  // admin database.
  const ownDatabase: FreshDatabase | undefined = opts.env.DATABASE_URL === undefined ? await freshDatabase({ prefix: name }) : undefined
  const baseEnv: Record<string, string> = {
    ...inheritedEnv(),
    HOST: "127.0.0.1",
    NATS_URL: natsUrl(),
    ...(ownDatabase ? { DATABASE_URL: ownDatabase.url } : {}),
    // Test files run in parallel against one PostgreSQL (max_connections 100 here):
    // small pools per node unless a test asks for more.
    CHORUS_DB_POOL: "6",
    ...opts.env,
    CHORUS_CLUSTER: name,
    CHORUS_OPERATOR_TOKEN: operatorToken
  }
  const nodes: NodeProcess[] = []

  const allocatePort = async (index: number): Promise<{ port: number; fixed: boolean }> => {
    if (opts.basePort !== undefined) {
      const port = opts.basePort + index
      if (!(await isPortFree(port))) throw new Error(`startCluster: port ${port} (basePort ${opts.basePort} + ${index}) is in use`)
      return { port, fixed: true }
    }
    return { port: await freePort(), fixed: false }
  }

  const launch = async (extraEnv: Readonly<Record<string, string>> | undefined, waitReady: boolean): Promise<NodeProcess> => {
    const index = nodes.length
    const { port, fixed } = await allocatePort(index)
    const node = new NodeProcess(`node-${index + 1}`, port, { ...baseEnv, ...extraEnv }, entry, logDir, readyTimeoutMs)
    nodes.push(node)
    await node.startAndWait(waitReady, fixed)
    return node
  }

  const stopAll = async (timeoutMs?: number): Promise<void> => {
    await Promise.all(nodes.map((n) => n.stop(timeoutMs)))
    await ownDatabase?.drop()
    // JetStream reserves each stream's byte limit on the server: a cluster that leaves
    // its streams behind eats the shared server's storage for every later test.
    await deleteNatsFootprint(baseEnv.NATS_URL ?? natsUrl(), name).catch((error: unknown) =>
      console.error(`startCluster: could not delete the NATS streams of ${name}: ${String(error)}`)
    )
  }

  try {
    // Allocate ports one after the other (so they differ), then start in parallel.
    const starting: Array<Promise<NodeProcess>> = []
    for (let i = 0; i < opts.nodes; i++) {
      const { port, fixed } = await allocatePort(i)
      const node = new NodeProcess(`node-${i + 1}`, port, { ...baseEnv }, entry, logDir, readyTimeoutMs)
      nodes.push(node)
      starting.push(node.startAndWait(opts.waitReady ?? true, fixed).then(() => node))
    }
    await Promise.all(starting)
  } catch (e) {
    await Promise.all(nodes.map((n) => n.kill("SIGKILL")))
    await ownDatabase?.drop().catch(() => undefined)
    throw e
  }

  return {
    name,
    operatorToken,
    databaseUrl: baseEnv.DATABASE_URL ?? "",
    nodes,
    logDir,
    node(id: string): ChorusNode {
      const n = nodes.find((x) => x.id === id)
      if (!n) throw new Error(`no node ${id} in cluster ${name}`)
      return n
    },
    addNode: (o = {}) => launch(o.env, o.waitReady ?? true),
    stopAll
  }
}
