/**
 * Cluster membership over NATS KV (`<cluster>-nodes`): every node rewrites its record
 * each heartbeat interval and watches the bucket. A node is live while its last
 * heartbeat is younger than the failure timeout. NATS 2.9 KV has no per-key TTL nor
 * expiry events, so liveness is judged from the heartbeat timestamps, re-evaluated on
 * a timer, never from key deletion.
 *
 * The same heartbeat renews all of this node's shard leases (see ShardLeases): the
 * node holds its leases while `leaseValid` is true.
 */
import { Cause, Context, Duration, Effect, Either, Layer, Ref, Runtime, Schedule, Schema, SubscriptionRef } from "effect"
import type { Stream } from "effect"
import { randomUUID } from "node:crypto"
import { performance } from "node:perf_hooks"
import { ChorusConfig } from "../config/ChorusConfig.ts"
import { Nats } from "../transport/Nats.ts"

const NodeStateSchema = Schema.Literal("up", "draining")
export type NodeState = typeof NodeStateSchema.Type

const NodeStatsSchema = Schema.Struct({
  shards: Schema.Number,
  actors: Schema.Number,
  /** Messages handled per second, averaged over the last few seconds. */
  messagesPerSecond: Schema.Number
})
export type NodeStats = typeof NodeStatsSchema.Type

/** A node's heartbeat record in the nodes bucket. */
const NodeRecordSchema = Schema.Struct({
  id: Schema.String,
  incarnation: Schema.String,
  url: Schema.String,
  weight: Schema.Number,
  state: NodeStateSchema,
  /** Sender's wall clock at the heartbeat, ms. */
  heartbeatAt: Schema.Number,
  startedAt: Schema.Number,
  stats: NodeStatsSchema
})
export type NodeRecord = typeof NodeRecordSchema.Type
const decodeNodeRecord = Schema.decodeUnknownEither(Schema.parseJson(NodeRecordSchema))

export interface MembershipView {
  /** Every record in the bucket, live or not, by node id. */
  readonly nodes: ReadonlyMap<string, NodeRecord>
  /** Live nodes in state `up`: the ones the ring places shards on. */
  readonly placeable: ReadonlyArray<NodeRecord>
  /** Live nodes in any state. */
  readonly live: ReadonlyArray<NodeRecord>
}

export interface MembershipShape {
  readonly self: { readonly id: string; readonly incarnation: string }
  /** The current view (its records at most 100 ms old). */
  readonly view: Effect.Effect<MembershipView>
  /** The view now, then each time the live set, a state or a weight changes. */
  readonly changes: Stream.Stream<MembershipView>
  /** Whether a node (incarnation) counts as live now. */
  readonly isLive: (node: string, incarnation: string) => Effect.Effect<boolean>
  /** True while this node's own heartbeat is fresh enough for it to serve its shards. */
  readonly leaseValid: Effect.Effect<boolean>
  readonly setState: (state: NodeState) => Effect.Effect<void>
  readonly setWeight: (weight: number) => Effect.Effect<void>
  readonly setStats: (stats: NodeStats) => Effect.Effect<void>
  /** Writes the heartbeat now (after a state change, so others learn at once). */
  readonly beat: Effect.Effect<void>
}

export class Membership extends Context.Tag("chorus/runtime/Membership")<Membership, MembershipShape>() {}

/** KV key of a node's record (ids may contain dots, which KV treats as separators). */
export const nodeKey = (node: string) => node.replace(/[^A-Za-z0-9_-]/g, "_")

const signature = (view: MembershipView) =>
  view.live.map((n) => `${n.id}:${n.incarnation}:${n.weight}:${n.state}`).sort().join(",")

export const make = Effect.gen(function*() {
  const config = yield* ChorusConfig
  const nats = yield* Nats
  const failureMs = Duration.toMillis(config.failureTimeout)
  const validMs = failureMs - Duration.toMillis(config.leaseSafetyMargin)
  const self = { id: config.nodeId, incarnation: randomUUID() }
  const startedAt = Date.now()
  const runtime = yield* Effect.runtime<never>()

  const own = yield* Ref.make({ state: "up" as NodeState, weight: config.weight, stats: { shards: 0, actors: 0, messagesPerSecond: 0 } })
  // Monotonic time at which the last successful heartbeat was sent (-Infinity: never).
  let lastGoodBeat = Number.NEGATIVE_INFINITY
  let lastOwnEcho = performance.now()
  const records = new Map<string, NodeRecord>()

  /**
   * The clock against which heartbeats are judged: this node's own latest heartbeat as
   * it came back through the watch, not the wall clock. If the watch lags (a loaded
   * machine, a slow NATS), everyone's records are old together and nobody looks dead;
   * a node is dead only when it fell behind the others.
   */
  const reference = (now: number) => {
    const mine = records.get(self.id)
    return mine === undefined || mine.incarnation !== self.incarnation ? now : Math.min(now, mine.heartbeatAt)
  }
  const isFresh = (r: NodeRecord, ref: number) => ref - r.heartbeatAt < failureMs

  const deriveView = (now: number): MembershipView => {
    const ref = reference(now)
    const live = [...records.values()].filter((r) => isFresh(r, ref)).sort((a, b) => a.id.localeCompare(b.id))
    return { nodes: new Map(records), live, placeable: live.filter((r) => r.state === "up") }
  }
  const initial = deriveView(Date.now())
  /** The latest view, for reads. */
  const latest = yield* Ref.make(initial)
  /** The last view that changed something, for subscribers. (`Ref.set` on a
   *  SubscriptionRef publishes too: the fresh records go to `latest` alone.) */
  const published = yield* SubscriptionRef.make(initial)

  const publish = Effect.gen(function*() {
    const next = deriveView(Date.now())
    yield* Ref.set(latest, next)
    if (signature(next) !== signature(yield* SubscriptionRef.get(published))) {
      yield* Effect.logInfo("membership changed", { live: next.live.map((n) => `${n.id}(${n.state})`) })
      yield* SubscriptionRef.set(published, next)
    }
  })

  const beat = Effect.gen(function*() {
    const mine = yield* Ref.get(own)
    const record: NodeRecord = {
      id: self.id,
      incarnation: self.incarnation,
      url: config.advertiseUrl,
      weight: mine.weight,
      state: mine.state,
      heartbeatAt: Date.now(),
      startedAt,
      stats: mine.stats
    }
    const sentAt = performance.now()
    yield* nats.call("heartbeat", () => nats.nodes.put(nodeKey(self.id), JSON.stringify(record)))
    lastGoodBeat = Math.max(lastGoodBeat, sentAt)
  })

  // The loops below must outlive any one failure, defects included: a loop that died
  // would leave this node's view (or its heartbeat) frozen, silently.
  const heartbeatLoop = beat.pipe(
    Effect.catchAllCause((cause) => Effect.logWarning("heartbeat failed", { cause: Cause.pretty(cause) })),
    Effect.repeat(Schedule.spaced(config.heartbeatInterval))
  )

  const apply = (key: string, operation: string, value: Uint8Array) => {
    if (operation !== "PUT") {
      for (const id of records.keys()) if (nodeKey(id) === key) records.delete(id)
      return
    }
    // A foreign or corrupt record is ignored, not fatal (one without an id would have
    // broken every later view): log it once per occurrence.
    const decoded = decodeNodeRecord(new TextDecoder().decode(value))
    if (Either.isLeft(decoded)) {
      Runtime.runFork(runtime)(Effect.logWarning("bad membership record", { key, error: decoded.left.message.slice(0, 500) }))
      return
    }
    const record = decoded.right
    if (record.id === self.id && record.incarnation === self.incarnation) lastOwnEcho = performance.now()
    // An older incarnation's late write must not replace our own fresher record.
    const existing = records.get(record.id)
    if (existing === undefined || existing.heartbeatAt <= record.heartbeatAt || existing.incarnation !== record.incarnation) {
      records.set(record.id, record)
    }
  }

  // The watcher is an ordered consumer; if it ever stops delivering (our own
  // heartbeats no longer echo back), it is recreated. nats.js would notice only after
  // two missed idle heartbeats, 60 s. `raceFirst`: the staleness check ends the race by
  // failing (`race` would wait on for a success from the silent watch).
  const watchOnce = Effect.gen(function*() {
    const iterator = yield* nats.call("membership watch", () => nats.nodes.watch())
    lastOwnEcho = performance.now()
    const staleAfter = Math.max(4 * Duration.toMillis(config.heartbeatInterval), failureMs)
    yield* Effect.raceFirst(
      Effect.tryPromise({
        try: async () => {
          for await (const entry of iterator) apply(entry.key, entry.operation, entry.value)
        },
        catch: (cause) => cause
      }),
      Effect.repeat(
        Effect.suspend(() => (performance.now() - lastOwnEcho > staleAfter ? Effect.fail("stale" as const) : Effect.void)),
        Schedule.spaced("250 millis")
      )
    ).pipe(Effect.ensuring(Effect.sync(() => iterator.stop())))
  })
  const watchLoop = watchOnce.pipe(
    Effect.catchAllCause((cause) => Effect.logWarning("membership watch restarting", { cause: Cause.pretty(cause) })),
    Effect.zipRight(Effect.sleep("200 millis")),
    Effect.forever
  )

  const publishLoop = publish.pipe(
    Effect.catchAllCause((cause) => Effect.logError("membership view not derived", { cause: Cause.pretty(cause) })),
    Effect.repeat(Schedule.spaced("100 millis"))
  )

  yield* Effect.forkScoped(heartbeatLoop)
  yield* Effect.forkScoped(watchLoop)
  yield* Effect.forkScoped(publishLoop)

  // Leaving cleanly lets the others move our shards without waiting out the timeout.
  yield* Effect.addFinalizer(() =>
    nats.call("membership leave", () => nats.nodes.delete(nodeKey(self.id))).pipe(Effect.ignoreLogged)
  )

  const isLive = (node: string, incarnation: string) =>
    Effect.sync(() => {
      const r = records.get(node)
      return r !== undefined && r.incarnation === incarnation && isFresh(r, reference(Date.now()))
    })

  return {
    self,
    view: Ref.get(latest),
    changes: published.changes,
    isLive,
    leaseValid: Effect.sync(() => performance.now() - lastGoodBeat < validMs),
    setState: (state) => Ref.update(own, (o) => ({ ...o, state })),
    setWeight: (weight) => Ref.update(own, (o) => ({ ...o, weight })),
    setStats: (stats) => Ref.update(own, (o) => ({ ...o, stats })),
    beat: beat.pipe(Effect.zipRight(publish), Effect.catchAll((e) => Effect.logWarning("heartbeat failed", { error: e.message })))
  } satisfies MembershipShape
})

export const layer = Layer.scoped(Membership, make)
