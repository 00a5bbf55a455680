/**
 * Operator commands that must reach one node wherever they were issued: `drain` and
 * `setWeight` are written to the cluster's config bucket (`drain.<node>`,
 * `weight.<node>`; one watch on `*.<node>`, as NATS 2.9 allows one filter per consumer),
 * and each node applies the ones naming it. A weight persists across
 * restarts; a drain names the node's incarnation, so a restarted node starts up.
 */
import { Effect, Queue, Runtime, Schedule } from "effect"
import { Nats } from "../transport/Nats.ts"
import { Membership } from "./Membership.ts"
import { Sharding } from "./Sharding.ts"

const decoder = new TextDecoder()
/** KV key token for a node id (ids may contain dots, which KV treats as separators). */
const token = (node: string) => node.replace(/[^A-Za-z0-9_-]/g, "_")

export const requestDrain = (node: string, incarnation: string) =>
  Effect.flatMap(Nats, (nats) => nats.call("drain request", () => nats.runtimeConfig.put(`drain.${token(node)}`, JSON.stringify({ incarnation, at: Date.now() }))))

export const requestWeight = (node: string, weight: number) =>
  Effect.flatMap(Nats, (nats) => nats.call("weight request", () => nats.runtimeConfig.put(`weight.${token(node)}`, JSON.stringify({ weight, at: Date.now() }))))

/** Watches the config bucket and applies what concerns this node; runs until interrupted. */
export const run = Effect.gen(function*() {
  const nats = yield* Nats
  const membership = yield* Membership
  const sharding = yield* Sharding
  const me = membership.self
  const apply = (key: string, value: Uint8Array) =>
    Effect.gen(function*() {
      if (key === `weight.${token(me.id)}`) {
        const { weight } = JSON.parse(decoder.decode(value)) as { weight: number }
        if (typeof weight === "number" && weight > 0) {
          yield* Effect.logInfo("weight set by operator", { weight })
          yield* membership.setWeight(weight)
          yield* membership.beat
        }
      } else if (key === `drain.${token(me.id)}`) {
        const { incarnation } = JSON.parse(decoder.decode(value)) as { incarnation: string }
        if (incarnation === me.incarnation && !(yield* sharding.draining)) {
          yield* Effect.logInfo("drain requested by operator")
          yield* Effect.forkDaemon(sharding.drain)
        }
      }
    }).pipe(Effect.catchAllDefect((defect) => Effect.logWarning("bad operator command", { key, defect: String(defect) })))

  yield* Effect.gen(function*() {
    const iterator = yield* nats.call("config watch", () => nats.runtimeConfig.watch({ key: `*.${token(me.id)}` }))
    yield* Effect.addFinalizer(() => Effect.sync(() => iterator.stop()))
    // Entries are applied one at a time, in order; the reader waits while the queue is full.
    const queue = yield* Queue.bounded<{ readonly key: string; readonly value: Uint8Array }>(64)
    const runtime = yield* Effect.runtime<never>()
    const read = nats.call("config watch loop", async () => {
      for await (const entry of iterator) {
        if (entry.operation === "PUT") await Runtime.runPromise(runtime)(Queue.offer(queue, { key: entry.key, value: entry.value }))
      }
    })
    const applyAll = Queue.take(queue).pipe(Effect.flatMap((entry) => apply(entry.key, entry.value)), Effect.forever)
    // The watch can end by itself (its consumer gone, the connection closed): then the
    // whole thing starts over rather than wait on an empty queue forever.
    yield* Effect.raceFirst(read, applyAll)
    yield* Effect.logWarning("config watch ended; watching again")
  }).pipe(
    Effect.scoped,
    Effect.catchAll((e) => Effect.logWarning("config watch ended", { error: e.message })),
    Effect.repeat(Schedule.spaced("1 second"))
  )
})
