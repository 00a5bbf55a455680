/**
 * bench:floor — the latency floor under bench:runtime on this machine: three plain
 * nats.js responder processes (one per "node", 128 subjects over them) answering core
 * NATS requests from an open-loop generator shaped like bench:runtime's (sends due at
 * a fixed rate, 1 ms ticks, latency from when each was due), with a runtime-sized
 * envelope. Options add busy-loop CPU per request to either side, or one trivial
 * Effect fiber per request in the responders, to see what each costs in p99.
 *
 * Usage: npm run bench:floor [-- --rate 5000 --seconds 8 --rounds 3 --responder-burn-us 0 --generator-burn-us 0 --effect]
 * Prints one line per round, then one JSON line (the median round by p99).
 */
import { connect, createInbox } from "@nats-io/transport-node"
import { spawn } from "node:child_process"
import { randomUUID } from "node:crypto"
import { performance } from "node:perf_hooks"
import { parseArgs } from "node:util"
import { natsUrl } from "../test/support/services.ts"
import { cpuSecondsOf } from "./processCpu.ts"
import { percentile } from "./report.ts"

const { values } = parseArgs({
  options: {
    rate: { type: "string", default: "5000" },
    seconds: { type: "string", default: "8" },
    rounds: { type: "string", default: "3" },
    "responder-burn-us": { type: "string", default: "0" },
    "generator-burn-us": { type: "string", default: "0" },
    effect: { type: "boolean", default: false }
  }
})
const rate = Number(values.rate)
const seconds = Number(values.seconds)
const generatorBurnMs = Number(values["generator-burn-us"]) / 1000
const url = natsUrl()
const prefix = `floor.${randomUUID().slice(0, 8)}`

const responders = [0, 1, 2].map((i) =>
  spawn(process.execPath, [
    new URL("./natsFloorResponder.mjs", import.meta.url).pathname,
    url,
    prefix,
    String(i),
    values["responder-burn-us"]!,
    values.effect ? "1" : "0"
  ], { stdio: ["ignore", "pipe", "inherit"] })
)
const nc = await connect({ servers: url })
try {
  await Promise.all(responders.map((r) => new Promise((resolve) => r.stdout!.once("data", resolve))))
  const inbox = createInbox()
  const pending = new Map<string, () => void>()
  nc.subscribe(`${inbox}.*`, { callback: (error, msg) => {
    if (error === null) pending.get(msg.subject.slice(inbox.length + 1))?.()
  } })
  const payload = new TextEncoder().encode(JSON.stringify({ id: randomUUID(), to: "counter/floor", msg: { _tag: "Get" }, t: Date.now() }))
  let token = 0

  const round = async () => {
    const total = Math.round(rate * seconds)
    const latencies: Array<number> = []
    let outstanding = 0
    let drained: (() => void) | undefined
    const before = responders.map((r) => cpuSecondsOf(r.pid!))
    const generatorBefore = process.cpuUsage()
    const start = performance.now()
    for (let sent = 0; sent < total;) {
      const due = Math.min(total, Math.floor(((performance.now() - start) / 1000) * rate))
      for (; sent < due; sent++) {
        const dueAt = start + (sent / rate) * 1000
        const until = performance.now() + generatorBurnMs
        while (performance.now() < until);
        const t = String(token++)
        outstanding++
        pending.set(t, () => {
          pending.delete(t)
          latencies.push(performance.now() - dueAt)
          if (--outstanding === 0) drained?.()
        })
        nc.publish(`${prefix}.${sent % 128}`, payload, { reply: `${inbox}.${t}` })
      }
      await new Promise((resolve) => setTimeout(resolve, 1))
    }
    if (outstanding > 0) await new Promise<void>((resolve) => (drained = resolve))
    const generator = process.cpuUsage(generatorBefore)
    const n = latencies.length
    return {
      p50_ms: percentile(latencies, 50),
      p99_ms: percentile(latencies, 99),
      responders_cpu_us_per_req: (responders.reduce((sum, r, i) => sum + cpuSecondsOf(r.pid!) - before[i]!, 0) * 1e6) / n,
      generator_cpu_us_per_req: (generator.user + generator.system) / n
    }
  }

  const results = []
  for (let i = 0; i < Number(values.rounds); i++) {
    const r = await round()
    results.push(r)
    console.log(`round ${i + 1}: p50 ${r.p50_ms.toFixed(2)} ms, p99 ${r.p99_ms.toFixed(2)} ms, responders ${r.responders_cpu_us_per_req.toFixed(0)} µs/req, generator ${r.generator_cpu_us_per_req.toFixed(0)} µs/req`)
  }
  const median = [...results].sort((a, b) => a.p99_ms - b.p99_ms)[Math.floor(results.length / 2)]!
  const round2 = (x: number) => Math.round(x * 100) / 100
  console.log(JSON.stringify({
    bench: "floor",
    offered_per_s: rate,
    effect: values.effect,
    responder_burn_us: Number(values["responder-burn-us"]),
    generator_burn_us: Number(values["generator-burn-us"]),
    p50_ms: round2(median.p50_ms),
    p99_ms: round2(median.p99_ms),
    p99_ms_rounds: results.map((r) => round2(r.p99_ms)),
    responders_cpu_us_per_req: round2(median.responders_cpu_us_per_req),
    generator_cpu_us_per_req: round2(median.generator_cpu_us_per_req)
  }))
} finally {
  for (const r of responders) r.kill()
  await nc.close()
}
