/**
 * Files (Slack's upload flow): `files.getUploadURLExternal` → POST the bytes to
 * `upload_url` (src/files/UploadRoutes.ts) → `files.completeUploadExternal`, which
 * shares the files into conversations through their channel actors (a `file_share`
 * message with the file objects, then a `file_shared` event per file). Also
 * `files.info`, `files.list` and `files.delete`. Rules and storage: src/files/Files.ts.
 *
 * Ext: `direct=true` on `files.getUploadURLExternal` answers a presigned S3 PUT URL
 * (the `s3` driver only; `direct_not_supported` otherwise).
 */
import { Effect, Option, Schema } from "effect"
import { createHash } from "node:crypto"
import * as ChannelActor from "../actors/ChannelActor.ts"
import * as P from "../actors/ChannelProtocol.ts"
import * as MessageTs from "../actors/MessageTs.ts"
import type { WorkspacePrincipal } from "../auth/Principal.ts"
import * as Access from "../domain/ConversationAccess.ts"
import * as Cursor from "../domain/Cursor.ts"
import * as Ids from "../domain/Ids.ts"
import type { FileRefused, FileRow, ShareRecord, Viewer } from "../files/Files.ts"
import * as FilesModule from "../files/Files.ts"
import { Files } from "../files/Files.ts"
import type { ApiHandler, ApiRequest } from "../transport/ApiMethod.ts"
import { ApiError, optionalNumber, optionalString, requireString } from "../transport/ApiMethod.ts"
import { fail, isTruthy, orDieOnSql } from "./auth.ts"
import { isConversationId, jsonArrayArg, makeWrites } from "./conversationsWrite.ts"

/** Files per `files.completeUploadExternal`. */
export const maxFilesPerCompletion = 100
/** Conversations per `files.completeUploadExternal` (`channels`). */
export const maxShareTargets = 10

const refused = (error: FileRefused) => new ApiError({ code: error.code })

const viewerOf = (principal: WorkspacePrincipal): Viewer => ({ userId: principal.userId, teamId: principal.teamId, role: principal.role })

/** `files.list`'s cursor (ext; Slack's paging is `page`/`count`): the last file handed out. */
const FilesCursor = Schema.Struct({ k: Schema.Literal("files"), t: Schema.Number, id: Schema.String })

/** The `files` argument of completeUploadExternal: a JSON array of `{id, title?}`. */
const completionItems = (request: ApiRequest) =>
  Effect.gen(function*() {
    const items = yield* jsonArrayArg(request, "files", "invalid_arguments")
    if (items === undefined || items.length === 0) return yield* fail("invalid_arguments", "files must list at least one {id}")
    if (items.length > maxFilesPerCompletion) return yield* fail("invalid_arguments", `at most ${maxFilesPerCompletion} files`)
    const out: Array<{ id: string; title: string | undefined }> = []
    for (const item of items) {
      const id = (item as { readonly id?: unknown } | null)?.id
      const title = (item as { readonly title?: unknown } | null)?.title
      if (!Ids.isId("F", id)) return yield* fail("file_not_found")
      if (out.some((o) => o.id === id)) continue
      out.push({ id, title: typeof title === "string" ? title : undefined })
    }
    return out
  })

/** A message's `client_msg_id` for sharing `files` into `channel`: a retried completion posts nothing new. */
const shareKey = (files: ReadonlyArray<FileRow>, channel: string, threadTs: string | undefined) =>
  `files-${createHash("sha256").update([...files.map((f) => f.id)].sort().join(",")).update(`|${channel}|${threadTs ?? ""}`).digest("hex").slice(0, 40)}`

export const make = Effect.gen(function*() {
  const w = yield* makeWrites
  const { auth, ask, channels, sender } = w
  const files = yield* Files

  const getUploadURLExternal: ApiHandler = (request) =>
    Effect.gen(function*() {
      const principal = yield* auth.authenticateInWorkspace(request.token)
      yield* auth.requireScope(principal, "files:write")
      const filename = (yield* requireString(request, "filename")).trim()
      if (filename.length === 0 || filename.length > FilesModule.maxNameLength) return yield* fail("invalid_arguments", "filename must be 1-255 characters")
      const length = yield* optionalNumber(request, "length")
      if (length === undefined) return yield* fail("invalid_arguments", "missing required field: length")
      if (!Number.isSafeInteger(length) || length < 0) return yield* fail("invalid_arguments", "length must be a whole number of bytes")
      const created = yield* files.create(viewerOf(principal), {
        filename: ChannelActor.cleanText(filename),
        length,
        altTxt: optionalString(request, "alt_txt") ?? optionalString(request, "alt_text"),
        snippetType: optionalString(request, "snippet_type"),
        direct: isTruthy(request.args["direct"])
      }).pipe(Effect.mapError(refused))
      return { upload_url: created.uploadUrl, file_id: created.file.id }
    })

  const completeUploadExternal: ApiHandler = (request) =>
    Effect.gen(function*() {
      const principal = yield* auth.authenticateInWorkspace(request.token)
      yield* auth.requireScope(principal, "files:write")
      const items = yield* completionItems(request)
      const single = optionalString(request, "channel_id")
      const many = (optionalString(request, "channels") ?? "").split(",").map((s) => s.trim()).filter((s) => s.length > 0)
      const targets = [...new Set(single === undefined ? many : [single, ...many])]
      if (targets.length > maxShareTargets) return yield* fail("invalid_arguments", `at most ${maxShareTargets} channels`)
      for (const target of targets) if (!isConversationId(target)) return yield* fail("channel_not_found")
      const threadTs = optionalString(request, "thread_ts")
      if (threadTs !== undefined && (targets.length !== 1 || MessageTs.toMicros(threadTs) === undefined)) {
        return yield* fail(targets.length !== 1 ? "invalid_arguments" : "invalid_thread_ts")
      }
      const comment = optionalString(request, "initial_comment")
      if (comment !== undefined && comment.length > P.limits.text) return yield* fail("msg_too_long")
      const blocks = yield* jsonArrayArg(request, "blocks", "invalid_blocks")
      // Every target must be one the caller may post in before anything is shared.
      const targetFlags = new Map<string, boolean>()
      for (const target of targets) {
        const found = yield* orDieOnSql(channels.access(target, principal.userId))
        if (Option.isNone(found)) return yield* fail("channel_not_found")
        const c = found.value
        const flags = { team_id: c.teamId, is_private: c.isPrivate, is_im: c.isIm, is_mpim: c.isMpim }
        if (!Access.canSee(principal, flags, c.isMember)) return yield* fail("channel_not_found")
        targetFlags.set(target, Access.typeOf(flags) === "public_channel")
      }

      const viewer = viewerOf(principal)
      const completed = yield* files.complete(viewer, items).pipe(Effect.mapError(refused))
      const shares: Array<ShareRecord> = []
      for (const target of targets) {
        const snapshots = completed.map((f) => FilesModule.toSlackFile(f, files.base, undefined, targetFlags.get(target) === true))
        const clientMsgId = shareKey(completed, target, threadTs)
        const posted = yield* ask(
          principal,
          target,
          new P.PostMessage({
            ...sender(principal),
            text: comment ?? "",
            files: snapshots,
            client_msg_id: clientMsgId,
            ...(threadTs === undefined ? {} : { thread_ts: threadTs }),
            ...(blocks === undefined ? {} : { blocks }),
            ...(principal.botId === undefined ? {} : { bot_id: principal.botId }),
            ...(principal.appId === undefined ? {} : { app_id: principal.appId })
          }),
          clientMsgId
        )
        for (const f of completed) {
          shares.push({ file_id: f.id, channel_id: target, ts: posted.ts, thread_ts: threadTs === undefined ? null : (MessageTs.normalise(threadTs) ?? null), team_id: principal.teamId, user_id: principal.userId })
        }
      }
      yield* files.recordShares(shares)
      const answer: Array<unknown> = []
      for (const f of completed) {
        const seen = yield* files.visible(viewer, f.id)
        answer.push(Option.isSome(seen) ? FilesModule.toSlackFile(seen.value.file, files.base, seen.value.shares) : { id: f.id, title: f.title })
      }
      return { files: answer }
    })

  const info: ApiHandler = (request) =>
    Effect.gen(function*() {
      const principal = yield* auth.authenticateInWorkspace(request.token)
      yield* auth.requireScope(principal, "files:read")
      const id = yield* requireString(request, "file")
      const seen = yield* files.visible(viewerOf(principal), id)
      if (Option.isNone(seen)) return yield* fail("file_not_found")
      if (seen.value.file.state === "deleted") return yield* fail("file_deleted")
      return {
        file: FilesModule.toSlackFile(seen.value.file, files.base, seen.value.shares),
        comments: [],
        response_metadata: { next_cursor: "" }
      }
    })

  const list: ApiHandler = (request) =>
    Effect.gen(function*() {
      const principal = yield* auth.authenticateInWorkspace(request.token)
      yield* auth.requireScope(principal, "files:read")
      const channel = optionalString(request, "channel")
      if (channel !== undefined) {
        if (!isConversationId(channel)) return yield* fail("channel_not_found")
        const found = yield* orDieOnSql(channels.access(channel, principal.userId))
        const c = Option.getOrUndefined(found)
        if (c === undefined || !Access.canSee(principal, { team_id: c.teamId, is_private: c.isPrivate, is_im: c.isIm, is_mpim: c.isMpim }, c.isMember)) {
          return yield* fail("channel_not_found")
        }
      }
      const user = optionalString(request, "user")
      if (user !== undefined && !Ids.isId("U", user)) return yield* fail("user_not_found")
      const types = FilesModule.parseTypeFilters(optionalString(request, "types"))
      if (types === undefined) return yield* fail("invalid_types")
      const tsFrom = yield* optionalNumber(request, "ts_from")
      const tsTo = yield* optionalNumber(request, "ts_to")
      const rawCursor = optionalString(request, "cursor")
      const limitArg = yield* optionalNumber(request, "limit")
      const byCursor = rawCursor !== undefined || limitArg !== undefined
      const count = Math.min(1000, Math.max(1, Math.floor((byCursor ? limitArg : yield* optionalNumber(request, "count")) ?? 100)))
      const page = Math.max(1, Math.floor((yield* optionalNumber(request, "page")) ?? 1))
      let after: { createdAt: number; id: string } | undefined
      if (rawCursor !== undefined) {
        const decoded = Cursor.decode(FilesCursor, rawCursor)
        if (Option.isNone(decoded)) return yield* fail("invalid_cursor")
        after = { createdAt: decoded.value.t, id: decoded.value.id }
      }
      const result = yield* files.list(viewerOf(principal), {
        channel,
        user,
        types,
        tsFrom,
        tsTo,
        limit: count,
        offset: byCursor ? 0 : (page - 1) * count,
        after
      })
      const out = result.files.map(({ file, shares }) => FilesModule.toSlackFile(file, files.base, shares))
      if (byCursor) {
        const last = result.files[result.files.length - 1]?.file
        const next = last !== undefined && result.files.length === count
          ? Cursor.encode(FilesCursor, { k: "files", t: last.created_at, id: last.id })
          : ""
        return { files: out, response_metadata: { next_cursor: next } }
      }
      return { files: out, paging: { count, total: result.total, page, pages: Math.max(1, Math.ceil(result.total / count)) } }
    })

  const del: ApiHandler = (request) =>
    Effect.gen(function*() {
      const principal = yield* auth.authenticateInWorkspace(request.token)
      yield* auth.requireScope(principal, "files:write")
      const id = yield* requireString(request, "file")
      const seen = yield* files.visible(viewerOf(principal), id)
      if (Option.isNone(seen)) return yield* fail("file_not_found")
      const file = seen.value.file
      const admin = principal.role === "owner" || principal.role === "admin"
      if (file.user_id !== principal.userId && !admin) return yield* fail("cant_delete_file")
      const pending = yield* files.remove(file.id).pipe(Effect.mapError(refused))
      // A retry after everything was done: the file is already gone.
      if (file.state === "deleted" && pending.length === 0) return yield* fail("file_deleted")
      for (const share of pending) {
        yield* ask(principal, share.channel_id, new P.RemoveFile({ ...sender(principal), ts: share.ts, file: file.id })).pipe(
          Effect.catchIf((e) => e.code === "channel_not_found", () => Effect.void)
        )
        yield* files.markTombstoned(file.id, share.channel_id, share.ts)
      }
      return {}
    })

  return new Map<string, ApiHandler>([
    ["files.getUploadURLExternal", getUploadURLExternal],
    ["files.completeUploadExternal", completeUploadExternal],
    ["files.info", info],
    ["files.list", list],
    ["files.delete", del]
  ])
}).pipe(Effect.provide(ChannelActor.services))
