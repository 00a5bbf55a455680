/**
 * The node side of the runtime: keeps this node serving exactly the shards the ring
 * gives it, and no shard without its lease.
 *
 * A reconcile pass runs on every membership change, lease change, fenced shard and
 * timer tick:
 * - own heartbeat stale → stop every shard at once (others may take them soon);
 * - shards held but no longer ours → stop the runner (in-flight batches finish),
 *   then release the lease so the new owner starts without waiting;
 * - shards ours but not held → take the lease (free, released, or its holder dead),
 *   raise the PostgreSQL fence to the new epoch, start the runner.
 *
 * Draining (SIGTERM or `cluster.drain`) marks the node `draining`: the ring drops it,
 * every shard is handed over the same way, and the node can exit.
 */
import { SqlClient } from "@effect/sql"
import { Context, Deferred, Duration, Effect, Exit, Layer, Option, Queue, Ref, Runtime, Schedule, Scope, Stream } from "effect"
import { ChorusConfig } from "../config/ChorusConfig.ts"
import { Nats } from "../transport/Nats.ts"
import type { RunnableBehaviour } from "./Behaviour.ts"
import { GroupCommit } from "./GroupCommit.ts"
import type { LocalShardsShape } from "./LocalShards.ts"
import { LocalShards } from "./LocalShards.ts"
import { Membership } from "./Membership.ts"
import type { MembershipView } from "./Membership.ts"
import * as Ring from "./Ring.ts"
import { RuntimeMetrics } from "./RuntimeMetrics.ts"
import * as ShardFence from "./ShardFence.ts"
import type { Lease } from "./ShardLeases.ts"
import * as ShardLeases from "./ShardLeases.ts"
import type { ShardRunner } from "./ShardRunner.ts"
import * as ShardRunnerModule from "./ShardRunner.ts"

export interface ShardStatus {
  readonly shard: number
  readonly epoch: number
  readonly actors: number
  readonly queued: number
  readonly handled: number
}

export interface ShardingShape {
  /** The ring as this node currently sees it. */
  readonly ring: Effect.Effect<Ring.Ring>
  readonly view: Effect.Effect<MembershipView>
  readonly held: Effect.Effect<ReadonlyArray<ShardStatus>>
  /** Hands every shard over and stops taking new ones (bounded by drainTimeout). */
  readonly drain: Effect.Effect<void>
  readonly draining: Effect.Effect<boolean>
  /** Runs a reconcile pass soon. */
  readonly kick: Effect.Effect<void>
  /** The runners held here, for in-process requests. */
  readonly local: LocalShardsShape
}

export class Sharding extends Context.Tag("chorus/runtime/Sharding")<Sharding, ShardingShape>() {}

interface Held {
  readonly runner: ShardRunner
  readonly scope: Scope.CloseableScope
}

export const make = (behaviours: ReadonlyArray<RunnableBehaviour>) =>
  Effect.gen(function*() {
    const config = yield* ChorusConfig
    const nats = yield* Nats
    const membership = yield* Membership
    const metrics = yield* RuntimeMetrics
    const sql = yield* SqlClient.SqlClient
    const groupCommit = yield* GroupCommit
    const self = membership.self
    const ringConfig = { shards: config.shards, vnodesPerWeight: config.vnodesPerWeight, epsilon: config.balanceEpsilon }

    const registry = new Map(behaviours.map((b) => [b.type, b] as const))
    const held = new Map<number, Held>()
    const busy = new Set<number>()
    const kicks = yield* Queue.sliding<void>(1)
    const drainingRef = yield* Ref.make(false)
    const kick = Queue.offer(kicks, undefined).pipe(Effect.asVoid)

    const ringOf = (view: MembershipView) =>
      Ring.make(view.placeable.map((n) => ({ id: n.id, weight: n.weight })), ringConfig)

    const deps: ShardRunnerModule.ShardRunnerDeps = {
      config,
      nats,
      behaviours: registry,
      metrics,
      leaseValid: membership.leaseValid,
      sql,
      groupCommit
    }

    const canTake = (lease: Lease) =>
      Effect.gen(function*() {
        if (lease.holder === undefined) return true
        if (lease.holder.node === self.id && lease.holder.incarnation === self.incarnation) return true
        return !(yield* membership.isLive(lease.holder.node, lease.holder.incarnation))
      })

    const acquire = (shard: number) =>
      Effect.gen(function*() {
        const lease = yield* ShardLeases.acquire(shard, { node: self.id, incarnation: self.incarnation }, canTake).pipe(
          Effect.catchTag("LeaseTaken", () => Effect.succeed(undefined))
        )
        if (lease === undefined) return
        // Until the fence is raised, a previous owner might still commit; after it, not.
        const raised = yield* ShardFence.raise(config.cluster, shard, lease.epoch, self.id).pipe(
          Effect.provideService(SqlClient.SqlClient, sql),
          Effect.as(true),
          Effect.catchTag("FencedOut", () => Effect.succeed(false))
        )
        if (!raised) {
          yield* Effect.logWarning("fence already past our epoch; giving the lease back", { shard, epoch: lease.epoch })
          yield* ShardLeases.release(lease)
          return
        }
        const scope = yield* Scope.make()
        const runner = yield* ShardRunnerModule.start(deps, lease).pipe(Scope.extend(scope))
        held.set(shard, { runner, scope })
        metrics.leaseChanges.inc({ change: "acquired" })
        metrics.shardsOwned.set(held.size)
        // The lease watch ignores shards not held yet, so a change between taking the
        // lease and starting the runner (seconds, on a loaded machine: another node
        // presumed us dead, took the shard and perhaps released it) went unseen, and this
        // node served a shard whose lease was not its own until it next moved. Look again
        // now that later changes reach the watch.
        const now = yield* ShardLeases.read(shard)
        const stillOurs = Option.isSome(now) && now.value.epoch === lease.epoch &&
          now.value.holder?.node === self.id && now.value.holder.incarnation === self.incarnation
        if (!stillOurs) {
          yield* Effect.logWarning("lease lost while the shard was starting", {
            shard,
            epoch: lease.epoch,
            now: Option.isSome(now) ? now.value.epoch : null,
            holder: Option.isSome(now) ? now.value.holder?.node ?? null : null
          })
          yield* stopShard(shard, false, "lost")
          yield* kick
          return
        }
        // A fenced runner is dropped at once; the next pass decides what to do.
        yield* Deferred.await(runner.fenced).pipe(
          Effect.zipRight(Effect.logWarning("shard fenced out", { shard, epoch: lease.epoch })),
          Effect.zipRight(stopShard(shard, false, "lost")),
          Effect.zipRight(kick),
          Effect.forkIn(scope)
        )
      })

    const stopShard = (shard: number, releaseLease: boolean, change: "released" | "lost") =>
      Effect.gen(function*() {
        const entry = held.get(shard)
        if (entry === undefined) return
        held.delete(shard)
        yield* entry.runner.stop
        yield* Scope.close(entry.scope, Exit.void)
        if (releaseLease) yield* ShardLeases.release(entry.runner.lease).pipe(Effect.catchAll((e) => Effect.logWarning("lease release failed", { shard, error: e.message })))
        metrics.leaseChanges.inc({ change })
        metrics.shardsOwned.set(held.size)
      })

    const guarded = (shard: number, effect: Effect.Effect<void, unknown, Nats>) =>
      Effect.suspend(() => {
        if (busy.has(shard)) return Effect.void
        busy.add(shard)
        return effect.pipe(
          Effect.provideService(Nats, nats),
          Effect.catchAllCause((cause) => Effect.logWarning("shard transition failed", { shard, cause: String(cause) })),
          Effect.ensuring(Effect.sync(() => busy.delete(shard)))
        )
      })

    /** The last reconcile left shards it should serve unheld (their leases not yet free). */
    let waiting = false
    const reconcile = Effect.gen(function*() {
      waiting = false
      if (!(yield* membership.leaseValid)) {
        if (held.size > 0) {
          yield* Effect.logWarning("own heartbeat is stale: stopping every shard", { shards: held.size })
          yield* Effect.forEach([...held.keys()], (shard) => guarded(shard, stopShard(shard, false, "lost")), { concurrency: "unbounded", discard: true })
        }
        return
      }
      const view = yield* membership.view
      const ring = ringOf(view)
      const desired = new Set<number>(Ring.shardsOf(ring, self.id))
      const toRelease = [...held.keys()].filter((s) => !desired.has(s))
      const toAcquire = [...desired].filter((s) => !held.has(s))
      if (toRelease.length === 0 && toAcquire.length === 0) return
      const before = held.size
      yield* Effect.forEach(toRelease, (shard) => guarded(shard, stopShard(shard, true, "released")), { concurrency: 16, discard: true })
      yield* Effect.forEach(toAcquire, (shard) => guarded(shard, acquire(shard)), { concurrency: 16, discard: true })
      waiting = [...desired].some((s) => !held.has(s))
      if (held.size !== before || toRelease.length > 0) {
        yield* Effect.logInfo("shards rebalanced", {
          held: held.size,
          assigned: desired.size,
          released: toRelease.length,
          acquired: toAcquire.filter((s) => held.has(s)).length,
          waiting: [...desired].filter((s) => !held.has(s)).length
        })
      }
    })

    // Reconcile on kicks, membership changes and lease changes, and at least every 250 ms;
    // every 100 ms while shards wait for their leases (a failover's last step: the
    // sooner a freed lease is seen, the sooner its shard is served again).
    yield* Effect.forkScoped(
      Effect.suspend(() => Queue.take(kicks).pipe(Effect.timeout(waiting ? "100 millis" : "250 millis"))).pipe(
        Effect.ignore,
        Effect.zipRight(reconcile),
        Effect.catchAllCause((cause) => Effect.logError("reconcile failed", { cause: String(cause) })),
        Effect.forever
      )
    )
    yield* Effect.forkScoped(Stream.runForEach(membership.changes, () => kick))
    yield* Effect.forkScoped(
      Effect.gen(function*() {
        const iterator = yield* nats.call("lease watch", () => nats.leases.watch({ include: "updates" as never }))
        yield* Effect.addFinalizer(() => Effect.sync(() => iterator.stop()))
        const runtime = yield* Effect.runtime<never>()
        const run = <A>(effect: Effect.Effect<A>) => Runtime.runFork(runtime)(effect)
        yield* nats.call("lease watch loop", async () => {
          for await (const entry of iterator) {
            if (entry.operation !== "PUT") continue
            const shard = ShardLeases.shardOfKey(entry.key)
            const mine = Option.isSome(shard) ? held.get(shard.value) : undefined
            if (Option.isSome(shard) && mine !== undefined) {
              // Someone took this shard (we were presumed dead): stop at once rather
              // than at our next write, so the shard does not sit with a stale owner.
              const lease = ShardLeases.decode(shard.value, entry.value, entry.revision)
              const ours = lease.holder?.node === self.id && lease.holder.incarnation === self.incarnation && lease.epoch === mine.runner.lease.epoch
              if (!ours) {
                run(Effect.logWarning("lease lost to another node", { shard: shard.value, epoch: mine.runner.lease.epoch, now: lease.epoch, holder: lease.holder?.node ?? null }).pipe(
                  Effect.zipRight(guarded(shard.value, stopShard(shard.value, false, "lost")))
                ))
              }
            }
            run(kick)
          }
        })
      }).pipe(Effect.scoped, Effect.catchAll((e) => Effect.logWarning("lease watch ended", { error: e.message })), Effect.repeat(Schedule.spaced("1 second")))
    )

    // Publish this node's load in its heartbeat for `cluster.status`.
    let lastHandled = 0
    let lastAt = Date.now()
    yield* Effect.forkScoped(
      Effect.gen(function*() {
        let actors = 0
        let queued = 0
        let handled = 0
        for (const { runner } of held.values()) {
          actors += runner.actorCount()
          queued += runner.queuedMessages()
          handled += runner.handled()
        }
        const now = Date.now()
        const rate = Math.max(0, handled - lastHandled) / Math.max(0.001, (now - lastAt) / 1000)
        lastHandled = handled
        lastAt = now
        metrics.mailboxDepth.set(queued)
        yield* membership.setStats({ shards: held.size, actors, messagesPerSecond: Math.round(rate) })
      }).pipe(Effect.repeat(Schedule.spaced("2 seconds")))
    )

    const drain = Effect.gen(function*() {
      yield* Ref.set(drainingRef, true)
      yield* Effect.logInfo("draining: handing over every shard", { shards: held.size })
      yield* membership.setState("draining")
      yield* membership.beat
      yield* kick
      const done = yield* Effect.suspend(() => Effect.succeed(held.size === 0 && busy.size === 0)).pipe(
        Effect.repeat({ schedule: Schedule.spaced("50 millis"), until: (empty) => empty }),
        Effect.timeout(config.drainTimeout),
        Effect.option
      )
      if (Option.isNone(done)) {
        yield* Effect.logWarning("drain timed out; stopping the remaining shards", { shards: held.size })
        yield* Effect.forEach([...held.keys()], (shard) => guarded(shard, stopShard(shard, true, "released")), { discard: true })
      }
      yield* Effect.logInfo("drained")
    })

    // On shutdown: hand everything over before the membership record goes away.
    yield* Effect.addFinalizer(() => drain)

    const held_ = Effect.sync(() =>
      [...held.values()].map(({ runner }) => ({
        shard: runner.shard,
        epoch: runner.lease.epoch,
        actors: runner.actorCount(),
        queued: runner.queuedMessages(),
        handled: runner.handled()
      })).sort((a, b) => a.shard - b.shard)
    )

    return {
      ring: Effect.map(membership.view, ringOf),
      view: membership.view,
      held: held_,
      drain,
      draining: Ref.get(drainingRef),
      kick,
      local: {
        request: (shard, data, respond) => {
          const runner = held.get(shard)?.runner
          if (runner === undefined) return false
          runner.request(data, respond)
          return true
        },
        serves: (shard) => held.get(shard)?.runner !== undefined
      }
    } satisfies ShardingShape
  })

/** Sharding, and LocalShards over the same runners (for this process's ShardingClient). */
export const layer = (behaviours: ReadonlyArray<RunnableBehaviour>) =>
  Layer.effect(LocalShards, Effect.map(Sharding, (sharding) => sharding.local)).pipe(Layer.provideMerge(Layer.scoped(Sharding, make(behaviours))))

export const waitUntilServing = (minShards: number, timeout: Duration.DurationInput) =>
  Effect.gen(function*() {
    const sharding = yield* Sharding
    return yield* sharding.held.pipe(
      Effect.repeat({ schedule: Schedule.spaced("50 millis"), until: (h) => h.length >= minShards }),
      Effect.timeout(timeout),
      Effect.option
    )
  }).pipe(Effect.asVoid)

