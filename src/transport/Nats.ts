/**
 * The one module that owns the NATS connection and every JetStream stream, consumer
 * naming and KV bucket of a cluster. Everything else asks it for handles, so the
 * cluster's NATS footprint can be read in one file.
 */
import { AckPolicy, DeliverPolicy, DiscardPolicy, jetstream, jetstreamManager, RetentionPolicy, StorageType } from "@nats-io/jetstream"
import type { JetStreamClient, JetStreamManager } from "@nats-io/jetstream"
import { Kvm } from "@nats-io/kv"
import type { KV } from "@nats-io/kv"
import { connect } from "@nats-io/transport-node"
import type { NatsConnection } from "@nats-io/transport-node"
import { Context, Data, Effect, Layer, Schedule } from "effect"
import { coalesceWrites } from "./NatsWriteCoalescing.ts"

export class NatsError extends Data.TaggedError("NatsError")<{
  readonly operation: string
  readonly cause: unknown
}> {
  override get message(): string {
    const detail = this.cause instanceof Error ? this.cause.message : String(this.cause)
    return `NATS ${this.operation} failed: ${detail}`
  }
}

/** Every NATS name of one cluster, derived from its namespace. */
export interface NatsNames {
  readonly cluster: string
  /** Stream of durable actor commands; one subject per shard. */
  readonly commandsStream: string
  readonly commandSubject: (shard: number) => string
  /** Durable consumer of one shard's commands, owned by the shard's current owner. */
  readonly commandConsumer: (shard: number) => string
  /** Core-NATS subject where the owner of a shard answers volatile requests. */
  readonly requestSubject: (shard: number) => string
  /** Stream of messages an actor could not process after its restart limit. */
  readonly deadLettersStream: string
  readonly deadLetterSubject: (actorType: string) => string
  /** KV buckets: membership heartbeats, shard leases, operator runtime config. */
  readonly nodesBucket: string
  readonly leasesBucket: string
  readonly configBucket: string
  /** Prefix for subjects that higher layers (chat events) own inside this cluster. */
  readonly subject: (suffix: string) => string
  readonly stream: (name: string) => string
}

export const makeNames = (cluster: string): NatsNames => {
  const upper = cluster.toUpperCase()
  return {
    cluster,
    commandsStream: `${upper}_COMMANDS`,
    commandSubject: (shard) => `${cluster}.cmd.${shard}`,
    commandConsumer: (shard) => `shard-${shard}`,
    requestSubject: (shard) => `${cluster}.req.${shard}`,
    deadLettersStream: `${upper}_DEADLETTERS`,
    deadLetterSubject: (actorType) => `${cluster}.dead.${actorType}`,
    nodesBucket: `${cluster}-nodes`,
    leasesBucket: `${cluster}-leases`,
    configBucket: `${cluster}-config`,
    subject: (suffix) => `${cluster}.${suffix}`,
    stream: (name) => `${upper}_${name}`
  }
}

export interface NatsShape {
  readonly nc: NatsConnection
  readonly js: JetStreamClient
  readonly jsm: JetStreamManager
  readonly names: NatsNames
  readonly nodes: KV
  readonly leases: KV
  readonly runtimeConfig: KV
  /** Runs a promise-returning NATS call as an Effect with a typed error. */
  readonly call: <A>(operation: string, f: () => Promise<A>) => Effect.Effect<A, NatsError>
}

export class Nats extends Context.Tag("chorus/Nats")<Nats, NatsShape>() {}

const call = <A>(operation: string, f: () => Promise<A>): Effect.Effect<A, NatsError> =>
  Effect.tryPromise({ try: f, catch: (cause) => new NatsError({ operation, cause }) })

export interface NatsOptions {
  readonly servers: string
  readonly cluster: string
  /** Connection name shown by the NATS server's monitoring. */
  readonly name: string
  /** Whether to create the streams and buckets (nodes do; plain clients need not). */
  readonly provision: boolean
}

/** Creates or updates the cluster's streams and buckets; safe to run on every start. */
const provision = (jsm: JetStreamManager, kvm: Kvm, names: NatsNames) =>
  Effect.gen(function*() {
    const ensureStream = (config: Parameters<JetStreamManager["streams"]["add"]>[0] & { name: string }) =>
      call(`stream ${config.name}`, async () => {
        try {
          return await jsm.streams.add(config)
        } catch (error) {
          // Exists already (perhaps with older limits): bring its limits up to date.
          if (error instanceof Error && /already in use|exists/i.test(error.message)) {
            return await jsm.streams.update(config.name, config)
          }
          throw error
        }
      })
    // Work-queue retention: a command is deleted once its owner acks it, so the
    // stream holds exactly the commands not yet applied, and a new owner's fresh
    // consumer starts at the first of them (no AckWait stall on failover).
    yield* ensureStream({
      name: names.commandsStream,
      subjects: [`${names.cluster}.cmd.>`],
      retention: RetentionPolicy.Workqueue,
      storage: StorageType.File,
      discard: DiscardPolicy.New,
      max_msgs: 1_000_000,
      max_bytes: 512 * 1024 * 1024,
      max_msg_size: 1024 * 1024,
      duplicate_window: 120 * 1_000_000_000,
      num_replicas: 1
    })
    yield* ensureStream({
      name: names.deadLettersStream,
      subjects: [`${names.cluster}.dead.>`],
      retention: RetentionPolicy.Limits,
      storage: StorageType.File,
      discard: DiscardPolicy.Old,
      max_msgs: 100_000,
      max_age: 7 * 24 * 3600 * 1_000_000_000,
      num_replicas: 1
    })
    // Channel events, as published by channel actors, for durable downstream consumers
    // (search indexing, the Events API). The timeline of record is PostgreSQL's
    // channel_events; this stream is a bounded feed, not an archive.
    yield* ensureStream({
      name: names.stream("EVENTS"),
      subjects: [`${names.cluster}.evt.ch.>`],
      retention: RetentionPolicy.Limits,
      storage: StorageType.File,
      discard: DiscardPolicy.Old,
      max_age: 24 * 3600 * 1_000_000_000,
      max_bytes: 1024 * 1024 * 1024,
      max_msg_size: 1024 * 1024,
      num_replicas: 1
    })
    // Node records are rewritten every heartbeat; a bucket-wide max age removes the
    // records of nodes that died long ago (NATS 2.9 has no per-key TTL).
    const nodes = yield* call("kv nodes", () => kvm.create(names.nodesBucket, { history: 1, ttl: 10 * 60_000 }))
    const leases = yield* call("kv leases", () => kvm.create(names.leasesBucket, { history: 1 }))
    const runtimeConfig = yield* call("kv config", () => kvm.create(names.configBucket, { history: 1 }))
    return { nodes, leases, runtimeConfig }
  })

const open = (kvm: Kvm, names: NatsNames) =>
  Effect.all({
    nodes: call("kv nodes", () => kvm.open(names.nodesBucket)),
    leases: call("kv leases", () => kvm.open(names.leasesBucket)),
    runtimeConfig: call("kv config", () => kvm.open(names.configBucket))
  })

export const make = (options: NatsOptions) =>
  Effect.gen(function*() {
    const names = makeNames(options.cluster)
    const nc = yield* Effect.acquireRelease(
      call("connect", () =>
        connect({
          servers: options.servers.split(",").map((s) => s.trim()),
          name: options.name,
          // Reconnect forever: a NATS restart must not take a node down.
          maxReconnectAttempts: -1,
          reconnectTimeWait: 250,
          reconnectJitter: 100,
          pingInterval: 5_000,
          waitOnFirstConnect: true,
          timeout: 5_000,
          // Async traces capture a stack (an Error) for every request, on the hot path of
          // every volatile send; errors still name their subject and cause.
          noAsyncTraces: true
        })
      ).pipe(Effect.retry({ schedule: Schedule.spaced("500 millis"), times: 20 })),
      (nc) => call("drain", () => nc.drain()).pipe(Effect.ignoreLogged)
    )
    if (!coalesceWrites(nc)) yield* Effect.logWarning("NATS writes not coalesced: unexpected nats.js internals (decision 0026)")
    const jsm = yield* call("jetstream manager", () => jetstreamManager(nc, { timeout: 5_000 }))
    const js = jetstream(nc, { timeout: 5_000 })
    const kvm = new Kvm(js)
    const buckets = options.provision ? yield* provision(jsm, kvm, names) : yield* open(kvm, names)
    return { nc, js, jsm, names, call, ...buckets } satisfies NatsShape
  })

export const layer = (options: NatsOptions): Layer.Layer<Nats, NatsError> => Layer.scoped(Nats, make(options))

export const consumerDefaults = {
  ack_policy: AckPolicy.Explicit,
  deliver_policy: DeliverPolicy.All
} as const
