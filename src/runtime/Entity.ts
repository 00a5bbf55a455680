/**
 * An entity is an actor type's protocol: its name, the requests it accepts (Effect
 * Schema tagged requests, so every request carries its success and failure schemas)
 * and the delivery mode of each request:
 *
 * - `durable`: through the shard's JetStream mailbox, acknowledged only after the
 *   effect is committed; survives the death of the owner and of the sender.
 * - `volatile`: core NATS request/reply to the owner; for requests whose sender waits
 *   for the answer and retries anyway. About ten times cheaper.
 *
 * Both carry a command id; handlers must be idempotent on it.
 */
import type { Exit } from "effect"
import { Either, Schema } from "effect"

export type Delivery = "durable" | "volatile"

/** A tagged-request class as produced by `Schema.TaggedRequest`. */
export type RequestClass = Schema.Schema.AnyNoContext & { readonly _tag: string }

export type Requests<Classes extends ReadonlyArray<RequestClass>> = Schema.Schema.Type<Classes[number]> & Schema.TaggedRequest.All

export interface Entity<Req extends Schema.TaggedRequest.All> {
  readonly type: string
  readonly schema: Schema.Schema<Req, { readonly _tag: string }>
  readonly delivery: (tag: Req["_tag"]) => Delivery
  /** Decodes a request from its wire form (JSON value). */
  readonly decode: (input: unknown) => Either.Either<Req, string>
  /** Encodes a request to its wire form. */
  readonly encode: (request: Req) => Either.Either<unknown, string>
}

export type SuccessOf<Req> = Req extends Schema.WithResult<infer A, infer _I, infer _E, infer _EI, infer _R> ? A : never
export type FailureOf<Req> = Req extends Schema.WithResult<infer _A, infer _I, infer E, infer _EI, infer _R> ? E : never
export type ExitOf<Req> = Exit.Exit<SuccessOf<Req>, FailureOf<Req>>

export const make = <const Classes extends readonly [RequestClass, ...ReadonlyArray<RequestClass>]>(
  type: string,
  requests: Classes,
  delivery: { readonly [K in Classes[number]["_tag"]]: Delivery }
): Entity<Requests<Classes>> => {
  if (!/^[a-z][a-z0-9_-]{0,63}$/.test(type)) throw new Error(`invalid entity type ${type}`)
  const schema = Schema.Union(...requests) as unknown as Schema.Schema<Requests<Classes>, { readonly _tag: string }>
  const modes = delivery as Readonly<Record<string, Delivery>>
  const decode = Schema.decodeUnknownEither(schema)
  const encode = Schema.encodeEither(schema)
  return {
    type,
    schema,
    delivery: (tag) => modes[tag] ?? "volatile",
    // Plain branches, not `Either.mapLeft`: this is on every message's path, and the
    // combinator (with its closure) cost several times the decode itself.
    decode: (input) => {
      const decoded = decode(input)
      return Either.isRight(decoded) ? Either.right(decoded.right) : Either.left(decoded.left.message)
    },
    encode: (request) => {
      const encoded = encode(request)
      return Either.isRight(encoded) ? Either.right(encoded.right) : Either.left(encoded.left.message)
    }
  }
}
