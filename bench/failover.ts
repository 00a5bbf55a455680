/**
 * bench:failover — five kill -9 rounds on a 3-node cluster under a steady stream of
 * durable commands. Per round: the time from the kill to the moment every shard the
 * victim owned answers again (from another node), polled every 25 ms per shard. At
 * the end: acknowledged commands missing from PostgreSQL (lost) and commands applied
 * twice (duplicated).
 *
 * Usage: npm run bench:failover [-- --rounds 5 --shards 128]
 * Prints a table, then one JSON line.
 */
import { Effect } from "effect"
import pg from "pg"
import { performance } from "node:perf_hooks"
import { parseArgs } from "node:util"
import { Counter, Get, Increment } from "../src/actors/Counter.ts"
import { ShardingClient } from "../src/runtime/ShardingClient.ts"
import { startCluster } from "../test/support/cluster.ts"
import { sleep } from "../test/support/processes.ts"
import { counterPerShard, ringOwners, runtimeClient, waitConverged } from "../test/support/runtime.ts"
import { natsUrl } from "../test/support/services.ts"
import { percentile, printTable } from "./report.ts"

const { values } = parseArgs({ options: { rounds: { type: "string", default: "5" }, shards: { type: "string", default: "128" } } })
const rounds = Number(values.rounds)
const shards = Number(values.shards)
const ids = ["node-1", "node-2", "node-3"]

const cluster = await startCluster({ nodes: 3, env: { CHORUS_SHARDS: String(shards), CHORUS_LOG_LEVEL: "WARN" } })
const stream = await runtimeClient({ natsUrl: natsUrl(), cluster: cluster.name, shards, requestDeadlineMs: 30_000 })
// A prober that gives up fast, so each probe says "served now?" at 25 ms resolution.
const prober = await runtimeClient({ natsUrl: natsUrl(), cluster: cluster.name, shards, requestTimeoutMs: 150, requestDeadlineMs: 200 })
const db = new pg.Client({ connectionString: cluster.databaseUrl })
await db.connect()
try {
  const url = cluster.node("node-1").url
  await waitConverged(url, cluster.operatorToken, ids)
  const counters = counterPerShard(shards, "fo")

  const acked = new Set<string>()
  let failed = 0
  let next = 0
  let running = true
  const worker = async () => {
    while (running) {
      const i = next++
      const commandId = `fo-${i}`
      await stream.run(ShardingClient.pipe(Effect.flatMap((c) => c.send(Counter, counters[i % shards]!, new Increment({ amount: 1 }), { commandId }))))
        .then(() => void acked.add(commandId), () => void failed++)
    }
  }
  const workers = Array.from({ length: 16 }, worker)
  await sleep(1_000)

  const results: Array<{ round: number; victim: string; shards: number; ms: number }> = []
  for (let round = 1; round <= rounds; round++) {
    const victim = ids[round % ids.length]!
    const owners = await ringOwners(url, cluster.operatorToken)
    const victimCounters = counters.filter((_, shard) => owners[shard] === victim)
    const survivorUrl = cluster.node(ids[(round + 1) % ids.length]!).url
    const killedAt = performance.now()
    await cluster.node(victim).kill("SIGKILL")
    const servedAt = await Promise.all(victimCounters.map(async (id) => {
      while (true) {
        const answer = await prober.run(ShardingClient.pipe(Effect.flatMap((c) => c.send(Counter, id, new Get())))).catch(() => undefined)
        if (answer !== undefined && answer.node !== victim) return performance.now()
        await sleep(25)
      }
    }))
    const ms = Math.max(...servedAt) - killedAt
    results.push({ round, victim, shards: victimCounters.length, ms })
    console.log(`round ${round}: killed ${victim} (${victimCounters.length} shards), all served again after ${ms.toFixed(0)} ms`)
    await cluster.node(victim).restart()
    await waitConverged(survivorUrl, cluster.operatorToken, ids, 60_000)
    await sleep(1_000)
  }
  running = false
  await Promise.all(workers)

  const rows = (await db.query<{ command_id: string; counter_id: string; value: string }>(
    "SELECT command_id, counter_id, value FROM probe_counter_commands WHERE cluster = $1",
    [cluster.name]
  )).rows
  const applied = new Set(rows.map((r) => r.command_id))
  const lost = [...acked].filter((id) => !applied.has(id)).length
  // Applied twice = a counter whose applied values are not exactly 1..n.
  const byCounter = new Map<string, Array<number>>()
  for (const r of rows) byCounter.set(r.counter_id, [...(byCounter.get(r.counter_id) ?? []), Number(r.value)])
  let duplicated = 0
  for (const valuesOf of byCounter.values()) {
    const distinct = new Set(valuesOf)
    duplicated += valuesOf.length - distinct.size + (Math.max(...valuesOf) - distinct.size)
  }
  const times = results.map((r) => r.ms)
  printTable(
    `bench:failover — 3 nodes, ${shards} shards, kill -9 under a durable command stream (${acked.size} commands acknowledged, ${failed} failed)`,
    ["round", "victim", "its shards", "kill → all served (ms)"],
    results.map((r) => [r.round, r.victim, r.shards, Math.round(r.ms)])
  )
  console.log(JSON.stringify({
    bench: "failover",
    rounds,
    shards,
    failover_ms_p50: Math.round(percentile(times, 50)),
    failover_ms_max: Math.round(Math.max(...times)),
    commands_acknowledged: acked.size,
    commands_failed: failed,
    lost,
    duplicated
  }))
} finally {
  await db.end()
  await prober.close()
  await stream.close()
  await cluster.stopAll()
}
