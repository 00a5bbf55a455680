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
import { Cause, Context, Deferred, Duration, Effect, Either, Exit, Fiber, FiberId, FiberRef, FiberRefs, HashMap, Option, Runtime, Schedule } from "effect"
import type { Schema, Scope } from "effect"
import { performance } from "node:perf_hooks"
import type { ChorusConfigShape } from "../config/ChorusConfig.ts"
import type { NatsShape } from "../transport/Nats.ts"
import { consumerDefaults } from "../transport/Nats.ts"
import * as ActorAddress from "./ActorAddress.ts"
import type { ActorContext, ActorInfraError, Incoming, RunnableBehaviour } from "./Behaviour.ts"
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
  /** A volatile request from this process (as one over NATS, without the round trip through it). */
  readonly request: (data: Uint8Array, respond: (reply: Uint8Array) => void) => void
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
  /** Sends the reply bytes to the sender (if it waits for one), and to any retry of it that joined. */
  respond: (data: Uint8Array) => void
  /** Retries of this volatile request that arrived while it was queued or in flight, and wait for its answer. */
  joined: number
  /** Acknowledges a durable command (removes it from the work queue). */
  readonly ack: () => void
}

interface ActorInstance {
  readonly address: ActorAddress.ActorAddress
  readonly key: string
  readonly behaviour: RunnableBehaviour
  readonly ctx: ActorContext
  /** Runs this actor's batches: a runtime with its behaviour's services and its address in log annotations. */
  readonly run: ReturnType<typeof Runtime.runCallback<never>>
  /** Waiting messages, oldest first; at most `mailboxCapacity`. */
  readonly mailbox: Array<Item>
  /** Volatile requests queued or in flight, by command id: a retry joins its original. */
  readonly pendingVolatile: Map<string, Item>
  state: unknown
  /** `init` has run since activation or the last restart. */
  alive: boolean
  /** A batch (or `init`) is in flight. */
  running: boolean
  closed: boolean
  idleTimer: ReturnType<typeof setTimeout> | undefined
  /** When recent restarts happened (performance.now()), within `restartWindow`. */
  readonly restarts: Array<number>
  /** Durable intake waiting for room in a full mailbox. */
  readonly spaceWaiters: Array<() => void>
  /** Waiting for the batch in flight to end (stop). */
  readonly idleWaiters: Array<() => void>
}

/** Retries that may wait on one volatile request queued or in flight (beyond, they queue). */
const maxJoined = 16

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
      // Cheap local check first; the fence row (inside the transaction) is the authoritative one.
      transaction: (effect) =>
        Effect.flatMap(deps.leaseValid, (valid) =>
          valid
            ? ShardFence.guard(cluster, shard, epoch, effect).pipe(Effect.provideService(SqlClient.SqlClient, deps.sql))
            : Effect.fail(new FencedOut({ shard, epoch, reason: "own heartbeat is stale" }))),
      commit: (writes) =>
        Effect.flatMap(deps.leaseValid, (valid) =>
          valid
            ? deps.groupCommit.commit(cluster, shard, epoch, writes)
            : Effect.fail(new FencedOut({ shard, epoch, reason: "own heartbeat is stale" })))
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
    //
    // An actor is a mailbox (a plain array) and at most one batch in flight. The hot
    // path is plain code: intake pushes and, if the actor is idle, starts a batch; the
    // batch is one fiber running `receive` in the behaviour's runtime; its callback
    // settles the replies and starts the next batch. Effect's retry schedules,
    // restarts and dead letters are entered only when a batch fails.

    const transient = Schedule.exponential("50 millis", 2).pipe(
      Schedule.jittered,
      Schedule.union(Schedule.spaced("2 seconds")),
      Schedule.upTo(config.requestDeadline)
    )
    const notFenced = (e: { readonly _tag: string }) => e._tag !== "FencedOut"
    /** The first attempt runs bare; a failure other than `FencedOut` retries on `transient`. */
    const withRetry = <A>(effect: Effect.Effect<A, ActorInfraError>): Effect.Effect<A, ActorInfraError> =>
      Effect.catchAll(effect, (error) =>
        notFenced(error) ? Effect.retry(effect, { schedule: transient, while: notFenced }) : Effect.fail(error))

    // One context per behaviour: the node's services plus those the behaviour captured.
    const contexts = new Map<string, Context.Context<never>>()
    const contextOf = (behaviour: RunnableBehaviour) => {
      let context = contexts.get(behaviour.type)
      if (context === undefined) {
        context = Context.merge(runtime.context, behaviour.context)
        contexts.set(behaviour.type, context)
      }
      return context
    }
    const baseAnnotations = FiberRefs.getOrDefault(runtime.fiberRefs, FiberRef.currentLogAnnotations)
    /**
     * One runtime per actor, made at activation, whose fiber refs already carry the
     * actor's address as a log annotation: whatever the behaviour logs says which actor.
     * Annotating each batch instead (`Effect.annotateLogs`) copied the fiber refs twice
     * per batch, about 10 KB of garbage per message on the hot path.
     */
    const runnerFor = (behaviour: RunnableBehaviour, key: string) =>
      Runtime.runCallback(Runtime.make({
        context: contextOf(behaviour),
        fiberRefs: FiberRefs.updateAs(runtime.fiberRefs, {
          fiberId: FiberId.none,
          fiberRef: FiberRef.currentLogAnnotations,
          value: HashMap.set(baseAnnotations, "actor", key)
        }),
        runtimeFlags: runtime.runtimeFlags
      }))

    const passivateAfterMs = Duration.toMillis(config.passivateAfter)

    /** Items answered (about to be): retries arriving from now on queue anew. */
    const settled = (instance: ActorInstance, items: ReadonlyArray<Item>) => {
      if (instance.pendingVolatile.size === 0) return
      for (const item of items) {
        if (instance.pendingVolatile.get(item.envelope.id) === item) instance.pendingVolatile.delete(item.envelope.id)
      }
    }

    /**
     * A sender's retry of a volatile request still queued or in flight here (its first
     * attempt timed out behind a slow batch) waits for the same answer instead of
     * queueing a copy: a slow actor's mailbox would otherwise fill with copies faster
     * than its senders send, and each copy be handled again (idempotently, but at a
     * cost). Bounded, as a sender's retries are.
     */
    const joinQueued = (instance: ActorInstance, item: Item): boolean => {
      const queued = instance.pendingVolatile.get(item.envelope.id)
      if (queued === undefined || queued.joined >= maxJoined) return false
      const first = queued.respond
      const retry = item.respond
      queued.respond = (data) => {
        first(data)
        retry(data)
      }
      queued.joined++
      metrics.retriesJoined.inc({ type: instance.behaviour.type })
      return true
    }

    /**
     * Removes the actor (idempotent); what is still queued is answered "retry"
     * (volatile) or left for redelivery (durable).
     */
    const close = (instance: ActorInstance) => {
      instance.closed = true
      if (actors.get(instance.key) === instance) actors.delete(instance.key)
      if (instance.idleTimer !== undefined) clearTimeout(instance.idleTimer)
      if (instance.alive) {
        instance.alive = false
        metrics.actorsAlive.dec({ type: instance.behaviour.type })
      }
      const rest = instance.mailbox.splice(0)
      instance.pendingVolatile.clear()
      for (const item of rest) if (item.delivery === "volatile") item.respond(retryReply(item.envelope.id))
      for (const wake of instance.spaceWaiters.splice(0)) wake()
    }

    const armPassivation = (instance: ActorInstance) => {
      if (instance.idleTimer === undefined) {
        instance.idleTimer = setTimeout(() => {
          // Only if nothing arrived meanwhile: intake starts a batch synchronously, so
          // an actor with mail is always running.
          if (!instance.running && instance.mailbox.length === 0) close(instance)
        }, passivateAfterMs)
        instance.idleTimer.unref()
      } else {
        instance.idleTimer.refresh()
      }
    }

    // A batch that completes synchronously calls back into `pump` from within it; past a
    // few levels the next batch starts from a microtask, so a long mailbox processed by
    // small batches cannot grow the stack without bound.
    let depth = 0
    const batchDone = (instance: ActorInstance) => {
      instance.running = false
      for (const wake of instance.idleWaiters.splice(0)) wake()
      if (depth >= 16) {
        queueMicrotask(() => pump(instance))
        return
      }
      depth++
      try {
        pump(instance)
      } finally {
        depth--
      }
    }

    /** Starts the next batch if the actor is idle and has mail. */
    const pump = (instance: ActorInstance): void => {
      if (instance.running) return
      if (instance.closed) {
        close(instance)
        return
      }
      if (instance.mailbox.length === 0) {
        armPassivation(instance)
        return
      }
      instance.running = true
      const run = instance.run
      if (!instance.alive) {
        run(withRetry(instance.behaviour.init(instance.ctx)), {
          onExit: (exit) => {
            if (Exit.isSuccess(exit)) {
              instance.state = exit.value
              instance.alive = true
              metrics.actorsAlive.inc({ type: instance.behaviour.type })
              batchDone(instance)
            } else {
              actorStopped(instance, exit.cause)
            }
          }
        })
        return
      }
      const items = instance.mailbox.length <= config.maxBatch ? instance.mailbox.splice(0) : instance.mailbox.splice(0, config.maxBatch)
      for (const wake of instance.spaceWaiters.splice(0)) wake()
      const batch = items.map((i) => i.incoming) as unknown as Parameters<RunnableBehaviour["receive"]>[2]
      metrics.batchSize.observe({ type: instance.behaviour.type }, items.length)
      run(Effect.uninterruptible(withRetry(instance.behaviour.receive(instance.ctx, instance.state, batch))), {
        onExit: (exit) => {
          if (Exit.isSuccess(exit)) {
            instance.state = exit.value
            const type = instance.behaviour.type
            const now = Date.now()
            settled(instance, items)
            for (const item of items) {
              settle(item)
              metrics.processingSeconds.observe({ type }, Math.max(0, now - item.incoming.sentAt) / 1000)
              metrics.messages.inc({ type, delivery: item.delivery, outcome: item.result?._tag === "Success" ? "ok" : "error" })
            }
            handled += items.length
            batchDone(instance)
          } else {
            run(recover(instance, items, exit.cause), { onExit: () => batchDone(instance) })
          }
        }
      })
    }

    /** After a failed batch: stop on `FencedOut`; otherwise restart with backoff, or dead-letter past the limit. */
    const recover = (instance: ActorInstance, items: ReadonlyArray<Item>, cause: Cause.Cause<ActorInfraError>): Effect.Effect<void> =>
      Effect.gen(function*() {
        const address = instance.key
        const failure = Cause.failureOption(cause)
        if (Option.isSome(failure) && failure.value._tag === "FencedOut") {
          // The shard is no longer ours: nothing is acked; senders retry elsewhere.
          settled(instance, items)
          for (const item of items) item.respond(retryReply(item.envelope.id))
          close(instance)
          yield* Deferred.succeed(fenced, failure.value)
          return
        }
        // A defect, or a transient failure that outlasted its retries.
        const reason = Cause.pretty(cause).slice(0, 2000)
        const now = performance.now()
        const restarts = instance.restarts
        restarts.push(now)
        while (restarts.length > 0 && now - (restarts[0] ?? now) > Duration.toMillis(config.restartWindow)) restarts.shift()
        metrics.restarts.inc({ type: instance.behaviour.type })
        if (restarts.length > config.maxRestarts) {
          yield* Effect.logError("actor failed past its restart limit; dead-lettering the batch", { actor: address, shard, reason })
          yield* deadLetter(instance.behaviour, items, reason)
          settled(instance, items)
          failItems(items, new ActorFailed({ address, commandId: items[0]?.envelope.id ?? "", reason: reason.slice(0, 500) }), true)
          restarts.length = 0
        } else {
          yield* Effect.logWarning("actor restarting after a failure", { actor: address, shard, attempt: restarts.length, reason })
          yield* Effect.sleep(Duration.millis(Math.min(5_000, 100 * 2 ** (restarts.length - 1))))
          // Put the batch back at the front: it is retried after the restart.
          instance.mailbox.unshift(...items)
        }
        // A fresh `init` before the next batch.
        if (instance.alive) {
          instance.alive = false
          metrics.actorsAlive.dec({ type: instance.behaviour.type })
        }
      })

    /** `init` failed for good: the actor is gone; its mail is answered "retry" or left for redelivery. */
    const actorStopped = (instance: ActorInstance, cause: Cause.Cause<ActorInfraError>) => {
      close(instance)
      instance.running = false
      for (const wake of instance.idleWaiters.splice(0)) wake()
      const failure = Cause.failureOption(cause)
      if (Option.isSome(failure) && failure.value._tag === "FencedOut") {
        runFork(Deferred.succeed(fenced, failure.value))
      } else if (!Cause.isInterruptedOnly(cause)) {
        runFork(Effect.logError("actor stopped", { actor: instance.key, shard, cause: Cause.pretty(cause) }))
      }
    }

    const activate = (address: ActorAddress.ActorAddress, key: string, behaviour: RunnableBehaviour): ActorInstance => {
      const existing = actors.get(key)
      if (existing !== undefined && !existing.closed) return existing
      const instance: ActorInstance = {
        address,
        key,
        behaviour,
        ctx: contextFor(address),
        run: runnerFor(behaviour, key),
        mailbox: [],
        pendingVolatile: new Map(),
        state: undefined,
        alive: false,
        running: false,
        closed: false,
        idleTimer: undefined,
        restarts: [],
        spaceWaiters: [],
        idleWaiters: []
      }
      actors.set(key, instance)
      return instance
    }

    /** Queues an item; false when the mailbox is full. */
    const offer = (instance: ActorInstance, item: Item): boolean => {
      if (instance.mailbox.length >= config.mailboxCapacity) return false
      instance.mailbox.push(item)
      if (item.delivery === "volatile" && !instance.pendingVolatile.has(item.envelope.id)) instance.pendingVolatile.set(item.envelope.id, item)
      pump(instance)
      return true
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
      // An active actor is found by the address as sent (keys are canonical addresses).
      let instance = actors.get(env.to)
      if (instance === undefined || instance.closed) {
        const address = ActorAddress.parse(env.to)
        if (Either.isLeft(address)) return bad(address.left.message)
        const behaviour = deps.behaviours.get(address.right.type)
        if (behaviour === undefined) return bad(`no behaviour for actor type ${address.right.type} on this node`)
        instance = activate(address.right, String(address.right), behaviour)
      }
      const message = instance.behaviour.entity.decode(env.msg)
      if (Either.isLeft(message)) return bad(message.left)
      const item: Item = {
        envelope: env,
        delivery,
        result: undefined,
        respond,
        joined: 0,
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
      return { _tag: "ok", instance, item }
    }

    // Volatile requests: answered over core NATS (or in process, `request`); a full
    // mailbox answers at once.
    const request = (data: Uint8Array, respond: (reply: Uint8Array) => void) => {
      if (stopped) {
        const id = Envelope.decodeRequest(data).pipe(Either.map((e) => e.id), Either.getOrElse(() => ""))
        respond(retryReply(id))
        return
      }
      const decoded = decode(data, "volatile", () => respond, () => {})
      if (decoded._tag === "bad") {
        if (decoded.reply !== undefined) respond(decoded.reply)
        runFork(Effect.logWarning("malformed request", { shard, reason: decoded.reason }))
        return
      }
      if (joinQueued(decoded.instance, decoded.item)) return
      if (!offer(decoded.instance, decoded.item)) {
        failItems([decoded.item], new MailboxFull({ address: decoded.item.envelope.to }), false)
      }
    }
    const onRequest = (msg: Msg) => request(msg.data, (reply) => msg.respond(reply))

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
      // Back-pressure: hold this shard's intake until the actor makes room.
      let instance = decoded.instance
      while (!offer(instance, decoded.item)) {
        await new Promise<void>((resolve) => instance.spaceWaiters.push(resolve))
        if (stopped) return // unacked: the next owner gets it
        if (instance.closed) instance = activate(instance.address, instance.key, instance.behaviour)
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
      const all = [...actors.values()]
      for (const instance of all) instance.closed = true
      yield* Effect.forEach(
        all.filter((instance) => instance.running),
        (instance) => Effect.async<void>((resume) => void instance.idleWaiters.push(() => resume(Effect.void))),
        { concurrency: "unbounded", discard: true }
      ).pipe(Effect.timeout(config.drainTimeout), Effect.ignore)
      for (const instance of all) close(instance)
      actors.clear()
      yield* log("shard stopped")
    })

    yield* Effect.addFinalizer(() => stop)

    return {
      shard,
      lease,
      fenced,
      stop,
      request,
      actorCount: () => actors.size,
      queuedMessages: () => {
        let n = 0
        for (const a of actors.values()) n += a.mailbox.length
        return n
      },
      handled: () => handled
    } satisfies ShardRunner
  })
