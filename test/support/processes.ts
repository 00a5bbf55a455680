// Process plumbing shared by the test helpers: free ports, waiting for exits, signals to
// process groups, and a registry so nothing a test started outlives the test run.
//
// Every server or node a helper spawns is `detached` (its own process group, so a signal
// reaches its children too, e.g. PostgreSQL's backends) and recorded in
// `.chorus/pids/<pid>.json`. On normal exit of the test worker the exit hook SIGKILLs
// whatever is still running; `npm test` (scripts/test.mjs) reaps what a crashed worker
// left behind.

import type { ChildProcess } from "node:child_process"
import fs from "node:fs"
import net from "node:net"
import path from "node:path"
import { fileURLToPath } from "node:url"

export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..")
export const STATE_DIR = path.join(REPO_ROOT, ".chorus")
const PIDS_DIR = path.join(STATE_DIR, "pids")

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

const handedOut: number[] = []

/**
 * A port that is free right now (port-0 probing on 127.0.0.1), never one this process
 * handed out recently (the kernel may offer a just-closed port again). Another process
 * can still take it before the caller binds: callers retry on EADDRINUSE.
 */
export async function freePort(host = "127.0.0.1"): Promise<number> {
  for (;;) {
    const port = await probePort(host)
    if (handedOut.includes(port)) continue
    handedOut.push(port)
    if (handedOut.length > 256) handedOut.shift()
    return port
  }
}

function probePort(host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer()
    srv.once("error", reject)
    srv.listen({ port: 0, host, exclusive: true }, () => {
      const addr = srv.address()
      const port = typeof addr === "object" && addr !== null ? addr.port : 0
      srv.close(() => resolve(port))
    })
  })
}

/** Whether host:port can be listened on right now. */
export function isPortFree(port: number, host = "127.0.0.1"): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = net.createServer()
    srv.once("error", () => resolve(false))
    srv.listen({ port, host, exclusive: true }, () => srv.close(() => resolve(true)))
  })
}

export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM"
  }
}

/**
 * Send a signal to the process group led by `pid` (our children are spawned `detached`,
 * so they lead their own group). Never throws; no fallback to the bare pid, which may
 * have been reused once the group is gone.
 */
export function signalGroup(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pid, signal)
  } catch {
    // the group is gone
  }
}

/** Thread states of every process in group `pgid` (Linux /proc), or undefined without /proc. */
function groupThreadStates(pgid: number): string[] | undefined {
  let entries: string[]
  try {
    entries = fs.readdirSync("/proc")
  } catch {
    return undefined
  }
  const states: string[] = []
  for (const e of entries) {
    if (!/^\d+$/.test(e)) continue
    try {
      const stat = fs.readFileSync(`/proc/${e}/stat`, "utf8")
      // pid (comm) state ppid pgrp …; comm may contain spaces and parentheses
      const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ")
      if (Number(fields[2]) !== pgid) continue
      for (const t of fs.readdirSync(`/proc/${e}/task`)) {
        const ts = fs.readFileSync(`/proc/${e}/task/${t}/stat`, "utf8")
        states.push(ts.slice(ts.lastIndexOf(")") + 2).split(" ")[0] ?? "?")
      }
    } catch {
      // exited meanwhile
    }
  }
  return states
}

/**
 * SIGSTOP a process group and resolve once every thread of every member is actually
 * stopped: kill() returns before a busy multi-threaded process (nats-server) has stopped,
 * and it may still answer a request sent right after.
 */
export async function stopGroup(pgid: number, timeoutMs = 5000): Promise<void> {
  signalGroup(pgid, "SIGSTOP")
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const states = groupThreadStates(pgid)
    if (states === undefined) {
      await sleep(50)
      return
    }
    if (states.every((st) => st === "T" || st === "t" || st === "Z" || st === "X")) return
    if (Date.now() > deadline) throw new Error(`process group ${pgid} did not stop within ${timeoutMs} ms (states ${states.join("")})`)
    await sleep(2)
  }
}

/** Resolves when the child has exited (immediately if it already has). */
export function exitOf(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve()
  return new Promise((resolve) => child.once("exit", () => resolve()))
}

/** Wait for exit; true when it exited within `ms`. */
export async function waitExit(child: ChildProcess, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<false>((resolve) => {
    timer = setTimeout(() => resolve(false), ms)
  })
  const exited = await Promise.race([exitOf(child).then(() => true as const), timeout])
  if (timer) clearTimeout(timer)
  return exited
}

export const TERMINATING: ReadonlySet<NodeJS.Signals> = new Set<NodeJS.Signals>([
  "SIGKILL",
  "SIGTERM",
  "SIGINT",
  "SIGQUIT",
  "SIGABRT",
  "SIGHUP"
])

/** The last `lines` lines of a text. */
export function tail(text: string, lines = 40): string {
  return text.trimEnd().split("\n").slice(-lines).join("\n")
}

export function readTextFile(file: string): string {
  try {
    return fs.readFileSync(file, "utf8")
  } catch {
    return ""
  }
}

interface Tracked {
  readonly pid: number
  readonly group: boolean
}

const tracked = new Map<number, Tracked>()
const cleanups: Array<() => void> = []
let hooked = false

function hook(): void {
  if (hooked) return
  hooked = true
  process.on("exit", cleanUp)
  // vitest ends each forked worker with SIGTERM (and Ctrl-C sends SIGINT), which skips
  // "exit" handlers: clean up, then let the signal do what it would have done.
  for (const sig of ["SIGTERM", "SIGINT", "SIGHUP"] as const) {
    const onSignal = (): void => {
      cleanUp()
      process.off(sig, onSignal)
      if (process.listenerCount(sig) === 0) process.kill(process.pid, sig)
    }
    process.on(sig, onSignal)
  }
}

function cleanUp(): void {
  for (const t of tracked.values()) {
    if (t.group) signalGroup(t.pid, "SIGKILL")
    else {
      try {
        process.kill(t.pid, "SIGKILL")
      } catch {
        // gone
      }
    }
    fs.rmSync(path.join(PIDS_DIR, `${t.pid}.json`), { force: true })
  }
  tracked.clear()
  for (const c of cleanups.splice(0)) {
    try {
      c()
    } catch {
      // best effort
    }
  }
}

/**
 * Record a spawned process so it is killed when the test worker exits, and reaped by
 * `npm test` if the worker dies first. `match` is a substring of its command line.
 */
export function track(pid: number, kind: string, match: string, group = true): void {
  hook()
  tracked.set(pid, { pid, group })
  try {
    fs.mkdirSync(PIDS_DIR, { recursive: true })
    fs.writeFileSync(
      path.join(PIDS_DIR, `${pid}.json`),
      JSON.stringify({ pid, group, kind, match, owner: process.pid, startedAt: new Date().toISOString() })
    )
  } catch {
    // the registry is a safety net only
  }
}

export function untrack(pid: number): void {
  tracked.delete(pid)
  fs.rmSync(path.join(PIDS_DIR, `${pid}.json`), { force: true })
}

/** Run `fn` when the test worker exits (synchronous work only). */
export function onExit(fn: () => void): void {
  hook()
  cleanups.push(fn)
}
