/**
 * A NATS restart in the middle of a stream of durable commands: nodes reconnect and
 * serve again, and nothing acknowledged is lost. The test runs its own nats-server
 * (the machine's shared one is never touched).
 */
import { Effect } from "effect"
import pg from "pg"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { Counter, Get } from "../../src/actors/Counter.ts"
import type { ProbeCluster } from "./commandStream.ts"
import { expectAppliedExactlyOnce, startCommandStream, startProbeCluster } from "./commandStream.ts"
import { ShardingClient } from "../../src/runtime/ShardingClient.ts"
import type { ChorusCluster } from "../support/cluster.ts"
import type { NatsServer } from "../support/nats.ts"
import { startNatsServer } from "../support/nats.ts"
import { sleep } from "../support/processes.ts"
import type { RuntimeClient } from "../support/runtime.ts"
import { counterPerShard, waitConverged } from "../support/runtime.ts"

const SHARDS = 32
let nats: NatsServer
let probe: ProbeCluster
let cluster: ChorusCluster
let client: RuntimeClient
let db: pg.Client

beforeAll(async () => {
  nats = await startNatsServer()
  probe = await startProbeCluster({ shards: SHARDS, natsUrl: nats.url, requestDeadlineMs: 30_000 })
  ;({ cluster, client, db } = probe)
})

afterAll(async () => {
  await probe?.stop()
  await nats?.stop()
})

describe("NATS restart", () => {
  it("nodes reconnect and nothing acknowledged is lost", async () => {
    const counters = counterPerShard(SHARDS, "nr")
    const stream = startCommandStream(client, counters, { prefix: "nr", senders: 12 })
    await sleep(1_500)
    const beforeRestart = stream.acked.size
    await nats.restart()
    await waitConverged(cluster.nodes[0]!.url, cluster.operatorToken, ["node-1", "node-2", "node-3"], 45_000)
    const afterReconnect = stream.acked.size
    await sleep(2_000)
    await stream.stop()

    expect(stream.failed).toEqual([])
    expect(beforeRestart).toBeGreaterThan(20)
    expect(stream.acked.size).toBeGreaterThan(afterReconnect)
    await expectAppliedExactlyOnce(db, cluster.name, stream.acked)
    // Every shard answers again.
    const answers = await client.run(ShardingClient.pipe(Effect.flatMap((c) => Effect.forEach(counters, (id) => c.send(Counter, id, new Get()), { concurrency: 8 }))))
    expect(answers.length).toBe(SHARDS)
  })
})
