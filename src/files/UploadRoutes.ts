/**
 * The HTTP routes of files, beside the Web API on the node's port:
 *
 * - `POST /upload/v1/<file id>/<secret>`: the `upload_url` of
 *   `files.getUploadURLExternal`. The URL is the credential (as Slack's is: clients
 *   such as `@slack/web-api` send no token with it). The body is the file, raw or as
 *   multipart/form-data (the first file part, whatever its field name: Slack's own
 *   client calls it `body`, curl users `file`), streamed to the storage driver as it
 *   arrives. Answers `200 OK - <bytes>`; 413 past the size limit, 400 when the bytes
 *   are not the declared `length`, 404 for an unknown, used or expired URL.
 * - `GET /files/<file id>/<name>` (`url_private`) and
 *   `GET /files/<file id>/download/<name>` (`url_private_download`), with
 *   `Authorization: Bearer <token>`: for whoever can see the file (Files.visible), the
 *   bytes (local disk) or a redirect to a short-lived presigned URL (s3); for anyone
 *   else, whatever the reason, 404, so a file's existence is never revealed.
 * - `GET /files-tmb/<file id>/<size>/<name>` (`thumb_<size>`): an image's thumbnail,
 *   for the same people, the same way.
 *
 * `withFileRoutes(app)` puts these routes in front of another app (HttpApi's), which
 * answers every other request exactly as before.
 */
import type { HttpApp } from "@effect/platform"
import { HttpRouter, HttpServerRequest, HttpServerResponse, Multipart } from "@effect/platform"
import { NodeHttpServerRequest, NodeStream } from "@effect/platform-node"
import { Effect, Option, Stream } from "effect"
import type { IncomingMessage } from "node:http"
import { Auth } from "../auth/Principal.ts"
import { ChorusConfig } from "../config/ChorusConfig.ts"
import * as ContentType from "./ContentType.ts"
import * as Thumbnails from "./Thumbnails.ts"
import { FileRefused, Files } from "./Files.ts"
import * as FilesModule from "./Files.ts"
import { FileStorage } from "./FileStorage.ts"

/** Room for multipart framing (boundaries, part headers, small fields) around the file. */
const multipartOverhead = 1_048_576

const json = (status: number, body: unknown, headers: Record<string, string> = {}) =>
  HttpServerResponse.unsafeJson(body, { status, headers: { "cache-control": "no-store", ...headers } })

const notFound = json(404, { ok: false, error: "file_not_found" })

const bearer = (header: string | undefined): string | undefined => {
  if (header === undefined) return undefined
  const m = /^Bearer\s+(\S+)$/i.exec(header.trim())
  return m?.[1]
}

/** A route's own failures become a 500, logged; never a stack trace to the client. */
const guarded = <E, R>(handler: Effect.Effect<HttpServerResponse.HttpServerResponse, E, R>) =>
  Effect.catchAllCause(handler, (cause) =>
    Effect.logError("file route failed", { cause: String(cause) }).pipe(Effect.as(json(500, { ok: false, error: "internal_error" }))))

// ---- upload -----------------------------------------------------------------------------

const bodyOf = (request: HttpServerRequest.HttpServerRequest, maxBytes: number): Stream.Stream<Uint8Array, FileRefused> => {
  const contentType = (request.headers["content-type"] ?? "").toLowerCase()
  if (!contentType.startsWith("multipart/form-data")) {
    // Not `request.stream`: it destroys the request (and so the connection) when the
    // stream stops early, and a refused upload must still be answered.
    return NodeStream.fromReadable(() => NodeHttpServerRequest.toIncomingMessage(request), () => new FileRefused({ code: "request_failed", status: 400 }), {
      closeOnDone: false
    })
  }
  let found = false
  const parts = request.multipartStream.pipe(
    Multipart.withLimitsStream({ maxTotalSize: Option.some(maxBytes + multipartOverhead), maxFileSize: Option.none(), maxParts: Option.some(64) })
  )
  return parts.pipe(
    Stream.flatMap((part) => {
      if (part._tag !== "File") return Stream.empty
      // The first file is the upload; any other is read past and ignored.
      if (found) return Stream.drain(part.content)
      found = true
      return part.content
    }),
    Stream.concat(Stream.suspend(() => (found ? Stream.empty : Stream.fail(new FileRefused({ code: "no_file_data", status: 400 }))))),
    Stream.mapError((error) =>
      error._tag === "FileRefused"
        ? error
        : error.reason === "BodyTooLarge" || error.reason === "FileTooLarge"
        ? new FileRefused({ code: "file_too_large", status: 413 })
        : new FileRefused({ code: "invalid_form_data", status: 400 }))
  )
}

/** Reads and drops what is left of a request body; past `limit` bytes, drops the connection. */
const drain = (incoming: IncomingMessage, limit: number) => {
  if (incoming.readableEnded || incoming.destroyed) return
  let dropped = 0
  incoming.unpipe()
  incoming.on("data", (chunk: Buffer) => {
    dropped += chunk.length
    if (dropped > limit) incoming.destroy()
  })
  incoming.resume()
}

const upload = Effect.gen(function*() {
  const request = yield* HttpServerRequest.HttpServerRequest
  const params = yield* HttpRouter.params
  const files = yield* Files
  const config = yield* ChorusConfig
  const declared = request.headers["content-length"]
  const multipart = (request.headers["content-type"] ?? "").toLowerCase().startsWith("multipart/form-data")
  const refusedEarly = declared !== undefined && Number(declared) > config.filesMaxBytes + (multipart ? multipartOverhead : 0)
  const result = refusedEarly
    ? yield* Effect.either(Effect.fail(new FileRefused({ code: "file_too_large", status: 413 })))
    : yield* Effect.either(files.receive(params["fileId"] ?? "", params["secret"] ?? "", bodyOf(request, config.filesMaxBytes)))
  if (result._tag === "Right") return HttpServerResponse.text(`OK - ${result.right.size ?? 0}`, { status: 200 })
  const refused = result.left
  // A body announced past the limit is not read at all: answer and close.
  if (refusedEarly) return json(refused.status, { ok: false, error: refused.code }, { connection: "close" })
  // Otherwise the rest of a refused body is read and dropped (up to the size limit), so
  // that a client still sending reads the answer.
  drain(NodeHttpServerRequest.toIncomingMessage(request), config.filesMaxBytes + multipartOverhead)
  return json(refused.status, { ok: false, error: refused.code })
})

// ---- download ---------------------------------------------------------------------------

/** The route's file (`:fileId`) if the bearer may see it and it is not deleted. */
const visibleFile = Effect.gen(function*() {
  const request = yield* HttpServerRequest.HttpServerRequest
  const params = yield* HttpRouter.params
  const auth = yield* Auth
  const files = yield* Files
  const principal = yield* auth.authenticateInWorkspace(bearer(request.headers["authorization"])).pipe(
    Effect.tap((p) => auth.requireScope(p, "files:read")),
    Effect.option
  )
  if (Option.isNone(principal)) return Option.none()
  const p = principal.value
  const seen = yield* files.visible({ userId: p.userId, teamId: p.teamId, role: p.role }, params["fileId"] ?? "")
  return Option.isNone(seen) || seen.value.file.state === "deleted" ? Option.none() : Option.some(seen.value.file)
})

const download = (kind: "inline" | "attachment") =>
  Effect.gen(function*() {
    const storage = yield* FileStorage
    const config = yield* ChorusConfig
    const seen = yield* visibleFile
    if (Option.isNone(seen)) return notFound
    const file = seen.value
    const mimetype = file.mimetype ?? ContentType.binary.mimetype
    const disposition = FilesModule.contentDisposition(kind === "inline" && ContentType.isInline(mimetype) ? "inline" : "attachment", file.name)
    const served = mimetype === "text/plain" ? "text/plain; charset=utf-8" : mimetype
    const presigned = yield* storage.presignGet(file.storage_key, { expiresIn: config.filesDownloadUrlTtl, contentType: served, contentDisposition: disposition })
    if (Option.isSome(presigned)) {
      return HttpServerResponse.redirect(presigned.value, { status: 302, headers: { "cache-control": "no-store" } })
    }
    const object = yield* storage.read(file.storage_key)
    if (Option.isNone(object)) return notFound
    return HttpServerResponse.stream(object.value.body, {
      contentType: served,
      contentLength: object.value.size,
      headers: {
        "content-disposition": disposition,
        "x-content-type-options": "nosniff",
        "content-security-policy": "default-src 'none'; sandbox",
        "cache-control": "private, no-cache"
      }
    })
  })

/** `thumb_<size>` of a file (its URL in the file object), for the same people as `url_private`. */
const thumbnail = Effect.gen(function*() {
  const params = yield* HttpRouter.params
  const storage = yield* FileStorage
  const config = yield* ChorusConfig
  const seen = yield* visibleFile
  if (Option.isNone(seen)) return notFound
  const file = seen.value
  const thumb = (file.thumbs ?? []).find((t) => String(t.size) === params["size"])
  if (thumb === undefined) return notFound
  const key = Thumbnails.keyOf(file.storage_key, thumb.size)
  const presigned = yield* storage.presignGet(key, { expiresIn: config.filesDownloadUrlTtl, contentType: thumb.mimetype, contentDisposition: "inline" })
  if (Option.isSome(presigned)) {
    return HttpServerResponse.redirect(presigned.value, { status: 302, headers: { "cache-control": "no-store" } })
  }
  const object = yield* storage.read(key)
  if (Option.isNone(object)) return notFound
  return HttpServerResponse.stream(object.value.body, {
    contentType: thumb.mimetype,
    contentLength: object.value.size,
    headers: { "x-content-type-options": "nosniff", "cache-control": "private, no-cache" }
  })
})

export const router = HttpRouter.empty.pipe(
  HttpRouter.get("/files-tmb/:fileId/:size/:name", guarded(thumbnail)),
  HttpRouter.post("/upload/v1/:fileId/:secret", guarded(upload)),
  HttpRouter.get("/files/:fileId/download/:name", guarded(download("attachment"))),
  HttpRouter.get("/files/:fileId/:name", guarded(download("inline")))
)

/** The file routes in front of `app`, which answers every other request. */
export const withFileRoutes = <E, R>(app: HttpApp.Default<E, R>) =>
  router.pipe(Effect.catchTag("RouteNotFound", () => app))
