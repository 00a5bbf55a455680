/**
 * The HTTP surface of a node: `GET /healthz`, `GET /metrics` (Prometheus text) and
 * the Web API at `/api/<method>` (GET with a query string, or POST with a form,
 * JSON or multipart body), answered Slack's way: HTTP 200 with `ok:true|false`, 429
 * with `Retry-After` when rate limited.
 */
import { HttpRouter, HttpServer, HttpServerRequest, HttpServerResponse } from "@effect/platform"
import { Effect, Option } from "effect"
import { randomUUID } from "node:crypto"
import { ChorusConfig } from "../config/ChorusConfig.ts"
import * as RuntimeMetrics from "../runtime/RuntimeMetrics.ts"
import type { ApiRequest } from "./ApiMethod.ts"
import { ApiError, ApiMethods } from "./ApiMethod.ts"
import { RateLimiter } from "./RateLimiter.ts"

const errorBody = (error: ApiError) => ({
  ok: false,
  error: error.code,
  ...(error.detail ?? {}),
  ...(error.messages === undefined ? {} : { response_metadata: { messages: error.messages } })
})

/** Parses a body by content type into arguments; object values stay as sent. */
export const parseBody = (contentType: string, text: string): Either<Record<string, unknown>> => {
  if (text.length === 0) return { ok: true, value: {} }
  if (contentType.includes("application/json")) {
    try {
      const parsed: unknown = JSON.parse(text)
      if (typeof parsed === "object" && parsed !== null && !Array.isArray(parsed)) return { ok: true, value: parsed as Record<string, unknown> }
      return { ok: false, error: "invalid_json" }
    } catch {
      // JSON.parse's message would leak nothing useful to the caller; the code says it all.
      return { ok: false, error: "invalid_json" }
    }
  }
  if (contentType.includes("application/x-www-form-urlencoded") || contentType === "") {
    return { ok: true, value: Object.fromEntries(new URLSearchParams(text)) }
  }
  return { ok: false, error: "invalid_form_data" }
}

type Either<A> = { readonly ok: true; readonly value: A } | { readonly ok: false; readonly error: string }

const bearer = (header: string | undefined): string | undefined => {
  if (header === undefined) return undefined
  const m = /^Bearer\s+(\S+)$/i.exec(header.trim())
  return m?.[1]
}

const apiHandler = Effect.gen(function*() {
  const request = yield* HttpServerRequest.HttpServerRequest
  const params = yield* HttpRouter.params
  const config = yield* ChorusConfig
  const { methods } = yield* ApiMethods
  const method = params["method"] ?? ""
  const requestId = request.headers["x-request-id"] ?? randomUUID()
  const url = new URL(request.url, "http://localhost")
  const query = Object.fromEntries(url.searchParams)

  const respond = (body: unknown, status = 200, headers: Record<string, string> = {}) =>
    HttpServerResponse.unsafeJson(body, { status, headers: { "x-request-id": requestId, ...headers } })

  const declared = Number(request.headers["content-length"] ?? "0")
  if (declared > config.maxBodyBytes) return respond({ ok: false, error: "request_too_large" }, 413)

  let args: Record<string, unknown> = query
  if (request.method === "POST") {
    const contentType = (request.headers["content-type"] ?? "").toLowerCase()
    if (contentType.startsWith("multipart/form-data")) {
      // Multipart bodies (file uploads) are handled by the methods that take them.
      args = { ...query }
    } else {
      const text = yield* request.text.pipe(Effect.option)
      if (Option.isNone(text)) return respond({ ok: false, error: "invalid_request" }, 400)
      if (text.value.length > config.maxBodyBytes) return respond({ ok: false, error: "request_too_large" }, 413)
      const parsed = parseBody(contentType, text.value)
      if (!parsed.ok) return respond({ ok: false, error: parsed.error })
      args = { ...query, ...parsed.value }
    }
  }

  const handler = methods.get(method)
  if (handler === undefined) return respond({ ok: false, error: "unknown_method" }, 404)
  const tokenArg = args["token"]
  const apiRequest: ApiRequest = {
    method,
    requestId,
    args,
    token: bearer(request.headers["authorization"]) ?? (typeof tokenArg === "string" ? tokenArg : undefined),
    headers: request.headers
  }
  // Rate limits: before any work (authentication included) is done for the call.
  const limiter = yield* Effect.serviceOption(RateLimiter)
  if (Option.isSome(limiter)) {
    const channelArg = args["channel"]
    const verdict = limiter.value.checkCall({
      method,
      token: apiRequest.token,
      channel: typeof channelArg === "string" ? channelArg : undefined,
      address: Option.getOrUndefined(request.remoteAddress)
    })
    if (!verdict.ok) return respond({ ok: false, error: "ratelimited" }, 429, { "retry-after": String(verdict.retryAfterSeconds) })
  }
  return yield* handler(apiRequest).pipe(
    Effect.map((result) => respond({ ok: true, ...result })),
    Effect.catchTag("ApiError", (error) =>
      Effect.succeed(
        error.retryAfterSeconds !== undefined
          ? respond(errorBody(error), error.status ?? 429, { "retry-after": String(error.retryAfterSeconds) })
          : respond(errorBody(error), error.status ?? 200)
      )
    ),
    Effect.catchAllDefect((defect) =>
      Effect.logError("method failed", { method, defect: String(defect) }).pipe(
        Effect.as(respond({ ok: false, error: "internal_error" }, 500))
      )
    ),
    Effect.annotateLogs({ requestId, method })
  )
})

export const router = HttpRouter.empty.pipe(
  // Which node answers: a test harness (or a load balancer check) can tell this node
  // from another process that took the same port.
  HttpRouter.get("/healthz", Effect.map(ChorusConfig, (config) => HttpServerResponse.unsafeJson({ ok: true, node: config.nodeId, cluster: config.cluster }))),
  HttpRouter.get(
    "/metrics",
    Effect.map(RuntimeMetrics.render, (text) => HttpServerResponse.text(text, { contentType: "text/plain; version=0.0.4" }))
  ),
  HttpRouter.get("/api/:method", apiHandler),
  HttpRouter.post("/api/:method", apiHandler)
)

export const app = router.pipe(
  HttpRouter.catchAllCause((cause) =>
    Effect.logError("request failed", { cause: String(cause) }).pipe(
      Effect.as(HttpServerResponse.unsafeJson({ ok: false, error: "internal_error" }, { status: 500 }))
    )
  ),
  Effect.catchTag("RouteNotFound", () => Effect.succeed(HttpServerResponse.unsafeJson({ ok: false, error: "not_found" }, { status: 404 })))
)

export const layer = HttpServer.serve(app)
