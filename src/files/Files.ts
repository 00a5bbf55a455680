/**
 * Files: the metadata store and its rules, over PostgreSQL and a `FileStorage` driver.
 *
 * Life of a file (states in `files.state`, migration 0008):
 *
 *   create (files.getUploadURLExternal)       → pending, with a secret upload URL
 *   receive (POST to the upload URL)          → uploading → uploaded (size and type known)
 *   complete (files.completeUploadExternal)   → complete; shares recorded as the channel
 *                                               actors post the `file_share` messages
 *   remove (files.delete)                     → deleted; the blob goes, shares tombstoned
 *   sweep (every node, periodically)          → rows never completed within
 *                                               `filesPendingMaxAge` go, with their blobs
 *
 * Every transition is one conditional UPDATE (`WHERE state = …`), so two nodes (an
 * upload and a sweep, two uploads to one URL) never both win. The sweep claims its rows
 * with `FOR UPDATE SKIP LOCKED` in the statement that marks them `sweeping`, deletes
 * their blobs outside any transaction, then deletes the rows; rows claimed by a node
 * that died are claimed again after `reclaimAfterMs`.
 *
 * Visibility (invariant 5): a file is visible to its uploader, and to whoever can see a
 * conversation it is shared in (ConversationAccess.canSee); it belongs to one
 * workspace. To anyone else it does not exist: `file_not_found`, and 404 on download.
 */
import { SqlClient } from "@effect/sql"
import type { SqlError } from "@effect/sql/SqlError"
import type { Fragment } from "@effect/sql/Statement"
import { Clock, Context, Data, Duration, Effect, Layer, Option, Schedule, Stream } from "effect"
import { createHash, randomBytes, timingSafeEqual } from "node:crypto"
import type { Role } from "../auth/Principal.ts"
import { ChorusConfig } from "../config/ChorusConfig.ts"
import { canSee, seesPublicWithoutMembership, typeOf } from "../domain/ConversationAccess.ts"
import * as Ids from "../domain/Ids.ts"
import * as ContentType from "./ContentType.ts"
import * as Thumbnails from "./Thumbnails.ts"
import type { StorageError } from "./FileStorage.ts"
import * as FileStorageModule from "./FileStorage.ts"
import { FileStorage } from "./FileStorage.ts"

// ---- rows and errors ------------------------------------------------------------------

export type FileState = "pending" | "uploading" | "uploaded" | "complete" | "deleted" | "sweeping"

export interface FileRow {
  readonly id: string
  readonly team_id: string
  readonly user_id: string
  readonly name: string
  readonly title: string
  readonly alt_txt: string | null
  readonly snippet_type: string | null
  readonly declared_length: number
  readonly size: number | null
  readonly mimetype: string | null
  readonly filetype: string | null
  readonly pretty_type: string | null
  readonly state: FileState
  readonly direct: boolean
  readonly storage_key: string
  readonly created_at: number
  readonly completed_at: number | null
  readonly deleted_at: number | null
  /** An image's dimensions and its thumbnails (Thumbnails.ts); null for none. */
  readonly original_w: number | null
  readonly original_h: number | null
  readonly thumbs: ReadonlyArray<Thumbnails.Thumb> | null
}

/** A share of a file, with the conversation's flags and whether the viewer is in it. */
export interface ShareRow {
  readonly file_id: string
  readonly channel_id: string
  readonly ts: string
  readonly thread_ts: string | null
  readonly team_id: string
  readonly user_id: string
  readonly shared_at: number
  readonly tombstoned: boolean
  readonly channel_name: string | null
  readonly is_private: boolean
  readonly is_im: boolean
  readonly is_mpim: boolean
  readonly is_member: boolean
}

/** A refusal with Slack's error code (and the HTTP status the upload endpoint answers). */
export class FileRefused extends Data.TaggedError("FileRefused")<{ readonly code: string; readonly status: number }> {}

const refuse = (code: string, status = 200) => Effect.fail(new FileRefused({ code, status }))

export interface Viewer {
  readonly userId: string
  readonly teamId: string
  readonly role: Role
}

// ---- Slack's file object (pure) -------------------------------------------------------

export const urlPrivate = (base: string, row: Pick<FileRow, "id" | "name">) => `${base}/files/${row.id}/${encodeURIComponent(row.name)}`
export const urlPrivateDownload = (base: string, row: Pick<FileRow, "id" | "name">) => `${base}/files/${row.id}/download/${encodeURIComponent(row.name)}`
export const thumbUrl = (base: string, row: Pick<FileRow, "id" | "name">, size: number) =>
  `${base}/files-tmb/${row.id}/${size}/${encodeURIComponent(row.name)}`

const isPublicShare = (s: Pick<ShareRow, "is_private" | "is_im" | "is_mpim">) => typeOf(s) === "public_channel"

/**
 * Slack's file object as `viewer` sees it: `shares`, `channels`, `groups` and `ims`
 * list only the conversations they can see (pass no shares for the snapshot a message
 * carries). `is_public`: shared in a public channel.
 */
export const toSlackFile = (row: FileRow, base: string, shares: ReadonlyArray<ShareRow> | undefined, isPublic?: boolean) => {
  const created = Math.floor(row.created_at / 1000)
  const file: Record<string, unknown> = {
    id: row.id,
    created,
    timestamp: created,
    name: row.name,
    title: row.title,
    mimetype: row.mimetype ?? ContentType.binary.mimetype,
    filetype: row.filetype ?? ContentType.binary.filetype,
    pretty_type: row.pretty_type ?? ContentType.binary.prettyType,
    user: row.user_id,
    user_team: row.team_id,
    editable: false,
    size: row.size ?? row.declared_length,
    mode: "hosted",
    is_external: false,
    external_type: "",
    is_public: isPublic ?? (shares ?? []).some(isPublicShare),
    public_url_shared: false,
    display_as_bot: false,
    username: "",
    url_private: urlPrivate(base, row),
    url_private_download: urlPrivateDownload(base, row),
    permalink: urlPrivate(base, row),
    has_rich_preview: false,
    file_access: "visible"
  }
  if (row.thumbs !== null && row.original_w !== null && row.original_h !== null) {
    for (const t of row.thumbs) {
      file[`thumb_${t.size}`] = thumbUrl(base, row, t.size)
      file[`thumb_${t.size}_w`] = t.width
      file[`thumb_${t.size}_h`] = t.height
    }
    file["original_w"] = row.original_w
    file["original_h"] = row.original_h
  }
  if (row.alt_txt !== null) file["alt_txt"] = row.alt_txt
  if (row.snippet_type !== null) file["snippet_type"] = row.snippet_type
  if (shares !== undefined) {
    const live = shares.filter((s) => !s.tombstoned)
    const publicShares: Record<string, Array<unknown>> = {}
    const privateShares: Record<string, Array<unknown>> = {}
    const channels = new Set<string>()
    const groups = new Set<string>()
    const ims = new Set<string>()
    for (const s of live) {
      const pub = isPublicShare(s)
      const target = pub ? publicShares : privateShares
      const entry: Record<string, unknown> = { reply_users: [], reply_users_count: 0, reply_count: 0, ts: s.ts, team_id: s.team_id, share_user_id: s.user_id }
      if (s.channel_name !== null) entry["channel_name"] = s.channel_name
      if (s.thread_ts !== null) entry["thread_ts"] = s.thread_ts
      ;(target[s.channel_id] ??= []).push(entry)
      if (pub) channels.add(s.channel_id)
      else if (s.is_im) ims.add(s.channel_id)
      else groups.add(s.channel_id)
    }
    file["channels"] = [...channels]
    file["groups"] = [...groups]
    file["ims"] = [...ims]
    file["shares"] = {
      ...(Object.keys(publicShares).length === 0 ? {} : { public: publicShares }),
      ...(Object.keys(privateShares).length === 0 ? {} : { private: privateShares })
    }
    file["comments_count"] = 0
  }
  return file
}

/** Slack's `types` of `files.list` as a predicate on rows; undefined for an unknown name. */
export const typeFilters = ["all", "spaces", "snippets", "images", "gdocs", "zips", "pdfs"] as const
export type TypeFilter = typeof typeFilters[number]

export const parseTypeFilters = (raw: string | undefined): ReadonlyArray<TypeFilter> | undefined => {
  const names = (raw ?? "").split(",").map((s) => s.trim()).filter((s) => s.length > 0)
  if (names.length === 0) return ["all"]
  for (const name of names) if (!(typeFilters as ReadonlyArray<string>).includes(name)) return undefined
  return names as ReadonlyArray<TypeFilter>
}

/** `Content-Disposition` for a file name (RFC 6266: an ASCII fallback and the UTF-8 name). */
export const contentDisposition = (kind: "inline" | "attachment", name: string): string => {
  const fallback = name.replace(/[^\x20-\x7e]/g, "_").replace(/["\\]/g, "_")
  return `${kind}; filename="${fallback}"; filename*=UTF-8''${encodeURIComponent(name)}`
}

/** Characters of a file name and title (Slack's limits are similar). */
export const maxNameLength = 255

// ---- the service ----------------------------------------------------------------------

export interface NewUpload {
  readonly filename: string
  readonly length: number
  readonly altTxt: string | undefined
  readonly snippetType: string | undefined
  /** A presigned PUT URL to the bucket instead of Chorus's upload endpoint (s3 only). */
  readonly direct: boolean
}

export interface ListQuery {
  readonly channel: string | undefined
  readonly user: string | undefined
  readonly types: ReadonlyArray<TypeFilter>
  /** Unix seconds, inclusive. */
  readonly tsFrom: number | undefined
  readonly tsTo: number | undefined
  readonly limit: number
  /** Rows to skip (page-based), or the keyset position to continue after (cursor-based). */
  readonly offset: number
  readonly after: { readonly createdAt: number; readonly id: string } | undefined
}

export interface ShareRecord {
  readonly file_id: string
  readonly channel_id: string
  readonly ts: string
  readonly thread_ts: string | null
  readonly team_id: string
  readonly user_id: string
}

export interface FilesShape {
  /** Registers an upload: the row and the URL to send the bytes to. */
  readonly create: (viewer: Viewer, upload: NewUpload) => Effect.Effect<{ readonly file: FileRow; readonly uploadUrl: string }, FileRefused>
  /**
   * Takes the bytes sent to an upload URL (`fileId`, `secret`), streaming them to the
   * driver: refused (404) for an unknown, used or expired URL; 413 past the size limit;
   * 400 when the bytes are not the declared length. Nothing is kept on refusal.
   */
  readonly receive: <E>(fileId: string, secret: string, body: Stream.Stream<Uint8Array, E>) => Effect.Effect<FileRow, FileRefused | E>
  /**
   * Marks the caller's uploaded files complete (with their titles) and answers their
   * rows; a file already complete is answered as it is (a retried completion). Direct
   * uploads are checked against the bucket first.
   */
  readonly complete: (viewer: Viewer, files: ReadonlyArray<{ readonly id: string; readonly title: string | undefined }>) => Effect.Effect<ReadonlyArray<FileRow>, FileRefused>
  /** Records where files were shared (idempotent). */
  readonly recordShares: (shares: ReadonlyArray<ShareRecord>) => Effect.Effect<void>
  /** The file and the shares `viewer` can see, if the file is visible to them (any state but pending). */
  readonly visible: (viewer: Viewer, fileId: string) => Effect.Effect<Option.Option<{ readonly file: FileRow; readonly shares: ReadonlyArray<ShareRow> }>>
  /** Complete files visible to `viewer`, newest first, with their visible shares, and the total. */
  readonly list: (viewer: Viewer, query: ListQuery) => Effect.Effect<{
    readonly files: ReadonlyArray<{ readonly file: FileRow; readonly shares: ReadonlyArray<ShareRow> }>
    readonly total: number
  }>
  /** Marks the file deleted and removes its bytes; answers its shares not yet tombstoned (all of them, whoever sees them). */
  readonly remove: (fileId: string) => Effect.Effect<ReadonlyArray<ShareRow>, FileRefused>
  readonly markTombstoned: (fileId: string, channelId: string, ts: string) => Effect.Effect<void>
  /** Deletes uploads never completed within the configured age; answers how many. */
  readonly sweep: Effect.Effect<number>
  /** Base URL of the file URLs. */
  readonly base: string
}

export class Files extends Context.Tag("chorus/files/Files")<Files, FilesShape>() {}

const sha256 = (s: string) => createHash("sha256").update(s).digest()

/** A sweep claim older than this is taken to be a dead node's and claimed again. */
export const reclaimAfterMs = 600_000
/** Rows one sweep round claims. */
const sweepBatch = 100

const orDie = <A, E>(effect: Effect.Effect<A, E | SqlError | StorageError>) =>
  Effect.catchIf(
    effect,
    (e): e is SqlError | StorageError => typeof e === "object" && e !== null && "_tag" in e && (e._tag === "SqlError" || e._tag === "StorageError"),
    (e) => Effect.die(e)
  ) as Effect.Effect<A, Exclude<E, SqlError | StorageError>>

export const make = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  const storage = yield* FileStorage
  const config = yield* ChorusConfig
  const base = (config.filesPublicUrl ?? config.advertiseUrl).replace(/\/+$/, "")
  const maxAgeMs = Duration.toMillis(config.filesPendingMaxAge)
  const cols = sql.literal(
    "id, team_id, user_id, name, title, alt_txt, snippet_type, declared_length, size, mimetype, filetype, pretty_type, state, direct, storage_key, created_at, completed_at, deleted_at, original_w, original_h, thumbs"
  )
  const fCols = sql.literal(
    "f.id, f.team_id, f.user_id, f.name, f.title, f.alt_txt, f.snippet_type, f.declared_length, f.size, f.mimetype, f.filetype, f.pretty_type, f.state, f.direct, f.storage_key, f.created_at, f.completed_at, f.deleted_at, f.original_w, f.original_h, f.thumbs"
  )

  const byId = (id: string) => Effect.map(sql<FileRow>`SELECT ${cols} FROM files WHERE id = ${id}`, (r) => Option.fromNullable(r[0]))

  const sharesOf = (ids: ReadonlyArray<string>, viewer: string) =>
    ids.length === 0
      ? Effect.succeed([] as ReadonlyArray<ShareRow>)
      : sql<ShareRow>`
        SELECT s.file_id, s.channel_id, s.ts, s.thread_ts, s.team_id, s.user_id, s.shared_at, s.tombstoned,
          c.name AS channel_name, c.is_private, c.is_im, c.is_mpim,
          EXISTS (SELECT 1 FROM channel_members m WHERE m.channel_id = c.id AND m.user_id = ${viewer}) AS is_member
        FROM file_shares s JOIN channels c ON c.id = s.channel_id
        WHERE s.file_id IN ${sql.in(ids)}
        ORDER BY s.shared_at, s.channel_id, s.ts`

  const canSeeShare = (viewer: Viewer) => (s: ShareRow) =>
    canSee({ teamId: viewer.teamId, role: viewer.role }, { team_id: s.team_id, is_private: s.is_private, is_im: s.is_im, is_mpim: s.is_mpim }, s.is_member)

  // ---- create ---------------------------------------------------------------------------

  const create: FilesShape["create"] = (viewer, upload) =>
    Effect.gen(function*() {
      if (!Number.isSafeInteger(upload.length) || upload.length < 0) return yield* refuse("invalid_arguments")
      if (upload.length > config.filesMaxBytes) return yield* refuse("file_too_large")
      if (upload.direct && storage.driver !== "s3") return yield* refuse("direct_not_supported")
      const id = Ids.make("F")
      const secret = randomBytes(24).toString("base64url")
      const now = yield* Clock.currentTimeMillis
      const row: FileRow = {
        id,
        team_id: viewer.teamId,
        user_id: viewer.userId,
        name: upload.filename,
        title: upload.filename,
        alt_txt: upload.altTxt ?? null,
        snippet_type: upload.snippetType ?? null,
        declared_length: upload.length,
        size: null,
        mimetype: null,
        filetype: null,
        pretty_type: null,
        state: "pending",
        direct: upload.direct,
        storage_key: `${viewer.teamId}/${id}`,
        created_at: now,
        completed_at: null,
        deleted_at: null,
        original_w: null,
        original_h: null,
        thumbs: null
      }
      yield* sql`
        INSERT INTO files (id, team_id, user_id, name, title, alt_txt, snippet_type, declared_length, state, direct, storage_key, upload_secret, created_at, state_at)
        VALUES (${row.id}, ${row.team_id}, ${row.user_id}, ${row.name}, ${row.title}, ${row.alt_txt}, ${row.snippet_type}, ${row.declared_length},
          'pending', ${row.direct}, ${row.storage_key}, ${sha256(secret)}, ${now}, ${now})`
      if (upload.direct) {
        const url = yield* storage.presignPut(row.storage_key, upload.length, config.filesDirectUploadTtl)
        if (Option.isNone(url)) return yield* refuse("direct_not_supported")
        return { file: row, uploadUrl: url.value }
      }
      return { file: row, uploadUrl: `${base}/upload/v1/${id}/${secret}` }
    }).pipe(orDie)

  // ---- receive --------------------------------------------------------------------------

  const receive: FilesShape["receive"] = <E>(fileId: string, secret: string, body: Stream.Stream<Uint8Array, E>) =>
    Effect.gen(function*() {
      const now = yield* Clock.currentTimeMillis
      if (!Ids.isId("F", fileId)) return yield* refuse("not_found", 404)
      const found = yield* sql<FileRow & { readonly upload_secret: Uint8Array }>`
        SELECT ${cols}, upload_secret FROM files WHERE id = ${fileId}`
      const row = found[0]
      const given = sha256(secret)
      if (row === undefined || row.direct || row.upload_secret.length !== given.length || !timingSafeEqual(row.upload_secret, given)) {
        return yield* refuse("not_found", 404)
      }
      if (row.created_at < now - maxAgeMs) return yield* refuse("not_found", 404)
      const claimed = yield* sql`UPDATE files SET state = 'uploading', state_at = ${now} WHERE id = ${fileId} AND state = 'pending' RETURNING id`
      if (claimed.length === 0) return yield* refuse(row.state === "uploading" ? "upload_in_progress" : "not_found", row.state === "uploading" ? 409 : 404)

      const declared = row.declared_length
      let count = 0
      const head: Array<Uint8Array> = []
      let headSize = 0
      const checked = body.pipe(
        Stream.mapEffect((chunk: Uint8Array) => {
          count += chunk.length
          if (count > config.filesMaxBytes) return refuse("file_too_large", 413)
          if (count > declared) return refuse("length_mismatch", 400)
          if (headSize < ContentType.headBytes) {
            head.push(chunk.subarray(0, ContentType.headBytes - headSize))
            headSize += Math.min(chunk.length, ContentType.headBytes - headSize)
          }
          return Effect.succeed(chunk)
        }),
        // Refused before the driver commits, so a short body leaves nothing behind.
        Stream.concat(Stream.fromEffect(Effect.suspend(() => (count === declared ? Effect.void : refuse("length_mismatch", 400)))).pipe(Stream.drain))
      )
      const revert = sql`UPDATE files SET state = 'pending', state_at = ${now} WHERE id = ${fileId} AND state = 'uploading'`.pipe(Effect.ignore)
      const stored = yield* storage.put(row.storage_key, checked).pipe(Effect.onExit((exit) => (exit._tag === "Failure" ? revert : Effect.void)))
      const type = ContentType.sniff(Buffer.concat(head))
      const done = yield* Clock.currentTimeMillis
      const updated = yield* sql<FileRow>`
        UPDATE files SET state = 'uploaded', state_at = ${done}, size = ${stored.size},
          mimetype = ${type.mimetype}, filetype = ${type.filetype}, pretty_type = ${type.prettyType}
        WHERE id = ${fileId} AND state = 'uploading'
        RETURNING ${cols}`
      if (updated[0] === undefined) {
        // Swept (or deleted) while the bytes arrived: they must not outlive the row.
        yield* storage.remove(row.storage_key)
        return yield* refuse("not_found", 404)
      }
      return updated[0]
    }).pipe(orDie)

  // ---- complete -------------------------------------------------------------------------

  /** A direct upload: the object must be in the bucket with the declared length. */
  const checkDirect = (row: FileRow, now: number) =>
    Effect.gen(function*() {
      const stat = yield* storage.stat(row.storage_key)
      if (Option.isNone(stat)) return yield* refuse("file_not_found")
      if (stat.value.size !== row.declared_length || stat.value.size > config.filesMaxBytes) {
        yield* storage.remove(row.storage_key)
        return yield* refuse("file_not_found")
      }
      const head = yield* storage.head(row.storage_key, ContentType.headBytes)
      const type = ContentType.sniff(Option.getOrElse(head, () => new Uint8Array(0)))
      yield* sql`
        UPDATE files SET state = 'uploaded', state_at = ${now}, size = ${stat.value.size},
          mimetype = ${type.mimetype}, filetype = ${type.filetype}, pretty_type = ${type.prettyType}
        WHERE id = ${row.id} AND state = 'pending'`
    })

  const complete: FilesShape["complete"] = (viewer, items) =>
    Effect.gen(function*() {
      const now = yield* Clock.currentTimeMillis
      const out: Array<FileRow> = []
      for (const item of items) {
        const found = yield* byId(item.id)
        if (Option.isNone(found)) return yield* refuse("file_not_found")
        const row = found.value
        if (row.team_id !== viewer.teamId || row.user_id !== viewer.userId) return yield* refuse("file_not_found")
        if (row.state === "complete") continue
        if (row.state === "pending" && row.direct) yield* checkDirect(row, now)
        else if (row.state !== "uploaded") return yield* refuse("file_not_found")
      }
      // All checked: complete them together, so a refusal completes none.
      yield* sql.withTransaction(Effect.gen(function*() {
        for (const item of items) {
          const title = item.title === undefined || item.title.length === 0 ? undefined : item.title.slice(0, maxNameLength)
          const updated = yield* sql<FileRow>`
            UPDATE files SET state = 'complete', state_at = ${now}, completed_at = ${now}, title = COALESCE(${title ?? null}, title)
            WHERE id = ${item.id} AND state = 'uploaded'
            RETURNING ${cols}`
          if (updated[0] !== undefined) out.push(updated[0])
          else {
            const again = yield* byId(item.id)
            if (Option.isNone(again) || again.value.state !== "complete") return yield* refuse("file_not_found")
            out.push(again.value)
          }
        }
      }))
      // Thumbnails once the file is complete (an abandoned upload never gets any, so
      // the sweep has none to remove); a failure leaves the file without them.
      const withThumbs: Array<FileRow> = []
      for (const row of out) withThumbs.push(yield* thumbnail(row))
      return withThumbs
    }).pipe(orDie)

  /** Makes and stores `row`'s thumbnails if it is an image that has none yet. */
  const thumbnail = (row: FileRow): Effect.Effect<FileRow> =>
    Effect.gen(function*() {
      if (row.thumbs !== null || !Thumbnails.isThumbnailable(row.mimetype, row.size)) return row
      const object = yield* storage.read(row.storage_key)
      if (Option.isNone(object) || object.value.size > Thumbnails.maxInputBytes) return row
      const chunks = yield* Stream.runCollect(object.value.body)
      const made = yield* Thumbnails.make(Buffer.concat([...chunks]), row.mimetype ?? "")
      if (Option.isNone(made)) return row
      for (const t of made.value.thumbs) {
        yield* storage.put(Thumbnails.keyOf(row.storage_key, t.size), Stream.make(t.bytes))
      }
      const thumbs = made.value.thumbs.map(({ height, mimetype, size, width }) => ({ size, width, height, mimetype }))
      const updated = yield* sql<FileRow>`
        UPDATE files SET original_w = ${made.value.width}, original_h = ${made.value.height}, thumbs = ${JSON.stringify(thumbs)}::jsonb
        WHERE id = ${row.id} AND state = 'complete'
        RETURNING ${cols}`
      if (updated[0] !== undefined) return updated[0]
      // Deleted meanwhile: its thumbnails must not outlive it.
      yield* removeObjects({ storage_key: row.storage_key, thumbs })
      return row
    }).pipe(
      Effect.catchAll((error) =>
        Effect.logWarning("thumbnails failed; the file has none", { file: row.id, error: String(error) }).pipe(Effect.as(row))
      )
    )

  /** Removes a file's object and its thumbnails. */
  const removeObjects = (row: Pick<FileRow, "storage_key" | "thumbs">) =>
    Effect.gen(function*() {
      yield* storage.remove(row.storage_key)
      for (const t of row.thumbs ?? []) yield* storage.remove(Thumbnails.keyOf(row.storage_key, t.size))
    })

  const recordShares: FilesShape["recordShares"] = (shares) =>
    Effect.gen(function*() {
      if (shares.length === 0) return
      const now = yield* Clock.currentTimeMillis
      yield* sql`
        INSERT INTO file_shares ${sql.insert(shares.map((s) => ({ ...s, shared_at: now, tombstoned: false })))}
        ON CONFLICT (file_id, channel_id, ts) DO NOTHING`
    }).pipe(Effect.orDie)

  // ---- reads ----------------------------------------------------------------------------

  const visible: FilesShape["visible"] = (viewer, fileId) =>
    Effect.gen(function*() {
      if (!Ids.isId("F", fileId)) return Option.none()
      const found = yield* byId(fileId)
      if (Option.isNone(found)) return Option.none()
      const file = found.value
      if (file.team_id !== viewer.teamId || file.state === "pending" || file.state === "uploading" || file.state === "sweeping") return Option.none()
      const shares = (yield* sharesOf([file.id], viewer.userId)).filter(canSeeShare(viewer))
      const mine = file.user_id === viewer.userId
      if (!mine && (shares.length === 0 || file.state === "uploaded")) return Option.none()
      return Option.some({ file, shares })
    }).pipe(Effect.orDie)

  const list: FilesShape["list"] = (viewer, q) =>
    Effect.gen(function*() {
      const seesPublic = seesPublicWithoutMembership(viewer)
      const conditions: Array<Fragment> = [
        sql`f.team_id = ${viewer.teamId}`,
        sql`f.state = 'complete'`,
        sql`(f.user_id = ${viewer.userId} OR EXISTS (
          SELECT 1 FROM file_shares s JOIN channels c ON c.id = s.channel_id
          WHERE s.file_id = f.id AND c.team_id = ${viewer.teamId} AND (
            EXISTS (SELECT 1 FROM channel_members m WHERE m.channel_id = c.id AND m.user_id = ${viewer.userId})
            OR (${seesPublic} AND NOT c.is_private AND NOT c.is_im AND NOT c.is_mpim))))`
      ]
      if (q.channel !== undefined) conditions.push(sql`EXISTS (SELECT 1 FROM file_shares s2 WHERE s2.file_id = f.id AND s2.channel_id = ${q.channel} AND NOT s2.tombstoned)`)
      if (q.user !== undefined) conditions.push(sql`f.user_id = ${q.user}`)
      if (q.tsFrom !== undefined) conditions.push(sql`f.created_at >= ${q.tsFrom * 1000}`)
      if (q.tsTo !== undefined) conditions.push(sql`f.created_at < ${(q.tsTo + 1) * 1000}`)
      if (!q.types.includes("all")) {
        const kinds = q.types.flatMap((t) => {
          switch (t) {
            case "images":
              return [sql`f.mimetype LIKE 'image/%'`]
            case "zips":
              return [sql`f.filetype = 'zip'`]
            case "pdfs":
              return [sql`f.filetype = 'pdf'`]
            case "snippets":
              return [sql`f.snippet_type IS NOT NULL`]
            default:
              return [] // spaces, gdocs: Chorus has none
          }
        })
        conditions.push(kinds.length === 0 ? sql`false` : sql.or(kinds))
      }
      const where = sql.and(conditions)
      const total = (yield* sql<{ n: number }>`SELECT count(*)::int AS n FROM files f WHERE ${where}`)[0]?.n ?? 0
      const page = q.after === undefined
        ? yield* sql<FileRow>`SELECT ${fCols} FROM files f WHERE ${where} ORDER BY f.created_at DESC, f.id DESC LIMIT ${q.limit} OFFSET ${q.offset}`
        : yield* sql<FileRow>`
          SELECT ${fCols} FROM files f WHERE ${where} AND (f.created_at, f.id) < (${q.after.createdAt}, ${q.after.id})
          ORDER BY f.created_at DESC, f.id DESC LIMIT ${q.limit}`
      const shares = (yield* sharesOf(page.map((f) => f.id), viewer.userId)).filter(canSeeShare(viewer))
      return { total, files: page.map((file) => ({ file, shares: shares.filter((s) => s.file_id === file.id) })) }
    }).pipe(Effect.orDie)

  // ---- delete ---------------------------------------------------------------------------

  const remove: FilesShape["remove"] = (fileId) =>
    Effect.gen(function*() {
      const now = yield* Clock.currentTimeMillis
      const marked = yield* sql<FileRow>`
        UPDATE files SET state = 'deleted', state_at = ${now}, deleted_at = COALESCE(deleted_at, ${now})
        WHERE id = ${fileId} AND state IN ('uploaded', 'complete', 'deleted')
        RETURNING ${cols}`
      const row = marked[0]
      if (row === undefined) return yield* refuse("file_not_found")
      yield* removeObjects(row)
      return (yield* sharesOf([fileId], row.user_id)).filter((s) => !s.tombstoned)
    }).pipe(orDie)

  const markTombstoned: FilesShape["markTombstoned"] = (fileId, channelId, ts) =>
    sql`UPDATE file_shares SET tombstoned = true WHERE file_id = ${fileId} AND channel_id = ${channelId} AND ts = ${ts}`.pipe(Effect.asVoid, Effect.orDie)

  // ---- sweep ----------------------------------------------------------------------------

  const sweepRound = Effect.gen(function*() {
    const now = yield* Clock.currentTimeMillis
    const claimed = yield* sql<{ id: string; storage_key: string }>`
      UPDATE files SET state = 'sweeping', state_at = ${now}
      WHERE id IN (
        SELECT id FROM files
        WHERE (state IN ('pending', 'uploading', 'uploaded') AND created_at < ${now - maxAgeMs})
           OR (state = 'sweeping' AND state_at < ${now - reclaimAfterMs})
        ORDER BY created_at
        LIMIT ${sweepBatch}
        FOR UPDATE SKIP LOCKED)
      RETURNING id, storage_key`
    for (const row of claimed) yield* storage.remove(row.storage_key)
    if (claimed.length > 0) {
      yield* sql`DELETE FROM files WHERE id IN ${sql.in(claimed.map((r) => r.id))} AND state = 'sweeping'`
    }
    return claimed.length
  })

  const sweep: FilesShape["sweep"] = Effect.gen(function*() {
    let total = 0
    for (;;) {
      const n = yield* sweepRound
      total += n
      if (n < sweepBatch) return total
    }
  }).pipe(Effect.orDie)

  return { create, receive, complete, recordShares, visible, list, remove, markTombstoned, sweep, base } satisfies FilesShape
})

/** Sweeps abandoned uploads every `filesSweepInterval` on this node, for the node's life (every node runs one). */
export const sweeper = Layer.scopedDiscard(
  Effect.gen(function*() {
    const files = yield* Files
    const config = yield* ChorusConfig
    const once = files.sweep.pipe(
      Effect.tap((n) => (n > 0 ? Effect.logInfo("swept abandoned uploads", { files: n }) : Effect.void)),
      Effect.catchAllCause((cause) => Effect.logWarning("file sweep failed", { cause: String(cause) }))
    )
    // The first sweep at a random point of the first interval, so nodes started together spread out.
    const first = Duration.millis(Math.floor(Math.random() * Duration.toMillis(config.filesSweepInterval)))
    yield* Effect.forkScoped(Effect.sleep(first).pipe(Effect.zipRight(Effect.repeat(once, Schedule.spaced(config.filesSweepInterval)))))
  })
)

const filesLayer = Layer.effect(Files, make)

/** `Files` over PostgreSQL and the configured storage driver, with the sweep. */
export const layer: Layer.Layer<Files | FileStorage, StorageError, SqlClient.SqlClient | ChorusConfig> = Layer.merge(
  filesLayer,
  sweeper.pipe(Layer.provide(filesLayer))
).pipe(Layer.provideMerge(FileStorageModule.layerFromConfig))
