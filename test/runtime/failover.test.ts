/**
 * Failover through real node processes: a kill -9 in the middle of a stream of
 * durable commands over every shard loses nothing acknowledged and applies nothing
 * twice; commands sent to a dead owner before anyone noticed are applied by the new
 * owner, with no retry by the sender.
 */
import { Effect } from "effect"
import pg from "pg"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { Counter, Get, Increment } from "../../src/actors/Counter.ts"
import type { ProbeCluster } from "./commandStream.ts"
import { appliedCommands, expectAppliedExactlyOnce, startCommandStream, startProbeCluster } from "./commandStream.ts"
import { ShardingClient } from "../../src/runtime/ShardingClient.ts"
import type { ChorusCluster } from "../support/cluster.ts"
import { sleep } from "../support/processes.ts"
import type { RuntimeClient } from "../support/runtime.ts"
import { counterPerShard, ringOwners, runtimeClient, waitConverged } from "../support/runtime.ts"
import { natsUrl } from "../support/services.ts"

const SHARDS = 128
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

describe("failover", () => {
  it("kill -9 of a node during a stream: every acknowledged command is applied exactly once", async () => {
    const counters = counterPerShard(SHARDS, "stream")
    const stream = startCommandStream(client, counters, { prefix: "stream", senders: 24 })
    // Mid-stream: at least 2 s in and a few dozen commands acknowledged (on a loaded
    // machine the first activations take longer than 2 s).
    await sleep(2_000)
    for (let waited = 0; stream.acked.size <= 20 && waited < 20_000; waited += 100) await sleep(100)
    const ackedBeforeKill = stream.acked.size
    await cluster.node("node-2").kill("SIGKILL")
    await sleep(4_000)
    await stream.stop()

    expect(stream.failed).toEqual([])
    expect(ackedBeforeKill).toBeGreaterThan(20)
    expect(stream.acked.size).toBeGreaterThan(ackedBeforeKill)
    await expectAppliedExactlyOnce(db, cluster.name, stream.acked)

    // The dead node's shards are served again, by the others.
    const status = await waitConverged(cluster.nodes[0]!.url, cluster.operatorToken, ["node-1", "node-3"])
    expect(status.shards_unheld).toBe(0)
    const answers = await client.run(
      ShardingClient.pipe(Effect.flatMap((c) => Effect.forEach(counters, (id) => c.send(Counter, id, new Get()), { concurrency: 16 })))
    )
    expect(new Set(answers.map((a) => a.node))).toEqual(new Set(["node-1", "node-3"]))
  })

  it("durable commands sent to a dead owner before anyone noticed are applied once by the new owner, without a retry", async () => {
    await cluster.node("node-2").restart()
    const url = cluster.nodes[0]!.url
    await waitConverged(url, cluster.operatorToken, ["node-1", "node-2", "node-3"])
    const owners = await ringOwners(url, cluster.operatorToken)
    const victimShards = new Set(owners.flatMap((owner, shard) => (owner === "node-3" ? [shard] : [])))
    const counters = counterPerShard(SHARDS, "orphan").filter((_, shard) => victimShards.has(shard)).slice(0, 24)
    expect(counters.length).toBeGreaterThan(10)

    // This sender re-asks only after 15 s, far beyond a failover: every reply below
    // comes from the new owner applying the stored command, not from a retry.
    const patient = await runtimeClient({ natsUrl: natsUrl(), cluster: cluster.name, shards: SHARDS, requestTimeoutMs: 15_000, requestDeadlineMs: 15_000 })
    await cluster.node("node-3").kill("SIGKILL")
    // Sent at once: the owner is dead, nobody knows yet, the commands wait in the stream.
    const replies = await patient.run(
      ShardingClient.pipe(
        Effect.flatMap((c) =>
          Effect.forEach(counters, (id) => c.send(Counter, id, new Increment({ amount: 1 }), { commandId: `orphan-${id}` }), {
            concurrency: "unbounded"
          })
        )
      )
    )
    await patient.close()
    for (const reply of replies) {
      expect(reply.fresh).toBe(true)
      expect(reply.node).not.toBe("node-3")
    }
    const rows = await appliedCommands(db, cluster.name)
    const orphans = rows.filter((r) => r.command_id.startsWith("orphan-"))
    expect(orphans.map((r) => r.command_id).sort()).toEqual(counters.map((id) => `orphan-${id}`).sort())
  })
})
