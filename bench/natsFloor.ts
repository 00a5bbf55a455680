/**
 * bench:floor — the latency floor under bench:runtime on this machine: three plain
 * nats.js responder processes (one per "node", 128 subjects over them) answering core
 * NATS requests from an open-loop generator shaped like bench:runtime's (sends due at
 * a fixed rate, 1 ms ticks, latency from when each was due), with a runtime-sized
 * envelope. Options add busy-loop CPU per request to either side, or one trivial
 * Effect fiber per request in the responders, to see what each costs in p99.
 *
 * `--durable`: the durable path's floor instead. A work-queue stream on file storage and
 * a pull consumer per shard (as Nats.ts and ShardRunner.ts configure them); the
 * generator publishes each command with a `Nats-Msg-Id` and waits for the stream's ack
 * and the responder's reply, and the responder acks each command and answers it. The
 * stream's ack is also timed on its own: what a sender waits for before anything is
 * delivered, so no design that stores a command in JetStream first can answer sooner.
 *
 * Usage: npm run bench:floor [-- --rate 5000 --seconds 8 --rounds 3 --responder-burn-us 0 --generator-burn-us 0 --effect --durable]
 * Prints one line per round, then one JSON line (the median round by p99).
 */
import { AckPolicy, DeliverPolicy, DiscardPolicy, jetstreamManager, RetentionPolicy, StorageType } from "@nats-io/jetstream"
import { connect, createInbox, headers as natsHeaders } from "@nats-io/transport-node"
import { spawn } from "node:child_process"
import type { ChildProcess } from "node:child_process"
import { randomUUID } from "node:crypto"
import { performance } from "node:perf_hooks"
import { parseArgs } from "node:util"
import { natsUrl } from "../test/support/services.ts"
import { cpuSecondsOf, pidsOf } from "./processCpu.ts"
import { percentile } from "./report.ts"

const { values } = parseArgs({
  options: {
    rate: { type: "string", default: "5000" },
    seconds: { type: "string", default: "8" },
    rounds: { type: "string", default: "3" },
    "responder-burn-us": { type: "string", default: "0" },
    "generator-burn-us": { type: "string", default: "0" },
    effect: { type: "boolean", default: false },
    durable: { type: "boolean", default: false }
  }
})
const rate = Number(values.rate)
const seconds = Number(values.seconds)
const generatorBurnMs = Number(values["generator-burn-us"]) / 1000
const url = natsUrl()
const prefix = `floor.${randomUUID().slice(0, 8)}`

const durable = values.durable === true
const stream = `FLOOR_${prefix.slice("floor.".length).toUpperCase()}`
const nc = await connect({ servers: url })
const jsm = await jetstreamManager(nc)
let responders: Array<ChildProcess> = []
try {
  if (durable) {
    await jsm.streams.add({
      name: stream,
      subjects: [`${prefix}.cmd.>`],
      retention: RetentionPolicy.Workqueue,
      storage: StorageType.File,
      discard: DiscardPolicy.New,
      duplicate_window: 120 * 1_000_000_000,
      num_replicas: 1
    })
    for (let shard = 0; shard < 128; shard++) {
      await jsm.consumers.add(stream, {
        durable_name: `shard-${shard}`,
        filter_subject: `${prefix}.cmd.${shard}`,
        ack_policy: AckPolicy.Explicit,
        deliver_policy: DeliverPolicy.All,
        max_ack_pending: 512,
        ack_wait: 30_000_000_000,
        max_deliver: -1
      })
    }
  }
  responders = [0, 1, 2].map((i) =>
    durable
      ? spawn(process.execPath, [
        new URL("./natsFloorDurableResponder.mjs", import.meta.url).pathname,
        url,
        stream,
        prefix,
        String(i),
        values["responder-burn-us"]!
      ], { stdio: ["ignore", "pipe", "inherit"] })
      : spawn(process.execPath, [
        new URL("./natsFloorResponder.mjs", import.meta.url).pathname,
        url,
        prefix,
        String(i),
        values["responder-burn-us"]!,
        values.effect ? "1" : "0"
      ], { stdio: ["ignore", "pipe", "inherit"] })
  )
  await Promise.all(responders.map((r) => new Promise((resolve) => r.stdout!.once("data", resolve))))
  const inbox = createInbox()
  const pending = new Map<string, () => void>()
  /** Durable: when each command in flight was due, to time the stream's ack on its own. */
  const dueAtOf = new Map<string, number>()
  let storeAcks: Array<number> = []
  nc.subscribe(`${inbox}.*`, { callback: (error, msg) => {
    if (error !== null) return
    // Durable: `<token>a` is the stream's ack, `<token>` the reply; both are awaited.
    const suffix = msg.subject.slice(inbox.length + 1)
    if (suffix.endsWith("a")) {
      const dueAt = dueAtOf.get(suffix.slice(0, -1))
      if (dueAt !== undefined) storeAcks.push(performance.now() - dueAt)
    }
    pending.get(suffix.replace(/a$/, ""))?.()
  } })
  const payload = new TextEncoder().encode(JSON.stringify({ id: randomUUID(), to: "counter/floor", msg: { _tag: "Get" }, t: Date.now() }))
  const headers = natsHeaders()
  let token = 0

  const round = async () => {
    const total = Math.round(rate * seconds)
    const latencies: Array<number> = []
    let outstanding = 0
    let drained: (() => void) | undefined
    const before = responders.map((r) => cpuSecondsOf(r.pid!))
    const natsPids = pidsOf("nats-server")
    const natsBefore = natsPids.map(cpuSecondsOf)
    const generatorBefore = process.cpuUsage()
    const start = performance.now()
    for (let sent = 0; sent < total;) {
      // Message k is due at k/rate: by time t, floor(t·rate) + 1 of them (without the + 1
      // each was sent a period late and its latency, counted from its due time, one period long).
      const due = Math.min(total, Math.floor(((performance.now() - start) / 1000) * rate) + 1)
      for (; sent < due; sent++) {
        const dueAt = start + (sent / rate) * 1000
        const until = performance.now() + generatorBurnMs
        while (performance.now() < until);
        const t = String(token++)
        outstanding++
        let awaiting = durable ? 2 : 1
        if (durable) dueAtOf.set(t, dueAt)
        pending.set(t, () => {
          if (--awaiting > 0) return
          pending.delete(t)
          dueAtOf.delete(t)
          latencies.push(performance.now() - dueAt)
          if (--outstanding === 0) drained?.()
        })
        if (durable) {
          const id = randomUUID()
          headers.set("Nats-Msg-Id", id)
          const data = Buffer.from(JSON.stringify({ id, to: "counter/floor", msg: { _tag: "Get" }, reply: `${inbox}.${t}`, t: Date.now() }))
          nc.publish(`${prefix}.cmd.${sent % 128}`, data, { reply: `${inbox}.${t}a`, headers })
        } else {
          nc.publish(`${prefix}.${sent % 128}`, payload, { reply: `${inbox}.${t}` })
        }
      }
      await new Promise((resolve) => setTimeout(resolve, 1))
    }
    if (outstanding > 0) await new Promise<void>((resolve) => (drained = resolve))
    const generator = process.cpuUsage(generatorBefore)
    const n = latencies.length
    const acks = storeAcks
    storeAcks = []
    return {
      p50_ms: percentile(latencies, 50),
      p99_ms: percentile(latencies, 99),
      store_ack_p50_ms: durable ? percentile(acks, 50) : undefined,
      store_ack_p99_ms: durable ? percentile(acks, 99) : undefined,
      responders_cpu_us_per_req: (responders.reduce((sum, r, i) => sum + cpuSecondsOf(r.pid!) - before[i]!, 0) * 1e6) / n,
      // Every nats-server on the machine: the shared one serves other work too, if any.
      nats_cpu_us_per_req: (natsPids.reduce((sum, pid, i) => sum + cpuSecondsOf(pid) - natsBefore[i]!, 0) * 1e6) / n,
      generator_cpu_us_per_req: (generator.user + generator.system) / n
    }
  }

  const results = []
  for (let i = 0; i < Number(values.rounds); i++) {
    const r = await round()
    results.push(r)
    const storeAck = r.store_ack_p99_ms === undefined ? "" : ` (the stream's ack alone: p50 ${r.store_ack_p50_ms!.toFixed(2)} ms, p99 ${r.store_ack_p99_ms.toFixed(2)} ms)`
    console.log(`round ${i + 1}: p50 ${r.p50_ms.toFixed(2)} ms, p99 ${r.p99_ms.toFixed(2)} ms${storeAck}, responders ${r.responders_cpu_us_per_req.toFixed(0)} µs/req, NATS ${r.nats_cpu_us_per_req.toFixed(0)} µs/req, generator ${r.generator_cpu_us_per_req.toFixed(0)} µs/req`)
  }
  const median = [...results].sort((a, b) => a.p99_ms - b.p99_ms)[Math.floor(results.length / 2)]!
  const round2 = (x: number) => Math.round(x * 100) / 100
  console.log(JSON.stringify({
    bench: "floor",
    offered_per_s: rate,
    effect: values.effect,
    durable,
    responder_burn_us: Number(values["responder-burn-us"]),
    generator_burn_us: Number(values["generator-burn-us"]),
    p50_ms: round2(median.p50_ms),
    p99_ms: round2(median.p99_ms),
    p99_ms_rounds: results.map((r) => round2(r.p99_ms)),
    ...(durable ? { store_ack_p99_ms_rounds: results.map((r) => round2(r.store_ack_p99_ms!)) } : {}),
    responders_cpu_us_per_req: round2(median.responders_cpu_us_per_req),
    nats_cpu_us_per_req: round2(median.nats_cpu_us_per_req),
    generator_cpu_us_per_req: round2(median.generator_cpu_us_per_req)
  }))
} finally {
  for (const r of responders) r.kill()
  if (durable) {
    await jsm.streams.delete(stream).catch((error: unknown) => console.error(`could not delete stream ${stream}: ${String(error)}`))
  }
  await nc.close()
}
