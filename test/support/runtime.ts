/**
 * A runtime client for tests and benchmarks: sends actor messages over NATS, from the
 * test process, like any gateway would (no node needed in-process).
 */
import { Duration, Effect, Layer, ManagedRuntime } from "effect"
import * as ChorusConfig from "../../src/config/ChorusConfig.ts"
import { ShardingClient } from "../../src/runtime/ShardingClient.ts"
import * as ShardingClientModule from "../../src/runtime/ShardingClient.ts"
import * as Nats from "../../src/transport/Nats.ts"
import * as SharedScheduler from "../../src/runtime/SharedScheduler.ts"
import { shardOf } from "../../src/runtime/Ring.ts"
import { postApi } from "./http.ts"
import { sleep } from "./processes.ts"

export interface RuntimeClient {
  readonly run: <A, E>(effect: Effect.Effect<A, E, ShardingClient>) => Promise<A>
  readonly close: () => Promise<void>
}

export const runtimeClient = async (options: {
  readonly natsUrl: string
  readonly cluster: string
  /** Must match the cluster's CHORUS_SHARDS. */
  readonly shards: number
  readonly requestTimeoutMs?: number
  readonly requestDeadlineMs?: number
}): Promise<RuntimeClient> => {
  const overrides = ChorusConfig.layer({
    cluster: options.cluster,
    natsUrl: options.natsUrl,
    shards: options.shards,
    ...(options.requestTimeoutMs === undefined ? {} : { requestTimeout: Duration.millis(options.requestTimeoutMs) }),
    ...(options.requestDeadlineMs === undefined ? {} : { requestDeadline: Duration.millis(options.requestDeadlineMs) })
  })
  const layer = ShardingClientModule.layer().pipe(
    Layer.provideMerge(Nats.layer({ servers: options.natsUrl, cluster: options.cluster, name: "test-client", provision: false })),
    Layer.provideMerge(overrides),
    Layer.provideMerge(SharedScheduler.layer)
  )
  const runtime = ManagedRuntime.make(layer)
  await runtime.runPromise(Effect.void)
  return { run: (effect) => runtime.runPromise(effect), close: () => runtime.dispose() }
}

/** One counter id per shard, so that a stream over them touches every shard. */
export const counterPerShard = (shards: number, prefix = "k"): ReadonlyArray<string> => {
  const byShard = new Map<number, string>()
  for (let i = 0; byShard.size < shards; i++) {
    const id = `${prefix}${i}`
    const shard = shardOf(`counter/${id}`, shards)
    if (!byShard.has(shard)) byShard.set(shard, id)
  }
  return [...byShard.entries()].sort(([a], [b]) => a - b).map(([, id]) => id)
}

export interface NodeStatus {
  readonly id: string
  readonly state: "up" | "draining" | "dead"
  readonly weight: number
  readonly shards_assigned: number
  readonly shards_held: number
}

export interface ClusterStatus {
  readonly ok: boolean
  readonly converged: boolean
  readonly shards: number
  readonly shards_unheld: number
  readonly nodes: ReadonlyArray<NodeStatus>
}

/** `cluster.status` as seen from the node at `url`. */
export const clusterStatus = async (url: string, operatorToken: string): Promise<ClusterStatus> =>
  (await postApi(url, "cluster.status", {}, operatorToken)) as unknown as ClusterStatus

/**
 * Polls `cluster.status` until every shard is held by the live node the ring assigns
 * it to and `live` nodes (exactly) are up; returns the final status.
 */
export const waitConverged = async (
  url: string,
  operatorToken: string,
  live: ReadonlyArray<string>,
  timeoutMs = 30_000
): Promise<ClusterStatus> => {
  const deadline = Date.now() + timeoutMs
  let last: ClusterStatus | undefined
  while (Date.now() < deadline) {
    last = await clusterStatus(url, operatorToken).catch(() => undefined)
    if (last?.ok === true && last.converged) {
      const up = last.nodes.filter((n) => n.state === "up").map((n) => n.id).sort()
      if (JSON.stringify(up) === JSON.stringify([...live].sort())) return last
    }
    await sleep(100)
  }
  throw new Error(`cluster did not converge on ${live.join(",")} within ${timeoutMs} ms; last status: ${JSON.stringify(last)}`)
}

/** Shard → owner, from `cluster.ring` of the node at `url`. */
export const ringOwners = async (url: string, operatorToken: string): Promise<ReadonlyArray<string | null>> => {
  const ring = await postApi(url, "cluster.ring", {}, operatorToken)
  return ring["owners"] as ReadonlyArray<string | null>
}
