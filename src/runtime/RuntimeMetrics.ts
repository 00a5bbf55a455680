/**
 * The runtime's Prometheus metrics (prom-client), one registry per node process,
 * exposed as text at `/metrics`. Labels stay low-cardinality (actor type, delivery
 * mode); per-shard figures are in `cluster.status`, not in labels.
 */
import { Context, Effect, Layer } from "effect"
import * as Prom from "prom-client"

export interface RuntimeMetricsShape {
  readonly registry: Prom.Registry
  readonly actorsAlive: Prom.Gauge<"type">
  readonly shardsOwned: Prom.Gauge
  readonly mailboxDepth: Prom.Gauge
  readonly messages: Prom.Counter<"type" | "delivery" | "outcome">
  readonly processingSeconds: Prom.Histogram<"type">
  readonly batchSize: Prom.Histogram<"type">
  readonly restarts: Prom.Counter<"type">
  readonly deadLetters: Prom.Counter<"type">
  readonly retriesJoined: Prom.Counter<"type">
  readonly leaseChanges: Prom.Counter<"change">
  readonly sendSeconds: Prom.Histogram<"delivery">
  readonly groupCommitSeconds: Prom.Histogram<"path">
  readonly groupCommitSize: Prom.Histogram
}

export class RuntimeMetrics extends Context.Tag("chorus/runtime/RuntimeMetrics")<RuntimeMetrics, RuntimeMetricsShape>() {}

export const make = (nodeId: string): RuntimeMetricsShape => {
  const registry = new Prom.Registry()
  registry.setDefaultLabels({ node: nodeId })
  // The event-loop lag histogram samples with a timer: at prom-client's default (10 ms)
  // that timer was most of an idle node's wake-ups (100 of ~130 a second) and of its
  // CPU on this VM. Sampled every 100 ms, a stall of 100 ms or more is still always
  // seen, a shorter one in proportion (decision 0029).
  Prom.collectDefaultMetrics({ register: registry, eventLoopMonitoringPrecision: 100 })
  const latencyBuckets = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5]
  return {
    registry,
    actorsAlive: new Prom.Gauge({ name: "chorus_actors_alive", help: "Activated actors on this node", labelNames: ["type"], registers: [registry] }),
    shardsOwned: new Prom.Gauge({ name: "chorus_shards_owned", help: "Shards this node serves", registers: [registry] }),
    mailboxDepth: new Prom.Gauge({ name: "chorus_mailbox_depth", help: "Messages queued in actor mailboxes on this node", registers: [registry] }),
    messages: new Prom.Counter({
      name: "chorus_messages_total",
      help: "Messages handled by actors",
      labelNames: ["type", "delivery", "outcome"],
      registers: [registry]
    }),
    processingSeconds: new Prom.Histogram({
      name: "chorus_message_processing_seconds",
      help: "Time from a message's send to its reply, as seen by the owner",
      labelNames: ["type"],
      buckets: latencyBuckets,
      registers: [registry]
    }),
    batchSize: new Prom.Histogram({
      name: "chorus_actor_batch_size",
      help: "Messages per actor batch (group commit size)",
      labelNames: ["type"],
      buckets: [1, 2, 4, 8, 16, 32, 64, 128, 256],
      registers: [registry]
    }),
    restarts: new Prom.Counter({ name: "chorus_actor_restarts_total", help: "Actor restarts after a defect", labelNames: ["type"], registers: [registry] }),
    deadLetters: new Prom.Counter({ name: "chorus_dead_letters_total", help: "Messages sent to the dead-letter stream", labelNames: ["type"], registers: [registry] }),
    retriesJoined: new Prom.Counter({
      name: "chorus_retries_joined_total",
      help: "Volatile retries that waited for their original (queued or in flight) instead of queueing a copy",
      labelNames: ["type"],
      registers: [registry]
    }),
    leaseChanges: new Prom.Counter({
      name: "chorus_lease_changes_total",
      help: "Shard leases acquired, released or lost by this node",
      labelNames: ["change"],
      registers: [registry]
    }),
    sendSeconds: new Prom.Histogram({
      name: "chorus_send_seconds",
      help: "Round trip of requests sent from this process to actors",
      labelNames: ["delivery"],
      buckets: latencyBuckets,
      registers: [registry]
    }),
    groupCommitSeconds: new Prom.Histogram({
      name: "chorus_group_commit_seconds",
      help: "PostgreSQL time of one group commit (one_trip: a single query; long: fences checked one by one)",
      labelNames: ["path"],
      buckets: latencyBuckets,
      registers: [registry]
    }),
    groupCommitSize: new Prom.Histogram({
      name: "chorus_group_commit_size",
      help: "Actor batches merged into one group commit",
      buckets: [1, 2, 4, 8, 16, 32, 64, 128, 256, 512],
      registers: [registry]
    })
  }
}

export const layer = (nodeId: string) => Layer.sync(RuntimeMetrics, () => make(nodeId))

export const render = Effect.gen(function*() {
  const metrics = yield* RuntimeMetrics
  return yield* Effect.promise(() => metrics.registry.metrics())
})
