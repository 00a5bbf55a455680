/**
 * Serves one shard on its owner: takes the shard's durable commands from JetStream
 * and its volatile requests from core NATS, hands each to its actor (activated on
 * first message, passivated when idle), and replies once the actor's batch is done.
 *
 * Each actor is one fiber with a bounded queue. Supervision: transient
 * infrastructure failures are retried with jittered backoff; a defect restarts the
 * actor (fresh `init`) with exponential backoff; past `maxRestarts` in
 * `restartWindow` the batch goes to the dead-letter stream and its senders get
 * `ActorFailed`. `FencedOut` means the shard was lost: the runner stops.
 */
import type { JsMsg } from "@nats-io/jetstream"
import type { Msg, Subscription } from "@nats-io/transport-node"
import { headers as natsHeaders } from "@nats-io/transport-node"
import { SqlClient } from "@effect/sql"
import { Cause, Deferred, Duration, Effect, Either, Exit, Fiber, Option, Queue, Runtime, Schedule } from "effect"
import type { Schema, Scope } from "effect"
import { performance } from "node:perf_hooks"
import type { ChorusConfigShape } from "../config/ChorusConfig.ts"
import type { NatsShape } from "../transport/Nats.ts"
import { consumerDefaults } from "../transport/Nats.ts"
import * as ActorAddress from "./ActorAddress.ts"
import type { ActorContext, Incoming, RunnableBehaviour } from "./Behaviour.ts"
import type { Delivery } from "./Entity.ts"
import * as Envelope from "./Envelope.ts"
import type { Lease } from "./ShardLeases.ts"
import type { GroupCommitShape } from "./GroupCommit.ts"
import * as ShardFence from "./ShardFence.ts"
import { ActorFailed, FencedOut, MailboxFull, MalformedMessage } from "./RuntimeErrors.ts"
import type { RuntimeMetricsShape } from "./RuntimeMetrics.ts"

export interface ShardRunner {
  readonly shard: number
  readonly lease: Lease
  readonly actorCount: () => number
  readonly queuedMessages: () => number
  readonly handled: () => number
  /** Completes when the shard must stop because it was fenced out. */
  readonly fenced: Deferred.Deferred<FencedOut>
  /** Stops intake, lets in-flight batches finish, passivates every actor. */
  readonly stop: Effect.Effect<void>
}

export interface ShardRunnerDeps {
  readonly config: ChorusConfigShape
  readonly nats: NatsShape
  readonly behaviours: ReadonlyMap<string, RunnableBehaviour>
  readonly metrics: RuntimeMetricsShape
  readonly leaseValid: Effect.Effect<boolean>
  readonly sql: SqlClient.SqlClient
  readonly groupCommit: GroupCommitShape
}

/** One message waiting in an actor's queue, with how to answer it. */
interface Item {
  readonly incoming: Incoming<Schema.TaggedRequest.All>
  readonly envelope: Envelope.RequestEnvelope
  readonly delivery: Delivery
  /** Settled result, set by `complete` (first call wins). */
  result: Exit.Exit<unknown, unknown> | undefined
  /** Sends the reply bytes to the sender (if it waits for one). */
  readonly respond: (data: Uint8Array) => void
  /** Acknowledges a durable command (removes it from the work queue). */
  readonly ack: () => void
}

interface ActorInstance {
  readonly address: ActorAddress.ActorAddress
  readonly queue: Queue.Queue<Item>
  fiber: Fiber.RuntimeFiber<void, never> | undefined
  closed: boolean
}

const retryReply = (id: string) => Envelope.encodeReply({ id, error: { _tag: "Retry" } })

export const start = (
  deps: ShardRunnerDeps,
  lease: Lease
): Effect.Effect<ShardRunner, never, Scope.Scope> =>
  Effect.gen(function*() {
    const { config, nats, metrics } = deps
    const shard = lease.shard
    const epoch = lease.epoch
    const cluster = config.cluster
    const runtime = yield* Effect.runtime<never>()
    const runFork = Runtime.runFork(runtime)
    const fenced = yield* Deferred.make<FencedOut>()
    const actors = new Map<string, ActorInstance>()
    let handled = 0
    let stopped = false
    const log = (message: string, fields: Record<string, unknown> = {}) =>
      Effect.logDebug(message, { shard, epoch, ...fields })

    const contextFor = (address: ActorAddress.ActorAddress): ActorContext => ({
      address,
      cluster,
      shard,
      epoch,
      nodeId: config.nodeId,
      transaction: (effect) =>
        Effect.gen(function*() {
          // Cheap local check first; the fence row is the authoritative one.
          if (!(yield* deps.leaseValid)) {
            return yield* new FencedOut({ shard, epoch, reason: "own heartbeat is stale" })
          }
          return yield* ShardFence.guard(cluster, shard, epoch, effect)
        }).pipe(Effect.provideService(SqlClient.SqlClient, deps.sql)),
      commit: (writes) =>
        Effect.gen(function*() {
          if (!(yield* deps.leaseValid)) {
            return yield* new FencedOut({ shard, epoch, reason: "own heartbeat is stale" })
          }
          return yield* deps.groupCommit.commit(cluster, shard, epoch, writes)
        })
    })

    // ---- replies -----------------------------------------------------------------

    const settle = (item: Item) => {
      const exit = item.result ?? Exit.die(new Error("the actor completed its batch without replying"))
      if (item.delivery === "durable") item.ack()
      const encoded = Envelope.encodeExit(item.incoming.message, exit)
      const reply = Either.isRight(encoded)
        ? Envelope.encodeReply({ id: item.envelope.id, exit: encoded.right })
        : Envelope.encodeReply({
          id: item.envelope.id,
          error: Envelope.encodeRuntimeError(new MalformedMessage({ address: item.envelope.to, reason: `unencodable reply: ${encoded.left}` }))
        })
      item.respond(reply)
    }

    const failItems = (items: ReadonlyArray<Item>, error: ActorFailed | MailboxFull | MalformedMessage, ack: boolean) => {
      const data = (id: string) => Envelope.encodeReply({ id, error: Envelope.encodeRuntimeError(error) })
      for (const item of items) {
        if (ack && item.delivery === "durable") item.ack()
        item.respond(data(item.envelope.id))
      }
    }

    const deadLetter = (behaviour: RunnableBehaviour, items: ReadonlyArray<Item>, reason: string) =>
      Effect.forEach(items, (item) => {
        const h = natsHeaders()
        // Header values are one line: the first lines of the cause, flattened.
        h.set("Chorus-Reason", reason.split(/\r?\n/).map((l) => l.trim()).filter((l) => l.length > 0).join(" | ").slice(0, 512))
        h.set("Chorus-Shard", String(shard))
        return nats.call("dead letter", () =>
          nats.js.publish(nats.names.deadLetterSubject(behaviour.type), Envelope.encodeRequest(item.envelope), {
            msgID: `dead-${item.envelope.id}`,
            headers: h
          })
        )
      }, { discard: true }).pipe(
        Effect.tap(() => Effect.sync(() => metrics.deadLetters.inc({ type: behaviour.type }, items.length))),
        Effect.catchAll((error) => Effect.logError("dead letter publish failed", { shard, error: error.message }))
      )

    // ---- one actor ---------------------------------------------------------------

    const transient = Schedule.exponential("50 millis", 2).pipe(
      Schedule.jittered,
      Schedule.union(Schedule.spaced("2 seconds")),
      Schedule.upTo(config.requestDeadline)
    )

    const runActor = (instance: ActorInstance, behaviour: RunnableBehaviour): Effect.Effect<void> =>
      Effect.gen(function*() {
        const ctx = contextFor(instance.address)
        const address = String(instance.address)
        const restarts: Array<number> = []
        const init = behaviour.init(ctx).pipe(
          Effect.retry({ schedule: transient, while: (e) => e._tag !== "FencedOut" })
        )
        let state = yield* init
        metrics.actorsAlive.inc({ type: behaviour.type })
        yield* Effect.addFinalizer(() => Effect.sync(() => metrics.actorsAlive.dec({ type: behaviour.type })))

        while (true) {
          const taken = yield* Queue.takeBetween(instance.queue, 1, config.maxBatch).pipe(
            Effect.timeout(config.passivateAfter),
            Effect.option
          )
          if (Option.isNone(taken)) {
            // Passivate only if nothing arrived meanwhile; dispatch offers synchronously,
            // so this check and the removal cannot interleave with an offer.
            if (instance.queue.unsafeSize().pipe(Option.getOrElse(() => 0)) === 0) {
              instance.closed = true
              actors.delete(address)
              return
            }
            continue
          }
          const items = [...taken.value]
          const batch = items.map((i) => i.incoming) as unknown as Parameters<RunnableBehaviour["receive"]>[2]
          metrics.batchSize.observe({ type: behaviour.type }, items.length)
          const outcome = yield* Effect.uninterruptible(behaviour.receive(ctx, state, batch)).pipe(
            Effect.retry({ schedule: transient, while: (e) => e._tag !== "FencedOut" }),
            Effect.exit
          )
          if (Exit.isSuccess(outcome)) {
            state = outcome.value
            const now = Date.now()
            for (const item of items) {
              settle(item)
              metrics.processingSeconds.observe({ type: behaviour.type }, Math.max(0, now - item.incoming.sentAt) / 1000)
              metrics.messages.inc({ type: behaviour.type, delivery: item.delivery, outcome: item.result?._tag === "Success" ? "ok" : "error" })
            }
            handled += items.length
            continue
          }
          const failure = Cause.failureOption(outcome.cause)
          if (Option.isSome(failure) && failure.value._tag === "FencedOut") {
            // The shard is no longer ours: nothing is acked; senders retry elsewhere.
            for (const item of items) item.respond(retryReply(item.envelope.id))
            yield* Deferred.succeed(fenced, failure.value)
            return
          }
          // A defect, or a transient failure that outlasted its retries.
          const reason = Cause.pretty(outcome.cause).slice(0, 2000)
          const now = performance.now()
          restarts.push(now)
          while (restarts.length > 0 && now - (restarts[0] ?? now) > Duration.toMillis(config.restartWindow)) restarts.shift()
          metrics.restarts.inc({ type: behaviour.type })
          if (restarts.length > config.maxRestarts) {
            yield* Effect.logError("actor failed past its restart limit; dead-lettering the batch", { actor: address, shard, reason })
            yield* deadLetter(behaviour, items, reason)
            failItems(items, new ActorFailed({ address, commandId: items[0]?.envelope.id ?? "", reason: reason.slice(0, 500) }), true)
            restarts.length = 0
          } else {
            yield* Effect.logWarning("actor restarting after a failure", { actor: address, shard, attempt: restarts.length, reason })
            // Put the batch back at the front: it is retried after the restart.
            yield* Effect.sleep(Duration.millis(Math.min(5_000, 100 * 2 ** (restarts.length - 1))))
            const rest = yield* Queue.takeAll(instance.queue)
            yield* Queue.offerAll(instance.queue, [...items, ...rest])
          }
          state = yield* init
        }
      }).pipe(
        Effect.catchAllCause((cause) =>
          Cause.isInterruptedOnly(cause)
            ? Effect.void
            : Effect.gen(function*() {
              const failure = Cause.failureOption(cause)
              if (Option.isSome(failure) && failure.value._tag === "FencedOut") {
                yield* Deferred.succeed(fenced, failure.value)
              } else {
                yield* Effect.logError("actor stopped", { actor: String(instance.address), shard, cause: Cause.pretty(cause) })
              }
              instance.closed = true
              actors.delete(String(instance.address))
              const left = instance.queue.unsafeSize().pipe(Option.getOrElse(() => 0))
              if (left > 0) {
                const rest = yield* Queue.takeAll(instance.queue)
                for (const item of rest) item.respond(retryReply(item.envelope.id))
              }
            })
        ),
        Effect.scoped,
        Effect.annotateLogs({ actor: String(instance.address) })
      )

    const activate = (address: ActorAddress.ActorAddress, behaviour: RunnableBehaviour): ActorInstance => {
      const key = String(address)
      const existing = actors.get(key)
      if (existing !== undefined && !existing.closed) return existing
      const instance: ActorInstance = {
        address,
        queue: Effect.runSync(Queue.bounded<Item>(config.mailboxCapacity)),
        fiber: undefined,
        closed: false
      }
      actors.set(key, instance)
      instance.fiber = runFork(runActor(instance, behaviour))
      return instance
    }

    // ---- intake ------------------------------------------------------------------

    type Decoded =
      | { readonly _tag: "ok"; readonly instance: ActorInstance; readonly item: Item }
      | {
        readonly _tag: "bad"
        readonly respond: ((data: Uint8Array) => void) | undefined
        readonly reply: Uint8Array | undefined
        readonly reason: string
      }

    const decode = (
      data: Uint8Array,
      delivery: Delivery,
      respondTo: (envelope: Envelope.RequestEnvelope) => (data: Uint8Array) => void,
      ack: () => void
    ): Decoded => {
      const envelope = Envelope.decodeRequest(data)
      if (Either.isLeft(envelope)) return { _tag: "bad", respond: undefined, reply: undefined, reason: envelope.left }
      const env = envelope.right
      const respond = respondTo(env)
      const bad = (reason: string): Decoded => ({
        _tag: "bad",
        reason,
        respond,
        reply: Envelope.encodeReply({ id: env.id, error: Envelope.encodeRuntimeError(new MalformedMessage({ address: env.to, reason })) })
      })
      const address = ActorAddress.parse(env.to)
      if (Either.isLeft(address)) return bad(address.left.message)
      const behaviour = deps.behaviours.get(address.right.type)
      if (behaviour === undefined) return bad(`no behaviour for actor type ${address.right.type} on this node`)
      const message = behaviour.entity.decode(env.msg)
      if (Either.isLeft(message)) return bad(message.left)
      const item: Item = {
        envelope: env,
        delivery,
        result: undefined,
        respond,
        ack,
        incoming: {
          _tag: message.right._tag,
          message: message.right,
          commandId: env.id,
          delivery,
          sentAt: env.t,
          complete: (exit: Exit.Exit<unknown, unknown>) => {
            if (item.result === undefined) item.result = exit
          }
        } as Incoming<Schema.TaggedRequest.All>
      }
      return { _tag: "ok", instance: activate(address.right, behaviour), item }
    }

    // Volatile requests: answered over core NATS; a full mailbox answers at once.
    const onRequest = (msg: Msg) => {
      if (stopped) {
        const id = Envelope.decodeRequest(msg.data).pipe(Either.map((e) => e.id), Either.getOrElse(() => ""))
        msg.respond(retryReply(id))
        return
      }
      const decoded = decode(msg.data, "volatile", () => (data) => msg.respond(data), () => {})
      if (decoded._tag === "bad") {
        if (decoded.reply !== undefined) msg.respond(decoded.reply)
        runFork(Effect.logWarning("malformed request", { shard, reason: decoded.reason }))
        return
      }
      if (!decoded.instance.queue.unsafeOffer(decoded.item)) {
        failItems([decoded.item], new MailboxFull({ address: decoded.item.envelope.to }), false)
      }
    }

    const subscription: Subscription = nats.nc.subscribe(nats.names.requestSubject(shard), {
      callback: (error, msg) => {
        if (error !== null) {
          runFork(Effect.logWarning("request subscription error", { shard, error: error.message }))
          return
        }
        onRequest(msg)
      }
    })

    // Durable commands: a fresh consumer starting at the first unacked command (the
    // stream is a work queue), so a new owner never waits out the old one's AckWait.
    const stream = nats.names.commandsStream
    const consumerName = nats.names.commandConsumer(shard)
    yield* nats.call("consumer reset", async () => {
      await nats.jsm.consumers.delete(stream, consumerName).catch((error: unknown) => {
        if (!(error instanceof Error && /not found/i.test(error.message))) throw error
      })
      await nats.jsm.consumers.add(stream, {
        ...consumerDefaults,
        durable_name: consumerName,
        filter_subject: nats.names.commandSubject(shard),
        max_ack_pending: config.maxAckPendingPerShard,
        ack_wait: 30_000_000_000,
        max_deliver: -1
      })
    }).pipe(
      Effect.retry(Schedule.exponential("100 millis").pipe(Schedule.jittered, Schedule.upTo("10 seconds"))),
      Effect.catchAll((error) => Effect.logError("could not create the shard's consumer", { shard, error: error.message }))
    )

    const onCommand = async (m: JsMsg) => {
      const decoded = decode(
        m.data,
        "durable",
        (env) => (data) => {
          if (env.reply !== undefined) nats.nc.publish(env.reply, data)
        },
        () => m.ack()
      )
      if (decoded._tag === "bad") {
        // An undecodable command would block the shard forever: dead-letter it.
        await nats.js.publish(nats.names.deadLetterSubject("malformed"), m.data, { msgID: `dead-${m.seq}-${shard}` }).catch(
          (error: unknown) => runFork(Effect.logError("dead letter publish failed", { shard, error: String(error) }))
        )
        m.ack()
        if (decoded.reply !== undefined) decoded.respond?.(decoded.reply)
        metrics.deadLetters.inc({ type: "malformed" })
        runFork(Effect.logWarning("malformed command dead-lettered", { shard, reason: decoded.reason }))
        return
      }
      if (!decoded.instance.queue.unsafeOffer(decoded.item)) {
        // Back-pressure: hold this shard's intake until the actor makes room.
        await Runtime.runPromise(runtime)(Queue.offer(decoded.instance.queue, decoded.item))
      }
    }

    const consumerFiber = runFork(
      Effect.gen(function*() {
        const consumer = yield* nats.call("consumer get", () => nats.js.consumers.get(stream, consumerName))
        const messages = yield* nats.call("consume", () => consumer.consume({ max_messages: Math.min(256, config.maxAckPendingPerShard) }))
        yield* Effect.addFinalizer(() => Effect.promise(() => messages.close()).pipe(Effect.ignore))
        yield* nats.call("consume loop", async () => {
          for await (const m of messages) {
            if (stopped) break
            await onCommand(m)
          }
        })
      }).pipe(
        Effect.scoped,
        Effect.catchAll((error) => Effect.logWarning("command consumer ended", { shard, error: error.message })),
        Effect.repeat({ while: () => !stopped, schedule: Schedule.spaced("250 millis") })
      )
    )

    yield* log("shard started")

    const stop = Effect.gen(function*() {
      if (stopped) return
      stopped = true
      subscription.unsubscribe()
      yield* Fiber.interrupt(consumerFiber)
      // In-flight batches finish (their processing is uninterruptible); what is still
      // queued is answered "retry" (volatile) or left unacked for the next owner.
      yield* Effect.forEach([...actors.values()], (instance) =>
        Effect.gen(function*() {
          instance.closed = true
          if (instance.fiber !== undefined) yield* Fiber.interrupt(instance.fiber)
          const rest = yield* Queue.takeAll(instance.queue)
          for (const item of rest) if (item.delivery === "volatile") item.respond(retryReply(item.envelope.id))
        }), { concurrency: "unbounded", discard: true }).pipe(Effect.timeout(config.drainTimeout), Effect.ignore)
      actors.clear()
      yield* log("shard stopped")
    })

    yield* Effect.addFinalizer(() => stop)

    return {
      shard,
      lease,
      fenced,
      stop,
      actorCount: () => actors.size,
      queuedMessages: () => {
        let n = 0
        for (const a of actors.values()) n += a.queue.unsafeSize().pipe(Option.getOrElse(() => 0))
        return n
      },
      handled: () => handled
    } satisfies ShardRunner
  })
