// A private nats-server with JetStream for tests that restart, kill or pause NATS.
// Never touch the shared server on 4222: start your own with `startNatsServer()`.

import { spawn, type ChildProcess } from "node:child_process"
import fs from "node:fs"
import os from "node:os"
import path from "node:path"
import { exitOf, freePort, onExit, signalGroup, sleep, stopGroup, tail, TERMINATING, track, untrack, waitExit } from "./processes.ts"

export interface NatsServerOptions {
  /** Enable JetStream (default true). */
  readonly jetstream?: boolean
  /** Listen on this port instead of a free one. */
  readonly port?: number
  /** Extra nats-server arguments. */
  readonly args?: ReadonlyArray<string>
  /** nats-server binary (default $NATS_SERVER_BIN, PATH, /usr/sbin/nats-server). */
  readonly binary?: string
  /** How long to wait for "Server is ready" (default 20 s). */
  readonly startTimeoutMs?: number
}

export interface NatsServer {
  /** nats://127.0.0.1:<port> */
  readonly url: string
  readonly port: number
  /** JetStream store directory, kept across restart(); removed when the test worker exits. */
  readonly storeDir: string
  /** pid of the running server (undefined while stopped). */
  readonly pid: number | undefined
  readonly running: boolean
  /** Graceful stop (SIGTERM; SIGKILL after 10 s). Data stays; restart() works afterwards. */
  stop(): Promise<void>
  /**
   * Send a signal (default SIGKILL). Terminating signals resolve once the server has
   * exited, SIGSTOP once it is really stopped, others (SIGCONT, SIGHUP…) at once.
   */
  kill(signal?: NodeJS.Signals): Promise<void>
  /** Start again on the same port with the same store dir (stops it first if running). */
  restart(): Promise<void>
  /**
   * SIGSTOP: the process freezes, its sockets stay open (connections hang, nothing is
   * refused). Await it: it resolves once every thread has stopped.
   */
  pause(): Promise<void>
  /** SIGCONT after pause(). */
  resume(): void
  /** The server's log output (all starts). */
  logs(): string
}

function natsBinary(explicit?: string): string {
  const candidates = [explicit, process.env.NATS_SERVER_BIN, process.env.CHORUS_NATS_SERVER_BIN]
  for (const dir of (process.env.PATH ?? "").split(path.delimiter)) if (dir) candidates.push(path.join(dir, "nats-server"))
  candidates.push("/usr/sbin/nats-server", "/usr/local/bin/nats-server")
  for (const c of candidates) {
    if (!c) continue
    try {
      fs.accessSync(c, fs.constants.X_OK)
      return c
    } catch {
      // next
    }
  }
  throw new Error("nats-server not found (set NATS_SERVER_BIN or install nats-server)")
}

export async function startNatsServer(opts: NatsServerOptions = {}): Promise<NatsServer> {
  const binary = natsBinary(opts.binary)
  const storeDir = fs.mkdtempSync(path.join(os.tmpdir(), "chorus-nats-"))
  onExit(() => fs.rmSync(storeDir, { recursive: true, force: true, maxRetries: 3 }))
  const startTimeoutMs = opts.startTimeoutMs ?? 20_000
  let port = opts.port ?? (await freePort())
  let child: ChildProcess | undefined
  let log = ""
  let paused = false

  const spawnOnce = async (): Promise<"ready" | "in-use"> => {
    const args = ["-a", "127.0.0.1", "-p", String(port), ...(opts.jetstream === false ? [] : ["-js", "-sd", storeDir]), ...(opts.args ?? [])]
    log += `=== nats-server ${args.join(" ")} (${new Date().toISOString()})\n`
    const c = spawn(binary, args, { stdio: ["ignore", "pipe", "pipe"], detached: true })
    child = c
    paused = false
    const pid = c.pid
    if (pid === undefined) throw new Error(`could not spawn ${binary}`)
    track(pid, "nats-server", "nats-server")
    c.once("exit", () => untrack(pid))
    const started = log.length
    const outcome = await new Promise<"ready" | "in-use" | "failed">((resolve) => {
      const timer = setTimeout(() => resolve("failed"), startTimeoutMs)
      const onData = (chunk: Buffer): void => {
        log += chunk.toString("utf8")
        if (log.slice(started).includes("Server is ready")) {
          clearTimeout(timer)
          resolve("ready")
        }
      }
      c.stdout?.on("data", onData)
      c.stderr?.on("data", onData)
      c.once("exit", () => {
        clearTimeout(timer)
        resolve(/address already in use/i.test(log.slice(started)) ? "in-use" : "failed")
      })
    })
    if (outcome === "ready") return "ready"
    signalGroup(pid, "SIGKILL")
    await exitOf(c)
    if (outcome === "in-use") return "in-use"
    throw new Error(`nats-server did not start on port ${port}:\n${tail(log.slice(started))}`)
  }

  const start = async (fixedPort: boolean): Promise<void> => {
    for (let attempt = 0; ; attempt++) {
      const r = await spawnOnce()
      if (r === "ready") return
      if (attempt >= 20) throw new Error(`nats-server: port ${port} stayed in use`)
      if (fixedPort) await sleep(250)
      else port = await freePort()
    }
  }

  const stopNow = async (): Promise<void> => {
    const c = child
    if (!c?.pid || c.exitCode !== null || c.signalCode !== null) return
    if (paused) signalGroup(c.pid, "SIGCONT")
    signalGroup(c.pid, "SIGTERM")
    if (!(await waitExit(c, 10_000))) {
      signalGroup(c.pid, "SIGKILL")
      await exitOf(c)
    }
    paused = false
  }

  await start(opts.port !== undefined)

  const isRunning = (): boolean => child !== undefined && child.exitCode === null && child.signalCode === null

  return {
    get url() {
      return `nats://127.0.0.1:${port}`
    },
    get port() {
      return port
    },
    storeDir,
    get pid() {
      return isRunning() ? child?.pid : undefined
    },
    get running() {
      return isRunning()
    },
    stop: stopNow,
    async kill(signal: NodeJS.Signals = "SIGKILL") {
      const c = child
      if (!c?.pid || !isRunning()) return
      if (signal === "SIGSTOP") {
        paused = true
        await stopGroup(c.pid)
        return
      }
      signalGroup(c.pid, signal)
      if (signal === "SIGCONT") paused = false
      if (TERMINATING.has(signal)) {
        if (paused && signal !== "SIGKILL") signalGroup(c.pid, "SIGCONT")
        await exitOf(c)
        paused = false
      }
    },
    async restart() {
      await stopNow()
      await start(true)
    },
    async pause() {
      const pid = child?.pid
      if (pid !== undefined && isRunning()) {
        paused = true
        await stopGroup(pid)
      }
    },
    resume() {
      const pid = child?.pid
      if (pid !== undefined && isRunning()) {
        signalGroup(pid, "SIGCONT")
        paused = false
      }
    },
    logs: () => log
  }
}
