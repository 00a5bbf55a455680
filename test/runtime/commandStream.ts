/**
 * What the runtime failure tests share: a stream of numbered increments to probe
 * counters from many concurrent senders, and the check that every acknowledged
 * command was applied exactly once, one at a time per counter.
 */
import { Effect } from "effect"
import pg from "pg"
import { expect } from "vitest"
import { Counter, Increment } from "../../src/actors/Counter.ts"
import { ShardingClient } from "../../src/runtime/ShardingClient.ts"
import type { ChorusCluster } from "../support/cluster.ts"
import { startCluster } from "../support/cluster.ts"
import type { RuntimeClient } from "../support/runtime.ts"
import { runtimeClient, waitConverged } from "../support/runtime.ts"
import { natsUrl as sharedNatsUrl } from "../support/services.ts"

export interface ProbeCluster {
  readonly cluster: ChorusCluster
  readonly client: RuntimeClient
  /** The cluster's own database, to check what was applied. */
  readonly db: pg.Client
  readonly stop: () => Promise<void>
}

/** Three node processes, converged, with a runtime client and a database connection. */
export const startProbeCluster = async (options: {
  readonly shards: number
  readonly natsUrl?: string
  readonly requestDeadlineMs?: number
}): Promise<ProbeCluster> => {
  const nats = options.natsUrl ?? sharedNatsUrl()
  const cluster = await startCluster({ nodes: 3, env: { CHORUS_SHARDS: String(options.shards), NATS_URL: nats } })
  // The caller gets nothing to stop if this fails: stop it here, or its database and
  // streams stay on the shared servers.
  await waitConverged(cluster.nodes[0]!.url, cluster.operatorToken, ["node-1", "node-2", "node-3"]).catch(async (error: unknown) => {
    await cluster.stopAll()
    throw error
  })
  const client = await runtimeClient({ natsUrl: nats, cluster: cluster.name, shards: options.shards, requestDeadlineMs: options.requestDeadlineMs ?? 25_000 })
  const db = new pg.Client({ connectionString: cluster.databaseUrl })
  await db.connect()
  return {
    cluster,
    client,
    db,
    stop: async () => {
      await db.end()
      await client.close()
      await cluster.stopAll()
    }
  }
}

export interface CommandStream {
  readonly acked: ReadonlySet<string>
  readonly failed: ReadonlyArray<string>
  /** Stops sending and waits for the commands in flight. */
  readonly stop: () => Promise<void>
}

export const startCommandStream = (
  client: RuntimeClient,
  counters: ReadonlyArray<string>,
  options: {
    readonly prefix: string
    readonly senders: number
    readonly delivery?: (sender: number) => "durable" | "volatile"
  }
): CommandStream => {
  const acked = new Set<string>()
  const failed: Array<string> = []
  let next = 0
  let running = true
  const sender = async (n: number) => {
    const delivery = options.delivery?.(n) ?? "durable"
    while (running) {
      const i = next++
      const commandId = `${options.prefix}-${i}`
      await client.run(ShardingClient.pipe(Effect.flatMap((c) =>
        c.send(Counter, counters[i % counters.length]!, new Increment({ amount: 1 }), { commandId, delivery })
      ))).then(() => acked.add(commandId), (error: unknown) => failed.push(`${commandId}: ${String(error)}`))
    }
  }
  const senders = Array.from({ length: options.senders }, (_, n) => sender(n))
  return {
    acked,
    failed,
    stop: async () => {
      running = false
      await Promise.all(senders)
    }
  }
}

export interface AppliedRow {
  readonly command_id: string
  readonly counter_id: string
  readonly value: string
  readonly node_id: string
  readonly shard: number
  readonly epoch: string
  readonly applied_at: Date
}

export const appliedCommands = async (db: pg.Client, cluster: string): Promise<ReadonlyArray<AppliedRow>> =>
  (await db.query<AppliedRow>(
    "SELECT command_id, counter_id, value, node_id, shard, epoch, applied_at FROM probe_counter_commands WHERE cluster = $1",
    [cluster]
  )).rows

/**
 * Every acknowledged command is applied, and each counter's applied commands carry the
 * values 1..n: applied once each, one at a time; the stored value agrees.
 */
export const expectAppliedExactlyOnce = async (db: pg.Client, cluster: string, acked: ReadonlySet<string>) => {
  const rows = await appliedCommands(db, cluster)
  const applied = new Set(rows.map((r) => r.command_id))
  expect([...acked].filter((id) => !applied.has(id)), "acknowledged but not applied").toEqual([])
  const values = new Map(
    (await db.query<{ counter_id: string; value: string }>("SELECT counter_id, value FROM probe_counters WHERE cluster = $1", [cluster])).rows
      .map((r) => [r.counter_id, Number(r.value)] as const)
  )
  const byCounter = new Map<string, Array<number>>()
  for (const r of rows) byCounter.set(r.counter_id, [...(byCounter.get(r.counter_id) ?? []), Number(r.value)])
  for (const [counter, seen] of byCounter) {
    seen.sort((a, b) => a - b)
    expect(seen, `values applied to ${counter}`).toEqual(seen.map((_, i) => i + 1))
    expect(values.get(counter), `stored value of ${counter}`).toBe(seen.length)
  }
  return rows
}
