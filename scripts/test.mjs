// `npm test [-- vitest args]`: dependencies, PostgreSQL and NATS as for `npm start`
// (scripts/provision.mjs), then vitest with a JSON report, then one plain summary line
// `N passed, N failed[, N skipped]`. Exits non-zero when anything failed.
//
// Tests get DATABASE_URL (an admin URL, database `postgres`, on which they create their
// own databases) and NATS_URL (JetStream enabled) in their environment.

import { spawn } from "node:child_process"
import fs from "node:fs"
import path from "node:path"
import {
  DEFAULT_DATABASE_URL,
  ROOT,
  STATE_DIR,
  ensureDependencies,
  isAlive,
  provisionServices,
  say,
  stopProvisioned,
  stopProvisionedSync,
  withDatabase
} from "./provision.mjs"

const REPORT = path.join(STATE_DIR, "vitest.json")
const PIDS_DIR = path.join(STATE_DIR, "pids")

/** @type {import("node:child_process").ChildProcess | undefined} */
let vitest
let interrupted = false

for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"]) {
  process.on(sig, () => {
    if (interrupted) {
      vitest?.kill("SIGKILL")
      stopProvisionedSync()
      process.exit(130)
    }
    interrupted = true
    say(`${sig}: stopping the test run`)
    // vitest shares our process group, so a terminal Ctrl-C already reached it.
    if (sig !== "SIGINT") vitest?.kill(sig)
    if (!vitest) void stopProvisioned().then(() => process.exit(130))
  })
}
process.on("exit", () => stopProvisionedSync())

/**
 * Kill processes that test helpers (test/support) started and that outlived their test
 * worker (a crashed or killed worker cannot run its exit hooks).
 */
function reapLeftovers() {
  let files = []
  try {
    files = fs.readdirSync(PIDS_DIR).filter((f) => f.endsWith(".json"))
  } catch {
    return
  }
  let reaped = 0
  for (const f of files) {
    const file = path.join(PIDS_DIR, f)
    try {
      const rec = JSON.parse(fs.readFileSync(file, "utf8"))
      const pid = Number(rec.pid)
      if (pid > 0 && isAlive(pid) && (!rec.owner || !isAlive(Number(rec.owner)))) {
        let cmdline = ""
        try {
          cmdline = fs.readFileSync(`/proc/${pid}/cmdline`, "utf8").replace(/\0/g, " ")
        } catch {}
        if (!rec.match || cmdline.includes(rec.match)) {
          try {
            process.kill(rec.group ? -pid : pid, "SIGKILL")
            reaped += 1
          } catch {}
        }
      }
      if (!isAlive(Number(rec.owner))) fs.rmSync(file, { force: true })
    } catch {
      fs.rmSync(file, { force: true })
    }
  }
  if (reaped > 0) say(`killed ${reaped} process${reaped === 1 ? "" : "es"} left behind by test helpers`)
}

function summarize(vitestCode) {
  /** @type {any} */
  let report
  try {
    report = JSON.parse(fs.readFileSync(REPORT, "utf8"))
  } catch {
    say(`vitest exited with ${vitestCode} and wrote no report (${path.relative(ROOT, REPORT)})`)
    console.log("0 passed, 0 failed")
    return false
  }
  const passed = report.numPassedTests ?? 0
  // A file that fails before any test runs (import error, failing beforeAll) has no
  // failed tests of its own: count it, or the line would read "0 failed".
  const brokenFiles = (report.testResults ?? []).filter(
    (r) => r.status === "failed" && !(r.assertionResults ?? []).some((a) => a.status === "failed")
  ).length
  const failed = (report.numFailedTests ?? 0) + brokenFiles
  const skipped = (report.numPendingTests ?? 0) + (report.numTodoTests ?? 0)
  console.log(`${passed} passed, ${failed} failed${skipped > 0 ? `, ${skipped} skipped` : ""}`)
  return failed === 0 && report.success !== false && vitestCode === 0
}

async function main() {
  ensureDependencies()
  const services = await provisionServices({
    databaseUrl: withDatabase(process.env.DATABASE_URL ?? DEFAULT_DATABASE_URL, "postgres"),
    createDatabase: false
  })
  if (interrupted) return 130
  fs.mkdirSync(STATE_DIR, { recursive: true })
  fs.rmSync(REPORT, { force: true })
  const env = { ...process.env, DATABASE_URL: services.adminDatabaseUrl, NATS_URL: services.natsUrl }
  say(`DATABASE_URL=${services.adminDatabaseUrl} NATS_URL=${services.natsUrl}`)
  const vitestBin = path.join(ROOT, "node_modules", "vitest", "vitest.mjs")
  const args = [
    vitestBin,
    "run",
    "--reporter=default",
    "--reporter=json",
    `--outputFile=${path.relative(ROOT, REPORT)}`,
    ...process.argv.slice(2)
  ]
  const code = await new Promise((resolve) => {
    vitest = spawn(process.execPath, args, { cwd: ROOT, env, stdio: "inherit" })
    vitest.on("error", (e) => {
      say(`could not run vitest: ${e.message}`)
      resolve(1)
    })
    vitest.on("close", (c, sig) => resolve(c ?? (sig ? 128 : 1)))
  })
  vitest = undefined
  reapLeftovers()
  await stopProvisioned()
  const ok = summarize(code)
  return ok && !interrupted ? 0 : code === 0 ? 1 : code
}

main()
  .then((code) => process.exit(code))
  .catch(async (err) => {
    console.error(`chorus: ${err instanceof Error ? err.message : String(err)}`)
    await stopProvisioned()
    process.exit(1)
  })
