/**
 * bench:runtime — round trips through a real 3-node cluster (three node processes,
 * NATS, PostgreSQL), from a load generator in this separate process, to probe-counter
 * actors spread over every shard (one per shard).
 *
 * The runtime round trip (the target) uses `Get`: sender → mailbox (durable:
 * JetStream stream and the shard's consumer, acked after the handler; volatile: core
 * NATS request) → owner → actor → reply. The persisted round trip uses `Increment`,
 * which the actor group-commits to PostgreSQL before replying.
 *
 * Phases: a fixed offered rate (open loop: latency is measured from the moment each
 * command was due, so a stall counts in full) and saturation (closed loop).
 *
 * Before the phases, `--warmup` seconds of both kinds of traffic at the offered rate
 * (not measured) let the JIT compile the hot paths of every process.
 *
 * The generator sends through `bench/wireClient.ts` (the same bytes as ShardingClient,
 * without its per-send fiber; decision 0024), or through ShardingClient with
 * `--client effect`.
 *
 * `--rounds N` repeats each fixed-rate phase N times (the durable and volatile ones
 * alternating) and reports the round with the median p99 (the worse middle one for an
 * even N), with every round's p99.
 *
 * Usage: npm run bench:runtime [-- --rate 5000 --seconds 10 --concurrency 256 --warmup 2 --only durable,volatile,persisted --client wire|effect --rounds 1]
 * Prints a table, then one JSON line.
 */
import { connect } from "@nats-io/transport-node"
import { Effect } from "effect"
import { performance, PerformanceObserver } from "node:perf_hooks"
import { parseArgs } from "node:util"
import { Counter, Get, Increment } from "../src/actors/Counter.ts"
import { ShardingClient } from "../src/runtime/ShardingClient.ts"
import { startCluster } from "../test/support/cluster.ts"
import { counterPerShard, runtimeClient, waitConverged } from "../test/support/runtime.ts"
import { natsUrl } from "../test/support/services.ts"
import { cpuSecondsOf, cpuSince, cpuSnapshot, pidsOf } from "./processCpu.ts"
import { percentile, printTable } from "./report.ts"
import { wireClient } from "./wireClient.ts"

const { values } = parseArgs({
  options: {
    rate: { type: "string", default: "5000" },
    seconds: { type: "string", default: "10" },
    concurrency: { type: "string", default: "256" },
    shards: { type: "string", default: "128" },
    "persisted-rate": { type: "string", default: "1000" },
    warmup: { type: "string", default: "2" },
    /** Comma-separated phases to run (durable, volatile, persisted); default all. */
    only: { type: "string", default: "durable,volatile,persisted" },
    /** `wire`: the lean generator client (bench/wireClient.ts); `effect`: ShardingClient. */
    client: { type: "string", default: "wire" },
    /**
     * Fixed-rate rounds per delivery mode; the table and the JSON report the round with
     * the median p99 and list every round's p99 (this machine's speed varies by the minute).
     */
    rounds: { type: "string", default: "1" }
  }
})
if (values.client !== "wire" && values.client !== "effect") throw new Error(`--client must be wire or effect, not ${values.client}`)
const phases = new Set(values.only!.split(","))
const rate = Number(values.rate)
let seconds = Number(values.seconds)
const concurrency = Number(values.concurrency)
const shards = Number(values.shards)

const cluster = await startCluster({
  nodes: 3,
  env: { CHORUS_SHARDS: String(shards), CHORUS_DB_POOL: "12", CHORUS_LOG_LEVEL: "WARN" }
})
const client = await runtimeClient({ natsUrl: natsUrl(), cluster: cluster.name, shards })
const wireConnection = await connect({ servers: natsUrl(), name: "bench-wire-client" })
const wire = wireClient(wireConnection, { cluster: cluster.name, shards })
try {
  await waitConverged(cluster.nodes[0]!.url, cluster.operatorToken, ["node-1", "node-2", "node-3"])
  const counters = counterPerShard(shards, "bench")
  // CPU per command, by side: what the load generator spends is not the cluster's, but
  // on two shared cores it is taken from the cluster all the same.
  // Service pids are listed at each reading: PostgreSQL starts a backend per new pool
  // connection, and one started during a phase counts from its start. One that exits
  // during a phase takes its figures with it (an undercount, not a wrong sign).
  const nodePids = cluster.nodes.map((n) => n.pid!).filter(Boolean)
  type Cpu = { readonly nodes: number; readonly services: ReadonlyMap<number, number>; readonly generator: number }
  const servicePids = () => [...pidsOf("nats-server"), ...pidsOf("postgres")]
  const cpuNow = (): Cpu => {
    const usage = process.cpuUsage()
    return {
      nodes: nodePids.reduce((sum, pid) => sum + cpuSecondsOf(pid), 0),
      services: cpuSnapshot(servicePids()),
      generator: (usage.user + usage.system) / 1e6
    }
  }
  const cpuPerCommand = (before: Cpu, commands: number) => {
    const after = cpuNow()
    const us = (s: number) => commands > 0 ? (s * 1e6) / commands : NaN
    return { nodes: us(after.nodes - before.nodes), services: us(cpuSince(before.services, servicePids())), generator: us(after.generator - before.generator) }
  }
  // The generator's own GC pauses, to tell how much of a fixed-rate phase's tail is
  // this process's (a request in flight during one of its pauses waits it out).
  const generatorPauses: Array<readonly [start: number, ms: number]> = []
  const gcObserver = new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) generatorPauses.push([entry.startTime, entry.duration])
  })
  gcObserver.observe({ entryTypes: ["gc"] })
  /** Of the requests slower than `slowMs` in [from, to], how many overlapped a generator pause. */
  const generatorShare = (from: number, to: number, slow: ReadonlyArray<readonly [number, number]>) => {
    const pauses = generatorPauses.filter(([start]) => start >= from && start <= to)
    const overlapping = slow.filter(([due, done]) => pauses.some(([start, ms]) => start < done && start + ms > due)).length
    return { pauses: pauses.length, pausedMs: pauses.reduce((sum, [, ms]) => sum + ms, 0), slow: slow.length, overlapping }
  }
  const slowMs = 10
  type Kind = "get" | "increment"
  // The generator's own pauses count in every latency it measures: it builds each
  // message once (they are immutable) and looks the client up once, not per send.
  const sharding = await client.run(ShardingClient)
  const get = new Get()
  const increment = new Increment({ amount: 1 })
  const send = values.client === "effect"
    ? (i: number, delivery: "durable" | "volatile", kind: Kind = "get") =>
      client.run(Effect.asVoid(sharding.send(Counter, counters[i % counters.length]!, kind === "get" ? get : increment, { delivery })))
    : (i: number, delivery: "durable" | "volatile", kind: Kind = "get") =>
      wire.send(Counter, counters[i % counters.length]!, kind === "get" ? get : increment, delivery)
  // Warm up: activate every actor on its owner.
  await Promise.all(counters.map((_, i) => send(i, "volatile")))

  /** Open loop at `rate`/s for `seconds`: each command is due at a fixed time. */
  const openLoop = async (delivery: "durable" | "volatile", kind: Kind = "get", offered = rate) => {
    const total = Math.round(offered * seconds)
    const latencies: Array<number> = []
    const slow: Array<readonly [number, number]> = []
    let errors = 0
    // Outstanding sends are counted, not kept: holding every promise until the end made
    // them all survive young-generation GC, a fifth of this process's CPU.
    let outstanding = 0
    let drained: (() => void) | undefined
    const settled = () => {
      if (--outstanding === 0) drained?.()
    }
    const cpuBefore = cpuNow()
    const start = performance.now()
    let sent = 0
    while (sent < total) {
      const now = performance.now()
      // Message k is due at k/rate: by time t, floor(t·rate) + 1 of them (without the + 1
      // each was sent a period late and its latency, counted from its due time, one period long).
      const due = Math.min(total, Math.floor(((now - start) / 1000) * offered) + 1)
      for (; sent < due; sent++) {
        const dueAt = start + (sent / offered) * 1000
        outstanding++
        send(sent, delivery, kind).then(() => {
          const done = performance.now()
          latencies.push(done - dueAt)
          if (done - dueAt > slowMs) slow.push([dueAt, done])
          settled()
        }, (error: unknown) => {
          if (errors++ === 0) console.error(`first ${delivery} ${kind} error: ${String(error).slice(0, 300)}`)
          settled()
        })
      }
      await new Promise((resolve) => setTimeout(resolve, 1))
    }
    if (outstanding > 0) await new Promise<void>((resolve) => (drained = resolve))
    const elapsed = (performance.now() - start) / 1000
    const cpu = cpuPerCommand(cpuBefore, latencies.length)
    const gc = generatorShare(start, performance.now(), slow)
    return { delivery, offered, achieved: latencies.length / elapsed, p50: percentile(latencies, 50), p99: percentile(latencies, 99), errors, cpu, gc }
  }

  /** Closed loop with `concurrency` senders: the most the cluster sustains. */
  const saturation = async (delivery: "durable" | "volatile", kind: Kind = "get") => {
    const latencies: Array<number> = []
    let errors = 0
    let next = 0
    const end = performance.now() + seconds * 1000
    const worker = async () => {
      while (performance.now() < end) {
        const t0 = performance.now()
        await send(next++, delivery, kind).then(() => void latencies.push(performance.now() - t0), () => void errors++)
      }
    }
    const cpuBefore = cpuNow()
    const start = performance.now()
    await Promise.all(Array.from({ length: concurrency }, worker))
    const elapsed = (performance.now() - start) / 1000
    const cpu = cpuPerCommand(cpuBefore, latencies.length)
    return { delivery, perSecond: latencies.length / elapsed, p50: percentile(latencies, 50), p99: percentile(latencies, 99), errors, cpu }
  }

  const warmup = Number(values.warmup)
  if (warmup > 0) {
    const measured = seconds
    seconds = warmup
    await openLoop("volatile")
    await openLoop("durable", "get", Math.min(rate, 2_000))
    seconds = measured
  }

  const noCpu = { nodes: NaN, services: NaN, generator: NaN }
  const skippedOpen = (delivery: "durable" | "volatile", offered: number) => ({ delivery, offered, achieved: NaN, p50: NaN, p99: NaN, errors: 0, cpu: noCpu, gc: undefined })
  const skippedSat = (delivery: "durable" | "volatile") => ({ delivery, perSecond: NaN, p50: NaN, p99: NaN, errors: 0, cpu: noCpu })
  const rounds = Math.max(1, Number(values.rounds))
  type OpenResult = Awaited<ReturnType<typeof openLoop>>
  const durableRounds: Array<OpenResult> = []
  const volatileRounds: Array<OpenResult> = []
  for (let r = 0; r < rounds; r++) {
    if (phases.has("durable")) durableRounds.push(await openLoop("durable"))
    if (phases.has("volatile")) volatileRounds.push(await openLoop("volatile"))
  }
  /** The round with the median p99 (the upper middle one, the worse, for an even count). */
  const medianRound = (results: ReadonlyArray<OpenResult>) => [...results].sort((a, b) => a.p99 - b.p99)[Math.floor(results.length / 2)]
  const durable = medianRound(durableRounds) ?? skippedOpen("durable", rate)
  const volatile = medianRound(volatileRounds) ?? skippedOpen("volatile", rate)
  const satDurable = phases.has("durable") ? await saturation("durable") : skippedSat("durable")
  const satVolatile = phases.has("volatile") ? await saturation("volatile") : skippedSat("volatile")
  const persistedRate = Number(values["persisted-rate"])
  const persisted = phases.has("persisted") ? await openLoop("volatile", "increment", persistedRate) : skippedOpen("volatile", persistedRate)
  const satPersisted = phases.has("persisted") ? await saturation("volatile", "increment") : skippedSat("volatile")

  printTable(
    `bench:runtime — 3 nodes, ${shards} shards, ${counters.length} actors, ${values.client} client (Get: runtime round trip; Increment: persisted in PostgreSQL)`,
    ["phase", "delivery", "offered/s", "achieved/s", "p50 ms", "p99 ms", "errors", "nodes µs/cmd", "NATS+PG µs/cmd", "generator µs/cmd"],
    [
      ["fixed rate", "durable", durable.offered, durable.achieved, durable.p50, durable.p99, durable.errors, ...cpuCells(durable.cpu)],
      ["fixed rate", "volatile", volatile.offered, volatile.achieved, volatile.p50, volatile.p99, volatile.errors, ...cpuCells(volatile.cpu)],
      [`saturation (${concurrency} senders)`, "durable", "-", satDurable.perSecond, satDurable.p50, satDurable.p99, satDurable.errors, ...cpuCells(satDurable.cpu)],
      [`saturation (${concurrency} senders)`, "volatile", "-", satVolatile.perSecond, satVolatile.p50, satVolatile.p99, satVolatile.errors, ...cpuCells(satVolatile.cpu)],
      ["persisted, fixed rate", "volatile", persisted.offered, persisted.achieved, persisted.p50, persisted.p99, persisted.errors, ...cpuCells(persisted.cpu)],
      [`persisted, saturation`, "volatile", "-", satPersisted.perSecond, satPersisted.p50, satPersisted.p99, satPersisted.errors, ...cpuCells(satPersisted.cpu)]
    ]
  )
  for (const [name, phase] of [["durable", durable], ["volatile", volatile], ["persisted", persisted]] as const) {
    if (phase.gc === undefined) continue
    const { pauses, pausedMs, slow: slowCount, overlapping } = phase.gc
    console.log(
      `${name} fixed rate: the generator paused for GC ${pauses} times (${Math.round(pausedMs)} ms); ` +
        `${overlapping} of the ${slowCount} requests over ${slowMs} ms overlapped one of those pauses`
    )
  }
  if (rounds > 1) {
    for (const [name, results] of [["durable", durableRounds], ["volatile", volatileRounds]] as const) {
      if (results.length > 0) console.log(`${name} fixed-rate p99 by round: ${results.map((r) => r.p99.toFixed(2)).join(" / ")} ms (the table shows the median round)`)
    }
  }
  gcObserver.disconnect()
  console.log(JSON.stringify({
    bench: "runtime",
    client: values.client,
    nodes: 3,
    shards,
    offered_per_s: rate,
    achieved_per_s: round(durable.achieved),
    p50_ms: round(durable.p50),
    p99_ms: round(durable.p99),
    p99_ms_rounds: durableRounds.map((r) => round(r.p99)),
    max_per_s: round(satDurable.perSecond),
    volatile_achieved_per_s: round(volatile.achieved),
    volatile_p50_ms: round(volatile.p50),
    volatile_p99_ms: round(volatile.p99),
    volatile_p99_ms_rounds: volatileRounds.map((r) => round(r.p99)),
    volatile_max_per_s: round(satVolatile.perSecond),
    node_cpu_us_per_cmd: round(durable.cpu.nodes),
    volatile_node_cpu_us_per_cmd: round(volatile.cpu.nodes),
    volatile_generator_cpu_us_per_cmd: round(volatile.cpu.generator),
    persisted_offered_per_s: persistedRate,
    persisted_p50_ms: round(persisted.p50),
    persisted_p99_ms: round(persisted.p99),
    persisted_max_per_s: round(satPersisted.perSecond),
    errors: durable.errors + volatile.errors + satDurable.errors + satVolatile.errors + persisted.errors + satPersisted.errors
  }))
} finally {
  wire.close()
  await wireConnection.close()
  await client.close()
  await cluster.stopAll()
}

function cpuCells(cpu: { readonly nodes: number; readonly services: number; readonly generator: number }) {
  return [Math.round(cpu.nodes), Math.round(cpu.services), Math.round(cpu.generator)]
}

function round(n: number) {
  return Math.round(n * 100) / 100
}
