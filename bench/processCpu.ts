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
