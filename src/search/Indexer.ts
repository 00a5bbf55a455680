/**
 * The search indexer: a durable JetStream consumer (`search-indexer`) on the cluster's
 * EVENTS stream (every channel event, src/transport/Nats.ts) that applies posts, edits
 * and deletions to the search index (Search.ts).
 *
 * - One consumer per cluster, pulled by every node that runs an indexer: competing
 *   consumers share the work, and a node that dies leaves its unacked events to the
 *   others after the ack wait.
 * - Batches: whatever has arrived `searchIndexerDelay` (100 ms) after the first event,
 *   up to `searchIndexerBatch` events, is one index write (one statement per kind on
 *   PostgreSQL, one commit and fsync): written at once, a busy channel's every message
 *   was a transaction of its own, half of PostgreSQL's work under fan-out, for an index
 *   nobody reads within 100 ms of a post. Each event is acked only after that
 *   write, so a crash redelivers it. Writes are versioned by the event's `seq`, so a
 *   redelivery, or two nodes applying one message's events out of order, end in the
 *   newest state (Search.ts).
 * - A dead indexer catches up on restart: the consumer's ack floor is kept by NATS, and
 *   the stream holds a day of events (for anything older: `chorus search reindex`).
 * - It never blocks chat: channel actors publish their events and move on; the indexer
 *   only reads the stream. A failing index write is retried with backoff, forever,
 *   without acking, and logged.
 */
import { AckPolicy, DeliverPolicy } from "@nats-io/jetstream"
import type { JsMsg } from "@nats-io/jetstream"
import { Effect, Layer, Queue, Runtime, Schedule } from "effect"
import { ChorusConfig } from "../config/ChorusConfig.ts"
import type { ChannelEvent } from "../domain/ChannelEvents.ts"
import { channelSubjectWildcard } from "../domain/ChannelEvents.ts"
import { Nats } from "../transport/Nats.ts"
import type { IndexOp } from "./Search.ts"
import { opsOfEvent, Search } from "./Search.ts"

/** The durable consumer's name (one per cluster, inside the cluster's EVENTS stream). */
export const consumerName = "search-indexer"

/** How long an event may stay unacked before NATS offers it again (to any indexer). */
const ackWaitMs = 30_000

const decoder = new TextDecoder()

/** The index writes of one stream message; `undefined` when it is not a channel event at all. */
export const opsOfMessage = (data: Uint8Array): ReadonlyArray<IndexOp> | undefined => {
  let event: unknown
  try {
    event = JSON.parse(decoder.decode(data))
  } catch {
    return undefined
  }
  if (typeof event !== "object" || event === null) return undefined
  const { channel, seq } = event as Partial<ChannelEvent>
  if (typeof channel !== "string" || typeof seq !== "number") return undefined
  return opsOfEvent(event as ChannelEvent)
}

export const run = Effect.gen(function*() {
  const nats = yield* Nats
  const search = yield* Search
  const config = yield* ChorusConfig
  const batch = config.searchIndexerBatch
  const stream = nats.names.stream("EVENTS")
  const runtime = yield* Effect.runtime<never>()

  /** The cluster's consumer, created by the first node that needs it (identical configs: idempotent). */
  const ensureConsumer = nats.call("search consumer", async () => {
    try {
      return await nats.jsm.consumers.info(stream, consumerName)
    } catch (error) {
      if (!(error instanceof Error && /not found/i.test(error.message))) throw error
    }
    return await nats.jsm.consumers.add(stream, {
      durable_name: consumerName,
      ack_policy: AckPolicy.Explicit,
      deliver_policy: DeliverPolicy.All,
      filter_subject: channelSubjectWildcard(nats.names),
      ack_wait: ackWaitMs * 1_000_000,
      max_ack_pending: Math.max(1_000, batch * 8),
      max_deliver: -1
    })
  })

  const queue = yield* Queue.bounded<JsMsg>(batch * 2)

  const pull = Effect.gen(function*() {
    yield* ensureConsumer
    const consumer = yield* nats.call("search consumer get", () => nats.js.consumers.get(stream, consumerName))
    const messages = yield* nats.call("search consume", () => consumer.consume({ max_messages: batch * 2 }))
    yield* Effect.addFinalizer(() => Effect.promise(() => messages.close()).pipe(Effect.ignore))
    yield* nats.call("search consume loop", async () => {
      for await (const m of messages) await Runtime.runPromise(runtime)(Queue.offer(queue, m))
    })
  }).pipe(
    Effect.scoped,
    Effect.catchAll((error) => Effect.logWarning("search indexer: consumer ended; resuming", { error: error.message })),
    Effect.repeat(Schedule.spaced("1 second"))
  )

  const write = (ops: ReadonlyArray<IndexOp>) =>
    search.apply(ops).pipe(
      Effect.tapError((error) => Effect.logWarning("search indexer: index write failed; retrying", { error: error.message })),
      Effect.retry(Schedule.exponential("100 millis").pipe(Schedule.jittered, Schedule.union(Schedule.spaced("5 seconds"))))
    )

  const delay = config.searchIndexerDelay
  const work = Effect.gen(function*() {
    const first = yield* Queue.take(queue)
    if ((yield* Queue.size(queue)) < batch - 1) yield* Effect.sleep(delay)
    const messages = [first, ...(yield* Queue.takeUpTo(queue, batch - 1))]
    const ops: Array<IndexOp> = []
    for (const m of messages) {
      const of = opsOfMessage(m.data)
      // Acked with the rest: a message that is no event will not become one on redelivery.
      if (of === undefined) yield* Effect.logWarning("search indexer: not a channel event; skipped", { subject: m.subject, streamSeq: m.seq })
      else ops.push(...of)
    }
    yield* write(ops)
    for (const m of messages) m.ack()
  }).pipe(Effect.forever)

  yield* Effect.logInfo("search indexer started", { backend: search.backend, consumer: consumerName, stream })
  yield* Effect.all([pull, work], { concurrency: 2, discard: true })
})

/** Runs the indexer on this node for the node's life, unless `searchIndexer` is off. */
export const layer: Layer.Layer<never, never, Nats | Search | ChorusConfig> = Layer.scopedDiscard(
  Effect.gen(function*() {
    const config = yield* ChorusConfig
    if (!config.searchIndexer) return
    yield* Effect.forkScoped(run)
  })
)
