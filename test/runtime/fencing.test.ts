/**
 * Single ownership under a paused node: SIGSTOP a node until its shards move and take
 * writes elsewhere, SIGCONT it: it commits nothing for the shards it lost (checked in
 * PostgreSQL), then rejoins and takes its share back.
 */
import pg from "pg"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import type { ProbeCluster } from "./commandStream.ts"
import { expectAppliedExactlyOnce, startCommandStream, startProbeCluster } from "./commandStream.ts"
import type { ChorusCluster } from "../support/cluster.ts"
import { sleep } from "../support/processes.ts"
import type { RuntimeClient } from "../support/runtime.ts"
import { counterPerShard, ringOwners, waitConverged } from "../support/runtime.ts"

const SHARDS = 64
let probe: ProbeCluster
let cluster: ChorusCluster
let client: RuntimeClient
let db: pg.Client

beforeAll(async () => {
  probe = await startProbeCluster({ shards: SHARDS })
  ;({ cluster, client, db } = probe)
})

afterAll(async () => {
  await probe?.stop()
})

describe("fencing", () => {
  it("a node paused past its lease writes nothing for the shards it lost, then takes its share back", async () => {
    const url = cluster.nodes[0]!.url
    const token = cluster.operatorToken
    const owners = await ringOwners(url, token)
    const victimShards = new Set(owners.flatMap((o, shard) => (o === "node-2" ? [shard] : [])))
    const counters = counterPerShard(SHARDS, "fence").filter((_, shard) => victimShards.has(shard))
    expect(counters.length).toBeGreaterThan(5)

    // Traffic to the victim's shards the whole time, over both delivery modes, so the
    // paused node has work queued in its sockets when it wakes up.
    const stream = startCommandStream(client, counters, { prefix: "fence", senders: 12, delivery: (n) => (n % 2 === 0 ? "durable" : "volatile") })
    await sleep(1_000)

    const victim = cluster.node("node-2")
    const pausedAt = (await db.query<{ now: Date }>("SELECT clock_timestamp() AS now")).rows[0]!.now
    await victim.kill("SIGSTOP")
    await waitConverged(url, token, ["node-1", "node-3"])
    await sleep(1_500)
    await victim.kill("SIGCONT")
    await waitConverged(url, token, ["node-1", "node-2", "node-3"])
    await sleep(500)
    await stream.stop()
    expect(stream.failed).toEqual([])
    // Nothing acknowledged was lost, nothing applied twice.
    const rows = await expectAppliedExactlyOnce(db, cluster.name, stream.acked)
    // One writer per (shard, epoch): no epoch was ever shared by two nodes.
    const writers = new Map<string, Set<string>>()
    for (const r of rows) writers.set(`${r.shard}/${r.epoch}`, new Set([...(writers.get(`${r.shard}/${r.epoch}`) ?? []), r.node_id]))
    expect([...writers.entries()].filter(([, nodes]) => nodes.size > 1)).toEqual([])
    // No fork: on every shard, all writes under an epoch come before any write under
    // a later epoch. (A commit already in flight when the node froze may land under its
    // old epoch, but only before the successor raised the fence and wrote.)
    const spans = new Map<string, { shard: number; epoch: number; first: number; last: number }>()
    for (const r of rows) {
      const key = `${r.shard}/${r.epoch}`
      const t = r.applied_at.getTime()
      const span = spans.get(key) ?? { shard: r.shard, epoch: Number(r.epoch), first: t, last: t }
      spans.set(key, { ...span, first: Math.min(span.first, t), last: Math.max(span.last, t) })
    }
    const byShard = new Map<number, Array<{ epoch: number; first: number; last: number }>>()
    for (const span of spans.values()) byShard.set(span.shard, [...(byShard.get(span.shard) ?? []), span])
    for (const [shard, list] of byShard) {
      list.sort((a, b) => a.epoch - b.epoch)
      for (let i = 1; i < list.length; i++) {
        expect(list[i - 1]!.last, `shard ${shard}: epoch ${list[i - 1]!.epoch} wrote after epoch ${list[i]!.epoch} began`).toBeLessThanOrEqual(list[i]!.first)
      }
    }
    // The paused node, once back, wrote only under epochs newer than its successors'.
    const resumedAt = Math.max(...rows.filter((r) => r.node_id !== "node-2" && victimShards.has(r.shard)).map((r) => r.applied_at.getTime()))
    const maxEpochOfOthers = new Map<number, number>()
    for (const r of rows) {
      if (r.node_id !== "node-2") maxEpochOfOthers.set(r.shard, Math.max(maxEpochOfOthers.get(r.shard) ?? 0, Number(r.epoch)))
    }
    for (const r of rows.filter((r) => r.node_id === "node-2" && r.applied_at.getTime() > resumedAt)) {
      expect(Number(r.epoch)).toBeGreaterThan(maxEpochOfOthers.get(r.shard) ?? 0)
    }
    // Others served the lost shards during the pause.
    expect(rows.some((r) => r.node_id !== "node-2" && victimShards.has(r.shard) && r.applied_at > pausedAt)).toBe(true)
    // It took its share back.
    const status = await waitConverged(url, token, ["node-1", "node-2", "node-3"])
    expect(status.nodes.find((n) => n.id === "node-2")!.shards_held).toBe(victimShards.size)
  })
})
