/**
 * Command 1 (`npm start`, scripts/start.mjs) as a newcomer meets it: with nothing
 * answering at the configured PostgreSQL and NATS addresses it provisions both itself,
 * starts the nodes on consecutive ports, prints one ready line per node (GET /healthz
 * answers 200 from then on; the cluster serves), and on SIGTERM stops all it started.
 *
 * The servers it provisions keep their data under `.chorus/` (as for a developer); the
 * NATS streams this test's cluster leaves there are removed once nats-server is down.
 */
import { spawn } from "node:child_process"
import type { ChildProcess } from "node:child_process"
import fs from "node:fs"
import path from "node:path"
import { afterAll, describe, expect, it } from "vitest"
import { postApi } from "../support/http.ts"
import { exitOf, freePort, isAlive, isPortFree, REPO_ROOT, STATE_DIR, track, untrack, waitExit } from "../support/processes.ts"
import { uniqueCluster } from "../support/services.ts"

/** Two consecutive free ports (the nodes' PORT and PORT + 1). */
const consecutiveFreePorts = async (): Promise<number> => {
  for (;;) {
    const port = await freePort()
    if (port < 65_000 && (await isPortFree(port + 1))) return port
  }
}

let child: ChildProcess | undefined
let output = ""

afterAll(async () => {
  if (child?.pid !== undefined && child.exitCode === null && child.signalCode === null) {
    child.kill("SIGTERM")
    if (!(await waitExit(child, 60_000))) child.kill("SIGKILL")
  }
  if (child?.pid !== undefined) untrack(child.pid)
})

const waitFor = async (pattern: RegExp, timeoutMs: number): Promise<RegExpMatchArray> => {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const match = pattern.exec(output)
    if (match !== null) return match
    if (child?.exitCode !== null || Date.now() > deadline) {
      throw new Error(`npm start did not print ${pattern} (exit ${child?.exitCode ?? "none"}); its output:\n${output.slice(-4_000)}`)
    }
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
}

describe("npm start", () => {
  it("provisions PostgreSQL and NATS when none answers, starts the nodes, and stops everything on SIGTERM", async () => {
    const port = await consecutiveFreePorts()
    const natsPort = await freePort()
    const pgPort = await freePort()
    const cluster = uniqueCluster()
    const token = `op-${cluster}`
    child = spawn(process.execPath, ["scripts/start.mjs"], {
      cwd: REPO_ROOT,
      env: {
        ...process.env,
        CHORUS_NODES: "2",
        PORT: String(port),
        NATS_URL: `nats://127.0.0.1:${natsPort}`,
        DATABASE_URL: `postgres://postgres@127.0.0.1:${pgPort}/chorus_start_test`,
        CHORUS_CLUSTER: cluster,
        CHORUS_OPERATOR_TOKEN: token,
        // The bundle the test run built: a rebuild here would rewrite it under other tests' nodes.
        CHORUS_NODE_ENTRY: "dist/main.mjs"
      },
      stdio: ["ignore", "pipe", "pipe"]
    })
    track(child.pid!, "npm start", "scripts/start.mjs", false)
    child.stdout!.on("data", (chunk: Buffer) => (output += chunk.toString()))
    child.stderr!.on("data", (chunk: Buffer) => (output += chunk.toString()))

    await waitFor(/chorus: all 2 nodes ready/, 110_000)
    expect(output).toMatch(/postgres: nothing answers at 127\.0\.0\.1:\d+ .*; provisioning one/)
    expect(output).toMatch(/nats: nothing answers at 127\.0\.0\.1:\d+ .*; provisioning one/)
    const natsUrl = (await waitFor(/nats: using (nats:\/\/\S+)/, 1_000))[1]!
    expect(output).toContain(`node-1 ready http://127.0.0.1:${port} `)
    expect(output).toContain(`node-2 ready http://127.0.0.1:${port + 1} `)
    for (const p of [port, port + 1]) expect((await fetch(`http://127.0.0.1:${p}/healthz`)).status).toBe(200)
    // The cluster serves: a counter addressed through each node is answered by its owner,
    // persisted in the provisioned PostgreSQL, over the provisioned NATS.
    let expected = 0
    for (const p of [port, port + 1]) {
      expected += 1
      const answer = await postApi(`http://127.0.0.1:${p}`, "cluster.probe", { counter: "start", amount: 1 }, token)
      expect(answer).toMatchObject({ ok: true, value: expected })
    }

    child.kill("SIGTERM")
    await exitOf(child)
    expect(child.exitCode).toBe(0)
    expect(output).toContain("chorus: 2 nodes stopped")
    expect(output).toContain("chorus: stopped")
    for (const p of [port, port + 1]) expect(await isPortFree(p)).toBe(true)
    // What it started, it stopped (a server it found already running it leaves alone).
    const natsPid = /stopping nats-server \(pid (\d+)\)/.exec(output)
    if (/nats: started nats-server/.test(output)) {
      expect(natsPid).not.toBeNull()
      expect(isAlive(Number(natsPid![1]))).toBe(false)
      expect(await isPortFree(Number(new URL(natsUrl).port))).toBe(true)
      // The provisioned server's store keeps what nodes made; this cluster's is not needed.
      const streams = path.join(STATE_DIR, "nats", "jetstream", "$G", "streams")
      for (const name of fs.existsSync(streams) ? fs.readdirSync(streams) : []) {
        if (name.startsWith(`KV_${cluster}-`) || name.startsWith(`${cluster.toUpperCase()}_`)) fs.rmSync(path.join(streams, name), { recursive: true, force: true })
      }
    }
    if (/postgres: (initialised and )?started PostgreSQL/.test(output)) {
      expect(output).toContain("stopping PostgreSQL")
      const pgUsed = Number(/postgres: using postgres:\/\/[^@]+@127\.0\.0\.1:(\d+)\//.exec(output)![1])
      expect(await isPortFree(pgUsed)).toBe(true)
    }
  })
})
