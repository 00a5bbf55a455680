/**
 * The wire format between senders and owners (JSON over NATS):
 *
 *   request  {"id": command id, "to": "type/id", "msg": <encoded request>, "reply"?: subject, "t": sent at (ms)}
 *   reply    {"id": command id, "exit": <encoded Exit>}  or  {"id", "error": <runtime error>}
 *
 * Payloads are bounded by the NATS max payload (1 MiB by default).
 */
import { Either, Exit, Schema } from "effect"
import { ActorFailed, MailboxFull, MalformedMessage } from "./RuntimeErrors.ts"

export interface RequestEnvelope {
  readonly id: string
  readonly to: string
  readonly msg: unknown
  readonly reply?: string
  readonly t: number
}

const RuntimeError = Schema.Union(ActorFailed, MalformedMessage, MailboxFull)
export type RuntimeError = Schema.Schema.Type<typeof RuntimeError>

export type ReplyEnvelope =
  | { readonly id: string; readonly exit: unknown }
  | { readonly id: string; readonly error: unknown }

const decoder = new TextDecoder()

// `Buffer.from` takes small payloads from Node's shared 8 KB pool; `TextEncoder` made an
// ArrayBuffer per message, each one for the scavenger to sweep.
export const encodeRequest = (envelope: RequestEnvelope): Uint8Array => Buffer.from(JSON.stringify(envelope), "utf8")

export const decodeRequest = (data: Uint8Array): Either.Either<RequestEnvelope, string> => {
  let parsed: unknown
  try {
    parsed = JSON.parse(decoder.decode(data))
  } catch (error) {
    return Either.left(`not JSON: ${error instanceof Error ? error.message : String(error)}`)
  }
  if (
    typeof parsed === "object" && parsed !== null &&
    "id" in parsed && typeof parsed.id === "string" &&
    "to" in parsed && typeof parsed.to === "string" &&
    "msg" in parsed && "t" in parsed && typeof parsed.t === "number"
  ) {
    const reply = "reply" in parsed && typeof parsed.reply === "string" ? parsed.reply : undefined
    return Either.right(reply === undefined
      ? { id: parsed.id, to: parsed.to, msg: parsed.msg, t: parsed.t }
      : { id: parsed.id, to: parsed.to, msg: parsed.msg, t: parsed.t, reply })
  }
  return Either.left("not a request envelope")
}

interface ExitCodec {
  readonly encode: (exit: Exit.Exit<unknown, unknown>) => Either.Either<unknown, string>
  readonly decode: (encoded: unknown) => Either.Either<Exit.Exit<unknown, unknown>, string>
}

// Building and compiling an Exit schema is far costlier than using one: compile once
// per request class (its constructor), not once per message.
const exitCodecs = new WeakMap<object, ExitCodec>()

const exitCodec = (request: Schema.TaggedRequest.All): ExitCodec => {
  const key = (request as { readonly constructor: object }).constructor
  const cached = exitCodecs.get(key)
  if (cached !== undefined) return cached
  const schema = Schema.exitSchema(request as unknown as Schema.TaggedRequest.Any) as Schema.Schema<Exit.Exit<unknown, unknown>, unknown>
  const encode = Schema.encodeEither(schema)
  const decode = Schema.decodeUnknownEither(schema)
  // A success (nearly every reply) is `{_tag: "Success", value}` with the value in its
  // own schema's form: coded by the success schema alone, a quarter of the garbage and
  // a tenth of the time of the whole Exit schema. Failures take the full schema.
  const success = (request as unknown as Schema.WithResult<unknown, unknown, unknown, unknown, never>)[Schema.symbolWithResult].success as Schema.Schema<unknown, unknown>
  const encodeSuccess = Schema.encodeEither(success)
  const decodeSuccess = Schema.decodeUnknownEither(success)
  const codec: ExitCodec = {
    encode: (exit) => {
      if (exit._tag !== "Success") return Either.mapLeft(encode(exit), (e) => e.message)
      const value = encodeSuccess(exit.value)
      return Either.isRight(value) ? Either.right({ _tag: "Success", value: value.right }) : Either.left(value.left.message)
    },
    decode: (encoded) => {
      if (!(typeof encoded === "object" && encoded !== null && "_tag" in encoded && encoded._tag === "Success" && "value" in encoded)) {
        return Either.mapLeft(decode(encoded), (e) => e.message)
      }
      const value = decodeSuccess(encoded.value)
      return Either.isRight(value) ? Either.right(Exit.succeed(value.right)) : Either.left(value.left.message)
    }
  }
  exitCodecs.set(key, codec)
  return codec
}

/** Encodes a handler's Exit with the request's own success and failure schemas. */
export const encodeExit = <Req extends Schema.TaggedRequest.All>(
  request: Req,
  exit: Exit.Exit<unknown, unknown>
): Either.Either<unknown, string> => exitCodec(request).encode(exit)

export const decodeExit = <Req extends Schema.TaggedRequest.All>(
  request: Req,
  encoded: unknown
): Either.Either<Exit.Exit<unknown, unknown>, string> => exitCodec(request).decode(encoded)

const encodeRuntimeErrorSync = Schema.encodeSync(RuntimeError)
const decodeRuntimeErrorEither = Schema.decodeUnknownEither(RuntimeError)

export const encodeRuntimeError = (error: RuntimeError): unknown => encodeRuntimeErrorSync(error)
export const decodeRuntimeError = (encoded: unknown) => decodeRuntimeErrorEither(encoded)

export const encodeReply = (reply: ReplyEnvelope): Uint8Array => Buffer.from(JSON.stringify(reply), "utf8")

export const decodeReply = (data: Uint8Array): Either.Either<ReplyEnvelope, string> => {
  try {
    const parsed: unknown = JSON.parse(decoder.decode(data))
    if (typeof parsed === "object" && parsed !== null && "id" in parsed && typeof parsed.id === "string") {
      if ("exit" in parsed) return Either.right({ id: parsed.id, exit: parsed.exit })
      if ("error" in parsed) return Either.right({ id: parsed.id, error: parsed.error })
    }
    return Either.left("not a reply envelope")
  } catch (error) {
    return Either.left(`not JSON: ${error instanceof Error ? error.message : String(error)}`)
  }
}
