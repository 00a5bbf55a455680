/**
 * Sends messages to actors from any process with a NATS connection (a node, a
 * gateway, a benchmark's load generator). The sender needs no ring: it addresses the
 * shard's subject, and whichever node holds that shard's lease answers.
 *
 * - volatile: core NATS request to `<cluster>.req.<shard>`; on no responder (the shard
 *   is moving), a timeout or a "retry" answer, it retries with the same command id
 *   and jittered backoff until `requestDeadline`. In a node, a request to a shard the
 *   node serves skips NATS and goes to the local runner (LocalShards.ts).
 * - durable: JetStream publish to `<cluster>.cmd.<shard>` with the command id as
 *   `Nats-Msg-Id` (the stream drops duplicates), then waits for the owner's reply on
 *   this client's inbox. The publish ack means the command is stored: it will be
 *   applied even if every owner dies before it is, and the reply comes from whichever
 *   owner applies it. A retry that the stream reports as a duplicate asks the owner
 *   over the volatile path instead (the first send's reply went to the first sender).
 */
import { createInbox, headers as natsHeaders } from "@nats-io/transport-node"
import type { Msg, MsgHdrs } from "@nats-io/transport-node"
import { Context, Duration, Effect, Either, Exit, Layer, Option } from "effect"
import type { Schema } from "effect"
import { randomUUID } from "node:crypto"
import { performance } from "node:perf_hooks"
import { ChorusConfig } from "../config/ChorusConfig.ts"
import { Nats } from "../transport/Nats.ts"
import { ActorAddress } from "./ActorAddress.ts"
import type { Entity, FailureOf, SuccessOf } from "./Entity.ts"
import * as Envelope from "./Envelope.ts"
import { LocalShards } from "./LocalShards.ts"
import { shardOf } from "./Ring.ts"
import type { DeliveryError } from "./RuntimeErrors.ts"
import { DeliveryTimeout, MalformedMessage } from "./RuntimeErrors.ts"
import type { RuntimeMetricsShape } from "./RuntimeMetrics.ts"

export interface SendOptions {
  /** Idempotency key; a retry of the same logical command must reuse it. Default: random. */
  readonly commandId?: string
  /** Overrides the entity's delivery mode for this message. */
  readonly delivery?: "durable" | "volatile"
}

export interface ShardingClientShape {
  /** Sends and waits for the reply: success only once the effect is committed. */
  readonly send: <Req extends Schema.TaggedRequest.All>(
    entity: Entity<Req>,
    id: string,
    message: Req,
    options?: SendOptions
  ) => Effect.Effect<SuccessOf<Req>, FailureOf<Req> | DeliveryError>
  /** Stores a durable command and returns once JetStream has it; no reply awaited. */
  readonly tell: <Req extends Schema.TaggedRequest.All>(
    entity: Entity<Req>,
    id: string,
    message: Req,
    options?: { readonly commandId?: string }
  ) => Effect.Effect<void, DeliveryError>
  readonly shardOf: (address: ActorAddress) => number
}

export class ShardingClient extends Context.Tag("chorus/runtime/ShardingClient")<ShardingClient, ShardingClientShape>() {}

const sleepJittered = (attempt: number) =>
  Effect.sleep(Duration.millis(Math.min(500, 20 * 2 ** Math.min(attempt, 5)) * (0.5 + Math.random())))

export const make = (metrics?: RuntimeMetricsShape) =>
  Effect.gen(function*() {
    const config = yield* ChorusConfig
    const nats = yield* Nats
    const local = Option.getOrUndefined(yield* Effect.serviceOption(LocalShards))
    const timeoutMs = Duration.toMillis(config.requestTimeout)
    const deadlineMs = Duration.toMillis(config.requestDeadline)

    // One inbox subscription for every reply to this client, volatile and durable.
    const inbox = createInbox()
    const pending = new Map<string, (msg: Msg) => void>()
    const inboxSub = nats.nc.subscribe(`${inbox}.*`, {
      callback: (error, msg: Msg) => {
        if (error !== null) return
        pending.get(msg.subject.slice(inbox.length + 1))?.(msg)
      }
    })
    yield* Effect.addFinalizer(() => Effect.sync(() => inboxSub.unsubscribe()))
    let nextToken = 0

    /**
     * A core NATS request answered on this client's inbox. Not `nc.request`: it builds
     * an Error (a stack capture) for every request, even a successful one, which was
     * a tenth of a busy sender's CPU.
     */
    const request = (subject: string, data: Uint8Array, headers?: MsgHdrs): Effect.Effect<RequestAnswer> =>
      Effect.async<RequestAnswer>((resume) => {
        const token = String(nextToken++)
        const timer = setTimeout(() => {
          pending.delete(token)
          resume(Effect.succeed(timedOut))
        }, timeoutMs)
        pending.set(token, (msg) => {
          pending.delete(token)
          clearTimeout(timer)
          // The server answers a request nobody subscribes to with an empty 503 status message.
          resume(Effect.succeed(msg.data.length === 0 && msg.headers?.code === 503 ? noResponders : { _tag: "Reply", data: msg.data }))
        })
        try {
          nats.nc.publish(subject, data, headers === undefined ? { reply: `${inbox}.${token}` } : { reply: `${inbox}.${token}`, headers })
        } catch (error) {
          pending.delete(token)
          clearTimeout(timer)
          resume(Effect.succeed({ _tag: "Failed", error }))
        }
        return Effect.sync(() => {
          pending.delete(token)
          clearTimeout(timer)
        })
      })

    /** The same request to a runner of this process, when it serves the shard. */
    const requestLocally = (shard: number, data: Uint8Array): Effect.Effect<RequestAnswer> | undefined => {
      if (local === undefined) return undefined
      // The runner may answer at once (a full mailbox, a stopping shard), before the wait.
      const answer = answerSlot<Uint8Array>()
      if (!local.request(shard, data, answer.put)) return undefined
      return Effect.map(answer.take(timeoutMs), (reply): RequestAnswer => reply === undefined ? timedOut : { _tag: "Reply", data: reply })
    }

    const addressShard = (address: ActorAddress) => shardOf(String(address), config.shards)

    const decodeAnswer = <Req extends Schema.TaggedRequest.All>(
      address: string,
      message: Req,
      reply: Envelope.ReplyEnvelope
    ): Effect.Effect<Option.Option<SuccessOf<Req>>, FailureOf<Req> | DeliveryError> => {
      if ("exit" in reply) {
        const exit = Envelope.decodeExit(message, reply.exit)
        if (Either.isLeft(exit)) return Effect.fail(new MalformedMessage({ address, reason: `undecodable reply: ${exit.left}` }))
        return Effect.map(exit.right as Exit.Exit<SuccessOf<Req>, FailureOf<Req>>, Option.some)
      }
      const error = reply.error
      if (typeof error === "object" && error !== null && "_tag" in error && error._tag === "Retry") {
        return Effect.succeed(Option.none())
      }
      const decoded = Envelope.decodeRuntimeError(error)
      return Either.isRight(decoded)
        ? Effect.fail(decoded.right)
        : Effect.fail(new MalformedMessage({ address, reason: "undecodable runtime error" }))
    }

    const encode = <Req extends Schema.TaggedRequest.All>(entity: Entity<Req>, address: ActorAddress, message: Req) => {
      const encoded = entity.encode(message)
      return Either.isRight(encoded) ? Either.right(encoded.right) : Either.left(new MalformedMessage({ address: String(address), reason: encoded.left }))
    }

    const sendVolatile = Effect.fnUntraced(function*<Req extends Schema.TaggedRequest.All>(
      entity: Entity<Req>,
      address: ActorAddress,
      message: Req,
      commandId: string,
      firstSentAt: number = Date.now()
    ) {
      const msg = yield* encode(entity, address, message)
      const shard = addressShard(address)
      const subject = nats.names.requestSubject(shard)
      const started = performance.now()
      // One logical command, one send time: retries keep the first attempt's, which
      // owners use to tell commands a previous owner may have applied.
      const data = Envelope.encodeRequest({ id: commandId, to: String(address), msg, t: firstSentAt })
      for (let attempt = 0;; attempt++) {
        const answer = yield* (requestLocally(shard, data) ?? request(subject, data))
        if (answer._tag === "Reply") {
          const reply = Envelope.decodeReply(answer.data)
          if (Either.isLeft(reply)) return yield* new MalformedMessage({ address: String(address), reason: reply.left })
          const result = yield* decodeAnswer(String(address), message, reply.right)
          if (Option.isSome(result)) {
            metrics?.sendSeconds.observe({ delivery: "volatile" }, (performance.now() - started) / 1000)
            return result.value
          }
        } else if (answer._tag === "Failed" && !isRetryable(answer.error)) {
          return yield* Effect.die(answer.error)
        }
        const waited = performance.now() - started
        if (waited > deadlineMs) {
          return yield* new DeliveryTimeout({ address: String(address), commandId, waitedMs: Math.round(waited) })
        }
        yield* sleepJittered(attempt)
      }
    })

    const publishDurable = Effect.fnUntraced(function*(
      address: ActorAddress,
      data: Uint8Array,
      commandId: string,
      started: number
    ) {
      const subject = nats.names.commandSubject(addressShard(address))
      // JetStream's publish protocol on this client's inbox (as `js.publish` does, minus
      // its per-call Error): the stream answers with a PubAck, or an error, or nothing.
      const headers = natsHeaders()
      headers.set("Nats-Msg-Id", commandId)
      for (let attempt = 0;; attempt++) {
        const answer = yield* request(subject, data, headers)
        const ack = answer._tag === "Reply" ? pubAckOf(answer.data) : { error: answer._tag === "Failed" ? String(answer.error) : answer._tag }
        if ("duplicate" in ack) return ack
        const waited = performance.now() - started
        if (waited > deadlineMs) return yield* new DeliveryTimeout({ address: String(address), commandId, waitedMs: Math.round(waited) })
        yield* Effect.logDebug("command publish failed; retrying", { address: String(address), error: ack.error })
        yield* sleepJittered(attempt)
      }
    })

    const isRetryAnswer = (reply: Envelope.ReplyEnvelope) =>
      "error" in reply && typeof reply.error === "object" && reply.error !== null && "_tag" in reply.error && reply.error._tag === "Retry"

    /** Publishes a durable command and waits for its reply on `token` (registered by the caller). */
    const publishAndAwait = Effect.fnUntraced(function*<Req extends Schema.TaggedRequest.All>(
      entity: Entity<Req>,
      address: ActorAddress,
      message: Req,
      commandId: string,
      msg: unknown,
      token: string,
      started: number,
      answer: AnswerSlot<Envelope.ReplyEnvelope>
    ) {
      const sentAt = Date.now()
      const data = Envelope.encodeRequest({ id: commandId, to: String(address), msg, reply: `${inbox}.${token}`, t: sentAt })
      const { duplicate } = yield* publishDurable(address, data, commandId, started)
      if (duplicate) {
        // A retry of a command the stream already has: its reply goes to the first
        // sender. Ask the owner directly; the handler is idempotent on the id, so
        // this answers with the command's outcome without applying it twice.
        return yield* sendVolatile(entity, address, message, commandId, sentAt)
      }
      // The reply may be lost (sent while this client was disconnected). After
      // each requestTimeout without one, publish again: the stream reports the
      // duplicate, and the owner is asked directly (idempotently) for the outcome.
      // Re-asks back off (requestTimeout, then twice that, …): under overload a
      // fixed interval would multiply the load that caused the delay.
      let reply: Envelope.ReplyEnvelope | undefined
      let wait = timeoutMs
      while (reply === undefined) {
        const remaining = deadlineMs - (performance.now() - started)
        if (remaining <= 0) {
          return yield* new DeliveryTimeout({ address: String(address), commandId, waitedMs: Math.round(performance.now() - started) })
        }
        reply = yield* answer.take(Math.min(remaining, wait))
        wait *= 2
        if (reply === undefined && deadlineMs - (performance.now() - started) > 0) {
          const again = yield* publishDurable(address, data, commandId, started)
          if (again.duplicate) return yield* sendVolatile(entity, address, message, commandId, sentAt)
        }
      }
      const result = yield* decodeAnswer(String(address), message, reply)
      if (Option.isNone(result)) return yield* Effect.die(new Error("unreachable: retry answer for a durable command"))
      metrics?.sendSeconds.observe({ delivery: "durable" }, (performance.now() - started) / 1000)
      return result.value
    })

    const sendDurable = <Req extends Schema.TaggedRequest.All>(
      entity: Entity<Req>,
      address: ActorAddress,
      message: Req,
      commandId: string
    ): Effect.Effect<SuccessOf<Req>, FailureOf<Req> | DeliveryError> =>
      // Suspended: each run registers its own reply token (a retried effect must too).
      Effect.suspend(() => {
        const msg = encode(entity, address, message)
        if (Either.isLeft(msg)) return Effect.fail(msg.left)
        const token = String(nextToken++)
        const started = performance.now()
        // The reply may come before anyone waits for it (right after the publish ack).
        const answer = answerSlot<Envelope.ReplyEnvelope>()
        pending.set(token, (reply) => {
          const decoded = Envelope.decodeReply(reply.data)
          if (Either.isLeft(decoded)) return
          // "Retry" answers concern volatile senders; a durable command stays queued.
          if (!isRetryAnswer(decoded.right)) answer.put(decoded.right)
        })
        return publishAndAwait(entity, address, message, commandId, msg.right, token, started, answer).pipe(
          Effect.ensuring(Effect.sync(() => pending.delete(token)))
        )
      })

    const send: ShardingClientShape["send"] = (entity, id, message, options) => {
      const address = new ActorAddress({ type: entity.type, id })
      const commandId = options?.commandId ?? randomUUID()
      const delivery = options?.delivery ?? entity.delivery(message._tag)
      return delivery === "durable"
        ? sendDurable(entity, address, message, commandId)
        : sendVolatile(entity, address, message, commandId)
    }

    const tell: ShardingClientShape["tell"] = (entity, id, message, options) =>
      Effect.suspend((): Effect.Effect<void, DeliveryError> => {
        const address = new ActorAddress({ type: entity.type, id })
        const commandId = options?.commandId ?? randomUUID()
        const msg = encode(entity, address, message)
        if (Either.isLeft(msg)) return Effect.fail(msg.left)
        const data = Envelope.encodeRequest({ id: commandId, to: String(address), msg: msg.right, t: Date.now() })
        return Effect.asVoid(publishDurable(address, data, commandId, performance.now()))
      })

    return { send, tell, shardOf: addressShard } satisfies ShardingClientShape
  })

/**
 * One answer that may come before anyone waits for it (it is kept) or while someone
 * waits (at most `ms`; undefined after). A plain callback and timer, not a Deferred
 * raced against a timeout: it is on every send's path.
 */
interface AnswerSlot<A> {
  readonly put: (answer: A) => void
  readonly take: (ms: number) => Effect.Effect<A | undefined>
}

const answerSlot = <A>(): AnswerSlot<A> => {
  let early: A | undefined
  let waiter: ((answer: A) => void) | undefined
  return {
    put: (answer: A): void => {
      if (waiter !== undefined) waiter(answer)
      else early ??= answer
    },
    take: (ms: number): Effect.Effect<A | undefined> =>
      Effect.async<A | undefined>((resume) => {
        if (early !== undefined) return resume(Effect.succeed(early))
        const timer = setTimeout(() => {
          waiter = undefined
          resume(Effect.succeed(undefined))
        }, ms)
        waiter = (answer) => {
          waiter = undefined
          clearTimeout(timer)
          resume(Effect.succeed(answer))
        }
        return Effect.sync(() => {
          waiter = undefined
          clearTimeout(timer)
        })
      })
  }
}

type RequestAnswer =
  | { readonly _tag: "Reply"; readonly data: Uint8Array }
  | { readonly _tag: "NoResponders" }
  | { readonly _tag: "TimedOut" }
  | { readonly _tag: "Failed"; readonly error: unknown }

const pubAckDecoder = new TextDecoder()

/** A JetStream publish answer: stored (perhaps as a duplicate of an earlier publish), or refused. */
const pubAckOf = (data: Uint8Array): { readonly duplicate: boolean } | { readonly error: string } => {
  try {
    const parsed: unknown = JSON.parse(pubAckDecoder.decode(data))
    if (typeof parsed === "object" && parsed !== null) {
      if ("error" in parsed) return { error: JSON.stringify(parsed.error) }
      if ("stream" in parsed && "seq" in parsed) return { duplicate: "duplicate" in parsed && parsed.duplicate === true }
    }
    return { error: "not a publish acknowledgement" }
  } catch (error) {
    return { error: `not JSON: ${String(error)}` }
  }
}

const noResponders: RequestAnswer = { _tag: "NoResponders" }
const timedOut: RequestAnswer = { _tag: "TimedOut" }

const isRetryable = (error: unknown): boolean =>
  // Disconnected during a NATS restart: the client reconnects by itself.
  error instanceof Error && /disconnect|closed|reconnect|timeout/i.test(error.message)

export const layer = (metrics?: RuntimeMetricsShape) => Layer.scoped(ShardingClient, make(metrics))
