/** CPU time of server processes, from /proc (Linux), for the benchmarks' per-unit CPU figures. */
import { execFileSync } from "node:child_process"
import fs from "node:fs"

const ticksPerSecond = Number(execFileSync("getconf", ["CLK_TCK"]).toString().trim()) || 100

/** User + system CPU seconds a process has used; 0 once it is gone (a process that
 *  exited took its figures with it, which the caller's before/after difference shows). */
export const cpuSecondsOf = (pid: number): number => {
  try {
    const fields = fs.readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ")
    return (Number(fields[11]) + Number(fields[12])) / ticksPerSecond
  } catch {
    return 0
  }
}

/** Pids of the processes named exactly `name` (none when pgrep finds nothing). */
export const pidsOf = (name: string): Array<number> => {
  try {
    return execFileSync("pgrep", ["-x", name]).toString().trim().split("\n").filter(Boolean).map(Number)
  } catch {
    return []
  }
}

/** Each process's reading of a per-process counter now, to measure from (`since`). */
const snapshot = (read: (pid: number) => number) => (pids: ReadonlyArray<number>): ReadonlyMap<number, number> =>
  new Map(pids.map((pid) => [pid, read(pid)]))

/**
 * How much of a counter `pids` used since `before`: a process seen then counts its
 * difference, one started since counts all it used. One that exited in between took its
 * figures with it: an undercount, never a wrong sign (summing totals before and after
 * would subtract an exited PostgreSQL backend's whole life).
 */
const since = (read: (pid: number) => number) => (before: ReadonlyMap<number, number>, pids: ReadonlyArray<number>): number =>
  pids.reduce((sum, pid) => sum + Math.max(0, read(pid) - (before.get(pid) ?? 0)), 0)

/** CPU seconds: a snapshot, and what was used since it. */
export const cpuSnapshot = snapshot(cpuSecondsOf)
export const cpuSince = since(cpuSecondsOf)

/**
 * Times a process's threads went to sleep and were woken again (voluntary context
 * switches, summed over its threads): on a VM where a wake-up is dear, wake-ups per
 * unit of work go with CPU per unit of work. 0 once it is gone.
 */
export const wakesOf = (pid: number): number => {
  try {
    let wakes = 0
    for (const task of fs.readdirSync(`/proc/${pid}/task`)) {
      const status = fs.readFileSync(`/proc/${pid}/task/${task}/status`, "utf8")
      wakes += Number(/^voluntary_ctxt_switches:\s+(\d+)/m.exec(status)?.[1] ?? 0)
    }
    return wakes
  } catch {
    return 0
  }
}

/** Wake-ups: a snapshot, and how many since it. */
export const wakesSnapshot = snapshot(wakesOf)
export const wakesSince = since(wakesOf)
