/**
 * The Web API's method contract: a method is a function from a parsed request (its
 * arguments, the caller's token, a request id) to the fields of an `ok:true` answer,
 * or an `ApiError` carrying Slack's error code. Methods are registered by name in an
 * `ApiMethods` registry; the HTTP layer does the parsing and the envelope.
 */
import { Context, Effect, Schema } from "effect"

export interface ApiRequest {
  readonly method: string
  readonly requestId: string
  /** Arguments from the query string and the body (form, JSON or multipart). */
  readonly args: Readonly<Record<string, unknown>>
  /** Bearer token from the Authorization header, else the `token` argument. */
  readonly token: string | undefined
  readonly headers: Readonly<Record<string, string | undefined>>
}

/** A Slack-style failure: HTTP 200 with `{"ok":false,"error":code}` unless `status` says otherwise. */
export class ApiError extends Schema.TaggedError<ApiError>()("ApiError", {
  code: Schema.String,
  status: Schema.optional(Schema.Number),
  /** Extra fields merged into the error answer (e.g. `needed`, `provided`). */
  detail: Schema.optional(Schema.Record({ key: Schema.String, value: Schema.Unknown })),
  /** Argument problems, as `response_metadata.messages`. */
  messages: Schema.optional(Schema.Array(Schema.String)),
  retryAfterSeconds: Schema.optional(Schema.Number)
}) {}

export type ApiResult = Readonly<Record<string, unknown>>
export type ApiHandler = (request: ApiRequest) => Effect.Effect<ApiResult, ApiError>

export interface ApiMethodsShape {
  readonly methods: ReadonlyMap<string, ApiHandler>
}

export class ApiMethods extends Context.Tag("chorus/transport/ApiMethods")<ApiMethods, ApiMethodsShape>() {}

/** Reads a required string argument. */
export const requireString = (request: ApiRequest, name: string): Effect.Effect<string, ApiError> => {
  const value = request.args[name]
  if (typeof value === "string" && value.length > 0) return Effect.succeed(value)
  if (typeof value === "number") return Effect.succeed(String(value))
  return Effect.fail(new ApiError({ code: value === undefined ? "invalid_arguments" : "invalid_arg_name", messages: [`[ERROR] missing required field: ${name}`] }))
}

export const optionalString = (request: ApiRequest, name: string): string | undefined => {
  const value = request.args[name]
  if (typeof value === "string" && value.length > 0) return value
  if (typeof value === "number") return String(value)
  return undefined
}

export const optionalNumber = (request: ApiRequest, name: string): Effect.Effect<number | undefined, ApiError> => {
  const value = request.args[name]
  if (value === undefined || value === "") return Effect.succeed(undefined)
  const n = typeof value === "number" ? value : Number(value)
  return Number.isFinite(n)
    ? Effect.succeed(n)
    : Effect.fail(new ApiError({ code: "invalid_arguments", messages: [`[ERROR] ${name} must be a number`] }))
}
