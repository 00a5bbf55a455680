/**
 * A behaviour is what an actor does: its state, how it starts, and how it handles a
 * batch of messages. It holds no sockets and no pools; it reaches the world through
 * Effect services (its `R`) and through its context's fenced transaction.
 *
 * The runtime hands `receive` every message that queued up while the previous batch
 * ran (up to `maxBatch`), which is what makes group commit natural: one transaction
 * for the batch, then complete each message. Simple actors use `Behaviour.sequential`
 * and write one handler per request tag.
 *
 * Failures:
 * - a request's own failure (its schema's `failure`) is a reply, via `complete`;
 * - `ActorInfraError` (PostgreSQL, NATS, a lost lease) fails `receive`: the runtime
 *   retries transient ones with backoff and stops the shard on `FencedOut`;
 * - a defect restarts the actor (fresh `init`) with backoff; past the restart limit
 *   the batch goes to the dead-letter stream and its senders get `ActorFailed`.
 */
import type { SqlError } from "@effect/sql/SqlError"
import type { SqlClient } from "@effect/sql"
import { Effect, Exit } from "effect"
import type { Context } from "effect"
import type { Array as Arr, Schema } from "effect"
import type { ActorAddress } from "./ActorAddress.ts"
import type { Delivery, Entity, ExitOf, FailureOf, SuccessOf } from "./Entity.ts"
import type * as GroupCommit from "./GroupCommit.ts"
import type { FencedOut } from "./RuntimeErrors.ts"
import type { NatsError } from "../transport/Nats.ts"

export type ActorInfraError = SqlError | FencedOut | NatsError

export interface ActorContext {
  readonly address: ActorAddress
  /** The cluster namespace (several clusters may share one database). */
  readonly cluster: string
  readonly shard: number
  /** The lease epoch under which this node serves the shard. */
  readonly epoch: number
  readonly nodeId: string
  /**
   * Runs `effect` in one PostgreSQL transaction that commits only while this node
   * still holds the shard at `epoch` (checked against the fence row, FOR SHARE).
   */
  readonly transaction: <A, E, R>(
    effect: Effect.Effect<A, E, R>
  ) => Effect.Effect<A, E | SqlError | FencedOut, Exclude<R, SqlClient.SqlClient>>
  /**
   * Persists row writes under the shard's fence, group-committed with the writes of
   * every other actor on this node (one transaction, one statement per table shape).
   * The way to write on the hot path; `transaction` is for what rows cannot express.
   */
  readonly commit: (writes: ReadonlyArray<GroupCommit.Write>) => Effect.Effect<void, SqlError | FencedOut>
}

interface IncomingOf<Req extends Schema.TaggedRequest.All> {
  readonly _tag: Req["_tag"]
  readonly message: Req
  readonly commandId: string
  readonly delivery: Delivery
  /** When the sender sent it (ms since epoch), for latency metrics. */
  readonly sentAt: number
  /** Settles the reply; the first call wins. Sent after the batch (and ack) completes. */
  readonly complete: (exit: ExitOf<Req>) => void
}

/** One incoming message; narrows by `_tag` to its request type. */
export type Incoming<Req extends Schema.TaggedRequest.All> = Req extends Schema.TaggedRequest.All ? IncomingOf<Req> : never

export interface Behaviour<Req extends Schema.TaggedRequest.All, State, R> {
  readonly entity: Entity<Req>
  readonly init: (ctx: ActorContext) => Effect.Effect<State, ActorInfraError, R>
  readonly receive: (
    ctx: ActorContext,
    state: State,
    batch: Arr.NonEmptyReadonlyArray<Incoming<Req>>
  ) => Effect.Effect<State, ActorInfraError, R>
}

/**
 * A behaviour with its services captured: what the actor host runs. `init` and
 * `receive` need `context`; the host runs them in a runtime that holds it (built once
 * per behaviour), which costs nothing per message, unlike `Effect.provide` per batch.
 */
export interface RunnableBehaviour {
  readonly type: string
  readonly entity: Entity<Schema.TaggedRequest.All>
  readonly context: Context.Context<never>
  readonly init: (ctx: ActorContext) => Effect.Effect<unknown, ActorInfraError>
  readonly receive: (
    ctx: ActorContext,
    state: unknown,
    batch: Arr.NonEmptyReadonlyArray<Incoming<Schema.TaggedRequest.All>>
  ) => Effect.Effect<unknown, ActorInfraError>
}

export const make = <Req extends Schema.TaggedRequest.All, State, R>(
  behaviour: Behaviour<Req, State, R>
): Behaviour<Req, State, R> => behaviour

/** Captures the services a behaviour needs, so the host can run it without them. */
export const toRunnable = <Req extends Schema.TaggedRequest.All, State, R>(
  behaviour: Behaviour<Req, State, R>
): Effect.Effect<RunnableBehaviour, never, R> =>
  Effect.map(Effect.context<R>(), (context) => ({
    type: behaviour.entity.type,
    entity: behaviour.entity as unknown as Entity<Schema.TaggedRequest.All>,
    context: context as Context.Context<never>,
    // The requirement R is met by `context`, which the host puts in the runtime it runs these in.
    init: (ctx) => behaviour.init(ctx) as Effect.Effect<State, ActorInfraError>,
    receive: (ctx, state, batch) =>
      behaviour.receive(ctx, state as State, batch as unknown as Arr.NonEmptyReadonlyArray<Incoming<Req>>) as Effect.Effect<
        State,
        ActorInfraError
      >
  }))

type Handlers<Req extends Schema.TaggedRequest.All, State, R> = {
  readonly [Tag in Req["_tag"]]: (
    ctx: ActorContext,
    state: State,
    message: Extract<Req, { readonly _tag: Tag }>,
    meta: { readonly commandId: string; readonly delivery: Delivery }
  ) => Effect.Effect<
    readonly [State, SuccessOf<Extract<Req, { readonly _tag: Tag }>>],
    FailureOf<Extract<Req, { readonly _tag: Tag }>> | ActorInfraError,
    R
  >
}

const infraTags = new Set(["SqlError", "FencedOut", "NatsError"])
const isInfraError = (error: unknown): error is ActorInfraError =>
  typeof error === "object" && error !== null && "_tag" in error && typeof error._tag === "string" &&
  infraTags.has(error._tag)

/**
 * A behaviour that handles one message at a time with a handler per tag. A handler's
 * request failure becomes the reply and leaves the state as it was.
 */
export const sequential = <Req extends Schema.TaggedRequest.All, State, R>(options: {
  readonly entity: Entity<Req>
  readonly init: (ctx: ActorContext) => Effect.Effect<State, ActorInfraError, R>
  readonly handlers: Handlers<Req, State, R>
}): Behaviour<Req, State, R> => ({
  entity: options.entity,
  init: options.init,
  receive: (ctx, state, batch) =>
    Effect.reduce(batch, state, (current, incoming) => {
      const handler = options.handlers[incoming._tag as Req["_tag"]] as unknown as (
        ctx: ActorContext,
        state: State,
        message: Req,
        meta: { readonly commandId: string; readonly delivery: Delivery }
      ) => Effect.Effect<readonly [State, unknown], unknown, R>
      const settle = incoming.complete as (exit: Exit.Exit<unknown, unknown>) => void
      return handler(ctx, current, incoming.message as Req, { commandId: incoming.commandId, delivery: incoming.delivery }).pipe(
        Effect.matchEffect({
          onSuccess: ([next, reply]) => Effect.sync(() => {
            settle(Exit.succeed(reply))
            return next
          }),
          onFailure: (error) =>
            isInfraError(error)
              ? Effect.fail(error)
              : Effect.sync(() => {
                settle(Exit.fail(error))
                return current
              })
        })
      )
    })
})
